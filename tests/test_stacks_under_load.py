"""Rotation under load through the stacks users run: PgBouncer, RDS Proxy, other drivers.

Each run: writer threads (or tasks) commit one row per transaction through a
pool recycled every 0.2 s, so new logins are frequent, while the rotation
code rotates the secret with 0.5 s between setSecret and finishSecret. The
rotation logs in to PostgreSQL directly (the secret's host); the application
goes through PgBouncer or the RDS Proxy stand-in (the URL's host wins over
the secret's).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine

import rotating_pool
from rotating_pool.rotation import Rotator
from rotating_pool.testing import (
    LocalPgBouncer,
    LocalRdsProxy,
    WriteLoad,
    static_url,
)
from tests.support import current_document
from tests.test_rotation_under_load import WINDOW, pause_after

THREADS = 16
ROTATIONS = 20
DRIVER_ROTATIONS = 5
RECOVERY_TIMEOUT = 20.0  # generous: the machine may be shared and slow
PROXY_PERIOD = 0.5  # seconds between the RDS Proxy stand-in's reads of the secret
# psycopg 3 through PgBouncer in transaction mode: no named prepared statements.
PGBOUNCER_ARGS = {"prepare_threshold": None}


@pytest.fixture(scope="module")
def pgbouncer(postgres):
    with LocalPgBouncer(postgres) as bouncer:
        yield bouncer


@pytest.fixture
def counted(proxy, monkeypatch):
    """The engine's Secrets Manager calls go through the counting FaultProxy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    return proxy


def through(server, driver: str = "psycopg") -> str:
    """A URL for `driver` whose host and port are `server`'s; dbname from the secret."""
    return f"postgresql+{driver}://{server.host}:{server.port}/"


def rotate_watching(engine, arn, sm_client, rotations, *, due_from, after_rotation=None):
    """Rotate `rotations` times; from cycle `due_from` on (0-based), wait in each
    cycle until the engine has recovered from a refusal by logging in with this
    rotation's credentials or the previous one's. Returns recoveries per cycle."""
    rotator = Rotator(sm_client)
    store = rotating_pool.credential_store(engine)
    tokens: list[str] = []
    recovered: list[int] = []
    for cycle in range(rotations):
        before = rotating_pool.stats(engine).recovered_logins
        rotation = rotator.rotate(arn, on_step=pause_after("testSecret", WINDOW))
        tokens.append(rotation.token)
        if after_rotation is not None:
            after_rotation(rotation)
        if cycle >= due_from:
            wait_until(
                lambda before=before: (
                    rotating_pool.stats(engine).recovered_logins > before
                    and store.held().version_id in tokens[-2:]
                ),
                timeout=RECOVERY_TIMEOUT,
                what=f"a recovery with new credentials in rotation {cycle + 1}",
            )
        recovered.append(rotating_pool.stats(engine).recovered_logins - before)
    return recovered


def write_through(engine, arn, sm_client, rotations, strategy, *, threads=THREADS, **kwargs):
    load = WriteLoad(engine, threads=threads)
    load.create_table()
    load.start()
    try:
        due_from = 0 if strategy == "single" else 1
        recovered = rotate_watching(engine, arn, sm_client, rotations, due_from=due_from, **kwargs)
    finally:
        result = load.stop()
    assert result.failures == 0, dict(result.errors)
    assert result.commits > 0
    assert load.count_rows() == result.commits
    return result, recovered


def load_while(engine, action):
    """Write through `engine` while `action()` runs; dispose of it; return the counts."""
    load = WriteLoad(engine, threads=THREADS)
    load.create_table()
    load.start()
    try:
        action()
    finally:
        result = load.stop()
    engine.dispose()
    return result


def assert_calls_per_rotation(counted, rotations: int) -> None:
    # The first load, then per rotation one DescribeSecret and one GetSecretValue.
    assert counted.calls["GetSecretValue"] <= 1 + rotations, dict(counted.calls)
    assert counted.calls["DescribeSecret"] <= rotations, dict(counted.calls)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- PgBouncer ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_rotations_under_load_through_pgbouncer_fail_nothing(
    pgbouncer, make_secret, sm_client, counted, strategy
):
    arn = make_secret(strategy)
    engine = rotating_pool.create_engine(
        through(pgbouncer),
        secret_id=arn,
        pool_size=THREADS,
        pool_recycle=0.2,
        connect_args=PGBOUNCER_ARGS,
    )
    result, recovered = write_through(engine, arn, sm_client, ROTATIONS, strategy)
    print(
        f"PgBouncer {strategy}: {result.commits} commits, {result.failures} failed, "
        f"recoveries per rotation {recovered}, {dict(counted.calls)} for {ROTATIONS} rotations"
    )
    assert_calls_per_rotation(counted, ROTATIONS)
    engine.dispose()


@pytest.mark.slow
def test_control_a_static_engine_through_pgbouncer_fails(pgbouncer, make_secret, sm_client):
    arn = make_secret("single")
    url = static_url(current_document(sm_client, arn)).set(host=pgbouncer.host, port=pgbouncer.port)
    engine = sqlalchemy.create_engine(
        url, pool_size=THREADS, pool_recycle=0.2, connect_args=PGBOUNCER_ARGS
    )
    result = load_while(
        engine, lambda: Rotator(sm_client).rotate(arn, on_step=pause_after("testSecret", WINDOW))
    )
    assert result.failures > 0
    assert any("SASL authentication failed" in error for error in result.errors)


# -- the RDS Proxy stand-in -------------------------------------------------------------


@pytest.mark.slow
def test_alternating_rotations_through_rds_proxy_recover_from_its_refusals_each_time(
    postgres, app_schema, make_secret, sm_client, counted
):
    """The stand-in reads the secret every PROXY_PERIOD s; once it has read a
    rotation's new AWSCURRENT it refuses the previous user, which the engine
    still uses (it learns of the rotation only by a refusal): every rotation
    has refusals caused by that lag, and each is recovered in its own cycle."""
    arn = make_secret("alternating")
    with LocalRdsProxy(
        sm_client, arn, target=(postgres.host, postgres.port), refresh_interval=PROXY_PERIOD
    ) as rds:
        engine = rotating_pool.create_engine(
            through(rds), secret_id=arn, pool_size=THREADS, pool_recycle=0.2
        )
        refused: list[int] = []
        seen = Counter[str]()  # refusals per user at the end of the previous cycle

        def proxy_reads_and_refuses(rotation):
            (previous,) = set(app_schema.users) - {rotation.username}
            assert rds.wait_for_version(rotation.token, timeout=PROXY_PERIOD + 10)
            assert rds.wait_for_refusals(previous, seen[previous] + 1, timeout=10)
            refused.append(rds.refusals[previous] - seen[previous])
            seen.update(rds.refusals - seen)

        load = WriteLoad(engine, threads=THREADS)
        load.create_table()
        load.start()
        try:
            recovered = rotate_watching(
                engine,
                arn,
                sm_client,
                ROTATIONS,
                due_from=0,
                after_rotation=proxy_reads_and_refuses,
            )
        finally:
            result = load.stop()
        print(
            f"RDS Proxy stand-in alternating: {result.commits} commits, {result.failures} "
            f"failed, refusals per rotation {refused}, recoveries {recovered}, "
            f"{dict(counted.calls)} for {ROTATIONS} rotations"
        )
        assert result.failures == 0, dict(result.errors)
        assert load.count_rows() == result.commits
        assert len(refused) == ROTATIONS
        assert_calls_per_rotation(counted, ROTATIONS)
        engine.dispose()


@pytest.mark.slow
def test_control_a_static_engine_through_rds_proxy_fails(postgres, make_secret, sm_client):
    arn = make_secret("alternating")
    with LocalRdsProxy(
        sm_client, arn, target=(postgres.host, postgres.port), refresh_interval=PROXY_PERIOD
    ) as rds:
        url = static_url(current_document(sm_client, arn)).set(host=rds.host, port=rds.port)
        engine = sqlalchemy.create_engine(url, pool_size=THREADS, pool_recycle=0.2)

        def rotate_until_refused():
            rotation = Rotator(sm_client).rotate(arn)
            assert rds.wait_for_version(rotation.token, timeout=PROXY_PERIOD + 10)
            assert rds.wait_for_refusals(url.username, 1, timeout=10)

        result = load_while(engine, rotate_until_refused)
    assert result.failures > 0
    assert any("has no credentials for the role" in error for error in result.errors)


# -- other drivers ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
@pytest.mark.parametrize("driver", ["psycopg2", "pg8000"])
def test_sync_drivers_survive_rotations_under_load(
    make_secret, sm_client, counted, driver, strategy
):
    arn = make_secret(strategy)
    engine = rotating_pool.create_engine(
        f"postgresql+{driver}://", secret_id=arn, pool_size=8, pool_recycle=0.2
    )
    write_through(engine, arn, sm_client, DRIVER_ROTATIONS, strategy, threads=8)
    assert engine.dialect.driver == driver
    assert_calls_per_rotation(counted, DRIVER_ROTATIONS)
    engine.dispose()


class AsyncWriteLoad:
    """Tasks inserting one row per transaction through an AsyncEngine, counting."""

    def __init__(self, engine: AsyncEngine, tasks: int) -> None:
        self.engine = engine
        self.tasks = tasks
        self.commits = 0
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._running: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sqlalchemy.text(
                    "CREATE TABLE IF NOT EXISTS async_load (id bigserial PRIMARY KEY, worker int)"
                )
            )
        self._running = [asyncio.create_task(self._work(n)) for n in range(self.tasks)]

    async def stop(self) -> int:
        self._stop.set()
        await asyncio.gather(*self._running)
        async with self.engine.connect() as conn:
            rows = await conn.execute(sqlalchemy.text("SELECT count(*) FROM async_load"))
            return int(rows.scalar_one())

    async def _work(self, number: int) -> None:
        insert = sqlalchemy.text("INSERT INTO async_load (worker) VALUES (:worker)")
        while not self._stop.is_set():
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(insert, {"worker": number})
            except Exception as error:  # counted, and the test fails on any
                self.errors.append(f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
            else:
                self.commits += 1


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_asyncpg_survives_rotations_under_load(make_secret, sm_client, counted, strategy):
    arn = make_secret(strategy)

    async def scenario():
        engine = rotating_pool.create_async_engine(
            "postgresql+asyncpg://", secret_id=arn, pool_size=8, pool_recycle=0.2
        )
        load = AsyncWriteLoad(engine, tasks=8)
        await load.start()
        try:
            await asyncio.to_thread(
                rotate_watching,
                engine,
                arn,
                sm_client,
                DRIVER_ROTATIONS,
                due_from=0 if strategy == "single" else 1,
            )
        finally:
            rows = await load.stop()
            await engine.dispose()
        return load, rows

    load, rows = asyncio.run(scenario())
    assert load.errors == []
    assert load.commits > 0
    assert rows == load.commits
    assert_calls_per_rotation(counted, DRIVER_ROTATIONS)
