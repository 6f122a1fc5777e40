"""No password or secret string in log records, exception text or reprs."""

from __future__ import annotations

import json
import logging

import pytest

import rotating_pool
from rotating_pool import LoginRejectedError, RetryBudget, SecretFormatError
from rotating_pool.engine import credential_store
from rotating_pool.rotation import Rotator
from tests.support import set_password

URL = "postgresql+psycopg://"
LOGGERS = ("rotating_pool", "sqlalchemy", "psycopg")


def every_password(client, secret_id: str) -> set[str]:
    """Every password any version of the secret has held."""
    passwords = set()
    versions = client.list_secret_version_ids(SecretId=secret_id, IncludeDeprecated=True)
    for version in versions["Versions"]:
        value = client.get_secret_value(SecretId=secret_id, VersionId=version["VersionId"])
        passwords.add(json.loads(value["SecretString"])["password"])
    return passwords


def test_nothing_secret_in_records_errors_or_reprs_at_debug(
    make_secret, app_schema, postgres, sm_client, caplog
):
    caplog.set_level(logging.DEBUG)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    arn = make_secret("single")
    engine = rotating_pool.create_engine(
        URL, secret_id=arn, echo="debug", echo_pool="debug", retry=RetryBudget(rounds=2)
    )
    texts: list[str] = []
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    Rotator(sm_client).rotate(arn)  # a refused login, then a recovery with AWSPENDING
    engine.dispose()
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    set_password(postgres, app_schema.users[0], "wrong-and-staying-wrong")
    engine.dispose()
    with pytest.raises(LoginRejectedError) as rejected:
        engine.connect()
    texts += [str(rejected.value), repr(rejected.value), str(rejected.value.__cause__)]
    malformed = f"{arn}-malformed"
    sm_client.create_secret(Name=malformed, SecretString='{"password": "in-a-malformed-secret"')
    with pytest.raises(SecretFormatError) as bad:
        rotating_pool.create_engine(URL, secret_id=malformed).connect()
    texts += [str(bad.value), repr(bad.value)]
    store = credential_store(engine)
    texts += [
        repr(engine),
        repr(store),
        repr(store.source),
        repr(store.current()),
        str(store.current()),
        repr(rotating_pool.stats(engine)),
        repr(engine.dialect.dispatch.do_connect),
    ]
    records = [
        record.getMessage() + (record.exc_text or "")
        for record in caplog.records
        if record.name.split(".")[0] in LOGGERS  # botocore is the next test's
    ]
    assert any("refused user" in record for record in records)  # the rotation was seen
    assert len(records) > 50  # and DEBUG really was on
    secrets = every_password(sm_client, arn) | {
        "wrong-and-staying-wrong",
        "in-a-malformed-secret",
        postgres.admin_password,
    }
    assert len(secrets) >= 4
    for secret in secrets:
        for text in texts + records:
            assert secret not in text


def test_botocore_debug_logs_leak_secret_values_unless_redacted(make_secret, sm_client, caplog):
    arn = make_secret("single")
    password = json.loads(sm_client.get_secret_value(SecretId=arn)["SecretString"])["password"]
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "botocore.parsers", "botocore.endpoint"):
        caplog.set_level(logging.DEBUG, logger=name)

    def logged_after_a_read() -> str:
        caplog.clear()
        # A source of its own each time: engines on one secret and source share
        # one store, whose credentials are read already, and would read nothing.
        source = rotating_pool.SecretsManagerSource(arn)
        engine = rotating_pool.create_engine(URL, secret_id=arn, source=source)
        engine.connect().close()
        return "\n".join(record.getMessage() for record in caplog.records)

    # What the telemetry guide warns about: botocore itself logs the response body.
    assert password in logged_after_a_read()
    redactor = rotating_pool.redact_botocore_logs()
    try:
        logged = logged_after_a_read()
        assert password not in logged
        assert "***" in logged
    finally:
        for name in ("botocore", "botocore.parsers", "botocore.endpoint", "botocore.hooks"):
            logging.getLogger(name).removeFilter(redactor)
