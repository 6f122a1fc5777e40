"""Writers through rotating_pool engines while the secret rotates, both strategies.

Each run: 8 threads commit one row per transaction through a pool recycled
every 0.2 s (so new logins are frequent), while the rotation handler's local
driver performs 20 rotations with 0.5 s between setSecret and finishSecret.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import sqlalchemy

import rotating_pool
from rotating_pool.rotation import Rotator, lambda_handler
from rotating_pool.testing.workload import WriteLoad, static_url
from tests.support import current_document

URL = "postgresql+psycopg://"
ROTATIONS = 20
WINDOW = 0.5  # seconds between setSecret and finishSecret


def pause_after(step_name: str, seconds: float) -> Callable[[str, float], None]:
    def on_step(step: str, _elapsed: float) -> None:
        if step == step_name:
            time.sleep(seconds)  # the rotation's own pace, not synchronisation

    return on_step


def rotate_under(load: WriteLoad, arn: str, rotations: int, client) -> list[int]:
    """Rotate `rotations` times; return the engine's recovered-login count after each."""
    rotator = Rotator(client)
    recovered = []
    for _ in range(rotations):
        rotator.rotate(arn, on_step=pause_after("testSecret", WINDOW))
        recovered.append(rotating_pool.stats(load.engine).recovered_logins)
    return recovered


def run_rotations(engine, arn: str, rotations: int, client, *, use_session: bool = False):
    load = WriteLoad(engine, threads=8, use_session=use_session)
    load.create_table()
    load.start()
    try:
        recovered = rotate_under(load, arn, rotations, client)
    finally:
        result = load.stop()
    return load, result, recovered


def assert_survived(load, result, recovered, strategy):
    assert result.failures == 0, dict(result.errors)
    assert result.commits > 0
    assert load.count_rows() == result.commits
    # A refused login is due in every cycle of a single-user rotation, and in
    # every cycle but the first of an alternating one (the first changes the
    # user not in use). Each was recovered within its own cycle.
    due = range(len(recovered)) if strategy == "single" else range(1, len(recovered))
    before = [0, *recovered]
    for cycle in due:
        assert recovered[cycle] > before[cycle], f"no recovery in rotation {cycle + 1}"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_create_engine_survives_rotations_under_load(
    make_secret, sm_client, proxy, monkeypatch, strategy
):
    arn = make_secret(strategy)
    # The engine reads through the counting proxy; the rotator goes straight to moto.
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    engine = rotating_pool.create_engine(URL, secret_id=arn, pool_size=8, pool_recycle=0.2)
    load, result, recovered = run_rotations(engine, arn, ROTATIONS, sm_client)
    assert_survived(load, result, recovered, strategy)
    # Calls: the first load, then per rotation one DescribeSecret and one
    # GetSecretValue (the new AWSCURRENT, or AWSPENDING in single-user rotation).
    print(  # figures for the notes, shown with -s
        f"{strategy}: {result.commits} commits, {result.failures} failed, "
        f"{recovered[-1]} recovered logins, {proxy.total_calls} API calls "
        f"for {ROTATIONS} rotations, p99 {result.percentile(99) * 1000:.0f} ms"
    )
    assert proxy.calls["GetSecretValue"] <= 1 + ROTATIONS, dict(proxy.calls)
    assert proxy.calls["DescribeSecret"] <= ROTATIONS, dict(proxy.calls)
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_attach_and_session_survive_rotations_under_load(
    make_secret, sm_client, proxy, monkeypatch, strategy
):
    arn = make_secret(strategy)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    engine = sqlalchemy.create_engine(URL, pool_size=8, pool_recycle=0.2)
    rotating_pool.attach(engine, secret_id=arn)
    load, result, recovered = run_rotations(engine, arn, ROTATIONS, sm_client, use_session=True)
    assert_survived(load, result, recovered, strategy)
    assert proxy.calls["GetSecretValue"] <= 1 + ROTATIONS, dict(proxy.calls)
    assert proxy.calls["DescribeSecret"] <= ROTATIONS, dict(proxy.calls)
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_control_an_engine_built_once_from_awscurrent_fails(make_secret, sm_client, strategy):
    arn = make_secret(strategy)
    url = static_url(current_document(sm_client, arn))
    engine = sqlalchemy.create_engine(url, pool_size=8, pool_recycle=0.2)
    load = WriteLoad(engine, threads=8)
    load.create_table()
    load.start()
    try:
        rotator = Rotator(sm_client)
        for _ in range(4):
            rotator.rotate(arn, on_step=pause_after("testSecret", WINDOW))
    finally:
        result = load.stop()
    engine.dispose()
    assert result.failures > 0
    assert any("password authentication failed" in error for error in result.errors)


LAMBDA_ARN = "arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-rotator"
STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_fifty_rotations_by_the_lambda_handler_fail_no_transaction(
    make_secret, sm_client, secretsmanager, monkeypatch, strategy
):
    """50 rotations in a row, each staged by RotateSecret and carried out by
    `lambda_handler` as Secrets Manager drives it, under the load above."""
    monkeypatch.setenv("SECRETS_MANAGER_ENDPOINT", secretsmanager.endpoint_url)
    arn = make_secret(strategy)
    engine = rotating_pool.create_engine(URL, secret_id=arn, pool_size=8, pool_recycle=0.2)
    load = WriteLoad(engine, threads=8)
    load.create_table()
    load.start()
    try:
        for _ in range(50):
            token = sm_client.rotate_secret(SecretId=arn, RotationLambdaARN=LAMBDA_ARN)[
                "VersionId"
            ]
            for step in STEPS:
                if step == "finishSecret":
                    time.sleep(WINDOW)  # the rotation's own pace before finishSecret
                lambda_handler({"SecretId": arn, "ClientRequestToken": token, "Step": step}, None)
    finally:
        result = load.stop()
    assert result.failures == 0, dict(result.errors)
    assert load.count_rows() == result.commits
    versions = sm_client.list_secret_version_ids(SecretId=arn)["Versions"]
    current = [v for v in versions if "AWSCURRENT" in v["VersionStages"]]
    assert current[0]["VersionId"] == token  # the 50th rotation finished
    assert rotating_pool.stats(engine).recovered_logins >= 49
    engine.dispose()
