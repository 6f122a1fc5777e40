"""The credentials in use for one secret, and how they are kept fresh.

`CredentialStore` holds what every new connection of a process logs in with,
and runs the secret reads the login policy asks for:

- `held()`: what to log in with now, without waiting. When the refresh
  interval has passed it starts one background refresh (botocore's
  `RefreshableCredentials` does the same for AWS keys) and every caller goes on
  with the credentials in hand. While Secrets Manager is slow or down, the last
  good credentials stay in use.
- `join_load()` and `join_refetch(rejected)`: single-flight reads. Every
  caller that needs the first read, or was refused with the same credentials,
  shares one read and its outcome. The read runs in a thread of its own, so
  each caller waits only as long as its own deadline allows (a thread, or a
  coroutine that takes no thread), and a hung read can hold nobody beyond that.

What was refused, when "nothing new" is reused, what another caller's
recovery hands over and what the background refresh may adopt are the rules of
`rotating_pool.core.ledger.Ledger`, a value the store holds under its lock:
the store only carries out reads and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from rotating_pool.core.ledger import Ledger
from rotating_pool.errors import RotatingPoolError, SecretsManagerUnavailableError
from rotating_pool.secret import Credentials
from rotating_pool.sources import SecretSource

__all__ = ["CredentialStore", "Flight", "Stats"]

logger = logging.getLogger("rotating_pool")

Answer = Credentials | BaseException | None

Subscriber = Callable[["Credentials | None", Credentials], None]
"""Called as ``subscriber(previous, new)`` when the credentials in use change
(``previous`` is None at the first load)."""


@dataclass(frozen=True)
class Stats:
    """Counters of one engine's logins and secret reads since it was set up.

    Attributes:
        logins: logins tried through rotating_pool (first tries and retries).
        rejected_logins: logins the database refused (recognised refusals).
        recovered_logins: connections that succeeded after at least one refusal.
        failed_recoveries: connections given up on (`LoginRejectedError`).
        loads: first reads of the secret (single-flight).
        refetches: single-flight reads run after a refusal.
        refetch_joins: refused callers that waited for another caller's refetch.
        refetch_reuses: refused callers answered by a recent refetch, without a call.
        background_refreshes: steady-state refreshes that completed.
        failed_refreshes: steady-state refreshes that failed (credentials kept).
        credential_changes: times the credentials in use changed.
    """

    logins: int = 0
    rejected_logins: int = 0
    recovered_logins: int = 0
    failed_recoveries: int = 0
    loads: int = 0
    refetches: int = 0
    refetch_joins: int = 0
    refetch_reuses: int = 0
    background_refreshes: int = 0
    failed_refreshes: int = 0
    credential_changes: int = 0


class Flight:
    """One secret read in progress, shared by every caller that needs it.

    Threads call `wait`; coroutines await `wait_async`, which takes no thread,
    so a thousand waiting tasks cost one thread: the read's.
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

    def wait(self, timeout: float) -> bool:
        """Block until the answer is in, at most `timeout` seconds; True if it is."""
        return self.done.wait(max(timeout, 0.0))

    async def wait_async(self, timeout: float) -> bool:
        """`wait` for coroutines: never blocks the event loop, takes no thread."""
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def settle() -> None:
            if not woken.done():  # a cancelled or timed-out waiter's future is done
                woken.set_result(None)

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                loop.call_soon_threadsafe(settle)

        with self._lock:
            if self.done.is_set():
                return True
            self._callbacks.append(wake)
        try:
            await asyncio.wait_for(woken, max(timeout, 0.0))
        except asyncio.TimeoutError:
            return False
        return True


class CredentialStore:
    """Holds the credentials of one secret for one process; see the module docstring.

    Args:
        source: where the secret is read.
        refresh_interval: seconds between steady-state refreshes (each waits a
            random time between half of it and all of it, so that a fleet
            started together does not refresh together).
        use_pending: whether a refetch may offer AWSPENDING.
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
        self._next_poll = 0.0
        self._counts: dict[str, int] = dict.fromkeys(Stats.__dataclass_fields__, 0)
        # What was refused and what a refetch found: the core's rules, held here.
        self._ledger = Ledger()
        self._subscribers: list[Subscriber] = []
        self._init_locks()
        _live_stores.add(self)

    def _init_locks(self) -> None:
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._load_flight: Flight | None = None
        self._flights: dict[Credentials, Flight] = {}

    def __repr__(self) -> str:
        return f"CredentialStore(secret_id={self.source.secret_id!r}, current={self._current!r})"

    @property
    def secret_id(self) -> str:
        """The secret this store reads."""
        return self.source.secret_id

    @property
    def loaded(self) -> bool:
        """Whether the first read is done (`held` returns credentials)."""
        return self._current is not None

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            return Stats(**self._counts)

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the `Stats` counters (used by the connect shells)."""
        with self._lock:
            self._counts[name] += n

    def subscribe(
        self, subscriber: Subscriber, *, refresh_every: float | None = None
    ) -> Callable[[], None]:
        """Call ``subscriber(previous, new)`` whenever the credentials in use
        change; returns a function that unsubscribes.

        Observers only (retirement, metrics): the call happens in the thread
        that changed the credentials, with the store's lock held, so a
        subscriber must return quickly and must not call the store. An error
        it raises is logged and ignored.

        `refresh_every`: the subscriber needs to learn of a new AWSCURRENT
        within about this many seconds even when no login is refused (a busy
        pool makes none); the store's refresh interval becomes at most this
        (`refresh_at_least_every`), and whoever drives the refresh calls
        `refresh_if_due`.
        """
        if refresh_every is not None:
            self.refresh_at_least_every(refresh_every)
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._subscribers.remove(subscriber)

        return unsubscribe

    def refresh_at_least_every(self, seconds: float) -> None:
        """Refresh at least every `seconds`: engines that share this store may
        need different intervals, and the store keeps the smallest."""
        with self._lock:
            if seconds >= self.refresh_interval:
                return
            self.refresh_interval = seconds
            if self._current is not None:
                due = self._clock() + self._poll_delay(seconds)
                self._next_poll = min(self._next_poll, due)

    def refresh_if_due(self) -> None:
        """Start one background refresh when the refresh interval has passed
        (one at a time; the caller never waits for it)."""
        credentials = self._current
        if credentials is not None and self._clock() >= self._next_poll:
            self._start_refresh(credentials)

    def held(self) -> Credentials | None:
        """The credentials to log in with, or None before the first read. Never
        waits; starts a background refresh when one is due (`refresh_if_due`)."""
        self.refresh_if_due()
        return self._current

    def held_instead_of(self, rejected: Credentials) -> Credentials | None:
        """The credentials in use, if they are not `rejected`; None otherwise. Never waits."""
        return self._ledger.adopt_instead_of(self._current, rejected)

    def current(self, timeout: float = 30.0) -> Credentials:
        """The credentials to log in with, reading the secret if need be.

        Raises:
            SecretError, SecretsManagerUnavailableError: the first read failed,
                or did not finish within `timeout` seconds.
        """
        credentials = self.held()
        if credentials is not None:
            return credentials
        answer = self.answer(self.join_load(), timeout, blocking=True)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, Credentials)  # a load answers credentials or an error
        return answer

    def confirm(self, credentials: Credentials) -> None:
        """Record that `credentials` logged in, so every new connection uses them."""
        if credentials != self._current:
            with self._lock:
                self._set_current(credentials, "they logged in")

    def join_load(self) -> Flight:
        """The flight of the first read, started by the first caller."""
        with self._lock:
            if self._current is not None:
                return Flight(self._current, done=True)
            flight = self._load_flight
            if flight is None:
                flight = self._load_flight = Flight()
                self._counts["loads"] += 1
                start = True
            else:
                start = False
        if start:
            self._run(flight, self.source.load, self._finish_load, "first read")
        return flight

    def join_refetch(self, rejected: Credentials, reuse_for: float = 0.0) -> Flight:
        """The flight that answers "what instead of `rejected`?"; see `refetch`.

        Already answered (no read) when another caller recovered meanwhile, or
        when a refetch for `rejected` found nothing new less than `reuse_for`
        seconds ago.
        """
        with self._lock:
            ledger = self._ledger
            adopted = ledger.adopt_instead_of(self._current, rejected)
            if adopted is not None:
                return Flight(adopted, done=True)  # another caller recovered already
            flight = self._flights.get(rejected)
            if flight is not None:
                self._counts["refetch_joins"] += 1
                logger.debug("secret %r: waiting for the refetch in flight", self.secret_id)
                return flight
            if ledger.reuses_nothing_new(rejected, self._clock(), reuse_for):
                self._counts["refetch_reuses"] += 1
                return Flight(None, done=True)
            self._ledger = ledger = ledger.refusing(rejected)
            refused = ledger.refused
            flight = self._flights[rejected] = Flight()
            self._counts["refetches"] += 1

        def read() -> Credentials | None:
            return self.source.newer(rejected, refused, use_pending=self.use_pending)

        def finish(answer: Answer) -> None:
            self._finish_refetch(rejected, answer)

        self._run(flight, read, finish, "refetch")
        return flight

    def refetch(
        self, rejected: Credentials, timeout: float = 30.0, reuse_for: float = 0.0
    ) -> Answer:
        """Credentials to try instead of `rejected`, None, or the read's error.

        Single-flight: callers refused with the same credentials share one
        read. Never raises: errors are answers, for the login policy to weigh.
        """
        return self.answer(self.join_refetch(rejected, reuse_for), timeout, blocking=True)

    def answer(self, flight: Flight, timeout: float, *, blocking: bool) -> Answer:
        """The flight's answer, or a `SecretsManagerUnavailableError` if it did
        not come within `timeout` (after `Flight.wait`, or at once if not `blocking`)."""
        if flight.done.is_set() or (blocking and flight.wait(timeout)):
            return flight.answer
        return SecretsManagerUnavailableError(
            f"secret {self.secret_id!r}: Secrets Manager did not answer within {timeout:.1f} s "
            "(the time left of RetryBudget.deadline)",
            secret_id=self.secret_id,
        )

    def _run(
        self,
        flight: Flight,
        read: Callable[[], Credentials | None],
        finish: Callable[[Answer], None],
        what: str,
    ) -> None:
        """Run `read` in a thread of its own; `finish` and the flight get its outcome."""

        def target() -> None:
            answer: Answer = None
            try:
                answer = read()
            except Exception as error:  # handed to the policy as an answer, never lost
                answer = error
            finally:
                finish(answer)
                flight.finish(answer)

        thread = threading.Thread(
            target=target, name=f"rotating_pool-{what}-{self.secret_id}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as error:  # no thread to be had: an answer, not a hang
            answer = RotatingPoolError(f"secret {self.secret_id!r}: cannot start a read: {error}")
            finish(answer)
            flight.finish(answer)

    def _finish_load(self, answer: Answer) -> None:
        with self._lock:
            self._load_flight = None
            if isinstance(answer, Credentials):
                self._set_current(answer, "first use")
                self._next_poll = self._clock() + self._poll_delay(self.refresh_interval)

    def _finish_refetch(self, rejected: Credentials, answer: Answer) -> None:
        with self._lock:
            del self._flights[rejected]
            self._ledger = self._ledger.answered(rejected, answer, self._clock())
            if isinstance(answer, Credentials):
                self._set_current(answer, "a login was refused")
            elif answer is None:
                logger.info(
                    "secret %r offers no credentials other than the refused ones (user %r)",
                    self.secret_id,
                    rejected.username,
                )

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
            credentials.version_id or "(unknown)",
            credentials.stage,
            why,
        )
        for subscriber in list(self._subscribers):
            try:
                subscriber(previous, credentials)
            except Exception:  # an observer must never break a login
                logger.exception("secret %r: a credentials subscriber failed", self.secret_id)

    def _poll_delay(self, interval: float) -> float:
        return random.uniform(interval / 2, interval)

    def _start_refresh(self, held: Credentials) -> None:
        if not self._refreshing.acquire(blocking=False):
            return  # someone else is refreshing; keep going with what we have
        self._next_poll = self._clock() + self._poll_delay(self.refresh_interval)
        thread = threading.Thread(
            target=self._refresh,
            args=(held,),
            name=f"rotating_pool-refresh-{self.secret_id}",
            daemon=True,
        )
        try:
            thread.start()
        except BaseException:
            self._refreshing.release()
            raise

    def _refresh(self, held: Credentials) -> None:
        try:
            newer = self.source.poll(held)
        except Exception as error:  # a refresh must never break connects
            detail = str(error) if isinstance(error, RotatingPoolError) else type(error).__name__
            logger.warning(
                "secret %r: background refresh failed, keeping the credentials in use: %s",
                self.secret_id,
                detail,
            )
            with self._lock:
                self._counts["failed_refreshes"] += 1
                # Try again sooner than a full interval.
                self._next_poll = self._clock() + self._poll_delay(self.refresh_interval / 4)
            return
        finally:
            self._refreshing.release()
        with self._lock:
            self._counts["background_refreshes"] += 1
            if newer is not None and self._ledger.refresh_may_adopt(newer, self._current, held):
                self._set_current(newer, "the periodic refresh found a new AWSCURRENT")

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
