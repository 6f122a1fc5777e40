"""What retirement (`retire_after`) costs in Secrets Manager calls, per process and per fleet.

    python -m benchmarks.retire_cost [--processes 1000] [--pool-size 10]

Computed from the library's own settings (`rotating_pool.retire.poll_interval`,
`retirement_window` and the store's jittered refresh), not measured: the
figures docs/guides/retirement.md quotes. The store refreshes after a random time between
half the poll interval and all of it (mean 0.75 of it); retirement's clock
ticks every quarter of it, so a refresh starts at most a quarter late. Each
refresh is one DescribeSecret; a GetSecretValue follows only when AWSCURRENT
moved to a version not read yet: once per rotation and process.

Quota: DescribeSecret 40,000 requests per second per account and Region
(https://docs.aws.amazon.com/secretsmanager/latest/userguide/reference_limits.html).
Price: $0.05 per 10,000 API calls
(https://aws.amazon.com/secrets-manager/pricing/).
"""

from __future__ import annotations

import argparse
import math

from rotating_pool.retire import max_per_second, poll_interval, retirement_window

DESCRIBE_SECRET_QUOTA = 40_000.0  # requests per second, per account and Region
PRICE_PER_CALL = 0.05 / 10_000  # USD
SECONDS_PER_MONTH = 30 * 24 * 3600

RETIRE_AFTER = (10.0, 60.0, 300.0, 900.0, 3600.0)


def rows(processes: int, pool_size: int) -> list[list[str]]:
    """One row per retire_after value."""
    table = []
    for retire_after in RETIRE_AFTER:
        poll = poll_interval(retire_after)
        mean_interval = 0.75 * poll + poll / 8  # jittered refresh, plus half a tick late
        per_process = 1.0 / mean_interval  # DescribeSecret per second, on average
        worst = 1.0 / (poll / 2)  # every refresh at its earliest
        window = retirement_window(retire_after)
        table.append(
            [
                f"{retire_after:g} s",
                f"{poll:g} s",
                f"{per_process * 3600:,.0f}",
                f"{per_process * processes:,.1f} (at most {worst * processes:,.1f})",
                f"{math.floor(DESCRIBE_SECRET_QUOTA / worst):,d}",
                f"${per_process * SECONDS_PER_MONTH * PRICE_PER_CALL:,.2f}",
                f"{window:g} s",
                str(max_per_second(pool_size, window)),
            ]
        )
    return table


def main(argv: list[str] | None = None) -> None:
    """Print the table (Markdown)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retire_cost")
    parser.add_argument("--processes", type=int, default=1000, help="fleet size (default 1000)")
    parser.add_argument("--pool-size", type=int, default=10, help="connections per process")
    args = parser.parse_args(argv)
    headers = [
        "retire_after",
        "poll interval",
        "DescribeSecret / hour / process",
        f"DescribeSecret / s, fleet of {args.processes:,d}",
        "processes per account within quota (worst case)",
        "cost / month / process",
        "retirement window",
        f"reconnects / s at most, pool of {args.pool_size}",
    ]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows(args.processes, args.pool_size):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
