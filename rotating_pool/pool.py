"""psycopg_pool's `ConnectionPool` and `AsyncConnectionPool`, logging in through a secret.

The pool opens every connection with its ``connection_class.connect``;
`connection_class` (and `async_connection_class`) return a `psycopg.Connection`
(`psycopg.AsyncConnection`) subclass whose ``connect`` logs in through
`rotating_pool.connect.login` (`login_async`): the secret's credentials, a
single-flight refetch when the login is refused, AWSPENDING in a single-user
rotation, the retry budget's deadline. Everything else about the pool
(``min_size``, ``check``, ``max_lifetime``, ``configure``) is psycopg_pool's::

    from psycopg_pool import ConnectionPool
    from rotating_pool.pool import connection_class

    pool = ConnectionPool("host=db.example.com dbname=app",
                          connection_class=connection_class("prod/app/db"))

How the pool's own retry composes with ours: one ``connect`` is one login
plan, bounded by `RetryBudget.deadline` (20 s by default). Only when the plan
gives up (`LoginRejectedError`) does the pool's reconnection loop take over:
it waits 1 s, then twice as long each time with jitter, up to
``reconnect_timeout``, and each of its attempts is again one plan. A refused
login costs at most one Secrets Manager read per process however many pool
workers are refused together (the store's single flight), and a plan whose
refetch found nothing new reuses that answer for a while instead of reading
again; so neither the database nor Secrets Manager is hammered.

`retire_superseded(pool, retire_after)` closes connections made with
superseded credentials within ``retire_after`` seconds of a rotation, through
the pool's own ``drain()`` (see its docstring for why not ``max_lifetime``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from rotating_pool.connect import login, login_async
from rotating_pool.core.plan import RetryBudget
from rotating_pool.core.retirement import (
    poll_interval,
    retirement_times,
    retirement_window,
    validate_retire_after,
)
from rotating_pool.engine import connect_params
from rotating_pool.errors import ConfigurationError
from rotating_pool.login_options import LoginOptions
from rotating_pool.secret import Credentials

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from rotating_pool.store import CredentialStore

__all__ = [
    "AsyncRotatingConnection",
    "PoolRetirement",
    "RotatingConnection",
    "async_connection_class",
    "connection_class",
    "connection_class_for",
    "retire_superseded",
]

logger = logging.getLogger("rotating_pool")


def _given(conninfo: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    # The conninfo string's keys count as given: a host there wins over the secret's.
    return {**conninfo_to_dict(conninfo), **kwargs}


def _params(given: dict[str, Any], credentials: Credentials, timeout: int) -> dict[str, Any]:
    return connect_params(given, credentials, "dbname", ("connect_timeout", timeout))


class RotatingConnection(psycopg.Connection[Any]):
    """A `psycopg.Connection` whose `connect` logs in through a secret.

    Made by `connection_class`, which sets `store` and `budget`; use the
    subclass it returns as a pool's ``connection_class``, or call its
    ``connect`` directly.
    """

    store: ClassVar[CredentialStore]
    budget: ClassVar[RetryBudget]

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
        """Open a connection with the secret's credentials; recover from refusals.

        `conninfo` and `kwargs` are psycopg's; user and password always come
        from the secret, host, port and dbname where these leave them out.
        """
        given = _given(conninfo, kwargs)

        def attempt(credentials: Credentials, timeout: int) -> Any:
            return super(RotatingConnection, cls).connect(
                "", **_params(given, credentials, timeout)
            )

        return login(cls.store, cls.budget, attempt)


class AsyncRotatingConnection(psycopg.AsyncConnection[Any]):
    """`RotatingConnection` for `psycopg.AsyncConnection` and `AsyncConnectionPool`."""

    store: ClassVar[CredentialStore]
    budget: ClassVar[RetryBudget]

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
        """Open a connection with the secret's credentials; never blocks the loop."""
        given = _given(conninfo, kwargs)

        async def attempt(credentials: Credentials, timeout: int) -> Any:
            parent: Any = super(AsyncRotatingConnection, cls)
            return await parent.connect("", **_params(given, credentials, timeout))

        return await login_async(cls.store, cls.budget, attempt)


def connection_class(secret_id: str, **options: Any) -> type[RotatingConnection]:
    """A `RotatingConnection` subclass that logs in with secret `secret_id`.

    `options` are `rotating_pool.attach`'s (``client``, ``refresh_interval``,
    ``retry``, ``use_pending``, ``source``); the store is the process's one
    for this secret and source, shared with any engine or Django connection
    on it. For ``retire_after`` see `retire_superseded`.

    >>> from psycopg_pool import ConnectionPool
    >>> pool = ConnectionPool("dbname=app", open=False,
    ...                       connection_class=connection_class("prod/app/db"))
    """
    made: type[RotatingConnection] = _subclass(
        RotatingConnection, LoginOptions(secret_id, **options)
    )
    return made


def async_connection_class(secret_id: str, **options: Any) -> type[AsyncRotatingConnection]:
    """`connection_class` for `psycopg_pool.AsyncConnectionPool`."""
    made: type[AsyncRotatingConnection] = _subclass(
        AsyncRotatingConnection, LoginOptions(secret_id, **options)
    )
    return made


def connection_class_for(options: LoginOptions) -> type[RotatingConnection]:
    """`connection_class` from settings already validated (the Django backend's).

    Their ``retire_after`` is left to the caller (`retire_superseded`).
    """
    made: type[RotatingConnection] = _subclass(
        RotatingConnection, dataclasses.replace(options, retire_after=None)
    )
    return made


def _subclass(base: type[Any], options: LoginOptions) -> Any:
    if options.retire_after is not None:
        raise ConfigurationError(
            "retire_after is the pool's, not the connection class's: "
            "call rotating_pool.pool.retire_superseded(pool, retire_after)"
        )
    return type(base.__name__, (base,), {"store": options.store(), "budget": options.retry})


class PoolRetirement:
    """Drains a psycopg pool once its secret's credentials change; see `retire_superseded`.

    Attributes:
        drains: how many times it drained the pool.
    """

    def __init__(
        self,
        pool: ConnectionPool[Any] | AsyncConnectionPool[Any],
        store: CredentialStore,
        retire_after: float,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.retire_after = retire_after
        self.window = retirement_window(retire_after)
        self.drains = 0
        self._pool = weakref.ref(pool)
        self._store = store
        self._loop = loop
        self._stopped = threading.Event()
        tick = poll_interval(retire_after)
        self._unsubscribe = store.subscribe(self._changed, refresh_every=tick)
        # The store refreshes when its own (jittered) interval is due; this
        # thread only asks it to, at a quarter of it, as the engines' scheduler does.
        self._thread = threading.Thread(
            target=self._poll,
            args=(max(0.25, tick / 4),),
            daemon=True,
            name=f"rotating_pool-drain-{store.secret_id}",
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<PoolRetirement retire_after={self.retire_after:g}s, {self.drains} drain(s)>"

    def stop(self) -> None:
        """Stop watching (the pool is left as it is)."""
        self._stopped.set()
        self._unsubscribe()

    def _poll(self, tick: float) -> None:
        while not self._stopped.wait(tick):
            pool = self._pool()
            if pool is None:  # the pool is gone: stop polling
                self.stop()
                return
            if not pool.closed:
                self._store.refresh_if_due()  # never waits

    def _changed(self, previous: Credentials | None, new: Credentials) -> None:
        # Called with the store's lock held: only schedule.
        if previous is None or self._stopped.is_set():
            return
        now = time.monotonic()
        (moment,) = retirement_times(1, now, self.window, random.Random())
        timer = threading.Timer(moment - now, self._drain)
        timer.daemon = True
        timer.start()

    def _drain(self) -> None:
        pool = self._pool()
        if pool is None or pool.closed or self._stopped.is_set():
            return
        self.drains += 1
        logger.info(
            "secret %r: draining pool %r: its connections logged in with superseded credentials",
            self._store.secret_id,
            pool.name,
        )
        result = pool.drain()
        if asyncio.iscoroutine(result):
            loop = self._loop
            if loop is None or loop.is_closed():
                result.close()
                return
            asyncio.run_coroutine_threadsafe(result, loop)


def retire_superseded(
    pool: ConnectionPool[Any] | AsyncConnectionPool[Any], retire_after: float
) -> PoolRetirement:
    """Close the pool's connections on superseded credentials within `retire_after` s.

    Once the secret's credentials change (a rotation, noticed by a background
    refresh every tenth of `retire_after`, or by a refused login), the pool is
    drained (``pool.drain()``) at a random moment within the retirement window:
    idle connections are closed and replaced at once, connections in use when
    they are returned, so no transaction is cut. Each process draws its own
    moment, so a fleet spreads its reconnects; within a process the pool's
    workers (``num_workers``, 3 by default) open the replacements.

    Why ``drain()`` and not ``max_lifetime``: ``max_lifetime`` recycles every
    connection on a timer whether or not anything rotated, and a value short
    enough to bound a rotation's stragglers would log in again all day long.
    ``drain()`` runs only when the credentials changed.

    For an `AsyncConnectionPool`, call this from its event loop (drains run there).

    Raises:
        ConfigurationError: the pool's ``connection_class`` is not one of
            `connection_class`'s, or `retire_after` is invalid.
    """
    options_class = getattr(pool, "connection_class", None)
    store = getattr(options_class, "store", None)
    if not isinstance(options_class, type) or not issubclass(
        options_class, RotatingConnection | AsyncRotatingConnection
    ):
        raise ConfigurationError(
            "retire_superseded needs a pool whose connection_class comes from "
            "rotating_pool.pool.connection_class (or async_connection_class)"
        )
    assert store is not None
    seconds = validate_retire_after(retire_after)
    if seconds is None:
        raise ConfigurationError("retire_after must be a number of seconds, not None")
    loop: asyncio.AbstractEventLoop | None = None
    if issubclass(options_class, AsyncRotatingConnection):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "retire_superseded on an AsyncConnectionPool must be called from its "
                "event loop (inside a coroutine)"
            ) from None
    return PoolRetirement(pool, store, seconds, loop)
