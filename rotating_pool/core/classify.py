"""What a failed login means for the credentials, decided once, without I/O.

`classify_login_error` reads a driver's error (its SQLSTATE when the driver
carries one, else the server's, pooler's or proxy's wording) and says whether
other credentials could help: the plan (`rotating_pool.core.plan`) asks it
once per failed login and hands the answer on; nothing else classifies.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from rotating_pool.secret import Credentials

__all__ = [
    "Failure",
    "Verdict",
    "classify_login_error",
    "is_login_rejection",
    "judge_login_error",
]


class Failure(enum.Enum):
    """What a failed login means for the credentials."""

    REFUSED = "refused"
    """The server, pooler or proxy refused these credentials: look for others."""
    UNRECOGNISED = "unrecognised"
    """The server refused the login for a reason not known here: check the
    secret once, in case it is about the credentials."""
    TRANSIENT = "transient"
    """Not about credentials (network, capacity, TLS, a missing database):
    other credentials would not help, so Secrets Manager is not asked."""


# SQLSTATE class 28, invalid authorization: 28P01 invalid_password, 28000
# invalid_authorization_specification (NOLOGIN role, unknown role, RDS Proxy's
# "no credentials for the role"). What drivers that carry a SQLSTATE at connect
# (asyncpg, pg8000) report; psycopg and psycopg2 have none (libpq keeps no
# result for a connection error: https://github.com/psycopg/psycopg/issues/1188).
_REFUSED_SQLSTATE_CLASS = "28"
# Capacity (53), operator intervention (57P: shutting down, starting up),
# a missing database (3D000): the server works but this login cannot, for a
# reason no password would change.
_TRANSIENT_SQLSTATES = re.compile(r"53...|57P..|3D000")

# The stable wordings of a refused login. PostgreSQL (auth.c, with lc_messages
# in English), PgBouncer (its own auth: "SASL authentication failed", "no such
# user"; it reports them with SQLSTATE 08P01 to drivers that read one) and
# RDS Proxy ("This RDS proxy has no credentials for the role ...").
_REFUSED_MESSAGE = re.compile(
    r"password authentication failed"
    r"|is not permitted to log in"
    r"|PAM authentication failed"
    r"|SASL authentication failed"
    r"|role \".*\" does not exist"
    r"|\bno such user\b"
    r"|has no credentials for the role",
    re.IGNORECASE,
)

# Errors that are about the way to the server, its state or TLS, never about
# the password; checked before SQLSTATEs (a pg_hba "no encryption" refusal
# carries SQLSTATE 28000 with some drivers, yet only TLS would fix it).
_TRANSIENT_MESSAGE = re.compile(
    r"connection refused|timeout expired|timed out|\btimeout\b"
    r"|could not translate host name|name or service not known|nodename nor servname"
    r"|temporary failure in name resolution|no address associated|getaddrinfo"
    r"|no route to host|network is unreachable|connection reset|broken pipe"
    r"|server closed the connection unexpectedly|unexpected eof|connection was closed"
    r"|too many clients|remaining connection slots are reserved|no more connections allowed"
    r"|the database system is (starting up|shutting down|in recovery mode|not (yet )?accepting)"
    r"|terminating connection due to administrator command|cannot connect now"
    r"|server login has been failing|cannot connect to server|pooler is shut ?down"
    r"|database \".*\" does not exist"
    r"|no pg_hba\.conf entry|requires? (tls|ssl)|ssl connection is required|\bssl\b|\btls\b"
    r"|certificate|sslmode|server does not support",
    re.IGNORECASE,
)
# A message from the server, pooler or proxy (as opposed to the network).
_SERVER_SPOKE = re.compile(r"\bFATAL\b|\bERROR\b")


def classify_login_error(error: BaseException) -> Failure:
    """Tell what a failed login means for the credentials; see `Failure`.

    The rule: a known wording of a refusal is `Failure.REFUSED`; errors about
    the network, capacity, server state, a missing database or TLS are
    `Failure.TRANSIENT`; then SQLSTATE class 28 is `Failure.REFUSED`; any
    other error the server (or a pooler or proxy) sent at login is
    `Failure.UNRECOGNISED`; an error with no server message at all is
    `Failure.TRANSIENT`.

    >>> classify_login_error(OSError('FATAL:  password authentication failed for user "app"'))
    <Failure.REFUSED: 'refused'>
    >>> classify_login_error(OSError("FATAL:  the moon is made of cheese"))
    <Failure.UNRECOGNISED: 'unrecognised'>
    >>> classify_login_error(OSError("connection refused"))
    <Failure.TRANSIENT: 'transient'>
    """
    sqlstate: str | None = None
    texts: list[str] = []
    for link in _chain(error):
        sqlstate = sqlstate or _sqlstate_of(link)
        texts.append(str(link))
    text = "\n".join(texts)
    # A refusal first: libpq's sslmode=prefer may append a second attempt's
    # error (e.g. a pg_hba "no encryption" line) to the refusal's.
    if _REFUSED_MESSAGE.search(text):
        return Failure.REFUSED
    if _TRANSIENT_MESSAGE.search(text):
        return Failure.TRANSIENT
    if sqlstate is not None and _TRANSIENT_SQLSTATES.fullmatch(sqlstate):
        return Failure.TRANSIENT
    if sqlstate is not None and sqlstate.startswith(_REFUSED_SQLSTATE_CLASS):
        return Failure.REFUSED
    if sqlstate is not None or _SERVER_SPOKE.search(text):
        return Failure.UNRECOGNISED
    return Failure.TRANSIENT


@dataclass(frozen=True)
class Verdict:
    """One failed login, judged once: what the plan, the shell's counters and
    logs, and the telemetry all act on.

    Attributes:
        failure: what the failure means for the credentials.
        credentials: the credentials that failed (never shown: see `Credentials`'s repr).
        error: the driver's error.
        refusals: recognised refusals of this connection so far, this one included.
    """

    failure: Failure
    credentials: Credentials
    error: BaseException = field(repr=False, compare=False)
    refusals: int = 0

    @property
    def refused(self) -> bool:
        """Whether the credentials were refused (`Failure.REFUSED`)."""
        return self.failure is Failure.REFUSED


def judge_login_error(error: BaseException, credentials: Credentials, refusals: int = 0) -> Verdict:
    """The `Verdict` on a failed login with `credentials`, after `refusals` earlier ones."""
    failure = classify_login_error(error)
    refused = 1 if failure is Failure.REFUSED else 0
    return Verdict(failure, credentials, error, refusals + refused)


def is_login_rejection(error: BaseException) -> bool:
    """Tell whether a connect error is a recognised refusal of the credentials.

    >>> is_login_rejection(OSError('FATAL:  password authentication failed for user "app"'))
    True
    >>> is_login_rejection(OSError("connection refused"))
    False
    """
    return classify_login_error(error) is Failure.REFUSED


def _chain(error: BaseException) -> Iterator[BaseException]:
    # SQLAlchemy wraps driver errors (`.orig`); walk to the driver's own.
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def _sqlstate_of(error: BaseException) -> str | None:
    for name in ("sqlstate", "pgcode"):  # psycopg / asyncpg, psycopg2
        value = getattr(error, name, None)
        if isinstance(value, str) and len(value) == 5:
            return value
    # pg8000 passes the server's error fields as a dict: {"C": "28P01", ...}.
    for arg in error.args:
        if isinstance(arg, dict) and isinstance(arg.get("C"), str):
            return str(arg["C"])
    return None
