"""2. Checkout overhead: pooled checkout + ``SELECT 1`` throughput, same engines.

A pooled connection never reaches rotating_pool's hook (it runs only when the
pool opens a new DBAPI connection), so this should be a tie; it is measured
to show that attaching costs the pool nothing. One thread, a pool of one
connection opened before timing, so each iteration is a checkout, a query,
and the return's rollback.

Three engines (static, an identical static A/A control, rotating_pool) take
turns in blocks of 50 checkouts (400 blocks each in a full run). Every 50
rounds the pools are renewed outside the timing, so that no engine keeps a
luckier database backend process all run long. The figure is the ratio of
the median blocks' throughputs, with a bootstrap 95% interval, on the wall
clock and on the client thread's CPU clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.engine import Engine

from benchmarks.bed import Bed, counting_proxy
from benchmarks.clients import rotating_pool_engine, static_engine
from benchmarks.measure import Sample, interleave, ratio_goal, sample

GOAL_RATIO = 0.99
BLOCK = 50


@dataclass(frozen=True)
class Settings:
    rounds: int


FULL = Settings(rounds=400)
QUICK = Settings(rounds=10)


def _checkouts(engine: Engine, count: int) -> None:
    for _ in range(count):
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1").scalar()


def _block(engine: Engine) -> list[Sample]:
    # One sample per block (its mean): a single checkout is too short to time alone.
    timing = sample(lambda: _checkouts(engine, BLOCK))
    return [Sample(timing.wall / BLOCK, timing.cpu / BLOCK)]


def run(bed: Bed, settings: Settings) -> dict[str, Any]:
    secret = bed.new_secret("single")
    with counting_proxy(bed) as proxy:
        pool: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
        engines = {
            "static": static_engine(bed, secret, **pool),
            "static_control": static_engine(bed, secret, **pool),
            "rotating_pool": rotating_pool_engine(bed, secret, proxy, **pool),
        }

        def renew_pools() -> None:
            for engine in engines.values():
                engine.dispose()
                _checkouts(engine, 5)  # opens the pooled connection again, untimed

        try:
            samples = interleave(
                settings.rounds,
                {name: partial(_block, engine) for name, engine in engines.items()},
                between=renew_pools,
            )
        finally:
            for engine in engines.values():
                engine.dispose()
    ratios = ratio_goal(
        samples, "checkout throughput ratio (rotating_pool / static)", GOAL_RATIO, throughput=True
    )
    return {
        "checkouts_each": settings.rounds * BLOCK,
        "static_per_second": 1 / samples.median("static"),
        "rotating_pool_per_second": 1 / samples.median("rotating_pool"),
        **{key: value for key, value in ratios.items() if key != "goal"},
        "goals": [ratios["goal"]],
    }
