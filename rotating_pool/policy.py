"""What happens when a login is rejected: the whole policy, without I/O.

`login_plan` is a generator that says what to do next (connect, refetch the
secret, wait) and is told what happened. The sync shell (`rotating_pool.engine`)
and the async shell (`rotating_pool.asyncio`) only carry out those steps, with
blocking calls or awaits, so the two cannot drift apart and the policy can be
tested without a database, a network or a clock.
"""

from __future__ import annotations

import random
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

from rotating_pool.errors import ConfigurationError, LoginRejectedError, RotatingPoolError
from rotating_pool.secret import Credentials

__all__ = [
    "Connect",
    "Refetch",
    "RetryBudget",
    "Wait",
    "is_login_rejection",
    "login_plan",
]

# SQLSTATE 28P01 invalid_password, 28000 invalid_authorization_specification
# (NOLOGIN role, unknown role): what drivers that carry a SQLSTATE at connect say.
_REJECTION_SQLSTATES = frozenset({"28P01", "28000"})

# psycopg 3 raises a bare OperationalError at connect, with no SQLSTATE (libpq
# keeps no result for connection errors), so the server's FATAL message is all
# there is to go by. English server messages only (lc_messages=C or en).
_REJECTION_MESSAGE = re.compile(
    r"password authentication failed for user"
    r"|is not permitted to log in"
    r"|PAM authentication failed for user",
)


def is_login_rejection(error: BaseException) -> bool:
    """Tell whether a connect error means "these credentials were refused".

    A refused port, a timeout, a DNS failure or a full server is not a
    rejection: fetching the secret again would not help.

    >>> is_login_rejection(OSError('FATAL:  password authentication failed for user "app"'))
    True
    >>> is_login_rejection(OSError("connection refused"))
    False
    """
    seen: set[int] = set()
    current: BaseException | None = error
    # SQLAlchemy wraps driver errors (`.orig`); walk the chain to the driver's.
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "sqlstate", None) in _REJECTION_SQLSTATES:
            return True
        if getattr(current, "pgcode", None) in _REJECTION_SQLSTATES:
            return True
        if _REJECTION_MESSAGE.search(str(current)):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


@dataclass(frozen=True)
class RetryBudget:
    """How hard to try after a rejected login before giving up.

    A recovery is a series of rounds: refetch the secret and, when it offers
    credentials that were not rejected yet, log in with them. The first round
    starts at once (a rotation costs no sleep); each later round waits a capped,
    exponentially growing delay with jitter, so that a fleet rejected at the same
    moment (single-user setSecret) spreads its Secrets Manager calls out instead
    of being throttled together.

    The defaults give up after at most about 9 s (8 rounds, delays 0.1 s doubling
    up to 2 s, each jittered between half and all of it): long enough to ride out
    throttling and a slow rotation step, short enough that a password that is
    simply wrong fails a request instead of hanging it.

    Attributes:
        rounds: refetch-and-login rounds after the first rejection (>= 1).
        base_delay: the delay before the second round, in seconds.
        max_delay: the cap on any one delay, in seconds.
    """

    rounds: int = 8
    base_delay: float = 0.1
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigurationError(f"RetryBudget.rounds must be at least 1, not {self.rounds}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ConfigurationError(
                "RetryBudget needs 0 <= base_delay <= max_delay "
                f"(got base_delay={self.base_delay}, max_delay={self.max_delay})"
            )

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before rounds 2, 3, ...: ``rounds - 1`` values."""
        uniform = (rng or random).uniform
        for attempt in range(self.rounds - 1):
            ceiling = min(self.max_delay, self.base_delay * 2.0**attempt)
            delay: float = uniform(ceiling / 2, ceiling)
            yield delay

    def max_total_delay(self) -> float:
        """The longest the waits of one recovery can add up to, in seconds."""
        total: float = sum(
            min(self.max_delay, self.base_delay * 2.0**a) for a in range(self.rounds - 1)
        )
        return total


@dataclass(frozen=True)
class Connect:
    """Log in with these credentials. Answer: the exception if it failed."""

    credentials: Credentials


@dataclass(frozen=True)
class Refetch:
    """Ask the secret for credentials other than `rejected` (single-flight per
    process). Answer: new `Credentials`, None when the secret offers nothing new,
    or the exception that the fetch raised."""

    rejected: Credentials


@dataclass(frozen=True)
class Wait:
    """Sleep this many seconds (the async shell uses the loop's sleep)."""

    seconds: float


Action = Connect | Refetch | Wait
Answer = BaseException | Credentials | None


@dataclass
class _Tally:
    logins: int = 0
    last_fetch_error: BaseException | None = field(default=None, repr=False)


def login_plan(
    credentials: Credentials,
    *,
    secret_id: str,
    budget: RetryBudget,
    rng: random.Random | None = None,
) -> Generator[Action, Answer, None]:
    """The login policy; see the module docstring for how it is driven.

    1. Log in with the current credentials. Success ends the plan (the shell
       stops driving it). An error that is not a rejection is raised as is.
    2. On a rejection, refetch: the store returns AWSCURRENT when it moved, else
       AWSPENDING (single-user rotation between setSecret and finishSecret),
       else nothing. New credentials are tried at once.
    3. Nothing new, a fetch error (throttling, Secrets Manager down) or another
       rejection: wait the next backoff delay and go again, until the budget's
       rounds are spent; then raise `LoginRejectedError` chained to the
       driver's last error.
    """
    tally = _Tally(logins=1)
    error = yield Connect(credentials)
    if error is None:
        return
    if not isinstance(error, BaseException) or not is_login_rejection(error):
        raise _as_exception(error)
    delays = budget.delays(rng)
    for round_number in range(budget.rounds):
        if round_number:
            yield Wait(next(delays))
        answer = yield Refetch(credentials)
        if isinstance(answer, BaseException):
            tally.last_fetch_error = answer
            continue
        if answer is None:
            continue
        credentials = answer
        tally.logins += 1
        new_error = yield Connect(credentials)
        if new_error is None:
            return
        if not is_login_rejection(_as_exception(new_error)):
            raise _as_exception(new_error)
        error = new_error
    raise _gave_up(credentials, secret_id, tally) from _as_exception(error)


def _as_exception(answer: Answer) -> BaseException:
    if isinstance(answer, BaseException):
        return answer
    return RuntimeError(f"login plan got an unexpected answer: {type(answer).__name__}")


def _gave_up(credentials: Credentials, secret_id: str, tally: _Tally) -> LoginRejectedError:
    version = credentials.version_id or "(cached AWSCURRENT)"
    message = (
        f"the database rejected user {credentials.username!r} from secret {secret_id!r} "
        f"version {version} ({credentials.stage}) after {tally.logins} login attempts, "
        "and the secret offers no other credentials: check that the password in the "
        "secret matches the database (a failed or half-finished rotation?)"
    )
    if tally.last_fetch_error is not None:
        # Our own errors' messages are written to be safe to show; others' may not be.
        detail = (
            str(tally.last_fetch_error)
            if isinstance(tally.last_fetch_error, RotatingPoolError)
            else type(tally.last_fetch_error).__name__
        )
        message += f"; the last Secrets Manager read failed too: {detail}"
    return LoginRejectedError(
        message,
        secret_id=secret_id,
        version_id=credentials.version_id,
        username=credentials.username,
        attempts=tally.logins,
    )
