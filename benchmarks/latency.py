"""3b. Transaction latency during rotations against the same load without rotations.

One rotating_pool engine, 16 writer threads (one row per transaction), a pool
recycled every 0.5 s so that new logins are frequent. The run alternates
segments without and with rotations (quiet, rotating, rotating, quiet, ...),
so the machine's drift falls on both; the rotations come every 2 s with 1 s
between setSecret and finishSecret. Compared: the p99 of all transactions of
each kind of segment. Both strategies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from benchmarks.bed import ROTATION_EVERY, Bed, Rotations, counting_proxy
from benchmarks.clients import rotating_pool_engine
from benchmarks.measure import goal, summary
from rotating_pool.testing.workload import WriteLoad, WriteLoadResult

GOAL_RATIO = 1.5
THREADS = 16


@dataclass(frozen=True)
class Settings:
    pairs: int  # pairs of segments (one quiet, one rotating)
    rotations_per_segment: int  # a segment lasts this many rotation periods (2 s each)


FULL = Settings(pairs=4, rotations_per_segment=4)
QUICK = Settings(pairs=1, rotations_per_segment=1)


def _segment(engine: Any, rotations: Rotations | None, periods: int) -> WriteLoadResult:
    load = WriteLoad(engine, threads=THREADS, table="bench_latency")
    load.start()
    try:
        if rotations is None:
            time.sleep(periods * ROTATION_EVERY)
        else:
            rotations.run(count=periods)
    finally:
        result = load.stop()
    return result


def _describe(results: list[WriteLoadResult]) -> dict[str, Any]:
    latencies = [x for result in results for x in result.latencies]
    seconds = sum(result.seconds for result in results)
    commits = sum(result.commits for result in results)
    return {
        "transactions": len(latencies),
        "failures": sum(result.failures for result in results),
        "commits_per_second": commits / seconds if seconds else 0.0,
        **summary(latencies),
    }


def _run_strategy(bed: Bed, strategy: str, settings: Settings) -> dict[str, Any]:
    secret = bed.new_secret(strategy)
    with counting_proxy(bed) as proxy:
        engine = rotating_pool_engine(
            bed, secret, proxy, pool_size=THREADS, max_overflow=0, pool_recycle=0.5
        )
        WriteLoad(engine, table="bench_latency").create_table()
        rotations = Rotations(bed, secret)
        quiet: list[WriteLoadResult] = []
        rotating: list[WriteLoadResult] = []
        try:
            for number in range(settings.pairs):
                kinds = ("quiet", "rotating") if number % 2 == 0 else ("rotating", "quiet")
                for kind in kinds:
                    if kind == "quiet":
                        quiet.append(_segment(engine, None, settings.rotations_per_segment))
                    else:
                        rotating.append(_segment(engine, rotations, settings.rotations_per_segment))
        finally:
            engine.dispose()
    without, during = _describe(quiet), _describe(rotating)
    return {
        "rotations": rotations.done,
        "without_rotations": without,
        "during_rotations": during,
        "p99_ratio": during["p99_ms"] / without["p99_ms"] if without["p99_ms"] else None,
    }


def run(bed: Bed, settings: Settings) -> dict[str, Any]:
    results: dict[str, Any] = {
        strategy: _run_strategy(bed, strategy, settings) for strategy in ("alternating", "single")
    }
    results["goals"] = [
        goal(
            f"p99 transaction latency during/without rotations ({strategy})",
            f"<= {GOAL_RATIO}, 0 failures",
            f"{results[strategy]['p99_ratio']:.2f} "
            f"({results[strategy]['during_rotations']['p99_ms']:.1f} / "
            f"{results[strategy]['without_rotations']['p99_ms']:.1f} ms), "
            f"{results[strategy]['during_rotations']['failures']} failures",
            results[strategy]["p99_ratio"] is not None
            and results[strategy]["p99_ratio"] <= GOAL_RATIO
            and results[strategy]["during_rotations"]["failures"] == 0,
        )
        for strategy in ("alternating", "single")
    ]
    return results
