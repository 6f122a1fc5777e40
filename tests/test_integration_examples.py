"""The Django example under gunicorn, and the psycopg_pool service, each through rotations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from rotating_pool.testing._process import end_process, free_port
from tests.call_load import CallLoad, rotate

pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[1]
ROTATIONS = 8


def example_env(arn: str, dbname: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DB_SECRET_ID": arn, "DB_NAME": dbname, "PYTHONPATH": str(ROOT), **extra}


def post(url: str, worker: int) -> None:
    data = urllib.parse.urlencode({"worker": worker}).encode()
    with urllib.request.urlopen(url, data=data, timeout=30) as answer:
        assert answer.status == 201


def count(url: str) -> int:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return int(json.load(answer)["count"])


def wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited: {log.read_text()[-3000:]}")
        try:
            count(url)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)  # probing a starting server; nothing to wait on
    raise AssertionError(f"gunicorn did not serve within 60 s: {log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["0", "1"], ids=["persistent", "pool"])
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_the_django_example_under_gunicorn_survives_rotations(
    make_secret, sm_client, proxy, app_schema, tmp_path, strategy, pool
):
    arn = make_secret(strategy)
    env = example_env(
        arn,
        app_schema.dbname,
        DB_POOL=pool,
        DB_CONN_MAX_AGE="1",
        AWS_ENDPOINT_URL_SECRETS_MANAGER=proxy.endpoint_url,
    )
    if pool == "1":
        env["DB_CONN_MAX_AGE"] = "0"
    subprocess.run(
        [sys.executable, "-m", "examples.django_app.manage", "migrate", "-v", "0"],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "1",
                "--threads",
                "16",
                "--bind",
                f"127.0.0.1:{port}",
                "examples.django_app.wsgi",
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/notes"
    try:
        wait_until_serving(url, process, log)
        proxy.reset_calls()
        with CallLoad(lambda worker: post(url, worker), threads=16) as load:
            rotate(sm_client, arn, ROTATIONS)
        result = load.result
        rows = count(url)
    finally:
        end_process(process, 15, 20)
    assert result.failures == 0, dict(result.errors)
    assert result.commits > 0
    assert rows == result.commits
    assert proxy.calls["GetSecretValue"] <= ROTATIONS, dict(proxy.calls)
    assert proxy.calls["DescribeSecret"] <= ROTATIONS, dict(proxy.calls)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_the_psycopg_pool_service_survives_rotations(make_secret, sm_client, strategy):
    arn = make_secret(strategy)
    finished: list[float] = []

    def rotations() -> None:
        # From the start: the first may land while the service starts, the
        # others under its load (4 rotations take about 4 s of its 8).
        rotate(sm_client, arn, 4)
        finished.append(time.monotonic())

    rotator = threading.Thread(target=rotations)
    rotator.start()
    service = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.psycopg_pool_service",
            "--seconds",
            "8",
            "--max-lifetime",
            "0.3",
        ],
        env={**os.environ, "DB_SECRET_ID": arn, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    ended = time.monotonic()
    rotator.join()
    assert finished and finished[0] < ended  # every rotation happened under the service's load
    report = json.loads(service.stdout.strip().splitlines()[-1])
    assert report["failures"] == 0, service.stderr[-3000:]
    assert report["commits"] > 0
    assert report["rows"] == report["commits"]
