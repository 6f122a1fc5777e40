"""1b. Connect overhead of async engines: a new connection, rotating_pool vs static.

As benchmark 1, for `rotating_pool.create_async_engine` against a plain
`sqlalchemy.ext.asyncio.create_async_engine` with the credentials written in
its URL, and an identical second plain engine as the A/A control, for each
async driver (psycopg's async mode; asyncpg when installed). `NullPool`, so
each ``await engine.connect()`` opens a new connection; rotating_pool's cache
is warm, so what is timed is its ``do_connect`` hook inside SQLAlchemy's
greenlet bridge on top of the same login. One coroutine at a time, the
engines taking turns (1,000 connects each per driver in a full run).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from benchmarks.async_engines import Timer, async_engines, event_loop, per_driver
from benchmarks.bed import Bed, counting_proxy
from benchmarks.connect import GOAL_RATIO
from benchmarks.measure import Sample, interleave, ratio_goal


@dataclass(frozen=True)
class Settings:
    rounds: int


FULL = Settings(rounds=1000)
QUICK = Settings(rounds=20)


def _connect(timer: Timer, engine: AsyncEngine) -> list[Sample]:
    connection: Any = None

    async def open_one() -> None:
        nonlocal connection
        connection = await engine.connect()

    timing = timer.sample(open_one)
    timer.run(connection.close())  # not timed: closing is the same for every engine
    return timing


def _one_driver(bed: Bed, driver: str, settings: Settings) -> dict[str, Any]:
    secret = bed.new_secret("single")
    with counting_proxy(bed) as proxy, event_loop() as timer:
        engines = async_engines(bed, secret, proxy, driver, poolclass=NullPool)
        try:
            for engine in engines.values():  # warm: dialect setup, the first secret read
                for _ in range(3):
                    _connect(timer, engine)
            samples = interleave(
                settings.rounds,
                {name: partial(_connect, timer, engine) for name, engine in engines.items()},
            )
        finally:
            for engine in engines.values():
                timer.run(engine.dispose())
    ratios = ratio_goal(
        samples,
        f"async connect ratio, {driver} (rotating_pool / static)",
        GOAL_RATIO,
        throughput=False,
    )
    return {
        "connects_each": settings.rounds,
        "static_median_ms": samples.median("static") * 1000,
        "rotating_pool_median_ms": samples.median("rotating_pool") * 1000,
        **ratios,
    }


def run(bed: Bed, settings: Settings) -> dict[str, Any]:
    return per_driver(partial(_one_driver, bed, settings=settings))
