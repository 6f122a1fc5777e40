"""What rotating_pool's ``do_connect`` hook itself costs per new connection.

Usage: ``python -m benchmarks.hook_cost [--connects N]``

Benchmark 1 compares whole connects; this splits one apart. On the local bed
(`benchmarks.bed`), a static engine and a rotating_pool engine (`NullPool`,
warm cache) take turns opening connections; the client thread's CPU time is
read around ``engine.connect()`` and around the driver's own ``connect``
(the dialect's), so that "connect minus driver" is what SQLAlchemy and, for
rotating_pool, its hook add. Then the hook alone in a warm loop, with a stub
driver that returns at once: what the same Python costs when the CPU's caches
are not emptied by a login in between.

It prints medians in microseconds; nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from benchmarks.bed import counting_proxy, start_bed
from benchmarks.clients import rotating_pool_engine, static_engine
from rotating_pool.engine import _ConnectHook, credential_store
from rotating_pool.policy import RetryBudget


def _timed_driver(engine: Engine, into: list[float]) -> None:
    """Record the CPU time of every driver connect of `engine` in `into`."""
    dialect = engine.dialect
    connect: Callable[..., Any] = dialect.connect

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return connect(*args, **kwargs)
        finally:
            into.append(time.thread_time() - started)

    dialect.connect = timed  # type: ignore[method-assign]


def _connect_cpu(engine: Engine) -> float:
    started = time.thread_time()
    engine.connect().close()
    return time.thread_time() - started


def _us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


class _StubDialect:
    """A driver that returns at once: only the hook's own work is left."""

    driver = "psycopg"
    is_async = False

    def connect(self, *args: Any, **kwargs: Any) -> object:
        return object()


class _StubEntry:
    def __init__(self) -> None:
        self.info: dict[str, Any] = {}


def _warm_hook(engine: Engine, rounds: int) -> float:
    """The hook over `engine`'s store, with a stub driver, many times in a row."""
    dialect = _StubDialect()
    hook = _ConnectHook(credential_store(engine), RetryBudget(), dialect)  # type: ignore[arg-type]
    given = {"host": "h", "dbname": "d"}
    times = []
    for _ in range(rounds):
        started = time.thread_time()
        hook(dialect, _StubEntry(), [], given)  # type: ignore[arg-type]
        times.append(time.thread_time() - started)
    return _us(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connects", type=int, default=1500, help="connects per engine")
    args = parser.parse_args(argv)
    with start_bed() as bed, counting_proxy(bed) as proxy:
        secret = bed.new_secret("single")
        engines = {
            "static": static_engine(bed, secret, poolclass=NullPool),
            "rotating_pool": rotating_pool_engine(bed, secret, proxy, poolclass=NullPool),
        }
        whole: dict[str, list[float]] = {name: [] for name in engines}
        driver: dict[str, list[float]] = {name: [] for name in engines}
        for name, engine in engines.items():
            for _ in range(5):  # warm: dialect set-up, the first secret read
                _connect_cpu(engine)
            _timed_driver(engine, driver[name])
        calls_before = proxy.total_calls
        for _ in range(args.connects):
            for name, engine in engines.items():
                whole[name].append(_connect_cpu(engine))
        print(f"{args.connects} connects per engine, client thread CPU, medians:")
        for name in engines:
            print(
                f"  {name:<14} connect {_us(whole[name]):7.0f} us   driver {_us(driver[name]):7.0f}"
                f" us   connect minus driver {_us(whole[name]) - _us(driver[name]):6.0f} us"
            )
        added = (_us(whole["rotating_pool"]) - _us(driver["rotating_pool"])) - (
            _us(whole["static"]) - _us(driver["static"])
        )
        print(f"  rotating_pool's hook, caches cold after each login: {added:.0f} us")
        warm = _warm_hook(engines["rotating_pool"], 20_000)
        print(f"  the same hook in a warm loop (stub driver): {warm:.0f} us")
        print(f"  (Secrets Manager calls while timed: {proxy.total_calls - calls_before})")
        for engine in engines.values():
            engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
