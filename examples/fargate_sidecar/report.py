"""The demo's live progress line and its end-of-run summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from examples.fargate_sidecar.load import LoadResult, Sample, percentile
from examples.fargate_sidecar.schedule import Rotation
from examples.fargate_sidecar.sessions import SessionSample


def progress_line(
    now: float, total: int, failed: int, window: list[Sample], rotations: Counter[str]
) -> str:
    """One line of live progress; latency percentiles over the last second."""
    latencies = [s.latency for s in window]
    return (
        f"  {now:5.1f} s  requests {total:8,d} ({len(window):4d}/s)  errors {failed:3d}  "
        f"rotations {rotations['alternating']:2d} alternating {rotations['single']:2d} single  "
        f"p50 {percentile(latencies, 50) * 1000:6.1f} ms  "
        f"p99 {percentile(latencies, 99) * 1000:6.1f} ms"
    )


@dataclass
class Summary:
    """The figures of a run."""

    seconds: float
    load: LoadResult
    rows: int
    rotations: list[Rotation]
    recovered_logins: int
    refused_logins: int
    agent_requests: int
    agent_refreshes: int
    agent_upstream: int
    worker_boots: int
    workers: int
    passwords_checked: int
    leaked_passwords: int
    sessions: list[SessionSample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the run met every promise."""
        return (
            self.load.failed == 0
            and self.rows == self.load.writes_2xx
            and all(r.error is None for r in self.rotations)
            and self.leaked_passwords == 0
            and self.load.requests > 0
        )


def print_summary(summary: Summary, chart: Path) -> None:
    """The end-of-run report."""
    load = summary.load
    latencies = [s.latency for s in load.samples]
    writes = sum(s.write for s in load.samples)
    by_strategy = Counter(r.strategy for r in summary.rotations if r.error is None)
    failed_rotations = [r for r in summary.rotations if r.error]
    rows_ok = summary.rows == load.writes_2xx
    print()
    print("=" * 78)
    print(f"summary of {summary.seconds:.0f} s under load")
    reads = load.requests - writes
    print(f"  HTTP requests          {load.requests:8,d}  ({writes:,d} writes, {reads:,d} reads)")
    print(f"  2xx answers            {load.ok:8,d}")
    print(f"  failed requests        {load.failed:8,d}")
    print(
        f"  rows in the table      {summary.rows:8,d}  vs 2xx write answers {load.writes_2xx:,d}: "
        f"{'equal' if rows_ok else 'DIFFERENT'}"
    )
    print(
        f"  rotations              {by_strategy['alternating']:8d} alternating, "
        f"{by_strategy['single']} single-user"
        + (f", {len(failed_rotations)} FAILED" if failed_rotations else "")
    )
    print(
        f"  latency                p50 {percentile(latencies, 50) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 99) * 1000:.1f} ms, "
        f"max {max(latencies, default=0.0) * 1000:.1f} ms"
    )
    print(
        f"  refused logins         {summary.refused_logins:8,d}  recovered by rotating_pool: "
        f"{summary.recovered_logins:,d} connections (from the app's log)"
    )
    print(
        f"  agent stand-in         {summary.agent_requests:8,d}  requests, "
        f"{summary.agent_refreshes:,d} with refreshNow=true, "
        f"{summary.agent_upstream:,d} Secrets Manager reads "
        f"({summary.agent_upstream / max(len(summary.rotations), 1):.2f} per rotation, "
        f"{summary.workers} worker processes behind one agent)"
    )
    print(
        f"  gunicorn               {summary.workers:8d}  workers (--preload), "
        f"{summary.worker_boots} booted"
    )
    print(
        f"  secrets in app log     {summary.leaked_passwords:8d}  "
        f"({summary.passwords_checked - 1} passwords and the agent token looked for)"
    )
    for error, count in load.errors.most_common(10):
        print(f"  error x{count}: {error}")
    for rotation in failed_rotations:
        print(f"  rotation at {rotation.started:.1f} s failed: {rotation.error}")
    users = sorted({user for sample in summary.sessions for user in sample.by_user})
    print(
        f"  database sessions      {len(summary.sessions):8d}  samples of pg_stat_activity "
        f"(users: {', '.join(users) or 'none'})"
    )
    print(f"  chart                  {chart}")
    print("=" * 78)
    if summary.ok:
        print("OK: zero failed requests, every 2xx write is a row, every rotation finished")
    else:
        print("FAILED: see above")


def scan_app_log(log_path: Path, passwords: set[str]) -> tuple[int, int, int, int]:
    """(refused logins, recovered connections, worker boots, passwords found) from the app's log."""
    text = log_path.read_text(errors="replace")
    refused = text.count("the database refused user")
    recovered = text.count("refused login(s)")
    boots = text.count("Booting worker with pid")
    leaked = sum(1 for password in passwords if password and password in text)
    return refused, recovered, boots, leaked

