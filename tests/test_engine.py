"""create_engine and attach against the real PostgreSQL and Secrets Manager over HTTP."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import sqlalchemy
from psycopg import OperationalError
from sqlalchemy import text

import rotating_pool
from rotating_pool import (
    AlreadyAttachedError,
    ConfigurationError,
    LoginRejectedError,
    RetryBudget,
    SecretAccessDeniedError,
    SecretFormatError,
    SecretNotFoundError,
)
from tests.support import RecordCounter, current_document, put_version, set_password

URL = "postgresql+psycopg://"


@pytest.fixture
def via_proxy(proxy, monkeypatch):
    """Route the library's default boto3 client through the fault proxy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    return proxy


def who(engine) -> tuple[str, str, str]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT session_user, current_user, current_database()")).one()
    return tuple(row)


def test_nothing_is_fetched_until_the_first_connection(make_secret, via_proxy):
    arn = make_secret("single")
    engine = rotating_pool.create_engine(URL, secret_id=arn)
    assert via_proxy.total_calls == 0
    session_user, current_user, database = who(engine)
    assert session_user.endswith("_a") and current_user == database
    assert via_proxy.calls == {"GetSecretValue": 1}
    who(engine)
    engine.dispose()
    who(engine)  # a new DBAPI connection, credentials from memory
    assert via_proxy.calls == {"GetSecretValue": 1}


def test_a_value_written_in_the_url_wins_over_the_secret(make_secret, app_schema):
    engine = rotating_pool.create_engine(
        "postgresql+psycopg://someone:wrong@/postgres", secret_id=make_secret()
    )
    session_user, _, database = who(engine)
    assert database == "postgres"  # the URL's, not the secret's app database
    assert session_user == app_schema.users[0]  # user and password: always the secret's


def test_tls_settings_in_the_url_pass_through_untouched(make_secret, via_proxy):
    arn = make_secret()
    assert who(rotating_pool.create_engine(URL + "?sslmode=disable", secret_id=arn))
    engine = rotating_pool.create_engine(URL + "?sslmode=require", secret_id=arn)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="SSL"):
        engine.connect()
    # One first load, shared by both engines (same secret, same options); no refetch.
    assert via_proxy.calls == {"GetSecretValue": 1}


def test_engine_keywords_behave_as_in_sqlalchemy(make_secret):
    engine = rotating_pool.create_engine(
        URL,
        secret_id=make_secret(),
        pool_size=3,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args={"application_name": "rp-test"},
    )
    assert engine.pool.size() == 3
    with engine.connect() as conn:
        name = conn.execute(text("SELECT current_setting('application_name')")).scalar_one()
    assert name == "rp-test"


def test_attaching_twice_is_a_clear_error(make_secret):
    arn = make_secret()
    engine = rotating_pool.create_engine(URL, secret_id=arn)
    with pytest.raises(AlreadyAttachedError, match="already takes its logins"):
        rotating_pool.attach(engine, secret_id=arn)
    with pytest.raises(AlreadyAttachedError):
        rotating_pool.attach(engine.execution_options(isolation_level="AUTOCOMMIT"), secret_id=arn)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"secret_id": ""}, "secret_id"),
        ({"secret_id": "x", "refresh_interval": 0}, "refresh_interval"),
        ({"secret_id": "x", "retry": 3}, "RetryBudget"),
    ],
)
def test_bad_options_are_configuration_errors(kwargs, says):
    with pytest.raises(ConfigurationError, match=says):
        rotating_pool.create_engine(URL, **kwargs)


def test_a_non_postgresql_engine_is_refused():
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        rotating_pool.create_engine("sqlite://", secret_id="x")


def test_stats_of_an_unmanaged_engine_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="not managed"):
        rotating_pool.stats(sqlalchemy.create_engine(URL))


@pytest.mark.parametrize(
    ("secret", "error", "key"),
    [
        ({"SecretString": "s3cr3t {not json"}, SecretFormatError, None),
        ({"SecretString": json.dumps({"password": "s3cr3t"})}, SecretFormatError, "username"),
        ({"SecretString": json.dumps({"username": "u"})}, SecretFormatError, "password"),
        (
            {"SecretString": json.dumps({"username": "u", "password": "s3cr3t", "port": [1]})},
            SecretFormatError,
            "port",
        ),
        ({"SecretBinary": b"s3cr3t"}, SecretFormatError, None),
    ],
)
def test_a_malformed_secret_is_a_typed_error_naming_key_and_secret(sm_client, secret, error, key):
    name = f"malformed-{time.monotonic_ns()}"
    sm_client.create_secret(Name=name, **secret)
    engine = rotating_pool.create_engine(URL, secret_id=name)
    with pytest.raises(error) as raised:
        engine.connect()
    assert raised.value.secret_id == name
    assert raised.value.key == key
    assert name in str(raised.value)
    assert "s3cr3t" not in str(raised.value)


def test_an_unknown_secret_is_a_typed_error():
    engine = rotating_pool.create_engine(URL, secret_id="no/such/secret")
    with pytest.raises(SecretNotFoundError, match="no/such/secret"):
        engine.connect()


def test_denied_access_is_a_typed_error(make_secret, via_proxy):
    via_proxy.answer_error("GetSecretValue", "AccessDeniedException")
    engine = rotating_pool.create_engine(URL, secret_id=make_secret())
    with pytest.raises(SecretAccessDeniedError, match="GetSecretValue"):
        engine.connect()


def test_a_refused_port_is_raised_at_once_without_any_refetch(make_secret, postgres, via_proxy):
    engine = rotating_pool.create_engine(
        "postgresql+psycopg://127.0.0.1:1/", secret_id=make_secret()
    )
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="refused"):
        engine.connect()
    assert time.monotonic() - started < 1
    assert via_proxy.calls == {"GetSecretValue": 1}  # the first load only
    assert rotating_pool.stats(engine).refetches == 0


def test_a_password_that_stays_wrong_gives_a_typed_error_within_the_budget(
    make_secret, app_schema, postgres, via_proxy
):
    arn = make_secret("single")
    budget = RetryBudget(rounds=4, base_delay=0.05, max_delay=0.2)
    engine = rotating_pool.create_engine(URL, secret_id=arn, retry=budget)
    who(engine)
    set_password(postgres, app_schema.users[0], "nobody-knows-this")
    engine.dispose()
    via_proxy.reset_calls()
    started = time.monotonic()
    with pytest.raises(LoginRejectedError) as raised:
        engine.connect()
    elapsed = time.monotonic() - started
    # Bound: each round reads AWSCURRENT and AWSPENDING at most (2 calls), and
    # the waits add up to at most budget.max_total_delay().
    assert via_proxy.total_calls <= 2 * budget.rounds
    assert elapsed < budget.max_total_delay() + 3
    error = raised.value
    assert isinstance(error.__cause__, OperationalError)
    assert error.secret_id == arn and error.username == app_schema.users[0]
    assert error.version_id is not None
    assert "nobody-knows-this" not in str(error)
    assert rotating_pool.stats(engine).failed_recoveries == 1


def _rejected_at_once(engine, threads=16):
    """Open `threads` new connections at the same moment; return their errors."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def connect():
        start.wait()
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=connect) for _ in range(threads)]
    for worker in workers:
        worker.start()
    return workers, errors


@pytest.mark.parametrize("moved", [True, False], ids=["awscurrent-moved", "awspending-needed"])
def test_sixteen_refused_logins_share_one_refetch(
    make_secret, app_schema, postgres, sm_client, via_proxy, moved
):
    arn = make_secret("single")
    engine = rotating_pool.create_engine(URL, secret_id=arn, pool_size=16)
    who(engine)
    engine.dispose()
    user = app_schema.users[0]
    document = {**current_document(sm_client, arn), "password": "rotated-pw-16"}
    put_version(sm_client, arn, document, "AWSCURRENT" if moved else "AWSPENDING")
    set_password(postgres, user, "rotated-pw-16")
    via_proxy.reset_calls()
    via_proxy.hold("GetSecretValue")
    joined = RecordCounter("waiting for the refetch in flight", target=15)
    logger = rotating_pool.engine.logger
    logger.addHandler(joined)
    level = logger.level
    logger.setLevel("DEBUG")
    try:
        workers, errors = _rejected_at_once(engine)
        assert via_proxy.wait_held(1, timeout=10)
        # All 16 are waiting before the fetch returns: one holds the request,
        # the other 15 have joined its flight.
        assert joined.reached.wait(10), f"only {joined.count} joined"
        via_proxy.release()
        for worker in workers:
            worker.join(20)
    finally:
        logger.removeHandler(joined)
        logger.setLevel(level)
    assert errors == []
    limit = 2 if moved else 3
    calls = via_proxy.calls["GetSecretValue"] + via_proxy.calls["DescribeSecret"]
    assert calls <= limit
    stats = rotating_pool.stats(engine)
    assert stats.rejected_logins == 16 and stats.recovered_logins == 16
    assert stats.refetches == 1 and stats.refetch_joins == 15


def test_engines_reading_one_secret_share_one_refetch_per_process(
    make_secret, app_schema, postgres, sm_client, via_proxy
):
    arn = make_secret("single")
    writer = rotating_pool.create_engine(URL, secret_id=arn)
    reader = rotating_pool.create_engine(URL + "/postgres", secret_id=arn)  # another database
    assert who(writer)[2] != who(reader)[2]
    writer.dispose()
    reader.dispose()
    document = {**current_document(sm_client, arn), "password": "rotated-for-two"}
    put_version(sm_client, arn, document, "AWSCURRENT")
    set_password(postgres, app_schema.users[0], "rotated-for-two")
    via_proxy.reset_calls()
    assert who(writer)[0] == who(reader)[0] == app_schema.users[0]
    assert via_proxy.calls == {"GetSecretValue": 1}  # the reader found it already recovered
    assert rotating_pool.credential_store(writer) is rotating_pool.credential_store(reader)


def test_forked_children_use_an_engine_made_before_the_fork(make_secret):
    engine = rotating_pool.create_engine(URL, secret_id=make_secret())
    parent_view = who(engine)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own pool and boto3 client, the parent's left alone
        try:
            ok = who(engine) == parent_view
            engine.dispose()
            ok = ok and who(engine) == parent_view
            os.write(writer, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(writer)
    _, status = os.waitpid(pid, 0)
    assert os.read(reader, 2) == b"ok"
    assert os.waitstatus_to_exitcode(status) == 0
    assert who(engine) == parent_view  # the parent's pooled connection survived
