"""The login plan's edges that `make mutation` found no fast test held: exact deadlines,
the first load's retries and its errors, counts and messages, the classifier's chain,
retirement's timing.

Pure: the plan driven by hand with a fake clock, no database or network.
"""

from __future__ import annotations

import random

import pytest

from rotating_pool import LoginRejectedError, RetryBudget
from rotating_pool.core.retirement import (
    MIN_RETIRE_AFTER,
    max_per_second,
    retirement_times,
    validate_retire_after,
)
from rotating_pool.errors import ConfigurationError, SecretsManagerUnavailableError
from rotating_pool.policy import (
    Connect,
    Failure,
    Load,
    Refetch,
    Wait,
    classify_login_error,
    login_plan,
)
from rotating_pool.secret import Credentials

OLD = Credentials("app_a", "old-pw", version_id="v1")
NEW = Credentials("app_b", "new-pw", version_id="v2")
UNVERSIONED = Credentials("app_a", "old-pw")
REFUSED = OSError('FATAL:  password authentication failed for user "app_a"')
ODD_FATAL = OSError("FATAL:  the gatekeeper does not like you today")
THROTTLED = SecretsManagerUnavailableError("throttled: ThrottlingException", secret_id="db")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now  # not zero: a clock's origin must not matter

    def __call__(self) -> float:
        return self.now


def make(budget: RetryBudget, clock: Clock, start: Credentials | None = OLD, seed: int = 1):
    return login_plan(start, secret_id="db", budget=budget, rng=random.Random(seed), clock=clock)


# -- RetryBudget -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"base_delay": -1}, "RetryBudget.base_delay must be positive"),
        ({"max_delay": -1}, "RetryBudget.max_delay must be positive"),
        ({"deadline": float("nan")}, "RetryBudget.deadline must be a finite number"),
        ({"base_delay": 3.0, "max_delay": 2.0}, "RetryBudget needs base_delay <= max_delay"),
    ],
)
def test_a_bad_budget_names_the_field_to_fix(kwargs, names):
    with pytest.raises(ConfigurationError) as raised:
        RetryBudget(**kwargs)
    assert str(raised.value).startswith(names)


def test_a_deadline_of_exactly_one_login_and_zero_delays_are_allowed():
    assert RetryBudget(deadline=2).deadline == 2.0
    assert RetryBudget(base_delay=0, max_delay=0).max_total_delay() == 0.0


def test_delays_come_from_the_generator_given_or_the_random_module():
    budget = RetryBudget(rounds=5)
    assert list(budget.delays(random.Random(3))) == list(budget.delays(random.Random(3)))
    assert len(list(budget.delays())) == 5  # no generator given: the random module's


def test_the_longest_total_wait_is_the_sum_of_the_capped_doublings():
    assert RetryBudget(rounds=4, base_delay=0.25, max_delay=2.0).max_total_delay() == 3.75


# -- exact deadlines ---------------------------------------------------------------------------


def test_every_step_gets_the_time_left_whatever_the_clocks_origin():
    clock = Clock()
    plan = make(RetryBudget(deadline=20), clock)
    assert next(plan) == Connect(OLD, 20)
    clock.now += 3.5
    refetch = plan.send(REFUSED)
    assert isinstance(refetch, Refetch) and refetch.timeout == pytest.approx(14.5)


def test_the_wait_uses_the_plans_own_generator():
    budget = RetryBudget(deadline=20)
    plan = make(budget, Clock())
    next(plan)
    plan.send(REFUSED)
    wait = plan.send(None)  # nothing new
    assert wait == Wait(next(budget.delays(random.Random(1))))


def _refused_then_refetched_at(left: float, answer: object):
    """A plan refused once; its refetch answers `answer` when `left` seconds remain."""
    clock = Clock()
    plan = make(RetryBudget(deadline=20), clock)
    next(plan)
    plan.send(REFUSED)
    clock.now += 20 - left
    return plan, plan.send(answer)


def test_a_login_gets_exactly_two_seconds_when_two_are_left():
    _plan, action = _refused_then_refetched_at(2.0, NEW)
    assert action == Connect(NEW, 2)


def test_no_login_starts_with_less_than_two_seconds_left_after_a_refetch():
    clock = Clock()
    plan = make(RetryBudget(deadline=20), clock)
    next(plan)
    plan.send(REFUSED)
    clock.now += 18.5  # the refetch took long: 1.5 s left
    with pytest.raises(LoginRejectedError) as raised:
        plan.send(NEW)
    assert raised.value.attempts == 1


def test_no_refetch_starts_when_exactly_one_login_is_left():
    clock = Clock()
    plan = make(RetryBudget(deadline=20), clock)
    next(plan)
    clock.now += 18.0  # the refused login took 18 s: 2 s left, all of it for a login
    with pytest.raises(LoginRejectedError):
        plan.send(REFUSED)


def test_the_attempts_counted_include_the_login_after_an_unrecognised_error():
    # An unrecognised refusal now takes a round of the budget like a recognised one (issue 25).
    clock = Clock()
    plan = make(RetryBudget(rounds=2, base_delay=0.1, max_delay=0.1, deadline=20), clock)
    next(plan)
    assert isinstance(plan.send(ODD_FATAL), Refetch)
    assert plan.send(NEW) == Connect(NEW, 20)
    assert isinstance(plan.send(REFUSED), Refetch)
    assert isinstance(plan.send(None), Wait)
    plan.send(None)  # the wait
    assert isinstance(plan.send(None), Connect)  # nothing recovered meanwhile: again
    with pytest.raises(LoginRejectedError) as raised:
        plan.send(REFUSED)
    assert raised.value.attempts == 3
    assert "after 3 login attempts" in str(raised.value)


def test_giving_up_says_how_long_it_took_and_what_to_check():
    clock = Clock()
    plan = make(RetryBudget(rounds=1, base_delay=0.1, max_delay=0.1), clock, start=UNVERSIONED)
    next(plan)
    plan.send(REFUSED)
    plan.send(THROTTLED)  # the refetch failed
    plan.send(None)  # waited
    clock.now += 3.0
    plan.send(None)
    with pytest.raises(LoginRejectedError) as raised:
        plan.send(REFUSED)
    message = str(raised.value)
    assert "version (unknown version)" in message and "in 3.0 s" in message
    assert message.startswith("the database rejected user 'app_a' from secret 'db'")
    assert (
        "check that the password in the secret matches the database "
        "(a failed or half-finished rotation?)" in message
    )
    assert message.endswith("the last Secrets Manager read failed too: " + str(THROTTLED))


def test_a_foreign_read_error_is_named_by_its_type_only():
    plan = make(RetryBudget(rounds=1, base_delay=0.1, max_delay=0.1), Clock())
    next(plan)
    plan.send(REFUSED)
    plan.send(OSError("a body that quotes the secret: hunter2"))
    plan.send(None)
    plan.send(None)
    with pytest.raises(LoginRejectedError) as raised:
        plan.send(REFUSED)
    assert str(raised.value).endswith("the last Secrets Manager read failed too: OSError")
    assert "hunter2" not in str(raised.value)


def test_an_unexpected_answer_becomes_an_error_naming_its_type():
    plan = make(RetryBudget(), Clock())
    next(plan)
    with pytest.raises(RuntimeError, match="unexpected answer: int"):
        plan.send(42)  # type: ignore[arg-type]


# -- the first load ----------------------------------------------------------------------------


def test_a_throttled_first_load_is_tried_once_more_than_the_rounds():
    budget = RetryBudget(rounds=3, base_delay=0.1, max_delay=0.1, deadline=60)
    clock = Clock()
    plan = make(budget, clock, start=None)
    loads, waits, action = 0, [], next(plan)
    with pytest.raises(SecretsManagerUnavailableError) as raised:
        while True:
            if isinstance(action, Load):
                loads += 1
                action = plan.send(THROTTLED)
            else:
                assert isinstance(action, Wait)
                waits.append(action.seconds)
                clock.now += action.seconds
                action = plan.send(None)
    assert loads == 4
    assert waits == list(budget.delays(random.Random(1)))
    error = raised.value
    assert error.secret_id == "db"
    assert str(error).startswith("no credentials for secret 'db': the first read did not")
    assert str(error).endswith("throttled: ThrottlingException")


def test_a_first_load_never_waits_past_the_deadline():
    budget = RetryBudget(base_delay=2.0, max_delay=2.0, deadline=3)  # waits of 1 to 2 s
    plan = make(budget, Clock(), start=None)
    assert next(plan) == Load(pytest.approx(1.0))
    with pytest.raises(SecretsManagerUnavailableError, match="deadline 3 s"):
        plan.send(THROTTLED)  # 3 s left, less a wait, is not a login


def test_without_time_for_any_read_the_error_says_so():
    plan = make(RetryBudget(deadline=2), Clock(), start=None)
    with pytest.raises(SecretsManagerUnavailableError) as raised:
        next(plan)
    assert str(raised.value).endswith("no time left for a read")
    assert raised.value.__cause__ is None


# -- the classifier's chain --------------------------------------------------------------------


def test_an_error_with_no_server_message_and_no_sqlstate_is_transient():
    assert classify_login_error(OSError("the network ate it")) is Failure.TRANSIENT


def test_a_refusal_behind_a_wrapper_is_found_through_the_cause():
    wrapper = RuntimeError("could not connect")
    wrapper.__cause__ = REFUSED
    assert classify_login_error(wrapper) is Failure.REFUSED


def test_a_cyclic_chain_of_causes_is_walked_once():
    first, second = RuntimeError("one"), RuntimeError("two")
    first.__cause__, second.__cause__ = second, first
    assert classify_login_error(first) is Failure.TRANSIENT


class Psycopg2Error(Exception):
    """psycopg2 names the SQLSTATE ``pgcode``."""

    def __init__(self, message: str, pgcode: str) -> None:
        super().__init__(message)
        self.pgcode = pgcode


def test_psycopg2s_pgcode_is_read():
    assert classify_login_error(Psycopg2Error("login failed", "28P01")) is Failure.REFUSED


def test_each_failed_login_is_judged_with_the_credentials_it_tried():
    verdicts = []
    plan = login_plan(
        OLD,
        secret_id="db",
        budget=RetryBudget(),
        rng=random.Random(1),
        clock=Clock(),
        on_verdict=verdicts.append,
    )
    next(plan)
    plan.send(REFUSED)
    plan.send(NEW)  # the refetch found NEW
    plan.send(REFUSED)  # NEW refused too
    assert [v.credentials for v in verdicts] == [OLD, NEW]


def test_an_unrecognised_error_is_raised_when_the_refetch_leaves_no_time_for_a_login():
    clock = Clock()
    plan = make(RetryBudget(deadline=20), clock)
    next(plan)
    assert isinstance(plan.send(ODD_FATAL), Refetch)
    clock.now += 18.5  # the refetch took long: 1.5 s left
    with pytest.raises(OSError, match="gatekeeper"):
        plan.send(NEW)


def test_a_refusal_after_a_first_load_that_used_every_delay_still_waits_and_gives_up():
    clock = Clock()
    plan = make(RetryBudget(rounds=2, base_delay=0.1, max_delay=0.1, deadline=60), clock, None)
    action = next(plan)
    for answer in (THROTTLED, None, THROTTLED, None):  # two throttled loads, two waits
        action = plan.send(answer)
    assert isinstance(action, Load)
    assert isinstance(plan.send(OLD), Connect)
    assert isinstance(plan.send(REFUSED), Refetch)
    with pytest.raises(LoginRejectedError):
        action = plan.send(None)  # nothing new
        while True:
            action = plan.send(REFUSED if isinstance(action, Connect) else None)


# -- retirement's timing ----------------------------------------------------------------------


def test_retire_after_accepts_the_minimum_and_returns_a_float():
    assert validate_retire_after(MIN_RETIRE_AFTER) == MIN_RETIRE_AFTER
    assert validate_retire_after(7) == 7.0 and isinstance(validate_retire_after(7), float)


def test_a_retire_after_of_the_wrong_type_names_its_type():
    with pytest.raises(ConfigurationError, match="not str"):
        validate_retire_after("10")


def test_retirement_moments_one_per_slice_from_the_generator_given():
    assert retirement_times(0, 0.0, 10.0) == []
    assert len(retirement_times(1, 0.0, 10.0)) == 1
    moments = retirement_times(4, 100.0, 8.0, random.Random(5))
    assert moments == retirement_times(4, 100.0, 8.0, random.Random(5))
    assert all(100 + 2 * i + 0.5 <= m <= 100 + 2 * i + 1.5 for i, m in enumerate(moments))
    assert len(retirement_times(3, 0.0, 3.0)) == 3  # the random module's, without one


def test_no_connections_means_no_retirements_per_second():
    assert max_per_second(0, 10.0) == 0
    assert max_per_second(10, 5.0) == 3


def test_the_login_after_an_unrecognised_error_is_judged_with_its_own_credentials():
    verdicts = []
    plan = login_plan(
        OLD,
        secret_id="db",
        budget=RetryBudget(),
        rng=random.Random(1),
        clock=Clock(),
        on_verdict=verdicts.append,
    )
    next(plan)
    plan.send(ODD_FATAL)
    plan.send(NEW)  # the refetch found NEW
    plan.send(REFUSED)  # NEW refused
    assert [v.credentials for v in verdicts] == [OLD, NEW]
