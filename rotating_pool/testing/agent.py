"""A LOCAL STAND-IN for the AWS Secrets Manager Agent, for demos and tests.

NOT the AWS Secrets Manager Agent: a small Python server that speaks the same
HTTP protocol on 127.0.0.1, in front of any Secrets Manager endpoint (moto's,
from `LocalSecretsManager`, in the test bed), so that `AgentSource` and an
application configured for the agent sidecar can be run on a machine without
it. Every answer carries ``Server: rotating_pool-local-agent-standin``.

>>> with LocalSecretsManager() as sm, LocalAgent(sm.client()) as agent:  # doctest: +SKIP
...     source = AgentSource("demo", endpoint=agent.endpoint_url, token=agent.token)

Run as a process (a sidecar for a local demo)::

    python -m rotating_pool.testing._agent_main --port 2773   # token from $AWS_TOKEN, as the agent
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import secrets
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, NamedTuple

import botocore.exceptions

from rotating_pool.agent import DEFAULT_ENDPOINT, ENDPOINT_ENV, TOKEN_ENV_VARS, TOKEN_HEADER
from rotating_pool.testing._process import LocalService, QuietRequestHandler

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["SERVER_HEADER", "AgentRequest", "LocalAgent"]

logger = logging.getLogger("rotating_pool.testing")

SERVER_HEADER = "rotating_pool-local-agent-standin"
"""The ``Server`` header of every answer: says that this is not the AWS agent."""

DEFAULT_PORT = int(urllib.parse.urlsplit(DEFAULT_ENDPOINT).port or 2773)
DEFAULT_TTL = 300.0
"""The real agent's default cache TTL (``ttl_seconds``)."""

_HISTORY = 10_000  # requests remembered by `history`
_GET_PATH = "/secretsmanager/get"
_PARAMETERS = frozenset({"secretId", "versionId", "versionStage", "refreshNow"})
# The agent's default ``ssrf_headers``: it accepts the token in either.
_TOKEN_HEADERS = (TOKEN_HEADER, "X-Vault-Token")


class AgentRequest(NamedTuple):
    """One ``/secretsmanager/get`` request as the stand-in saw it (after the token check).

    Attributes:
        secret_id, version_stage, version_id: the query's parameters (None when absent).
        refresh_now: whether ``refreshNow`` was true.
        status: the HTTP status answered.
        from_cache: whether the answer came from the cache (no Secrets Manager call).
    """

    secret_id: str
    version_stage: str | None
    version_id: str | None
    refresh_now: bool
    status: int
    from_cache: bool


class _Failure(Exception):
    """An error answer: HTTP status and body, as the agent sends them."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


CacheKey = tuple[str, str | None, str | None]


class LocalAgent(LocalService):
    """A LOCAL STAND-IN for the AWS Secrets Manager Agent (not the agent itself).

    It serves the agent's protocol, as the agent's own source does it:

    - ``GET /secretsmanager/get?secretId=ID[&versionStage=S][&versionId=V][&refreshNow=true]``
      answers GetSecretValue's JSON (ARN, Name, VersionId, SecretString or
      SecretBinary, VersionStages, CreatedDate), from a cache keyed by
      (secretId, versionId, versionStage) whose entries live `ttl` seconds;
      ``refreshNow=true`` reads Secrets Manager whatever the cache holds and
      stores the answer.
    - The header ``X-Aws-Parameters-Secrets-Token`` (or ``X-Vault-Token``, the
      agent's other default) must equal `token`: a missing or wrong one is
      answered ``403 Bad Token``, and a request with
      ``X-Forwarded-For`` ``400 Forwarded``, as the agent does (some clients
      and docs expect 401; `AgentSource` treats both alike).
    - Secrets Manager's errors are passed on with AWS's status and a JSON body
      ``{"__type": ..., "message": ...}``; no connection gives 502
      ConnectionError, a timeout 504 TimeoutError, anything else 500
      InternalFailure. Unknown or bad parameters: 400 with a text message;
      other paths 404, other methods 405. ``GET /ping`` answers ``healthy``
      without a token (the agent's health check).

    - An entry past its TTL is checked with DescribeSecret, as the agent does
      (``is_current`` in its ``aws_secretsmanager_caching/src/lib.rs``): kept,
      with a new TTL, while its version still has the stage asked for
      (AWSCURRENT when none was; a query by versionId alone: while the
      version exists); otherwise read again.

    Simplified where it does not matter here: a failed DescribeSecret leads to
    a new read (the agent, with ``ignore_transient_errors``, may serve the
    entry stale); no size limit, no path-style requests, no connection limit.

    Args:
        client: a boto3 ``secretsmanager`` client (e.g. `LocalSecretsManager.client()`).
            Default: one from boto3's default chain (honours
            ``AWS_ENDPOINT_URL_SECRETS_MANAGER``).
        token: the token clients must send. Default: a new random one (see
            `token` and `env()`).
        ttl: seconds a cached answer is served (the agent's default: 300).
        host: the address to listen on.
        port: the TCP port. None: 2773 (the agent's) when free, else a free one;
            0: a free one.
    """

    def __init__(
        self,
        client: SecretsManagerClient | None = None,
        *,
        token: str | None = None,
        ttl: float = DEFAULT_TTL,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        if ttl < 0:
            raise ValueError("ttl cannot be negative")
        if client is None:
            import boto3  # noqa: PLC0415  (slow to import; only when needed)

            client = boto3.session.Session().client("secretsmanager")
        self._client = client
        self._token = token or secrets.token_urlsafe(24)
        self.ttl = ttl
        self._host = host
        self._wanted_port = port
        self._port = 0
        self._server: ThreadingHTTPServer | None = None
        self._serving: threading.Thread | None = None
        self._clock: Callable[[], float] = time.monotonic
        # One lock for the cache, the counters and the history.
        self._lock = threading.Lock()
        self._cache: dict[CacheKey, tuple[float, bytes]] = {}
        self._requests = 0
        self._refreshes = 0
        self._rejected = 0
        self._upstream_calls = 0
        self._describe_calls = 0
        self._history: deque[AgentRequest] = deque(maxlen=_HISTORY)

    def __repr__(self) -> str:
        where = self.endpoint_url if self._port else "not started"
        return f"LocalAgent({where}, stand-in for the Secrets Manager Agent)"

    # -- lifecycle ---------------------------------------------------------

    @property
    def token(self) -> str:
        """The token clients must send; assign to change it (as a restarted agent would)."""
        return self._token

    @token.setter
    def token(self, value: str) -> None:
        if not value:
            raise ValueError("the token cannot be empty")
        self._token = value

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if not self._port:
            raise RuntimeError("LocalAgent has no port yet: call start() first")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """The base URL to give `AgentSource` (or ``ROTATING_POOL_AGENT_ENDPOINT``)."""
        return f"http://{self._host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point `AgentSource` (``source="agent"``) here."""
        return {ENDPOINT_ENV: self.endpoint_url, TOKEN_ENV_VARS[0]: self._token}

    def start(self) -> LocalAgent:
        """Listen and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("LocalAgent is already started")
        server = self._bind()
        server.daemon_threads = True
        self._server = server
        self._port = server.server_address[1]
        self._serving = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"LocalAgent:{self._port}",
            daemon=True,
        )
        self._serving.start()
        logger.info(
            "local Secrets Manager Agent stand-in listening on %s (TTL %g s)",
            self.endpoint_url,
            self.ttl,
        )
        return self

    def stop(self) -> None:
        """Stop listening."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._serving is not None:
            self._serving.join()
            self._serving = None

    def _bind(self) -> ThreadingHTTPServer:
        handler = _make_handler(self)
        if self._wanted_port is not None:
            return ThreadingHTTPServer((self._host, self._wanted_port), handler)
        try:
            return ThreadingHTTPServer((self._host, DEFAULT_PORT), handler)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            return ThreadingHTTPServer((self._host, 0), handler)

    # -- counters ----------------------------------------------------------

    @property
    def requests(self) -> int:
        """``/secretsmanager/get`` requests that passed the token check."""
        with self._lock:
            return self._requests

    @property
    def refreshes(self) -> int:
        """Of those, the ones with ``refreshNow=true``."""
        with self._lock:
            return self._refreshes

    @property
    def rejected(self) -> int:
        """Requests refused for their token (or for ``X-Forwarded-For``)."""
        with self._lock:
            return self._rejected

    @property
    def upstream_calls(self) -> int:
        """GetSecretValue calls made to Secrets Manager."""
        with self._lock:
            return self._upstream_calls

    @property
    def describe_calls(self) -> int:
        """DescribeSecret calls made to Secrets Manager (checks of expired entries)."""
        with self._lock:
            return self._describe_calls

    @property
    def history(self) -> list[AgentRequest]:
        """The last 10,000 requests that passed the token check, oldest first (a copy)."""
        with self._lock:
            return list(self._history)

    def reset_counts(self) -> None:
        """Set every counter back to zero and forget the history (the cache stays)."""
        with self._lock:
            self._requests = self._refreshes = self._rejected = self._upstream_calls = 0
            self._describe_calls = 0
            self._history.clear()

    def clear_cache(self) -> None:
        """Forget every cached answer."""
        with self._lock:
            self._cache.clear()

    # -- serving -----------------------------------------------------------

    def _check_token(self, headers: Any) -> _Failure | None:
        if headers.get("X-Forwarded-For") is not None:
            failure = _Failure(400, "Forwarded")
        else:
            for header in _TOKEN_HEADERS:
                given = headers.get(header)
                if given is not None and secrets.compare_digest(
                    given.encode(), self._token.encode()
                ):
                    return None
            failure = _Failure(403, "Bad Token")
        with self._lock:
            self._rejected += 1
        return failure

    def _get(self, query: str) -> bytes:
        """Answer one ``/secretsmanager/get`` query; raises `_Failure` for an error answer."""
        secret_id, version_id, version_stage, refresh_now = _parse_query(query)
        with self._lock:
            self._requests += 1
            self._refreshes += refresh_now
        key = (secret_id, version_id, version_stage)
        status, from_cache = 200, False
        try:
            body, expired = (None, False) if refresh_now else self._cached(key)
            if body is not None and expired and not self._still_current(key, body):
                body = None
            from_cache = body is not None
            if body is None:
                body = self._read_upstream(key)
            return body
        except _Failure as failure:
            status = failure.status
            raise
        finally:
            with self._lock:
                self._history.append(
                    AgentRequest(
                        secret_id, version_stage, version_id, refresh_now, status, from_cache
                    )
                )

    def _cached(self, key: CacheKey) -> tuple[bytes | None, bool]:
        """The cached answer for `key` (None: none) and whether its TTL is over."""
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None, False
            return entry[1], self._clock() >= entry[0]

    def _still_current(self, key: CacheKey, body: bytes) -> bool:
        """The agent's check of an expired entry (``is_current`` in its
        ``aws_secretsmanager_caching/src/lib.rs``): DescribeSecret, and the
        entry is kept, its TTL renewed, when its version still exists (a query
        by versionId alone) or still has the stage asked for (AWSCURRENT when
        none was). A failed DescribeSecret counts as "not current" here."""
        _secret_id, version_id, version_stage = key
        cached = json.loads(body)
        with self._lock:
            self._describe_calls += 1
        try:
            stages = self._client.describe_secret(SecretId=cached["ARN"]).get("VersionIdsToStages")
        except Exception:  # the read that follows reports what is wrong
            return False
        if not stages:
            return False
        if version_id is not None and version_stage is None:
            current = version_id in stages
        else:
            wanted = version_id or cached.get("VersionId")
            current = (version_stage or "AWSCURRENT") in stages.get(wanted, ())
        if current:
            with self._lock:
                self._cache[key] = (self._clock() + self.ttl, body)
        return current

    def _read_upstream(self, key: CacheKey) -> bytes:
        secret_id, version_id, version_stage = key
        arguments: dict[str, Any] = {"SecretId": secret_id}
        if version_id is not None:
            arguments["VersionId"] = version_id
        if version_stage is not None:
            arguments["VersionStage"] = version_stage
        with self._lock:
            self._upstream_calls += 1
        try:
            answer = self._client.get_secret_value(**arguments)
        except botocore.exceptions.ClientError as error:
            raise _aws_failure(error) from None
        except (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError):
            raise _Failure(504, _error_body("TimeoutError", "Timeout")) from None
        except botocore.exceptions.EndpointConnectionError:
            raise _Failure(502, _error_body("ConnectionError", "Read Error")) from None
        except Exception as error:
            logger.warning("LocalAgent: GetSecretValue failed: %s", type(error).__name__)
            raise _Failure(500, _error_body("InternalFailure", "")) from None
        body = json.dumps(_answer_document(answer)).encode()
        with self._lock:
            self._cache[key] = (self._clock() + self.ttl, body)
        return body


def _parse_query(query: str) -> tuple[str, str | None, str | None, bool]:
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise _Failure(400, "invalid query") from None
    found: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMETERS:
            raise _Failure(400, f"unknown parameter: {name}")
        found[name] = value
    refresh_now = False
    if "refreshNow" in found:
        flag = found["refreshNow"].lower()
        if flag not in ("true", "1", "false", "0"):
            raise _Failure(400, "invalid refreshNow value")
        refresh_now = flag in ("true", "1")
    secret_id = found.get("secretId", "")
    if not secret_id:
        raise _Failure(400, "missing parameter secretId")
    return secret_id, found.get("versionId"), found.get("versionStage"), refresh_now


def _error_body(error_type: str, message: str) -> str:
    # The agent answers InternalFailure without a message.
    if not message or error_type == "InternalFailure":
        return json.dumps({"__type": "InternalFailure"})
    return json.dumps({"__type": error_type, "message": message})


def _aws_failure(error: botocore.exceptions.ClientError) -> _Failure:
    details = error.response.get("Error", {})
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500)
    return _Failure(
        status, _error_body(str(details.get("Code") or ""), str(details.get("Message") or ""))
    )


def _answer_document(answer: Any) -> dict[str, Any]:
    """GetSecretValue's answer as the agent serialises it (dates as epoch seconds)."""
    document: dict[str, Any] = {
        "ARN": answer.get("ARN"),
        "Name": answer.get("Name"),
        "VersionId": answer.get("VersionId"),
        "VersionStages": list(answer.get("VersionStages") or []),
    }
    if answer.get("SecretString") is not None:
        document["SecretString"] = answer["SecretString"]
    if answer.get("SecretBinary") is not None:
        document["SecretBinary"] = base64.b64encode(answer["SecretBinary"]).decode()
    created = answer.get("CreatedDate")
    if isinstance(created, datetime):
        document["CreatedDate"] = created.timestamp()
    return document


def _make_handler(agent: LocalAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietRequestHandler):
        log_name = "LocalAgent"

        # One request per connection: `stop()` then never waits on an idle
        # kept-alive connection.
        protocol_version = "HTTP/1.0"
        server_version = SERVER_HEADER
        sys_version = ""

        def version_string(self) -> str:
            return SERVER_HEADER

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/ping":
                self._send(200, b"healthy")
                return
            failure = agent._check_token(self.headers)
            if failure is None:
                if path != _GET_PATH:
                    failure = _Failure(404, "Not found")
                else:
                    try:
                        self._send(200, agent._get(query), json_body=True)
                        return
                    except _Failure as error:
                        failure = error
            self._send(failure.status, failure.body.encode(), json_body=failure.body[:1] == "{")

        def _refuse_method(self) -> None:
            failure = agent._check_token(self.headers) or _Failure(405, "Not allowed")
            self._send(failure.status, failure.body.encode())

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _refuse_method

        def _send(self, status: int, body: bytes, *, json_body: bool = False) -> None:
            self.send_response(status)
            content_type = "application/json" if json_body else "text/plain; charset=utf-8"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler
