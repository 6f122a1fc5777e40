"""psycopg_pool's pools logging in through rotating_pool.pool, against the real server.

The load tests: 16 writers commit one row per transaction through a pool whose
connections live 0.3 s (so new logins are frequent) while the project's
rotator performs 12 rotations, each with 0.5 s between testSecret and
finishSecret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from rotating_pool import ConfigurationError, LoginRejectedError, RetryBudget
from rotating_pool.pool import async_connection_class, connection_class, retire_superseded
from tests.call_load import CallLoad, rotate
from tests.support import current_document

ROTATIONS = 12
WRITERS = 16
LIFETIME = 0.3  # psycopg_pool's max_lifetime: a new login every ~0.3 s per connection

TABLE = "CREATE TABLE IF NOT EXISTS pool_load (id bigserial PRIMARY KEY, worker int NOT NULL)"
INSERT = "INSERT INTO pool_load (worker) VALUES (%s)"


def count_rows(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        return conn.execute("SELECT count(*) FROM pool_load").fetchone()[0]


def assert_call_bound(proxy, rotations: int) -> None:
    # The engines' bound: the first load, then per rotation one DescribeSecret
    # and one GetSecretValue (the new AWSCURRENT, or AWSPENDING).
    assert proxy.calls["GetSecretValue"] <= 1 + rotations, dict(proxy.calls)
    assert proxy.calls["DescribeSecret"] <= rotations, dict(proxy.calls)


def sync_pool(arn: str, **pool_kwargs) -> ConnectionPool:
    options = {"min_size": 4, "max_size": 8, "max_lifetime": LIFETIME, **pool_kwargs}
    return ConnectionPool(connection_class=connection_class(arn), open=True, **options)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_connection_pool_survives_rotations_under_load(
    make_secret, sm_client, proxy, monkeypatch, strategy
):
    arn = make_secret(strategy)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    with sync_pool(arn) as pool:
        with pool.connection() as conn:
            conn.execute(TABLE)

        def write(worker: int) -> None:
            with pool.connection() as conn:
                conn.execute(INSERT, (worker,))

        with CallLoad(write, threads=WRITERS) as load:
            rotate(sm_client, arn, ROTATIONS)
        result = load.result
        assert result.failures == 0, dict(result.errors)
        assert result.commits > 0
        assert count_rows(pool) == result.commits  # nothing lost
        store = pool.connection_class.store
        stats = store.stats()
    print(f"pool {strategy}: {result.commits} commits, {stats}, {dict(proxy.calls)}")
    assert stats.recovered_logins >= (ROTATIONS if strategy == "single" else ROTATIONS - 1) // 2
    assert_call_bound(proxy, ROTATIONS)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_async_connection_pool_survives_rotations_under_load(
    make_secret, sm_client, proxy, monkeypatch, strategy
):
    arn = make_secret(strategy)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    counts = {"commits": 0, "failures": 0}
    errors: list[str] = []

    async def main() -> int:
        pool = AsyncConnectionPool(
            connection_class=async_connection_class(arn),
            open=False,
            min_size=4,
            max_size=8,
            max_lifetime=LIFETIME,
        )
        async with pool:
            async with pool.connection() as conn:
                await conn.execute(TABLE)
            stop = asyncio.Event()

            async def writer(worker: int) -> None:
                while not stop.is_set():
                    try:
                        async with pool.connection() as conn:
                            await conn.execute(INSERT, (worker,))
                    except Exception as error:
                        counts["failures"] += 1
                        errors.append(f"{type(error).__name__}: {error}")
                    else:
                        counts["commits"] += 1

            tasks = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
            # The rotator is sync (boto3): it runs in a thread; the loop stays free.
            await asyncio.to_thread(rotate, sm_client, arn, ROTATIONS)
            stop.set()
            await asyncio.gather(*tasks)
            async with pool.connection() as conn:
                return (await (await conn.execute("SELECT count(*) FROM pool_load")).fetchone())[0]

    rows = asyncio.run(main())
    assert counts["failures"] == 0, errors[:5]
    assert counts["commits"] > 0
    assert rows == counts["commits"]
    assert_call_bound(proxy, ROTATIONS)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_control_a_pool_built_once_from_awscurrent_fails(make_secret, sm_client, strategy):
    arn = make_secret(strategy)
    doc = current_document(sm_client, arn)
    conninfo = psycopg.conninfo.make_conninfo(
        host=doc["host"],
        port=doc["port"],
        dbname=doc["dbname"],
        user=doc["username"],
        password=doc["password"],
    )
    errors: list[str] = []
    with ConnectionPool(
        conninfo,
        min_size=4,
        max_size=8,
        max_lifetime=LIFETIME,
        timeout=2,
        open=True,
        reconnect_failed=lambda pool: None,
    ) as pool:
        with pool.connection() as conn:
            conn.execute(TABLE)

        def write(worker: int) -> None:
            with pool.connection() as conn:
                conn.execute(INSERT, (worker,))

        logger = logging.getLogger("psycopg.pool")
        handler = _Collect(errors)
        logger.addHandler(handler)
        try:
            with CallLoad(write, threads=WRITERS) as load:
                rotate(sm_client, arn, 4)
        finally:
            logger.removeHandler(handler)
    assert load.result.failures > 0
    assert any("password authentication failed" in error for error in errors)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def test_connect_takes_host_from_the_conninfo_and_credentials_from_the_secret(
    make_secret, postgres
):
    arn = make_secret("alternating")
    cls = connection_class(arn)
    # A conninfo that names the server: its host wins over the secret's.
    with cls.connect(f"host=127.0.0.1 port={postgres.port}") as conn:
        user = conn.execute("SELECT session_user").fetchone()[0]
    assert user == cls.store.held().username


def test_a_refused_login_gives_up_within_the_deadline_and_says_nothing_secret(
    make_secret, sm_client, postgres, caplog
):
    arn = make_secret("alternating")
    doc = current_document(sm_client, arn)
    secret_password = "wrong-" + doc["password"]
    doc["password"] = secret_password
    sm_client.put_secret_value(SecretId=arn, SecretString=json.dumps(doc))
    cls = connection_class(arn, retry=RetryBudget(deadline=4.0))
    # botocore at DEBUG logs whole responses (secrets included) whatever a
    # library does; the loggers checked are this library's and psycopg's.
    caplog.set_level(logging.DEBUG, logger="rotating_pool")
    caplog.set_level(logging.DEBUG, logger="psycopg")
    began = time.monotonic()
    with pytest.raises(LoginRejectedError) as raised:
        cls.connect()
    took = time.monotonic() - began
    assert took < 4.0 + 1.0  # the deadline, with a margin
    assert secret_password not in str(raised.value)
    assert all(secret_password not in record.getMessage() for record in caplog.records)


def test_a_pool_waiting_on_a_refused_login_times_out_and_does_not_hammer(
    make_secret, sm_client, proxy, monkeypatch
):
    arn = make_secret("alternating")
    doc = current_document(sm_client, arn)
    doc["password"] = "not-the-password"
    sm_client.put_secret_value(SecretId=arn, SecretString=json.dumps(doc))
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    cls = connection_class(arn, retry=RetryBudget(deadline=4.0))
    pool = ConnectionPool(connection_class=cls, min_size=4, timeout=6, open=False)
    with pool, pytest.raises(PoolTimeout):
        pool.getconn()
    # 4 workers refused together, each plan up to 4 s: one refetch per
    # refusal, shared, not one per worker and round.
    assert proxy.calls["GetSecretValue"] <= 4, dict(proxy.calls)


def test_retire_after_lives_on_the_pool_not_the_connection_class(make_secret):
    arn = make_secret("alternating")
    with pytest.raises(ConfigurationError, match="retire_superseded"):
        connection_class(arn, retire_after=30)
    with pytest.raises(ConfigurationError, match="connection_class"):
        retire_superseded(ConnectionPool(open=False), 30)


@pytest.mark.slow
def test_retire_superseded_drains_connections_on_old_credentials_within_retire_after(
    make_secret, sm_client, postgres
):
    arn = make_secret("alternating")
    retire_after = 5.0
    with ConnectionPool(
        connection_class=connection_class(arn), min_size=4, max_lifetime=3600, open=True
    ) as pool:
        pool.wait()
        retirement = retire_superseded(pool, retire_after)
        first_user = pool.connection_class.store.held().username
        rotate(sm_client, arn, 1)  # alternating: the other user; nothing is refused
        rotated = time.monotonic()

        def old_sessions() -> int:
            with postgres.admin_connect() as admin:
                return admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (first_user,)
                ).fetchone()[0]

        assert old_sessions() == 4
        while old_sessions() and time.monotonic() - rotated < retire_after + 2.0:
            time.sleep(0.1)  # polling the server's view; there is no event to wait on
        assert old_sessions() == 0
        assert retirement.drains == 1
        with pool.connection() as conn:
            assert conn.execute("SELECT session_user").fetchone()[0] != first_user
        retirement.stop()


@pytest.mark.slow
def test_retire_superseded_drains_an_async_pool_on_its_loop(make_secret, sm_client, postgres):
    arn = make_secret("alternating")
    retire_after = 5.0

    def old_sessions(user: str) -> int:
        with postgres.admin_connect() as admin:
            return admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (user,)
            ).fetchone()[0]

    async def main() -> tuple[int, int, str, str]:
        pool = AsyncConnectionPool(
            connection_class=async_connection_class(arn),
            min_size=4,
            max_lifetime=3600,
            open=False,
        )
        async with pool:
            await pool.wait()
            retirement = retire_superseded(pool, retire_after)
            first = pool.connection_class.store.held().username
            before = await asyncio.to_thread(old_sessions, first)
            await asyncio.to_thread(rotate, sm_client, arn, 1)
            rotated = time.monotonic()
            while time.monotonic() - rotated < retire_after + 2.0:
                if not await asyncio.to_thread(old_sessions, first):
                    break
                await asyncio.sleep(0.1)  # polling the server's view
            after = await asyncio.to_thread(old_sessions, first)
            async with pool.connection() as conn:
                now = (await (await conn.execute("SELECT session_user")).fetchone())[0]
            retirement.stop()
            return before, after, first, now

    before, after, first, now = asyncio.run(main())
    assert before == 4
    assert after == 0
    assert now != first
