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
import threading
from typing import TYPE_CHECKING, NamedTuple

from rotating_pool.testing._wire import WireFront, error_response, relay, startup_parameters

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["LocalRdsProxy", "ProxyCredentials", "no_credentials_message"]

logger = logging.getLogger("rotating_pool.testing")

_NAME = "RDS Proxy stand-in"


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


class LocalRdsProxy(WireFront):
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

    name = _NAME

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
        super().__init__(target, host, port)
        self._client = client
        self._secret_id = secret_id
        self._refresh_interval = refresh_interval
        # `_state` also guards the credentials and `reads`.
        self._credentials: ProxyCredentials | None = None
        self._reads = 0
        self._read_lock = threading.Lock()
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._port}" if self._port else "not started"
        return f"LocalRdsProxy({where}, stand-in for RDS Proxy)"

    # -- what it knows and did ------------------------------------------------

    @property
    def credentials(self) -> ProxyCredentials | None:
        """The user it lets through and the version it came from (None before the first read)."""
        with self._state:
            return self._credentials

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

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> LocalRdsProxy:
        """Read the secret, listen, and start the background reads."""
        if self._loop is not None:
            raise RuntimeError("LocalRdsProxy is already started")
        self._stopping.clear()
        self.refresh_now()
        self._listen()
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
        self._close()

    def _read_periodically(self) -> None:
        assert self._refresh_interval is not None
        while not self._stopping.wait(self._refresh_interval):
            try:
                self.refresh_now()
            except Exception as exc:  # a failed read keeps what it held, as RDS Proxy does
                logger.warning("%s: reading the secret failed: %s", _NAME, type(exc).__name__)

    # -- the protocol ---------------------------------------------------------

    async def _answer(
        self, startup: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        user = startup_parameters(startup[8:]).get("user", "")
        with self._state:
            known = self._credentials.username if self._credentials else None
            if user != known:
                self._refusals[user] += 1
                self._state.notify_all()
            else:
                self._passed[user] += 1
        if user != known:
            logger.debug("%s: refused %r: no credentials for it", _NAME, user)
            writer.write(error_response("FATAL", no_credentials_message(user), "28000"))
            await writer.drain()
            return
        upstream_reader, upstream_writer = await self._open_upstream()
        try:
            upstream_writer.write(startup)
            await upstream_writer.drain()
            await asyncio.gather(relay(reader, upstream_writer), relay(upstream_reader, writer))
        finally:
            self._release_upstream(upstream_writer)
