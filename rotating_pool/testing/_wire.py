"""What the local wire-protocol stand-ins share: a PostgreSQL-protocol front on 127.0.0.1.

`WireFront` is an asyncio server in a thread of the calling process that
reads a client's first message (answering SSLRequest and GSSENCRequest with
'N', forwarding CancelRequest to PostgreSQL) and hands the StartupMessage to
its subclass, which refuses the login or relays it to PostgreSQL. The
message formats are PostgreSQL's ("Frontend/Backend Protocol: Message
Formats").
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable

from rotating_pool.testing._process import LocalService, free_port

__all__ = ["WireFront", "error_response", "read_message", "relay", "startup_parameters"]

logger = logging.getLogger("rotating_pool.testing")

# First messages a client may send.
_PROTOCOL_3 = 196608
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_MAX_STARTUP = 10_000
# The largest server message read whole during a login (authentication
# requests are small; anything bigger is not a login step).
_MAX_MESSAGE = 1_000_000
_CHUNK = 65536
_CONNECT_TIMEOUT = 10.0
_STARTUP_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


class WireFront(LocalService):
    """A PostgreSQL wire-protocol front on 127.0.0.1 in front of `target`.

    Subclasses set `name` (what it is, said in every log record) and
    implement `_answer`; `_listen` and `_close` start and stop the server.
    They count the logins they refuse themselves and the ones they let
    through in `_refusals` and `_passed`, under `_state` (notify it).
    """

    name = "wire-protocol stand-in"

    def __init__(self, target: tuple[str, int], host: str, port: int | None) -> None:
        self._target = target
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[asyncio.StreamWriter] = set()
        # Guards the counters (and a subclass's state); waiters sleep on it.
        self._state = threading.Condition()
        self._refusals: Counter[str] = Counter()
        self._passed: Counter[str] = Counter()

    @property
    def host(self) -> str:
        """The address the stand-in listens on."""
        return self._host

    @property
    def refusals(self) -> Counter[str]:
        """Logins the stand-in refused itself, per user (a copy)."""
        with self._state:
            return Counter(self._refusals)

    @property
    def passed(self) -> Counter[str]:
        """Logins the stand-in let through to PostgreSQL, per user (a copy)."""
        with self._state:
            return Counter(self._passed)

    def wait_for_refusals(self, user: str, count: int, timeout: float) -> bool:
        """Wait until `count` logins of `user` were refused; False if `timeout` passes first."""
        with self._state:
            return self._state.wait_for(lambda: self._refusals[user] >= count, timeout)

    @abstractmethod
    async def _answer(
        self, startup: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Refuse or relay the login whose StartupMessage is `startup`."""

    def _listen(self) -> None:
        """Bind the port and serve in a thread of its own."""
        if self._loop is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        if self._port is None:
            self._port = free_port(self._host)
        loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, self._host, self._port)
            )
        except BaseException:
            loop.close()
            raise
        self._loop = loop
        self._spawn(loop.run_forever, "serve")

    def _close(self) -> None:
        """Stop listening, close every connection, join the threads `_spawn` started."""
        loop, self._loop = self._loop, None
        if loop is not None:
            future = asyncio.run_coroutine_threadsafe(self._shut_down(), loop)
            future.result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        if loop is not None:
            loop.close()
            logger.info("%s on port %s stopped", self.name, self._port)

    def _spawn(self, target: Callable[[], object], what: str) -> None:
        thread = threading.Thread(
            target=target, name=f"{type(self).__name__}-{what}:{self._port}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    async def _shut_down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Closing the sockets ends every relay and startup read on its own;
        # cancelling those tasks instead makes asyncio's stream callback log errors.
        for writer in list(self._connections):
            writer.close()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT)
            for task in pending:
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            startup = await asyncio.wait_for(self._read_startup(reader, writer), _STARTUP_TIMEOUT)
            if startup is not None:
                await self._answer(startup, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            logger.debug("%s: client connection ended: %r", self.name, exc)
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _read_startup(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """Return the client's StartupMessage (after answering TLS requests), or None."""
        while True:
            length, code = struct.unpack("!II", await reader.readexactly(8))
            if not 8 <= length <= _MAX_STARTUP:
                raise ValueError(f"bad startup packet length {length}")
            body = await reader.readexactly(length - 8)
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                writer.write(b"N")
                await writer.drain()
                continue
            message = struct.pack("!II", length, code) + body
            if code == _CANCEL_REQUEST:
                await self._forward_cancel(message)
                return None
            if code != _PROTOCOL_3:
                raise ValueError(f"unsupported protocol {code >> 16}.{code & 0xFFFF}")
            return message

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to PostgreSQL, closed by `_shut_down` if still open then."""
        upstream_reader, upstream_writer = await asyncio.wait_for(
            asyncio.open_connection(*self._target), _CONNECT_TIMEOUT
        )
        self._connections.add(upstream_writer)
        return upstream_reader, upstream_writer

    def _release_upstream(self, upstream_writer: asyncio.StreamWriter) -> None:
        self._connections.discard(upstream_writer)
        upstream_writer.close()

    async def _forward_cancel(self, message: bytes) -> None:
        _, upstream_writer = await asyncio.wait_for(
            asyncio.open_connection(*self._target), _CONNECT_TIMEOUT
        )
        upstream_writer.write(message)
        await upstream_writer.drain()
        upstream_writer.close()


async def relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy bytes until `source` ends, then close `sink` (which ends the other direction)."""
    try:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


async def read_message(source: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One server message: (its type byte, its body). Raises ValueError on a bad length."""
    kind = await source.readexactly(1)
    (length,) = struct.unpack("!I", await source.readexactly(4))
    if not 4 <= length <= _MAX_MESSAGE:
        raise ValueError(f"bad server message length {length}")
    return kind, await source.readexactly(length - 4)


def startup_parameters(body: bytes) -> dict[str, str]:
    """The name/value pairs of a StartupMessage body (after length and protocol)."""
    parts = body.split(b"\x00")
    pairs = [part.decode("utf-8", "replace") for part in parts]
    return dict(zip(pairs[0::2], pairs[1::2], strict=False))


def error_response(severity: str, message: str, sqlstate: str | None = None) -> bytes:
    """An ErrorResponse message; without `sqlstate` it carries no code field at all."""
    fields = [(b"S", severity), (b"V", severity)]
    if sqlstate is not None:
        fields.append((b"C", sqlstate))
    fields.append((b"M", message))
    payload = b"".join(kind + value.encode() + b"\x00" for kind, value in fields) + b"\x00"
    return b"E" + struct.pack("!I", len(payload) + 4) + payload
