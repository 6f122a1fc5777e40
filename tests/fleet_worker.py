"""One process of the fleet test: writes through rotating_pool until told to stop.

Usage: python -m tests.fleet_worker SECRET_ARN. Prints "ready" after its first
commit, then, once a line arrives on stdin, a JSON report of what it counted.
"""

from __future__ import annotations

import json
import sys
import time

import rotating_pool
from rotating_pool.testing.workload import WriteLoad


def main() -> None:
    engine = rotating_pool.create_engine(
        "postgresql+psycopg://", secret_id=sys.argv[1], pool_size=2, pool_recycle=0.2
    )
    load = WriteLoad(engine, threads=2, table="fleet_load")
    load.start()
    deadline = time.monotonic() + 60
    while load.snapshot()[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    print("ready" if load.snapshot()[0] else "no commit within 60 s", flush=True)
    sys.stdin.readline()
    result = load.stop()
    stats = rotating_pool.stats(engine)
    longest = max(result.latencies, default=0.0)
    print(
        json.dumps(
            {
                "commits": result.commits,
                "failures": result.failures,
                "errors": dict(result.errors),
                "recovered_logins": stats.recovered_logins,
                "refetches": stats.refetches,
                "longest_transaction": longest,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
