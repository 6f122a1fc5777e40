"""Retirement: close pooled connections that logged in with superseded credentials.

PostgreSQL keeps a session open after its password changed, and SQLAlchemy's
pool keeps a connection for as long as ``pool_recycle`` says (forever by
default). With ``retire_after=SECONDS`` (`rotating_pool.create_engine`,
`attach`), once the credentials in use change, every pooled connection made
with the previous ones is closed within that many seconds of the rotation, and
the pool replaces it at its next checkout:

- **Noticing.** A busy pool makes no new login, so nothing is refused and
  nothing tells the process that the secret rotated. Retirement subscribes to
  the store (`CredentialStore.subscribe` with ``refresh_every``): the store
  refreshes at least every ``poll_interval`` seconds (a tenth of
  ``retire_after``, at least 1 s), and retirement's scheduler asks it to
  (`CredentialStore.refresh_if_due`) on a clock of its own.
- **Which connections.** The ``do_connect`` hook records on each
  ``ConnectionPoolEntry.info`` which credentials it logged in with (`Login`:
  the user, the version id and a keyed fingerprint, never the password).
- **When.** Each superseded connection gets its own moment, drawn at random
  within the middle half of its own slice of the retirement window
  (stratified jitter): n
  connections over a window of W seconds are retired at most ceil(n / W) + 1
  in any second, and a fleet of processes, each drawing its own moments,
  spreads its reconnects the same way.
- **How.** Never while checked out: a connection in use is marked and closed
  when it is checked in (with a warning when that is after the deadline: a
  transaction is never cut). An idle connection is taken out of the pool's
  queue under the queue's own lock, closed and put back empty; the pool logs
  in again at its next checkout. ``invalidate(soft=True)`` alone would not do:
  it closes a connection only at its next checkout, and an idle pool has none.
  That one step uses the pool's internals (`QueuePool` and
  `AsyncAdaptedQueuePool`, SQLAlchemy 2.0 and 2.1); with any other pool class
  idle connections are retired at their next checkout.

Everything else goes through SQLAlchemy's pool events (``connect``,
``checkout``, ``checkin``), so any driver works: psycopg, psycopg2, pg8000,
asyncpg. Async engines' pools are touched only on their event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, exc
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util import queue as sqla_queue

from rotating_pool.core.retirement import (
    MIN_POLL_INTERVAL,
    MIN_RETIRE_AFTER,
    max_per_second,
    poll_interval,
    retirement_times,
    retirement_window,
    validate_retire_after,
)
from rotating_pool.secret import Credentials

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection

    from rotating_pool.store import CredentialStore

__all__ = [
    "LOGIN_KEY",
    "MIN_POLL_INTERVAL",
    "MIN_RETIRE_AFTER",
    "Login",
    "Retirement",
    "login_of",
    "max_per_second",
    "poll_interval",
    "record_login",
    "retirement_times",
    "retirement_window",
    "validate_retire_after",
]

logger = logging.getLogger("rotating_pool")

LOGIN_KEY = "rotating_pool.login"
"""Key of the `Login` in a ``ConnectionPoolEntry.info``."""

_DUE_KEY = "rotating_pool.retire_due"  # deadline (monotonic): close at checkin
_OUT_KEY = "rotating_pool.checked_out"  # when it was checked out (monotonic)

# One key per process: a fingerprint tells two logins apart within this
# process and proves nothing outside it (no offline guessing of a password).
_FINGERPRINT_KEY = os.urandom(16)


@dataclass(frozen=True)
class Login:
    """Which credentials a DBAPI connection logged in with; never the password.

    Attributes:
        username: the database user.
        version_id: the secret version, when the read told it.
        fingerprint: a keyed hash of what `Credentials` compares (user,
            password, host, port, dbname), random per process.
    """

    username: str
    version_id: str | None
    fingerprint: str


def login_of(credentials: Credentials) -> Login:
    """The `Login` that records `credentials`.

    Every new connection records its login, almost always with the same
    `Credentials` object (the store's), so the last answer is kept: the keyed
    hash costs about 20 us with the caches cold after a login.
    """
    global _last_login
    last = _last_login
    if last is not None and last[0] is credentials:
        return last[1]
    login = _login_of(credentials)
    _last_login = (credentials, login)  # one tuple: a racing thread sees old or new whole
    return login


_last_login: tuple[Credentials, Login] | None = None


def _login_of(credentials: Credentials) -> Login:
    digest = hashlib.blake2b(key=_FINGERPRINT_KEY, digest_size=8)
    for part in (
        credentials.username,
        credentials.password,
        credentials.host or "",
        str(credentials.port or ""),
        credentials.dbname or "",
    ):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return Login(credentials.username, credentials.version_id, digest.hexdigest())


def record_login(conn_rec: ConnectionPoolEntry, credentials: Credentials) -> None:
    """Note on the pool entry which credentials its new connection logged in with."""
    conn_rec.info[LOGIN_KEY] = login_of(credentials)


class _Scheduler:
    """One daemon thread per process running jobs at given monotonic times."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def at(self, when: float, job: Callable[[], None]) -> None:
        """Run `job` at `when` (``time.monotonic()``), or soon after."""
        with self._cond:
            self._start_if_needed()
            heapq.heappush(self._heap, (when, next(self._order), job))
            self._cond.notify()

    def _start_if_needed(self) -> None:
        # Caller holds the condition. After a fork the thread is gone and the
        # parent's jobs are the parent's (its connections must not be closed here).
        if self._pid != os.getpid():
            self._heap, self._thread, self._pid = [], None, os.getpid()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="rotating_pool-retire", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                _, _, job = heapq.heappop(self._heap)
            try:
                job()
            except Exception:  # a job must never stop the others
                logger.exception("rotating_pool: a retirement job failed")


_scheduler = _Scheduler()


def _after_fork_in_child() -> None:
    # The condition's lock may have been held by a thread the child lacks.
    global _scheduler
    _scheduler = _Scheduler()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Retirement:
    """Retires one engine's connections on superseded credentials; see the module docstring.

    Made by `rotating_pool.attach` when ``retire_after`` is set; it listens to
    the engine's pool events and to the store, and holds the engine weakly.

    Args:
        engine: the (sync) engine whose pool to watch.
        store: the credential store the engine logs in with.
        retire_after: seconds from a rotation to its last superseded connection.
        on_retired: called with the `Login` of each connection retired
            (metrics); never with a password.
        rng: random source for the moments (a seeded one makes them repeatable).
    """

    def __init__(
        self,
        engine: Engine,
        store: CredentialStore,
        retire_after: float,
        *,
        on_retired: Callable[[Login], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.retire_after = retire_after
        self.window = retirement_window(retire_after)
        self.poll_interval = poll_interval(retire_after)
        self.retired = 0
        self._engine = weakref.ref(engine)
        self._store = store
        self._secret_id = store.secret_id
        self._is_async = engine.dialect.is_async
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_retired = on_retired
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._records: weakref.WeakSet[ConnectionPoolEntry] = weakref.WeakSet()
        self._planned: weakref.WeakKeyDictionary[ConnectionPoolEntry, Login] = (
            weakref.WeakKeyDictionary()
        )
        self._current: Login | None = None
        self._pid = -1
        self._polling_pid = -1
        event.listen(engine, "connect", self._on_connect)
        event.listen(engine, "checkout", self._on_checkout)
        event.listen(engine, "checkin", self._on_checkin)
        self_ref = weakref.ref(self)
        unsubscribe: Callable[[], None] | None = None

        def changed(previous: Credentials | None, new: Credentials) -> None:
            retirement = self_ref()
            if retirement is None:
                if unsubscribe is not None:
                    # Later, from the scheduler: the store's lock is held here.
                    _scheduler.at(time.monotonic(), unsubscribe)
                return
            retirement._changed(previous, new)

        unsubscribe = store.subscribe(changed, refresh_every=self.poll_interval)

    def __repr__(self) -> str:
        return (
            f"<rotating_pool retirement for secret {self._secret_id!r}: "
            f"retire_after={self.retire_after:g}s, {self.retired} retired>"
        )

    def superseded(self) -> list[ConnectionPoolEntry]:
        """Open pool entries whose login is not the current credentials'."""
        current = self._current
        if current is None:
            return []
        with self._lock:
            records = list(self._records)
        return [
            record
            for record in records
            if record.dbapi_connection is not None
            and isinstance(login := record.info.get(LOGIN_KEY), Login)
            and login.fingerprint != current.fingerprint
        ]

    def _has_open_connections(self) -> bool:
        with self._lock:
            records = list(self._records)
        return any(record.dbapi_connection is not None for record in records)

    # -- pool events (any thread, or the event loop for async engines) --------

    def _on_connect(self, dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        self._adopt_process()
        if self._is_async:
            with contextlib.suppress(RuntimeError):  # not on a loop: keep the last one
                self._loop = asyncio.get_running_loop()
        with self._lock:
            self._records.add(record)
        login = record.info.get(LOGIN_KEY)
        if self._current is None and isinstance(login, Login):
            self._current = login  # the first connection, before any change
        self._start_polling()

    def _on_checkout(
        self,
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        proxy: PoolProxiedConnection,
    ) -> None:
        if record.info.get(_DUE_KEY) is not None:
            # Marked while it was on its way into the pool: replace it now,
            # before anyone uses it (SQLAlchemy reconnects the entry).
            self._count(record)
            raise exc.DisconnectionError("rotating_pool: retiring a superseded connection")
        record.info[_OUT_KEY] = time.monotonic()

    def _on_checkin(
        self, dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry
    ) -> None:
        since = record.info.pop(_OUT_KEY, None)
        deadline = record.info.get(_DUE_KEY)
        if deadline is None or dbapi_connection is None:
            return
        now = time.monotonic()
        if now > deadline:
            login = record.info.get(LOGIN_KEY)
            logger.warning(
                "secret %r: a connection logged in as %r (version %s) was checked out for "
                "%.1f s, %.1f s past its retirement deadline; closed now that it is checked in",
                self._secret_id,
                login.username if isinstance(login, Login) else "?",
                (login.version_id if isinstance(login, Login) else None) or "from the cache",
                now - since if since is not None else float("nan"),
                now - deadline,
            )
        self._count(record)
        record.invalidate()  # the entry stays in the pool and reconnects at its next checkout

    # -- noticing a change ----------------------------------------------------

    def _adopt_process(self) -> None:
        if self._pid != os.getpid():
            # A forked child: the parent's connections are not ours to close.
            with self._lock:
                self._records = weakref.WeakSet()
                self._planned = weakref.WeakKeyDictionary()
            self._pid = os.getpid()

    def _start_polling(self) -> None:
        if self._polling_pid == os.getpid():
            return
        self._polling_pid = os.getpid()
        self._schedule_poll(time.monotonic())

    def _schedule_poll(self, now: float) -> None:
        self_ref = weakref.ref(self)

        def poll() -> None:
            retirement = self_ref()
            if retirement is None or retirement._engine() is None:
                return  # the engine is gone: stop polling
            if retirement._has_open_connections():  # nothing to retire, nothing to notice
                retirement._store.refresh_if_due()  # never waits
            retirement._schedule_poll(time.monotonic())

        # The store refreshes when its own (jittered) interval is due; ticking
        # at a quarter of it keeps the delay to notice under 1.25 intervals.
        _scheduler.at(now + max(0.25, self.poll_interval / 4), poll)

    def _changed(self, previous: Credentials | None, new: Credentials) -> None:
        # Called with the store's lock held: only note it and hand over.
        self._current = login_of(new)
        if previous is not None:
            self_ref = weakref.ref(self)
            _scheduler.at(time.monotonic(), lambda: _call(self_ref, "_plan"))

    def _plan(self) -> None:
        """Give each newly superseded connection its moment in the window."""
        current = self._current
        now = time.monotonic()
        deadline = now + self.window
        fresh = []
        for record in self.superseded():
            login = record.info.get(LOGIN_KEY)
            assert isinstance(login, Login)
            if self._planned.get(record) != login:
                self._planned[record] = login
                fresh.append((record, login))
        if not fresh:
            return
        self._rng.shuffle(fresh)
        moments = retirement_times(len(fresh), now, self.window, self._rng)
        for (record, login), moment in zip(fresh, moments, strict=True):
            record_ref = weakref.ref(record)
            _scheduler.at(moment, self._job(record_ref, login, deadline))
        # Connections that logged in with the old credentials while the change
        # was under way, or that slipped into the pool unmarked: one last look.
        _scheduler.at(deadline, self._job(None, None, deadline))
        logger.info(
            "secret %r: retiring %d connection(s) on superseded credentials over %.1f s "
            "(now using user %r, version %s)",
            self._secret_id,
            len(fresh),
            self.window,
            current.username if current else "?",
            (current.version_id if current else None) or "from the cache",
        )

    def _job(
        self,
        record_ref: weakref.ref[ConnectionPoolEntry] | None,
        login: Login | None,
        deadline: float,
    ) -> Callable[[], None]:
        self_ref = weakref.ref(self)

        def job() -> None:
            retirement = self_ref()
            if retirement is None:
                return
            if record_ref is None:
                retirement._in_engine(lambda: retirement._sweep(deadline))
                return
            record = record_ref()
            if record is not None and login is not None:
                retirement._in_engine(lambda: retirement._retire(record, login, deadline))

        return job

    # -- retiring (in the engine's context: any thread, or its event loop) ----

    def _in_engine(self, action: Callable[[], None]) -> None:
        """Run `action` where the pool may be touched: here for a sync engine,
        on the engine's event loop (inside SQLAlchemy's greenlet bridge) for an
        async one."""
        if not self._is_async:
            action()
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            future = asyncio.run_coroutine_threadsafe(greenlet_spawn(action), loop)
        except RuntimeError:  # the loop stopped meanwhile
            return
        future.add_done_callback(_log_failure)

    def _retire(self, record: ConnectionPoolEntry, login: Login, deadline: float) -> None:
        if record.dbapi_connection is None or record.info.get(LOGIN_KEY) != login:
            return  # closed or replaced meanwhile
        engine = self._engine()
        if engine is None:
            return
        pool = engine.pool
        if _take_idle(pool, record):
            try:
                self._count(record)
                record.close()
            finally:
                pool._return_conn(record)  # back in the queue, empty: reconnects at checkout
        else:
            record.info[_DUE_KEY] = deadline  # in use: closed at checkin

    def _sweep(self, deadline: float) -> None:
        for record in self.superseded():
            login = record.info.get(LOGIN_KEY)
            if isinstance(login, Login) and record.info.get(_DUE_KEY) is None:
                self._retire(record, login, deadline)

    def _count(self, record: ConnectionPoolEntry) -> None:
        login = record.info.get(LOGIN_KEY)
        with self._lock:
            self.retired += 1
            self._planned.pop(record, None)
        if isinstance(login, Login):
            logger.debug(
                "secret %r: retired a connection logged in as %r (version %s)",
                self._secret_id,
                login.username,
                login.version_id or "from the cache",
            )
            if self._on_retired is not None:
                self._on_retired(login)


def _take_idle(pool: Pool, record: ConnectionPoolEntry) -> bool:
    """Take `record` out of the pool's queue of idle connections, if it is there.

    Holding the queue's lock (for an async pool: running on its loop) while
    looking and removing means no checkout can hand the record out meanwhile.
    """
    queue: Any = getattr(pool, "_pool", None)
    if isinstance(queue, sqla_queue.Queue):
        with queue.mutex:
            try:
                queue.queue.remove(record)
            except ValueError:
                return False
            queue.not_full.notify()
            return True
    if isinstance(queue, sqla_queue.AsyncAdaptedQueue):
        items: Any = getattr(queue._queue, "_queue", None)
        if items is None:
            return False
        try:
            items.remove(record)
        except ValueError:
            return False
        return True
    return False


def _call(ref: weakref.ref[Retirement], method: str) -> None:
    target = ref()
    if target is not None:
        getattr(target, method)()


def _log_failure(future: Any) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        logger.error("rotating_pool: retiring a connection failed: %s", type(error).__name__)
