"""The framework examples, each serving requests while its secret rotates twice.

New logins are forced while each rotation runs (after setSecret, when a
single-user password has already changed but AWSCURRENT has not moved) and
after it, as `pool_recycle` or a dropped connection would in production.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

import rotating_pool
from examples import fastapi_app, flask_app
from rotating_pool.rotation import Rotator

ROTATIONS = 2
REQUESTS_AFTER = 5
DEADLINE = 60.0


def serve_through_rotations(
    sm_client, arn: str, recycle: Callable[[], None], write: Callable[[str], int]
) -> Counter[int]:
    """Call `write` until two rotations are done, and a few times more; count the statuses."""
    done = threading.Event()
    failures: list[BaseException] = []

    def new_logins_now(step: str, seconds: float) -> None:
        if step in ("setSecret", "finishSecret"):
            recycle()
            time.sleep(0.1)  # let requests log in while the rotation is half way

    def rotate() -> None:
        try:
            for _ in range(ROTATIONS):
                time.sleep(0.1)
                Rotator(sm_client).rotate(arn, on_step=new_logins_now)
        except BaseException as error:
            failures.append(error)
        finally:
            done.set()

    rotator = threading.Thread(target=rotate, name="rotator")
    rotator.start()
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    while not done.is_set() and time.monotonic() - started < DEADLINE:
        statuses[write(f"note {statuses.total()}")] += 1
    rotator.join()
    for _ in range(REQUESTS_AFTER):
        statuses[write("after the rotations")] += 1
    assert not failures, failures
    return statuses


def assert_seamless(engine, statuses: Counter[int], count: int) -> None:
    assert set(statuses) == {201}, statuses  # not one failed request
    assert count == statuses[201]  # every acknowledged write is there
    stats = rotating_pool.stats(engine)
    assert stats.recovered_logins >= 1  # the rotations really refused a login
    assert stats.failed_recoveries == 0


@pytest.fixture
def secret_env(make_secret, monkeypatch):
    """`DB_SECRET_ID=<a new secret>` in the environment, for a strategy; returns the ARN."""

    def make(strategy: str) -> str:
        arn = make_secret(strategy)
        monkeypatch.setenv("DB_SECRET_ID", arn)
        monkeypatch.delenv("DATABASE_URL", raising=False)
        return arn

    return make


STRATEGIES = pytest.mark.parametrize("strategy", ["single", "alternating"])


@STRATEGIES
def test_flask_app_serves_every_request_through_rotations(secret_env, sm_client, strategy):
    arn = secret_env(strategy)
    app = flask_app.create_app()
    client = app.test_client()
    with app.app_context():
        engine = flask_app.db.engine
    try:

        def write(body: str) -> int:
            return client.post("/notes", json={"body": body}).status_code

        statuses = serve_through_rotations(sm_client, arn, engine.dispose, write)
        assert_seamless(engine, statuses, client.get("/notes/count").get_json()["count"])
    finally:
        engine.dispose()


@STRATEGIES
def test_fastapi_app_serves_every_request_through_rotations(secret_env, sm_client, strategy):
    arn = secret_env(strategy)
    with TestClient(fastapi_app.create_app()) as client:
        engine = client.app.state.engine

        def recycle() -> None:
            client.portal.call(engine.dispose)  # on the app's event loop

        def write(body: str) -> int:
            return client.post("/notes", json={"body": body}).status_code

        statuses = serve_through_rotations(sm_client, arn, recycle, write)
        assert_seamless(engine, statuses, client.get("/notes/count").json()["count"])


@STRATEGIES
def test_orm_sessionmaker_code_runs_unchanged_through_rotations(
    secret_env, sm_client, strategy, capsys
):
    arn = secret_env(strategy)
    sys.modules.pop("examples.orm_sessionmaker", None)  # its engine line reads DB_SECRET_ID
    example = importlib.import_module("examples.orm_sessionmaker")
    try:
        example.main()
        assert capsys.readouterr().out == "1 note(s)\n"

        def write(body: str) -> int:
            example.add_note(body)
            return 201

        statuses = serve_through_rotations(sm_client, arn, example.engine.dispose, write)
        assert_seamless(example.engine, statuses, example.count_notes() - 1)
    finally:
        example.engine.dispose()
