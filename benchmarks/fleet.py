"""6. A fleet: processes sharing one secret through single-user rotations, throttled.

Eight worker processes (`benchmarks.fleet_worker`), each with 2 writer
threads and a pool of 2 recycled every 0.5 s, share one single-user secret.
Each writer pauses 100 ms between transactions, as an application serving
requests would: flat-out writers in 8 processes on 2 cores would measure CPU
starvation (stalls of seconds without any rotation), not waiting on Secrets
Manager.
Secrets Manager, behind the proxy, answers ThrottlingException above 4
GetSecretValue and 16 DescribeSecret calls per second (a token bucket per
operation, burst 1 s of it, AWS's ratio) for the whole fleet. After a quiet
segment (the stall baseline), the secret is rotated every 5 s with 1 s between
setSecret and finishSecret. In single-user rotation every process is refused
in that 1 s window at once and needs one DescribeSecret and one GetSecretValue
(the AWSPENDING version): 8 GetSecretValue per rotation at the least, 2 s of
this quota, the last answered 1 s after the first; a rotation every 5 s leaves
the quota room to drain between rotations.

Reported per client (rotating_pool, and aws-advanced-python-wrapper as the
peer): Secrets Manager calls per rotation (all, and the throttled share),
failures, and the longest transaction of any worker (the longest stall).
Then the extrapolation on paper to 10,000 tasks against AWS's quotas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.bed import Bed, Rotations, Secret, counting_proxy
from benchmarks.clients import CLIENT_LABELS, static_engine, wrapper_unavailable
from benchmarks.measure import goal, percentile
from rotating_pool.testing import FaultProxy
from rotating_pool.testing.workload import WriteLoad

THROTTLE_PER_SECOND = 4.0
ROTATION_EVERY = 5.0
ROTATION_WINDOW = 1.0
THREADS_PER_WORKER = 2
POOL_RECYCLE = 0.5
THINK_SECONDS = 0.1
GOAL_LONGEST_STALL_S = 2.0
# AWS Secrets Manager quotas per account and region, as AWS announced them on
# 4 March 2025 (benchmarks/README.md quotes the quotas page's wording too):
# https://aws.amazon.com/about-aws/whats-new/2025/03/aws-secrets-manager-increases-api-requests-seconds/
GET_SECRET_VALUE_TPS = 10_000
DESCRIBE_SECRET_TPS = 40_000
TASKS = 10_000
# The least GetSecretValue a single-user rotation costs one process: the version
# DescribeSecret names (AWSPENDING, or the new AWSCURRENT); see rotating_pool.reads.
LEAST_CALLS_PER_ROTATION = 1


@dataclass(frozen=True)
class Settings:
    workers: int
    quiet_seconds: float
    rotations: int


FULL = Settings(workers=8, quiet_seconds=10.0, rotations=6)
QUICK = Settings(workers=8, quiet_seconds=2.0, rotations=1)


def _spawn(config: dict[str, Any], proxy: FaultProxy) -> subprocess.Popen[str]:
    env = {**os.environ, "AWS_ENDPOINT_URL_SECRETS_MANAGER": proxy.endpoint_url}
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fleet_worker", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,  # where `benchmarks` imports from
    )


def _ask(workers: list[subprocess.Popen[str]], command: str) -> list[dict[str, Any]]:
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(command + "\n")
        worker.stdin.flush()
    reports = []
    for worker in workers:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if not line:
            raise RuntimeError(f"a fleet worker exited (code {worker.wait()})")
        reports.append(json.loads(line))
    return reports


def _combine(
    reports: list[dict[str, Any]], redact: Any, rotations_at: list[float] | None = None
) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for report in reports:
        for text, count in report["errors"].items():
            errors[redact(text)] = errors.get(redact(text), 0) + count
    worst = max(reports, key=lambda r: r["longest_transaction_s"])
    stalls = [s for report in reports for s in report.get("stalls_s", [])]
    combined: dict[str, Any] = {
        "commits": sum(r["commits"] for r in reports),
        "failures": sum(r["failures"] for r in reports),
        "longest_transaction_s": max(r["longest_transaction_s"] for r in reports),
        "worst_worker_p99_s": max(r["p99_s"] for r in reports),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:3]),
        # Transactions that met a refused login (rotating_pool only: it logs refusals).
        "stall": {
            "count": len(stalls),
            "p50_s": percentile(stalls, 50),
            "p99_s": percentile(stalls, 99),
            "max_s": max(stalls, default=0.0),
        },
    }
    if rotations_at:
        # When, after the start of its rotation, the longest transaction began:
        # the 1 s window between setSecret and finishSecret starts about 0.1 s in.
        began = worst["longest_began_at"]
        previous = [at for at in rotations_at if at <= began]
        if previous:
            combined["longest_began_after_rotation_start_s"] = began - previous[-1]
    return combined


def _config(bed: Bed, client: str, secret: Secret, proxy: FaultProxy) -> dict[str, Any]:
    if client == "rotating_pool":
        url = "postgresql+psycopg://"
    else:  # the wrapper's URL names the proxy and holds no password
        url = bed.wrapper_url(secret, proxy.endpoint_url).render_as_string(hide_password=False)
    return {
        "client": client,
        "secret_id": secret.arn,
        "url": url,
        "threads": THREADS_PER_WORKER,
        "pool_recycle": POOL_RECYCLE,
        "think_seconds": THINK_SECONDS,
    }


def run_fleet(bed: Bed, client: str, settings: Settings) -> dict[str, Any]:
    """One client's fleet through the rotations (the calibration of the simulator runs it too)."""
    secret = bed.new_secret("single")
    setup = static_engine(bed, secret)
    WriteLoad(setup, table="bench_fleet").create_table()
    setup.dispose()
    with counting_proxy(bed) as proxy:
        proxy.throttle(THROTTLE_PER_SECOND)
        config = _config(bed, client, secret, proxy)
        workers = [_spawn(config, proxy) for _ in range(settings.workers)]
        try:
            for worker in workers:
                assert worker.stdout is not None
                if worker.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a fleet worker did not start (code {worker.wait()})")
            _ask(workers, "mark")  # drop the start-up: first reads, throttled, are not a stall
            time.sleep(settings.quiet_seconds)
            quiet = _ask(workers, "mark")
            proxy.reset_calls()  # count the rotations' calls, not the start-up's
            rotations = Rotations(bed, secret, every=ROTATION_EVERY, window=ROTATION_WINDOW)
            rotations.run(count=settings.rotations)
            during = _ask(workers, "stop")
            calls, throttled = proxy.calls, proxy.throttled
            for worker in workers:
                worker.wait(timeout=60)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
    per_rotation = calls.total() / (settings.workers * settings.rotations)
    result = {
        "client": CLIENT_LABELS[client],
        "workers": settings.workers,
        "rotations": settings.rotations,
        "quiet": _combine(quiet, bed.redact),
        "rotating": _combine(during, bed.redact, rotations.started_at),
        "calls": dict(calls),
        "throttled": dict(throttled),
        "calls_per_rotation": calls.total() / settings.rotations,
        "calls_per_rotation_per_process": per_rotation,
        "answered_calls_per_rotation_per_process": (calls.total() - throttled.total())
        / (settings.workers * settings.rotations),
    }
    if client == "rotating_pool":
        result["refetches_per_process"] = [r.get("refetches") for r in during]
    return result


def quota_floor(workers: int) -> float:
    """The earliest the last process can have its answers, in seconds after the refusals.

    Every process needs LEAST_CALLS_PER_ROTATION answered calls; the proxy's
    bucket answers a burst of THROTTLE_PER_SECOND at once, then one call per
    1/THROTTLE_PER_SECOND s. Whatever a client does, its unluckiest process
    waits this long.
    """
    needed = workers * LEAST_CALLS_PER_ROTATION
    return max(0.0, needed - THROTTLE_PER_SECOND) / THROTTLE_PER_SECOND


def _extrapolate(ours: dict[str, Any], workers: int) -> dict[str, Any]:
    """10,000 tasks on paper: the same calls per task, against AWS's quotas."""
    local_least = workers * LEAST_CALLS_PER_ROTATION / THROTTLE_PER_SECOND
    aws_least = TASKS * LEAST_CALLS_PER_ROTATION / GET_SECRET_VALUE_TPS
    per_task = ours["calls_per_rotation_per_process"]
    return {
        "tasks": TASKS,
        "get_secret_value_per_rotation_least": TASKS * LEAST_CALLS_PER_ROTATION,
        "get_secret_value_per_rotation_at_measured_rate": TASKS * per_task,
        "seconds_of_quota_per_rotation_least": aws_least,
        "local_seconds_of_quota_per_rotation_least": local_least,
        # The stall is set by how long the quota takes to answer everyone: scale
        # the local fleet's by the seconds of quota each asks for.
        "longest_stall_scaled_s": ours["rotating"]["longest_transaction_s"]
        * aws_least
        / local_least,
        "steady_describe_secret_per_second": TASKS * (3600 / 2700) / 3600,
        "steady_share_of_describe_secret_quota": TASKS * (3600 / 2700) / 3600 / DESCRIBE_SECRET_TPS,
    }


def run(bed: Bed, settings: Settings) -> dict[str, Any]:
    results: dict[str, Any] = {
        "throttle_per_second": THROTTLE_PER_SECOND,
        "rotation_every_s": ROTATION_EVERY,
        "rotation_window_s": ROTATION_WINDOW,
        "quota_floor_s": quota_floor(settings.workers),
        "rotating_pool": run_fleet(bed, "rotating_pool", settings),
    }
    missing = wrapper_unavailable()
    results["wrapper"] = (
        {"not_measured": missing} if missing else run_fleet(bed, "wrapper", settings)
    )
    ours = results["rotating_pool"]
    results["extrapolation"] = _extrapolate(ours, settings.workers)
    stall = ours["rotating"]["longest_transaction_s"]
    results["goals"] = [
        goal(
            f"fleet of {settings.workers}, throttled at {THROTTLE_PER_SECOND:.0f}/s: failures",
            "0",
            f"{ours['rotating']['failures']} / "
            f"{ours['rotating']['commits'] + ours['rotating']['failures']}",
            ours["rotating"]["failures"] == 0,
        ),
        goal(
            "fleet: longest stall of any transaction",
            f"<= {GOAL_LONGEST_STALL_S:.0f} s",
            f"{stall:.2f} s (quiet: {ours['quiet']['longest_transaction_s']:.2f} s; "
            f"{settings.workers * LEAST_CALLS_PER_ROTATION} GetSecretValue at "
            f"{THROTTLE_PER_SECOND:.0f}/s take {quota_floor(settings.workers):.1f} s to answer)",
            stall <= GOAL_LONGEST_STALL_S,
        ),
    ]
    return results
