"""1. Connect overhead: opening a new connection, rotating_pool vs static credentials.

Every engine uses `NullPool`, so each ``engine.connect()`` opens a new DBAPI
connection (a TCP connect and a SCRAM login, about 7 ms here). rotating_pool's
cache is warm: the secret was read before the first timed round, so what is
timed is its ``do_connect`` hook (take the credentials in hand, put them in the
connect parameters) on top of the same login.

Three engines take turns one connection at a time (1,500 each in a full run):
the static baseline, a second identical static engine (the A/A control: how
far noise alone moves a ratio), and rotating_pool. The figure is the ratio of
the medians, with a bootstrap 95% interval, on the wall clock and on the
client thread's CPU clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from benchmarks.bed import Bed, counting_proxy
from benchmarks.clients import rotating_pool_engine, static_engine
from benchmarks.measure import Sample, interleave, ratio_goal, sample

GOAL_RATIO = 1.02


@dataclass(frozen=True)
class Settings:
    rounds: int


FULL = Settings(rounds=1500)
QUICK = Settings(rounds=20)


def _connect(engine: Engine) -> list[Sample]:
    connection = None

    def open_one() -> None:
        nonlocal connection
        connection = engine.connect()

    timing = sample(open_one)
    assert connection is not None
    connection.close()  # not timed: closing is the same for every engine
    return [timing]


def run(bed: Bed, settings: Settings) -> dict[str, Any]:
    secret = bed.new_secret("single")
    with counting_proxy(bed) as proxy:
        engines = {
            "static": static_engine(bed, secret, poolclass=NullPool),
            "static_control": static_engine(bed, secret, poolclass=NullPool),
            "rotating_pool": rotating_pool_engine(bed, secret, proxy, poolclass=NullPool),
        }
        try:
            for engine in engines.values():  # warm: dialect setup, the first secret read
                for _ in range(3):
                    _connect(engine)
            calls_before = proxy.total_calls
            samples = interleave(
                settings.rounds,
                {name: partial(_connect, engine) for name, engine in engines.items()},
            )
            calls_during = proxy.total_calls - calls_before
        finally:
            for engine in engines.values():
                engine.dispose()
    ratios = ratio_goal(
        samples, "connect ratio (rotating_pool / static)", GOAL_RATIO, throughput=False
    )
    base_ms = samples.median("static") * 1000
    ours_ms = samples.median("rotating_pool") * 1000
    return {
        "connects_each": settings.rounds,
        "static_median_ms": base_ms,
        "rotating_pool_median_ms": ours_ms,
        "overhead_us": (ours_ms - base_ms) * 1000,
        "cpu_overhead_us": (
            samples.median("rotating_pool", "cpu") - samples.median("static", "cpu")
        )
        * 1e6,
        "secrets_manager_calls_while_timed": calls_during,
        **{key: value for key, value in ratios.items() if key != "goal"},
        "goals": [ratios["goal"]],
    }
