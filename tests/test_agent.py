"""AgentSource against the local stand-in for the Secrets Manager Agent, on the real bed."""

from __future__ import annotations

import asyncio
import fcntl
import http.client
import json
import logging
import os
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.config import Config
from sqlalchemy import text

import rotating_pool
from rotating_pool import (
    AgentAnswerError,
    AgentSource,
    ConfigurationError,
    SecretAccessDeniedError,
    SecretFormatError,
    SecretNotFoundError,
    SecretsManagerSource,
    SecretsManagerUnavailableError,
)
from rotating_pool.agent import ENDPOINT_ENV, TOKEN_HEADER
from rotating_pool.agent_token import MAX_TOKEN_BYTES
from rotating_pool.engine import credential_store
from rotating_pool.rotation import Rotator
from rotating_pool.testing import LocalAgent
from rotating_pool.testing._process import free_port
from rotating_pool.testing.agent import SERVER_HEADER

URL = "postgresql+psycopg://"
PASSWORD_IN_A_BAD_ANSWER = "hunter2-in-a-bad-answer"


@pytest.fixture
def agent(secretsmanager, monkeypatch):
    """The stand-in in front of moto; AWS_TOKEN and the endpoint variable point at it."""
    with LocalAgent(secretsmanager.client(), port=0) as local_agent:
        for name, value in local_agent.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        yield local_agent


@pytest.fixture
def agent_via_proxy(secretsmanager, proxy, monkeypatch):
    """The stand-in reading moto through the fault proxy, with no botocore retries."""
    client = secretsmanager.client(
        proxy.endpoint_url, config=Config(retries={"total_max_attempts": 1})
    )
    with LocalAgent(client, port=0) as local_agent:
        for name, value in local_agent.env().items():
            monkeypatch.setenv(name, value)
        yield local_agent


class OddServer:
    """Something on the agent's port that is not the agent: one canned answer."""

    def __init__(self, status: int, body: bytes) -> None:
        answer = (status, body)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(answer[0])
                self.send_header("Content-Length", str(len(answer[1])))
                self.end_headers()
                self.wfile.write(answer[1])

            def log_message(self, format, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def who(engine) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SELECT session_user")).scalar_one()


def password_of(sm_client, arn: str, stage: str = "AWSCURRENT") -> str:
    value = sm_client.get_secret_value(SecretId=arn, VersionStage=stage)
    return json.loads(value["SecretString"])["password"]


def raw_get(agent: LocalAgent, path: str, headers: dict[str, str], method: str = "GET"):
    connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=5)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Server"), response.read()
    finally:
        connection.close()


# -- choosing the source ------------------------------------------------------


def test_source_agent_reads_through_the_agent_and_nothing_before_the_first_connection(
    make_secret, app_schema, agent
):
    arn = make_secret()
    engine = rotating_pool.create_engine(URL, secret_id=arn, source="agent")
    assert isinstance(credential_store(engine).source, AgentSource)
    assert agent.requests == 0
    assert who(engine) == app_schema.users[0]
    engine.dispose()
    assert who(engine) == app_schema.users[0]  # a new login, credentials from memory
    assert [(r.secret_id, r.version_stage, r.refresh_now) for r in agent.history] == [
        (arn, None, False)  # the first load, through the agent's cache the fleet shares
    ]


def test_source_accepts_the_two_names_an_instance_and_nothing_else():
    def source_of(**kwargs):
        return credential_store(rotating_pool.create_engine(URL, secret_id="db", **kwargs)).source

    assert isinstance(source_of(), SecretsManagerSource)
    assert isinstance(source_of(source="secretsmanager"), SecretsManagerSource)
    assert isinstance(source_of(source="agent"), AgentSource)
    mine = AgentSource("db", endpoint="http://127.0.0.1:2775", token="t")
    assert source_of(source=mine) is mine
    with pytest.raises(ConfigurationError, match="'secretsmanager', 'agent'"):
        source_of(source="vault")


@pytest.mark.parametrize(
    "endpoint", ["https://localhost:2773", "localhost:2773", "http://localhost:2773/v1", "http://"]
)
def test_a_malformed_endpoint_is_a_configuration_error_at_construction(endpoint, monkeypatch):
    with pytest.raises(ConfigurationError, match="endpoint"):
        AgentSource("db", endpoint=endpoint)
    monkeypatch.setenv(ENDPOINT_ENV, endpoint)
    with pytest.raises(ConfigurationError, match=ENDPOINT_ENV):
        rotating_pool.create_engine(URL, secret_id="db", source="agent")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://db-agent:2773",  # a mistyped host: the token and the secret over the network
        "http://10.0.0.5:2773",
        "http://[fe80::1]:2773",
        "http://localhost.attacker.example:2773",
        "http://127.0.0.1.nip.io:2773",
        "http://0.0.0.0:2773",
    ],
)
def test_an_endpoint_off_this_host_is_refused_unless_opted_in(endpoint, monkeypatch, caplog):
    with pytest.raises(ConfigurationError, match="allow_remote_endpoint=True"):
        AgentSource("db", endpoint=endpoint)
    monkeypatch.setenv(ENDPOINT_ENV, endpoint)
    with pytest.raises(ConfigurationError, match=ENDPOINT_ENV):
        rotating_pool.create_engine(URL, secret_id="db", source="agent")
    assert not caplog.records
    AgentSource("db", allow_remote_endpoint=True)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "not on this host" in warning.getMessage()
    assert "in clear" in warning.getMessage()


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://localhost:2773",
        "http://LOCALHOST:2773",
        "http://127.0.0.1:2773",
        "http://127.0.0.53:2773",
        "http://[::1]:2773",
    ],
)
def test_loopback_endpoints_are_accepted_without_a_warning(endpoint, caplog):
    assert AgentSource("db", endpoint=endpoint).endpoint == endpoint
    assert not caplog.records


def test_a_secret_named_by_its_name_is_read_and_its_answer_checked_by_name(
    make_secret, sm_client, agent
):
    name = sm_client.describe_secret(SecretId=make_secret())["Name"]
    assert AgentSource(name).load().username


def test_an_async_engine_reads_through_the_agent(make_secret, app_schema, agent):
    arn = make_secret()

    async def scenario() -> str:
        engine = rotating_pool.create_async_engine(
            "postgresql+psycopg_async://", secret_id=arn, source="agent"
        )
        try:
            async with engine.connect() as conn:
                return (await conn.execute(text("SELECT session_user"))).scalar_one()
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) == app_schema.users[0]
    assert agent.requests == 1 and agent.refreshes == 0  # one read, from the cache


# -- the token ----------------------------------------------------------------


def test_the_token_may_be_a_file_path_in_aws_token(
    make_secret, app_schema, agent, tmp_path, monkeypatch
):
    token_file = tmp_path / "awssmatoken"
    token_file.write_text(agent.token + "\n")  # the agent trims the file, so do we
    monkeypatch.setenv("AWS_TOKEN", f"file://{token_file}")
    engine = rotating_pool.create_engine(URL, secret_id=make_secret(), source="agent")
    assert who(engine) == app_schema.users[0]
    assert agent.rejected == 0


def test_a_rewritten_token_file_is_read_again_when_the_agent_refuses_the_token(
    make_secret, agent, tmp_path, monkeypatch
):
    token_file = tmp_path / "awssmatoken"
    token_file.write_text(agent.token)
    monkeypatch.setenv("AWS_TOKEN", f"file://{token_file}")
    source = AgentSource(make_secret())
    assert source.fetch("AWSCURRENT") is not None
    agent.token = "a-new-token-after-a-sidecar-restart"
    token_file.write_text(agent.token)
    assert source.fetch("AWSCURRENT") is not None
    assert agent.rejected == 1  # refused once with the old token, then read again
    assert agent.refreshes == 2


def test_a_token_that_stays_wrong_is_access_denied_and_never_quoted(
    make_secret, agent, monkeypatch
):
    monkeypatch.setenv("AWS_TOKEN", "wrong-token-value")
    engine = rotating_pool.create_engine(URL, secret_id=make_secret(), source="agent")
    with pytest.raises(
        SecretAccessDeniedError, match=r"refused the token from \$AWS_TOKEN"
    ) as denied:
        engine.connect()
    assert agent.rejected == 1  # a value, not a file: nothing to read again
    assert "wrong-token-value" not in str(denied.value)
    assert agent.token not in str(denied.value)


def test_aws_session_token_is_the_fallback_and_aws_token_comes_first(
    make_secret, app_schema, agent, monkeypatch
):
    arn = make_secret()
    monkeypatch.delenv("AWS_TOKEN")
    monkeypatch.setenv("AWS_SESSION_TOKEN", agent.token)
    assert (
        who(rotating_pool.create_engine(URL, secret_id=arn, source="agent")) == app_schema.users[0]
    )
    monkeypatch.setenv("AWS_TOKEN", agent.token)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "an-sts-session-token-the-agent-does-not-use")
    assert (
        who(rotating_pool.create_engine(URL, secret_id=arn, source="agent")) == app_schema.users[0]
    )
    assert agent.rejected == 0


def test_a_missing_token_is_a_configuration_error_at_first_use_naming_the_variables(
    make_secret, agent, monkeypatch
):
    monkeypatch.delenv("AWS_TOKEN")
    engine = rotating_pool.create_engine(URL, secret_id=make_secret(), source="agent")  # no error
    with pytest.raises(ConfigurationError, match=r"AWS_TOKEN.*AWS_SESSION_TOKEN"):
        engine.connect()
    assert agent.requests == agent.rejected == 0  # nothing was sent


def test_an_unreadable_token_file_is_a_configuration_error_naming_it(
    make_secret, agent, monkeypatch
):
    monkeypatch.setenv("AWS_TOKEN", "file:///run/no-such-dir/awssmatoken")
    with pytest.raises(ConfigurationError, match="/run/no-such-dir/awssmatoken"):
        AgentSource(make_secret()).load()


@pytest.mark.parametrize("how", ["variable", "argument", "file"])
def test_a_token_with_surrounding_whitespace_works(make_secret, agent, tmp_path, monkeypatch, how):
    padded = f"  {agent.token}\r\n"  # as echo, or a Kubernetes/ECS secret file, leaves it
    token = None
    if how == "variable":
        monkeypatch.setenv("AWS_TOKEN", padded)
    elif how == "file":
        token_file = tmp_path / "awssmatoken"
        token_file.write_text(padded)
        monkeypatch.setenv("AWS_TOKEN", f"file://{token_file}")
    else:
        token = padded
    assert AgentSource(make_secret(), token=token).load().username
    assert agent.rejected == 0


@pytest.mark.parametrize("bad", ["\n", "\x07", "\x1b", "\x7f", "\u2028", "\xe9"])
def test_a_token_with_a_control_character_is_a_configuration_error_that_never_holds_it(
    make_secret, agent, monkeypatch, caplog, bad
):
    caplog.set_level(logging.DEBUG)
    token = agent.token[:10] + bad + agent.token[10:]
    monkeypatch.setenv("AWS_TOKEN", token)
    engine = rotating_pool.create_engine(URL, secret_id=make_secret(), source="agent")
    errors = []
    for attempt in (AgentSource("db").load, engine.connect):
        with pytest.raises(ConfigurationError, match=r"from \$AWS_TOKEN holds a") as raised:
            attempt()
        errors.append(raised.value)
    with pytest.raises(ConfigurationError, match="the token argument holds a") as raised:
        AgentSource("db", token=token)
    errors.append(raised.value)
    texts = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    for error in errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    for text_ in texts:
        for piece in (agent.token[:10], agent.token[10:], token):
            assert piece not in text_
    assert agent.requests == 0  # nothing was sent


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "too large", "not ascii"])
def test_a_token_path_that_is_not_a_small_regular_file_is_refused_without_blocking(
    agent, tmp_path, monkeypatch, kind
):
    path = tmp_path / "awssmatoken"
    says = {
        "fifo": "a FIFO",
        "directory": "a directory",
        "device": "a device",
        "too large": f"larger than {MAX_TOKEN_BYTES} bytes",
        "not ascii": "non-ASCII",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)  # opened for reading, it would block until a writer comes
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = "/dev/zero"  # endless: read whole, it would never end
    elif kind == "too large":
        path.write_text("t" * (MAX_TOKEN_BYTES + 1))
    else:
        path.write_bytes(b"token-\xff")
    monkeypatch.setenv("AWS_TOKEN", f"file://{path}")
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            AgentSource("db").load()
        except BaseException as error:
            outcome.append(error)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "the token read blocked"
    (error,) = outcome
    assert isinstance(error, ConfigurationError)
    assert says in str(error) and str(path) in str(error)
    assert agent.requests == 0


def test_an_error_body_is_redacted_before_it_is_cut(monkeypatch):
    token = "tok-" + "0123456789abcdef" * 3
    # "InternalServiceError: " + 150 + " the token was ": the token runs from 187 to 239
    message = "x" * 150 + f" the token was {token}, and " + "y" * 100
    body = json.dumps({"__type": "InternalServiceError", "message": message}).encode()
    server = OddServer(500, body)
    try:
        with pytest.raises(SecretsManagerUnavailableError, match="HTTP 500") as raised:
            AgentSource("db", endpoint=server.endpoint_url, token=token).fetch("AWSCURRENT")
    finally:
        server.close()
    text_ = str(raised.value)
    assert "***" in text_
    for start in range(len(token) - 5):
        assert token[start : start + 6] not in text_  # not even a piece of it


# -- rotation -----------------------------------------------------------------


def test_a_rejected_login_bypasses_the_agents_cache_with_refresh_now(make_secret, sm_client, agent):
    arn = make_secret("single")
    engine = rotating_pool.create_engine(URL, secret_id=arn, source="agent")
    source = credential_store(engine).source
    assert source.load().password == password_of(sm_client, arn)  # now in the agent's cache
    who(engine)
    old_password = password_of(sm_client, arn)
    Rotator(sm_client).rotate(arn)
    # What the agent serves from its cache (TTL 300 s) is the password that was just changed:
    assert source.load().password == old_password
    agent.reset_counts()
    engine.dispose()
    who(engine)  # refused, then recovered through the agent
    stats = rotating_pool.stats(engine)
    assert (stats.rejected_logins, stats.recovered_logins, stats.refetches) == (1, 1, 1)
    # The agent's cache first (another worker may have refreshed it), AWSCURRENT
    # then AWSPENDING, then refreshNow: AWSPENDING (a rotation half way), AWSCURRENT.
    assert [(r.version_stage, r.refresh_now, r.from_cache) for r in agent.history] == [
        (None, False, True),  # the cached AWSCURRENT: the refused password
        ("AWSPENDING", False, False),  # none: the rotation is over (asked of Secrets Manager)
        (None, True, False),  # read from Secrets Manager: AWSCURRENT moved
    ]
    # The fresh read replaced the agent's cached AWSCURRENT for every reader.
    assert source.load().password == password_of(sm_client, arn) != old_password


def test_awspending_is_read_by_version_stage_while_a_single_user_rotation_is_half_way(
    make_secret, app_schema, sm_client, agent
):
    arn = make_secret("single")
    engine = rotating_pool.create_engine(URL, secret_id=arn, source="agent")
    who(engine)
    in_the_window: list[str] = []

    def between_set_and_finish(step: str, seconds: float) -> None:
        if step != "testSecret":
            return
        agent.reset_counts()
        for _ in range(3):  # new logins while the old password is gone and AWSCURRENT is old
            engine.dispose()
            in_the_window.append(who(engine))

    Rotator(sm_client).rotate(arn, on_step=between_set_and_finish)
    assert in_the_window == [app_schema.users[0]] * 3
    assert [(r.version_stage, r.refresh_now, r.status) for r in agent.history] == [
        (None, False, 200),  # the cached AWSCURRENT: still the refused password
        ("AWSPENDING", False, 200),  # the one the database has now (read once, then cached)
    ]
    engine.dispose()
    assert who(engine) == app_schema.users[0]  # and after finishSecret
    assert rotating_pool.stats(engine).failed_recoveries == 0


@pytest.mark.parametrize(
    ("count", "together"), [(2, False), (4, True)], ids=["one-after-another", "together"]
)
def test_workers_behind_one_agent_cost_one_secrets_manager_read_per_rotation(
    make_secret, app_schema, sm_client, agent, count, together
):
    """Worker processes' stores (a source of its own makes a store of its own,
    as each process has), refused in every single-user rotation's window: the first asks the
    agent's cache, then refreshes AWSPENDING; the others find it cached. Refused
    together, they take turns: the agent does not coalesce concurrent misses."""
    arn = make_secret("single")
    workers = [
        rotating_pool.create_engine(URL, secret_id=arn, source=rotating_pool.AgentSource(arn))
        for _ in range(count)
    ]
    assert len({id(credential_store(engine)) for engine in workers}) == count
    for engine in workers:
        who(engine)
    reads_per_rotation = []

    def in_the_window(step: str, seconds: float) -> None:
        if step != "testSecret":
            return
        before = agent.upstream_calls
        start = threading.Barrier(count if together else 1)

        def reconnect(engine: Any) -> str:
            engine.dispose()
            start.wait()
            return who(engine)  # refused, then recovered

        with ThreadPoolExecutor(count if together else 1) as pool:
            users = list(pool.map(reconnect, workers))
        assert users == [app_schema.users[0]] * count
        reads_per_rotation.append(agent.upstream_calls - before)

    for _ in range(4):  # from the second on, the agent's cached AWSPENDING is the last one's
        Rotator(sm_client).rotate(arn, on_step=in_the_window)
    assert reads_per_rotation == [1] * 4
    for engine in workers:
        stats = rotating_pool.stats(engine)
        assert (stats.recovered_logins, stats.failed_recoveries) == (4, 0)


def test_a_worker_that_keeps_its_turn_delays_the_others_by_half_their_timeout_at_most(
    make_secret, agent, tmp_path, caplog
):
    arn = make_secret()
    source = AgentSource(arn, timeout=1.0, lock_dir=tmp_path)
    source.load()
    (lock_file,) = tmp_path.glob("rotating_pool-agent-*.lock")
    with open(lock_file, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process stuck in its turn
        started = time.monotonic()
        assert source.load().username  # within its own timeout, turn and read together
        waited = time.monotonic() - started
    assert 0.45 <= waited < 1.0
    assert "longer than 0.5 s" in caplog.text


def test_a_worker_forked_during_a_turn_does_not_keep_it(make_secret, agent, tmp_path, caplog):
    """A pre-forking server may fork a worker while a thread of the parent
    holds the turn: the child closes its copy of the lock file, so the turn
    ends when the parent's does."""
    arn = make_secret()
    source = AgentSource(arn, timeout=1.0, lock_dir=tmp_path)
    release_child, child_end = os.pipe()
    with source._turn(time.monotonic() + 1.0):
        pid = os.fork()
        if pid == 0:  # the new worker: alive until the test ends
            os.read(release_child, 1)
            os._exit(0)
    try:
        started = time.monotonic()
        assert AgentSource(arn, timeout=1.0, lock_dir=tmp_path).load().username
        assert time.monotonic() - started < 0.4  # the patience (0.5 s) not spent
        assert "longer than" not in caplog.text
    finally:
        os.write(child_end, b"x")
        os.waitpid(pid, 0)


# -- errors -------------------------------------------------------------------


def test_no_agent_listening_is_a_clear_unavailable_error(make_secret, agent, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(ENDPOINT_ENV, endpoint)
    engine = rotating_pool.create_engine(URL, secret_id=make_secret(), source="agent")
    with pytest.raises(
        SecretsManagerUnavailableError, match="no Secrets Manager Agent listening on"
    ):
        engine.connect()
    with pytest.raises(SecretsManagerUnavailableError, match=endpoint):
        engine.connect()


def test_an_unknown_secret_is_not_found(agent):
    engine = rotating_pool.create_engine(URL, secret_id="no/such/secret", source="agent")
    with pytest.raises(SecretNotFoundError, match="no/such/secret") as raised:
        engine.connect()
    assert "ResourceNotFoundException" in str(raised.value)


@pytest.mark.parametrize(
    ("error_type", "status", "error"),
    [
        ("AccessDeniedException", 400, SecretAccessDeniedError),
        ("DecryptionFailure", 400, SecretAccessDeniedError),
        ("ThrottlingException", 400, SecretsManagerUnavailableError),
        ("InternalServiceError", 500, SecretsManagerUnavailableError),
    ],
)
def test_secrets_manager_errors_passed_on_by_the_agent_are_typed(
    make_secret, agent_via_proxy, proxy, error_type, status, error
):
    arn = make_secret()
    proxy.answer_error("GetSecretValue", error_type, status=status)
    with pytest.raises(error, match=f"HTTP {status} .*{error_type}") as raised:
        AgentSource(arn).fetch("AWSCURRENT")
    assert raised.value.secret_id == arn
    assert agent_via_proxy.history[-1].status == status


def test_an_agent_that_cannot_reach_secrets_manager_is_unavailable(
    make_secret, agent_via_proxy, proxy
):
    arn = make_secret()
    proxy.refuse()
    with pytest.raises(SecretsManagerUnavailableError, match=r"HTTP 502 .*ConnectionError"):
        AgentSource(arn).fetch("AWSCURRENT")


@pytest.mark.parametrize(
    ("status", "body", "error", "says"),
    [
        (
            200,
            f"password={PASSWORD_IN_A_BAD_ANSWER}".encode(),
            SecretsManagerUnavailableError,
            "not GetSecretValue's JSON",
        ),
        (503, b"Service Unavailable", SecretsManagerUnavailableError, "HTTP 503"),
        (401, b"Unauthorized", SecretAccessDeniedError, "refused the token"),
        (404, b"Not found", SecretNotFoundError, "HTTP 404"),
        (429, b"Connection limit exceeded", SecretsManagerUnavailableError, "HTTP 429"),
    ],
)
def test_odd_answers_are_typed_errors_that_never_quote_a_successful_body(status, body, error, says):
    server = OddServer(status, body)
    try:
        source = AgentSource("db", endpoint=server.endpoint_url, token="token-value")
        with pytest.raises(error, match=says) as raised:
            source.fetch("AWSCURRENT")
    finally:
        server.close()
    message = str(raised.value)
    assert PASSWORD_IN_A_BAD_ANSWER not in message
    assert "token-value" not in message
    assert raised.value.__context__ is None  # nothing chained that could quote the body


def answer(secret_string: object = None, **fields: object) -> bytes:
    """GetSecretValue's JSON for the secret "db", with `fields` changed."""
    document = {"username": "u", "password": PASSWORD_IN_A_BAD_ANSWER}
    return json.dumps(
        {
            "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf",
            "Name": "db",
            "VersionId": "v1",
            "SecretString": json.dumps(document) if secret_string is None else secret_string,
            **fields,
        }
    ).encode()


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    ("status", "body", "error", "says"),
    [
        (200, answer(), None, ""),  # the well-formed answer, for contrast
        (200, answer({"username": "u"}), SecretFormatError, "not a string"),
        (200, answer(nested(100_000)), SecretFormatError, "not valid JSON"),
        (200, nested(100_000).encode(), AgentAnswerError, "not GetSecretValue's JSON"),
        (
            200,
            answer(Name="other", ARN="arn:aws:secretsmanager:r:1:secret:other-AbCdEf"),
            AgentAnswerError,
            "for another secret",
        ),
        (200, answer(Name=None, ARN=None), AgentAnswerError, "for another secret"),
        (200, answer(Name=["db"]), AgentAnswerError, "for another secret"),
        (200, answer(VersionId={"v": 1}), AgentAnswerError, "VersionId"),
        (
            200,
            answer(json.dumps({"username": "u\0x", "password": "p"})),
            SecretFormatError,
            "'username' holds a control character",
        ),
        (
            200,
            answer(json.dumps({"engine": "mysql", "username": "u", "password": "p"})),
            SecretFormatError,
            "'engine' is not PostgreSQL's",
        ),
        (500, nested(100_000).encode(), SecretsManagerUnavailableError, "HTTP 500"),
    ],
    ids=[
        "good",
        "object",
        "deep secret",
        "deep answer",
        "other secret",
        "no name",
        "name not a string",
        "version id",
        "nul user",
        "mysql",
        "deep error",
    ],
)
def test_malformed_answers_are_typed_errors_never_type_or_recursion_errors(
    status, body, error, says
):
    server = OddServer(status, body)
    try:
        source = AgentSource("db", endpoint=server.endpoint_url, token="token-value")
        if error is None:
            assert source.fetch("AWSCURRENT").username == "u"
            return
        with pytest.raises(error, match=says) as raised:
            source.fetch("AWSCURRENT")
    finally:
        server.close()
    assert PASSWORD_IN_A_BAD_ANSWER not in str(raised.value)


def test_an_agent_that_hangs_is_unavailable_after_the_timeout(make_secret, agent_via_proxy, proxy):
    arn = make_secret()
    proxy.hang()
    started = time.monotonic()
    with pytest.raises(SecretsManagerUnavailableError, match=r"did not answer within 0\.5 s"):
        AgentSource(arn, timeout=0.5).fetch("AWSCURRENT")
    assert time.monotonic() - started < 3
    proxy.restore()


# -- secrets stay secret ------------------------------------------------------


def test_no_token_or_password_in_records_errors_or_reprs(
    make_secret, sm_client, agent, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    for name in ("rotating_pool", "rotating_pool.testing", "sqlalchemy", "psycopg"):
        caplog.set_level(logging.DEBUG, logger=name)
    arn = make_secret("single")
    engine = rotating_pool.create_engine(URL, secret_id=arn, source="agent", echo="debug")
    who(engine)
    Rotator(sm_client).rotate(arn)
    engine.dispose()
    who(engine)  # a refused login, a refreshNow read, a recovery
    texts = []
    monkeypatch.setenv("AWS_TOKEN", "wrong-token-value")
    for failing in (AgentSource(arn), AgentSource("no/such/secret", token=agent.token)):
        with pytest.raises(rotating_pool.RotatingPoolError) as raised:
            failing.fetch("AWSCURRENT")
        texts += [str(raised.value), repr(raised.value)]
    store = credential_store(engine)
    texts += [repr(store), repr(store.source), repr(agent), repr(store.current())]
    records = [
        r.getMessage() + (r.exc_text or "")
        for r in caplog.records
        if r.name.split(".")[0] in ("rotating_pool", "sqlalchemy", "psycopg")  # not botocore's
    ]
    assert any("refused user" in record for record in records)
    assert any("LocalAgent" in record for record in records)  # DEBUG was on for the stand-in
    versions = sm_client.list_secret_version_ids(SecretId=arn)["Versions"]
    passwords = {
        json.loads(
            sm_client.get_secret_value(SecretId=arn, VersionId=v["VersionId"])["SecretString"]
        )["password"]
        for v in versions
    }
    assert len(passwords) == 2
    for secret in {*passwords, agent.token, "wrong-token-value"}:
        for text_ in texts + records:
            assert secret not in text_


# -- the stand-in itself ------------------------------------------------------


def test_the_stand_in_labels_every_answer_and_checks_the_token_as_the_agent_does(
    make_secret, agent
):
    arn = make_secret()
    query = f"/secretsmanager/get?secretId={arn}"
    good = {TOKEN_HEADER: agent.token}
    answers = {
        "ping, no token": raw_get(agent, "/ping", {}),
        "no token": raw_get(agent, query, {}),
        "wrong token": raw_get(agent, query, {TOKEN_HEADER: "nope"}),
        "forwarded": raw_get(agent, query, {**good, "X-Forwarded-For": "10.0.0.1"}),
        "unknown parameter": raw_get(agent, query + "&versionstage=AWSCURRENT", good),
        "bad refreshNow": raw_get(agent, query + "&refreshNow=yes", good),
        "other path": raw_get(agent, "/v1/" + arn, good),
        "POST": raw_get(agent, query, good, method="POST"),
        "good": raw_get(agent, query, good),
    }
    assert {name: status for name, (status, _, _) in answers.items()} == {
        "ping, no token": 200,
        "no token": 403,
        "wrong token": 403,
        "forwarded": 400,
        "unknown parameter": 400,
        "bad refreshNow": 400,
        "other path": 404,
        "POST": 405,
        "good": 200,
    }
    assert {server for _, server, _ in answers.values()} == {SERVER_HEADER}
    document = json.loads(answers["good"][2])
    assert document["ARN"] == arn and document["VersionStages"] == ["AWSCURRENT"]
    assert json.loads(document["SecretString"])["username"]


def test_the_stand_in_takes_the_token_in_either_header_the_agent_reads_by_default(
    make_secret, agent
):
    # The agent's documented default ssrf_headers: X-Aws-Parameters-Secrets-Token, X-Vault-Token.
    query = f"/secretsmanager/get?secretId={make_secret()}"
    statuses = [
        raw_get(agent, query, {header: token})[0]
        for header in (TOKEN_HEADER, "X-Vault-Token")
        for token in (agent.token, "nope")
    ]
    assert statuses == [200, 403, 200, 403]


def test_the_stand_in_caches_by_query_and_checks_expired_entries_as_the_agent(
    make_secret, secretsmanager, sm_client
):
    arn = make_secret()
    with LocalAgent(secretsmanager.client(), port=0, ttl=1.0) as agent:
        source = AgentSource(arn, endpoint=agent.endpoint_url, token=agent.token)
        source.load()
        source.load()
        version = sm_client.describe_secret(SecretId=arn)["VersionIdsToStages"]
        version_id = next(v for v, stages in version.items() if "AWSCURRENT" in stages)
        raw_get(
            agent,
            f"/secretsmanager/get?secretId={arn}&versionId={version_id}",
            {TOKEN_HEADER: agent.token},
        )
        time.sleep(1.1)  # the TTL itself is what is tested
        source.load()  # expired, its version still AWSCURRENT: kept
        assert (agent.upstream_calls, agent.describe_calls) == (2, 1)
        document = json.loads(sm_client.get_secret_value(SecretId=arn)["SecretString"])
        document["password"] = "x"
        sm_client.put_secret_value(SecretId=arn, SecretString=json.dumps(document))
        time.sleep(1.1)
        assert source.load().password == "x"  # expired, its version no longer AWSCURRENT: read
        assert [(r.version_id, r.from_cache) for r in agent.history] == [
            (None, False),
            (None, True),
            (version_id, False),  # another key
            (None, True),  # expired, still current
            (None, False),  # expired, superseded
        ]
        assert (agent.upstream_calls, agent.describe_calls) == (3, 2)
