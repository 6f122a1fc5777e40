"""The async engines compared by benchmarks 1b and 2b, and how their coroutines are timed.

For each driver (psycopg's async mode, and asyncpg when installed): a plain
`sqlalchemy.ext.asyncio.create_async_engine` with the credentials read once
written in its URL (the baseline), a second identical one (the A/A control),
and `rotating_pool.create_async_engine` reading through the counting proxy.

Every sample runs on one event loop that lives for the whole benchmark; the
coroutine reads both clocks around the awaited work itself, so the loop's own
scheduling between samples is not timed. The sides take turns as the sync
benchmarks' do (`benchmarks.measure.interleave`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import rotating_pool
from benchmarks.bed import Bed, Secret
from benchmarks.measure import Sample
from rotating_pool.sources import DEFAULT_CLIENT_CONFIG
from rotating_pool.testing import FaultProxy

__all__ = ["DRIVERS", "Timer", "async_engines", "available_drivers", "event_loop", "per_driver"]

# SQLAlchemy's async dialect names, and the module each needs.
DRIVERS = {"psycopg_async": "psycopg", "asyncpg": "asyncpg"}


def available_drivers() -> dict[str, str | None]:
    """Each driver, with None when it can run here or why it cannot."""
    return {
        driver: None
        if importlib.util.find_spec(module) is not None
        else f"{module} is not installed (pip install -e '.[bench]' installs it)"
        for driver, module in DRIVERS.items()
    }


def async_engines(
    bed: Bed, secret: Secret, proxy: FaultProxy, driver: str, **engine_kwargs: Any
) -> dict[str, AsyncEngine]:
    """static, static_control and rotating_pool async engines for `driver`."""
    url = bed.static_url(bed.current_document(secret)).set(drivername=f"postgresql+{driver}")
    client = bed.secretsmanager.client(proxy.endpoint_url, config=DEFAULT_CLIENT_CONFIG)
    return {
        "static": create_async_engine(url, **engine_kwargs),
        "static_control": create_async_engine(url, **engine_kwargs),
        "rotating_pool": rotating_pool.create_async_engine(
            f"postgresql+{driver}://", secret_id=secret.arn, client=client, **engine_kwargs
        ),
    }


class Timer:
    """One event loop for a whole benchmark; `sample` times one coroutine on it."""

    def __init__(self, runner: asyncio.Runner) -> None:
        self.runner = runner

    def sample(self, work: Callable[[], Awaitable[object]], per: int = 1) -> list[Sample]:
        """Time `work()` on both clocks, divided by `per` (a block of `per` operations)."""

        async def timed() -> Sample:
            wall, cpu = time.perf_counter(), time.thread_time()
            await work()
            return Sample((time.perf_counter() - wall) / per, (time.thread_time() - cpu) / per)

        return [self.runner.run(timed())]

    def run(self, work: Awaitable[object]) -> None:
        """Run untimed work (warming, disposing) on the same loop."""

        async def untimed() -> None:
            await work

        self.runner.run(untimed())


@contextmanager
def event_loop() -> Iterator[Timer]:
    """A `Timer` on a fresh event loop, closed afterwards."""
    with asyncio.Runner() as runner:
        yield Timer(runner)


def per_driver(measure: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """`measure(driver)` for every driver that can run here; the goals of all."""
    drivers: dict[str, Any] = {}
    for driver, missing in available_drivers().items():
        drivers[driver] = {"not_measured": missing} if missing else measure(driver)
    return {
        "drivers": drivers,
        "goals": [d["goal"] for d in drivers.values() if "goal" in d],
    }
