"""How the connect shell waits: blocking calls for sync engines, awaits for async ones.

The login policy (`rotating_pool.policy`) never waits itself; the shell in
`rotating_pool.engine` asks one of these to do it. For an `AsyncEngine`,
SQLAlchemy runs the ``do_connect`` hook inside its greenlet bridge, so the hook
can await: Secrets Manager calls go to a worker thread and backoff uses the
loop's sleep, and the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from rotating_pool.secret import Credentials
from rotating_pool.store import Answer, CredentialStore

__all__ = ["BlockingWaits", "GreenletWaits", "Waits"]


class Waits(Protocol):
    """The three things a connect may wait for."""

    def current(self, store: CredentialStore) -> Credentials:
        """`store.current()`, which blocks only for the first load."""
        ...

    def refetch(self, store: CredentialStore, rejected: Credentials) -> Answer:
        """`store.refetch(rejected)`: Secrets Manager calls, or waiting for another's."""
        ...

    def sleep(self, seconds: float) -> None:
        """A backoff delay."""
        ...


class BlockingWaits:
    """For sync engines: plain blocking calls."""

    def current(self, store: CredentialStore) -> Credentials:
        """See `Waits.current`."""
        return store.current()

    def refetch(self, store: CredentialStore, rejected: Credentials) -> Answer:
        """See `Waits.refetch`."""
        return store.refetch(rejected)

    def sleep(self, seconds: float) -> None:
        """See `Waits.sleep`."""
        time.sleep(seconds)


class GreenletWaits:
    """For async engines: awaits through SQLAlchemy's greenlet bridge.

    A cancelled task stops waiting at once; a refetch it was waiting for goes on
    in its thread and still answers every other waiter.
    """

    def __init__(self) -> None:
        from sqlalchemy import util  # noqa: PLC0415  (greenlet is only needed for async)

        self._await = getattr(util, "await_", None) or util.await_only

    def current(self, store: CredentialStore) -> Credentials:
        """See `Waits.current`."""
        if store.loaded:
            return store.current()  # no I/O once loaded
        credentials: Credentials = self._await(asyncio.to_thread(store.current))
        return credentials

    def refetch(self, store: CredentialStore, rejected: Credentials) -> Answer:
        """See `Waits.refetch`: the leader reads in a worker thread, the others
        await the flight without taking a thread each."""
        flight, leading = store.join_refetch(rejected)
        if leading:
            self._await(asyncio.to_thread(store.run_refetch, flight, rejected))
        elif not flight.done.is_set():
            self._await(flight.wait_async())
        return flight.answer

    def sleep(self, seconds: float) -> None:
        """See `Waits.sleep`."""
        self._await(asyncio.sleep(seconds))
