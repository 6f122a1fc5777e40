"""How the connect shell waits: blocking calls for sync engines, awaits for async ones.

The login policy (`rotating_pool.policy`) never waits itself, and every secret
read runs in a thread of the store's (`rotating_pool.store.Flight`); the shell
in `rotating_pool.engine` asks one of these to wait for a read's answer or a
backoff delay. For an `AsyncEngine`, SQLAlchemy runs the ``do_connect`` hook
inside its greenlet bridge, so the hook can await: a waiting task takes no
thread, and the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from rotating_pool.store import Answer, CredentialStore, Flight

__all__ = ["BlockingWaits", "GreenletWaits", "Waits"]


class Waits(Protocol):
    """The two things a connect may wait for."""

    def answer(self, store: CredentialStore, flight: Flight, timeout: float) -> Answer:
        """The flight's answer, waiting at most `timeout` seconds for it."""
        ...

    def sleep(self, seconds: float) -> None:
        """A backoff delay."""
        ...


class BlockingWaits:
    """For sync engines: plain blocking calls."""

    def answer(self, store: CredentialStore, flight: Flight, timeout: float) -> Answer:
        """See `Waits.answer`."""
        return store.answer(flight, timeout, blocking=True)

    def sleep(self, seconds: float) -> None:
        """See `Waits.sleep`."""
        time.sleep(seconds)


class GreenletWaits:
    """For async engines: awaits through SQLAlchemy's greenlet bridge.

    A cancelled task stops waiting at once; the read it was waiting for goes on
    in its thread and still answers every other waiter.
    """

    def __init__(self) -> None:
        from sqlalchemy import util  # noqa: PLC0415  (greenlet is only needed for async)

        self._await = getattr(util, "await_", None) or util.await_only

    def answer(self, store: CredentialStore, flight: Flight, timeout: float) -> Answer:
        """See `Waits.answer`."""
        if not flight.done.is_set():
            self._await(flight.wait_async(timeout))
        return store.answer(flight, timeout, blocking=False)

    def sleep(self, seconds: float) -> None:
        """See `Waits.sleep`."""
        self._await(asyncio.sleep(seconds))
