"""Logins to the database a secret points at, told apart by outcome.

A rotation step needs to know *why* a login failed: a rejected password means
"try the next credential", anything else (refused port, timeout, too many
clients) means "stop, the database is not there". psycopg gives no SQLSTATE
for connection errors: `.sqlstate` is None and `diag` empty, although the
server sent 28P01 (https://github.com/psycopg/psycopg/issues/1188, open), so
the server's FATAL message is what tells them apart.

Every login goes through `try_login`, which adds the TLS and authentication
rules of `security.SecuritySettings` (verify-full, ``require_auth``) and keeps
within a `Deadline` (the Lambda's remaining time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from rotating_pool.rotation.deadline import Deadline, check_seconds
from rotating_pool.rotation.errors import (
    AuthenticationMethodError,
    DatabaseLoginError,
    DatabaseUnavailableError,
    LoginAttempt,
    StepDeadlineError,
    TLSSetupError,
)
from rotating_pool.rotation.security import SecuritySettings, check_libpq, is_unix_socket
from rotating_pool.secret import Credentials

__all__ = ["APPLICATION_NAME", "Deadline", "Login", "LoginOptions", "login", "try_login"]

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
# libpq's words when TLS could not be set up or verified.
_TLS_MARKERS = (
    "SSL",
    "certificate",
    "sslrootcert",
)
# libpq's words when require_auth refused what the server asked for.
_AUTH_METHOD_MARKER = "authentication method requirement"


@dataclass(frozen=True)
class LoginOptions:
    """How logins are made: the security rules, the timeout, the deadline.

    Attributes:
        security: TLS and authentication rules.
        connect_timeout: seconds per login, before the deadline shrinks it.
        deadline: when the step must be over.

    Raises:
        RotationConfigError: `connect_timeout` is not a finite, positive number
            of seconds.
    """

    security: SecuritySettings
    connect_timeout: float = 5.0
    deadline: Deadline = field(default_factory=Deadline)

    def __post_init__(self) -> None:
        # Every login's timeout passes here: status and bootstrap included.
        object.__setattr__(
            self, "connect_timeout", check_seconds(self.connect_timeout, key="connect_timeout")
        )


def try_login(
    credentials: Credentials, *, source: str, options: LoginOptions, use_tls: bool
) -> tuple[Login | None, LoginAttempt]:
    """Log in with `credentials`; return (connection or None, what happened).

    The connection is in autocommit mode. A rejected login returns None and the
    server's reason; every other failure raises.

    Args:
        use_tls: verified TLS (``sslmode=verify-full``); False only for a
            secret that says ``"ssl": false``.

    Raises:
        TLSSetupError: TLS could not be set up or the certificate not verified,
            or `use_tls` and the host is a Unix-domain socket (or empty).
        AuthenticationMethodError: the server asked for a cleartext (or MD5)
            password; none was sent.
        StepDeadlineError: too little time was left, or the login used it up.
        DatabaseUnavailableError: the server could not be reached or refused
            for a reason other than the credentials.
    """
    check_libpq()
    where = f"{credentials.host or 'localhost'}:{credentials.port or 5432}"
    what = f"login to {where} as {credentials.username!r} from {source}"
    if use_tls and is_unix_socket(credentials.host):
        # libpq ignores sslmode on a socket: verify-full would pass unverified.
        raise TLSSetupError(
            f"{what}: the host {credentials.host!r} is a Unix-domain socket (or empty: libpq's "
            "default socket), where no TLS is used, so verified TLS cannot be had; name the "
            'server by its host name, or, if a socket is meant, say "ssl": false in the secret '
            "(TLS is then off, and logged so)"
        )
    timeout, shrunk = options.deadline.login_timeout(options.connect_timeout, what=what)
    try:
        conn = psycopg.connect(
            host=credentials.host,
            port=credentials.port,
            dbname=credentials.dbname,
            user=credentials.username,
            password=credentials.password,
            connect_timeout=timeout,
            application_name=APPLICATION_NAME,
            autocommit=True,
            **options.security.connect_params(use_tls=use_tls),
        )
    except psycopg.OperationalError as exc:
        reason = _server_reason(exc)
        if _is_rejection(exc, reason):
            attempt = LoginAttempt(source, credentials.username, reason)
            logger.debug("login refused: %s", attempt)
            return None, attempt
        # `from None`: the message is kept (no password is ever in it) but the
        # driver's traceback adds nothing an operator can act on.
        raise _failure(exc, reason, what, options=options, shrunk=shrunk, timeout=timeout) from None
    return conn, LoginAttempt(source, credentials.username, None)


def login(
    credentials: Credentials,
    *,
    source: str,
    options: LoginOptions,
    use_tls: bool,
    secret_id: str | None,
) -> Login:
    """Log in with `credentials` or raise.

    Raises:
        DatabaseLoginError: the server rejected them.
        others: see `try_login`.
    """
    conn, attempt = try_login(credentials, source=source, options=options, use_tls=use_tls)
    if conn is None:
        raise DatabaseLoginError(
            f"secret {secret_id!r}: the database rejected the login from {source}",
            secret_id=secret_id,
            attempts=[attempt],
        )
    return conn


def _failure(
    exc: psycopg.OperationalError,
    reason: str,
    what: str,
    *,
    options: LoginOptions,
    shrunk: bool,
    timeout: int,
) -> Exception:
    """The typed error for a login that failed for another reason than the credentials."""
    if _AUTH_METHOD_MARKER in reason:
        allowed = options.security.auth_methods
        return AuthenticationMethodError(
            f"{what}: the server asked for an authentication method the rotation refuses "
            f"({reason}); no password was sent. Rotation logins allow only {allowed}: if this "
            "is your server, store the user's password as SCRAM-SHA-256 (password_encryption = "
            "'scram-sha-256', then set the password again); allow md5 explicitly "
            "(ALLOW_MD5=true / --allow-md5) only for an old admin user"
        )
    if isinstance(exc, psycopg.errors.ConnectionTimeout) and shrunk:
        return StepDeadlineError(
            f"{what}: no answer within the {timeout} s left to the invocation; the step stops "
            "here and Secrets Manager retries the rotation: check that the server is up and "
            "reachable, and give the Lambda a longer timeout"
        )
    if any(marker in reason for marker in _TLS_MARKERS):
        setting = options.security.root_cert_setting
        return TLSSetupError(
            f"{what}: verified TLS failed ({reason}); the server must offer TLS with a "
            f"certificate for this host name signed by a CA in {setting} (now "
            f"{options.security.ssl_root_cert!r}): for RDS, point {setting} at the RDS CA "
            'bundle; a secret whose server has no TLS must say "ssl": false'
        )
    return DatabaseUnavailableError(
        f"cannot {what}: {reason}; check that the server is up, reachable from here (security "
        "groups, VPC endpoints) and accepting connections"
    )


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
