"""Refusals in words the policy does not know (issue 25): ridden out, within a bound.

The plan driven by hand with a fake clock (as tests/test_policy.py does), the
classifier's severity rule with fakes of drivers' errors, the store's
rotation fact with a fake source, and one permanent refusal through the real
PostgreSQL (a missing CONNECT privilege).
"""

from __future__ import annotations

import json
import random
import time
import uuid

import pytest
import sqlalchemy
from psycopg import sql

import rotating_pool
from rotating_pool import LoginRejectedError, RetryBudget
from rotating_pool.core.plan import (
    REFUSED_REUSE_SECONDS,
    ROTATION_RECENT_SECONDS,
    ROTATION_UNRECOGNISED_REUSE_SECONDS,
    UNRECOGNISED_REUSE_SECONDS,
    UNRECOGNISED_WINDOW_SECONDS,
)
from rotating_pool.policy import (
    Connect,
    Failure,
    Recheck,
    Refetch,
    Wait,
    classify_login_error,
    login_plan,
)
from rotating_pool.secret import AWSPENDING, Credentials
from tests.test_policy import NEW, OLD, REFUSED, REFUSED_PORT, FakeClock
from tests.test_store import B2, WAIT, FakeSource, loaded_store

UNLISTED = OSError(
    'connection failed: connection to server at "127.0.0.1", port 6432 failed: '
    "ERROR:  login denied: upstream link 2 still holds an older authentication record"
)
# A recovery ridden out to the budget's end: its 12 rounds of waits (10 to
# 19.75 s with jitter) or the deadline (20 s), whichever comes first.
RIDDEN_OUT = 10.0
PENDING = Credentials("app_a", "pending-pw", version_id="v3", stage=AWSPENDING)


def plan(clock, start=OLD, changed_ago=None, budget=None):
    return login_plan(
        start,
        secret_id="db",
        budget=budget or RetryBudget(),
        rng=random.Random(1),
        clock=clock,
        changed_ago=changed_ago,
    )


def drive(steps, clock, error, login_seconds=0.01, newer=None):
    """Answer every step until the plan ends: each login fails with `error` after
    `login_seconds`, each refetch finds `newer`, waits pass on the fake clock.
    Returns (the steps seen, what the plan raised)."""
    seen = []
    action = next(steps)
    while True:
        seen.append(action)
        if isinstance(action, Connect):
            clock.now += login_seconds
            answer = error
        elif isinstance(action, Wait):
            clock.now += action.seconds
            answer = None
        elif isinstance(action, Refetch):
            answer = newer
        else:
            answer = None
        try:
            action = steps.send(answer)
        except StopIteration:
            return seen, None
        except Exception as raised:  # the plan's verdict, for the test to weigh
            return seen, raised


def of(kind, seen):
    return [step for step in seen if isinstance(step, kind)]


# -- the plan -------------------------------------------------------------------------------


def test_an_unrecognised_refusal_with_nothing_new_is_retried_with_backoff():
    clock = FakeClock()
    steps = plan(clock)
    next(steps)
    assert steps.send(UNLISTED) == Refetch(OLD, 18.0, UNRECOGNISED_REUSE_SECONDS)
    wait = steps.send(None)
    assert isinstance(wait, Wait) and 0.125 <= wait.seconds <= 0.25
    assert steps.send(None) == Recheck(OLD)
    assert steps.send(None) == Connect(OLD, 20)
    with pytest.raises(StopIteration):
        steps.send(None)  # the retry logged in


def test_outside_a_rotation_a_permanent_unrecognised_refusal_ends_within_its_window():
    clock = FakeClock()
    seen, raised = drive(plan(clock), clock, UNLISTED, login_seconds=0.05)
    assert raised is UNLISTED  # the driver's own error: its wording is what there is
    assert clock.now <= UNRECOGNISED_WINDOW_SECONDS + 0.05  # the window, plus one login
    assert len(of(Connect, seen)) >= 4  # it did retry meanwhile
    # One check, with the long reuse window: one call per process per minute.
    assert of(Refetch, seen) == [Refetch(OLD, 17.95, UNRECOGNISED_REUSE_SECONDS)]


def test_during_a_rotation_an_unrecognised_refusal_is_ridden_out_to_the_deadline():
    clock = FakeClock()
    seen, raised = drive(plan(clock, changed_ago=30.0), clock, UNLISTED, login_seconds=0.05)
    assert raised is UNLISTED
    assert clock.now > RIDDEN_OUT  # the budget ended it, not the window
    refetches = of(Refetch, seen)
    assert {step.reuse_for for step in refetches} == {ROTATION_UNRECOGNISED_REUSE_SECONDS}
    assert len(refetches) <= 20.0 / ROTATION_UNRECOGNISED_REUSE_SECONDS


def test_credentials_learnt_moments_ago_count_as_checked():
    clock = FakeClock()
    steps = plan(clock, changed_ago=0.5)
    next(steps)
    assert isinstance(steps.send(UNLISTED), Wait)  # no Secrets Manager call first
    assert steps.send(None) == Recheck(OLD)


def test_a_change_longer_ago_than_the_recent_window_is_no_rotation():
    clock = FakeClock()
    _, raised = drive(plan(clock, changed_ago=ROTATION_RECENT_SECONDS + 1), clock, UNLISTED)
    assert raised is UNLISTED
    assert clock.now <= UNRECOGNISED_WINDOW_SECONDS + 0.01


def test_awspending_credentials_mean_a_rotation_in_progress():
    clock = FakeClock()
    _, raised = drive(plan(clock, start=PENDING), clock, UNLISTED)
    assert raised is UNLISTED
    assert clock.now > RIDDEN_OUT


def test_new_credentials_from_a_check_make_it_a_rotation():
    clock = FakeClock()
    steps = plan(clock)
    next(steps)
    steps.send(UNLISTED)
    assert steps.send(NEW) == Connect(NEW, 20)  # tried at once
    assert isinstance(steps.send(UNLISTED), Wait)  # just checked: no call
    _, raised = drive(steps, clock, UNLISTED)
    assert raised is UNLISTED
    assert clock.now > RIDDEN_OUT  # no longer held to the short window


def test_an_unrecognised_refusal_of_credentials_a_refusal_led_to_is_ridden_out():
    # The stand-in's case: PostgreSQL refuses the old password, the pooler
    # refuses AWSPENDING on one of its old connections.
    clock = FakeClock()
    steps = plan(clock)
    next(steps)
    assert steps.send(REFUSED) == Refetch(OLD, 18.0, REFUSED_REUSE_SECONDS)
    assert steps.send(PENDING) == Connect(PENDING, 20)
    assert isinstance(steps.send(UNLISTED), Wait)
    assert steps.send(None) == Recheck(PENDING)
    assert steps.send(None) == Connect(PENDING, 20)
    with pytest.raises(StopIteration):
        steps.send(None)


def test_another_callers_recovery_is_taken_while_riding_one_out():
    clock = FakeClock()
    steps = plan(clock)
    next(steps)
    steps.send(UNLISTED)
    steps.send(None)  # the check found nothing: wait
    assert steps.send(None) == Recheck(OLD)
    assert steps.send(NEW) == Connect(NEW, 20)


def test_a_network_error_in_the_middle_is_raised_at_once():
    clock = FakeClock()
    steps = plan(clock)
    next(steps)
    steps.send(UNLISTED)
    steps.send(None)
    steps.send(None)
    assert isinstance(steps.send(None), Connect)
    with pytest.raises(OSError) as raised:
        steps.send(REFUSED_PORT)
    assert raised.value is REFUSED_PORT


def test_a_recognised_refusal_after_an_unrecognised_one_ends_as_a_rejection():
    clock = FakeClock()
    steps = plan(clock)
    next(steps)
    steps.send(UNLISTED)
    _, raised = drive(steps, clock, REFUSED)
    assert isinstance(raised, LoginRejectedError)
    assert raised.__cause__ is REFUSED


# -- the classifier -------------------------------------------------------------------------


class AsyncpgLikeError(Exception):
    """asyncpg's shape: str() is the message alone; severity and sqlstate apart."""

    def __init__(self, message, severity_en, sqlstate=None):
        super().__init__(message)
        self.severity_en = severity_en
        self.severity = severity_en
        self.sqlstate = sqlstate


def test_a_login_time_error_without_sqlstate_counts_as_the_server_speaking():
    error = AsyncpgLikeError("login denied: upstream link 0 is stale", "ERROR")
    assert classify_login_error(error) is Failure.UNRECOGNISED
    pg8000_like = Exception({"S": "ERROR", "V": "ERROR", "M": "login denied"})
    assert classify_login_error(pg8000_like) is Failure.UNRECOGNISED


def test_network_and_capacity_errors_stay_transient_at_any_severity():
    full = AsyncpgLikeError("sorry, too many clients already", "FATAL", "53300")
    assert classify_login_error(full) is Failure.TRANSIENT
    busy = AsyncpgLikeError("no more connections allowed (max_client_conn)", "ERROR")
    assert classify_login_error(busy) is Failure.TRANSIENT
    assert classify_login_error(OSError("Connection refused")) is Failure.TRANSIENT
    no_severity = AsyncpgLikeError("login denied", "")
    assert classify_login_error(no_severity) is Failure.TRANSIENT


# -- the store's rotation fact ------------------------------------------------------------


def test_the_store_says_how_long_ago_its_credentials_replaced_others():
    source = FakeSource()
    clock = FakeClock()
    store = loaded_store(source, clock=clock)
    assert store.changed_ago() is None  # the first credentials: no rotation seen
    source.current = B2
    clock.now = 100.0
    assert store.refetch(store.held(), WAIT) == B2
    clock.now = 130.0
    assert store.changed_ago() == 30.0


# -- through the real PostgreSQL ------------------------------------------------------------


@pytest.fixture
def no_connect_secret(postgres, app_schema, sm_client):
    """The app's secret, naming a database the app's users may not CONNECT to."""
    closed = f"{app_schema.dbname}_closed"
    with postgres.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(closed)))
        conn.execute(
            sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(closed))
        )
    document = dict(app_schema.secret_document("alternating"), dbname=closed)
    return sm_client.create_secret(
        Name=f"no-connect-{uuid.uuid4().hex}", SecretString=json.dumps(document)
    )["ARN"]


def test_a_missing_connect_privilege_fails_within_the_window_not_the_deadline(
    no_connect_secret, proxy, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    engine = rotating_pool.create_engine("postgresql+psycopg://", secret_id=no_connect_secret)
    began = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="permission denied for database"):
        engine.connect()
    took = time.monotonic() - began
    # The window (3 s) plus one login and the first read, with a margin for a busy
    # machine; far below the deadline (20 s).
    logins = rotating_pool.stats(engine).logins
    print(f"missing CONNECT: failed after {took:.2f} s and {logins} logins")  # shown with -s
    assert took < UNRECOGNISED_WINDOW_SECONDS + 4.0, took
    assert rotating_pool.stats(engine).logins >= 3  # it retried meanwhile
    # One first read, one check: no more Secrets Manager calls than that.
    assert proxy.calls["GetSecretValue"] == 1, dict(proxy.calls)
    assert proxy.calls["DescribeSecret"] <= 1, dict(proxy.calls)
    began = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        engine.connect()  # the next request: no new call within the reuse window
    assert time.monotonic() - began < UNRECOGNISED_WINDOW_SECONDS + 4.0
    assert proxy.calls["DescribeSecret"] <= 1, dict(proxy.calls)
    engine.dispose()
