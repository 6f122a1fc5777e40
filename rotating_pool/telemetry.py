"""Metrics and traces through OpenTelemetry's API (the ``otel`` extra).

A library only uses the API; the application configures the SDK and its
exporters (OTLP, Prometheus: see the README). Without ``opentelemetry-api``
installed nothing here records anything and nothing is imported; with the API
but no SDK configured, every instrument is OpenTelemetry's no-op.

What is recorded (attribute names from OpenTelemetry's semantic conventions
where one exists: ``db.system.name``, ``aws.secretsmanager.secret.arn``,
``rpc.system``, ``rpc.method``, ``error.type``; the others are prefixed
``rotating_pool.``). No attribute ever holds a password or a secret value.

| instrument | kind | attributes |
|---|---|---|
| ``rotating_pool.logins`` | counter | secret, user |
| ``rotating_pool.logins.refused`` | counter | secret, user |
| ``rotating_pool.recoveries`` | counter | secret, user (the one that logged in) |
| ``rotating_pool.recoveries.failed`` | counter | secret, user (the last refused) |
| ``rotating_pool.recovery.duration`` | histogram (s) | secret, outcome |
| ``rotating_pool.secretsmanager.calls`` | counter | secret, rpc.method, outcome, error.type |
| ``rotating_pool.secretsmanager.call.duration`` | histogram (s) | as above |
| ``rotating_pool.connections.retired`` | counter | secret, user |

(outcome of a call: ok, throttled or error.)

and a span ``rotating_pool.recovery`` from a connection's first refused login
to its end, with the refused user and version, the user and version that
logged in, and the number of refusals.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from rotating_pool._version import __version__
from rotating_pool.core.classify import Verdict
from rotating_pool.core.plan import Success
from rotating_pool.errors import LoginRejectedError
from rotating_pool.secret import Credentials

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
except ImportError:  # the otel extra is not installed: record nothing
    AVAILABLE = False
else:
    AVAILABLE = True

if TYPE_CHECKING:
    from rotating_pool.retire import Login

__all__ = [
    "AVAILABLE",
    "ConnectWatch",
    "Counts",
    "Telemetry",
    "instrument_client",
    "telemetry",
    "use_providers",
]

logger = logging.getLogger("rotating_pool")

SCOPE = "rotating_pool"
"""The instrumentation scope (meter and tracer name)."""

DB_SYSTEM = "postgresql"

# Semantic-convention attribute names.
ATTR_DB_SYSTEM = "db.system.name"
ATTR_SECRET_ARN = "aws.secretsmanager.secret.arn"  # noqa: S105  (a name)
ATTR_RPC_SYSTEM = "rpc.system"
ATTR_RPC_METHOD = "rpc.method"
ATTR_ERROR_TYPE = "error.type"
# rotating_pool's own (no convention exists: ``db.user`` was removed).
ATTR_SECRET_ID = "rotating_pool.secret.id"  # noqa: S105
ATTR_USER = "rotating_pool.user"
ATTR_VERSION = "rotating_pool.secret.version_id"
ATTR_STAGE = "rotating_pool.secret.stage"
ATTR_OUTCOME = "rotating_pool.outcome"

_THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
_STARTED = "rotating_pool.started"
_SECRET = "rotating_pool.secret_id"  # noqa: S105
_API = "rotating_pool.api"


# (attribute, name, unit, description): histograms are the ones in seconds.
_INSTRUMENTS = (
    ("logins", "rotating_pool.logins", "{login}", "Logins tried"),
    ("refused", "rotating_pool.logins.refused", "{login}", "Logins refused"),
    (
        "recoveries",
        "rotating_pool.recoveries",
        "{connection}",
        "Connections that logged in after at least one refusal",
    ),
    (
        "failed_recoveries",
        "rotating_pool.recoveries.failed",
        "{connection}",
        "Connections given up on after refusals (LoginRejectedError)",
    ),
    (
        "recovery_duration",
        "rotating_pool.recovery.duration",
        "s",
        "From a connection's first refused login to its end",
    ),
    (
        "calls",
        "rotating_pool.secretsmanager.calls",
        "{call}",
        "Secrets Manager API calls by API and outcome",
    ),
    (
        "call_duration",
        "rotating_pool.secretsmanager.call.duration",
        "s",
        "Secrets Manager API call time",
    ),
    (
        "retired",
        "rotating_pool.connections.retired",
        "{connection}",
        "Pooled connections closed because their credentials were superseded",
    ),
)


_MAX_ATTRIBUTE_SETS = 256


def _secret_attributes(secret_id: str) -> dict[str, str]:
    attributes = {ATTR_DB_SYSTEM: DB_SYSTEM, ATTR_SECRET_ID: secret_id}
    if secret_id.startswith("arn:"):
        attributes[ATTR_SECRET_ARN] = secret_id
    return attributes


class Telemetry:
    """rotating_pool's instruments, from the given providers or OpenTelemetry's global ones.

    Args:
        meter_provider, tracer_provider: providers to use instead of the
            global ones (tests; applications normally set the globals).
    """

    def __init__(self, meter_provider: Any = None, tracer_provider: Any = None) -> None:
        self.enabled = AVAILABLE
        if not AVAILABLE:
            return
        meter = otel_metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.tracer = otel_trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        made: dict[str, Any] = {
            attribute: (meter.create_histogram if unit == "s" else meter.create_counter)(
                name, unit=unit, description=description
            )
            for attribute, name, unit, description in _INSTRUMENTS
        }
        # Attribute sets, made once per secret and user rather than per login.
        self._attributes: dict[tuple[str, str | None], dict[str, str]] = {}
        self.logins = made["logins"]
        self.refused = made["refused"]
        self.recoveries = made["recoveries"]
        self.failed_recoveries = made["failed_recoveries"]
        self.recovery_duration = made["recovery_duration"]
        self.calls = made["calls"]
        self.call_duration = made["call_duration"]
        self.retired = made["retired"]

    def attributes(self, secret_id: str, user: str | None = None) -> dict[str, str]:
        """The attributes of a secret (and user), made once; never mutate them."""
        key = (secret_id, user)
        made = self._attributes.get(key)
        if made is None:
            made = _secret_attributes(secret_id)
            if user is not None:
                made[ATTR_USER] = user
            if len(self._attributes) < _MAX_ATTRIBUTE_SETS:  # bounded: users rotate
                self._attributes[key] = made
        return made

    def watch_connect(self, secret_id: str, counts: Counts | None = None) -> ConnectWatch:
        """A watch for one connect: counts its logins (into `counts` and
        OpenTelemetry) and spans its recovery."""
        return ConnectWatch(self if self.enabled else None, secret_id, counts)

    def connection_retired(self, secret_id: str, login: Login) -> None:
        """Count a retired connection."""
        if self.enabled:
            self.retired.add(1, {**_secret_attributes(secret_id), ATTR_USER: login.username})

    def record_call(
        self, api: str, secret_id: str, outcome: str, error_type: str | None, seconds: float | None
    ) -> None:
        """Count one Secrets Manager call (and its time, when known)."""
        if not self.enabled:
            return
        attributes = _secret_attributes(secret_id)
        del attributes[ATTR_DB_SYSTEM]
        attributes.update({ATTR_RPC_SYSTEM: "aws-api", ATTR_RPC_METHOD: api, ATTR_OUTCOME: outcome})
        if error_type is not None:
            attributes[ATTR_ERROR_TYPE] = error_type
        self.calls.add(1, attributes)
        if seconds is not None:
            self.call_duration.record(seconds, attributes)


def instrument_client(client: Any) -> None:
    """Count and time every Secrets Manager call `client` makes, through
    botocore's events (registered once per client; a no-op without OpenTelemetry).

    A `SecretsManagerSource.add_client_hook` hook.
    """
    if not AVAILABLE:
        return
    events = client.meta.events
    for name, handler in (
        ("before-parameter-build", _note_secret),
        ("before-call", _note_start),
        ("after-call", _after_call),
        ("after-call-error", _after_call_error),
    ):
        events.register(
            f"{name}.secrets-manager", handler, unique_id=f"rotating_pool.telemetry.{name}"
        )


def _note_secret(params: Any = None, context: Any = None, **_: Any) -> None:
    secret_id = params.get("SecretId") if isinstance(params, dict) else None
    if isinstance(context, dict) and isinstance(secret_id, str):
        context[_SECRET] = secret_id


def _note_start(model: Any = None, context: Any = None, **_: Any) -> None:
    if isinstance(context, dict):
        context[_STARTED] = time.perf_counter()
        context[_API] = str(getattr(model, "name", "unknown"))


def _after_call(
    http_response: Any = None, parsed: Any = None, context: Any = None, **_: Any
) -> None:
    code = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    status = int(getattr(http_response, "status_code", 0) or 0)
    if status < 300 and not code:
        _record(context, "ok", None)
    elif status == 429 or code in _THROTTLING_CODES:
        _record(context, "throttled", code or "429")
    else:
        _record(context, "error", code or str(status))


def _after_call_error(
    exception: BaseException | None = None, context: Any = None, **_: Any
) -> None:
    # No answer at all (time-out, connection refused): the type says enough.
    _record(context, "error", type(exception).__name__)


def _record(context: Any, outcome: str, error_type: str | None) -> None:
    # An observer must never break the call it observes.
    try:
        context = context if isinstance(context, dict) else {}
        started = context.get(_STARTED)
        seconds = time.perf_counter() - started if isinstance(started, float) else None
        telemetry().record_call(
            str(context.get(_API, "unknown")),
            str(context.get(_SECRET, "")),
            outcome,
            error_type,
            seconds,
        )
    except Exception:
        logger.exception("rotating_pool: recording a Secrets Manager call failed")


class Counts(Protocol):
    """Where a connect's counters go besides OpenTelemetry: the store's `Stats`."""

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to the `Stats` counter `name`."""
        ...


class ConnectWatch:
    """The one counter path of one connect: each event goes to the store's
    `Stats` and to OpenTelemetry alike, and a recovery gets its span.

    The shell (`rotating_pool.connect`) reports what the plan decided: each
    login (`login`), each failed login's `Verdict` (`judged`), the `Success`
    (`succeeded`); used as a context manager around the whole connect, it
    sees how the connect ended. It never classifies an error itself.
    """

    def __init__(
        self, telemetry: Telemetry | None, secret_id: str, counts: Counts | None = None
    ) -> None:
        self._telemetry = telemetry
        self._counts = counts
        self._secret_id = secret_id
        self._secret = telemetry.attributes(secret_id) if telemetry is not None else {}
        self._refused = 0
        self._first_refusal = 0.0
        self._last: Credentials | None = None
        self._span: Any = None
        self._token: Any = None

    def _count(self, name: str) -> None:
        if self._counts is not None:
            self._counts.count(name)

    def login(self, credentials: Credentials) -> None:
        """A login with `credentials` is about to start."""
        self._count("logins")
        self._last = credentials
        telemetry = self._telemetry
        if telemetry is not None:
            telemetry.logins.add(1, telemetry.attributes(self._secret_id, credentials.username))

    def judged(self, verdict: Verdict) -> None:
        """A login failed, and the plan judged it so."""
        if not verdict.refused:
            return
        self._count("rejected_logins")
        self._refused += 1
        telemetry = self._telemetry
        if telemetry is None:
            return
        telemetry.refused.add(1, {**self._secret, ATTR_USER: verdict.credentials.username})
        if self._refused == 1:
            self._start_span(verdict.credentials)

    def succeeded(self, success: Success) -> None:
        """The login succeeded; a recovery when it followed refusals."""
        if success.refusals:
            self._count("recovered_logins")

    @contextlib.contextmanager
    def attempt(self, credentials: Credentials) -> Iterator[None]:
        """Around one login with `credentials` (counts it; the verdict on a
        failure comes through `judged`)."""
        self.login(credentials)
        yield

    def _start_span(self, refused: Credentials) -> None:
        assert self._telemetry is not None  # judged() only spans when enabled
        self._first_refusal = time.perf_counter()
        self._span = self._telemetry.tracer.start_span(
            "rotating_pool.recovery",
            attributes={
                **self._secret,
                ATTR_USER: refused.username,
                ATTR_VERSION: refused.version_id or "",
                ATTR_STAGE: refused.stage,
            },
        )
        # Secrets Manager calls made during the recovery (botocore's own
        # instrumentation, if any) become its children.
        self._token = otel_context.attach(otel_trace.set_span_in_context(self._span))

    def __enter__(self) -> ConnectWatch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, LoginRejectedError):
            self._count("failed_recoveries")
        telemetry, span, last = self._telemetry, self._span, self._last
        if telemetry is None or not self._refused:
            return
        with contextlib.suppress(ValueError):  # detached in another context (cancelled task)
            otel_context.detach(self._token)
        user = {ATTR_USER: last.username} if last is not None else {}
        outcome = "recovered" if error is None else "failed"
        telemetry.recovery_duration.record(
            time.perf_counter() - self._first_refusal, {**self._secret, ATTR_OUTCOME: outcome}
        )
        span.set_attribute("rotating_pool.refused_logins", self._refused)
        if error is None:
            telemetry.recoveries.add(1, {**self._secret, **user})
            if last is not None:
                span.set_attribute("rotating_pool.logged_in.user", last.username)
                span.set_attribute("rotating_pool.logged_in.version_id", last.version_id or "")
                span.set_attribute("rotating_pool.logged_in.stage", last.stage)
        else:
            if isinstance(error, LoginRejectedError):
                telemetry.failed_recoveries.add(1, {**self._secret, **user})
            span.set_attribute(ATTR_ERROR_TYPE, type(error).__name__)
            # The type only: a driver's message is not ours to vouch for.
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, type(error).__name__))
        span.end()


_lock = threading.Lock()
_telemetry: Telemetry | None = None


def telemetry() -> Telemetry:
    """The process's `Telemetry` (OpenTelemetry's global providers unless
    `use_providers` said otherwise)."""
    global _telemetry
    current = _telemetry
    if current is None:
        with _lock:
            if _telemetry is None:
                _telemetry = Telemetry()
            current = _telemetry
    return current


def use_providers(meter_provider: Any = None, tracer_provider: Any = None) -> Telemetry:
    """Record through these providers from now on instead of the global ones.

    For applications that keep their providers out of OpenTelemetry's globals,
    and for tests. Engines pick it up at their next connect.
    """
    global _telemetry
    with _lock:
        _telemetry = Telemetry(meter_provider, tracer_provider)
        return _telemetry
