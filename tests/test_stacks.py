"""The real stacks of the bed: PgBouncer from Debian's package, the RDS Proxy
stand-in, and the per-driver settings PgBouncer's transaction pooling needs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import threading
import uuid

import asyncpg
import psycopg
import pytest
import sqlalchemy

import rotating_pool
from rotating_pool.testing import LocalPgBouncer, LocalRdsProxy
from tests.support import put_version, set_password


@pytest.fixture(scope="module")
def pgbouncer(postgres):
    with LocalPgBouncer(postgres) as bouncer:
        yield bouncer


def login(server, schema, user=None, password=None, **kwargs):
    user = user or schema.users[0]
    return psycopg.connect(
        host=server.host,
        port=server.port,
        user=user,
        password=password or schema.passwords[user],
        dbname=schema.dbname,
        connect_timeout=5,
        prepare_threshold=None,
        **kwargs,
    )


def asyncpg_refusal(server, schema, user, password) -> asyncpg.PostgresError:
    """The error asyncpg raises when `server` refuses this login."""

    async def attempt():
        await asyncpg.connect(
            host=server.host,
            port=server.port,
            user=user,
            password=password,
            database=schema.dbname,
            ssl=False,
        )

    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(attempt())
    return info.value


# -- PgBouncer ------------------------------------------------------------------------


def test_pgbouncer_pools_in_transaction_mode_as_the_postgres_os_user(pgbouncer, app_schema):
    with login(pgbouncer, app_schema) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (app_schema.users[0],)
    with pgbouncer.admin_connect("pgbouncer") as console:  # PgBouncer's admin console
        settings = {row[0]: row[1] for row in console.execute("SHOW CONFIG").fetchall()}
    assert settings["pool_mode"] == "transaction"
    assert settings["auth_type"] == "scram-sha-256"
    assert settings["auth_query"] == "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
    if os.geteuid() == 0:  # PgBouncer refuses root: its files belong to the postgres user
        owner = (pgbouncer.directory / "pgbouncer.ini").stat().st_uid
        assert owner == pwd.getpwnam("postgres").pw_uid


def test_pgbouncer_refuses_a_wrong_password_and_a_nologin_user_in_its_own_words(
    pgbouncer, app_schema
):
    with pytest.raises(psycopg.OperationalError, match="FATAL:  SASL authentication failed"):
        login(pgbouncer, app_schema, password="not-the-password")
    with pytest.raises(psycopg.OperationalError, match="FATAL:  no such user"):
        login(pgbouncer, app_schema, user=app_schema.users[1])


def test_pgbouncer_reports_its_refusals_as_08P01_to_drivers_that_read_a_sqlstate(
    pgbouncer, app_schema
):
    error = asyncpg_refusal(pgbouncer, app_schema, app_schema.users[0], "not-the-password")
    assert error.sqlstate == "08P01"
    assert str(error) == "SASL authentication failed"


def test_pgbouncer_learns_a_new_password_from_the_server_at_once(pgbouncer, postgres, app_schema):
    user = app_schema.users[0]
    held = login(pgbouncer, app_schema)  # a pooled server connection stays open
    set_password(postgres, user, "a-new-password")
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        login(pgbouncer, app_schema)
    with login(pgbouncer, app_schema, password="a-new-password") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    held.close()


def test_pgbouncer_stops_cleanly_and_removes_its_files(postgres):
    bouncer = LocalPgBouncer(postgres).start()
    directory, port = bouncer.directory, bouncer.port
    bouncer.stop()
    assert not directory.exists()
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        psycopg.connect(host="127.0.0.1", port=port, connect_timeout=2)
    bouncer.stop()  # twice is harmless


# Each driver with the settings docs/guides/poolers-and-proxies.md gives for PgBouncer's
# transaction pooling.
TRANSACTION_MODE = {
    "psycopg": {"connect_args": {"prepare_threshold": None}},
    "psycopg2": {},
    "pg8000": {},
}
ASYNC_TRANSACTION_MODE = {
    "psycopg_async": ("", {"connect_args": {"prepare_threshold": None}}),
    "asyncpg": ("?prepared_statement_cache_size=0", {}),
}
STATEMENT = sqlalchemy.text("SELECT CAST(:n AS int) + 1")
ROUNDS = 40  # far more than psycopg's prepare_threshold (5) per connection


def statement_errors(engine) -> list[str]:
    """8 threads running one parametrised statement over and over, each in its
    own transaction; returns the errors."""
    errors: list[str] = []

    def work():
        for n in range(ROUNDS):
            try:
                with engine.begin() as conn:
                    assert conn.execute(STATEMENT, {"n": n}).scalar_one() == n + 1
            except Exception as error:
                errors.append(str(error).splitlines()[0])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


async def async_statement_errors(engine) -> list[str]:
    errors: list[str] = []

    async def work():
        for n in range(ROUNDS):
            try:
                async with engine.begin() as conn:
                    assert (await conn.execute(STATEMENT, {"n": n})).scalar_one() == n + 1
                    await conn.execute(sqlalchemy.text("SELECT pg_sleep(0.001)"))
            except Exception as error:
                errors.append(str(error).splitlines()[0])

    await asyncio.gather(*(work() for _ in range(16)))
    return errors


@pytest.mark.parametrize("driver", sorted(TRANSACTION_MODE))
def test_each_sync_driver_works_through_pgbouncer_transaction_mode_with_the_readme_settings(
    pgbouncer, make_secret, driver
):
    engine = rotating_pool.create_engine(
        f"postgresql+{driver}://{pgbouncer.host}:{pgbouncer.port}/",
        secret_id=make_secret(),
        pool_size=8,
        **TRANSACTION_MODE[driver],
    )
    assert statement_errors(engine) == []
    engine.dispose()


def async_errors_through(pgbouncer, arn, driver, query="", **options) -> list[str]:
    """`async_statement_errors` through an async engine of `driver` via PgBouncer."""

    async def scenario():
        engine = rotating_pool.create_async_engine(
            f"postgresql+{driver}://{pgbouncer.host}:{pgbouncer.port}/{query}",
            secret_id=arn,
            pool_size=8,
            **options,
        )
        try:
            return await async_statement_errors(engine)
        finally:
            await engine.dispose()

    return asyncio.run(scenario())


@pytest.mark.parametrize("driver", sorted(ASYNC_TRANSACTION_MODE))
def test_each_async_driver_works_through_pgbouncer_transaction_mode_with_the_readme_settings(
    pgbouncer, make_secret, driver
):
    query, options = ASYNC_TRANSACTION_MODE[driver]
    assert async_errors_through(pgbouncer, make_secret(), driver, query, **options) == []


def test_control_psycopg_without_the_setting_fails_through_transaction_mode(pgbouncer, make_secret):
    engine = rotating_pool.create_engine(
        f"postgresql+psycopg://{pgbouncer.host}:{pgbouncer.port}/",
        secret_id=make_secret(),
        pool_size=8,
    )
    errors = statement_errors(engine)
    engine.dispose()
    assert any("prepared statement" in error for error in errors)


def test_control_asyncpg_without_the_setting_fails_through_transaction_mode(pgbouncer, make_secret):
    errors = async_errors_through(pgbouncer, make_secret(), "asyncpg")
    assert any("prepared statement" in error for error in errors)


# -- the RDS Proxy stand-in -----------------------------------------------------------


@pytest.fixture
def rds_secret(app_schema, sm_client):
    document = app_schema.secret_document("alternating")
    return sm_client.create_secret(
        Name=f"rds-standin-{uuid.uuid4().hex}", SecretString=json.dumps(document)
    )["ARN"]


@pytest.fixture
def rds(postgres, sm_client, rds_secret):
    with LocalRdsProxy(
        sm_client, rds_secret, target=(postgres.host, postgres.port), refresh_interval=None
    ) as proxy:
        yield proxy


def test_rds_standin_passes_the_secrets_user_through_to_postgresql(rds, app_schema):
    with login(rds, app_schema) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (app_schema.users[0],)
    assert rds.passed[app_schema.users[0]] == 1
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        login(rds, app_schema, password="not-the-password")


def test_rds_standin_refuses_a_user_it_has_no_credentials_for_with_28000(rds, app_schema):
    other = app_schema.users[1]

    error = asyncpg_refusal(rds, app_schema, other, "whatever")
    assert error.sqlstate == "28000"
    assert str(error) == (
        f"This RDS proxy has no credentials for the role {other}. "
        "Check the credentials for this role and try again."
    )
    with pytest.raises(psycopg.OperationalError, match="FATAL:  This RDS proxy has no cred"):
        login(rds, app_schema, user=other)
    assert rds.refusals == {other: 2}


def test_rds_standin_knows_the_new_user_only_after_it_reads_the_secret(
    rds, app_schema, sm_client, rds_secret, postgres
):
    first, second = app_schema.users
    document = {**app_schema.secret_document("alternating"), "username": second}
    set_password(postgres, second, document["password"])
    version = put_version(sm_client, rds_secret, document, "AWSCURRENT")
    with login(rds, app_schema, user=first):  # not read yet: still the old user
        pass
    assert rds.refresh_now().username == second
    assert rds.credentials.version_id == version
    with pytest.raises(psycopg.OperationalError, match="no credentials for the role"):
        login(rds, app_schema, user=first)
    with login(rds, app_schema, user=second, password=document["password"]):
        pass


def test_rds_standin_reads_the_secret_on_its_own_period(
    postgres, sm_client, rds_secret, app_schema
):
    with LocalRdsProxy(
        sm_client, rds_secret, target=(postgres.host, postgres.port), refresh_interval=0.2
    ) as proxy:
        document = {**app_schema.secret_document("alternating"), "username": "someone_else"}
        version = put_version(sm_client, rds_secret, document, "AWSCURRENT")
        assert proxy.wait_for_version(version, timeout=10)
        assert proxy.reads >= 2


def test_rds_standin_answers_no_to_tls_and_forwards_cancel_requests(rds, app_schema):
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        login(rds, app_schema, sslmode="require")
    with login(rds, app_schema, sslmode="prefer") as conn:
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        timer.join()


def test_rds_standin_says_what_it_is_and_logs_no_password(rds, app_schema, caplog):
    caplog.set_level(logging.DEBUG, logger="rotating_pool")
    assert "stand-in" in repr(rds)
    rds.refresh_now()
    with pytest.raises(psycopg.OperationalError):
        login(rds, app_schema, user=app_schema.users[1])
    records = [r for r in caplog.records if r.name.startswith("rotating_pool.testing")]
    assert records
    assert all("stand-in" in r.getMessage() for r in records)
    for password in app_schema.passwords.values():
        assert password not in caplog.text


def test_rds_standin_stop_closes_relayed_connections(postgres, sm_client, rds_secret, app_schema):
    proxy = LocalRdsProxy(
        sm_client, rds_secret, target=(postgres.host, postgres.port), refresh_interval=None
    ).start()
    conn = login(proxy, app_schema)
    proxy.stop()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    proxy.stop()  # twice is harmless


def test_an_engine_ahead_of_the_rds_proxy_retries_until_the_proxy_has_read_the_secret(
    rds, app_schema, sm_client, rds_secret, postgres, proxy, monkeypatch
):
    """The engine reads a new AWSCURRENT user the stand-in has not read yet: it is
    refused, finds nothing newer in the secret, and tries the same credentials
    again after each backoff delay until the stand-in reads the secret."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    second = app_schema.users[1]
    document = {**app_schema.secret_document("alternating"), "username": second}
    set_password(postgres, second, document["password"])
    put_version(sm_client, rds_secret, document, "AWSCURRENT")

    def proxy_reads_after_two_refusals():
        assert rds.wait_for_refusals(second, 2, timeout=15)
        rds.refresh_now()

    reader = threading.Thread(target=proxy_reads_after_two_refusals)
    reader.start()
    engine = rotating_pool.create_engine(
        f"postgresql+psycopg://{rds.host}:{rds.port}/", secret_id=rds_secret
    )
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT session_user").scalar_one() == second
    reader.join()
    stats = rotating_pool.stats(engine)
    assert rds.refusals[second] >= 2
    assert stats.recovered_logins == 1
    # The first load, then refetches that found nothing new: no second GetSecretValue.
    assert proxy.calls["GetSecretValue"] == 1, dict(proxy.calls)
    engine.dispose()
