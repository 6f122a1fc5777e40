"""Log in through a `CredentialStore`: the sync and async shells of the login plan.

`login(store, budget, connect)` carries out `rotating_pool.core.plan.login_plan`
with a connect function of yours, ``connect(credentials, timeout)``, that opens
one connection (or raises the driver's error). It is what the SQLAlchemy hook
(`rotating_pool.engine`) calls, and what any other integration (a
``psycopg_pool`` ``connection_class``/``kwargs`` callback, Django's
``get_new_connection``, an IAM token source) can call:

>>> import psycopg
>>> from rotating_pool import RetryBudget
>>> from rotating_pool.connect import login
>>> def connect(credentials, timeout):  # doctest: +SKIP
...     return psycopg.connect(host="db", user=credentials.username,
...                            password=credentials.password, connect_timeout=timeout)
>>> connection = login(store, RetryBudget(), connect)  # doctest: +SKIP

`login_async` is the twin for coroutines (``await connect(credentials,
timeout)``): it awaits every read and delay and never blocks the loop.

The shells decide nothing: the plan says what to do next; the shells carry it
out, wait (a blocking call, an await, or SQLAlchemy's greenlet bridge:
`rotating_pool.waiting`) and report what happened. Both take the plan's first
step (`rotating_pool.core.plan.first_login`) before starting the plan, so a
login that succeeds, nearly every one, costs no plan.

Departure from psycopg_pool's model (sync code generated from async): the two
shells are written out, about thirty lines each, because all they share is
the plan they drive; the rules are not repeated, only the waiting differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from typing import NamedTuple, TypeVar

from rotating_pool.core.classify import Verdict
from rotating_pool.core.plan import (
    Action,
    Answer,
    Connect,
    Load,
    Recheck,
    Refetch,
    RetryBudget,
    Success,
    Wait,
    first_login,
    login_plan,
)
from rotating_pool.errors import LoginRejectedError
from rotating_pool.secret import Credentials
from rotating_pool.store import CredentialStore, Flight
from rotating_pool.telemetry import ConnectWatch, telemetry
from rotating_pool.waiting import BlockingWaits, Waits

__all__ = ["login", "login_async"]

logger = logging.getLogger("rotating_pool")

T = TypeVar("T")


class _FirstLogin(NamedTuple):
    """The plan's first login, taken before the plan (`first_login`), that failed."""

    credentials: Credentials
    error: BaseException
    started: float


def _steady_state(
    store: CredentialStore, budget: RetryBudget
) -> tuple[ConnectWatch, Connect | None, float]:
    """The plan's first step with the credentials in hand (`first_login`),
    counted and timed, for the shell to take without the plan: nearly every
    new connection ends with it. None when there are no credentials yet."""
    watch = telemetry().watch_connect(store.secret_id, store)
    held = store.held()
    if held is None:
        return watch, None, 0.0
    watch.login(held)
    return watch, first_login(held, budget), time.monotonic()


class _Run:
    """One connection's plan, and what both shells do besides waiting: report
    each step to the watch (the one counter path) and the log, and carry out
    the plan's verdicts."""

    def __init__(
        self,
        store: CredentialStore,
        budget: RetryBudget,
        watch: ConnectWatch,
        first: _FirstLogin | None,
    ) -> None:
        self.store = store
        self.watch = watch
        self.plan: Generator[Action, Answer, Success] = login_plan(
            first.credentials if first is not None else store.held(),
            secret_id=store.secret_id,
            budget=budget,
            on_verdict=self.judged,
            first_failed=first.error if first is not None else None,
            started=first.started if first is not None else None,
        )

    def first(self) -> Action:
        return next(self.plan)

    def send(self, answer: Answer) -> Action:
        try:
            return self.plan.send(answer)
        except LoginRejectedError:
            logger.error("secret %r: giving up on the login", self.store.secret_id)
            raise

    def judged(self, verdict: Verdict) -> None:
        self.watch.judged(verdict)
        if verdict.refused:
            _log_refusal(self.store, verdict.credentials)

    def succeeded(self) -> None:
        try:
            self.plan.send(None)
        except StopIteration as stop:
            success: Success = stop.value
        else:  # pragma: no cover  (a plan ends at its first successful login)
            self.plan.close()
            return
        if success.confirm:
            self.store.confirm(success.credentials)
        self.watch.succeeded(success)
        if success.refusals:
            _log_recovery(self.store, success.credentials, success.refusals)

    def flight(self, action: Refetch | Load) -> Flight:
        if isinstance(action, Refetch):
            return self.store.join_refetch(action.rejected, action.reuse_for)
        return self.store.join_load()


def login(
    store: CredentialStore,
    budget: RetryBudget,
    connect: Callable[[Credentials, int], T],
    *,
    waits: Waits | None = None,
) -> T:
    """Open a connection with `connect`, logging in with the store's credentials
    and recovering from refusals as `budget` allows.

    `connect(credentials, timeout)` opens one connection, giving up after
    `timeout` whole seconds, or raises the driver's error. `waits` says how to
    wait (default: blocking calls; SQLAlchemy's async engines pass
    `rotating_pool.waiting.GreenletWaits`).

    Raises:
        LoginRejectedError: the database refused every credentials the secret
            offered within the budget.
        SecretError, SecretsManagerUnavailableError: the secret could not be read.
        Exception: a driver error that other credentials would not fix, as is.
    """
    watch, step, started = _steady_state(store, budget)
    first: _FirstLogin | None = None
    if step is not None:
        try:
            return connect(step.credentials, step.timeout)
        except Exception as error:
            first = _FirstLogin(step.credentials, error, started)
    waits = waits or BlockingWaits()
    run = _Run(store, budget, watch, first)
    with watch:
        action = run.first()
        while True:
            answer: Answer
            if isinstance(action, Connect):
                run.watch.login(action.credentials)
                try:
                    connection = connect(action.credentials, action.timeout)
                except Exception as error:
                    answer = error  # judged by the plan, once
                else:
                    run.succeeded()
                    return connection
            elif isinstance(action, Refetch | Load):
                answer = waits.answer(store, run.flight(action), action.timeout)
            elif isinstance(action, Recheck):
                answer = store.held_instead_of(action.rejected)
            else:
                assert isinstance(action, Wait)
                waits.sleep(action.seconds)
                answer = None
            action = run.send(answer)


async def login_async(
    store: CredentialStore,
    budget: RetryBudget,
    connect: Callable[[Credentials, int], Awaitable[T]],
) -> T:
    """`login` for coroutines: ``await connect(credentials, timeout)``.

    Secret reads run in the store's threads; a waiting task takes no thread and
    never blocks the event loop. Cancelling the task stops its wait at once;
    the read it waited for still answers every other waiter.
    """
    watch, step, started = _steady_state(store, budget)
    first: _FirstLogin | None = None
    if step is not None:
        try:
            return await connect(step.credentials, step.timeout)
        except Exception as error:
            first = _FirstLogin(step.credentials, error, started)
    run = _Run(store, budget, watch, first)
    with watch:
        action = run.first()
        while True:
            answer: Answer
            if isinstance(action, Connect):
                run.watch.login(action.credentials)
                try:
                    connection = await connect(action.credentials, action.timeout)
                except Exception as error:
                    answer = error  # judged by the plan, once
                else:
                    run.succeeded()
                    return connection
            elif isinstance(action, Refetch | Load):
                flight = run.flight(action)
                if not flight.done.is_set():
                    await flight.wait_async(action.timeout)
                answer = store.answer(flight, action.timeout, blocking=False)
            elif isinstance(action, Recheck):
                answer = store.held_instead_of(action.rejected)
            else:
                assert isinstance(action, Wait)
                await asyncio.sleep(action.seconds)
                answer = None
            action = run.send(answer)


def _log_refusal(store: CredentialStore, credentials: Credentials) -> None:
    logger.info(
        "secret %r: the database refused user %r (version %s, %s); looking for new credentials",
        store.secret_id,
        credentials.username,
        credentials.version_id or "from the cache",
        credentials.stage,
    )


def _log_recovery(store: CredentialStore, credentials: Credentials, refused: int) -> None:
    logger.info(
        "secret %r: logged in as %r (version %s, %s) after %d refused login(s)",
        store.secret_id,
        credentials.username,
        credentials.version_id or "from the cache",
        credentials.stage,
        refused,
    )
