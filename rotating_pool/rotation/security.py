"""How a rotation login protects the passwords it carries.

Every login the rotation side makes (the Lambda steps, ``rotate``, ``bootstrap``,
``status``) uses:

- ``sslmode=verify-full`` against a CA bundle, unless the secret says
  ``"ssl": false``; no fall-back to plaintext (AWS's templates fall back when the
  secret has no ``ssl`` key: this is stricter);
- ``require_auth=scram-sha-256`` (optionally ``md5`` too), so a server cannot
  make libpq send a cleartext password.

Both need libpq 16 or later, which psycopg's binary wheel bundles.

>>> SecuritySettings(ssl_root_cert="/etc/pki/tls/cert.pem").connect_params(use_tls=True)
{'sslmode': 'verify-full', 'sslrootcert': '/etc/pki/tls/cert.pem', 'require_auth': 'scram-sha-256'}
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from rotating_pool.rotation.errors import RotationConfigError, TLSSetupError
from rotating_pool.rotation.pin import RolePin

__all__ = [
    "LAMBDA_ROOT_CERT",
    "MIN_LIBPQ",
    "SYSTEM_ROOT_CERT",
    "SecuritySettings",
    "check_libpq",
    "is_unix_socket",
    "normalize_host",
    "tls_wanted",
]

logger = logging.getLogger("rotating_pool.rotation")

# libpq's name for "the operating system's trusted CAs" (libpq 16+).
SYSTEM_ROOT_CERT = "system"
# The CA bundle of AWS Lambda's Python runtimes (Amazon Linux), as AWS's templates use it.
LAMBDA_ROOT_CERT = "/etc/pki/tls/cert.pem"
# require_auth and sslrootcert=system arrived in libpq 16.
MIN_LIBPQ = 160000

_tls_off_seen: set[tuple[str, str]] = set()
_tls_off_lock = threading.Lock()


def normalize_host(host: str) -> str:
    """A host name as the host rule compares it: lower case, no trailing dot.

    >>> normalize_host("DB.Example.com.")
    'db.example.com'
    """
    return host.strip().rstrip(".").lower()


@dataclass(frozen=True)
class SecuritySettings:
    """The TLS and authentication rules of rotation logins, and the host allow-list.

    Args:
        ssl_root_cert: the CA bundle that signs the servers' certificates (a
            path), or ``"system"`` for the operating system's store. For RDS,
            the RDS CA bundle (``global-bundle.pem``) or, on Lambda, the
            runtime's ``/etc/pki/tls/cert.pem``.
        allow_md5: also accept MD5 password authentication (old RDS admin users).
            A cleartext password is never sent.
        allowed_hosts: more host names the app secret may name besides the
            admin's server and its replicas (CNAMEs, custom endpoints).
        root_cert_setting: how the operator sets `ssl_root_cert` here, named in
            error messages (``SSL_ROOT_CERT`` in the Lambda, ``--ssl-root-cert``
            on the command line).
        role_pin: the roles a rotation may ever change (`RolePin`; default:
            no pin).
    """

    ssl_root_cert: str = SYSTEM_ROOT_CERT
    allow_md5: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    root_cert_setting: str = "ssl_root_cert"
    role_pin: RolePin = field(default_factory=RolePin)

    def __post_init__(self) -> None:
        if not self.ssl_root_cert:
            raise RotationConfigError(
                f"{self.root_cert_setting} is empty: give the path of a CA bundle (for RDS, the "
                "RDS CA bundle) or 'system'",
                key=self.root_cert_setting,
            )
        object.__setattr__(
            self, "allowed_hosts", frozenset(normalize_host(h) for h in self.allowed_hosts if h)
        )

    @classmethod
    def from_names(
        cls,
        *,
        ssl_root_cert: str,
        allow_md5: bool,
        allowed_hosts: Iterable[str],
        root_cert_setting: str,
        allowed_roles: Iterable[str] = (),
        role_pin_setting: str = "allowed_roles",
    ) -> SecuritySettings:
        """Build from comma-separated or repeated host and role lists, as the
        CLI and Lambda give them."""
        hosts = {part.strip() for entry in allowed_hosts for part in entry.split(",")}
        return cls(
            ssl_root_cert=ssl_root_cert,
            allow_md5=allow_md5,
            allowed_hosts=frozenset(h for h in hosts if h),
            root_cert_setting=root_cert_setting,
            role_pin=RolePin.from_entries(allowed_roles, setting=role_pin_setting),
        )

    @property
    def auth_methods(self) -> str:
        """libpq's ``require_auth`` value."""
        return "scram-sha-256,md5" if self.allow_md5 else "scram-sha-256"

    def connect_params(self, *, use_tls: bool) -> dict[str, Any]:
        """The libpq parameters a rotation login adds."""
        params: dict[str, Any] = {"require_auth": self.auth_methods}
        if use_tls:
            return {"sslmode": "verify-full", "sslrootcert": self.ssl_root_cert, **params}
        return {"sslmode": "disable", **params}


def tls_wanted(secret_id: str, document: Mapping[str, Any], *, what: str) -> bool:
    """Whether a login with this secret document uses verified TLS.

    Only ``"ssl": false`` (or ``"false"``) turns it off, and that is logged
    (WARNING the first time per secret and kind of login in this process, INFO
    after).

    Raises:
        RotationConfigError: ``ssl`` is neither a boolean nor "true"/"false".
    """
    value = document.get("ssl", True)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise RotationConfigError(
            f"secret {secret_id!r}: key 'ssl' must be true or false, not {value!r}: leave it "
            "out (verified TLS) or set it to false to turn TLS off",
            secret_id=secret_id,
            key="ssl",
        )
    if not value:
        # WARNING the first time in this process (a console at WARNING sees it
        # once, not at every login), INFO after: a Lambda's steps log at INFO.
        key = (secret_id, what)
        with _tls_off_lock:
            first = key not in _tls_off_seen
            _tls_off_seen.add(key)
        logger.log(
            logging.WARNING if first else logging.INFO,
            'secret %r: TLS is off for the %s login ("ssl": false in the secret)',
            secret_id,
            what,
        )
    return value


def is_unix_socket(host: str | None) -> bool:
    """Whether libpq would reach `host` over a Unix-domain socket, where
    ``sslmode=verify-full`` verifies nothing (libpq uses no TLS on a socket).

    No host (libpq's default socket), a directory path (``/...``) or an
    abstract socket (``@...``), alone or in a comma-separated host list.

    >>> is_unix_socket("/var/run/postgresql"), is_unix_socket("db.example.com")
    (True, False)
    """
    if host is None or not host.strip():
        return True
    return any(not part.strip() or part.strip()[0] in "/@" for part in host.split(","))


def check_libpq() -> None:
    """Refuse to log in with a libpq older than 16.

    Raises:
        TLSSetupError: naming ``psycopg[binary]``, which bundles a recent libpq.
    """
    version = psycopg.pq.version()
    if version < MIN_LIBPQ:
        major, minor = divmod(version, 10000)
        raise TLSSetupError(
            f"libpq {major}.{minor} is too old for rotation logins: they need libpq 16 or later "
            "(require_auth, sslrootcert=system); install psycopg[binary], which bundles one, or "
            "a newer libpq"
        )
