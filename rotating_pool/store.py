"""The credentials in use for one secret, and how they are kept fresh.

`CredentialStore` answers two questions, and only the second may wait on
Secrets Manager:

- `current()`: what to log in with now. After the first load it never blocks:
  when the refresh interval has passed, one caller starts a background refresh
  (botocore's `RefreshableCredentials` does the same for AWS keys) and every
  caller, that one included, goes on with the credentials in hand. While
  Secrets Manager is slow or down, the last good credentials stay in use.
- `refetch(rejected)`: these credentials were just refused, what else is
  there? Single-flight: threads refused with the same credentials share one
  fetch. It reads AWSCURRENT and, when that has not moved, AWSPENDING (the
  password a single-user rotation is setting): at most 2 GetSecretValue calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from rotating_pool.errors import RotatingPoolError
from rotating_pool.secret import AWSCURRENT, AWSPENDING, Credentials
from rotating_pool.sources import SecretSource

__all__ = ["CredentialStore", "Flight", "Stats"]

logger = logging.getLogger("rotating_pool")

Answer = Credentials | BaseException | None


@dataclass(frozen=True)
class Stats:
    """Counters of one engine's logins and secret reads since it was set up.

    Attributes:
        logins: logins tried through rotating_pool (first tries and retries).
        rejected_logins: logins the database refused.
        recovered_logins: connections that succeeded after at least one refusal.
        failed_recoveries: connections given up on (`LoginRejectedError`).
        refetches: single-flight refetches run after a refusal (1-2 API calls each).
        refetch_joins: refused callers that waited for another caller's refetch.
        background_refreshes: steady-state refreshes through the cache.
        credential_changes: times the credentials in use changed.
    """

    logins: int = 0
    rejected_logins: int = 0
    recovered_logins: int = 0
    failed_recoveries: int = 0
    refetches: int = 0
    refetch_joins: int = 0
    background_refreshes: int = 0
    credential_changes: int = 0


class Flight:
    """One refetch in progress, shared by every caller refused with the same credentials.

    Threads wait on `done`; coroutines await `wait_async()`, which takes no
    thread, so a thousand refused tasks cost one worker thread, the leader's.
    """

    __slots__ = ("_callbacks", "_lock", "answer", "done")

    def __init__(self, answer: Answer = None, *, done: bool = False) -> None:
        self.done = threading.Event()
        self.answer: Answer = answer
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        if done:
            self.done.set()

    def finish(self, answer: Answer) -> None:
        """Publish the answer and wake every waiter."""
        with self._lock:
            self.answer = answer
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    async def wait_async(self) -> None:
        """Wait for `finish` without blocking the event loop or taking a thread."""
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def settle() -> None:
            if not woken.done():  # a cancelled waiter's future is done already
                woken.set_result(None)

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                loop.call_soon_threadsafe(settle)

        with self._lock:
            if self.done.is_set():
                return
            self._callbacks.append(wake)
        await woken


class CredentialStore:
    """Holds the credentials of one secret for one engine; see the module docstring.

    Args:
        source: where the secret is read.
        refresh_interval: seconds between steady-state refreshes.
        use_pending: whether `refetch` may offer AWSPENDING.
        clock: a monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        source: SecretSource,
        *,
        refresh_interval: float = 3600.0,
        use_pending: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.refresh_interval = refresh_interval
        self.use_pending = use_pending
        self._clock = clock
        self._current: Credentials | None = None
        self._last_cached: Credentials | None = None
        # The cache is polled more often than its TTL: a poll costs nothing until
        # the cache's own (jittered) TTL runs out.
        self._poll_interval = refresh_interval / 4
        self._next_poll = 0.0
        self._counts: dict[str, int] = dict.fromkeys(Stats.__dataclass_fields__, 0)
        self._init_locks()
        _live_stores.add(self)

    def _init_locks(self) -> None:
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._flights: dict[Credentials, Flight] = {}

    def __repr__(self) -> str:
        return f"CredentialStore(secret_id={self.source.secret_id!r}, current={self._current!r})"

    @property
    def secret_id(self) -> str:
        """The secret this store reads."""
        return self.source.secret_id

    @property
    def loaded(self) -> bool:
        """Whether the first load is done (`current` no longer blocks)."""
        return self._current is not None

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            return Stats(**self._counts)

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the `Stats` counters (used by the connect shells)."""
        with self._lock:
            self._counts[name] += n

    def current(self) -> Credentials:
        """The credentials to log in with; blocks only for the very first load.

        Raises:
            SecretError, SecretsManagerUnavailableError: the first load failed.
        """
        credentials = self._current
        if credentials is None:
            return self._load()
        if self._clock() >= self._next_poll:
            self._start_refresh()
        return credentials

    def confirm(self, credentials: Credentials) -> None:
        """Record that `credentials` logged in, so every new connection uses them."""
        if credentials != self._current:
            with self._lock:
                self._set_current(credentials, "they logged in")

    def refetch(self, rejected: Credentials) -> Answer:
        """Credentials to try instead of `rejected`, None, or the fetch's error.

        Never raises: errors are answers, for the login policy to weigh.
        """
        flight, leading = self.join_refetch(rejected)
        if leading:
            self.run_refetch(flight, rejected)
        else:
            flight.done.wait()
        return flight.answer

    def join_refetch(self, rejected: Credentials) -> tuple[Flight, bool]:
        """The flight answering `rejected`, and whether the caller must run it.

        The non-blocking half of `refetch`, for the async shell: the leader
        runs `run_refetch` (in a worker thread), the others wait on the flight.
        A flight that is already done is returned when there is nothing to fetch.
        """
        with self._lock:
            current = self._current
            if current is not None and current != rejected:
                return Flight(current, done=True), False  # another caller recovered already
            flight = self._flights.get(rejected)
            if flight is not None:
                self._counts["refetch_joins"] += 1
                logger.debug("secret %r: waiting for the refetch in flight", self.secret_id)
                return flight, False
            flight = self._flights[rejected] = Flight()
            self._counts["refetches"] += 1
            return flight, True

    def run_refetch(self, flight: Flight, rejected: Credentials) -> None:
        """Read the secret for `flight` (which `join_refetch` gave to this caller)."""
        answer: Answer = None
        try:
            answer = self._read_newer(rejected)
        except Exception as error:  # handed to the policy as an answer, never lost
            answer = error
        except BaseException:
            # Interrupted (KeyboardInterrupt, a cancelled greenlet): the waiters
            # get an error answer and may try again; this caller stops.
            answer = RotatingPoolError(f"the refetch of {self.secret_id!r} was interrupted")
            raise
        finally:
            with self._lock:
                del self._flights[rejected]
                if isinstance(answer, Credentials):
                    self._set_current(answer, "a login was refused")
            flight.finish(answer)

    def _read_newer(self, rejected: Credentials) -> Credentials | None:
        # Reads bypass the cache: its forced refresh sleeps 2.5-5 s first.
        current = self.source.fetch(AWSCURRENT)
        if current is not None and current != rejected:
            return current
        if self.use_pending:
            pending = self.source.fetch(AWSPENDING)
            if pending is not None and pending != rejected:
                return pending
        logger.info(
            "secret %r offers no credentials other than the refused ones (user %r)",
            self.secret_id,
            rejected.username,
        )
        return None

    def _load(self) -> Credentials:
        with self._load_lock:
            if self._current is None:
                credentials = self.source.load()
                with self._lock:
                    self._set_current(credentials, "first use")
                    self._next_poll = self._clock() + self._poll_interval
            return self._current  # type: ignore[return-value]  # set above or by another

    def _set_current(self, credentials: Credentials, why: str) -> None:
        # Caller holds self._lock.
        if credentials == self._current:
            return
        previous = self._current
        self._current = credentials
        if previous is not None:
            self._counts["credential_changes"] += 1
        logger.info(
            "secret %r: now using user %r, version %s (%s) because %s",
            self.secret_id,
            credentials.username,
            credentials.version_id or "from the cache",
            credentials.stage,
            why,
        )

    def _start_refresh(self) -> None:
        if not self._refreshing.acquire(blocking=False):
            return  # someone else is refreshing; keep going with what we have
        self._next_poll = self._clock() + self._poll_interval
        thread = threading.Thread(
            target=self._refresh, name=f"rotating_pool-refresh-{self.secret_id}", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            self._refreshing.release()
            raise

    def _refresh(self) -> None:
        try:
            cached = self.source.read_cached()
        except Exception as error:  # a refresh must never break connects
            detail = str(error) if isinstance(error, RotatingPoolError) else type(error).__name__
            logger.warning(
                "secret %r: background refresh failed, keeping the credentials in use: %s",
                self.secret_id,
                detail,
            )
            return
        finally:
            self._refreshing.release()
        with self._lock:
            self._counts["background_refreshes"] += 1
            # Adopt what the cache learned, not what it remembers: its value can
            # be older than credentials a recovery fetched directly, and it only
            # changes when its own refresh read a new AWSCURRENT.
            if cached != self._last_cached:
                self._last_cached = cached
                self._set_current(cached, "the periodic refresh found a new AWSCURRENT")

    def _after_fork(self) -> None:
        # Locks may have been held by threads that do not exist in the child,
        # and network clients must not be shared with the parent.
        self._init_locks()
        self.source.after_fork()


_live_stores: weakref.WeakSet[CredentialStore] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for store in list(_live_stores):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
