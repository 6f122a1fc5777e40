"""An HTTP proxy in front of Secrets Manager that counts calls and injects faults.

>>> with LocalSecretsManager() as sm, FaultProxy(sm.endpoint_url) as proxy:  # doctest: +SKIP
...     client = sm.client(proxy.endpoint_url)
...     proxy.throttle(5.0)  # 5 calls per second per operation, then ThrottlingException
...     client.list_secrets()
...     proxy.calls["ListSecrets"]
1

Each fault can be set and cleared at any time from any thread; `restore()`
clears them all.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

from rotating_pool.testing._process import LocalService, QuietRequestHandler

__all__ = ["AWS_QUOTA_RATIOS", "FaultProxy"]

logger = logging.getLogger("rotating_pool.testing")

# Headers about one hop's connection, which a proxy must not pass on.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_UPSTREAM_TIMEOUT = 30.0

# AWS announced a quota per Secrets Manager API and account and region,
# GetSecretValue 10,000 and DescribeSecret 40,000 requests per second
# (https://aws.amazon.com/about-aws/whats-new/2025/03/aws-secrets-manager-increases-api-requests-seconds/).
# `throttle(rate)` keeps that ratio: `rate` is GetSecretValue's, and each
# operation here gets that many times more; any other operation gets `rate`.
# (AWS's quotas page has also worded it as one rate for both combined; these
# buckets model the announced, separate quotas.)
AWS_QUOTA_RATIOS: Mapping[str, float] = {"GetSecretValue": 1.0, "DescribeSecret": 4.0}


class _ErrorAnswer(NamedTuple):
    status: int
    error_type: str
    message: str


_THROTTLED = _ErrorAnswer(400, "ThrottlingException", "Rate exceeded")
# Not forwarded: see the class docstring on hang().
_UNAVAILABLE = _ErrorAnswer(503, "ServiceUnavailableException", "Service Unavailable")


class FaultProxy(LocalService):
    """A threaded HTTP proxy in front of a Secrets Manager endpoint, for tests and benchmarks.

    Every request is counted by operation (from the `X-Amz-Target` header) and
    forwarded unchanged; the answer comes back unchanged. Faults:

    - `throttle(rate)`: one token bucket per operation, shared by all clients, as
      AWS keeps a quota per API: above `rate` GetSecretValue calls per second
      (burst = rate but at least 1), `4 * rate` DescribeSecret calls
      (`AWS_QUOTA_RATIOS`) and `rate` calls of any other operation, answer HTTP
      400 ThrottlingException. `throttle(rate, rates={...})` sets operations'
      rates outright.
    - `hang()`: accept requests and answer none until `restore()` (or `stop()`),
      which answers the waiting ones with HTTP 503 ServiceUnavailableException
      without forwarding them: their clients have usually given up by then, and
      a late forward would change moto behind their back.
    - `refuse()`: close the listening socket (connection refused);
      `restore()` listens again on the same port.
    - `delay(seconds)`: wait that long before forwarding each request.
    - `answer_error(operation, error_type)`: answer that operation with an AWS
      error (e.g. AccessDeniedException) instead of forwarding it.
    - `hold(operation)`: requests of that operation wait until `release()`,
      then are forwarded; `wait_held(count, timeout)` waits until that many wait.

    Args:
        upstream_url: the Secrets Manager endpoint, e.g. `LocalSecretsManager.endpoint_url`.
        host: the address to listen on.
    """

    def __init__(self, upstream_url: str, *, host: str = "127.0.0.1") -> None:
        upstream = urllib.parse.urlsplit(upstream_url)
        if upstream.scheme != "http" or upstream.hostname is None:
            raise ValueError(f"FaultProxy forwards to http:// URLs only, not {upstream_url!r}")
        self._upstream = (upstream.hostname, upstream.port or 80)
        self._host = host
        self._port = 0
        self._server: ThreadingHTTPServer | None = None
        self._serving: threading.Thread | None = None
        # Serialises opening and closing the listener (start, refuse, restore, stop).
        self._listener_lock = threading.Lock()
        # One condition guards every counter and fault setting below; waiting
        # requests (hang, hold) sleep on it.
        self._state = threading.Condition()
        self._calls: Counter[str] = Counter()
        self._throttled: Counter[str] = Counter()
        self._rate: float | None = None
        self._rates: dict[str, float] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._hanging = False
        self._hang_epoch = 0
        self._delay = 0.0
        self._held_operations: set[str] = set()
        self._errors: dict[str, _ErrorAnswer] = {}
        self._held = 0
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """The URL to give boto3 as `endpoint_url`."""
        if not self._port:
            raise RuntimeError("FaultProxy has no port yet: call start() first")
        return f"http://{self._host}:{self._port}"

    def start(self) -> FaultProxy:
        """Listen on a free port (the first time) and serve in a daemon thread."""
        with self._state:
            self._stopping = False
        self._listen()
        logger.info("FaultProxy %s -> http://%s:%d", self.endpoint_url, *self._upstream)
        return self

    def stop(self) -> None:
        """Stop listening and answer every waiting request (503, or forward when held)."""
        with self._state:
            self._stopping = True
            self._state.notify_all()
        self._close_listener()

    # -- counting ----------------------------------------------------------

    @property
    def calls(self) -> Counter[str]:
        """Requests received per operation, e.g. {"GetSecretValue": 3} (a copy).

        Counts every request that reached the proxy, throttled and hung ones included.
        """
        with self._state:
            return Counter(self._calls)

    @property
    def throttled(self) -> Counter[str]:
        """Requests answered with ThrottlingException, per operation (a copy)."""
        with self._state:
            return Counter(self._throttled)

    @property
    def total_calls(self) -> int:
        """All requests received."""
        with self._state:
            return self._calls.total()

    def reset_calls(self) -> None:
        """Set `calls` and `throttled` back to zero."""
        with self._state:
            self._calls.clear()
            self._throttled.clear()

    # -- faults ------------------------------------------------------------

    def throttle(
        self, rate_per_second: float | None, *, rates: Mapping[str, float] | None = None
    ) -> None:
        """Throttle each operation in its own bucket; None: stop throttling.

        `rate_per_second` is GetSecretValue's rate; DescribeSecret gets
        `AWS_QUOTA_RATIOS` times more (4x, as AWS's quotas), every other
        operation `rate_per_second`. `rates` overrides single operations,
        e.g. ``throttle(4.0, rates={"DescribeSecret": 100.0})``.
        """
        chosen = dict(rates or {})
        for value in [rate_per_second, *chosen.values()]:
            if value is not None and value <= 0:
                raise ValueError("rates must be positive (or None to stop throttling)")
        if rate_per_second is None and chosen:
            raise ValueError("rates need a rate_per_second for the other operations")
        with self._state:
            self._rate = rate_per_second
            self._rates = (
                {}
                if rate_per_second is None
                else {op: rate_per_second * ratio for op, ratio in AWS_QUOTA_RATIOS.items()}
                | chosen
            )
            self._buckets.clear()  # each starts full at its first call

    def rate_of(self, operation: str) -> float | None:
        """The calls per second `operation` is throttled at now; None when unthrottled."""
        with self._state:
            return self._rate_of(operation)

    def _rate_of(self, operation: str) -> float | None:
        if self._rate is None:
            return None
        return self._rates.get(operation, self._rate)

    def hang(self) -> None:
        """Accept requests but answer none until `restore()`."""
        with self._state:
            self._hanging = True

    def refuse(self) -> None:
        """Close the listening socket: new connections are refused until `restore()`."""
        self._close_listener()

    def delay(self, seconds: float) -> None:
        """Wait `seconds` before forwarding each request; 0 for none."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        with self._state:
            self._delay = seconds

    def answer_error(
        self, operation: str, error_type: str, *, status: int = 400, message: str | None = None
    ) -> None:
        """Answer requests of `operation` with the AWS error `error_type` until `restore()`.

        E.g. ``answer_error("GetSecretValue", "AccessDeniedException")``; boto3
        raises ClientError with that code.
        """
        with self._state:
            self._errors[operation] = _ErrorAnswer(
                status, error_type, message or f"{error_type} (injected by FaultProxy)"
            )

    def hold(self, operation: str) -> None:
        """Keep requests of `operation` (e.g. "GetSecretValue") waiting until `release()`."""
        with self._state:
            self._held_operations.add(operation)

    def release(self) -> None:
        """Let held requests go on (they are forwarded) and hold no more."""
        with self._state:
            self._held_operations.clear()
            self._state.notify_all()

    def wait_held(self, count: int, timeout: float) -> bool:
        """Wait until at least `count` requests are held; False if `timeout` passes first."""
        with self._state:
            return self._state.wait_for(lambda: self._held >= count, timeout)

    def restore(self) -> None:
        """Clear every fault: listen again, answer hung requests (503), release held ones."""
        with self._state:
            self._rate = None
            self._delay = 0.0
            self._hanging = False
            self._hang_epoch += 1
            self._held_operations.clear()
            self._errors.clear()
            self._state.notify_all()
            stopping = self._stopping
        if not stopping and self._server is None:
            self._listen()

    # -- serving -----------------------------------------------------------

    def _listen(self) -> None:
        with self._listener_lock:
            if self._server is None:
                self._open_listener()

    def _open_listener(self) -> None:
        server = ThreadingHTTPServer((self._host, self._port or 0), _make_handler(self))
        server.daemon_threads = True
        self._port = server.server_address[1]
        self._server = server
        self._serving = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FaultProxy:{self._port}",
            daemon=True,
        )
        self._serving.start()

    def _close_listener(self) -> None:
        with self._listener_lock:
            server, self._server = self._server, None
            if server is not None:
                server.shutdown()
                server.server_close()
            if self._serving is not None:
                self._serving.join()
                self._serving = None

    def _admit(self, operation: str) -> _ErrorAnswer | None:
        """Count a request and apply the faults; return the error to answer, or None to forward."""
        with self._state:
            self._calls[operation] += 1
            rate = self._rate_of(operation)
            if rate is not None and not self._take_token(operation, rate):
                self._throttled[operation] += 1
                return _THROTTLED
            if self._hanging:
                epoch = self._hang_epoch
                self._state.wait_for(lambda: self._hang_epoch != epoch or self._stopping)
                return _UNAVAILABLE
            if operation in self._errors:
                return self._errors[operation]
            delay = self._delay
            if operation in self._held_operations:
                self._held += 1
                self._state.notify_all()
                try:
                    self._state.wait_for(
                        lambda: operation not in self._held_operations or self._stopping
                    )
                finally:
                    self._held -= 1
        if delay:
            time.sleep(delay)
        return None

    def _take_token(self, operation: str, rate: float) -> bool:
        now = time.monotonic()
        bucket = self._buckets.get(operation)
        if bucket is None:
            bucket = self._buckets[operation] = _Bucket(_burst(rate), now)
        bucket.tokens = min(_burst(rate), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self._upstream, timeout=_UPSTREAM_TIMEOUT)
        try:
            # The client's Host header is kept: it is part of the SigV4 signature.
            connection.request(method, path, body=body, headers=dict(headers))
            response = connection.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            connection.close()


@dataclass
class _Bucket:
    """One operation's token bucket: tokens left at monotonic time `at`."""

    tokens: float
    at: float


def _burst(rate: float) -> float:
    # The bucket holds `rate` tokens, but at least one so that a rate below 1/s lets calls through.
    return max(rate, 1.0)


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietRequestHandler):
        log_name = "FaultProxy"

        # HTTP/1.0: one request per connection, so refuse() takes effect at
        # once instead of kept-alive connections carrying on.
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:
            self._handle()

        def do_GET(self) -> None:
            self._handle()

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            target = self.headers.get("X-Amz-Target") or ""
            operation = target.rpartition(".")[2] or "(none)"
            error = proxy._admit(operation)
            if error is not None:
                self._answer(error)
                return
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            try:
                answer = proxy._forward(self.command, self.path, headers, body)
            except OSError as exc:
                logger.warning("FaultProxy: upstream failed for %s: %s", operation, exc)
                self._answer(_ErrorAnswer(502, "BadGateway", "upstream unreachable"))
                return
            code, reason, answer_headers, answer_body = answer
            self.send_response_only(code, reason)
            for name, value in answer_headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer_body)))
            self.end_headers()
            self.wfile.write(answer_body)

        def _answer(self, error: _ErrorAnswer) -> None:
            body = json.dumps({"__type": error.error_type, "message": error.message}).encode()
            self.send_response_only(error.status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-ErrorType", error.error_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
