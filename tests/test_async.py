"""create_async_engine and attach(AsyncEngine): the same guarantees, the loop never blocked."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import rotating_pool
from rotating_pool import LoginRejectedError, RetryBudget
from rotating_pool.engine import credential_store
from rotating_pool.rotation import Rotator
from tests.support import RecordCounter, current_document, put_version, set_password

URL = "postgresql+psycopg_async://"


@pytest.fixture
def via_proxy(proxy, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    return proxy


async def session_user(engine) -> str:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT session_user"))).scalar_one()


def rotate_password(postgres, sm_client, arn, user, stage="AWSCURRENT") -> None:
    """What a single-user setSecret (+ finishSecret for AWSCURRENT) leaves behind."""
    document = {**current_document(sm_client, arn), "password": f"rotated-{time.monotonic_ns()}"}
    put_version(sm_client, arn, document, stage)
    set_password(postgres, user, document["password"])


def test_attach_accepts_an_async_engine_and_logs_in_from_the_secret(make_secret, app_schema):
    async def scenario():
        engine = create_async_engine(URL)
        assert rotating_pool.attach(engine, secret_id=make_secret()) is engine
        try:
            assert await session_user(engine) == app_schema.users[0]
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_the_loop_keeps_ticking_while_a_refetch_waits_on_a_stalled_endpoint(
    make_secret, app_schema, postgres, sm_client, via_proxy
):
    arn = make_secret("single")

    async def scenario():
        engine = rotating_pool.create_async_engine(URL, secret_id=arn)
        await session_user(engine)
        await engine.dispose()
        rotate_password(postgres, sm_client, arn, app_schema.users[0])
        via_proxy.delay(2.0)  # every Secrets Manager call now stalls for 2 s
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker():
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.05)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        user = await session_user(engine)  # refused, then a refetch through the stall
        took = time.monotonic() - started
        stop.set()
        await ticking
        await engine.dispose()
        return user, took, gaps

    user, took, gaps = asyncio.run(scenario())
    assert user == app_schema.users[0]
    assert took >= 2.0  # the refetch really waited on the stalled endpoint
    assert max(gaps) < 0.5, f"the loop was blocked for {max(gaps):.2f} s"
    assert len(gaps) >= 20


def test_a_cancelled_task_waiting_on_a_refetch_breaks_nothing(
    make_secret, app_schema, postgres, sm_client, via_proxy
):
    arn = make_secret("single")

    async def scenario():
        engine = rotating_pool.create_async_engine(URL, secret_id=arn, pool_size=4)
        await session_user(engine)
        await engine.dispose()
        rotate_password(postgres, sm_client, arn, app_schema.users[0])
        via_proxy.hold("GetSecretValue")
        tasks = [asyncio.create_task(session_user(engine)) for _ in range(4)]
        assert await asyncio.to_thread(via_proxy.wait_held, 1, 10)
        tasks[0].cancel()
        await asyncio.sleep(0)  # let the cancellation land before the fetch returns
        via_proxy.release()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        after = await session_user(engine)
        store = credential_store(engine)
        checked_out = engine.sync_engine.pool.checkedout()
        await engine.dispose()
        return results, after, store, checked_out, rotating_pool.stats(engine)

    results, after, store, checked_out, stats = asyncio.run(scenario())
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [app_schema.users[0]] * 3
    assert after == app_schema.users[0]
    assert checked_out == 0  # no connection leaked by the cancelled task
    assert store._flights == {}  # the refetch finished for everyone
    assert stats.refetches == 1


def test_a_password_that_stays_wrong_raises_within_the_budget_async(
    make_secret, app_schema, postgres
):
    arn = make_secret("single")

    async def scenario():
        engine = rotating_pool.create_async_engine(
            URL, secret_id=arn, retry=RetryBudget(rounds=3, base_delay=0.05, max_delay=0.1)
        )
        await session_user(engine)
        await engine.dispose()
        set_password(postgres, app_schema.users[0], "wrong-forever")
        try:
            with pytest.raises(LoginRejectedError) as raised:
                await session_user(engine)
        finally:
            await engine.dispose()
        return raised.value

    error = asyncio.run(scenario())
    assert error.secret_id == arn and "wrong-forever" not in str(error)


def test_sixteen_refused_tasks_share_one_refetch(
    make_secret, app_schema, postgres, sm_client, via_proxy
):
    arn = make_secret("single")

    async def scenario():
        engine = rotating_pool.create_async_engine(URL, secret_id=arn, pool_size=16)
        await session_user(engine)
        await engine.dispose()
        rotate_password(postgres, sm_client, arn, app_schema.users[0], stage="AWSPENDING")
        via_proxy.reset_calls()
        via_proxy.hold("DescribeSecret")
        joined = RecordCounter("waiting for the refetch in flight", target=15)
        logger = rotating_pool.engine.logger
        logger.addHandler(joined)
        logger.setLevel("DEBUG")
        try:
            tasks = [asyncio.create_task(session_user(engine)) for _ in range(16)]
            assert await asyncio.to_thread(joined.reached.wait, 10)
            via_proxy.release()
            users = await asyncio.gather(*tasks)
        finally:
            logger.removeHandler(joined)
            logger.setLevel("NOTSET")
        await engine.dispose()
        return users

    users = asyncio.run(scenario())
    assert users == [app_schema.users[0]] * 16
    assert via_proxy.calls == {"DescribeSecret": 1, "GetSecretValue": 1}


ROTATIONS = 20
TASKS = 64


async def write_load(engine, stop: asyncio.Event, counts: Counter, errors: Counter) -> None:
    Session = async_sessionmaker(engine, class_=AsyncSession)

    async def worker(number: int) -> None:
        while not stop.is_set():
            try:
                async with Session() as session, session.begin():
                    await session.execute(
                        text("INSERT INTO async_load (worker) VALUES (:w)"), {"w": number}
                    )
            except Exception as error:  # counted: the test asserts there are none
                errors[f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"] += 1
            else:
                counts["commits"] += 1

    await asyncio.gather(*(worker(n) for n in range(TASKS)))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_sixty_four_tasks_survive_twenty_rotations(make_secret, sm_client, via_proxy, strategy):
    arn = make_secret(strategy)

    async def scenario():
        engine = rotating_pool.create_async_engine(
            URL, secret_id=arn, pool_size=16, max_overflow=0, pool_recycle=0.3
        )
        async with engine.begin() as conn:
            await conn.execute(
                text("CREATE TABLE async_load (id bigserial PRIMARY KEY, worker int)")
            )
        stop = asyncio.Event()
        counts: Counter = Counter()
        errors: Counter = Counter()
        load = asyncio.create_task(write_load(engine, stop, counts, errors))
        rotator = Rotator(sm_client)

        def pace(step: str, _elapsed: float) -> None:
            if step == "testSecret":
                time.sleep(0.5)  # the rotation's own pace: 0.5 s before finishSecret

        for _ in range(ROTATIONS):
            await asyncio.to_thread(rotator.rotate, arn, on_step=pace)
        stop.set()
        await load
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT count(*) FROM async_load"))).scalar_one()
        stats = rotating_pool.stats(engine)
        await engine.dispose()
        return counts, errors, rows, stats

    counts, errors, rows, stats = asyncio.run(scenario())
    assert not errors, dict(errors)
    assert counts["commits"] > 0 and rows == counts["commits"]
    assert stats.recovered_logins >= ROTATIONS - 1
    # The first load, then per rotation one DescribeSecret and one GetSecretValue
    # (of the new AWSCURRENT, or of AWSPENDING in a single-user rotation).
    calls = via_proxy.calls
    assert calls["GetSecretValue"] <= 1 + ROTATIONS, dict(calls)
    assert calls["DescribeSecret"] <= ROTATIONS, dict(calls)


def test_async_engines_keep_the_cached_credentials_while_secrets_manager_is_down(
    make_secret, app_schema, sm_client, via_proxy
):
    arn = make_secret("alternating")

    async def scenario():
        engine = rotating_pool.create_async_engine(URL, secret_id=arn, refresh_interval=1)
        await session_user(engine)
        via_proxy.refuse()
        Rotator(sm_client).rotate(arn)  # AWSCURRENT moves to the other user meanwhile
        users = []
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # longer than the TTL: refreshes fail
            await engine.dispose()  # every round a new login
            users.append(await session_user(engine))
            await asyncio.sleep(0.1)
        via_proxy.restore()
        await engine.dispose()
        return users

    users = asyncio.run(scenario())
    assert len(users) >= 10
    assert set(users) == {app_schema.users[0]}  # the cached user, now AWSPREVIOUS


def test_secrets_manager_hung_while_the_database_refuses_fails_within_the_deadline_async(
    make_secret, app_schema, postgres, via_proxy
):
    arn = make_secret("single")
    budget = RetryBudget(deadline=6)

    async def scenario():
        engine = rotating_pool.create_async_engine(URL, secret_id=arn, retry=budget)
        await session_user(engine)
        await engine.dispose()
        set_password(postgres, app_schema.users[0], "changed-behind-our-back")
        via_proxy.hang()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        try:
            with pytest.raises(LoginRejectedError, match=r"deadline 6 s") as raised:
                await session_user(engine)
        finally:
            ticking.cancel()
            await engine.dispose()
        return time.monotonic() - started, ticks, raised.value

    elapsed, ticks, error = asyncio.run(scenario())
    assert elapsed < budget.deadline + 2
    assert ticks > elapsed / 0.05 / 2  # the loop kept running all the while
    assert "did not answer within" in str(error)


def test_an_async_first_load_that_cannot_start_a_read_fails_instead_of_hanging(
    make_secret, monkeypatch
):
    arn = make_secret()
    real_start = threading.Thread.start

    def refuse_read_threads(self):
        if self.name.startswith("rotating_pool-"):
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", refuse_read_threads)

    async def scenario():
        engine = rotating_pool.create_async_engine(URL, secret_id=arn, retry=RetryBudget(rounds=1))
        try:
            with pytest.raises(rotating_pool.RotatingPoolError, match="cannot start a read"):
                await asyncio.wait_for(session_user(engine), 10)
        finally:
            await engine.dispose()

    asyncio.run(scenario())
