"""AgentSource against a hostile listener on the agent's port (`HostileAgent`, not the agent).

Every call ends within its timeout + 1 s and every connect within its deadline
+ 1 s, with a typed error that quotes neither the token nor the bait password;
a process waiting for another's turn is not held past its own time.
"""

from __future__ import annotations

import fcntl
import logging
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

import rotating_pool
from rotating_pool import (
    AgentAnswerError,
    AgentSource,
    Credentials,
    RetryBudget,
    SecretsManagerUnavailableError,
)
from rotating_pool.testing import HostileAgent
from rotating_pool.testing.hostile_agent import HOSTILE_PASSWORD

URL = "postgresql+psycopg://"
TOKEN = "token-for-the-hostile-listener-0123456789"
SECRET = "prod/app/db"
MARGIN = 1.0
REJECTED = Credentials("app_a", "refused-password", version_id="v1")

BEHAVIOURS = [
    ("drip", SecretsManagerUnavailableError, "did not answer within"),
    ("huge", AgentAnswerError, "more than 1048576 bytes"),
    ("silent", SecretsManagerUnavailableError, "did not answer within"),
    ("wrong_arn", AgentAnswerError, "for another secret"),
]


def source_for(hostile: HostileAgent, timeout: float, **kwargs: object) -> AgentSource:
    return AgentSource(
        SECRET, endpoint=hostile.endpoint_url, token=TOKEN, timeout=timeout, **kwargs
    )


def engine_for(hostile: HostileAgent, timeout: float, deadline: float) -> Engine:
    """An engine reading through `hostile`, with `deadline` for each connect."""
    return rotating_pool.create_engine(
        URL,
        secret_id=SECRET,
        source=source_for(hostile, timeout, lock_dir=False),
        retry=RetryBudget(deadline=deadline),
    )


def calls(source: AgentSource) -> dict[str, Callable[[], object]]:
    return {
        "load": source.load,
        "newer": lambda: source.newer(REJECTED, ["v1"], use_pending=True),
        "fetch": lambda: source.fetch("AWSPENDING"),
    }


def assert_quotes_nothing_secret(error: BaseException) -> None:
    for text in (str(error), repr(error)):
        assert TOKEN not in text
        assert HOSTILE_PASSWORD not in text


@pytest.mark.parametrize(("behaviour", "error", "says"), BEHAVIOURS)
def test_every_agent_call_ends_within_its_timeout_with_a_typed_error(behaviour, error, says):
    with HostileAgent(behaviour) as hostile:
        source = source_for(hostile, 0.5, lock_dir=False)
        for name, call in calls(source).items():
            started = time.monotonic()
            with pytest.raises(error, match=says) as raised:
                call()
            took = time.monotonic() - started
            assert took < 0.5 + MARGIN, name
            if error is not AgentAnswerError:
                assert took >= 0.45, name  # the timeout ended it, not the listener
            assert_quotes_nothing_secret(raised.value)
            assert raised.value.__context__ is None


@pytest.mark.parametrize(("behaviour", "error", "says"), BEHAVIOURS)
def test_a_connect_ends_within_its_deadline_with_a_typed_error(behaviour, error, says):
    with HostileAgent(behaviour) as hostile:
        engine = engine_for(hostile, 1.0, deadline=3.0)
        started = time.monotonic()
        with pytest.raises(SecretsManagerUnavailableError) as raised:
            engine.connect()
        assert time.monotonic() - started < 3.0 + MARGIN
        assert isinstance(raised.value.__cause__, error)  # the last read's own error
        assert says in str(raised.value)
        assert_quotes_nothing_secret(raised.value)


def test_a_read_its_connect_gave_up_on_stops_by_its_own_timeout():
    """The connect waits for the first read only as long as its deadline (3 s)
    leaves room for a login (2 s of it), 1 s, before the agent call's timeout
    (2 s): the read it left behind then stops reading by its own timeout,
    instead of taking the drip's answer to its end (about 90 s)."""
    with HostileAgent("drip") as hostile:
        engine = engine_for(hostile, 2.0, deadline=3.0)
        started = time.monotonic()
        with pytest.raises(SecretsManagerUnavailableError):
            engine.connect()
        gave_up = time.monotonic() - started
        assert gave_up < 2.0  # the connect left the read behind
        assert hostile.hung_up.acquire(timeout=2.0 + MARGIN)  # the read hung up
        assert time.monotonic() - started < 2.0 + MARGIN


@pytest.mark.parametrize("behaviour", ["silent", "wrong_arn"])
def test_the_turn_is_released_when_a_call_fails(behaviour, tmp_path):
    with HostileAgent(behaviour) as hostile:
        source = source_for(hostile, 0.5, lock_dir=tmp_path)
        with pytest.raises(SecretsManagerUnavailableError):
            source.load()
        (lock_file,) = tmp_path.glob("rotating_pool-agent-*.lock")
        with open(lock_file, "rb") as probe:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held


HOLD_THE_TURN = """
import sys
from rotating_pool import AgentSource
endpoint, lock_dir = sys.argv[1:]
try:
    AgentSource("prod/app/db", endpoint=endpoint, token="t", timeout=30, lock_dir=lock_dir).load()
except Exception:
    pass
"""


def test_a_process_waiting_for_its_turn_is_not_held_past_its_own_time(tmp_path, caplog):
    """Another process takes the turn and is held by a listener that drips its
    answer: the processes after it read on their own, within their own time."""
    with HostileAgent("drip") as hostile:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_TURN, hostile.endpoint_url, str(tmp_path)]
        )
        try:
            assert hostile.requested.wait(30)  # the holder asked: it holds its turn
            source = source_for(hostile, 1.0, lock_dir=tmp_path)
            started = time.monotonic()
            with pytest.raises(SecretsManagerUnavailableError, match="within 1 s"):
                source.load()
            assert time.monotonic() - started < 1.0 + MARGIN
            assert "kept its turn with the Secrets Manager Agent longer than 0.5 s" in caplog.text
            caplog.clear()
            engine = rotating_pool.create_engine(
                URL, secret_id=SECRET, source=source, retry=RetryBudget(deadline=2.5)
            )
            started = time.monotonic()
            with pytest.raises(SecretsManagerUnavailableError):
                engine.connect()
            assert time.monotonic() - started < 2.5 + MARGIN
            assert holder.poll() is None  # still holding its turn all along
        finally:
            holder.kill()
            holder.wait()


def test_the_hostile_stand_in_says_what_it_is(caplog):
    caplog.set_level(logging.INFO, logger="rotating_pool.testing")
    with HostileAgent("wrong_arn") as hostile:
        assert "not the agent" in repr(hostile)
    assert "not the Secrets Manager Agent" in caplog.text
    with pytest.raises(ValueError, match="behaviour"):
        HostileAgent("friendly")  # type: ignore[arg-type]
