"""Small helpers shared by the local servers: lifecycle, ports, deadlines, log tails."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar

import psycopg

logger = logging.getLogger("rotating_pool.testing")

# How long a local server may take to answer after it is launched.
START_TIMEOUT = 30.0
# How often a starting server is probed.
POLL_INTERVAL = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that nothing listens on right now.

    The port is only free when asked: another process may take it before the
    server binds it. That race is accepted for a test bed.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def end_process(process: subprocess.Popen[bytes], signum: int, timeout: float) -> None:
    """Send `signum` to a child still running, wait up to `timeout` s, then kill it."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_logins(
    process: subprocess.Popen[bytes],
    connect: Callable[[], psycopg.Connection[Any]],
    what: str,
    log_path: Path,
) -> None:
    """Wait until `connect()` logs in to a server just launched as `process`.

    Raises RuntimeError, with the end of the server's log, when the process
    exits or no login succeeds within START_TIMEOUT seconds.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        code = process.poll()
        if code is not None:
            raise RuntimeError(
                f"{what} exited with code {code} while starting; "
                f"end of {log_path}:\n{log_tail(log_path)}"
            )
        try:
            with connect():
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} did not accept logins within {START_TIMEOUT:.0f} s "
                    f"(last error: {exc}); end of {log_path}:\n{log_tail(log_path)}"
                ) from None
        time.sleep(POLL_INTERVAL)


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last `lines` lines of a log file, or a note when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


_Service = TypeVar("_Service", bound="LocalService")


class LocalService(ABC):
    """What every local stand-in is: started, stopped, and a context manager.

    Subclasses that listen on a port of 127.0.0.1 keep it in `_port`.
    """

    _port: int | None = None

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started, or when given)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} has no port yet: call start() first")
        return self._port

    @abstractmethod
    def start(self: _Service) -> _Service:
        """Start serving; returns self."""

    @abstractmethod
    def stop(self) -> None:
        """Stop serving and clean up; safe to call twice."""

    def __enter__(self: _Service) -> _Service:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_TcpService = TypeVar("_TcpService", bound="TcpStandIn")


class TcpStandIn(LocalService):
    """A stand-in that serves raw TCP on 127.0.0.1, a thread per connection.

    Subclasses write `_serve` (one connection) and `_listening` (what the
    start-up log line says it is); `_stopping` is set by `stop`, so that a
    connection held open can end.
    """

    _thread_name = "tcp-stand-in"

    def __init__(self, port: int | None) -> None:
        self._port = port
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.connections = 0

    @abstractmethod
    def _serve(self, sock: socket.socket) -> None:
        """Serve one connection (its count is kept in `connections`)."""

    @abstractmethod
    def _listening(self) -> str:
        """The log line that says what listens, and where."""

    def start(self: _TcpService) -> _TcpService:
        """Listen and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        if self._port is None:
            self._port = free_port(self.host)
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with owner._lock:
                    owner.connections += 1
                owner._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        server = socketserver.ThreadingTCPServer((self.host, self._port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=self._thread_name, daemon=True
        )
        self._thread.start()
        logger.info("%s", self._listening())
        return self

    def stop(self) -> None:
        """Stop listening and end the connections held open."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


class QuietRequestHandler(BaseHTTPRequestHandler):
    """An HTTP handler for the local servers: a client that hung up is no error,
    and requests are logged at DEBUG, prefixed with `log_name`."""

    log_name = "local"

    def handle(self) -> None:
        # A client that gave up (timeout) leaves a closed socket behind.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        # The request line and status only: tokens travel in headers, never logged.
        logger.debug(self.log_name + ": " + format, *args)
