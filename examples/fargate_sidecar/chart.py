"""The demo's chart: throughput, errors, latency and sessions per user, rotations marked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.fargate_sidecar.load import LoadResult, percentile
from examples.fargate_sidecar.schedule import Rotation
from examples.fargate_sidecar.sessions import SessionSample


def write_chart(
    path: Path,
    load: LoadResult,
    *,
    rotations: list[Rotation],
    switched_at: float | None,
    seconds: float,
    workers: int,
    sessions: Sequence[SessionSample] = (),
) -> None:
    """Throughput, errors, latency and database sessions per user over time, each
    rotation shaded and numbered."""
    import matplotlib  # noqa: PLC0415  (only needed at the end)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    # Whole seconds only; the few requests that finish after the end (in flight
    # when the load stopped) count in the last second rather than in a
    # misleading almost-empty one.
    buckets = max(1, int(seconds))
    ok = [0] * buckets
    writes = [0] * buckets
    errors = [0] * buckets
    latencies: list[list[float]] = [[] for _ in range(buckets)]
    for sample in load.samples:
        second = min(buckets - 1, int(sample.at))
        (ok if sample.ok else errors)[second] += 1
        writes[second] += sample.ok and sample.write
        latencies[second].append(sample.latency * 1000)
    xs = [second + 0.5 for second in range(buckets)]

    figure, (top, middle, bottom, panel) = plt.subplots(
        4, 1, figsize=(11, 9.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 3, 2.4]}
    )
    top.plot(xs, ok, color="tab:green", marker=".", label="2xx answers / s")
    top.plot(xs, writes, color="tab:olive", linestyle=":", label="of which writes")
    top.set_ylabel("requests / s")
    top.set_ylim(0, max(1, *ok) * 1.25)
    middle.bar(xs, errors, width=0.9, color="tab:red")
    middle.set_ylabel("failed / s")
    middle.set_ylim(0, max(1, *errors) * 1.25)
    if not any(errors):
        middle.text(
            0.5,
            0.5,
            "no failed request",
            transform=middle.transAxes,
            ha="center",
            va="center",
            color="tab:red",
        )
    bottom.plot(
        xs, [percentile(v, 50) for v in latencies], color="tab:blue", marker=".", label="p50"
    )
    bottom.plot(
        xs, [percentile(v, 99) for v in latencies], color="tab:purple", marker=".", label="p99"
    )
    bottom.set_ylabel("latency per second (ms)")
    bottom.set_yscale("log")
    plot_sessions(panel, sessions)
    panel.set_xlabel("seconds since the load started")
    panel.set_xlim(0, buckets)

    colours = {"alternating": "tab:orange", "single": "tab:cyan"}
    for axis in (top, middle, bottom, panel):
        for rotation in rotations:
            colour = "red" if rotation.error else colours.get(rotation.strategy, "grey")
            axis.axvspan(rotation.started, rotation.finished, color=colour, alpha=0.2, lw=0)
            # finishSecret: the moment AWSCURRENT moves.
            axis.axvline(rotation.finished, color=colour, linewidth=1)
        if switched_at is not None:
            axis.axvline(switched_at, color="black", linestyle="--", linewidth=1)
        axis.grid(alpha=0.3)
    for number, rotation in enumerate(rotations, 1):
        top.annotate(
            str(number),
            xy=(rotation.finished, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    handles = [
        *top.get_legend_handles_labels()[0],
        *bottom.get_legend_handles_labels()[0],
        *panel.get_legend_handles_labels()[0],
        Patch(
            color=colours["alternating"],
            alpha=0.4,
            label="alternating-users rotation (line: finishSecret)",
        ),
        Patch(color=colours["single"], alpha=0.4, label="single-user rotation"),
        Line2D(
            [], [], color="black", linestyle="--", linewidth=1, label="re-bootstrap to single user"
        ),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    all_latencies = [s.latency for s in load.samples]
    by_strategy = Counter(r.strategy for r in rotations if r.error is None)
    figure.suptitle(
        f"orders app, gunicorn --preload {workers} workers, credentials through a local "
        "stand-in of the Secrets Manager Agent\n"
        f"{load.requests:,d} requests, {load.failed} failed; rotations: "
        f"{by_strategy['alternating']} alternating, {by_strategy['single']} single-user; "
        f"p50 {percentile(all_latencies, 50) * 1000:.1f} ms, "
        f"p99 {percentile(all_latencies, 99) * 1000:.1f} ms",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_sessions(axis: Any, sessions: Sequence[SessionSample]) -> None:
    """The app's database sessions per user over time, one step line per user."""
    users = sorted({user for sample in sessions for user in sample.by_user})
    times = [sample.at for sample in sessions]
    for user in users:
        axis.step(
            times,
            [sample.by_user.get(user, 0) for sample in sessions],
            where="post",
            label=f"sessions of {user}",
        )
    axis.set_ylabel("database sessions\n(pg_stat_activity)")
    peak = max((sum(sample.by_user.values()) for sample in sessions), default=0)
    axis.set_ylim(0, max(1, peak) * 1.15)
    if not sessions:
        axis.text(0.5, 0.5, "not sampled", transform=axis.transAxes, ha="center", va="center")

