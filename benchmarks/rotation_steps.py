"""Rotation step timings: `Rotator.rotate` and the Lambda handler, both strategies.

    python -m benchmarks.rotation_steps [--rotations N]

Prints the table of docs/explanations/measured.md's "Rotation steps": per
step, the median and p95 of N rotations (50 by default) in four columns,
single and alternating users, each driven two ways:

- ``rotate``: `Rotator.rotate`, what ``rotating-pool rotate`` runs (its client
  made from boto3's default chain, as the command makes it);
- Lambda handler: ``RotateSecret`` with a test-bed Lambda ARN (moto, patched
  by `LocalSecretsManager`, stages the empty AWSPENDING version and invokes
  nothing), then `lambda_handler` called in-process once per step, as Secrets
  Manager invokes a function once per step.

Each column rotates its own secret; one rotation per column is made first and
not timed (imports, clients, first connections); then the columns take turns,
one rotation each, in an order that shifts every round, so that the shared
machine's drift spreads over all four. It also counts the Secrets Manager API
calls each step makes (botocore's ``before-call`` event on the rotation's own
client) and times a SCRAM login to the same server, the unit most steps are
made of. Everything runs locally: PostgreSQL 15 and moto's Secrets Manager over
HTTP on 127.0.0.1, started and stopped by the run.

`run` is also `benchmarks.run`'s ``rotation_steps`` benchmark (``--quick``
makes 3 rotations per column: it only checks that the script works).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from benchmarks.bed import Bed, Secret, start_bed
from benchmarks.machine import describe, load_average
from benchmarks.measure import percentile
from rotating_pool.rotation import STEPS, Rotator, lambda_handler
from rotating_pool.rotation.handler import rotator_from_environment
from rotating_pool.testing.secretsmanager import REGION

__all__ = ["FULL", "QUICK", "Settings", "main", "run", "table"]

# A function name LocalSecretsManager recognises: RotateSecret stages the
# rotation and invokes nothing.
LOCAL_LAMBDA_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:rotating-pool-local-steps"

COLUMNS = (
    ("single", "rotate"),
    ("alternating", "rotate"),
    ("single", "lambda"),
    ("alternating", "lambda"),
)


@dataclass(frozen=True)
class Settings:
    """How many timed rotations per column, and how many logins to time."""

    rotations: int
    logins: int


FULL = Settings(rotations=50, logins=50)
QUICK = Settings(rotations=3, logins=5)


def _label(strategy: str, driver: str) -> str:
    return f"{strategy} ({'`rotate`' if driver == 'rotate' else 'Lambda handler'})"


class _CallCounter:
    """Counts a boto3 client's API calls (one per operation, retries not included)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        client.meta.events.register("before-call.secrets-manager", self._seen)

    def _seen(self, **_: Any) -> None:
        self.count += 1


class _Column:
    """One strategy driven one way: its secret, its client, its samples."""

    def __init__(self, bed: Bed, strategy: str, driver: str) -> None:
        self.label = _label(strategy, driver)
        self.driver = driver
        self.secret: Secret = bed.new_secret(strategy)
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.calls: dict[str, list[int]] = defaultdict(list)
        if driver == "rotate":
            self.rotator = Rotator()  # boto3's default chain, as `rotating-pool rotate`
        else:
            self.rotator = rotator_from_environment()  # the handler's own, cached
        self.counter = _CallCounter(self.rotator.client)
        self.bed = bed

    def rotate(self, record: bool) -> None:
        steps = self._by_rotate() if self.driver == "rotate" else self._by_handler()
        if record:
            for step, (seconds, calls) in steps.items():
                self.seconds[step].append(seconds)
                self.calls[step].append(calls)
            self.seconds["total"].append(sum(seconds for seconds, _ in steps.values()))
            self.calls["total"].append(sum(calls for _, calls in steps.values()))

    def _by_rotate(self) -> dict[str, tuple[float, int]]:
        steps: dict[str, tuple[float, int]] = {}
        # A token given: rotate() then reads nothing before createSecret, so
        # each step's calls are its own.
        before = self.counter.count

        def on_step(step: str, seconds: float) -> None:
            nonlocal before
            steps[step] = (seconds, self.counter.count - before)
            before = self.counter.count

        self.rotator.rotate(self.secret.arn, token=str(uuid.uuid4()), on_step=on_step)
        return steps

    def _by_handler(self) -> dict[str, tuple[float, int]]:
        token = self.bed.client.rotate_secret(
            SecretId=self.secret.arn, RotationLambdaARN=LOCAL_LAMBDA_ARN
        )["VersionId"]
        steps: dict[str, tuple[float, int]] = {}
        for step in STEPS:
            event = {"SecretId": self.secret.arn, "ClientRequestToken": token, "Step": step}
            before = self.counter.count
            started = time.perf_counter()
            lambda_handler(event, None)
            steps[step] = (time.perf_counter() - started, self.counter.count - before)
        return steps


def _time_logins(bed: Bed, secret: Secret, count: int) -> list[float]:
    document = bed.current_document(secret)
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        conn = psycopg.connect(
            host=document["host"],
            port=document["port"],
            user=document["username"],
            password=document["password"],
            dbname=document["dbname"],
        )
        seconds.append(time.perf_counter() - started)
        conn.close()
    return seconds


def _figure(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(seconds, 50) * 1000, 1),
        "p95_ms": round(percentile(seconds, 95) * 1000, 1),
    }


def run(
    bed: Bed, settings: Settings, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Time `settings.rotations` rotations per column; return the figures (milliseconds)."""
    # The handler sets its logger to INFO when it is unset (a Lambda's root
    # logger is at WARNING); here one line per step would drown the report.
    rotation_logger = logging.getLogger("rotating_pool.rotation")
    level = rotation_logger.level
    rotation_logger.setLevel(max(level, logging.WARNING))
    try:
        columns = [_Column(bed, strategy, driver) for strategy, driver in COLUMNS]
        for column in columns:
            column.rotate(record=False)
        for n in range(settings.rotations):
            for k in range(len(columns)):
                columns[(n + k) % len(columns)].rotate(record=True)
            if progress is not None and (n + 1) % 10 == 0:
                progress(f"{n + 1} of {settings.rotations} rounds")
    finally:
        rotation_logger.setLevel(level)
    logins = _time_logins(bed, columns[0].secret, settings.logins)
    return {
        "rotations": settings.rotations,
        "columns": {
            column.label: {
                "steps": {step: _figure(column.seconds[step]) for step in (*STEPS, "total")},
                "calls": {
                    step: statistics.median(column.calls[step]) for step in (*STEPS, "total")
                },
            }
            for column in columns
        },
        "login": {"count": settings.logins, **_figure(logins)},
    }


def table(outcome: dict[str, Any]) -> str:
    """The README's table: median (p95) per step and column, then calls per step."""
    labels = list(outcome["columns"])
    lines = [
        "| step | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for step in (*STEPS, "total"):
        cells = [
            "{p50_ms:.0f} ms (p95 {p95_ms:.0f})".format(**outcome["columns"][label]["steps"][step])
            for label in labels
        ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Secrets Manager API calls per step (median):",
        "",
        "| step | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for step in (*STEPS, "total"):
        cells = [f"{outcome['columns'][label]['calls'][step]:g}" for label in labels]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    login = outcome["login"]
    lines += [
        "",
        f"A SCRAM-SHA-256 login over TCP to the same server: {login['p50_ms']:.1f} ms median "
        f"(p95 {login['p95_ms']:.1f}) of {login['count']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rotations",
        type=int,
        default=FULL.rotations,
        help=f"timed rotations per column (default {FULL.rotations})",
    )
    args = parser.parse_args(argv)
    if args.rotations < 1:
        parser.error("--rotations must be at least 1")
    settings = Settings(rotations=args.rotations, logins=FULL.logins)
    machine = describe()
    print("starting a local PostgreSQL and Secrets Manager (moto) ...", file=sys.stderr, flush=True)
    start = load_average()
    started = time.monotonic()
    with start_bed() as bed:
        outcome = run(bed, settings, progress=lambda text: print(text, file=sys.stderr, flush=True))
    print(
        f"{settings.rotations} rotations per column, {time.monotonic() - started:.0f} s; "
        f"{machine['cores']} cores ({machine['cpu']}), {machine['postgresql']}, "
        f"moto {machine['packages']['moto']}; load average (1/5/15 min) at start "
        f"{'/'.join(map(str, start))}, at end {'/'.join(map(str, load_average()))}\n"
    )
    print(table(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
