"""One test per rule that a mutation of the landed code showed no test would miss.

Issue 19 listed the mutations that broke no test (capping the driver's login
time-out removed, the unrecognised-error reuse window at zero, the refresh
adopting a version refused lately, ``use_pending`` not reaching the source, the
engine's `Recheck` answered with None, a version read twice, redaction keyed on
``SecretString`` only) and two rules only one test caught (the backoff waits,
AWSPENDING on the direct path). Each test here goes through public behaviour
(engines, the store, the sources) against the real PostgreSQL and moto's
Secrets Manager over HTTP, so that it outlives a move of the rule to the core.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import sqlalchemy
from botocore.config import Config
from sqlalchemy import text

import rotating_pool
from rotating_pool import (
    AgentSource,
    CredentialStore,
    LoginRejectedError,
    RetryBudget,
    SecretsManagerSource,
    SecretsManagerUnavailableError,
)
from rotating_pool.engine import credential_store
from rotating_pool.secret import AWSCURRENT, AWSPENDING, Credentials
from rotating_pool.testing import HostileServer, LocalAgent
from tests.support import RecordCounter, current_document, put_version, set_password

URL = "postgresql+psycopg://"
WAIT = 20.0  # the longest a test waits for something that must happen


@pytest.fixture
def via_proxy(proxy, monkeypatch):
    """Route the library's default boto3 client through the fault proxy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    return proxy


@pytest.fixture
def agent(secretsmanager, monkeypatch) -> Iterator[LocalAgent]:
    """The agent stand-in in front of moto; AWS_TOKEN points at it."""
    with LocalAgent(secretsmanager.client(), port=0) as local_agent:
        for name, value in local_agent.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        yield local_agent


def who(engine: sqlalchemy.Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT session_user")).scalar_one())


def in_thread(call: Callable[[], Any], within: float) -> tuple[float, Any]:
    """Run `call` in a thread; (seconds it took, its result or exception).

    Fails the test, instead of hanging it, when the call takes over `within`."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:
            outcome.append(error)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert outcome, f"the call was still running after {within} s"
    return time.monotonic() - started, outcome[0]


class Times(logging.Handler):
    """The times of the rotating_pool records whose message contains `needle`."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.seen: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen.append(record.created)


@pytest.fixture
def logged() -> Iterator[Callable[[logging.Handler], None]]:
    """``logged(handler)``: add a handler to the rotating_pool logger at DEBUG for the test."""
    logger = logging.getLogger("rotating_pool")
    level, added = logger.level, []
    logger.setLevel(logging.DEBUG)

    def add(handler: logging.Handler) -> None:
        logger.addHandler(handler)
        added.append(handler)

    yield add
    for handler in added:
        logger.removeHandler(handler)
    logger.setLevel(level)


# -- the driver's login time-out is capped to the time left -------------------------------


@pytest.mark.parametrize(
    ("scheme", "connect_args"),
    [
        ("postgresql+psycopg", {}),  # psycopg's own default waits 130 s
        ("postgresql+psycopg", {"connect_timeout": 60}),  # the application's own, longer
        ("postgresql+asyncpg", {"timeout": 60}),  # asyncpg calls it "timeout"
    ],
    ids=["psycopg-default", "psycopg-60s", "asyncpg-60s"],
)
def test_a_database_that_never_answers_fails_the_login_within_the_deadline(
    make_secret, scheme, connect_args
):
    budget = RetryBudget(deadline=3)
    with HostileServer("silent") as silent:
        url = f"{scheme}://{silent.host}:{silent.port}/"
        if scheme.endswith("asyncpg"):
            engine: Any = rotating_pool.create_async_engine(
                url, secret_id=make_secret(), retry=budget, connect_args=connect_args
            )

            async def connect() -> None:
                async with engine.connect():
                    pass

            def call() -> None:
                asyncio.run(connect())
        else:
            engine = rotating_pool.create_engine(
                url, secret_id=make_secret(), retry=budget, connect_args=connect_args
            )

            def call() -> None:
                engine.connect().close()

        # The first read outside the measured login: with a 3 s deadline it
        # would get 1 s, which a cold moto may need.
        credential_store(engine).current(WAIT)
        elapsed, outcome = in_thread(call, within=budget.deadline + 15)
        assert silent.connections >= 1  # it did reach the silent listener
    assert isinstance(outcome, Exception) and not isinstance(outcome, AssertionError)
    assert "timeout" in str(outcome).lower() or isinstance(outcome, TimeoutError)
    # A time-out is not about credentials: no retry, and within the deadline.
    assert elapsed < budget.deadline + 1.5, f"the login took {elapsed:.1f} s"


# -- an unrecognised login error costs one read per process per minute --------------------


def test_an_unrecognised_login_error_repeating_costs_one_secrets_manager_call(
    make_secret, app_schema, postgres, via_proxy
):
    engine = rotating_pool.create_engine(URL, secret_id=make_secret("single"))
    user = who(engine)
    engine.dispose()
    with postgres.admin_connect() as conn:  # FATAL: too many connections for role: unrecognised
        conn.execute(f'ALTER ROLE "{user}" CONNECTION LIMIT 0')
    via_proxy.reset_calls()
    for attempt in range(3):
        with pytest.raises(sqlalchemy.exc.OperationalError, match="too many connections"):
            engine.connect()
        if attempt == 0:
            time.sleep(1.5)  # time passing on purpose: past the refused-login window (1 s)
    # The first error made one refetch (DescribeSecret: nothing new); the next
    # two, 1.5 s later, took that answer instead of asking again.
    assert via_proxy.calls == {"DescribeSecret": 1}
    stats = rotating_pool.stats(engine)
    assert (stats.refetches, stats.refetch_reuses, stats.rejected_logins) == (1, 2, 0)


# -- a refresh never goes back to a version refused lately ---------------------------------


def test_a_lagging_agent_cache_never_brings_back_a_refused_version(make_secret, sm_client, agent):
    arn = make_secret("single")
    now = [0.0]
    store = CredentialStore(
        AgentSource(arn, lock_dir=False), refresh_interval=10, clock=lambda: now[0]
    )
    first = store.current(WAIT)
    # Single-user rotation, between setSecret and finishSecret: the first
    # version is refused, AWSPENDING is the password the database has.
    document = {**current_document(sm_client, arn), "password": "rotated-pw"}
    pending = put_version(sm_client, arn, document, AWSPENDING)
    recovered = store.refetch(first, WAIT)
    assert recovered is not None and recovered.version_id == pending  # type: ignore[union-attr]
    store.confirm(recovered)  # type: ignore[arg-type]
    # The agent's cached AWSCURRENT (TTL 300 s) still holds the refused version.
    now[0] = 100.0
    assert store.held() == recovered  # starts the periodic refresh
    deadline = time.monotonic() + WAIT
    while store.stats().background_refreshes < 1:
        assert time.monotonic() < deadline, "the refresh did not finish"
        time.sleep(0.01)
    last = agent.history[-1]
    assert (last.version_stage, last.refresh_now, last.from_cache) == (None, False, True)
    assert store.held() == recovered  # not the refused first version


# -- use_pending=False reaches the source ----------------------------------------------------


@pytest.mark.parametrize("source", ["secretsmanager", "agent"])
def test_use_pending_false_never_logs_in_with_awspending(
    make_secret, app_schema, postgres, sm_client, via_proxy, agent, source
):
    arn = make_secret("single")
    budget = RetryBudget(rounds=2, base_delay=0.05, max_delay=0.1, deadline=5)
    engine = rotating_pool.create_engine(
        URL, secret_id=arn, use_pending=False, retry=budget, source=source
    )
    user = who(engine)
    engine.dispose()
    document = {**current_document(sm_client, arn), "password": "pending-pw"}
    put_version(sm_client, arn, document, AWSPENDING)
    set_password(postgres, user, "pending-pw")  # setSecret done; finishSecret not yet
    via_proxy.reset_calls()
    agent.reset_counts()
    with pytest.raises(LoginRejectedError):
        engine.connect()
    if source == "secretsmanager":
        assert via_proxy.calls["GetSecretValue"] == 0  # AWSPENDING not even read
    else:
        asked = [request.version_stage for request in agent.history]
        assert AWSPENDING not in asked and asked, asked


# -- the engine takes what another caller recovered while it waited (Recheck) -------------


def test_a_login_waiting_out_a_backoff_takes_what_another_caller_recovered(
    make_secret, app_schema, postgres, sm_client, logged
):
    arn = make_secret("single")
    # One wait of 1 to 2 s after the first refusal: long enough to act in.
    budget = RetryBudget(rounds=3, base_delay=2.0, max_delay=2.0, deadline=15)
    engine = rotating_pool.create_engine(URL, secret_id=arn, retry=budget)
    user = who(engine)
    engine.dispose()
    store = credential_store(engine)
    old = store.held()
    assert old is not None
    set_password(postgres, user, "changed-first")  # the secret does not know it yet
    nothing_new = RecordCounter("offers no credentials other than the refused ones", target=1)
    logged(nothing_new)
    worker: list[tuple[float, Any]] = []
    thread = threading.Thread(target=lambda: worker.append(in_thread(lambda: who(engine), WAIT)))
    thread.start()
    assert nothing_new.reached.wait(WAIT)  # refused, nothing new: now in its backoff wait
    document = {**current_document(sm_client, arn), "password": "changed-first"}
    put_version(sm_client, arn, document, AWSCURRENT)
    # Another caller, refused with the same credentials, recovers meanwhile.
    assert store.refetch(old, WAIT) not in (None, old)
    thread.join(WAIT)
    ((_elapsed, outcome),) = worker
    assert outcome == user
    stats = rotating_pool.stats(engine)
    # After its wait the login used the recovered credentials: one refusal, not two.
    assert (stats.rejected_logins, stats.recovered_logins) == (1, 1)


# -- a version read once is never read again ----------------------------------------------


def test_a_version_read_during_a_recovery_is_not_read_again_by_the_refresh(
    make_secret, sm_client, via_proxy
):
    arn = make_secret("single")
    source = SecretsManagerSource(arn)  # the default client, through the proxy
    first = source.load()
    document = {**current_document(sm_client, arn), "password": "rotated-pw"}
    pending = put_version(sm_client, arn, document, AWSPENDING)
    recovered = source.newer(first, [first.version_id], use_pending=True)
    assert recovered is not None and (recovered.version_id, recovered.stage) == (
        pending,
        AWSPENDING,
    )
    # finishSecret: AWSPENDING becomes AWSCURRENT. A refresh that started from
    # the first version sees AWSCURRENT moved, to a version already read.
    sm_client.update_secret_version_stage(
        SecretId=arn,
        VersionStage=AWSCURRENT,
        MoveToVersionId=pending,
        RemoveFromVersionId=first.version_id,
    )
    via_proxy.reset_calls()
    polled = source.poll(first)
    assert polled is not None
    assert (polled.version_id, polled.stage, polled.password) == (
        pending,
        AWSCURRENT,
        "rotated-pw",
    )
    assert via_proxy.calls == {"DescribeSecret": 1}  # no second GetSecretValue


# -- redaction covers every secret-bearing key botocore logs ------------------------------


def _botocore_debug(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "botocore.parsers", "botocore.endpoint"):
        caplog.set_level(logging.DEBUG, logger=name)


def _random_password(client) -> str:
    return str(
        client.get_random_password(PasswordLength=40, ExcludePunctuation=True)["RandomPassword"]
    )


def _secret_binary(client) -> str:
    name = f"rules-binary-{time.monotonic_ns()}"
    client.create_secret(Name=name, SecretBinary=b"binary-secret-value-0123456789")
    answer = client.get_secret_value(SecretId=name)
    assert answer["SecretBinary"] == b"binary-secret-value-0123456789"
    return "YmluYXJ5LXNlY3JldC12YWx1ZS0wMTIzNDU2Nzg5"  # its base64, as on the wire


def _secret_string(client) -> str:
    name = f"rules-string-{time.monotonic_ns()}"
    client.create_secret(Name=name, SecretString="plain-secret-string-0123456789")
    assert client.get_secret_value(SecretId=name)["SecretString"]
    return "plain-secret-string-0123456789"


@pytest.mark.parametrize(
    "call", [_random_password, _secret_binary, _secret_string], ids=lambda f: f.__name__[1:]
)
def test_botocore_debug_logs_of_every_secret_bearing_answer_are_redacted(
    secretsmanager, caplog, call
):
    client = secretsmanager.client()
    _botocore_debug(caplog)
    caplog.clear()
    value = call(client)
    assert value in caplog.text  # what botocore logs unredacted at DEBUG
    redactor = rotating_pool.redact_botocore_logs()
    try:
        caplog.clear()
        value = call(client)
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert value not in logged
        assert "***" in logged
    finally:
        for name in ("botocore", "botocore.parsers", "botocore.endpoint", "botocore.hooks"):
            logging.getLogger(name).removeFilter(redactor)


# -- the backoff waits space out retries ------------------------------------------------------


@pytest.mark.parametrize("engine_kind", ["sync", "async"])
def test_logins_with_unchanged_credentials_are_spaced_by_the_backoff_delays(
    make_secret, app_schema, postgres, logged, engine_kind
):
    # Every delay is between 0.2 s and 0.4 s (half the cap to the cap).
    budget = RetryBudget(rounds=3, base_delay=0.4, max_delay=0.4, deadline=10)
    arn = make_secret("single")
    refusals = Times("the database refused user")
    logged(refusals)
    if engine_kind == "sync":
        engine: Any = rotating_pool.create_engine(URL, secret_id=arn, retry=budget)
        user = who(engine)
        engine.dispose()
        set_password(postgres, user, "nobody-knows-this")
        with pytest.raises(LoginRejectedError):
            engine.connect()
    else:
        engine = rotating_pool.create_async_engine(URL, secret_id=arn, retry=budget)

        async def first() -> str:
            async with engine.connect() as conn:
                return str((await conn.execute(text("SELECT session_user"))).scalar_one())

        user = asyncio.run(first())
        set_password(postgres, user, "nobody-knows-this")

        async def again() -> None:
            await engine.dispose()
            async with engine.connect():
                pass

        with pytest.raises(LoginRejectedError):
            asyncio.run(again())
    assert len(refusals.seen) == 1 + budget.rounds
    gaps = [b - a for a, b in zip(refusals.seen, refusals.seen[1:], strict=False)]
    assert all(gap >= 0.2 - 0.01 for gap in gaps), gaps


def test_a_throttled_first_read_is_retried_after_the_backoff_delays(make_secret, proxy):
    arn = make_secret()
    budget = RetryBudget(rounds=2, base_delay=0.6, max_delay=0.6, deadline=10)
    sdk = _one_attempt_client(proxy)
    engine = rotating_pool.create_engine(URL, secret_id=arn, retry=budget, client=sdk)
    proxy.answer_error("GetSecretValue", "ThrottlingException")
    started = time.monotonic()
    with pytest.raises(SecretsManagerUnavailableError, match="ThrottlingException"):
        engine.connect()
    elapsed = time.monotonic() - started
    assert proxy.calls["GetSecretValue"] == 1 + budget.rounds
    assert elapsed >= budget.rounds * 0.3 - 0.01, f"{elapsed:.2f} s"  # each wait >= 0.3 s


def _one_attempt_client(proxy) -> Any:
    return boto3.session.Session().client(
        "secretsmanager",
        endpoint_url=proxy.endpoint_url,
        config=Config(retries={"total_max_attempts": 1}),
    )


# -- AWSPENDING on the direct path ---------------------------------------------------------


@pytest.mark.parametrize("engine_kind", ["sync", "async"])
def test_between_setsecret_and_finishsecret_the_direct_path_logs_in_with_awspending(
    make_secret, app_schema, postgres, sm_client, via_proxy, engine_kind
):
    arn = make_secret("single")
    document = {**current_document(sm_client, arn), "password": "set-not-finished"}
    if engine_kind == "sync":
        engine: Any = rotating_pool.create_engine(URL, secret_id=arn)
        user = who(engine)
        engine.dispose()
        pending = put_version(sm_client, arn, document, AWSPENDING)
        set_password(postgres, user, "set-not-finished")
        via_proxy.reset_calls()
        assert who(engine) == user
    else:
        engine = rotating_pool.create_async_engine(URL, secret_id=arn)

        async def session_user() -> str:
            async with engine.connect() as conn:
                return str((await conn.execute(text("SELECT session_user"))).scalar_one())

        user = asyncio.run(session_user())
        pending = put_version(sm_client, arn, document, AWSPENDING)
        set_password(postgres, user, "set-not-finished")
        via_proxy.reset_calls()

        async def renewed() -> str:
            await engine.dispose()
            return await session_user()

        assert asyncio.run(renewed()) == user
    # One DescribeSecret finds AWSPENDING, one GetSecretValue reads it, by id.
    assert via_proxy.calls == {"DescribeSecret": 1, "GetSecretValue": 1}
    held = credential_store(engine).held()
    assert held is not None and (held.version_id, held.stage) == (pending, AWSPENDING)
    stats = rotating_pool.stats(engine)
    assert (stats.rejected_logins, stats.recovered_logins) == (1, 1)


# -- a recovery by stage ends when both labels name refused versions ------------------------


class StagedClient:
    """A stand-in for boto3's client (not Secrets Manager): AWSCURRENT and
    AWSPENDING on two versions, each refused lately; it counts the reads and
    ends the test after a few, instead of letting an endless loop run."""

    def __init__(self) -> None:
        self.reads = 0

    def get_secret_value(self, SecretId: str, VersionStage: str) -> dict[str, Any]:
        self.reads += 1
        if self.reads > 10:
            raise RuntimeError("the source kept reading: 10 GetSecretValue for one refusal")
        version = "v2" if VersionStage == AWSCURRENT else "v3"
        document = {"username": "app_a", "password": f"pw-{version}", "host": "db"}
        return {
            "SecretString": json.dumps(document),
            "VersionId": version,
            "VersionStages": [VersionStage],
        }


def test_a_recovery_by_stage_reads_each_label_at_most_once():
    client = StagedClient()
    source = SecretsManagerSource("db", client=client)  # type: ignore[arg-type]
    rejected = Credentials("app_a", "pw-v3", host="db", version_id="v3", stage=AWSPENDING)
    assert source.newer(rejected, ["v3", "v2"], use_pending=True) is None
    assert client.reads <= 2
