"""Secrets Manager down, hanging or throttling: the application does not notice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import text

import rotating_pool
from rotating_pool.rotation import Rotator
from rotating_pool.testing.workload import WriteLoad
from tests.support import RecordCounter

URL = "postgresql+psycopg://"


def session_users(engine) -> set[str]:
    with engine.connect() as conn:
        return {conn.execute(text("SELECT session_user")).scalar_one()}


def wait_for_commits(load: WriteLoad, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while load.snapshot()[0] < count:
        assert time.monotonic() < deadline, "the load made no progress"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["refuse", "hang"])
def test_an_outage_longer_than_the_ttl_with_a_rotation_inside_fails_nothing(
    make_secret, app_schema, sm_client, proxy, monkeypatch, outage
):
    arn = make_secret("alternating")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    engine = rotating_pool.create_engine(
        URL, secret_id=arn, refresh_interval=1, pool_size=8, pool_recycle=0.2
    )
    refresh_failed = RecordCounter("background refresh failed", target=1)
    rotating_pool.engine.logger.addHandler(refresh_failed)
    load = WriteLoad(engine, threads=8)
    load.create_table()
    load.start()
    try:
        wait_for_commits(load, 50)
        getattr(proxy, outage)()
        Rotator(sm_client).rotate(arn)  # AWSCURRENT moves to the other user meanwhile
        logins_before = rotating_pool.stats(engine).logins
        outage_started = time.monotonic()
        # Background refreshes keep failing meanwhile...
        assert refresh_failed.reached.wait(30), "no background refresh was attempted"
        # ...and the outage lasts longer than the TTL (1 s), the pool's
        # connections being replaced all the while (pool_recycle 0.2 s).
        while time.monotonic() - outage_started < 2.5:
            time.sleep(0.1)
        outage_logins = rotating_pool.stats(engine).logins - logins_before
        users_during_outage = session_users(engine)
    finally:
        proxy.restore()
        result = load.stop()
        rotating_pool.engine.logger.removeHandler(refresh_failed)
    assert result.failures == 0, dict(result.errors)
    assert load.count_rows() == result.commits
    assert outage_logins > 0  # new connections were made during the outage...
    assert users_during_outage == {app_schema.users[0]}  # ...with the cached AWSPREVIOUS user
    engine.dispose()


FLEET = 8
FLEET_ROTATIONS = 4


@pytest.mark.slow
def test_a_throttled_fleet_starting_during_single_user_rotations_fails_nothing(
    make_secret, sm_client, proxy, tmp_path
):
    """A deployment replacing every task while rotations run: first loads included."""
    arn = make_secret("single")
    proxy.throttle(4.0)  # Secrets Manager answers ThrottlingException above 4 calls/s
    setup = rotating_pool.create_engine(URL, secret_id=arn, client=sm_client)
    WriteLoad(setup, table="fleet_load").create_table()
    env = {"AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.endpoint_url}
    rotator = Rotator(sm_client)
    stop = threading.Event()
    rotations: list[float] = []

    def pace(step: str, _elapsed: float) -> None:
        if step == "testSecret":
            stop.wait(0.5)  # 0.5 s between setSecret and finishSecret

    def rotate_until_stopped() -> None:
        while not stop.is_set():
            rotator.rotate(arn, on_step=pace)
            rotations.append(time.monotonic())
            stop.wait(1.5)

    rotating = threading.Thread(target=rotate_until_stopped)
    rotating.start()
    workers = []
    try:
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.fleet_worker", arn],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
            )
            for _ in range(FLEET)
        ]
        for worker in workers:  # each says "ready" after its first commit
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        all_ready = len(rotations)
        deadline = time.monotonic() + 60
        while len(rotations) < all_ready + FLEET_ROTATIONS:
            assert time.monotonic() < deadline, "the rotations stalled"
            rotating.join(0.1)
        stop.set()
        rotating.join(30)
        reports = []
        for worker in workers:
            out, _ = worker.communicate("stop\n", timeout=60)
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.set()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    print("fleet:", len(rotations), "rotations", json.dumps(reports))  # for the notes (-s)
    failures = sum(report["failures"] for report in reports)
    commits = sum(report["commits"] for report in reports)
    assert failures == 0, [report["errors"] for report in reports if report["failures"]]
    assert WriteLoad(setup, table="fleet_load").count_rows() == commits
    assert all(report["recovered_logins"] >= 1 for report in reports)
    assert proxy.throttled["GetSecretValue"] + proxy.throttled["DescribeSecret"] > 0  # it bit
    setup.dispose()


def test_the_default_client_tries_a_throttled_read_twice_in_all(make_secret, proxy, monkeypatch):
    """botocore's ``max_attempts`` counts retries, not attempts: the default
    client sets ``total_max_attempts``, so a throttled read is tried twice (one
    wait of up to 1 s), then the login policy's own shorter backoff takes over."""
    arn = make_secret()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    proxy.answer_error("GetSecretValue", "ThrottlingException")
    source = rotating_pool.SecretsManagerSource(arn)
    with pytest.raises(rotating_pool.SecretsManagerUnavailableError, match="ThrottlingException"):
        source.load()
    assert proxy.calls["GetSecretValue"] == 2
