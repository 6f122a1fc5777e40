"""2b. Checkout overhead of async engines: pooled checkout + ``SELECT 1``, same engines.

As benchmark 2, for the async engines of benchmark 1b (per driver): a pool of
one connection opened before timing, one coroutine, blocks of 50 checkouts
with ``SELECT 1`` taking turns (300 blocks each per driver in a full run);
the pools are renewed outside the timing every 50 rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.async_engines import Timer, async_engines, event_loop, per_driver
from benchmarks.bed import Bed, counting_proxy
from benchmarks.checkout import BLOCK, GOAL_RATIO
from benchmarks.measure import Sample, interleave, ratio_goal


@dataclass(frozen=True)
class Settings:
    rounds: int


FULL = Settings(rounds=300)
QUICK = Settings(rounds=10)
SELECT_1 = text("SELECT 1")


async def _checkouts(engine: AsyncEngine, count: int) -> None:
    for _ in range(count):
        async with engine.connect() as connection:
            (await connection.execute(SELECT_1)).scalar()


def _block(timer: Timer, engine: AsyncEngine) -> list[Sample]:
    return timer.sample(partial(_checkouts, engine, BLOCK), per=BLOCK)


def _one_driver(bed: Bed, driver: str, settings: Settings) -> dict[str, Any]:
    secret = bed.new_secret("single")
    with counting_proxy(bed) as proxy, event_loop() as timer:
        engines = async_engines(bed, secret, proxy, driver, pool_size=1, max_overflow=0)

        def renew_pools() -> None:
            for engine in engines.values():
                timer.run(engine.dispose())
                timer.run(_checkouts(engine, 5))  # opens the pooled connection again, untimed

        try:
            samples = interleave(
                settings.rounds,
                {name: partial(_block, timer, engine) for name, engine in engines.items()},
                between=renew_pools,
            )
        finally:
            for engine in engines.values():
                timer.run(engine.dispose())
    ratios = ratio_goal(
        samples,
        f"async checkout throughput ratio, {driver} (rotating_pool / static)",
        GOAL_RATIO,
        throughput=True,
    )
    return {
        "checkouts_each": settings.rounds * BLOCK,
        "static_per_second": 1 / samples.median("static"),
        "rotating_pool_per_second": 1 / samples.median("rotating_pool"),
        **ratios,
    }


def run(bed: Bed, settings: Settings) -> dict[str, Any]:
    return per_driver(partial(_one_driver, bed, settings=settings))
