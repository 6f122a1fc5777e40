"""The login policy, driven by hand: no database, no network, a fake clock."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from rotating_pool import LoginRejectedError, RetryBudget, is_login_rejection
from rotating_pool.core.classify import Failure, classify_login_error, judge_login_error
from rotating_pool.core.plan import (
    REFUSED_REUSE_SECONDS,
    UNRECOGNISED_REUSE_SECONDS,
    Connect,
    Load,
    Recheck,
    Refetch,
    Success,
    Wait,
    first_login,
    login_plan,
)
from rotating_pool.core.reads import (
    Labels,
    Read,
    Route,
    next_stage,
    recovery_reads,
    recovery_route,
    steady_read,
)
from rotating_pool.errors import (
    ConfigurationError,
    SecretNotFoundError,
    SecretsManagerUnavailableError,
)
from rotating_pool.secret import AWSCURRENT, AWSPENDING, Credentials

OLD = Credentials("app_a", "old-pw", version_id="v1")
NEW = Credentials("app_b", "new-pw", version_id="v2")
REFUSED = OSError('connection failed: FATAL:  password authentication failed for user "app_a"')
NOLOGIN = OSError('FATAL:  role "app_b" is not permitted to log in')
ODD_FATAL = OSError("connection failed: FATAL:  the gatekeeper does not like you today")
REFUSED_PORT = OSError('connection to server at "127.0.0.1", port 1 failed: Connection refused')
THROTTLED = SecretsManagerUnavailableError("throttled: ThrottlingException", secret_id="db")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plan(budget: RetryBudget | None = None, clock: FakeClock | None = None, start=OLD, **kw):
    return login_plan(
        start,
        secret_id="db",
        budget=budget or RetryBudget(),
        rng=random.Random(1),
        clock=clock or FakeClock(),
        **kw,
    )


# -- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        # PostgreSQL
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  password '
        'authentication failed for user "x"',
        'FATAL:  role "x" is not permitted to log in',
        'FATAL:  PAM authentication failed for user "x"',
        'FATAL:  role "x" does not exist',
        # PgBouncer
        "FATAL:  SASL authentication failed",
        "FATAL:  no such user",
        # RDS Proxy
        "FATAL: This RDS proxy has no credentials for the role app_a. Check the credentials "
        "for this role and try again.",
        # libpq's sslmode=prefer appends the plaintext attempt's error to the refusal
        'FATAL:  password authentication failed for user "x"\nconnection to server at '
        '"127.0.0.1", port 5432 failed: FATAL:  no pg_hba.conf entry for host "127.0.0.1", '
        'user "x", database "x", no encryption',
    ],
)
def test_known_wordings_of_a_refused_login_are_refusals(message):
    assert classify_login_error(OSError(message)) is Failure.REFUSED
    assert is_login_rejection(OSError(message))


@pytest.mark.parametrize(
    "message",
    [
        "connection failed: FATAL:  the gatekeeper does not like you today",
        "FATAL:  access to this tenant is suspended",
        "ERROR:  login denied by policy 42",
        "FATAL:  Zugang verweigert für Benutzer »app«",  # a server with German lc_messages
    ],
)
def test_wordings_no_list_foresaw_are_unrecognised_not_ignored(message):
    assert classify_login_error(OSError(message)) is Failure.UNRECOGNISED


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "127.0.0.1", port 1 failed: Connection refused',
        "connection timeout expired",
        'could not translate host name "db.invalid" to address: Name or service not known',
        "FATAL:  sorry, too many clients already",
        "FATAL:  the database system is starting up",
        "FATAL:  the database system is shutting down",
        'FATAL:  database "nope" does not exist',
        'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "x", database "x", no encryption',
        "FATAL: This RDS Proxy requires TLS connections",
        "server closed the connection unexpectedly",
        "SSL error: certificate verify failed",
        # PgBouncer failing to log in to its server (its auth_query's login), with 08P01
        "FATAL:  server login has been failing, try again later (server_login_retry)",
        "FATAL:  pgbouncer cannot connect to server",
    ],
)
def test_network_capacity_state_and_tls_errors_are_transient(message):
    assert classify_login_error(OSError(message)) is Failure.TRANSIENT


def _error_with(sqlstate: str, message: str = "opaque") -> OSError:
    error = OSError(message)
    error.sqlstate = sqlstate  # type: ignore[attr-defined]
    return error


def test_sqlstate_class_28_is_a_refusal_whatever_the_message():
    assert classify_login_error(_error_with("28P01")) is Failure.REFUSED
    assert classify_login_error(_error_with("28000")) is Failure.REFUSED


def test_capacity_and_shutdown_sqlstates_are_transient():
    for sqlstate in ("53300", "57P03", "57P01", "3D000"):
        assert classify_login_error(_error_with(sqlstate)) is Failure.TRANSIENT


def test_class_08_alone_is_not_transient():
    # PgBouncer reports its own refusals as 08P01 to drivers that read a SQLSTATE.
    assert classify_login_error(_error_with("08P01")) is Failure.UNRECOGNISED
    assert classify_login_error(_error_with("08P01", "no such user")) is Failure.REFUSED


def test_pg8000_style_error_fields_are_read():
    error = Exception({"S": "FATAL", "C": "28P01", "M": "nope"})
    assert classify_login_error(error) is Failure.REFUSED


def test_a_wrapped_driver_error_is_recognised_through_orig():
    wrapper = RuntimeError("(psycopg.OperationalError) see orig")
    wrapper.orig = REFUSED  # type: ignore[attr-defined]
    assert is_login_rejection(wrapper)


CAPTURED = Path(__file__).parent / "data" / "connect_errors.json"


@pytest.mark.skipif(not CAPTURED.exists(), reason="no captured error texts")
def test_errors_captured_on_the_real_bed_are_classified_as_recorded():
    """Texts recorded from the real PostgreSQL/PgBouncer (tests/data/connect_errors.json)."""
    cases = json.loads(CAPTURED.read_text())
    assert cases
    for case in cases:
        error = OSError(case["message"])
        if case.get("sqlstate"):
            error.sqlstate = case["sqlstate"]  # type: ignore[attr-defined]
        assert classify_login_error(error).value == case["expected"], case["situation"]


# -- the plan -----------------------------------------------------------------------------


def test_a_successful_first_login_asks_for_nothing_else():
    steps = plan()
    assert next(steps) == Connect(OLD, 20)
    with pytest.raises(StopIteration):
        steps.send(None)


def test_a_refusal_refetches_at_once_and_logs_in_with_what_it_gets():
    steps = plan()
    next(steps)
    assert steps.send(REFUSED) == Refetch(OLD, 18.0, REFUSED_REUSE_SECONDS)
    assert steps.send(NEW) == Connect(NEW, 20)


def test_a_transient_error_is_raised_as_is_without_refetching():
    steps = plan()
    next(steps)
    with pytest.raises(OSError) as raised:
        steps.send(REFUSED_PORT)
    assert raised.value is REFUSED_PORT


def test_nothing_new_waits_and_logs_in_again_with_the_same_credentials():
    # A pooler or proxy may learn the new password after the secret has it.
    steps = plan(RetryBudget(rounds=3, base_delay=0.1, max_delay=0.3))
    next(steps)
    assert isinstance(steps.send(REFUSED), Refetch)
    wait = steps.send(None)
    assert isinstance(wait, Wait) and 0.05 <= wait.seconds <= 0.1
    assert steps.send(None) == Recheck(OLD)
    assert steps.send(None) == Connect(OLD, 20)
    assert isinstance(steps.send(REFUSED), Refetch)  # the next round refetches (reuse window)


def test_after_a_wait_what_another_caller_recovered_meanwhile_is_used():
    # The last round must not log in with credentials the process has replaced.
    steps = plan(RetryBudget(rounds=1, base_delay=0.1, max_delay=0.1))
    next(steps)
    steps.send(REFUSED)
    assert isinstance(steps.send(None), Wait)  # nothing new yet
    assert steps.send(None) == Recheck(OLD)
    assert steps.send(NEW) == Connect(NEW, 20)  # another thread recovered with NEW
    with pytest.raises(StopIteration):
        steps.send(None)


def test_delays_grow_capped_and_jittered_then_the_plan_gives_up():
    budget = RetryBudget(rounds=5, base_delay=0.1, max_delay=0.3)
    steps = plan(budget)
    next(steps)
    action = steps.send(REFUSED)
    waits = []
    with pytest.raises(LoginRejectedError) as raised:
        while True:
            assert isinstance(action, Refetch) and action.rejected == OLD
            action = steps.send(None)
            assert isinstance(action, Wait)
            waits.append(action.seconds)
            assert steps.send(None) == Recheck(OLD)
            assert steps.send(None) == Connect(OLD, 20)
            action = steps.send(REFUSED)
    ceilings = [0.1, 0.2, 0.3, 0.3, 0.3]
    assert len(waits) == budget.rounds
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert sum(waits) <= budget.max_total_delay()
    error = raised.value
    assert error.__cause__ is REFUSED
    assert (error.secret_id, error.version_id, error.username) == ("db", "v1", "app_a")
    assert error.attempts == 6
    assert "old-pw" not in str(error)


def test_fetch_errors_are_retried_within_the_budget_and_named_when_giving_up():
    steps = plan(RetryBudget(rounds=2, base_delay=0, max_delay=0))
    next(steps)
    steps.send(REFUSED)
    assert isinstance(steps.send(THROTTLED), Wait)
    assert steps.send(None) == Recheck(OLD)
    assert steps.send(None) == Connect(OLD, 20)
    assert isinstance(steps.send(REFUSED), Refetch)
    assert isinstance(steps.send(THROTTLED), Wait)
    assert steps.send(None) == Recheck(OLD)
    assert steps.send(None) == Connect(OLD, 20)
    with pytest.raises(LoginRejectedError, match="ThrottlingException"):
        steps.send(REFUSED)


def test_new_credentials_refused_too_lead_to_another_refetch_at_once():
    steps = plan()
    next(steps)
    steps.send(REFUSED)
    assert steps.send(NEW) == Connect(NEW, 20)
    assert steps.send(NOLOGIN) == Refetch(NEW, 18.0, REFUSED_REUSE_SECONDS)


def test_an_unrecognised_fatal_checks_the_secret_once_and_uses_what_is_new():
    steps = plan()
    next(steps)
    assert steps.send(ODD_FATAL) == Refetch(OLD, 18.0, UNRECOGNISED_REUSE_SECONDS)
    assert steps.send(NEW) == Connect(NEW, 20)
    with pytest.raises(StopIteration):
        steps.send(None)


def test_an_unrecognised_fatal_with_nothing_new_is_raised_at_once():
    steps = plan()
    next(steps)
    steps.send(ODD_FATAL)
    with pytest.raises(OSError) as raised:
        steps.send(None)
    assert raised.value is ODD_FATAL


def test_an_unrecognised_fatal_then_a_refusal_of_new_credentials_recovers_as_usual():
    steps = plan()
    next(steps)
    steps.send(ODD_FATAL)
    steps.send(NEW)
    assert isinstance(steps.send(NOLOGIN), Refetch)


# -- first load -----------------------------------------------------------------------------


def test_without_credentials_the_plan_loads_first():
    steps = plan(start=None)
    assert steps.send(None) == Load(18.0)
    assert steps.send(OLD) == Connect(OLD, 20)


def test_a_throttled_first_load_is_retried_with_backoff():
    steps = plan(start=None)
    next(steps)
    wait = steps.send(THROTTLED)
    assert isinstance(wait, Wait)
    assert isinstance(steps.send(None), Load)
    assert steps.send(OLD) == Connect(OLD, 20)


def test_a_first_load_that_cannot_succeed_is_raised_at_once():
    missing = SecretNotFoundError("no such secret", secret_id="db")
    steps = plan(start=None)
    next(steps)
    with pytest.raises(SecretNotFoundError):
        steps.send(missing)


# -- the deadline ---------------------------------------------------------------------------


def test_each_step_gets_only_the_time_left():
    clock = FakeClock()
    steps = plan(RetryBudget(deadline=10), clock)
    assert next(steps) == Connect(OLD, 10)
    clock.now = 3.5  # the first login took 3.5 s
    refetch = steps.send(REFUSED)
    assert refetch == Refetch(OLD, 4.5, REFUSED_REUSE_SECONDS)  # leaves 2 s for a login
    clock.now = 6.2
    assert steps.send(NEW) == Connect(NEW, 3)  # whole seconds, rounded down


def test_no_login_starts_with_less_than_two_seconds_left_and_the_error_says_so():
    clock = FakeClock()
    steps = plan(RetryBudget(deadline=10), clock)
    next(steps)
    clock.now = 9.0
    with pytest.raises(LoginRejectedError, match=r"in 9\.0 s .*deadline 10 s"):
        steps.send(REFUSED)


def test_a_wait_that_would_overrun_the_deadline_is_not_started():
    clock = FakeClock()
    steps = plan(RetryBudget(deadline=3, base_delay=2, max_delay=2), clock)
    next(steps)
    assert isinstance(steps.send(REFUSED), Refetch)
    with pytest.raises(LoginRejectedError):
        steps.send(None)  # a 1-2 s wait would leave less than one login


def test_a_first_load_that_keeps_failing_gives_up_at_the_deadline_naming_it():
    clock = FakeClock()
    steps = plan(RetryBudget(deadline=6), clock, start=None)
    action = next(steps)
    with pytest.raises(SecretsManagerUnavailableError, match=r"deadline 6 s") as raised:
        while True:
            if isinstance(action, Load):
                clock.now += action.timeout  # each read hangs until its time-out
                action = steps.send(THROTTLED)
            else:
                clock.now += action.seconds
                action = steps.send(None)
    assert clock.now <= 6
    assert raised.value.__cause__ is THROTTLED


# -- the budget's own checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rounds": 0},
        {"rounds": 2.5},
        {"rounds": True},
        {"base_delay": -1},
        {"base_delay": 3, "max_delay": 1},
        {"max_delay": math.nan},
        {"max_delay": math.inf},
        {"base_delay": "0.1"},
        {"deadline": 1},
        {"deadline": math.inf},
    ],
)
def test_an_impossible_budget_is_a_configuration_error_at_once(kwargs):
    with pytest.raises(ConfigurationError, match="RetryBudget"):
        RetryBudget(**kwargs)


def test_the_default_budget_stays_below_thirty_seconds():
    budget = RetryBudget()
    assert budget.deadline < 30  # SQLAlchemy's pool_timeout, gunicorn's worker timeout
    assert budget.max_total_delay() < budget.deadline


# -- one verdict per failed login, and the plan decides confirm ----------------------------


def test_each_failed_login_is_judged_once_and_the_verdict_handed_on():
    verdicts = []
    steps = plan(on_verdict=verdicts.append)
    next(steps)
    steps.send(REFUSED)
    assert [(v.failure, v.credentials, v.refusals) for v in verdicts] == [(Failure.REFUSED, OLD, 1)]
    assert verdicts[0].error is REFUSED
    steps.send(NEW)
    steps.send(NOLOGIN)
    assert [(v.failure, v.credentials, v.refusals) for v in verdicts][1:] == [
        (Failure.REFUSED, NEW, 2)
    ]


def test_a_login_after_a_refusal_ends_the_plan_asking_the_store_to_confirm():
    steps = plan()
    next(steps)
    steps.send(REFUSED)
    assert steps.send(NEW) == Connect(NEW, 20)
    with pytest.raises(StopIteration) as ended:
        steps.send(None)
    assert ended.value.value == Success(NEW, confirm=True, refusals=1)


def test_a_first_login_or_one_after_an_unrecognised_error_confirms_nothing():
    steps = plan()
    next(steps)
    with pytest.raises(StopIteration) as ended:
        steps.send(None)
    assert ended.value.value == Success(OLD, confirm=False, refusals=0)
    verdicts = []
    steps = plan(on_verdict=verdicts.append)
    next(steps)
    steps.send(ODD_FATAL)
    steps.send(NEW)
    with pytest.raises(StopIteration) as ended:
        steps.send(None)
    assert ended.value.value == Success(NEW, confirm=False, refusals=0)
    assert [v.failure for v in verdicts] == [Failure.UNRECOGNISED]


def test_a_verdict_never_shows_the_error_or_the_password():
    verdict = judge_login_error(REFUSED, Credentials("app_a", "s3cr3t-pw", version_id="v1"))
    assert verdict.refused and verdict.refusals == 1
    assert "s3cr3t-pw" not in repr(verdict)
    assert "authentication failed" not in repr(verdict)


def test_a_plan_started_after_the_shell_took_its_first_login_goes_on_from_there():
    clock = FakeClock()
    assert first_login(OLD, RetryBudget(deadline=20.0)) == Connect(OLD, 20)
    clock.now = 5.0  # the first login took 5 s and was refused
    steps = plan(clock=clock, first_failed=REFUSED, started=0.0)
    # No second first login: the refusal is judged, and the deadline counts from 0.
    assert next(steps) == Refetch(OLD, 13.0, REFUSED_REUSE_SECONDS)
    assert steps.send(NEW) == Connect(NEW, 15)
    with pytest.raises(StopIteration) as ended:
        steps.send(None)
    assert ended.value.value == Success(NEW, confirm=True, refusals=1)


# -- the read order (rotating_pool.core.reads) ---------------------------------------------


def test_the_recovery_route_reads_the_label_that_holds_the_answer_else_the_labels():
    # Refused credentials read as AWSPENDING: a newer rotation's AWSPENDING.
    assert recovery_route(AWSPENDING, None, use_pending=True) is Route.PENDING
    assert recovery_route(AWSPENDING, AWSPENDING, use_pending=True) is Route.PENDING
    assert recovery_route(AWSPENDING, None, use_pending=False) is Route.LABELS
    # AWSCURRENT moved at the last recovery (alternating users): read it.
    assert recovery_route(AWSCURRENT, AWSCURRENT, use_pending=True) is Route.CURRENT
    # Nothing known: DescribeSecret first saves a value read if nothing moved.
    assert recovery_route(AWSCURRENT, None, use_pending=True) is Route.LABELS
    assert recovery_route(AWSCURRENT, AWSPENDING, use_pending=True) is Route.LABELS
    # A version read already (by the refresh) answers from memory after a DescribeSecret.
    assert recovery_route(AWSPENDING, None, use_pending=True, read_other=True) is Route.LABELS
    assert recovery_route(AWSCURRENT, AWSCURRENT, use_pending=True, read_other=True) is (
        Route.LABELS
    )


def test_after_a_stage_read_found_nothing_new_the_other_label_is_read_only_if_elsewhere():
    assert next_stage(AWSCURRENT, [AWSCURRENT], use_pending=True) == AWSPENDING
    assert next_stage(AWSCURRENT, [AWSCURRENT, AWSPENDING], use_pending=True) is None
    assert next_stage(AWSCURRENT, [AWSCURRENT], use_pending=False) is None
    assert next_stage(AWSPENDING, [AWSPENDING], use_pending=True) == AWSCURRENT
    assert next_stage(AWSPENDING, [], use_pending=True) == AWSCURRENT  # no AWSPENDING at all
    assert next_stage(AWSPENDING, [AWSPENDING, AWSCURRENT], use_pending=True) is None


def test_a_refused_login_never_reads_a_refused_version_again():
    labels = Labels("v2", pending="v3")
    assert recovery_reads(labels, {"v1"}) == [Read("v2", AWSCURRENT), Read("v3", AWSPENDING)]
    assert recovery_reads(labels, {"v2"}) == [Read("v3", AWSPENDING)]
    assert recovery_reads(labels, {"v2"}, use_pending=False) == []
    assert steady_read(labels, held="v2") is None
    assert steady_read(labels, held="v1") == Read("v2", AWSCURRENT)
