"""The run's outputs: a printed table, a JSON file and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["print_report", "write_chart", "write_json", "write_markdown"]

Rows = Iterator[tuple[str, str]]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _ratios(r: dict[str, Any]) -> Rows:
    wall, cpu = r["wall"], r["cpu"]
    yield (
        "ratio, wall clock (95% CI)",
        (f"{wall['ratio']:.3f} ({wall['ci95_low']:.3f}-{wall['ci95_high']:.3f})"),
    )
    yield (
        "ratio, client CPU (95% CI)",
        (f"{cpu['ratio']:.3f} ({cpu['ci95_low']:.3f}-{cpu['ci95_high']:.3f})"),
    )
    yield (
        "A/A control (identical engines), wall / CPU",
        (f"{r['control_wall']['ratio']:.3f} / {r['control_cpu']['ratio']:.3f}"),
    )


def _connect(r: dict[str, Any]) -> Rows:
    yield "static credentials, median", _ms(r["static_median_ms"])
    yield "rotating_pool, median", _ms(r["rotating_pool_median_ms"])
    yield (
        "overhead per connect, wall / CPU",
        (f"{r['overhead_us']:+.0f} us / {r['cpu_overhead_us']:+.0f} us"),
    )
    yield from _ratios(r)


def _checkout(r: dict[str, Any]) -> Rows:
    yield "static credentials", f"{r['static_per_second']:.0f} checkouts/s"
    yield "rotating_pool", f"{r['rotating_pool_per_second']:.0f} checkouts/s"
    yield from _ratios(r)


def _per_driver(r: dict[str, Any], headline: Callable[[dict[str, Any]], tuple[str, str]]) -> Rows:
    for driver, d in r["drivers"].items():
        if "not_measured" in d:
            yield driver, f"not measured: {d['not_measured']}"
            continue
        label, value = headline(d)
        yield f"{driver}: {label}", value
        for label, value in _ratios(d):
            yield f"{driver}: {label}", value


def _async_connect(r: dict[str, Any]) -> Rows:
    return _per_driver(
        r,
        lambda d: (
            "static / rotating_pool, median",
            f"{_ms(d['static_median_ms'])} / {_ms(d['rotating_pool_median_ms'])}",
        ),
    )


def _async_checkout(r: dict[str, Any]) -> Rows:
    return _per_driver(
        r,
        lambda d: (
            "static / rotating_pool",
            f"{d['static_per_second']:.0f} / {d['rotating_pool_per_second']:.0f} checkouts/s",
        ),
    )


def _recovery(r: dict[str, Any]) -> Rows:
    yield (
        "parts: one GetSecretValue / one refused login",
        (f"{r['get_secret_value_ms']:.1f} ms / {r['refused_login_ms']:.1f} ms"),
    )
    for name, moments in r["clients"].items():
        if "not_measured" in moments:
            yield name, f"not measured: {moments['not_measured']}"
            continue
        for moment, s in moments.items():
            calls = s["calls_per_recovery"]
            if s["failures"] == s["samples"]:
                error = next(iter(s["errors"]), "")
                yield (
                    f"{name}, {moment} finishSecret",
                    f"failed {s['failures']}/{s['samples']} after {calls['median']} call(s): "
                    f"{error[:70]}",
                )
                continue
            yield (
                f"{name}, {moment} finishSecret",
                (
                    f"p50 {_ms(s['p50_ms'])}, p99 {_ms(s['p99_ms'])}, calls {calls['median']} "
                    f"(max {calls['max']}), failed {s['failures']}/{s['samples']}"
                ),
            )


def _latency(r: dict[str, Any]) -> Rows:
    for strategy in ("alternating", "single"):
        s = r[strategy]
        quiet, during = s["without_rotations"], s["during_rotations"]
        yield (
            f"{strategy}: p99 without / during",
            (
                f"{_ms(quiet['p99_ms'])} / {_ms(during['p99_ms'])} = {s['p99_ratio']:.2f}x, "
                f"max {_ms(during['max_ms'])}, failed {during['failures']}, "
                f"{s['rotations']} rotations"
            ),
        )


def _api_calls(r: dict[str, Any]) -> Rows:
    for strategy, rows in r["per_rotation"].items():
        yield (
            f"{strategy}: GetSecretValue/rotation (max in one; DescribeSecret)",
            ", ".join(
                f"{row['threads']} threads {row['gets_per_rotation']:.2f} "
                f"(max {row['max_gets_in_one_rotation']}; {row['describes_per_rotation']:.2f})"
                for row in rows
            ),
        )
    steady = r["steady_state"]
    yield (
        "steady state, per hour at TTL 3600 s",
        (
            f"{steady['calls_per_hour_at_default_ttl']:.2f} measured at TTL "
            f"{steady['ttl_measured_s']:.0f} s and scaled "
            f"({steady['documented_calls_per_hour_at_default_ttl']:.2f} from the documented jitter)"
        ),
    )


def _failures(r: dict[str, Any]) -> Rows:
    for strategy in ("alternating", "single"):
        for name, s in r[strategy].items():
            if "not_measured" in s:
                yield f"{strategy}: {name}", f"not measured: {s['not_measured']}"
                continue
            yield (
                f"{strategy}: {name}",
                (
                    f"failed {s['failed']:,}/{s['attempted']:,} ({s['failed_share']:.1%}), "
                    f"{s['commits_per_second']:.0f} commits/s, {s['secrets_manager_calls']} calls"
                ),
            )


def _fleet(r: dict[str, Any]) -> Rows:
    for name in ("rotating_pool", "wrapper"):
        s = r[name]
        if "not_measured" in s:
            yield name, f"not measured: {s['not_measured']}"
            continue
        during = s["rotating"]
        yield (
            name,
            (
                f"{s['calls_per_rotation']:.1f} calls/rotation "
                f"({s['calls_per_rotation_per_process']:.2f}/process, "
                f"{sum(s['throttled'].values())} throttled), failed {during['failures']}/"
                f"{during['commits'] + during['failures']}, longest stall "
                f"{during['longest_transaction_s']:.2f} s (quiet "
                f"{s['quiet']['longest_transaction_s']:.2f} s)"
            ),
        )
    yield (
        "throttle's pace for 1 GetSecretValue a process",
        (
            f"the last answered {r['quota_floor_s']:.1f} s after the first (bucket "
            f"{r['throttle_per_second']:.0f}/s, burst {r['throttle_per_second']:.0f})"
        ),
    )
    x = r["extrapolation"]
    yield (
        "10,000 tasks, on paper",
        (
            f">= {x['get_secret_value_per_rotation_least']:,} GetSecretValue per rotation = "
            f"{x['seconds_of_quota_per_rotation_least']:.1f} s of the 10,000 TPS quota "
            f"(local fleet: {x['local_seconds_of_quota_per_rotation_least']:.1f} s of its own); "
            f"steady {x['steady_describe_secret_per_second']:.1f} DescribeSecret/s = "
            f"{x['steady_share_of_describe_secret_quota']:.3%} of 40,000 TPS"
        ),
    )


def _rotation_steps(r: dict[str, Any]) -> Rows:
    for label, column in r["columns"].items():
        total = column["steps"]["total"]
        yield (
            f"{label}, all four steps",
            f"{total['p50_ms']:.0f} ms (p95 {total['p95_ms']:.0f}), "
            f"{column['calls']['total']:g} Secrets Manager calls",
        )
    yield ("one SCRAM login (p50)", _ms(r["login"]["p50_ms"]))


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], Rows]]] = {
    "connect": ("1. connect overhead (new connection)", _connect),
    "checkout": ("2. pooled checkout + SELECT 1", _checkout),
    "async_connect": ("1b. async engines: connect overhead (new connection)", _async_connect),
    "async_checkout": ("2b. async engines: pooled checkout + SELECT 1", _async_checkout),
    "recovery": ("3a. recovery of a refused login (single-user)", _recovery),
    "latency": ("3b. transaction latency during rotations", _latency),
    "api_calls": ("4. Secrets Manager calls", _api_calls),
    "failures": ("5. failures under rotation (16 threads, 2 s rotations)", _failures),
    "fleet": ("6. fleet, single-user, throttled", _fleet),
    "rotation_steps": ("7. rotation steps (the rotation side)", _rotation_steps),
}


def print_report(results: dict[str, Any]) -> None:
    """Print each benchmark's figures, then the goals."""
    width = 100
    for key, (title, rows) in SECTIONS.items():
        outcome = results["benchmarks"].get(key)
        if outcome is None:
            continue
        print(f"\n{title}\n{'-' * len(title)}")
        if "error" in outcome:
            print(f"  FAILED TO RUN: {outcome['error']}")
            continue
        for label, value in rows(outcome):
            print(f"  {label:<46} {value}")
    print("\n" + "=" * width)
    print(f"{'goal':<62} {'met':<5} measured (target)")
    print("=" * width)
    for line in goals(results):
        met = {True: "yes", False: "NO", None: "n/a"}[line["met"]]
        print(f"{line['goal']:<62} {met:<5} {line['measured']} ({line['target']})")
    print("=" * width)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every benchmark's goal lines, in order."""
    lines: list[dict[str, Any]] = []
    for key in SECTIONS:
        outcome = results["benchmarks"].get(key, {})
        if "error" in outcome:
            lines.append({"goal": key, "target": "runs", "measured": outcome["error"], "met": None})
        lines += outcome.get("goals", [])
    return lines


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write the results as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """Write the same figures as Markdown tables, ready to quote in the README."""
    machine = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    lines = [
        f"Run: {results['mode']}, {results['started']}, {results['seconds']:.0f} s. "
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, "
        f"Python {machine['python']}, {machine['postgresql']}; {packages}. "
        f"Load average (1/5/15 min) at start {results['load_average']['start']}, "
        f"at end {results['load_average']['end']}.",
        "",
        "| goal | target | measured | met |",
        "|---|---|---|---|",
    ]
    for line in goals(results):
        met = {True: "yes", False: "**no**", None: "n/a"}[line["met"]]
        lines.append(f"| {line['goal']} | {line['target']} | {line['measured']} | {met} |")
    for key, (title, rows) in SECTIONS.items():
        outcome = results["benchmarks"].get(key)
        if outcome is None:
            continue
        lines += ["", f"**{title}**", "", "| | |", "|---|---|"]
        if "error" in outcome:
            lines.append(f"| failed to run | {outcome['error']} |")
            continue
        lines += [f"| {label} | {value} |" for label, value in rows(outcome)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Draw one panel per benchmark into a PNG."""
    import matplotlib  # noqa: PLC0415  (only the runner needs it, and it is slow to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(2, 3, figsize=(18, 10))
    benchmarks = results["benchmarks"]
    panels: list[tuple[Callable[..., None], tuple[str, ...]]] = [
        (_chart_overhead, ("connect", "checkout")),
        (_chart_recovery, ("recovery",)),
        (_chart_latency, ("latency",)),
        (_chart_api_calls, ("api_calls",)),
        (_chart_failures, ("failures",)),
        (_chart_fleet, ("fleet",)),
    ]
    for axis, (draw, keys) in zip(axes.flat, panels, strict=True):
        outcomes = [benchmarks.get(key) for key in keys]
        if any(o is None or "error" in o for o in outcomes):
            axis.set_title(f"{', '.join(keys)}: not run")
            axis.axis("off")
            continue
        if draw is _chart_overhead:
            outcomes += [benchmarks.get("async_connect"), benchmarks.get("async_checkout")]
            outcomes = [o if o is None or "error" not in o else None for o in outcomes]
        draw(axis, *outcomes)
    machine = results["machine"]
    figure.suptitle(
        f"rotating_pool benchmarks ({results['mode']} run, {results['started']}): "
        f"{machine['cores']} cores, Python {machine['python']}, {machine['postgresql']}; "
        "ratios and counts matter, absolute times drift on this shared machine",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _label_bars(axis: Any, bars: Any, texts: list[str]) -> None:
    for bar, text in zip(bars, texts, strict=True):
        axis.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )


def _chart_overhead(
    axis: Any,
    connect: dict[str, Any],
    checkout: dict[str, Any],
    async_connect: dict[str, Any] | None = None,
    async_checkout: dict[str, Any] | None = None,
) -> None:
    names = ["1. connect", "A/A", "2. checkout\nthroughput", "A/A"]
    ratios = [connect["wall"], connect["control_wall"], checkout["wall"], checkout["control_wall"]]
    colors = ["#4c72b0", "#b0b0b0", "#55a868", "#b0b0b0"]
    for label, outcome, color in (
        ("1b", async_connect, "#4c72b0"),
        ("2b", async_checkout, "#55a868"),
    ):
        for driver, d in ((outcome or {}).get("drivers") or {}).items():
            if "wall" in d:
                names += [f"{label}. {driver}", "A/A"]
                ratios += [d["wall"], d["control_wall"]]
                colors += [color, "#b0b0b0"]
    values = [r["ratio"] for r in ratios]
    errors = [
        [r["ratio"] - r["ci95_low"] for r in ratios],
        [r["ci95_high"] - r["ratio"] for r in ratios],
    ]
    bars = axis.bar(range(len(names)), values, yerr=errors, capsize=4, color=colors)
    axis.set_xticks(range(len(names)), names, fontsize=7, rotation=30)
    axis.axhline(1.02, color="#c44e52", linestyle="--", label="connect goal <= 1.02")
    axis.axhline(0.99, color="#8172b2", linestyle=":", label="checkout goal >= 0.99")
    axis.set_ylim(min(0.9, *values) - 0.02, max(1.1, *values) + 0.02)
    _label_bars(axis, bars, [f"{v:.3f}" for v in values])
    axis.set_title("1-2 (b: async). rotating_pool / static, wall clock (bars: 95% CI)")
    axis.legend(fontsize=8)


def _chart_recovery(axis: Any, recovery: dict[str, Any]) -> None:
    labels, values, texts = [], [], []
    for name, moments in recovery["clients"].items():
        if "not_measured" in moments:
            continue
        for moment, s in moments.items():
            labels.append(f"{name}\n{moment}")
            if s["failures"] == s["samples"]:
                values.append(0.0)
                texts.append("fails")
            else:
                values.append(s["p50_ms"])
                texts.append(f"{s['p50_ms']:.0f} ms\n{s['calls_per_recovery']['median']} calls")
    bars = axis.bar(labels, values, color="#4c72b0")
    _label_bars(axis, bars, texts)
    axis.set_yscale("symlog", linthresh=10)
    axis.set_ylim(0, max(values, default=10) * 4)  # room for the labels above the bars
    axis.set_ylabel("p50 until connected (ms)")
    axis.tick_params(axis="x", labelsize=7)
    axis.set_title("3a. Recovery of a refused login (after / pending finishSecret)")


def _chart_latency(axis: Any, latency: dict[str, Any]) -> None:
    strategies = ["alternating", "single"]
    quiet = [latency[s]["without_rotations"]["p99_ms"] for s in strategies]
    during = [latency[s]["during_rotations"]["p99_ms"] for s in strategies]
    positions = range(len(strategies))
    left = axis.bar([p - 0.2 for p in positions], quiet, 0.4, label="without rotations")
    right = axis.bar([p + 0.2 for p in positions], during, 0.4, label="during rotations")
    _label_bars(axis, left, [f"{v:.1f}" for v in quiet])
    _label_bars(
        axis,
        right,
        [
            f"{v:.1f} ({latency[s]['p99_ratio']:.2f}x)"
            for v, s in zip(during, strategies, strict=True)
        ],
    )
    axis.set_xticks(list(positions), strategies)
    axis.set_ylabel("p99 transaction latency (ms)")
    axis.set_title("3b. p99 latency, rotating_pool, 16 threads (goal ratio <= 1.5)")
    axis.legend(fontsize=8)


def _chart_api_calls(axis: Any, api_calls: dict[str, Any]) -> None:
    for strategy, rows in api_calls["per_rotation"].items():
        threads = [row["threads"] for row in rows]
        gets = [row["gets_per_rotation"] for row in rows]
        axis.plot(threads, gets, marker="o", label=f"{strategy}: GetSecretValue")
        describes = [row["describes_per_rotation"] for row in rows]
        label = f"{strategy}: DescribeSecret"
        axis.plot(threads, describes, marker="x", linestyle=":", label=label)
    axis.axhline(1, color="#c44e52", linestyle="--", label="goal: <= 1 GetSecretValue")
    axis.set_xscale("log", base=2)
    axis.set_xticks([1, 16, 64], ["1", "16", "64"])
    axis.set_ylim(0, 4)
    axis.set_xlabel("writer threads in the process")
    axis.set_ylabel("Secrets Manager calls per rotation")
    steady = api_calls["steady_state"]["calls_per_hour_at_default_ttl"]
    axis.set_title(f"4. Calls per rotation per process (steady: {steady:.2f}/h at TTL 1 h)")
    axis.legend(fontsize=8)


def _chart_failures(axis: Any, failures: dict[str, Any]) -> None:
    strategies = ["alternating", "single"]
    clients = ["static", "wrapper", "rotating_pool"]
    width = 0.27
    for offset, client in enumerate(clients):
        shares, texts = [], []
        for strategy in strategies:
            s = failures[strategy].get(client, {})
            if "failed_share" not in s:
                shares.append(0.0)
                texts.append("n/a")
                continue
            shares.append(100 * s["failed_share"])
            texts.append(f"{s['failed_share']:.1%}\n{s['secrets_manager_calls']} calls")
        bars = axis.bar(
            [p + (offset - 1) * width for p in range(len(strategies))], shares, width, label=client
        )
        _label_bars(axis, bars, texts)
    axis.set_xticks(range(len(strategies)), strategies)
    axis.set_ylabel("failed transactions (%)")
    axis.set_ylim(0, 100)
    axis.set_title("5. Failures under rotation (16 threads, rotation every 2 s)")
    axis.legend(fontsize=8)


def _chart_fleet(axis: Any, fleet: dict[str, Any]) -> None:
    names = [n for n in ("rotating_pool", "wrapper") if "rotating" in fleet[n]]
    quiet = [fleet[n]["quiet"]["longest_transaction_s"] for n in names]
    during = [fleet[n]["rotating"]["longest_transaction_s"] for n in names]
    positions = range(len(names))
    axis.bar([p - 0.2 for p in positions], quiet, 0.4, label="quiet")
    bars = axis.bar([p + 0.2 for p in positions], during, 0.4, label="during rotations")
    _label_bars(
        axis,
        bars,
        [
            f"{fleet[n]['rotating']['failures']} failed\n"
            f"{fleet[n]['calls_per_rotation_per_process']:.1f} calls/rot/proc"
            for n in names
        ],
    )
    axis.axhline(2.0, color="#c44e52", linestyle="--", label="goal: longest stall <= 2 s")
    axis.set_ylim(0, max(2.0, *quiet, *during) * 1.35)
    axis.set_xticks(list(positions), names)
    axis.set_ylabel("longest transaction of any worker (s)")
    axis.set_title(
        f"6. Fleet of {fleet['rotating_pool']['workers']}, single-user, throttled at "
        f"{fleet['throttle_per_second']:.0f} calls/s"
    )
    axis.legend(fontsize=8, loc="upper left")
