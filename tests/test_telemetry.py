"""OpenTelemetry metrics and the recovery span, read back with the SDK's in-memory reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy import text

import rotating_pool
from rotating_pool import LoginRejectedError, RetryBudget, SecretsManagerUnavailableError
from rotating_pool import telemetry as rp_telemetry
from tests.support import current_document, put_version

URL = "postgresql+psycopg://"
WRONG = "this-password-is-wrong-0123456789"


class Otel:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        rp_telemetry.use_providers(self.meter_provider, tracer_provider)

    def points(self, name: str, secret: str) -> list[tuple[dict, object]]:
        """(attributes, data point) of metric `name` recorded for `secret`."""
        found = []
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes)
                        if secret in attributes.values():
                            found.append((attributes, point))
        return found

    def total(self, name: str, secret: str, **where: str) -> int:
        """Sum of a counter for `secret`, where attributes match (``user=`` is
        rotating_pool.user, ``outcome=`` rotating_pool.outcome, ``method=`` rpc.method)."""
        keys = {"user": "rotating_pool.user", "outcome": "rotating_pool.outcome"}
        keys["method"] = "rpc.method"
        return sum(
            point.value
            for attributes, point in self.points(name, secret)
            if all(attributes.get(keys[key]) == value for key, value in where.items())
        )

    def every_attribute_value(self) -> list[str]:
        values = []
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        values += [str(v) for v in point.attributes.values()]
        for span in self.spans.get_finished_spans():
            values += [str(v) for v in span.attributes.values()]
            values.append(span.status.description or "")
        return values


@pytest.fixture(scope="module")
def otel():
    recorder = Otel()
    yield recorder
    rp_telemetry.use_providers()  # back to OpenTelemetry's global (no-op) providers


def refused_then_pending(sm_client, arn: str) -> tuple[str, str, dict]:
    """AWSCURRENT gets a wrong password and AWSPENDING the right one: the first
    login is refused and recovered through AWSPENDING. Returns both version ids
    and the right document."""
    right = current_document(sm_client, arn)
    wrong_version = put_version(sm_client, arn, {**right, "password": WRONG}, "AWSCURRENT")
    right_version = put_version(sm_client, arn, right, "AWSPENDING")
    return wrong_version, right_version, right


def test_one_recovery_gives_the_expected_counters_and_span(otel, make_secret, sm_client):
    arn = make_secret("single")
    wrong_version, right_version, right = refused_then_pending(sm_client, arn)
    engine = rotating_pool.create_engine(URL, secret_id=arn)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()
    user = right["username"]

    assert otel.total("rotating_pool.logins", arn, user=user) == 2
    assert otel.total("rotating_pool.logins.refused", arn, user=user) == 1
    assert otel.total("rotating_pool.recoveries", arn) == 1
    assert otel.total("rotating_pool.recoveries.failed", arn) == 0
    # The first load, then the refetch: DescribeSecret, and AWSPENDING's value.
    assert otel.total("rotating_pool.secretsmanager.calls", arn, method="GetSecretValue") == 2
    assert otel.total("rotating_pool.secretsmanager.calls", arn, method="DescribeSecret") == 1
    calls = otel.points("rotating_pool.secretsmanager.calls", arn)
    assert {a["rotating_pool.outcome"] for a, _ in calls} == {"ok"}
    assert {a["rpc.system"] for a, _ in calls} == {"aws-api"}
    assert {a["aws.secretsmanager.secret.arn"] for a, _ in calls} == {arn}
    timings = otel.points("rotating_pool.secretsmanager.call.duration", arn)
    assert sum(t.count for _, t in timings) == 3 and all(t.sum > 0 for _, t in timings)
    ((attributes, recovery),) = otel.points("rotating_pool.recovery.duration", arn)
    assert recovery.count == 1 and attributes["rotating_pool.outcome"] == "recovered"

    (span,) = [
        s
        for s in otel.spans.get_finished_spans()
        if s.attributes.get("aws.secretsmanager.secret.arn") == arn
    ]
    assert span.name == "rotating_pool.recovery"
    assert span.attributes["db.system.name"] == "postgresql"
    assert span.attributes["rotating_pool.user"] == user
    assert span.attributes["rotating_pool.secret.version_id"] == wrong_version
    assert span.attributes["rotating_pool.logged_in.version_id"] == right_version
    assert span.attributes["rotating_pool.logged_in.stage"] == "AWSPENDING"
    assert span.attributes["rotating_pool.refused_logins"] == 1
    assert span.status.status_code is not StatusCode.ERROR
    secrets = {WRONG, right["password"], json.dumps(right)}
    assert not [v for v in otel.every_attribute_value() for s in secrets if s in v]


def test_a_failed_recovery_is_counted_and_its_span_marked(otel, make_secret, sm_client):
    arn = make_secret("single")
    right = current_document(sm_client, arn)
    put_version(sm_client, arn, {**right, "password": WRONG}, "AWSCURRENT")
    engine = rotating_pool.create_engine(
        URL, secret_id=arn, use_pending=False, retry=RetryBudget(rounds=1)
    )
    with pytest.raises(LoginRejectedError):
        engine.connect()
    engine.dispose()
    assert otel.total("rotating_pool.recoveries.failed", arn) == 1
    assert otel.total("rotating_pool.recoveries", arn) == 0
    (span,) = [
        s
        for s in otel.spans.get_finished_spans()
        if s.attributes.get("aws.secretsmanager.secret.arn") == arn
    ]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "LoginRejectedError"
    assert not [v for v in otel.every_attribute_value() if WRONG in v or right["password"] in v]


def test_secrets_manager_calls_are_counted_by_outcome(otel, make_secret, proxy, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.endpoint_url)
    arn = make_secret("single")
    brief = RetryBudget(rounds=1, deadline=10.0)
    for code, status in (("ThrottlingException", 400), ("InternalServiceError", 500)):
        proxy.answer_error("GetSecretValue", code, status=status)
        with pytest.raises(SecretsManagerUnavailableError):
            # Options of their own: engines that share a store share its backoff.
            rotating_pool.create_engine(
                URL, secret_id=arn, retry=brief, refresh_interval=status
            ).connect()
        proxy.restore()
    proxy.refuse()  # no answer at all: botocore raises instead of answering
    with pytest.raises(SecretsManagerUnavailableError):
        rotating_pool.create_engine(URL, secret_id=arn, retry=brief, refresh_interval=9).connect()
    proxy.restore()
    engine = rotating_pool.create_engine(URL, secret_id=arn, retry=brief)
    with engine.connect():
        pass
    engine.dispose()

    def by_outcome(outcome: str) -> tuple[set[str | None], int]:
        points = [
            (a.get("error.type"), p.value)
            for a, p in otel.points("rotating_pool.secretsmanager.calls", arn)
            if a["rotating_pool.outcome"] == outcome
        ]
        return {kind for kind, _ in points}, sum(value for _, value in points)

    assert by_outcome("ok") == ({None}, 1)
    kinds, count = by_outcome("throttled")
    assert kinds == {"ThrottlingException"} and count >= 1
    kinds, count = by_outcome("error")
    assert kinds == {"InternalServiceError", "EndpointConnectionError"} and count >= 2


def test_retired_connections_are_counted(otel, make_secret, sm_client):
    from rotating_pool.rotation import Rotator  # noqa: PLC0415

    arn = make_secret("alternating")
    user = current_document(sm_client, arn)["username"]
    engine = rotating_pool.create_engine(URL, secret_id=arn, pool_size=2, retire_after=5)
    first, second = engine.connect(), engine.connect()
    first.close()
    second.close()
    Rotator(sm_client).rotate(arn)
    deadline = time.monotonic() + 6.0
    while time.monotonic() < deadline:
        if otel.total("rotating_pool.connections.retired", arn, user=user) == 2:
            break
        time.sleep(0.1)  # polling the reader, with a deadline
    assert otel.total("rotating_pool.connections.retired", arn, user=user) == 2
    engine.dispose()


NO_OTEL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["opentelemetry"] = None  # as if the otel extra were not installed

    import rotating_pool
    from rotating_pool import telemetry
    from sqlalchemy import text

    engine = rotating_pool.create_engine(
        "postgresql+psycopg://", secret_id=sys.argv[1], retire_after=30)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    stats = rotating_pool.stats(engine)
    assert stats.recovered_logins == 1, stats
    assert telemetry.AVAILABLE is False and telemetry.telemetry().enabled is False
    assert not [m for m in sys.modules if m.startswith("opentelemetry.")], "imported"
    print("ok: recovered without opentelemetry")
    """
)


def test_without_opentelemetry_everything_works_and_nothing_is_recorded(
    otel, make_secret, sm_client
):
    arn = make_secret("single")
    refused_then_pending(sm_client, arn)
    done = subprocess.run(
        [sys.executable, "-c", NO_OTEL_SCRIPT, arn],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ok: recovered without opentelemetry" in done.stdout
    # The subprocess recorded nothing here, and nothing anywhere: it had no instruments.
    assert otel.points("rotating_pool.logins", arn) == []
