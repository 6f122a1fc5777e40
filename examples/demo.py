"""Local demo: writers keep committing while the secret rotates, in both strategies.

Starts its own PostgreSQL and Secrets Manager endpoint (moto over HTTP), then
for each strategy runs writer threads through `rotating_pool.create_engine` and,
side by side on the same rotations, through a plain engine built once from
AWSCURRENT, while the rotation handler rotates the secret every few seconds.
Prints a summary of transactions and failures. Run it with ``make demo``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

import sqlalchemy

import rotating_pool
from rotating_pool.rotation import Rotator
from rotating_pool.testing import FaultProxy, LocalPostgres, LocalSecretsManager, static_url
from rotating_pool.testing.workload import WriteLoad, WriteLoadResult


@dataclass
class Outcome:
    strategy: str
    rotations: int
    ours: WriteLoadResult
    ours_rows: int
    static: WriteLoadResult
    recovered: int
    api_calls: int


def run_strategy(
    strategy: str,
    postgres: LocalPostgres,
    secretsmanager: LocalSecretsManager,
    args: argparse.Namespace,
) -> Outcome:
    schema = postgres.create_app_schema(
        role=f"demo_{strategy}", users=(f"demo_{strategy}_a", f"demo_{strategy}_b")
    )
    client = secretsmanager.client()
    admin_arn = client.create_secret(
        Name=f"demo/{strategy}/admin", SecretString=json.dumps(postgres.admin_document())
    )["ARN"]
    arn = client.create_secret(
        Name=f"demo/{strategy}/app",
        SecretString=json.dumps(schema.secret_document(strategy, masterarn=admin_arn)),
    )["ARN"]
    document = schema.secret_document(strategy, masterarn=admin_arn)
    with FaultProxy(secretsmanager.endpoint_url) as counter:  # counts our API calls
        ours_engine = rotating_pool.create_engine(
            "postgresql+psycopg://",
            secret_id=arn,
            client=secretsmanager.client(counter.endpoint_url),
            pool_size=args.threads,
            pool_recycle=0.5,
        )
        static_engine = sqlalchemy.create_engine(
            static_url(document), pool_size=args.threads, pool_recycle=0.5
        )
        ours = WriteLoad(ours_engine, threads=args.threads, table="demo_ours")
        static = WriteLoad(static_engine, threads=args.threads, table="demo_static")
        for load in (ours, static):
            load.create_table()
            load.start()
        rotator = Rotator(client)
        rotations = 0
        print(
            f"\n== {strategy} users: {args.seconds:.0f} s, a rotation every "
            f"{args.every:.1f} s, {args.threads} writers per engine =="
        )
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            result = rotator.rotate(arn, on_step=_hold_window(args.window))
            rotations += 1
            ours_ok, ours_failed = ours.snapshot()
            static_ok, static_failed = static.snapshot()
            print(
                f"  rotation {rotations:2d}: now {result.username:<18} "
                f"rotating_pool {ours_ok:6d} ok {ours_failed:4d} failed | "
                f"built-once {static_ok:6d} ok {static_failed:5d} failed",
                flush=True,
            )
            time.sleep(max(0.0, args.every - (time.monotonic() - started)))
        ours_result = ours.stop()
        static_result = static.stop()
        outcome = Outcome(
            strategy=strategy,
            rotations=rotations,
            ours=ours_result,
            ours_rows=ours.count_rows(),
            static=static_result,
            recovered=rotating_pool.stats(ours_engine).recovered_logins,
            api_calls=counter.total_calls,
        )
        ours_engine.dispose()
        static_engine.dispose()
    return outcome


def _hold_window(seconds: float):  # type: ignore[no-untyped-def]
    def on_step(step: str, _elapsed: float) -> None:
        if step == "testSecret":
            time.sleep(seconds)  # a Lambda's steps take about this long

    return on_step


def print_summary(outcomes: list[Outcome]) -> None:
    print("\n" + "=" * 100)
    print(
        f"{'strategy':<12}{'rotations':>10}{'commits':>10}{'failed':>8}{'rows=commits':>14}"
        f"{'recovered':>11}{'API calls':>11}{'p99 ms':>9}   built-once engine failed"
    )
    for o in outcomes:
        static_total = o.static.commits + o.static.failures
        share = o.static.failures / static_total if static_total else 0.0
        print(
            f"{o.strategy:<12}{o.rotations:>10}{o.ours.commits:>10}{o.ours.failures:>8}"
            f"{'yes' if o.ours_rows == o.ours.commits else 'NO':>14}{o.recovered:>11}"
            f"{o.api_calls:>11}{o.ours.percentile(99) * 1000:>9.1f}   "
            f"{o.static.failures}/{static_total} ({share:.0%})"
        )
    print("=" * 100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per strategy (15)")
    parser.add_argument("--every", type=float, default=1.5, help="seconds between rotations")
    parser.add_argument(
        "--window", type=float, default=0.5, help="seconds between setSecret and finishSecret (0.5)"
    )
    parser.add_argument("--threads", type=int, default=8, help="writers per engine (8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print("starting a local PostgreSQL and Secrets Manager (moto) ...", flush=True)
    with LocalPostgres() as postgres, LocalSecretsManager() as secretsmanager:
        os.environ.update(secretsmanager.env())
        outcomes = [
            run_strategy(strategy, postgres, secretsmanager, args)
            for strategy in ("alternating", "single")
        ]
    print_summary(outcomes)
    ok = all(o.ours.failures == 0 and o.ours_rows == o.ours.commits for o in outcomes)
    print("rotating_pool: zero failed transactions" if ok else "rotating_pool: FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
