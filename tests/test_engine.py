"""create_engine and attach against the real PostgreSQL and Secrets Manager over HTTP."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import boto3
import pytest
import sqlalchemy
from psycopg import OperationalError
from sqlalchemy import text

import rotating_pool
import rotating_pool.engine as engine_module
from rotating_pool import (
    AlreadyAttachedError,
    ConfigurationError,
    LoginRejectedError,
    RetryBudget,
    SecretAccessDeniedError,
    SecretFormatError,
    SecretNotFoundError,
    SecretsManagerUnavailableError,
)
from rotating_pool.secret import Credentials
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


def test_tls_settings_in_the_url_pass_through_untouched(make_secret, app_schema, via_proxy):
    arn = make_secret()
    engine = rotating_pool.create_engine(URL + "?sslmode=disable", secret_id=arn)
    assert who(engine)[0] == app_schema.users[0]
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
        ({"secret_id": "x", "refresh_interval": float("nan")}, "refresh_interval"),
        ({"secret_id": "x", "refresh_interval": float("inf")}, "refresh_interval"),
        ({"secret_id": "x", "refresh_interval": -10, "source": "agent"}, "refresh_interval"),
        ({"secret_id": "x", "refresh_interval": True}, "refresh_interval"),
        ({"secret_id": "x", "use_pending": "yes"}, "use_pending"),
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
    with pytest.raises(sqlalchemy.exc.OperationalError, match="refused"):
        engine.connect()
    assert via_proxy.calls == {"GetSecretValue": 1}  # the first load only
    stats = rotating_pool.stats(engine)
    assert (stats.logins, stats.rejected_logins, stats.refetches) == (1, 0, 0)  # no retry


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
    # One DescribeSecret finds nothing new; the retries with the same password
    # within the next second reuse that answer. No GetSecretValue at all.
    assert via_proxy.calls["GetSecretValue"] == 0
    assert 1 <= via_proxy.calls["DescribeSecret"] <= 1 + int(elapsed)
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
    via_proxy.hold("DescribeSecret")
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
    # One DescribeSecret says where AWSCURRENT and AWSPENDING are; one read.
    assert via_proxy.calls == {"DescribeSecret": 1, "GetSecretValue": 1}
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
    # The reader found it already recovered: one DescribeSecret and one read in all.
    assert via_proxy.calls == {"DescribeSecret": 1, "GetSecretValue": 1}
    assert rotating_pool.credential_store(writer) is rotating_pool.credential_store(reader)


def test_engines_with_other_settings_on_one_secret_share_one_store_and_its_reads(
    make_secret, app_schema, postgres, sm_client, via_proxy
):
    # Retirement, refresh interval and retry budget are each engine's own; the
    # reads are the process's. (retire_after=300 polls every 30 s: no
    # background refresh runs during the test.)
    arn = make_secret("single")
    retiring = rotating_pool.create_engine(
        URL, secret_id=arn, retire_after=300, retry=RetryBudget(rounds=3)
    )
    plain = rotating_pool.create_engine(URL + "/postgres", secret_id=arn, refresh_interval=120)
    store = rotating_pool.credential_store(retiring)
    assert rotating_pool.credential_store(plain) is store
    assert store.refresh_interval == 30.0  # the smallest any engine needs: retirement's
    assert who(retiring)[0] == who(plain)[0] == app_schema.users[0]
    assert via_proxy.calls == {"GetSecretValue": 1}  # one first load for both
    retiring.dispose()
    plain.dispose()
    document = {**current_document(sm_client, arn), "password": "rotated-for-both"}
    put_version(sm_client, arn, document, "AWSCURRENT")
    set_password(postgres, app_schema.users[0], "rotated-for-both")
    via_proxy.reset_calls()
    assert who(plain)[0] == who(retiring)[0] == app_schema.users[0]
    assert via_proxy.calls == {"DescribeSecret": 1, "GetSecretValue": 1}
    assert rotating_pool.stats(plain).refetches == 1


def _current_version(sm_client, arn) -> str:
    stages = sm_client.describe_secret(SecretId=arn)["VersionIdsToStages"]
    return next(v for v, labels in stages.items() if "AWSCURRENT" in labels)


def test_once_a_recovery_found_awscurrent_moved_the_next_is_one_getsecretvalue(
    make_secret, app_schema, postgres, sm_client, via_proxy
):
    # Alternating rotation moves AWSCURRENT before the old password changes:
    # GetSecretValue(AWSCURRENT) carries VersionId and VersionStages, the whole answer.
    arn = make_secret("single")
    engine = rotating_pool.create_engine(URL, secret_id=arn)
    user = app_schema.users[0]
    who(engine)
    for number, calls in (
        (1, {"DescribeSecret": 1, "GetSecretValue": 1}),
        (2, {"GetSecretValue": 1}),
    ):
        engine.dispose()
        document = {**current_document(sm_client, arn), "password": f"moved-{number}"}
        put_version(sm_client, arn, document, "AWSCURRENT")
        set_password(postgres, user, f"moved-{number}")
        via_proxy.reset_calls()
        assert who(engine)[0] == user
        assert via_proxy.calls == calls, number


def test_credentials_read_as_awspending_are_replaced_by_the_next_awspending_in_one_call(
    make_secret, app_schema, postgres, sm_client, via_proxy
):
    # Single-user rotations seen between setSecret and finishSecret: once the
    # process logs in with an AWSPENDING, its refusal means a newer rotation
    # has set a newer password, which is that rotation's AWSPENDING.
    arn = make_secret("single")
    engine = rotating_pool.create_engine(URL, secret_id=arn)
    user = app_schema.users[0]
    who(engine)
    for number, calls in (
        (1, {"DescribeSecret": 1, "GetSecretValue": 1}),
        (2, {"GetSecretValue": 1}),
    ):
        engine.dispose()
        previous = _current_version(sm_client, arn)
        document = {**current_document(sm_client, arn), "password": f"pending-{number}"}
        version = put_version(sm_client, arn, document, "AWSPENDING")  # createSecret
        set_password(postgres, user, f"pending-{number}")  # setSecret
        via_proxy.reset_calls()
        assert who(engine)[0] == user
        assert via_proxy.calls == calls, number
        sm_client.update_secret_version_stage(  # finishSecret
            SecretId=arn,
            VersionStage="AWSCURRENT",
            MoveToVersionId=version,
            RemoveFromVersionId=previous,
        )
        sm_client.update_secret_version_stage(
            SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=version
        )


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


def test_the_connect_parameters_sqlalchemy_passes_are_never_written(make_secret, app_schema):
    # SQLAlchemy 2.0 passes one cparams dict to every connect of an engine
    # (2.1 a copy each time): writing credentials into it would let concurrent
    # logins mix one user with another's password.
    engine = sqlalchemy.create_engine(URL, pool_size=8)
    seen: list[dict] = []

    @sqlalchemy.event.listens_for(engine, "do_connect")
    def capture(dialect, conn_rec, cargs, cparams):
        seen.append(cparams)

    rotating_pool.attach(engine, secret_id=make_secret())
    assert who(engine)[0] == app_schema.users[0]
    assert seen
    for cparams in seen:
        assert not {"user", "password", "connect_timeout"} & set(cparams)


def test_many_threads_logging_in_as_two_users_never_mix_them(make_secret, app_schema, postgres):
    """Both users of an alternating secret in flight at once, from 16 threads."""
    arn = make_secret()
    engine = rotating_pool.create_engine(URL, secret_id=arn, poolclass=sqlalchemy.pool.NullPool)
    who(engine)
    store = rotating_pool.credential_store(engine)
    first = store.held()
    second = Credentials(
        app_schema.users[1], "second-user-pw", first.host, first.port, first.dbname
    )
    set_password(postgres, app_schema.users[1], "second-user-pw")
    seen: set[str] = set()
    failures: list[BaseException] = []
    go = threading.Event()

    def connect_many():
        go.wait(10)
        for _ in range(15):
            try:
                seen.add(who(engine)[0])
            except BaseException as error:
                failures.append(error)

    threads = [threading.Thread(target=connect_many) for _ in range(16)]
    for thread in threads:
        thread.start()
    go.set()
    flips = 0
    while any(thread.is_alive() for thread in threads) and flips < 2000:
        store.confirm(second if flips % 2 else first)  # the user in use flips all the time
        flips += 1
        threads[0].join(0.001)
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert seen == set(app_schema.users)
    assert rotating_pool.stats(engine).rejected_logins == 0


def test_secrets_manager_hung_while_the_database_refuses_fails_within_the_deadline(
    make_secret, app_schema, postgres, via_proxy
):
    arn = make_secret("single")
    budget = RetryBudget(deadline=6)
    engine = rotating_pool.create_engine(URL, secret_id=arn, retry=budget)
    who(engine)
    engine.dispose()
    set_password(postgres, app_schema.users[0], "changed-behind-our-back")
    via_proxy.hang()  # accepts every call and never answers
    started = time.monotonic()
    with pytest.raises(LoginRejectedError, match=r"deadline 6 s") as raised:
        engine.connect()
    assert time.monotonic() - started < budget.deadline + 2
    assert "did not answer within" in str(raised.value)


def test_a_client_with_botocores_default_timeouts_is_bounded_by_the_deadline_too(
    make_secret, app_schema, postgres, proxy
):
    client = boto3.session.Session().client("secretsmanager", endpoint_url=proxy.endpoint_url)
    assert client.meta.config.read_timeout == 60  # botocore's default
    arn = make_secret("single")
    budget = RetryBudget(deadline=5)
    engine = rotating_pool.create_engine(URL, secret_id=arn, client=client, retry=budget)
    who(engine)
    engine.dispose()
    set_password(postgres, app_schema.users[0], "changed-behind-our-back")
    proxy.hang()
    started = time.monotonic()
    with pytest.raises(LoginRejectedError, match=r"deadline 5 s"):
        engine.connect()
    assert time.monotonic() - started < budget.deadline + 2


def test_a_first_load_against_a_hung_secrets_manager_fails_within_the_deadline(
    make_secret, via_proxy
):
    arn = make_secret()
    via_proxy.hang()
    engine = rotating_pool.create_engine(URL, secret_id=arn, retry=RetryBudget(deadline=4))
    started = time.monotonic()
    with pytest.raises(SecretsManagerUnavailableError, match=r"deadline 4 s"):
        engine.connect()
    assert time.monotonic() - started < 4 + 2


def test_a_forked_child_reads_secrets_manager_with_its_own_client_after_a_rotation(
    make_secret, app_schema, postgres, sm_client, via_proxy
):
    arn = make_secret("single")
    engine = rotating_pool.create_engine(URL, secret_id=arn)
    who(engine)  # the parent's client is made and used before the fork
    parent_client = rotating_pool.credential_store(engine).source._get_client()
    document = {**current_document(sm_client, arn), "password": "rotated-in-child"}
    put_version(sm_client, arn, document, "AWSCURRENT")
    set_password(postgres, app_schema.users[0], "rotated-in-child")
    via_proxy.reset_calls()  # the proxy serves (and counts) in this process's threads
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            engine.dispose()
            ok = who(engine)[0] == app_schema.users[0]
            source = rotating_pool.credential_store(engine).source
            stats = rotating_pool.stats(engine)
            ok = ok and stats.recovered_logins == 1 and source._get_client() is not parent_client
            os.write(writer, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(writer)
    _, status = os.waitpid(pid, 0)
    assert os.read(reader, 2) == b"ok"
    assert os.waitstatus_to_exitcode(status) == 0
    assert via_proxy.calls == {"DescribeSecret": 1, "GetSecretValue": 1}  # the child's recovery


def test_new_connections_complete_while_a_background_refresh_is_held(make_secret, via_proxy):
    arn = make_secret()
    engine = rotating_pool.create_engine(
        URL, secret_id=arn, refresh_interval=1, poolclass=sqlalchemy.pool.NullPool
    )
    who(engine)
    store = rotating_pool.credential_store(engine)
    store._next_poll = 0.0  # the refresh is due now
    via_proxy.hold("DescribeSecret")  # ...and its call hangs until released below
    try:
        who(engine)  # sees the refresh due and starts it
        assert via_proxy.wait_held(1, timeout=10)
        for _ in range(5):
            who(engine)  # five new DBAPI connections while the refresh is held
        assert via_proxy.calls["DescribeSecret"] == 1
        stats = rotating_pool.stats(engine)
        assert stats.background_refreshes == stats.failed_refreshes == 0  # still in flight
    finally:
        via_proxy.release()
    assert rotating_pool.stats(engine).logins == 7


def test_pg8000_statements_are_not_bounded_by_the_login_time_out(make_secret):
    pytest.importorskip("pg8000")
    engine = rotating_pool.create_engine(
        "postgresql+pg8000://", secret_id=make_secret(), retry=RetryBudget(deadline=2.5)
    )
    rotating_pool.credential_store(engine).current()  # the first read, outside the deadline
    with engine.connect() as conn:  # the login had 2 s; the socket keeps no time-out after it
        assert conn.execute(text("SELECT pg_sleep(3), 1")).one()[1] == 1


def test_a_child_forked_while_the_store_registry_was_locked_can_make_engines(make_secret):
    arn = make_secret()
    reader, writer = os.pipe()
    engine_module._stores_lock.acquire()  # as if another thread were making an engine
    pid = os.fork()
    if pid != 0:
        engine_module._stores_lock.release()
    else:  # the child's copy of the lock is held, by a thread it does not have
        try:
            signal.alarm(10)  # a deadlock ends the child, and the test with it
            engine = rotating_pool.create_engine(URL, secret_id=arn)
            os.write(writer, b"ok" if who(engine)[0] else b"no")
        finally:
            os._exit(0)
    os.close(writer)
    _, status = os.waitpid(pid, 0)
    assert os.read(reader, 2) == b"ok"
    assert os.waitstatus_to_exitcode(status) == 0


def test_connect_parameters_are_built_once_per_credentials_change_not_per_connect():
    class Dialect:  # a driver that records what it is given and returns at once
        driver, is_async = "psycopg", False

        def __init__(self):
            self.given = []

        def connect(self, *args, **params):
            self.given.append(params)
            return object()

    class Entry:
        def __init__(self):
            self.info = {}

    store = rotating_pool.CredentialStore(rotating_pool.SecretsManagerSource("db"))
    first = Credentials("app_a", "pw-1", host="db.example", dbname="app", version_id="v1")
    store.confirm(first)
    dialect = Dialect()
    hook = engine_module._ConnectHook(store, RetryBudget(), dialect)
    cparams = {"host": "proxy.example"}
    built = [hook._params(dict(cparams), first, 20) for _ in range(3)]
    assert built[0] is built[1] is built[2]  # one dict while nothing changes
    assert built[0] == {
        "host": "proxy.example",  # the URL's host wins over the secret's
        "user": "app_a",
        "password": "pw-1",
        "dbname": "app",
        "connect_timeout": 20,
    }
    second = Credentials("app_b", "pw-2", host="db.example", dbname="app", version_id="v2")
    assert hook._params(dict(cparams), second, 20)["user"] == "app_b"  # rebuilt on change
    hook(dialect, Entry(), [], dict(cparams))
    hook(dialect, Entry(), [], dict(cparams))
    assert [p["user"] for p in dialect.given] == ["app_a", "app_a"]
    assert dialect.given[0] is not dialect.given[1]  # the driver gets its own copy
