"""``rotating-pool status``: sessions on current and on superseded credentials, per user."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from rotating_pool.rotation import Rotator
from rotating_pool.rotation.cli import main
from tests.support import current_document


def open_sessions(document: dict, count: int) -> list[psycopg.Connection]:
    return [
        psycopg.connect(
            host=document["host"], port=document["port"], dbname=document["dbname"],
            user=document["username"], password=document["password"], connect_timeout=5,
        )
        for _ in range(count)
    ]  # fmt: skip


def next_whole_second() -> None:
    """Secrets Manager (moto) dates versions to the second: let the clock pass
    into the next one, so that sessions opened before a rotation are dated
    before its version. Not synchronisation: a clock's granularity."""
    target = int(time.time()) + 1
    while time.time() < target:
        time.sleep(target - time.time())


def status(secret_id: str, capsys, *extra: str) -> str:
    assert main(["status", "--secret-id", secret_id, *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("strategy", ["alternating", "single"])
def test_status_shows_sessions_on_superseded_credentials(
    make_secret, sm_client, secretsmanager, capsys, strategy
):
    arn = make_secret(strategy)
    old = current_document(sm_client, arn)
    sessions = open_sessions(old, 2)
    next_whole_second()
    Rotator(sm_client).rotate(arn)
    new = current_document(sm_client, arn)
    sessions += open_sessions(new, 1)
    try:
        report = json.loads(status(arn, capsys, "--json"))
        text = status(arn, capsys)
    finally:
        for conn in sessions:
            conn.close()
    by_user = {s["username"]: s for s in report["sessions_by_credentials"]}
    if strategy == "alternating":
        assert by_user[old["username"]] == {
            "username": old["username"], "current": 0, "superseded": 2, "unknown": 0
        }  # fmt: skip
        assert by_user[new["username"]] == {
            "username": new["username"], "current": 1, "superseded": 0, "unknown": 0
        }  # fmt: skip
    else:
        assert by_user == {new["username"]: {"username": new["username"], "current": 1,
                                             "superseded": 2, "unknown": 0}}  # fmt: skip
    assert report["current_since"]
    assert "SESSIONS BY CREDENTIALS" in text
    section = text.split("SESSIONS BY CREDENTIALS", 1)[1].splitlines()
    row = next(line for line in section if line.startswith(old["username"] + " "))
    assert row.split()[-2] == "2"  # the superseded column
    assert old["password"] not in text and new["password"] not in text
