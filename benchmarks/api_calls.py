"""4. Secrets Manager calls per rotation per process, and in the steady state.

Per rotation: one rotating_pool engine in one process, with 1, 16 and 64
writer threads (pool_size = threads, pool_recycle 0.5 s), rotated every 2 s
with 1 s between setSecret and finishSecret, both strategies. Counted: every
call the engine makes after its first read, divided by the rotations.

Steady state: the engine's periodic refresh at the default TTL (3600 s) would
need hours to count, so it runs with a 2 s TTL and the count is scaled by
TTL: calls per hour at TTL T = calls per second measured at TTL t times t (the
refresh cadence is proportional to the TTL). The documented cadence gives the
same figure on paper: aws-secretsmanager-caching refreshes after a random
whole number of seconds between TTL/2 and TTL (mean 0.75 TTL), so at most
3600 / 2700 = 1.33 DescribeSecret per hour, and a GetSecretValue only when
AWSCURRENT moved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.pool import NullPool

import rotating_pool
from benchmarks.bed import Bed, Rotations, counting_proxy
from benchmarks.clients import rotating_pool_engine
from benchmarks.measure import goal
from rotating_pool.local.workload import WriteLoad

THREAD_COUNTS = (1, 16, 64)
DEFAULT_TTL = rotating_pool.DEFAULT_REFRESH_INTERVAL
STEADY_TTL = 2.0
# The goal: at most 2 calls per rotation, 3 when AWSPENDING is needed (single-user).
GOAL_PER_ROTATION = {"alternating": 2, "single": 3}


@dataclass(frozen=True)
class Settings:
    rotations: int
    steady_seconds: float


FULL = Settings(rotations=6, steady_seconds=60.0)
QUICK = Settings(rotations=1, steady_seconds=6.0)


def _wait_for_commits(load: WriteLoad, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while load.snapshot()[0] == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the write load made no commit")
        time.sleep(0.01)


def _per_rotation(bed: Bed, strategy: str, threads: int, rotations: int) -> dict[str, Any]:
    secret = bed.new_secret(strategy)
    with counting_proxy(bed) as proxy:
        engine = rotating_pool_engine(
            bed, secret, proxy, pool_size=threads, max_overflow=0, pool_recycle=0.5
        )
        load = WriteLoad(engine, threads=threads, table="bench_api_calls")
        load.create_table()
        load.start()
        try:
            _wait_for_commits(load)
            proxy.reset_calls()  # the first read is not a rotation's
            stats_before = rotating_pool.stats(engine)
            Rotations(bed, secret).run(count=rotations)
            time.sleep(1.0)  # every pooled connection is recycled after the last rotation
            calls = proxy.calls
        finally:
            result = load.stop()
            stats = rotating_pool.stats(engine)
            engine.dispose()
    return {
        "threads": threads,
        "rotations": rotations,
        "calls": dict(calls),
        "per_rotation": calls.total() / rotations,
        "rejected_logins": stats.rejected_logins - stats_before.rejected_logins,
        "refetches": stats.refetches - stats_before.refetches,
        "refetch_joins": stats.refetch_joins - stats_before.refetch_joins,
        "failures": result.failures,
        "commits": result.commits,
    }


def _steady_state(bed: Bed, seconds: float) -> dict[str, Any]:
    secret = bed.new_secret("single")
    with counting_proxy(bed) as proxy:
        engine = rotating_pool_engine(
            bed, secret, proxy, refresh_interval=STEADY_TTL, poolclass=NullPool
        )
        try:

            def connect_for(duration: float) -> None:
                # New connections, 20 a second: the refresh is polled at connects.
                deadline = time.monotonic() + duration
                while time.monotonic() < deadline:
                    engine.connect().close()
                    time.sleep(0.05)

            connect_for(2 * STEADY_TTL)  # past the first read and the cache's own first read
            proxy.reset_calls()
            started = time.monotonic()
            connect_for(seconds)
            elapsed = time.monotonic() - started
            calls = proxy.calls
        finally:
            engine.dispose()
    per_hour = calls.total() / elapsed * STEADY_TTL * (3600 / DEFAULT_TTL)
    return {
        "ttl_measured_s": STEADY_TTL,
        "seconds": elapsed,
        "calls": dict(calls),
        "calls_per_hour_at_default_ttl": per_hour,
        # aws-secretsmanager-caching: randint(TTL/2, TTL) seconds between refreshes.
        "documented_calls_per_hour_at_default_ttl": 3600 / (0.75 * DEFAULT_TTL),
    }


def run(bed: Bed, settings: Settings) -> dict[str, Any]:
    per_rotation = {
        strategy: [
            _per_rotation(bed, strategy, threads, settings.rotations) for threads in THREAD_COUNTS
        ]
        for strategy in ("alternating", "single")
    }
    steady = _steady_state(bed, settings.steady_seconds)
    goals = []
    for strategy, rows in per_rotation.items():
        worst = max(row["per_rotation"] for row in rows)
        allowed = GOAL_PER_ROTATION[strategy]
        figures = ", ".join(f"{row['threads']}t: {row['per_rotation']:.2f}" for row in rows)
        goals.append(
            goal(
                f"calls per rotation per process ({strategy}), 1/16/64 threads",
                f"<= {allowed} whatever the thread count",
                figures,
                worst <= allowed,
            )
        )
    return {"per_rotation": per_rotation, "steady_state": steady, "goals": goals}
