"""A hostile PostgreSQL server stand-in: it phishes for passwords, or never answers.

It is *not* PostgreSQL, only enough of its wire protocol to play an attacker's
server that a tampered secret points at, or a database that has stopped
answering:

- ``"cleartext"``: declines TLS (answers ``N`` to an SSLRequest), records every
  StartupMessage (user, database), asks for a cleartext password
  (AuthenticationCleartextPassword), records whatever comes back, then fails
  the login with a FATAL error saying it is this stand-in;
- ``"silent"``: accepts connections, records the first bytes it gets, and never
  answers (until stopped).

>>> with HostileServer() as server:  # doctest: +SKIP
...     psycopg.connect(host=server.host, port=server.port, user="x", password="pw")
>>> server.startups, server.passwords  # doctest: +SKIP
([StartupRecord(user='x', database='x', after_tls_request=True)], [b'pw'])
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from rotating_pool.testing._process import TcpStandIn

__all__ = ["HostileServer", "StartupRecord"]

logger = logging.getLogger("rotating_pool.testing")

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_PROTOCOL_3 = 196608
_AUTH_CLEARTEXT = 3
# A client that says nothing is given up on after this long; stop() ends it sooner.
_IDLE_LIMIT = 60.0
STANDIN_NOTICE = "rotating_pool hostile-server stand-in (not PostgreSQL)"


@dataclass(frozen=True)
class StartupRecord:
    """One StartupMessage the stand-in received.

    Attributes:
        user: the ``user`` parameter.
        database: the ``database`` parameter (libpq sends the user's name by default).
        after_tls_request: the client asked for TLS first and went on without it.
    """

    user: str | None
    database: str | None
    after_tls_request: bool


class HostileServer(TcpStandIn):
    """A listener on 127.0.0.1 that plays a hostile or dead PostgreSQL server.

    Args:
        behaviour: ``"cleartext"`` (ask for a cleartext password) or
            ``"silent"`` (accept, never answer).
        port: the TCP port; by default a free one, chosen at `start()`.

    Attributes (filled as clients come):
        connections: TCP connections accepted.
        startups: every StartupMessage received.
        passwords: every PasswordMessage's payload received (a cleartext
            password, if a client was fooled).
        received: every other message's raw bytes.
    """

    _thread_name = "hostile-server"

    def __init__(
        self, behaviour: Literal["cleartext", "silent"] = "cleartext", *, port: int | None = None
    ) -> None:
        if behaviour not in ("cleartext", "silent"):
            raise ValueError(f"behaviour must be 'cleartext' or 'silent', not {behaviour!r}")
        super().__init__(port)
        self.behaviour = behaviour
        self.startups: list[StartupRecord] = []
        self.passwords: list[bytes] = []
        self.received: list[bytes] = []

    def __repr__(self) -> str:
        return f"HostileServer({self.behaviour!r}, port={self._port})"

    def _listening(self) -> str:
        return f"{STANDIN_NOTICE} ({self.behaviour}) listening on {self.host}:{self.port}"

    # -- one connection --------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(_IDLE_LIMIT)
        with contextlib.suppress(OSError, ConnectionError):
            if self.behaviour == "silent":
                first = sock.recv(1024)
                with self._lock:
                    self.received.append(first)
                self._stopping.wait(_IDLE_LIMIT)
                return
            self._phish(sock)

    def _phish(self, sock: socket.socket) -> None:
        tls_requested = False
        while True:
            length, code = struct.unpack("!ii", _read_exactly(sock, 8))
            body = _read_exactly(sock, length - 8)
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                tls_requested = True
                sock.sendall(b"N")  # no encryption here; a client may go on without
                continue
            if code == _CANCEL_REQUEST:
                return
            break
        if code != _PROTOCOL_3:
            return
        params = dict(_pairs(body))
        with self._lock:
            self.startups.append(
                StartupRecord(params.get("user"), params.get("database"), tls_requested)
            )
        sock.sendall(b"R" + struct.pack("!ii", 8, _AUTH_CLEARTEXT))
        kind = _read_exactly(sock, 1)
        (length,) = struct.unpack("!i", _read_exactly(sock, 4))
        payload = _read_exactly(sock, length - 4)
        with self._lock:
            if kind == b"p":
                self.passwords.append(payload.rstrip(b"\x00"))
            else:
                self.received.append(kind + payload)
        sock.sendall(_fatal(f"password authentication failed ({STANDIN_NOTICE})"))


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _pairs(body: bytes) -> list[tuple[str, str]]:
    parts = body.split(b"\x00")
    decoded = [p.decode("utf-8", "replace") for p in parts]
    return list(zip(decoded[0:-1:2], decoded[1::2], strict=False))


def _fatal(message: str) -> bytes:
    fields = b"SFATAL\x00VFATAL\x00C28P01\x00M" + message.encode() + b"\x00\x00"
    return b"E" + struct.pack("!i", len(fields) + 4) + fields
