"""A LOCAL STAND-IN for a connection pooler nobody listed, in front of PostgreSQL, for tests.

NOT a real pooler: a small asyncio server speaking the PostgreSQL wire
protocol on 127.0.0.1 that relays every login to PostgreSQL and behaves as a
pooler whose server connections learn a new password only when they are
reopened. After a user's password changes, the logins that land on a server
connection opened before the change are refused, in words that no list in
rotating_pool knows, at severity ERROR and with no SQLSTATE, for as long as
those connections live; logins that land elsewhere pass. Which connection a
login lands on is chance.

>>> with UnlistedRefusalPooler(target=(pg.host, pg.port)) as pooler:  # doctest: +SKIP
...     url = f"postgresql+psycopg://{pooler.host}:{pooler.port}/app"
...     pooler.refusals   # Counter of refused logins per user
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import Counter
from dataclasses import dataclass

from rotating_pool.testing._wire import (
    WireFront,
    error_response,
    read_message,
    relay,
    startup_parameters,
)

__all__ = ["UNLISTED_WORDING", "UnlistedRefusalPooler"]

logger = logging.getLogger("rotating_pool.testing")

_NAME = "unlisted-refusal pooler stand-in"

UNLISTED_WORDING = "login denied: upstream link {slot} still holds an older authentication record"
"""The stand-in's refusal, ``{slot}`` the server connection's number. Made up
on purpose: no list of wordings in rotating_pool (nor in any pooler known to
the project) contains it."""

# Authentication request codes (PostgreSQL protocol, AuthenticationXXX).
_AUTH_OK = 0
_AUTH_SASL_CONTINUE = 11


@dataclass
class _Change:
    """A user's password change as the stand-in saw it."""

    stale: frozenset[int]  # the server connections opened before it
    until: float  # when the last of them closes (monotonic clock)


class UnlistedRefusalPooler(WireFront):
    """A LOCAL STAND-IN for a pooler whose refusal wording no list holds (not a product).

    Its model of a pooler: `server_connections` pooled server connections, a
    login landing on one of them at random. Toward a client:

    - Every login is relayed to PostgreSQL, which runs the SCRAM exchange and
      checks the password. The stand-in reads the salt in PostgreSQL's
      server-first-message: the salt is part of the stored verifier, so a new
      salt for a user means that user's password changed. (SCRAM only: with
      another method it sees no change and refuses nothing.)
    - At the first new salt of a user (the first login of that user after the
      change, whatever password it brings), `stale_connections` of the server
      connections, chosen at random, count as opened before the change; they
      live `stale_for` seconds more, then are replaced.
    - A login of that user that PostgreSQL accepts (the new password) but that
      lands on one of those connections while they live is refused: an
      ErrorResponse with severity ``ERROR`` (not FATAL), no SQLSTATE field,
      message `UNLISTED_WORDING`, instead of PostgreSQL's AuthenticationOk;
      the connection is closed. Counted per user in `refusals`.
    - Every other login is passed through byte for byte (`passed`), and so are
      PostgreSQL's own refusals (an old password gets PostgreSQL's wording).
    - SSLRequest and GSSENCRequest are answered 'N' (no TLS); CancelRequest is
      forwarded to PostgreSQL.

    With the defaults (1 of 3 connections, 4 s) a third of the logins with
    the new password are refused for 4 s after each change is first seen:
    longer than a rotation every 2 s, so that in an alternating-users
    rotation the user a client comes back to is still refused on some of
    them (its password changed one rotation earlier).

    It says what it is in every log record and in its repr. It runs in a
    thread of the calling process (see `LocalRdsProxy` on what that costs).

    Args:
        target: (host, port) of PostgreSQL.
        server_connections: how many server connections logins land on (>= 1).
        stale_connections: how many of them were opened before a change (0 to all).
        stale_for: seconds those live after the change is first seen (> 0).
        seed: seeds the chance of where a login lands (None: unseeded).
        host: the address to listen on.
        port: the TCP port; by default a free one.
    """

    name = _NAME

    def __init__(
        self,
        *,
        target: tuple[str, int],
        server_connections: int = 3,
        stale_connections: int = 1,
        stale_for: float = 4.0,
        seed: int | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        if server_connections < 1:
            raise ValueError("server_connections must be at least 1")
        if not 0 <= stale_connections <= server_connections:
            raise ValueError("stale_connections must be between 0 and server_connections")
        if not stale_for > 0:
            raise ValueError("stale_for must be a positive number of seconds")
        super().__init__(target, host, port)
        self._slots = server_connections
        self._stale_count = stale_connections
        self._stale_for = stale_for
        self._rng = random.Random(seed)
        # `_state` also guards what follows.
        self._salts: dict[str, bytes] = {}
        self._changes: dict[str, _Change] = {}
        self._seen_changes: Counter[str] = Counter()

    def __repr__(self) -> str:
        where = f"{self._host}:{self._port}" if self._port else "not started"
        return f"UnlistedRefusalPooler({where}, stand-in for a pooler, not a product)"

    # -- what it saw and did --------------------------------------------------

    @property
    def changes(self) -> Counter[str]:
        """Password changes seen, per user (a copy)."""
        with self._state:
            return Counter(self._seen_changes)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> UnlistedRefusalPooler:
        """Listen."""
        self._listen()
        logger.info(
            "%s listening on %s:%d in front of %s:%d: %d of %d server connections stale "
            "for %.1f s after a password change",
            _NAME,
            self._host,
            self._port,
            *self._target,
            self._stale_count,
            self._slots,
            self._stale_for,
        )
        return self

    def stop(self) -> None:
        """Stop listening and close every relayed connection."""
        self._close()

    # -- the model ------------------------------------------------------------

    def _saw_salt(self, user: str, salt: bytes) -> None:
        with self._state:
            before = self._salts.get(user)
            self._salts[user] = salt
            if before is None or before == salt:
                return
            stale = frozenset(self._rng.sample(range(self._slots), self._stale_count))
            self._changes[user] = _Change(stale, time.monotonic() + self._stale_for)
            self._seen_changes[user] += 1
        logger.info(
            "%s: the password of %r changed; server connections %s refuse it for %.1f s",
            _NAME,
            user,
            sorted(stale),
            self._stale_for,
        )

    def _lands_on_stale(self, user: str) -> int | None:
        """Where an accepted login lands: the stale connection's number, or None."""
        with self._state:
            slot = self._rng.randrange(self._slots)
            change = self._changes.get(user)
            if change is not None and time.monotonic() >= change.until:
                del self._changes[user]  # the connections from before have closed
                change = None
            if change is not None and slot in change.stale:
                self._refusals[user] += 1
                self._state.notify_all()
                return slot
            self._passed[user] += 1
            return None

    # -- the protocol ---------------------------------------------------------

    async def _answer(
        self, startup: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        user = startup_parameters(startup[8:]).get("user", "")
        upstream_reader, upstream_writer = await self._open_upstream()
        upstream_writer.write(startup)
        to_server = asyncio.ensure_future(relay(reader, upstream_writer))
        try:
            await upstream_writer.drain()
            if await self._authenticate(user, upstream_reader, writer):
                await relay(upstream_reader, writer)
        finally:
            self._release_upstream(upstream_writer)
            writer.close()
            await to_server

    async def _authenticate(
        self, user: str, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Pass PostgreSQL's login messages on until it accepts or refuses.

        Returns False when the stand-in refused the login itself.
        """
        while True:
            kind, body = await read_message(upstream)
            code = struct.unpack("!I", body[:4])[0] if kind == b"R" and len(body) >= 4 else None
            if code == _AUTH_SASL_CONTINUE:
                salt = _scram_salt(body[4:])
                if salt is not None:
                    self._saw_salt(user, salt)
            if code == _AUTH_OK:
                slot = self._lands_on_stale(user)
                if slot is not None:
                    logger.debug("%s: refused %r on server connection %d", _NAME, user, slot)
                    writer.write(error_response("ERROR", UNLISTED_WORDING.format(slot=slot)))
                    await writer.drain()
                    return False
            writer.write(kind + struct.pack("!I", len(body) + 4) + body)
            await writer.drain()
            if code == _AUTH_OK or kind == b"E":
                return True  # the rest (or the end) is relayed as it comes


def _scram_salt(server_first: bytes) -> bytes | None:
    """The ``s=`` attribute of a SCRAM server-first-message (RFC 5802), or None."""
    for attribute in server_first.split(b","):
        if attribute.startswith(b"s="):
            return attribute[2:]
    return None
