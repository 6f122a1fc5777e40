"""5. Failures under rotation: three clients, both strategies, the same load.

The load: 16 writer threads, one row per
transaction, pool_size 16, pool_recycle 0.5 s (new logins are frequent), a
rotation every 2 s with 1 s between setSecret and finishSecret. Each client
runs alone on the machine (one after the other) on a fresh secret, so none
steals the others' CPU; the order of the clients alternates between the two
strategies. Reported: failed / attempted transactions, commits per second, and
the client's Secrets Manager calls (counted by a proxy; the engine built once
makes its one read through it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.bed import Bed, Rotations, counting_proxy
from benchmarks.clients import (
    CLIENT_LABELS,
    rotating_pool_engine,
    static_engine,
    wrapper_engine,
    wrapper_unavailable,
)
from benchmarks.measure import goal
from rotating_pool.testing.workload import WriteLoad

THREADS = 16
STRATEGIES = ("alternating", "single")
CLIENTS = ("static", "wrapper", "rotating_pool")


@dataclass(frozen=True)
class Settings:
    seconds: float  # of rotations, per client and strategy


FULL = Settings(seconds=30.0)
QUICK = Settings(seconds=4.0)


def _engine(bed: Bed, client: str, secret: Any, proxy: Any) -> Any:
    pool = {"pool_size": THREADS, "max_overflow": 0, "pool_recycle": 0.5}
    if client == "static":
        return static_engine(bed, secret, proxy, **pool)
    if client == "wrapper":
        return wrapper_engine(bed, secret, proxy, **pool)
    return rotating_pool_engine(bed, secret, proxy, **pool)


def _run_one(bed: Bed, client: str, strategy: str, seconds: float) -> dict[str, Any]:
    secret = bed.new_secret(strategy)
    with counting_proxy(bed) as proxy:
        engine = _engine(bed, client, secret, proxy)
        load = WriteLoad(engine, threads=THREADS, table="bench_failures")
        load.create_table()
        load.start()
        rotations = Rotations(bed, secret)
        try:
            rotations.run(seconds=seconds)
        finally:
            result = load.stop()
            engine.dispose()
        calls = proxy.calls
    attempted = result.commits + result.failures
    return {
        "client": CLIENT_LABELS[client],
        "rotations": rotations.done,
        "attempted": attempted,
        "failed": result.failures,
        "failed_share": result.failures / attempted if attempted else 0.0,
        "commits_per_second": result.commits / result.seconds if result.seconds else 0.0,
        "secrets_manager_calls": calls.total(),
        "calls_by_operation": dict(calls),
        "errors": {bed.redact(k): v for k, v in result.errors.most_common(3)},
    }


def run(bed: Bed, settings: Settings) -> dict[str, Any]:
    missing = wrapper_unavailable()
    results: dict[str, Any] = {strategy: {} for strategy in STRATEGIES}
    for number, strategy in enumerate(STRATEGIES):
        order = CLIENTS if number % 2 == 0 else CLIENTS[::-1]
        for client in order:
            if client == "wrapper" and missing is not None:
                results[strategy][client] = {"not_measured": missing}
                continue
            results[strategy][client] = _run_one(bed, client, strategy, settings.seconds)
    results["goals"] = [
        goal(
            f"failures under rotation ({strategy}), rotating_pool",
            "0 failed",
            f"{ours['failed']} / {ours['attempted']}, "
            f"{ours['secrets_manager_calls']} calls, {ours['rotations']} rotations",
            ours["failed"] == 0,
        )
        for strategy in STRATEGIES
        for ours in (results[strategy]["rotating_pool"],)
    ]
    return results
