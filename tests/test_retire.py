"""Retirement (`retire_after`): sessions on superseded credentials are closed in time.

Sessions are counted in pg_stat_activity, by the pids an engine had open
before a rotation: every one of them logged in with the credentials the
rotation superseded, in both strategies.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import threading
import time

import pytest
import sqlalchemy
from sqlalchemy import event, text

import rotating_pool
from rotating_pool import ConfigurationError
from rotating_pool.retire import (
    LOGIN_KEY,
    login_of,
    max_per_second,
    poll_interval,
    retirement_times,
    retirement_window,
)
from rotating_pool.rotation import Rotator
from rotating_pool.secret import Credentials
from rotating_pool.testing.workload import WriteLoad

_names = itertools.count(1)


def most_in_one_second(moments: list[float]) -> int:
    ordered = sorted(moments)
    return max(
        (sum(1 for m in ordered[i:] if m < t + 1.0) for i, t in enumerate(ordered)), default=0
    )


# -- the spread, as pure logic ------------------------------------------------------


@pytest.mark.parametrize(("count", "window"), [(16, 8.0), (8, 8.0), (100, 30.0), (3, 3.0)])
def test_moments_are_spread_evenly_across_the_window(count, window):
    rng = random.Random(7)
    for _ in range(200):
        moments = retirement_times(count, 100.0, window, rng)
        assert len(moments) == count
        assert all(100.0 <= m < 100.0 + window for m in moments)
        assert most_in_one_second(moments) <= max_per_second(count, window)


def test_the_window_leaves_two_polls_for_noticing_and_stays_within_the_issue_bound():
    assert poll_interval(10) == 1 and retirement_window(10) == 8
    assert poll_interval(900) == 90 and retirement_window(900) == 720
    # A 16-connection pool retired over 10 s: at most ceil(16 / 10) + 1 per second.
    assert max_per_second(16, retirement_window(10)) == math.ceil(16 / 10) + 1


def test_a_login_record_holds_no_password():
    credentials = Credentials("app_a", "s3cret-Pa55word", "db", 5432, "app", version_id="v1")
    login = login_of(credentials)
    assert "s3cret" not in repr(login) and "s3cret" not in login.fingerprint
    other = Credentials("app_a", "another-password", "db", 5432, "app", version_id="v1")
    assert login_of(other).fingerprint != login.fingerprint
    assert login_of(credentials) == login


@pytest.mark.parametrize("value", [0, 4.9, -1, True, "10", float("nan")])
def test_a_bad_retire_after_is_a_configuration_error(value):
    with pytest.raises(ConfigurationError, match="retire_after"):
        rotating_pool.create_engine("postgresql+psycopg://", secret_id="x", retire_after=value)


# -- on the real bed ------------------------------------------------------------------


def open_pids(postgres, application_name: str) -> set[int]:
    with postgres.admin_connect() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchall()
    return {pid for (pid,) in rows}


def wait_until_gone(postgres, application_name: str, pids: set[int], deadline: float) -> float:
    """Seconds until none of `pids` is open, or math.inf if some still are at `deadline`."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        if not pids & open_pids(postgres, application_name):
            return time.monotonic() - started
        time.sleep(0.1)  # polling the server, with a deadline
    return math.inf


def engine_for(arn: str, *, driver: str = "psycopg", **kwargs):
    name = f"retire-test-{next(_names)}"
    if driver in ("psycopg", "psycopg2", "pg8000", "asyncpg", "psycopg_async"):
        connect_args = (
            {"server_settings": {"application_name": name}}
            if driver == "asyncpg"
            else {"application_name": name}
        )
    url = f"postgresql+{driver}://"
    make = (
        rotating_pool.create_async_engine
        if driver in ("asyncpg", "psycopg_async")
        else rotating_pool.create_engine
    )
    return make(url, secret_id=arn, connect_args=connect_args, **kwargs), name


def rotate(sm_client, arn: str) -> float:
    """One rotation; returns the monotonic time of its finishSecret."""
    finished: list[float] = []

    def on_step(step: str, _elapsed: float) -> None:
        if step == "finishSecret":
            finished.append(time.monotonic())

    Rotator(sm_client).rotate(arn, on_step=on_step)
    return finished[0]


def fill_pool(engine, size: int) -> None:
    """Open `size` connections at once, then return them all to the pool."""
    connections = [engine.connect() for _ in range(size)]
    for conn in connections:
        conn.execute(text("SELECT 1"))
    for conn in connections:
        conn.close()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "pg8000"])
def test_an_idle_pool_retires_its_superseded_connections(make_secret, sm_client, postgres, driver):
    arn = make_secret("alternating")
    retire_after = 5.0
    engine, name = engine_for(arn, driver=driver, pool_size=4, retire_after=retire_after)
    fill_pool(engine, 4)
    before = open_pids(postgres, name)
    assert len(before) == 4
    checkouts: list[float] = []
    event.listen(engine, "checkout", lambda *_: checkouts.append(time.monotonic()))
    finished = rotate(sm_client, arn)
    took = wait_until_gone(postgres, name, before, finished + retire_after + 1.0)
    print(f"{driver}: idle pool's 4 superseded sessions gone {took:.2f} s after finishSecret")
    assert took <= retire_after + 1.0, "superseded sessions still open"
    assert checkouts == []  # nobody used the pool meanwhile: retirement did it alone
    with engine.connect() as conn:  # the pool logs in again, as the new user
        assert conn.execute(text("SELECT session_user")).scalar_one().endswith("_b")
    engine.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
def test_an_idle_async_pool_retires_its_superseded_connections(
    make_secret, sm_client, postgres, driver
):
    arn = make_secret("alternating")
    retire_after = 5.0
    engine, name = engine_for(arn, driver=driver, pool_size=4, retire_after=retire_after)

    async def scenario() -> float:
        connections = [await engine.connect() for _ in range(4)]
        for conn in connections:
            await conn.execute(text("SELECT 1"))
        for conn in connections:
            await conn.close()
        before = open_pids(postgres, name)
        assert len(before) == 4
        finished = await asyncio.to_thread(rotate, sm_client, arn)
        while time.monotonic() < finished + retire_after + 1.0:
            if not before & open_pids(postgres, name):
                break
            await asyncio.sleep(0.1)  # the loop must run for retirement to act
        took = time.monotonic() - finished
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT session_user"))).scalar_one().endswith("_b")
        await engine.dispose()
        return took if not before & open_pids(postgres, name) else math.inf

    took = asyncio.run(scenario())
    print(f"{driver}: idle pool's 4 superseded sessions gone {took:.2f} s after finishSecret")
    assert took <= retire_after + 1.0, "superseded sessions still open"


def test_a_connection_held_past_the_deadline_is_retired_at_checkin_with_a_warning(
    make_secret, sm_client, postgres, caplog
):
    arn = make_secret("alternating")
    retire_after = 5.0
    engine, name = engine_for(arn, pool_size=2, retire_after=retire_after)
    conn = engine.connect()
    conn.execute(text("SELECT 1"))
    conn.commit()
    (pid,) = open_pids(postgres, name)
    finished = rotate(sm_client, arn)
    transaction = conn.begin()
    conn.execute(text("CREATE TEMPORARY TABLE held (n int)"))
    # Past the deadline, the transaction it is in still works: never cut.
    assert wait_until_gone(postgres, name, {pid}, finished + retire_after + 1.0) == math.inf
    conn.execute(text("INSERT INTO held VALUES (1)"))
    transaction.commit()
    with caplog.at_level(logging.WARNING, logger="rotating_pool"):
        conn.close()
    assert pid not in open_pids(postgres, name)
    assert any("past its retirement deadline" in r.getMessage() for r in caplog.records)
    engine.dispose()


LOAD_THREADS = 16
RETIRE_AFTER = 10.0


def run_under_load(make_secret, sm_client, postgres, strategy: str, retire_after: float | None):
    """16 writers through a 16-connection pool without recycle, one rotation.

    Returns (seconds from finishSecret until the superseded sessions were gone
    or math.inf, reconnect times after finishSecret, load result, superseded left).
    """
    arn = make_secret(strategy)
    engine, name = engine_for(
        arn, pool_size=LOAD_THREADS, max_overflow=0, retire_after=retire_after
    )
    load = WriteLoad(engine, threads=LOAD_THREADS)
    load.create_table()
    fill_pool(engine, LOAD_THREADS)
    reconnects: list[float] = []
    event.listen(engine, "connect", lambda *_: reconnects.append(time.monotonic()))
    load.start()
    try:
        before = open_pids(postgres, name)
        assert len(before) == LOAD_THREADS
        finished = rotate(sm_client, arn)
        took = wait_until_gone(postgres, name, before, finished + RETIRE_AFTER + 1.0)
        left = len(before & open_pids(postgres, name))
    finally:
        result = load.stop()
    engine.dispose()
    return took, [t for t in reconnects if t >= finished - 1.0], result, left


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_under_load_superseded_sessions_are_gone_within_retire_after(
    make_secret, sm_client, postgres, strategy
):
    took, reconnects, result, _ = run_under_load(
        make_secret, sm_client, postgres, strategy, RETIRE_AFTER
    )
    most = most_in_one_second(reconnects)
    print(
        f"{strategy}: {LOAD_THREADS} superseded sessions gone {took:.2f} s after finishSecret "
        f"(retire_after {RETIRE_AFTER:g} s); {len(reconnects)} reconnects, at most {most} in "
        f"one second; {result.commits} commits, {result.failures} failed"
    )
    assert took <= RETIRE_AFTER + 1.0, "superseded sessions still open"
    assert result.failures == 0, dict(result.errors)
    assert result.commits > 0
    assert most <= math.ceil(LOAD_THREADS / RETIRE_AFTER) + 1, sorted(reconnects)


@pytest.mark.slow
def test_control_without_retirement_superseded_sessions_stay(make_secret, sm_client, postgres):
    took, reconnects, result, left = run_under_load(
        make_secret, sm_client, postgres, "alternating", None
    )
    print(f"control: {left} of {LOAD_THREADS} superseded sessions still open after 11 s")
    assert took == math.inf and left == LOAD_THREADS
    assert reconnects == []
    assert result.failures == 0


def test_retirement_records_each_connection_login_on_the_pool_entry(make_secret):
    arn = make_secret("single")
    engine, _ = engine_for(arn, pool_size=1)
    seen = []
    event.listen(engine, "checkout", lambda _c, rec, _p: seen.append(rec.info.get(LOGIN_KEY)))
    with engine.connect():
        pass
    (login,) = seen
    assert login.username.endswith("_a") and login.version_id
    engine.dispose()


def test_threads_keep_working_while_retirement_is_on(make_secret):
    """The listeners cost nothing visible: a quick sanity run without rotation."""
    arn = make_secret("alternating")
    engine, _ = engine_for(arn, pool_size=4, retire_after=30)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                with engine.begin() as conn:
                    conn.execute(text("SELECT 1"))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine.dispose()


def test_an_engine_with_retirement_is_a_plain_engine(make_secret):
    engine, _ = engine_for(make_secret(), retire_after=60)
    assert isinstance(engine, sqlalchemy.Engine)
    engine.dispose()


def test_a_store_outliving_an_engine_with_retirement_keeps_working(make_secret):
    """A retirement whose engine is gone drops its subscription without
    deadlocking the store (its subscribers run under the store's lock)."""
    import gc  # noqa: PLC0415

    arn = make_secret("alternating")
    gone = rotating_pool.create_engine("postgresql+psycopg://", secret_id=arn, retire_after=30)
    kept = rotating_pool.create_engine("postgresql+psycopg://", secret_id=arn, retire_after=30)
    store = rotating_pool.credential_store(kept)
    assert rotating_pool.credential_store(gone) is store
    del gone
    gc.collect()
    changed = threading.Thread(target=store.confirm, args=(Credentials("someone", "else"),))
    changed.start()
    changed.join(timeout=10)
    assert not changed.is_alive(), "the store deadlocked"
    kept.dispose()
