"""One HTTP exchange with the Secrets Manager Agent: loopback only, bounded in time and size.

Whatever listens on the agent's port is not trusted to be the agent:

- the endpoint must be a loopback address (127.0.0.0/8, ``::1``) or
  ``localhost`` unless the application opts in to another host (the token
  and the secret would then cross a network in clear); a name is also checked
  after connecting, by the address it reached;
- `get` ends by its deadline, however slowly the answer comes: http.client's
  own timeout bounds each socket operation, so a server sending one byte at a
  time could hold it for ever; here each operation gets only the time left;
- an answer body is read up to `MAX_ANSWER_BYTES`, and a larger one refused.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import time
import urllib.parse
from typing import Literal, NamedTuple

from rotating_pool.errors import ConfigurationError

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINT_ENV",
    "MAX_ANSWER_BYTES",
    "Endpoint",
    "ExchangeFailed",
    "Reply",
    "get",
    "is_loopback",
    "parse_endpoint",
]

DEFAULT_ENDPOINT = "http://localhost:2773"
"""Where the agent and the Lambda extension listen unless configured otherwise."""

ENDPOINT_ENV = "ROTATING_POOL_AGENT_ENDPOINT"
"""Environment variable that overrides `DEFAULT_ENDPOINT` (e.g. ``http://127.0.0.1:2775``)."""

MAX_ANSWER_BYTES = 1 << 20
"""The largest answer read: a secret is at most 64 KiB, so a larger answer is not the agent's."""


class Endpoint(NamedTuple):
    """A checked agent endpoint.

    Attributes:
        url: the base URL, without a trailing slash.
        host, port: where to connect.
        remote: whether the host is allowed not to be loopback (the opt-in).
    """

    url: str
    host: str
    port: int
    remote: bool


class Reply(NamedTuple):
    """An answer: its HTTP status and body (at most `MAX_ANSWER_BYTES`)."""

    status: int
    body: bytes


FailureKind = Literal["refused", "timeout", "too large", "not loopback", "broken"]


class ExchangeFailed(Exception):
    """No usable answer; `kind` says why and `detail` (never the server's words) how."""

    def __init__(self, kind: FailureKind, detail: str = "") -> None:
        super().__init__(kind, detail)
        self.kind: FailureKind = kind
        self.detail = detail


def is_loopback(host: str) -> bool:
    """Whether `host` is ``localhost`` or a loopback address.

    >>> [is_loopback(h) for h in ("localhost", "127.0.0.2", "::1", "db-agent", "10.0.0.1")]
    [True, True, True, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_endpoint(endpoint: str, *, allow_remote: bool) -> Endpoint:
    """Check an endpoint URL: http, a host and a port, no path; loopback unless `allow_remote`.

    Raises:
        ConfigurationError: a malformed URL, or a host that is not loopback
            without the opt-in.
    """
    url = endpoint.rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or parts.scheme != "http"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ConfigurationError(
            f"the agent endpoint must be a URL like {DEFAULT_ENDPOINT} (http, a host and a "
            f"port, no path), not {endpoint!r} (from the endpoint argument or {ENDPOINT_ENV})"
        )
    if not allow_remote and not is_loopback(parts.hostname):
        raise ConfigurationError(
            f"the agent endpoint {url!r} (from the endpoint argument or {ENDPOINT_ENV}) is not "
            "on this host: the agent serves localhost (127.0.0.0/8, ::1), and anywhere else the "
            "token and the secret would cross the network in clear. Fix the address, or pass "
            "allow_remote_endpoint=True to AgentSource if that is really meant"
        )
    return Endpoint(url, parts.hostname, port or 80, allow_remote)


def get(endpoint: Endpoint, path: str, headers: dict[str, str], deadline: float) -> Reply:
    """GET `path`, ending by `deadline` (a `time.monotonic` value) whatever the server does.

    Raises:
        ExchangeFailed: refused, timed out, too large, not loopback, or broken.
    """
    connection = _Connection(endpoint, deadline)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read(MAX_ANSWER_BYTES + 1)
    except ConnectionRefusedError:
        raise ExchangeFailed("refused") from None
    except TimeoutError:
        raise ExchangeFailed("timeout") from None
    except (OSError, http.client.HTTPException) as error:
        # Not chained nor quoted: an http.client error may quote what the server sent.
        detail = error.strerror if isinstance(error, OSError) and error.strerror else ""
        kind = type(error).__name__ + (f" ({detail})" if detail else "")
        raise ExchangeFailed("broken", kind) from None
    finally:
        connection.close()
        connection.close_socket()
    if len(body) > MAX_ANSWER_BYTES:
        raise ExchangeFailed("too large", f"more than {MAX_ANSWER_BYTES} bytes")
    return Reply(response.status, body)


class _Connection(http.client.HTTPConnection):
    """An HTTPConnection whose socket operations share one deadline."""

    def __init__(self, endpoint: Endpoint, deadline: float) -> None:
        super().__init__(endpoint.host, endpoint.port)
        self._endpoint = endpoint
        self._deadline = deadline
        self._socket: socket.socket | None = None

    def close_socket(self) -> None:
        """Close the socket itself: `close` leaves it to the response still reading it."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=_left(self._deadline))
        try:
            peer = str(sock.getpeername()[0])
            if not self._endpoint.remote and not is_loopback(peer):
                # "localhost" resolved elsewhere (a tampered hosts file or resolver).
                raise ExchangeFailed("not loopback", f"{self._endpoint.host} is {peer}")
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self.sock = _DeadlineSocket(sock, self._deadline)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the agent call's time is spent")
    return left


class _DeadlineSocket:
    """The few socket methods http.client uses, each given only the time left."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_left(self._deadline))
        self._sock.sendall(data)  # the timeout bounds the whole sendall (Python 3.5+)

    def recv_into(self, buffer: memoryview) -> int:
        self._sock.settimeout(_left(self._deadline))
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """Nothing: http.client closes the connection before the response is read
        (a real socket counts its files); `_Connection.close_socket` closes it."""


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._sock.recv_into(buffer)
