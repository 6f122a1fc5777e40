"""Run every benchmark on a local stack; print a table; write benchmarks/results/.

    python -m benchmarks.run           # the full run (about 10 minutes on 2 cores)
    python -m benchmarks.run --quick   # a short run that only checks they all work

Needs PostgreSQL 15's server binaries and the ``bench`` extra
(``pip install -e '.[bench]'``: aws-advanced-python-wrapper, matplotlib).
Exits non-zero when a benchmark could not run; a missed goal is reported, not
an error (the figures drift on a shared machine).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchmarks.rotation_steps as rotation_steps
from benchmarks import (
    api_calls,
    async_checkout,
    async_connect,
    checkout,
    connect,
    failures,
    fleet,
    latency,
    recovery,
)
from benchmarks.bed import Bed, start_bed
from benchmarks.machine import describe, load_average
from benchmarks.report import print_report, write_chart, write_json, write_markdown

RESULTS = Path(__file__).resolve().parent / "results"

# Each benchmark: its module's run(bed, settings), with its full and quick settings.
BENCHMARKS: dict[str, Any] = {
    "connect": connect,
    "checkout": checkout,
    "async_connect": async_connect,
    "async_checkout": async_checkout,
    "recovery": recovery,
    "latency": latency,
    "api_calls": api_calls,
    "failures": failures,
    "fleet": fleet,
    "rotation_steps": rotation_steps,
}


def _run_one(name: str, module: Any, bed: Bed, quick: bool) -> dict[str, Any]:
    settings = module.QUICK if quick else module.FULL
    run: Callable[[Bed, Any], dict[str, Any]] = module.run
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    started = time.monotonic()
    try:
        outcome = run(bed, settings)
    except Exception as error:  # one broken benchmark must not hide the others' figures
        traceback.print_exc()
        return {"error": bed.redact(f"{type(error).__name__}: {error}")}
    outcome["seconds"] = round(time.monotonic() - started, 1)
    print(f"[{time.strftime('%H:%M:%S')}] {name} done in {outcome['seconds']:.0f} s", flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run that checks they work")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write NAME.json, NAME.md and NAME.png (default benchmarks/results, "
        "NAME latest, or quick with --quick)",
    )
    args = parser.parse_args(argv)
    # Quiet: the libraries' INFO lines (recoveries, rotations) would drown the table.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    stem = "quick" if args.quick else "latest"
    output = args.output or RESULTS
    chosen = args.only or list(BENCHMARKS)
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": describe(),
        "load_average": {"start": load_average()},
        "benchmarks": {},
    }
    print("starting a local PostgreSQL and Secrets Manager (moto) ...", flush=True)
    with start_bed() as bed:
        for name in chosen:
            results["benchmarks"][name] = _run_one(name, BENCHMARKS[name], bed, args.quick)
    results["load_average"]["end"] = load_average()
    results["seconds"] = round(time.monotonic() - started, 1)
    print_report(results)
    write_json(results, output / f"{stem}.json")
    write_markdown(results, output / f"{stem}.md")
    write_chart(results, output / f"{stem}.png")
    print(f"\nwrote {output / stem}.json, .md and .png in {results['seconds']:.0f} s")
    broken = [name for name, outcome in results["benchmarks"].items() if "error" in outcome]
    if broken:
        print(f"benchmarks that could not run: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
