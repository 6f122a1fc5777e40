"""One process of the fleet benchmark: writer threads through one engine, until told to stop.

Usage: ``python -m benchmarks.fleet_worker CONFIG_JSON`` with keys ``client``
(``rotating_pool`` or ``wrapper``), ``secret_id``, ``url``, ``threads``,
``pool_recycle``, ``think_seconds`` (each writer's pause between
transactions). rotating_pool reads Secrets Manager as it does by default
(boto3's chain, ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` set by the parent to the
throttling proxy); the wrapper's URL names the proxy itself.

Prints ``ready`` once every writer has committed a transaction (or after 30 s,
so a client that cannot start is reported rather than waited for). Then, for each line on
stdin: ``mark`` prints a JSON report of the transactions since the last report
and goes on; ``stop`` prints the last report and exits.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from typing import Any

import sqlalchemy
from sqlalchemy.engine import Engine

import rotating_pool

READY_TIMEOUT = 30.0


class RefusalSeen(logging.Handler):
    """Marks the thread whose login rotating_pool saw refused.

    rotating_pool logs each refused login at INFO from the thread that tried it
    (the sync engine's ``do_connect`` runs in the checking-out thread), so a
    writer can tell whether its transaction met a refusal: that transaction is
    a stall, whatever its length.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if "the database refused" in str(record.msg):
            self.local.refused = True

    def take(self) -> bool:
        """Whether this thread saw a refusal since the last call."""
        seen = bool(getattr(self.local, "refused", False))
        self.local.refused = False
        return seen


REFUSALS = RefusalSeen()


class Segment:
    """What the writers saw since the last report."""

    def __init__(self) -> None:
        self.commits = 0
        self.failures = 0
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.longest = (0.0, 0.0)  # (latency, wall-clock time it began)
        self.stalls: list[float] = []  # transactions that met a refused login

    def record(self, began: float, latency: float, stalled: bool = False) -> None:
        self.latencies.append(latency)
        if stalled:
            self.stalls.append(latency)
        if latency > self.longest[0]:
            self.longest = (latency, began)

    def report(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else 0.0
        return {
            "commits": self.commits,
            "failures": self.failures,
            "errors": dict(self.errors.most_common(3)),
            "longest_transaction_s": ordered[-1] if ordered else 0.0,
            "p99_s": p99,
            # Wall-clock (epoch) time the longest transaction began: the parent
            # lines it up with its rotations' timestamps.
            "longest_began_at": self.longest[1],
            "stalls_s": self.stalls,
        }


class Writers:
    def __init__(self, engine: Engine, threads: int, think_seconds: float) -> None:
        self.engine = engine
        self.think_seconds = think_seconds
        self.lock = threading.Lock()
        self.segment = Segment()
        # Ready once every writer has committed: a writer still in its first
        # login (throttled at start-up) would charge its wait to the quiet segment.
        self.ready = threading.Event()
        self._committed: set[int] = set()
        self.stopping = threading.Event()
        self.insert = sqlalchemy.text("INSERT INTO bench_fleet (worker) VALUES (:worker)")
        self.threads = [
            threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(threads)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def take(self) -> Segment:
        with self.lock:
            segment, self.segment = self.segment, Segment()
        return segment

    def stop(self) -> Segment:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        return self.take()

    def _work(self, number: int) -> None:
        while not self.stopping.is_set():
            began, began_at = time.perf_counter(), time.time()
            REFUSALS.take()
            try:
                with self.engine.begin() as conn:
                    conn.execute(self.insert, {"worker": number})
            except Exception as error:  # counted: a failed transaction is what we measure
                elapsed = time.perf_counter() - began
                line = str(error).splitlines()[0][:160] if str(error) else ""
                with self.lock:
                    self.segment.failures += 1
                    self.segment.errors[f"{type(error).__name__}: {line}"] += 1
                    self.segment.record(began_at, elapsed, REFUSALS.take())
            else:
                elapsed = time.perf_counter() - began
                stalled = REFUSALS.take()
                with self.lock:
                    self.segment.commits += 1
                    self.segment.record(began_at, elapsed, stalled)
                if number not in self._committed:
                    with self.lock:
                        self._committed.add(number)
                        if len(self._committed) == len(self.threads):
                            self.ready.set()
            time.sleep(self.think_seconds)


def _engine(config: dict[str, Any]) -> Engine:
    pool = {
        "pool_size": config["threads"],
        "max_overflow": 0,
        "pool_recycle": config["pool_recycle"],
    }
    if config["client"] == "rotating_pool":
        return rotating_pool.create_engine(config["url"], secret_id=config["secret_id"], **pool)
    return sqlalchemy.create_engine(config["url"], **pool)


def _report(engine: Engine, config: dict[str, Any], segment: Segment) -> str:
    report = segment.report()
    if config["client"] == "rotating_pool":
        stats = rotating_pool.stats(engine)
        report["refetches"] = stats.refetches
        report["recovered_logins"] = stats.recovered_logins
        report["failed_recoveries"] = stats.failed_recoveries
    return json.dumps(report)


def main() -> None:
    config = json.loads(sys.argv[1])
    library_log = logging.getLogger("rotating_pool")
    library_log.setLevel(logging.INFO)
    library_log.addHandler(REFUSALS)
    library_log.propagate = False  # the records are only counted, never printed
    engine = _engine(config)
    writers = Writers(engine, config["threads"], config["think_seconds"])
    writers.start()
    writers.ready.wait(READY_TIMEOUT)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            break
        print(_report(engine, config, writers.take()), flush=True)
    print(_report(engine, config, writers.stop()), flush=True)
    engine.dispose()


if __name__ == "__main__":
    main()
