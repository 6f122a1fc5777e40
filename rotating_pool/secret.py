"""The secret format: the JSON document AWS uses for RDS and Aurora secrets.

This module is the only thing the client side and the rotation side
(`rotating_pool.rotation`) share. A secret looks like::

    {"engine": "postgres", "host": "db.example.com", "port": 5432,
     "dbname": "app", "username": "app_a", "password": "..."}

Extra keys are ignored here (the rotation side reads its own:
``rotation_strategy``, ``rotation_role``, ``rotation_users``, ``masterarn``).
A secret's content is not trusted: whoever may write the secret may try to
make a client misbehave, so anything malformed is a `SecretFormatError` that
names the key, never a `TypeError` or `RecursionError`, and never quotes a value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rotating_pool.errors import SecretFormatError

__all__ = ["POSTGRES_ENGINES", "Credentials", "load_secret_document", "parse_credentials"]

AWSCURRENT = "AWSCURRENT"
AWSPENDING = "AWSPENDING"
AWSPREVIOUS = "AWSPREVIOUS"

POSTGRES_ENGINES = frozenset({"postgres", "postgresql", "aurora-postgresql"})
"""The ``engine`` values AWS writes for PostgreSQL (RDS's, its rotation
templates', Aurora's); a secret whose ``engine`` is another is refused."""

# C0 and C1 control characters: libpq cannot pass a NUL, and a newline or an
# escape sequence in a user or host name would end up in log lines.
_CONTROL = frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))


@dataclass(frozen=True)
class Credentials:
    """One version of a database secret, ready for a login.

    The password is kept out of ``repr`` and ``str``; equality compares every
    field, so two reads of the same version are equal and a rotated secret is not.

    Attributes:
        username: the database user.
        password: its password (never printed).
        host, port, dbname: where to connect, when the secret says so.
        version_id: the Secrets Manager version id, when the read told it.
        stage: the label this was read by (``AWSCURRENT`` or ``AWSPENDING``).
    """

    username: str
    password: str = field(repr=False)
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    version_id: str | None = field(default=None, compare=False)
    stage: str = field(default=AWSCURRENT, compare=False)

    def __str__(self) -> str:
        where = f"{self.host or '?'}:{self.port or '?'}/{self.dbname or '?'}"
        version = self.version_id or "cached"
        return f"{self.username}@{where} ({self.stage}, version {version})"


def load_secret_document(secret_id: str, secret_string: str | None) -> dict[str, Any]:
    """Parse a secret string as a JSON object.

    Raises:
        SecretFormatError: the secret is binary (no SecretString), not JSON, or
            not a JSON object. The message names the secret, never its value.
    """
    if secret_string is None:
        raise SecretFormatError(
            f"secret {secret_id!r} has no SecretString (is it a binary secret?): store the "
            "RDS/Aurora JSON document as a string secret",
            secret_id=secret_id,
        )
    if not isinstance(secret_string, str):
        raise SecretFormatError(
            f"secret {secret_id!r}: the SecretString read is not a string (got "
            f"{type(secret_string).__name__}): store the RDS/Aurora JSON document as a string",
            secret_id=secret_id,
        )
    try:
        document = json.loads(secret_string)
    except (ValueError, RecursionError):
        # `from None`: json's message quotes the document, password included.
        raise SecretFormatError(
            f"secret {secret_id!r} is not valid JSON: store the RDS/Aurora JSON document "
            '{"username": ..., "password": ..., "host": ..., "port": ..., "dbname": ...}',
            secret_id=secret_id,
        ) from None
    if not isinstance(document, dict):
        raise SecretFormatError(
            f"secret {secret_id!r} is JSON but not an object (got {type(document).__name__}): "
            "store the RDS/Aurora JSON document",
            secret_id=secret_id,
        )
    return document


def parse_credentials(
    secret_id: str,
    secret_string: str | None,
    *,
    version_id: str | None = None,
    stage: str = AWSCURRENT,
) -> Credentials:
    """Read `Credentials` out of a secret string.

    Raises:
        SecretFormatError: not JSON, a missing ``username`` or ``password``, a
            key of the wrong type, a control character in ``username``,
            ``host`` or ``dbname`` (a NUL in ``password``), or an ``engine``
            other than PostgreSQL's; the error names the key and the secret id.

    >>> parse_credentials("db", '{"username": "app", "password": "pw", "port": "5432"}').port
    5432
    """
    document = load_secret_document(secret_id, secret_string)

    def fail(key: str, problem: str) -> SecretFormatError:
        where = f"secret {secret_id!r}" + (f" version {version_id!r}" if version_id else "")
        return SecretFormatError(
            f"{where}: key {key!r} {problem}", secret_id=secret_id, key=key, version_id=version_id
        )

    def text(key: str, *, required: bool) -> str | None:
        value = document.get(key)
        if value is None:
            if required:
                raise fail(key, "is missing: an RDS/Aurora secret needs 'username' and 'password'")
            return None
        if not isinstance(value, str):
            raise fail(key, f"must be a string, not {type(value).__name__}")
        if not value or (key != "password" and not value.strip()):
            # An empty host makes libpq use a local socket, an empty dbname the
            # user's name: never what a secret means.
            raise fail(key, "is empty: leave it out or give a value")
        if key == "password" and "\0" in value:
            raise fail(key, "holds a NUL character, which libpq cannot send")
        if key != "password" and not _CONTROL.isdisjoint(value):
            raise fail(key, "holds a control character: no PostgreSQL name has one")
        return value

    engine = document.get("engine")
    if engine is not None and (not isinstance(engine, str) or engine not in POSTGRES_ENGINES):
        # Not quoted: the value is whatever the secret's writer put there.
        raise fail(
            "engine",
            "is not PostgreSQL's ('postgres', 'postgresql' or 'aurora-postgresql'): "
            "this secret is for another database",
        )
    username = text("username", required=True)
    password = text("password", required=True)
    assert username is not None and password is not None
    port = document.get("port")
    if port is not None:
        # AWS's own templates write the port as a number; consoles sometimes as a string.
        if isinstance(port, str) and port.isascii() and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise fail("port", "must be a port number (1-65535)")
    return Credentials(
        username=username,
        password=password,
        host=text("host", required=False),
        port=port,
        dbname=text("dbname", required=False),
        version_id=version_id,
        stage=stage,
    )
