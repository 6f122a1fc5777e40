"""The login policy, driven by hand: no database, no network, no clock."""

from __future__ import annotations

import random

import pytest

from rotating_pool import LoginRejectedError, RetryBudget, is_login_rejection
from rotating_pool.errors import ConfigurationError, SecretsManagerUnavailableError
from rotating_pool.policy import Connect, Refetch, Wait, login_plan
from rotating_pool.secret import Credentials

OLD = Credentials("app_a", "old-pw", version_id="v1")
NEW = Credentials("app_b", "new-pw", version_id="v2")
REFUSED = OSError('connection failed: FATAL:  password authentication failed for user "app_a"')
NOLOGIN = OSError('FATAL:  role "app_b" is not permitted to log in')


def plan(budget: RetryBudget | None = None):
    return login_plan(OLD, secret_id="db", budget=budget or RetryBudget(), rng=random.Random(1))


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  password '
        'authentication failed for user "x"',
        'FATAL:  role "x" is not permitted to log in',
        'FATAL:  PAM authentication failed for user "x"',
    ],
)
def test_server_messages_of_a_refused_login_are_rejections(message):
    assert is_login_rejection(OSError(message))


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "127.0.0.1", port 1 failed: Connection refused',
        "timeout expired",
        'could not translate host name "nope" to address',
        "FATAL:  sorry, too many clients already",
    ],
)
def test_network_and_capacity_errors_are_not_rejections(message):
    assert not is_login_rejection(OSError(message))


def test_sqlstate_28p01_and_28000_are_rejections_whatever_the_message():
    error = OSError("opaque")
    error.sqlstate = "28P01"  # type: ignore[attr-defined]
    assert is_login_rejection(error)
    error.sqlstate = "28000"  # type: ignore[attr-defined]
    assert is_login_rejection(error)
    error.sqlstate = "53300"  # type: ignore[attr-defined]
    assert not is_login_rejection(error)


def test_a_wrapped_driver_error_is_recognised_through_orig():
    wrapper = RuntimeError("(psycopg.OperationalError) wrapped")
    wrapper.orig = REFUSED  # type: ignore[attr-defined]
    assert is_login_rejection(wrapper)


def test_a_successful_first_login_asks_for_nothing_else():
    steps = plan()
    assert next(steps) == Connect(OLD)
    with pytest.raises(StopIteration):
        steps.send(None)


def test_a_rejection_refetches_at_once_and_logs_in_with_what_it_gets():
    steps = plan()
    next(steps)
    assert steps.send(REFUSED) == Refetch(OLD)  # no Wait before the first refetch
    assert steps.send(NEW) == Connect(NEW)


def test_an_error_that_is_not_a_rejection_is_raised_as_is_without_refetching():
    steps = plan()
    next(steps)
    refused_port = OSError("Connection refused")
    with pytest.raises(OSError) as raised:
        steps.send(refused_port)
    assert raised.value is refused_port


def test_nothing_new_waits_with_growing_capped_jittered_delays_then_gives_up():
    budget = RetryBudget(rounds=5, base_delay=0.1, max_delay=0.3)
    steps = plan(budget)
    next(steps)
    action = steps.send(REFUSED)
    waits = []
    with pytest.raises(LoginRejectedError) as raised:
        while True:
            assert action == Refetch(OLD)
            action = steps.send(None)
            assert isinstance(action, Wait)
            waits.append(action.seconds)
            action = steps.send(None)
    assert len(waits) == budget.rounds - 1
    ceilings = [0.1, 0.2, 0.3, 0.3]
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert sum(waits) <= budget.max_total_delay()
    error = raised.value
    assert error.__cause__ is REFUSED
    assert (error.secret_id, error.version_id, error.username) == ("db", "v1", "app_a")
    assert "old-pw" not in str(error)


def test_fetch_errors_are_retried_within_the_budget_and_named_when_giving_up():
    steps = plan(RetryBudget(rounds=2, base_delay=0, max_delay=0))
    next(steps)
    steps.send(REFUSED)
    throttled = SecretsManagerUnavailableError("throttled: ThrottlingException", secret_id="db")
    assert isinstance(steps.send(throttled), Wait)
    assert steps.send(None) == Refetch(OLD)
    with pytest.raises(LoginRejectedError, match="ThrottlingException"):
        steps.send(throttled)


def test_new_credentials_that_are_refused_too_lead_to_another_round():
    steps = plan()
    next(steps)
    steps.send(REFUSED)
    assert steps.send(NEW) == Connect(NEW)
    assert isinstance(steps.send(NOLOGIN), Wait)
    assert steps.send(None) == Refetch(NEW)


@pytest.mark.parametrize(
    "kwargs", [{"rounds": 0}, {"base_delay": -1}, {"base_delay": 3, "max_delay": 1}]
)
def test_an_impossible_budget_is_a_configuration_error(kwargs):
    with pytest.raises(ConfigurationError):
        RetryBudget(**kwargs)


def test_the_default_budget_gives_up_within_ten_seconds_of_waiting():
    assert 5 < RetryBudget().max_total_delay() < 10
