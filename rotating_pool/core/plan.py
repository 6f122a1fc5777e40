"""What happens when a login is rejected: the whole policy, without I/O.

`login_plan` is a generator that says what to do next (load the secret, log in,
refetch the secret, wait) and is told what happened. The sync and async shells
(`rotating_pool.connect.login` and `login_async`) only carry out those steps,
with blocking calls or awaits, so the two cannot drift apart and the policy can
be tested without a database, a network or a clock (psycopg drives its
protocol generators the same way).

Every step carries the time it may take: one connection's login, from the first
read of the secret to the last retry, fits in `RetryBudget.deadline`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

from rotating_pool.core.classify import Failure, Verdict, judge_login_error
from rotating_pool.errors import (
    ConfigurationError,
    LoginRejectedError,
    RotatingPoolError,
    SecretsManagerUnavailableError,
)
from rotating_pool.secret import AWSPENDING, Credentials

__all__ = [
    "MIN_LOGIN_SECONDS",
    "Connect",
    "Load",
    "Recheck",
    "Refetch",
    "RetryBudget",
    "Success",
    "Wait",
    "first_login",
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
"""After a login error the policy does not recognise, with no rotation under
way, a refetch that found nothing new is taken as the answer for this long: a
pooler that cannot reach its server, or a missing CONNECT privilege, costs at
most one Secrets Manager call per process per minute."""

UNRECOGNISED_WINDOW_SECONDS = 3.0
"""How long a login refused in words the policy does not know is retried when
no rotation is under way (`ROTATION_RECENT_SECONDS`): a momentary refusal (a
pooler reopening its server connections) gets three or four retries with the
budget's backoff (ceilings 0.25, 0.5, 1 and 2 s), while a permanent one (a
missing CONNECT privilege, a misconfigured pooler) fails each request in about
3 s instead of holding it for the whole deadline (20 s by default)."""

ROTATION_RECENT_SECONDS = 300.0
"""For this long after the credentials in use changed (a refetch or the
periodic refresh found a new version), a rotation counts as just happened, and
an unrecognised refusal is ridden out for the whole deadline as a recognised
one is. 300 s is the Secrets Manager Agent's default cache TTL: a component
that learns the new password from such a cache has learnt it by then."""

ROTATION_UNRECOGNISED_REUSE_SECONDS = 5.0
"""During a rotation, an unrecognised refusal checks the secret at most once
per this long per credentials and process; credentials the process learnt
less than this long ago count as checked. What such a check could find is the
rotation's next label move, which comes seconds apart at the fastest, while a
pooler that refuses a share of logins for a while would otherwise cost a
DescribeSecret per second; 5 s keeps four checks at most in a 20 s deadline."""


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


@dataclass(frozen=True)
class Success:
    """How a plan ended: `credentials` logged in after `refusals` recognised
    refusals; `confirm` says whether the store should adopt them for every new
    connection (the plan decides, not the shell)."""

    credentials: Credentials
    confirm: bool
    refusals: int


@dataclass
class _Clock:
    """The deadline of one plan."""

    now: Callable[[], float]
    budget: float
    start: float = math.nan
    logins: int = 0
    refusals: int = 0
    last_fetch_error: BaseException | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if math.isnan(self.start):  # not given: the plan starts now
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
    on_verdict: Callable[[Verdict], None] | None = None,
    changed_ago: float | None = None,
    first_failed: BaseException | None = None,
    started: float | None = None,
) -> Generator[Action, Answer, Success]:
    """The login policy; see the module docstring for how it is driven.

    `changed_ago` is what the store knows of a rotation: seconds since the
    credentials in use (`credentials`) replaced others, or None when they are
    the first ones it read.

    0. Without credentials yet, load the secret; throttling and outages are
       retried with the budget's delays, other errors are raised at once.
    1. Log in. Success ends the plan (the shell stops driving it).
    2. The error is judged once (`judge_login_error`), and the `Verdict`
       handed to `on_verdict` (the shell's counters, logs and telemetry
       receive it; none of them classifies again). Transient: raised as
       is (at any round).
    3. Refused: refetch. The store offers AWSCURRENT when it moved, else
       AWSPENDING (a single-user rotation between setSecret and finishSecret).
       New credentials are tried at once; when there is nothing new (or the
       read failed), wait the next delay and log in again with the same ones,
       or with what another caller of the process recovered meanwhile.
    4. Unrecognised (the server or a pooler refused in words not known here):
       the same rounds, for it may be a pooler still learning a new password.
       During a rotation (the credentials changed less than
       `ROTATION_RECENT_SECONDS` ago, are AWSPENDING, or this plan found new
       ones) the secret is checked at most once per
       `ROTATION_UNRECOGNISED_REUSE_SECONDS` and the deadline is the bound.
       Otherwise a check costs at most one call per `UNRECOGNISED_REUSE_SECONDS`
       and no retry starts after `UNRECOGNISED_WINDOW_SECONDS`.
    5. When the rounds, the deadline or that window are spent: after a
       recognised refusal, raise `LoginRejectedError` chained to the driver's
       last error, saying how long it took; after an unrecognised one, raise
       the driver's error as is (its wording is all there is to go on).

    A shell that holds credentials may take step 1 itself (`first_login`)
    and start the plan only when that login fails: `first_failed` is its
    error and `started` when it began (`clock`'s time), so the deadline still
    counts from the first login.

    A login that succeeds ends the plan with a `Success` (the generator's
    return value): it says whether the store should `confirm` the
    credentials (after a recognised refusal) so that every new connection
    uses them.
    """
    timer = _Clock(clock, budget.deadline, start=math.nan if started is None else started)
    delays = budget.delays(rng)

    def judge(error: Answer, tried: Credentials) -> Verdict:
        verdict = judge_login_error(_as_exception(error), tried, timer.refusals)
        timer.refusals = verdict.refusals
        if on_verdict is not None:
            on_verdict(verdict)
        return verdict

    def success(logged_in: Credentials) -> Success:
        # Confirm only after a recognised refusal: then the credentials in use
        # were wrong, and every new connection should take these.
        return Success(logged_in, confirm=timer.refusals > 0, refusals=timer.refusals)

    if credentials is None:
        # The first load has delays of its own: a long one leaves the recovery its rounds.
        credentials = yield from _first_load(secret_id, budget, timer, budget.delays(rng))
    rotation = _Rotation.at_start(credentials, changed_ago, timer.now())
    timer.logins += 1
    if first_failed is not None:
        error: Answer = first_failed  # the shell took the first step (`first_login`)
    else:
        error = yield Connect(credentials, timer.login_timeout() or MIN_LOGIN_SECONDS)
        if error is None:
            return success(credentials)
    verdict = judge(error, credentials)
    if verdict.failure is Failure.TRANSIENT:
        raise verdict.error
    for _round in range(budget.rounds):
        fetch_timeout = timer.fetch_timeout()
        if fetch_timeout is None or rotation.window_over(verdict.failure, timer.elapsed()):
            break
        answer: Answer = None
        if verdict.refused:
            answer = yield Refetch(credentials, fetch_timeout, REFUSED_REUSE_SECONDS)
        elif rotation.check_due(timer.now()):
            answer = yield Refetch(credentials, fetch_timeout, rotation.reuse_for())
            rotation.checked(timer.now(), found=False)
        if isinstance(answer, Credentials):
            credentials = answer
            rotation.checked(timer.now(), found=True)
        else:
            if isinstance(answer, BaseException):
                timer.last_fetch_error = answer
            delay = next(delays)
            if not timer.affords_wait(delay) or rotation.window_over(
                verdict.failure, timer.elapsed() + delay
            ):
                break
            yield Wait(delay)
            newer = yield Recheck(credentials)
            if isinstance(newer, Credentials):
                credentials = newer  # another caller's recovery: a rotation
                rotation.checked(timer.now(), found=True)
        login_timeout = timer.login_timeout() or 0
        if not login_timeout:
            break
        timer.logins += 1
        error = yield Connect(credentials, login_timeout)
        if error is None:
            return success(credentials)
        verdict = judge(error, credentials)
        if verdict.failure is Failure.TRANSIENT:
            raise verdict.error
    if verdict.failure is Failure.UNRECOGNISED:
        raise verdict.error
    raise _gave_up(credentials, secret_id, budget, timer) from verdict.error


@dataclass
class _Rotation:
    """What one plan knows of a rotation, for refusals it does not recognise."""

    under_way: bool
    last_check: float  # when the credentials in hand were last known the newest

    @classmethod
    def at_start(
        cls, credentials: Credentials, changed_ago: float | None, now: float
    ) -> _Rotation:
        if changed_ago is None:  # the first credentials read: no rotation seen
            return cls(credentials.stage == AWSPENDING, -math.inf)
        recent = changed_ago < ROTATION_RECENT_SECONDS or credentials.stage == AWSPENDING
        return cls(recent, now - changed_ago)

    def checked(self, now: float, *, found: bool) -> None:
        self.last_check = now
        self.under_way = self.under_way or found

    def check_due(self, now: float) -> bool:
        # Once per reuse window in this plan; across plans the store's reuse
        # window answers a repeated check without a call.
        return now - self.last_check >= self.reuse_for()

    def reuse_for(self) -> float:
        if self.under_way:
            return ROTATION_UNRECOGNISED_REUSE_SECONDS
        return UNRECOGNISED_REUSE_SECONDS

    def window_over(self, kind: Failure, elapsed: float) -> bool:
        """Whether an unrecognised refusal outside a rotation has had its time."""
        return (
            kind is Failure.UNRECOGNISED
            and not self.under_way
            and elapsed > UNRECOGNISED_WINDOW_SECONDS
        )


def first_login(credentials: Credentials, budget: RetryBudget) -> Connect:
    """The plan's first step with credentials in hand: log in with the whole
    deadline. Taking it without the plan spares a successful login (nearly
    every new connection) the plan's set-up; see `login_plan`'s `first_failed`.

    >>> first_login(Credentials("app", "pw"), RetryBudget(deadline=20.0)).timeout
    20
    """
    return Connect(credentials, max(math.floor(budget.deadline), MIN_LOGIN_SECONDS))


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
