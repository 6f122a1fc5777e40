"""Logins to the database a secret points at, told apart by outcome.

A rotation step needs to know *why* a login failed: a rejected password means
"try the next credential", anything else (refused port, timeout, too many
clients) means "stop, the database is not there". psycopg gives no SQLSTATE
for connection errors: `.sqlstate` is None and `diag` empty, although the
server sent 28P01 (https://github.com/psycopg/psycopg/issues/1188, open), so
the server's FATAL message is what tells them apart.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import psycopg

from rotating_pool.rotation.errors import (
    DatabaseLoginError,
    DatabaseUnavailableError,
    LoginAttempt,
)
from rotating_pool.secret import Credentials

__all__ = ["APPLICATION_NAME", "Login", "login", "try_login"]

logger = logging.getLogger("rotating_pool.rotation")

# Shown in pg_stat_activity, so an operator can tell the rotation's own sessions
# from the application's (and `status` can leave them out of its counts).
APPLICATION_NAME = "rotating-pool-rotation"

Login = psycopg.Connection[Any]

# Server messages that mean "these credentials were refused", as opposed to
# "the server could not be used". 28P01 / 28000 are the SQLSTATEs drivers that
# carry one at connect time use for the same cases.
_REJECTED_MARKERS = (
    "password authentication failed",
    "is not permitted to log in",
    "pg_hba.conf rejects connection",
    "no pg_hba.conf entry",
)
_REJECTED_SQLSTATES = frozenset({"28P01", "28000"})


def try_login(
    credentials: Credentials, *, source: str, connect_timeout: float
) -> tuple[Login | None, LoginAttempt]:
    """Log in with `credentials`; return (connection or None, what happened).

    The connection is in autocommit mode. A rejected login returns None and the
    server's reason; every other failure raises.

    Raises:
        DatabaseUnavailableError: the server could not be reached or refused
            for a reason other than the credentials.
    """
    try:
        conn = psycopg.connect(
            host=credentials.host,
            port=credentials.port,
            dbname=credentials.dbname,
            user=credentials.username,
            password=credentials.password,
            # libpq wants whole seconds; rounding down could make 0 = "wait forever".
            connect_timeout=max(1, math.ceil(connect_timeout)),
            application_name=APPLICATION_NAME,
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        reason = _server_reason(exc)
        if _is_rejection(exc, reason):
            attempt = LoginAttempt(source, credentials.username, reason)
            logger.debug("login refused: %s", attempt)
            return None, attempt
        where = f"{credentials.host or 'localhost'}:{credentials.port or 5432}"
        # `from None`: the message is kept (no password is ever in it) but the
        # driver's traceback adds nothing an operator can act on.
        raise DatabaseUnavailableError(
            f"cannot use the database at {where} (db {credentials.dbname!r}) as "
            f"{credentials.username!r} from {source}: {reason}; check that the server is up, "
            "reachable from here (security groups, VPC endpoints) and accepting connections"
        ) from None
    return conn, LoginAttempt(source, credentials.username, None)


def login(
    credentials: Credentials, *, source: str, connect_timeout: float, secret_id: str | None
) -> Login:
    """Log in with `credentials` or raise.

    Raises:
        DatabaseLoginError: the server rejected them.
        DatabaseUnavailableError: see `try_login`.
    """
    conn, attempt = try_login(credentials, source=source, connect_timeout=connect_timeout)
    if conn is None:
        raise DatabaseLoginError(
            f"secret {secret_id!r}: the database rejected the login from {source}",
            secret_id=secret_id,
            attempts=[attempt],
        )
    return conn


def _server_reason(exc: psycopg.OperationalError) -> str:
    """The useful part of a connection error: the server's FATAL text, or
    libpq's last line ("Connection refused", "timeout expired")."""
    text = str(exc).strip()
    if "FATAL:" in text:
        text = text.rsplit("FATAL:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _is_rejection(exc: psycopg.OperationalError, reason: str) -> bool:
    if exc.sqlstate in _REJECTED_SQLSTATES:
        return True
    if any(marker in reason for marker in _REJECTED_MARKERS):
        return True
    # A user that does not exist (yet) is refused like a wrong password.
    return reason.startswith("role ") and reason.endswith("does not exist")
