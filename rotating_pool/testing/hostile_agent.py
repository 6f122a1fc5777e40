"""A HOSTILE stand-in on the agent's port: NOT the Secrets Manager Agent.

A listener on 127.0.0.1 that plays what another local user (or a stuck
process) could put on port 2773 before the agent starts, to test that
`rotating_pool.AgentSource` keeps its promises against it:

- ``"drip"``: answers HTTP 200 with a plausible GetSecretValue body, one byte
  every `interval` seconds (http.client's per-read timeout never fires);
- ``"huge"``: answers HTTP 200 with a body of `size` bytes, as fast as it is read;
- ``"silent"``: accepts, reads the request, never answers (until stopped);
- ``"wrong_arn"``: answers at once with well-formed GetSecretValue JSON for
  *another* secret, whose document points at the attacker's host.

Every answer carries ``Server: rotating_pool-hostile-agent-standin``.

>>> with HostileAgent("drip") as hostile:  # doctest: +SKIP
...     AgentSource("db", endpoint=hostile.endpoint_url, token="t", timeout=0.5).load()
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Literal

from rotating_pool.testing._process import TcpStandIn

__all__ = ["HOSTILE_PASSWORD", "SERVER_HEADER", "HostileAgent"]

logger = logging.getLogger("rotating_pool.testing")

SERVER_HEADER = "rotating_pool-hostile-agent-standin"
"""The ``Server`` header of every answer: says that this is not the AWS agent."""

HOSTILE_PASSWORD = "hostile-agent-standin-password"  # noqa: S105  (the attacker's bait)
"""The password in the documents this stand-in serves: a client must never use it."""

Behaviour = Literal["drip", "huge", "silent", "wrong_arn"]
_BEHAVIOURS = ("drip", "huge", "silent", "wrong_arn")
# A client that says nothing is given up on after this long; stop() ends it sooner.
_IDLE_LIMIT = 60.0
_CHUNK = 64 * 1024


class HostileAgent(TcpStandIn):
    """A listener on 127.0.0.1 that is not the agent; see the module docstring.

    Args:
        behaviour: ``"drip"``, ``"huge"``, ``"silent"`` or ``"wrong_arn"``.
        interval: seconds between two bytes of a ``"drip"`` answer.
        size: the body size of a ``"huge"`` answer, in bytes.
        port: the TCP port; by default a free one, chosen at `start()`.

    Attributes:
        connections: TCP connections accepted.
        requested: set once a request has been read (a client is now held).
        hung_up: released once for each client that went away before the
            answer was whole (``"drip"`` and ``"huge"``): it stopped reading.
    """

    _thread_name = "hostile-agent"

    def __init__(
        self,
        behaviour: Behaviour,
        *,
        interval: float = 0.3,
        size: int = 64 * 1024 * 1024,
        port: int | None = None,
    ) -> None:
        if behaviour not in _BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {_BEHAVIOURS}, not {behaviour!r}")
        super().__init__(port)
        self.behaviour = behaviour
        self.interval = interval
        self.size = size
        self.requested = threading.Event()
        self.hung_up = threading.Semaphore(0)

    def __repr__(self) -> str:
        return f"HostileAgent({self.behaviour!r}, port={self._port}, not the agent)"

    @property
    def endpoint_url(self) -> str:
        """The URL to give `AgentSource` as its endpoint."""
        return f"http://{self.host}:{self.port}"

    def _listening(self) -> str:
        return (
            f"{SERVER_HEADER} ({self.behaviour}, not the Secrets Manager Agent) listening on "
            f"{self.endpoint_url}"
        )

    # -- one connection --------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(_IDLE_LIMIT)
        try:
            self._answer(sock)
        except (BrokenPipeError, ConnectionResetError):
            self.hung_up.release()
        except OSError:
            pass

    def _answer(self, sock: socket.socket) -> None:
        _read_request(sock)
        self.requested.set()
        if self.behaviour == "silent":
            self._stopping.wait(_IDLE_LIMIT)
        elif self.behaviour == "drip":
            body = _document("drip")
            sock.sendall(_head(len(body)))
            for byte in body:
                if self._stopping.wait(self.interval):
                    return
                sock.sendall(bytes([byte]))
        elif self.behaviour == "huge":
            sock.sendall(_head(self.size))
            sent = 0
            chunk = b" " * _CHUNK
            while sent < self.size and not self._stopping.is_set():
                sock.sendall(chunk[: self.size - sent])
                sent += _CHUNK
        else:
            body = _document("not-yours")
            sock.sendall(_head(len(body)) + body)


def _read_request(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _head(length: int) -> bytes:
    return (
        "HTTP/1.1 200 OK\r\n"
        f"Server: {SERVER_HEADER}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


def _document(name: str) -> bytes:
    """GetSecretValue's JSON for a secret called `name`, pointing at an attacker's host."""
    secret = {
        "engine": "postgres",
        "host": "attacker.example",
        "port": 5432,
        "username": "victim",
        "password": HOSTILE_PASSWORD,
    }
    return json.dumps(
        {
            "ARN": f"arn:aws:secretsmanager:us-east-1:000000000000:secret:{name}-AbCdEf",
            "Name": name,
            "VersionId": "00000000-0000-0000-0000-000000000000",
            "SecretString": json.dumps(secret),
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 0,
        }
    ).encode()
