"""A LOCAL STAND-IN for Amazon RDS Proxy in front of PostgreSQL, for tests and demos.

NOT RDS Proxy: a small asyncio server speaking the PostgreSQL wire protocol on
127.0.0.1 that behaves as RDS Proxy does towards a client during a
credential rotation: it reads the application's secret on its own schedule
and knows only the user of the AWSCURRENT version it last read.

>>> with LocalRdsProxy(sm.client(), arn, target=(pg.host, pg.port)) as proxy:  # doctest: +SKIP
...     url = f"postgresql+psycopg://{proxy.host}:{proxy.port}/app"
...     proxy.refusals   # Counter of refused logins per user
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
from collections import Counter
from typing import TYPE_CHECKING, NamedTuple

from rotating_pool.local._process import LocalService, free_port

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["LocalRdsProxy", "ProxyCredentials", "no_credentials_message"]

logger = logging.getLogger("rotating_pool.local")

_NAME = "RDS Proxy stand-in"
# First messages a client may send (PostgreSQL protocol, "Message Formats").
_PROTOCOL_3 = 196608
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_MAX_STARTUP = 10_000
_CHUNK = 65536
_CONNECT_TIMEOUT = 10.0
_STARTUP_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


def no_credentials_message(user: str) -> str:
    """RDS Proxy's message for a user it holds no credentials for (SQLSTATE 28000).

    As reported in aws/aws-secretsmanager-jdbc issue 222.
    """
    return (
        f"This RDS proxy has no credentials for the role {user}. "
        "Check the credentials for this role and try again."
    )


class ProxyCredentials(NamedTuple):
    """The credentials the stand-in holds: the AWSCURRENT user it last read.

    Attributes:
        username: the user it lets through.
        version_id: the secret version it was read from.
    """

    username: str
    version_id: str


class LocalRdsProxy(LocalService):
    """A LOCAL STAND-IN for Amazon RDS Proxy (not the AWS service).

    Toward a client it behaves as RDS Proxy does across a rotation:

    - It reads the secret (GetSecretValue, AWSCURRENT) when started, then every
      `refresh_interval` seconds in a background thread, and when
      `refresh_now()` is called. It keeps only the user name of what it read
      (and its version id); a failed read keeps what it had.
    - A StartupMessage for any other user is answered with an ErrorResponse,
      severity FATAL, SQLSTATE 28000, message `no_credentials_message(user)`,
      and the connection is closed; the refusal is counted per user
      (`refusals`).
    - A StartupMessage for the user it holds is passed on to PostgreSQL, and
      from then on the connection is relayed byte for byte both ways:
      PostgreSQL itself runs the SCRAM exchange and checks the password (RDS
      Proxy authenticates the client against the secret's password and logs
      in to the database on its own; for a password that is stale on either
      side both refuse the login, with different wording).
    - SSLRequest and GSSENCRequest are answered 'N' (no TLS: clients must use
      ``sslmode=disable`` or ``prefer``; real RDS Proxy offers TLS and may
      require it). CancelRequest is forwarded to PostgreSQL.

    It says what it is in every log record ("RDS Proxy stand-in") and in its
    repr; it does not pretend to be a server version of its own (the server's
    ParameterStatus messages pass through unchanged).

    It runs in a thread of the calling process, so it shares the GIL with the
    test's own threads: beside many busy writer threads it relays several
    times slower than a direct connection, which is enough for a test bed.
    psycopg 3's blocking ``Connection.cancel()`` holds the GIL inside libpq
    while it waits for the stand-in, which then cannot answer: cancel with
    ``cancel_safe()`` instead.

    Args:
        client: a boto3 ``secretsmanager`` client (e.g. `LocalSecretsManager.client()`).
        secret_id: the application's secret (its ``username`` is the user let through).
        target: (host, port) of PostgreSQL.
        refresh_interval: seconds between background reads; None: only at start
            and on `refresh_now()`.
        host: the address to listen on.
        port: the TCP port; by default a free one.
    """

    def __init__(
        self,
        client: SecretsManagerClient,
        secret_id: str,
        *,
        target: tuple[str, int],
        refresh_interval: float | None = 30.0,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        if refresh_interval is not None and refresh_interval <= 0:
            raise ValueError("refresh_interval must be positive (or None: no background reads)")
        self._client = client
        self._secret_id = secret_id
        self._target = target
        self._refresh_interval = refresh_interval
        self._host = host
        self._port = port
        # Guards the credentials, the counters and `reads`; waiters sleep on it.
        self._state = threading.Condition()
        self._credentials: ProxyCredentials | None = None
        self._refusals: Counter[str] = Counter()
        self._passed: Counter[str] = Counter()
        self._reads = 0
        self._read_lock = threading.Lock()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._port}" if self._port else "not started"
        return f"LocalRdsProxy({where}, stand-in for RDS Proxy)"

    @property
    def host(self) -> str:
        """The address the stand-in listens on."""
        return self._host

    # -- what it knows and did ------------------------------------------------

    @property
    def credentials(self) -> ProxyCredentials | None:
        """The user it lets through and the version it came from (None before the first read)."""
        with self._state:
            return self._credentials

    @property
    def refusals(self) -> Counter[str]:
        """Logins refused for lack of credentials, per user (a copy)."""
        with self._state:
            return Counter(self._refusals)

    @property
    def passed(self) -> Counter[str]:
        """Connections passed on to PostgreSQL, per user (a copy)."""
        with self._state:
            return Counter(self._passed)

    @property
    def reads(self) -> int:
        """Successful reads of the secret so far."""
        with self._state:
            return self._reads

    def refresh_now(self) -> ProxyCredentials:
        """Read the secret now; returns what the stand-in holds afterwards.

        Raises what boto3 raises when the read fails (what it held is kept).
        """
        with self._read_lock:
            answer = self._client.get_secret_value(
                SecretId=self._secret_id, VersionStage="AWSCURRENT"
            )
            username = str(json.loads(answer["SecretString"])["username"])
            credentials = ProxyCredentials(username, answer["VersionId"])
            with self._state:
                previous, self._credentials = self._credentials, credentials
                self._reads += 1
                self._state.notify_all()
        if previous is None or previous.username != username:
            logger.info(
                "%s: now holds credentials for %r (version %s) only",
                _NAME,
                username,
                credentials.version_id,
            )
        return credentials

    def wait_for_version(self, version_id: str, timeout: float) -> bool:
        """Wait until the stand-in has read `version_id`; False if `timeout` passes first."""
        with self._state:
            return self._state.wait_for(
                lambda: (
                    self._credentials is not None and self._credentials.version_id == version_id
                ),
                timeout,
            )

    def wait_for_refusals(self, user: str, count: int, timeout: float) -> bool:
        """Wait until `count` logins of `user` were refused; False if `timeout` passes first."""
        with self._state:
            return self._state.wait_for(lambda: self._refusals[user] >= count, timeout)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> LocalRdsProxy:
        """Read the secret, listen, and start the background reads."""
        if self._loop is not None:
            raise RuntimeError("LocalRdsProxy is already started")
        self._stopping.clear()
        self.refresh_now()
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
        if self._refresh_interval is not None:
            self._spawn(self._read_periodically, "reads")
        logger.info(
            "%s listening on %s:%d in front of %s:%d, reading the secret every %s",
            _NAME,
            self._host,
            self._port,
            *self._target,
            f"{self._refresh_interval} s" if self._refresh_interval else "(never: refresh_now())",
        )
        return self

    def stop(self) -> None:
        """Stop listening, close every relayed connection, stop the background reads."""
        self._stopping.set()
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
            logger.info("%s on port %s stopped", _NAME, self._port)

    def _spawn(self, target: object, what: str) -> None:
        thread = threading.Thread(
            target=target,  # type: ignore[arg-type]
            name=f"LocalRdsProxy-{what}:{self._port}",
            daemon=True,
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

    def _read_periodically(self) -> None:
        assert self._refresh_interval is not None
        while not self._stopping.wait(self._refresh_interval):
            try:
                self.refresh_now()
            except Exception as exc:  # a failed read keeps what it held, as RDS Proxy does
                logger.warning("%s: reading the secret failed: %s", _NAME, type(exc).__name__)

    # -- the protocol ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            startup = await asyncio.wait_for(self._read_startup(reader, writer), _STARTUP_TIMEOUT)
            if startup is not None:
                await self._answer(startup, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            logger.debug("%s: client connection ended: %r", _NAME, exc)
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

    async def _answer(
        self, startup: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        user = _startup_parameters(startup[8:]).get("user", "")
        with self._state:
            known = self._credentials.username if self._credentials else None
            if user != known:
                self._refusals[user] += 1
                self._state.notify_all()
            else:
                self._passed[user] += 1
        if user != known:
            logger.debug("%s: refused %r: no credentials for it", _NAME, user)
            writer.write(_fatal("28000", no_credentials_message(user)))
            await writer.drain()
            return
        upstream_reader, upstream_writer = await asyncio.wait_for(
            asyncio.open_connection(*self._target), _CONNECT_TIMEOUT
        )
        self._connections.add(upstream_writer)
        try:
            upstream_writer.write(startup)
            await upstream_writer.drain()
            await asyncio.gather(_relay(reader, upstream_writer), _relay(upstream_reader, writer))
        finally:
            self._connections.discard(upstream_writer)
            upstream_writer.close()

    async def _forward_cancel(self, message: bytes) -> None:
        _, upstream_writer = await asyncio.wait_for(
            asyncio.open_connection(*self._target), _CONNECT_TIMEOUT
        )
        upstream_writer.write(message)
        await upstream_writer.drain()
        upstream_writer.close()


async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy bytes until `source` ends, then close `sink` (which ends the other direction)."""
    try:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


def _startup_parameters(body: bytes) -> dict[str, str]:
    """The name/value pairs of a StartupMessage body (after length and protocol)."""
    parts = body.split(b"\x00")
    pairs = [part.decode("utf-8", "replace") for part in parts]
    return dict(zip(pairs[0::2], pairs[1::2], strict=False))


def _fatal(sqlstate: str, message: str) -> bytes:
    """An ErrorResponse message, severity FATAL."""
    fields = b"".join(
        kind + value.encode() + b"\x00"
        for kind, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    payload = fields + b"\x00"
    return b"E" + struct.pack("!I", len(payload) + 4) + payload
