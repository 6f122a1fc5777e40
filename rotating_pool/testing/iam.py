"""A LOCAL STAND-IN for RDS IAM database authentication, for tests and demos.

NOT Amazon RDS: a small asyncio server speaking the PostgreSQL wire protocol
on 127.0.0.1, in front of the bed's PostgreSQL, that checks logins as RDS does
for a user granted ``rds_iam``: over TLS it asks for the password in clear,
takes it as an RDS auth token and checks it (`check_token`: SigV4 signature
recomputed with botocore from the bed's test keys, ``Action=connect``,
``DBUser`` equal to the startup user, host and port, region, ``X-Amz-Date`` +
``X-Amz-Expires`` not past). A bad token is refused as RDS words it,
``FATAL: PAM authentication failed for user "USER"`` (SQLSTATE 28000); a good
one is logged in to PostgreSQL with the user's real password (SCRAM, by
scramp) and the session is passed through byte for byte.

>>> rds = LocalIamAuth((pg.host, pg.port), {"alice": pw}, keys={key_id: secret})  # doctest: +SKIP
>>> with rds:  # doctest: +SKIP
...     url = f"postgresql+psycopg://alice@{rds.host}:{rds.port}/app"
...     rds.refusals   # Counter of refusal reasons
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rotating_pool.testing._iam_token import check_token, signed_at
from rotating_pool.testing._process import LocalService, free_port
from rotating_pool.testing._wire import error_response, relay, startup_parameters
from rotating_pool.testing.tls import CertificateAuthority

__all__ = ["LocalIamAuth", "pam_failed_message"]

logger = logging.getLogger("rotating_pool.testing")

_NAME = "RDS IAM auth stand-in"
_PROTOCOL_3 = 196608
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_MAX_STARTUP = 10_000
_MAX_MESSAGE = 65_536
_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


def pam_failed_message(user: str) -> str:
    """RDS's message for a refused IAM token (SQLSTATE 28000)."""
    return f'PAM authentication failed for user "{user}"'


class LocalIamAuth(LocalService):
    """A LOCAL STAND-IN for RDS IAM database authentication (not the AWS service).

    Args:
        target: (host, port) of PostgreSQL, reached without TLS.
        passwords: the real password of each IAM user it lets through (the
            stand-in logs in with it; the client never knows it).
        keys: access key id -> secret key: the AWS keys whose tokens it accepts.
        region: the region tokens must be signed for.
        clock: Unix time, for the tokens' expiry (tests move it forward).
        port: the TCP port; by default a free one.

    Counters: `accepted` (logins passed through, per user) and `refusals`
    (per reason: "bad signature", "wrong user", "wrong host", "expired",
    "unknown key", "no TLS", ...). Every log record and its repr say what it is.
    """

    def __init__(
        self,
        target: tuple[str, int],
        passwords: Mapping[str, str],
        *,
        keys: Mapping[str, str],
        region: str = "us-east-1",
        clock: Callable[[], float] = time.time,
        port: int | None = None,
    ) -> None:
        self._target = target
        self._passwords = dict(passwords)
        self._keys = dict(keys)
        self._region = region
        self._clock = clock
        self._port = port
        self._state = threading.Condition()
        self._accepted: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._signed_at: list[float] = []
        self._not_before = 0.0
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._tls: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else "not started"
        return f"LocalIamAuth({where}, stand-in for RDS IAM authentication)"

    @property
    def endpoint(self) -> str:
        """``host:port``, what a token must be signed for."""
        return f"{self.host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        """The CA certificate clients verify the stand-in's certificate against."""
        if self._directory is None:
            raise RuntimeError("LocalIamAuth has no CA yet: call start() first")
        return Path(self._directory.name) / "ca.pem"

    def tls_params(self) -> dict[str, Any]:
        """libpq parameters that verify the stand-in (``verify-full`` against `ca_path`)."""
        return {"sslmode": "verify-full", "sslrootcert": str(self.ca_path)}

    @property
    def accepted(self) -> Counter[str]:
        """Logins passed through to PostgreSQL, per user (a copy)."""
        with self._state:
            return Counter(self._accepted)

    @property
    def refusals(self) -> Counter[str]:
        """Refused logins, per reason (a copy)."""
        with self._state:
            return Counter(self._refusals)

    @property
    def signing_times(self) -> list[float]:
        """When each token let through was signed (its ``X-Amz-Date``), in order."""
        with self._state:
            return list(self._signed_at)

    def expire_tokens_signed_before(self, when: float) -> None:
        """Refuse as expired every token signed before `when` (Unix time), as if
        their 15 minutes had passed: a short lifetime, for tests."""
        with self._state:
            self._not_before = when

    def accept_only(self, keys: Mapping[str, str]) -> None:
        """From now on accept tokens signed with these keys only (a key rotation)."""
        with self._state:
            self._keys = dict(keys)
        logger.info("%s: now accepts %d access key(s)", _NAME, len(keys))

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> LocalIamAuth:
        """Make a CA and a certificate for 127.0.0.1, and listen."""
        if self._loop is not None:
            raise RuntimeError("LocalIamAuth is already started")
        self._directory = tempfile.TemporaryDirectory(prefix="rotating_pool-iam-")
        directory = Path(self._directory.name)
        ca = CertificateAuthority.create("rotating_pool RDS IAM stand-in CA")
        ca.write_cert(directory / "ca.pem")
        ca.issue_server_cert([self.host], directory / "server.crt", directory / "server.key")
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(directory / "server.crt", directory / "server.key")
        if self._port is None:
            self._port = free_port(self.host)
        loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, self.host, self._port)
            )
        except BaseException:
            loop.close()
            raise
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"LocalIamAuth:{self._port}", daemon=True
        )
        self._thread.start()
        logger.info("%s listening on %s in front of %s:%d", _NAME, self.endpoint, *self._target)
        return self

    def stop(self) -> None:
        """Stop listening and close every connection; safe to call twice."""
        loop, self._loop = self._loop, None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._shut_down(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join()
            loop.close()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    async def _shut_down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._connections):
            writer.close()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT)
            for task in pending:
                task.cancel()

    # -- the protocol ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            upstream = await asyncio.wait_for(self._login(reader, writer), _TIMEOUT)
            if upstream is not None:  # the session is the client's from here
                upstream_reader, upstream_writer = upstream
                try:
                    await asyncio.gather(
                        relay(reader, upstream_writer), relay(upstream_reader, writer)
                    )
                finally:
                    self._connections.discard(upstream_writer)
                    upstream_writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            logger.debug("%s: client connection ended: %s", _NAME, type(exc).__name__)
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _login(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Check the login; the upstream session when it is let through, else None."""
        startup, tls = await self._read_startup(reader, writer)
        if startup is None:
            return None
        parameters = startup_parameters(startup[8:])
        user = parameters.get("user", "")
        if not tls:
            # PostgreSQL's own wording for a hostssl-only pg_hba.conf.
            self._refuse("no TLS")
            database = parameters.get("database", user)
            writer.write(
                error_response(
                    "FATAL",
                    f'no pg_hba.conf entry for host "{self.host}", user "{user}", '
                    f'database "{database}", no encryption',
                    "28000",
                )
            )
            return None
        writer.write(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        await writer.drain()
        kind, body = await _read_message(reader)
        if kind != b"p":
            raise ValueError("expected a PasswordMessage")
        token = body.rstrip(b"\x00").decode("utf-8", "replace")
        with self._state:
            keys, not_before = dict(self._keys), self._not_before
        signed = signed_at(token)
        reason = check_token(
            token,
            user=user,
            endpoint=self.endpoint,
            region=self._region,
            keys=keys,
            now=self._clock(),
        )
        if reason is None and (signed is None or signed < not_before):
            reason = "expired"
        if reason is None and user not in self._passwords:
            reason = "not an IAM user here"
        if reason is not None:
            self._refuse(reason)
            logger.debug("%s: refused %r: %s", _NAME, user, reason)  # never the token
            writer.write(error_response("FATAL", pam_failed_message(user), "28000"))
            await writer.drain()
            return None
        upstream = await self._log_in_upstream(startup, user, writer)
        if upstream is not None:
            with self._state:
                self._accepted[user] += 1
                self._signed_at.append(signed or 0.0)
                self._state.notify_all()
        return upstream

    def _refuse(self, reason: str) -> None:
        with self._state:
            self._refusals[reason] += 1
            self._state.notify_all()

    async def _read_startup(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[bytes | None, bool]:
        tls = False
        while True:
            length, code = struct.unpack("!II", await reader.readexactly(8))
            if not 8 <= length <= _MAX_STARTUP:
                raise ValueError("bad startup packet length")
            body = await reader.readexactly(length - 8)
            if code == _SSL_REQUEST and not tls:
                writer.write(b"S")
                await writer.drain()
                assert self._tls is not None
                await writer.start_tls(self._tls)
                tls = True
                continue
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                writer.write(b"N")
                await writer.drain()
                continue
            if code == _CANCEL_REQUEST:
                _, upstream = await asyncio.open_connection(*self._target)
                upstream.write(struct.pack("!II", length, code) + body)
                await upstream.drain()
                upstream.close()
                return None, tls
            if code != _PROTOCOL_3:
                raise ValueError("unsupported protocol")
            return struct.pack("!II", length, code) + body, tls

    async def _log_in_upstream(
        self, startup: bytes, user: str, client: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Log in to PostgreSQL as `user` with its real password; None if it refused
        (its ErrorResponse is passed to the client)."""
        from scramp import ScramClient  # noqa: PLC0415  (the bed's extra)

        reader, writer = await asyncio.open_connection(*self._target)
        self._connections.add(writer)
        writer.write(startup)
        scram: ScramClient | None = None
        while True:
            await writer.drain()
            kind, body = await _read_message(reader)
            if kind == b"E":
                client.write(kind + struct.pack("!I", len(body) + 4) + body)
                writer.close()
                return None
            if kind != b"R":
                raise ValueError("unexpected message during upstream login")
            (code,) = struct.unpack("!I", body[:4])
            if code == 0:  # AuthenticationOk: the session is the client's from here
                client.write(b"R" + struct.pack("!II", 8, 0))
                return reader, writer
            if code == 10:  # AuthenticationSASL
                scram = ScramClient(["SCRAM-SHA-256"], user, self._passwords[user])
                first = scram.get_client_first().encode()
                payload = b"SCRAM-SHA-256\x00" + struct.pack("!I", len(first)) + first
            elif code == 11 and scram is not None:  # AuthenticationSASLContinue
                scram.set_server_first(body[4:].decode())
                payload = scram.get_client_final().encode()
            elif code == 12 and scram is not None:  # AuthenticationSASLFinal
                scram.set_server_final(body[4:].decode())
                continue
            else:
                raise ValueError(f"unsupported upstream authentication {code}")
            writer.write(b"p" + struct.pack("!I", len(payload) + 4) + payload)


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    kind = await reader.readexactly(1)
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    if not 4 <= length <= _MAX_MESSAGE:
        raise ValueError("bad message length")
    return kind, await reader.readexactly(length - 4)
