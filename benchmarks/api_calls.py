"""4. Secrets Manager calls per rotation per process, and in the steady state.

Per rotation: one rotating_pool engine in one process, with 1, 16 and 64
writer threads (pool_size = threads, pool_recycle 0.5 s), rotated every 2 s
with 1 s between setSecret and finishSecret, both strategies. The engine's
periodic refresh runs every 1 s (`refresh_interval=1`, shorter than the
rotation period), so whole rotation cycles are counted, the steady-state
refresh after each recovery included: a refresh that read again a version the
recovery already has would show. Counted per rotation: GetSecretValue (goal: at
most 1 on average, never more than 2 in one rotation) and DescribeSecret.

Steady state: the engine's periodic refresh at the default interval (3600 s)
would need hours to count, so it runs with a 2 s interval and the count is
scaled: calls per hour at interval T = calls per second measured at interval t
times t. On paper: a refresh comes after a random time between half and all of
the interval (mean 0.75), so 3600 / 2700 = 1.33 DescribeSecret per hour, and a
GetSecretValue only when AWSCURRENT moved.
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
from rotating_pool.testing.workload import WriteLoad

THREAD_COUNTS = (1, 16, 64)
DEFAULT_TTL = rotating_pool.DEFAULT_REFRESH_INTERVAL
STEADY_TTL = 2.0
CYCLE_REFRESH = 1.0  # the refresh interval while rotations are counted
# The goals: at most 1 GetSecretValue per rotation per process on
# average, in both strategies, and never more than 2 in any one rotation.
GOAL_MEAN_GETS = 1.0
GOAL_MAX_GETS = 2


@dataclass(frozen=True)
class Settings:
    rotations: int
    steady_seconds: float


FULL = Settings(rotations=20, steady_seconds=60.0)
QUICK = Settings(rotations=2, steady_seconds=6.0)


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
            bed,
            secret,
            proxy,
            pool_size=threads,
            max_overflow=0,
            pool_recycle=0.5,
            refresh_interval=CYCLE_REFRESH,
        )
        load = WriteLoad(engine, threads=threads, table="bench_api_calls")
        load.create_table()
        load.start()
        gets: list[int] = []
        try:
            _wait_for_commits(load)
            proxy.reset_calls()  # the first read is not a rotation's
            stats_before = rotating_pool.stats(engine)
            rotating = Rotations(bed, secret)
            for _ in range(rotations):
                before = proxy.calls["GetSecretValue"]
                rotating.run(count=1)  # one whole cycle: 2 s, refreshes included
                gets.append(proxy.calls["GetSecretValue"] - before)
            calls = proxy.calls
        finally:
            result = load.stop()
            stats = rotating_pool.stats(engine)
            engine.dispose()
    return {
        "threads": threads,
        "rotations": rotations,
        "calls": dict(calls),
        "gets_per_rotation": calls["GetSecretValue"] / rotations,
        "max_gets_in_one_rotation": max(gets),
        "describes_per_rotation": calls["DescribeSecret"] / rotations,
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
        # A refresh after uniform(TTL/2, TTL) seconds: 0.75 TTL on average.
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
        mean = max(row["gets_per_rotation"] for row in rows)
        worst = max(row["max_gets_in_one_rotation"] for row in rows)
        figures = ", ".join(
            f"{row['threads']}t: {row['gets_per_rotation']:.2f} "
            f"(max {row['max_gets_in_one_rotation']}; "
            f"+{row['describes_per_rotation']:.2f} DescribeSecret)"
            for row in rows
        )
        goals.append(
            goal(
                f"GetSecretValue per rotation per process ({strategy}), 1/16/64 threads",
                f"<= {GOAL_MEAN_GETS:g} on average, <= {GOAL_MAX_GETS} in any rotation",
                figures,
                mean <= GOAL_MEAN_GETS and worst <= GOAL_MAX_GETS,
            )
        )
    return {"per_rotation": per_rotation, "steady_state": steady, "goals": goals}
