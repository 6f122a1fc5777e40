"""What happens when a login is rejected: the whole policy, without I/O.

`login_plan` is a generator that says what to do next (load the secret, log in,
refetch the secret, wait) and is told what happened. The sync and async shells
(`rotating_pool.engine` with `rotating_pool.waiting`) only carry out those
steps, with blocking calls or awaits, so the two cannot drift apart and the
policy can be tested without a database, a network or a clock.

Every step carries the time it may take: one connection's login, from the first
read of the secret to the last retry, fits in `RetryBudget.deadline`.
"""

from __future__ import annotations

import enum
import math
import random
import re
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

from rotating_pool.errors import (
    ConfigurationError,
    LoginRejectedError,
    RotatingPoolError,
    SecretsManagerUnavailableError,
)
from rotating_pool.secret import Credentials

__all__ = [
    "MIN_LOGIN_SECONDS",
    "Connect",
    "Failure",
    "Load",
    "Recheck",
    "Refetch",
    "RetryBudget",
    "Wait",
    "classify_login_error",
    "is_login_rejection",
    "login_plan",
]

MIN_LOGIN_SECONDS = 2
"""The shortest login worth starting. libpq's ``connect_timeout`` is whole
seconds and treats anything below 2 as 2, so no login starts with less left."""

REFUSED_REUSE_SECONDS = 1.0
"""After a recognised refusal, a refetch that found nothing new is taken as the
answer for this long: retries with the same credentials (a pooler or proxy
still learning the new password) cost no further Secrets Manager call."""

UNRECOGNISED_REUSE_SECONDS = 60.0
"""After a login error the policy does not recognise, a refetch that found
nothing new is taken as the answer for this long: a pooler that cannot reach
its server costs at most one Secrets Manager call per process per minute."""


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


def _positive_number(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"RetryBudget.{name} must be a finite number, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"RetryBudget.{name} must be positive, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class RetryBudget:
    """How hard, and how long, one connection tries before giving up.

    A recovery is a series of rounds: refetch the secret and log in with what
    it offers; when it offers nothing new, wait a capped, exponentially growing
    delay with jitter and log in again with the same credentials (a pooler or a
    proxy may still be learning the new password). A rotation costs no sleep:
    new credentials are tried at once. The same delays space out retries of a
    throttled first read of the secret.

    `deadline` bounds the whole login of one connection in wall-clock time:
    the first read of the secret, every login, every Secrets Manager call and
    every wait. Each step gets only the time that remains, and no step starts
    that could not finish in it. The default, 20 s, stays below SQLAlchemy's
    ``pool_timeout`` and gunicorn's worker timeout (both 30 s), so a recovery
    that cannot succeed fails a request instead of getting a worker killed.

    The defaults come from the fleet simulator (``python -m
    benchmarks.fleet_sim --recommend``): 10,000 tasks of 4 processes refused
    in the same half second of a single-user rotation fail no request under
    either reading of Secrets Manager's quotas, and the waits (up to 19.75 s)
    let the deadline, not the round count, end a recovery that cannot succeed.

    Attributes:
        rounds: refetch-and-login rounds after the first refusal (>= 1).
        base_delay: the delay before the first retry with unchanged
            credentials, in seconds.
        max_delay: the cap on any one delay, in seconds.
        deadline: seconds one connection's login may take in all (>= 2).
    """

    rounds: int = 12
    base_delay: float = 0.25
    max_delay: float = 2.0
    deadline: float = 20.0

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigurationError(
                f"RetryBudget.rounds must be a whole number >= 1, not {self.rounds!r}"
            )
        base = _positive_number("base_delay", self.base_delay)
        cap = _positive_number("max_delay", self.max_delay)
        if cap < base:
            raise ConfigurationError(
                "RetryBudget needs base_delay <= max_delay "
                f"(got base_delay={self.base_delay}, max_delay={self.max_delay})"
            )
        if _positive_number("deadline", self.deadline) < MIN_LOGIN_SECONDS:
            raise ConfigurationError(
                f"RetryBudget.deadline must be at least {MIN_LOGIN_SECONDS} s (one login), "
                f"not {self.deadline!r}"
            )

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The backoff delays, in order: ``rounds`` values."""
        uniform = (rng or random).uniform
        for attempt in range(self.rounds):
            ceiling = min(self.max_delay, self.base_delay * 2.0**attempt)
            delay: float = uniform(ceiling / 2, ceiling)
            yield delay

    def max_total_delay(self) -> float:
        """The longest the waits of one recovery can add up to, in seconds."""
        ceilings = (min(self.max_delay, self.base_delay * 2.0**a) for a in range(self.rounds))
        return float(sum(ceilings))


@dataclass(frozen=True)
class Load:
    """Read the secret for the first time (single-flight per process).
    Answer: `Credentials`, or the exception the read raised."""

    timeout: float


@dataclass(frozen=True)
class Connect:
    """Log in with these credentials, giving up after `timeout` whole seconds.
    Answer: None on success, else the exception."""

    credentials: Credentials
    timeout: int


@dataclass(frozen=True)
class Refetch:
    """Ask the secret for credentials other than `rejected` (single-flight per
    process). A refetch for the same credentials that found nothing new less
    than `reuse_for` seconds ago is the answer, without a call. Answer: new
    `Credentials`, None when the secret offers nothing new, or the exception
    that the fetch raised."""

    rejected: Credentials
    timeout: float
    reuse_for: float


@dataclass(frozen=True)
class Recheck:
    """What the process logs in with now, if not `rejected`: another caller may
    have recovered while this one waited. No Secrets Manager call. Answer: the
    `Credentials`, or None."""

    rejected: Credentials


@dataclass(frozen=True)
class Wait:
    """Sleep this many seconds (the async shell uses the loop's sleep)."""

    seconds: float


Action = Load | Connect | Refetch | Recheck | Wait
Answer = BaseException | Credentials | None


@dataclass
class _Clock:
    """The deadline of one plan."""

    now: Callable[[], float]
    budget: float
    start: float = 0.0
    logins: int = 0
    last_fetch_error: BaseException | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.start = self.now()

    def left(self) -> float:
        return self.budget - (self.now() - self.start)

    def elapsed(self) -> float:
        return self.now() - self.start

    def login_timeout(self) -> int | None:
        """Whole seconds for a login, or None when too little time is left."""
        left = math.floor(self.left())
        return left if left >= MIN_LOGIN_SECONDS else None

    def fetch_timeout(self) -> float | None:
        """Time for a Secrets Manager read that leaves room for a login after it."""
        left = self.left() - MIN_LOGIN_SECONDS
        return left if left > 0 else None

    def affords_wait(self, seconds: float) -> bool:
        return self.left() - seconds >= MIN_LOGIN_SECONDS


def login_plan(
    credentials: Credentials | None,
    *,
    secret_id: str,
    budget: RetryBudget,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[Action, Answer, None]:
    """The login policy; see the module docstring for how it is driven.

    0. Without credentials yet, load the secret; throttling and outages are
       retried with the budget's delays, other errors are raised at once.
    1. Log in. Success ends the plan (the shell stops driving it).
    2. The error is classified (`classify_login_error`). Transient: raised as
       is. Unrecognised: one refetch (at most one Secrets Manager call per
       process per minute while it repeats); new credentials are tried, else
       the driver's error is raised at once.
    3. Refused: refetch. The store offers AWSCURRENT when it moved, else
       AWSPENDING (a single-user rotation between setSecret and finishSecret).
       New credentials are tried at once; when there is nothing new (or the
       read failed), wait the next delay and log in again with the same ones,
       or with what another caller of the process recovered meanwhile.
    4. When the rounds or the deadline are spent, raise `LoginRejectedError`
       chained to the driver's last error, saying how long it took.
    """
    timer = _Clock(clock, budget.deadline)
    delays = budget.delays(rng)
    if credentials is None:
        credentials = yield from _first_load(secret_id, budget, timer, delays)
    login_timeout = timer.login_timeout() or MIN_LOGIN_SECONDS
    timer.logins += 1
    error = yield Connect(credentials, login_timeout)
    if error is None:
        return
    error = _as_exception(error)
    kind = classify_login_error(error)
    if kind is Failure.TRANSIENT:
        raise error
    if kind is Failure.UNRECOGNISED:
        fetch_timeout = timer.fetch_timeout()
        if fetch_timeout is None:
            raise error
        answer = yield Refetch(credentials, fetch_timeout, UNRECOGNISED_REUSE_SECONDS)
        login_timeout = timer.login_timeout() or 0
        if not isinstance(answer, Credentials) or not login_timeout:
            raise error
        credentials = answer
        timer.logins += 1
        error = yield Connect(credentials, login_timeout)
        if error is None:
            return
        error = _as_exception(error)
        if classify_login_error(error) is not Failure.REFUSED:
            raise error
    for _round in range(budget.rounds):
        fetch_timeout = timer.fetch_timeout()
        if fetch_timeout is None:
            break
        answer = yield Refetch(credentials, fetch_timeout, REFUSED_REUSE_SECONDS)
        if isinstance(answer, Credentials):
            credentials = answer
        else:
            if isinstance(answer, BaseException):
                timer.last_fetch_error = answer
            delay = next(delays)
            if not timer.affords_wait(delay):
                break
            yield Wait(delay)
            newer = yield Recheck(credentials)
            if isinstance(newer, Credentials):
                credentials = newer
        login_timeout = timer.login_timeout() or 0
        if not login_timeout:
            break
        timer.logins += 1
        new_error = yield Connect(credentials, login_timeout)
        if new_error is None:
            return
        new_error = _as_exception(new_error)
        if classify_login_error(new_error) is not Failure.REFUSED:
            raise new_error
        error = new_error
    raise _gave_up(credentials, secret_id, budget, timer) from error


def _first_load(
    secret_id: str, budget: RetryBudget, timer: _Clock, delays: Iterator[float]
) -> Generator[Action, Answer, Credentials]:
    """Read the secret; retry what may pass (throttling, 5xx, time-outs)."""
    error: BaseException | None = None
    for attempt in range(budget.rounds + 1):
        if attempt:
            delay = next(delays, budget.max_delay)
            if timer.left() - delay <= MIN_LOGIN_SECONDS:
                break
            yield Wait(delay)
        timeout = timer.fetch_timeout()
        if timeout is None:
            break
        answer = yield Load(timeout)
        if isinstance(answer, Credentials):
            return answer
        error = _as_exception(answer)
        if not isinstance(error, SecretsManagerUnavailableError):
            raise error  # not found, access denied, malformed: no retry will help
    detail = str(error) if error is not None else "no time left for a read"
    raise SecretsManagerUnavailableError(
        f"no credentials for secret {secret_id!r}: the first read did not succeed within "
        f"{timer.elapsed():.1f} s (deadline {budget.deadline:g} s, RetryBudget.deadline): "
        f"{detail}",
        secret_id=secret_id,
    ) from error


def _as_exception(answer: Answer) -> BaseException:
    if isinstance(answer, BaseException):
        return answer
    return RuntimeError(f"login plan got an unexpected answer: {type(answer).__name__}")


def _gave_up(
    credentials: Credentials, secret_id: str, budget: RetryBudget, timer: _Clock
) -> LoginRejectedError:
    version = credentials.version_id or "(unknown version)"
    message = (
        f"the database rejected user {credentials.username!r} from secret {secret_id!r} "
        f"version {version} ({credentials.stage}) after {timer.logins} login attempts in "
        f"{timer.elapsed():.1f} s (RetryBudget: {budget.rounds} rounds, deadline "
        f"{budget.deadline:g} s), and the secret offers no other credentials: check that the "
        "password in the secret matches the database (a failed or half-finished rotation?)"
    )
    if timer.last_fetch_error is not None:
        # Our own errors' messages are written to be safe to show; others' may not be.
        detail = (
            str(timer.last_fetch_error)
            if isinstance(timer.last_fetch_error, RotatingPoolError)
            else type(timer.last_fetch_error).__name__
        )
        message += f"; the last Secrets Manager read failed too: {detail}"
    return LoginRejectedError(
        message,
        secret_id=secret_id,
        version_id=credentials.version_id,
        username=credentials.username,
        attempts=timer.logins,
    )
