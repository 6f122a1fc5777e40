"""Small helpers shared by the local servers: lifecycle, ports, deadlines, log tails."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar

import psycopg

logger = logging.getLogger("rotating_pool.local")

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
