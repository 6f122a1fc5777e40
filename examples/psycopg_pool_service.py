"""A service on psycopg_pool's ConnectionPool, its logins taken from a rotating secret.

The only rotating_pool lines are the pool's ``connection_class`` and, to close
connections on superseded credentials soon after a rotation,
`retire_superseded`; the rest is plain psycopg_pool.

    DB_SECRET_ID=prod/app/db python -m examples.psycopg_pool_service --seconds 30

Environment: ``DB_SECRET_ID`` (the secret's name or ARN); optionally
``DB_CONNINFO`` (default empty: host, port and dbname from the secret).
It writes one row per transaction from ``--threads`` workers for ``--seconds``
and prints what it committed and what failed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

from psycopg_pool import ConnectionPool

from rotating_pool.pool import connection_class, retire_superseded


def make_pool(secret_id: str, conninfo: str = "", **pool_kwargs: object) -> ConnectionPool:
    """The service's pool: psycopg_pool's own, logging in through the secret."""
    pool = ConnectionPool(
        conninfo, connection_class=connection_class(secret_id), open=True, **pool_kwargs
    )
    retire_superseded(pool, retire_after=60)
    return pool


def main() -> None:
    """Write rows for a while; print {"commits": n, "failures": n, "rows": n}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--max-lifetime", type=float, default=3600.0)
    args = parser.parse_args()
    pool = make_pool(
        os.environ["DB_SECRET_ID"],
        os.environ.get("DB_CONNINFO", ""),
        min_size=2,
        max_size=args.threads,
        max_lifetime=args.max_lifetime,
    )
    with pool:
        with pool.connection() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS service_rows (id bigserial PRIMARY KEY, worker int)"
            )
        counts = {"commits": 0, "failures": 0}
        lock = threading.Lock()
        stop = time.monotonic() + args.seconds

        def work(worker: int) -> None:
            while time.monotonic() < stop:
                try:
                    with pool.connection() as conn:
                        conn.execute("INSERT INTO service_rows (worker) VALUES (%s)", (worker,))
                except Exception:  # counted and reported
                    with lock:
                        counts["failures"] += 1
                else:
                    with lock:
                        counts["commits"] += 1

        workers = [threading.Thread(target=work, args=(n,)) for n in range(args.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        with pool.connection() as conn:
            rows = conn.execute("SELECT count(*) FROM service_rows").fetchone()
        print(json.dumps({**counts, "rows": rows[0] if rows else 0}))


if __name__ == "__main__":
    main()
