"""7. The fleet simulator: 100 to 10,000 tasks through credential rotations, in virtual time.

    python -m benchmarks.fleet_sim               # the sweep (24 fleets), table + chart
    python -m benchmarks.fleet_sim --quick       # a short sweep that checks it works (CI)
    python -m benchmarks.fleet_sim --calibrate   # the local throttled fleet vs the simulator
    python -m benchmarks.fleet_sim --recommend   # retry budgets tried on 10,000 tasks x 4
    python -m benchmarks.fleet_sim --refusals    # a refusal nobody listed, ridden out or bounded

N tasks x W worker processes share one secret and one account's quotas
(GetSecretValue 10,000 TPS, DescribeSecret 40,000 TPS). Each process's
recovery is the project's own `rotating_pool.policy.login_plan` driven with a
real `RetryBudget` (see `benchmarks.fleet_model`), against a Secrets Manager
model with a token bucket per API and a latency distribution, and a database
that accepts what each rotation step has set. With ``--agent`` variants, each
task reads through one Secrets Manager Agent (one cache per task), modelled on
the agent's source.

Reported per fleet: failed requests (a login given up on), the stall of every
request that met a refused login (p50/p99/max), Secrets Manager calls per task
per rotation (the processes' recoveries; periodic refreshes and the agents' TTL
renewals apart), throttled calls, and when the last process recovered.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.pool import NullPool

from benchmarks.fleet_model import SDK_ATTEMPTS, World, WorldConfig
from benchmarks.fleet_services import GET, Latency
from benchmarks.measure import percentile
from rotating_pool.policy import RetryBudget

RESULTS = Path(__file__).resolve().parent / "results"
GET_TPS = WorldConfig.get_tps
DESCRIBE_TPS = WorldConfig.describe_tps

SIZES = (100, 1_000, 10_000)
QUICK_SIZES = (100, 1_000)
WORKERS = (1, 4)
STRATEGIES = ("single", "alternating")


def simulate(config: WorldConfig) -> dict[str, Any]:
    """Run one fleet; its figures as a dict."""
    began, cpu = time.perf_counter(), time.process_time()
    world = World(config)
    out = world.run()
    sm = world.sm
    rotations = config.rotations
    recovery_calls = sm.purposes["recovery"]
    stalls = out.stalls
    result: dict[str, Any] = {
        "tasks": config.tasks,
        "workers": config.workers,
        "threads": config.threads,
        "strategy": config.strategy,
        "agent": config.agent,
        "combined_quota": config.combined_quota,
        "budget": _budget_dict(config.budget),
        "rotations": rotations,
        "failed": out.failed,
        "stalled_requests": len(stalls),
        "stall_p50_s": percentile(stalls, 50),
        "stall_p99_s": percentile(stalls, 99),
        "stall_max_s": max(stalls, default=0.0),
        "last_recovery_after_set_s": out.last_recovery_after_set,
        "calls": dict(sm.calls),
        "throttled": dict(sm.throttled),
        "calls_by_purpose": dict(sm.purposes),
        "recovery_calls_per_task_per_rotation": recovery_calls / (config.tasks * rotations),
        "recovery_gets_per_task_per_rotation": sm.purposes[f"recovery:{GET}"]
        / (config.tasks * rotations),
        "recovery_calls_per_process_per_rotation": recovery_calls
        / (config.tasks * config.workers * rotations),
        "throttled_calls": sum(sm.throttled.values()),
        "refetches": out.refetches,
        "refetch_joins": out.refetch_joins,
        "refetch_reuses": out.refetch_reuses,
        "refused_logins": out.refused_logins,
        "unlisted_share": config.unlisted_share,
        "permanent_refusal": config.permanent_refusal,
        "agent_ttl_calls_per_task_per_rotation": sm.purposes["agent_ttl"]
        / (config.tasks * rotations),
        "refresh_calls": sm.purposes["refresh"],
        "events": world.loop.events,
        "seconds": round(time.perf_counter() - began, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
    }
    return result


def refusal_configs(tasks: int = 1_000, workers: int = 4) -> list[WorldConfig]:
    """Issue 25's cases: a pooler whose refusal wording no list holds refuses a
    third of the logins with a just-changed password for 4 s (both strategies,
    three rotations), and a permanent unlisted refusal with no rotation."""
    configs = [
        WorldConfig(
            tasks=tasks,
            workers=workers,
            strategy=strategy,
            rotations=3,
            unlisted_share=1 / 3,
        )
        for strategy in STRATEGIES
    ]
    configs.append(WorldConfig(tasks=tasks, workers=workers, permanent_refusal=True))
    return configs


def refusals_markdown(results: list[dict[str, Any]]) -> str:
    """The refusal cases as a table."""
    lines = [
        "| case | strategy | tasks x workers | failed / stalled | stall p50 / p99 / max (s) "
        "| calls per process per rotation |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        case = "permanent unlisted refusal, no rotation" if r["permanent_refusal"] else (
            "unlisted pooler: 1/3 of new-password logins refused for 4 s"
        )
        per_process = r["recovery_calls_per_process_per_rotation"]
        calls = "" if r["permanent_refusal"] else f"{per_process:.2f}"
        lines.append(
            f"| {case} | {'' if r['permanent_refusal'] else r['strategy']} "
            f"| {r['tasks']:,} x {r['workers']} | {r['failed']:,} / {r['stalled_requests']:,} "
            f"| {r['stall_p50_s']:.2f} / {r['stall_p99_s']:.2f} / {r['stall_max_s']:.2f} "
            f"| {calls} |"
        )
    return "\n".join(lines)


def _budget_dict(budget: RetryBudget) -> dict[str, Any]:
    return dataclasses.asdict(budget)


def run_all(configs: list[WorldConfig], jobs: int = 2) -> list[dict[str, Any]]:
    """Simulate every config, `jobs` at a time (one per core), largest first; in order."""
    order = sorted(range(len(configs)), key=lambda i: -configs[i].tasks * configs[i].workers)
    results: dict[int, dict[str, Any]] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(simulate, configs[i]): i for i in order}
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            print(_line(result), flush=True)
            results[futures[future]] = result
    return [results[i] for i in range(len(configs))]


def sweep_configs(sizes: Iterable[int], budget: RetryBudget) -> list[WorldConfig]:
    """Every size x workers x strategy x agent combination."""
    return [
        WorldConfig(tasks=tasks, workers=workers, strategy=strategy, agent=agent, budget=budget)
        for tasks in sizes
        for workers in WORKERS
        for strategy in STRATEGIES
        for agent in (False, True)
    ]


def _line(r: dict[str, Any]) -> str:
    via = "agent" if r["agent"] else "direct"
    quota = " combined quota" if r["combined_quota"] else ""
    return (
        f"{_budget_text(r['budget'])}{quota}\n"
        f"  {r['tasks']:>6,} x {r['workers']} {r['strategy']:<11} {via:<6} "
        f"failed {r['failed']:>5,}  stall p50/p99/max "
        f"{r['stall_p50_s']:5.2f}/{r['stall_p99_s']:5.2f}/{r['stall_max_s']:5.2f} s  "
        f"calls/task/rotation {r['recovery_calls_per_task_per_rotation']:5.2f}  "
        f"throttled {r['throttled_calls']:>7,}  "
        f"({r['seconds']:.0f} s, CPU {r['cpu_seconds']:.0f} s)"
    )


def markdown(results: list[dict[str, Any]], *, with_budget: bool = False) -> str:
    """The fleets as a Markdown table."""
    columns = [
        "tasks x workers",
        "strategy",
        "reads via",
        "failed",
        "stalled requests",
        "stall p50 / p99 / max",
        "calls (GetSecretValue) per task per rotation",
        "throttled calls",
        "agents' TTL calls per task per rotation",
    ]
    if with_budget:
        columns[:0] = ["retry budget", "quota"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        agent_ttl = f"{r['agent_ttl_calls_per_task_per_rotation']:.2f}" if r["agent"] else "-"
        cells = [
            f"{r['tasks']:,} x {r['workers']}",
            r["strategy"],
            "agent" if r["agent"] else "Secrets Manager",
            f"{r['failed']:,}",
            f"{r['stalled_requests']:,}",
            f"{r['stall_p50_s']:.2f} / {r['stall_p99_s']:.2f} / {r['stall_max_s']:.2f} s",
            f"{r['recovery_calls_per_task_per_rotation']:.2f} "
            f"({r['recovery_gets_per_task_per_rotation']:.2f})",
            f"{r['throttled_calls']:,}",
            agent_ttl,
        ]
        if with_budget:
            quota = "combined 10,000/s" if r["combined_quota"] else "per API"
            cells[:0] = [_budget_text(r["budget"]), quota]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """One figure: calls per task per rotation, and stall p99/max, by fleet size."""
    import matplotlib  # noqa: PLC0415  (slow to import; only here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (calls_axis, stall_axis) = plt.subplots(1, 2, figsize=(15, 6))
    series: dict[tuple[str, bool, int], list[dict[str, Any]]] = {}
    for r in results:
        series.setdefault((r["strategy"], r["agent"], r["workers"]), []).append(r)
    styles = {"single": "-", "alternating": "--"}
    colors = {
        (False, 1): "#4c72b0",
        (False, 4): "#55a868",
        (True, 1): "#c44e52",
        (True, 4): "#8172b2",
    }
    for (strategy, agent, workers), rows in sorted(series.items()):
        rows.sort(key=lambda r: r["tasks"])
        tasks = [r["tasks"] for r in rows]
        label = f"{strategy}, {'agent' if agent else 'direct'}, {workers} worker(s)/task"
        style = {"linestyle": styles[strategy], "color": colors[(agent, workers)], "marker": "o"}
        calls_axis.plot(
            tasks, [r["recovery_calls_per_task_per_rotation"] for r in rows], label=label, **style
        )
        stall_axis.plot(tasks, [r["stall_p99_s"] for r in rows], label=f"{label}: p99", **style)
        stall_axis.plot(
            tasks,
            [r["stall_max_s"] for r in rows],
            linestyle=":",
            color=colors[(agent, workers)],
            marker="x",
        )
        for r in rows:
            if r["failed"]:
                stall_axis.annotate(
                    f"{r['failed']:,} failed", (r["tasks"], r["stall_max_s"]), fontsize=7
                )
    for axis in (calls_axis, stall_axis):
        axis.set_xscale("log")
        axis.set_xlabel("tasks")
        axis.grid(alpha=0.3)
    calls_axis.set_ylabel("Secrets Manager calls per task per rotation (throttled included)")
    calls_axis.set_title("Calls per task per rotation")
    calls_axis.legend(fontsize=7)
    stall_axis.set_ylabel("stall of a request that met a refused login (s)")
    stall_axis.set_title("Stall p99 (lines) and max (dotted, x)")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


# -- calibration against the local throttled fleet -----------------------------------


def calibrate(sdk_attempts: int = SDK_ATTEMPTS) -> int:
    """Run benchmark 6's fleet (rotating_pool) for real, then the simulator on the same
    configuration with the bed's measured latencies; print both side by side.

    `sdk_attempts`: attempts per Secrets Manager call in the simulator (rotating_pool's
    default client makes 2); another number shows what such a client would do.
    """
    from benchmarks import fleet  # noqa: PLC0415  (needs the local stack)
    from benchmarks.bed import start_bed  # noqa: PLC0415

    with start_bed() as bed:
        measured = _bed_latencies(bed)
        real = fleet.run_fleet(bed, "rotating_pool", fleet.FULL)
    settings = fleet.FULL
    config = WorldConfig(
        tasks=settings.workers,
        workers=1,
        threads=fleet.THREADS_PER_WORKER,
        strategy="single",
        rotations=settings.rotations,
        rotation_every=fleet.ROTATION_EVERY,
        window=fleet.ROTATION_WINDOW,
        settle=fleet.ROTATION_EVERY - fleet.ROTATION_WINDOW,
        pool_recycle=fleet.POOL_RECYCLE,
        think=fleet.THINK_SECONDS,
        get_tps=fleet.THROTTLE_PER_SECOND,
        describe_tps=4 * fleet.THROTTLE_PER_SECOND,
        sm_latency=Latency(measured["get_secret_value_s"], 3 * measured["get_secret_value_s"]),
        login_latency=Latency(measured["login_s"], 3 * measured["login_s"]),
        refused_latency=Latency(measured["refused_login_s"], 3 * measured["refused_login_s"]),
        sdk_attempts=sdk_attempts,
    )
    runs = [simulate(dataclasses.replace(config, seed=seed)) for seed in range(1, 11)]
    sim = {
        "calls_per_process_per_rotation": _mean(
            r["recovery_calls_per_process_per_rotation"] for r in runs
        ),
        "stall_p99_s": _mean(r["stall_p99_s"] for r in runs),
        "stall_max_s": _mean(r["stall_max_s"] for r in runs),
        "stall_p50_s": _mean(r["stall_p50_s"] for r in runs),
        "failed": sum(r["failed"] for r in runs) / len(runs),
    }
    stall = real["rotating"]["stall"]
    quiet = real["quiet"]
    local = {
        "calls_per_process_per_rotation": real["calls_per_rotation_per_process"],
        "stall_p99_s": stall["p99_s"],
        "stall_max_s": stall["max_s"],
        "stall_p50_s": stall["p50_s"],
        "failed": real["rotating"]["failures"],
    }
    rows = [
        ("calls per task per rotation", "calls_per_process_per_rotation", True),
        ("stall p99 (s)", "stall_p99_s", True),
        ("stall p50 (s)", "stall_p50_s", False),
        ("stall max (s)", "stall_max_s", False),
        ("failed requests", "failed", False),
    ]
    print(
        f"\ncalibration: {settings.workers} processes x {fleet.THREADS_PER_WORKER} threads, "
        f"single-user, {settings.rotations} rotations {fleet.ROTATION_EVERY:.0f} s apart, "
        f"GetSecretValue throttled at {fleet.THROTTLE_PER_SECOND:.0f}/s; bed latencies "
        f"(median): GetSecretValue {measured['get_secret_value_s'] * 1000:.1f} ms, login "
        f"{measured['login_s'] * 1000:.1f} ms, refused login "
        f"{measured['refused_login_s'] * 1000:.1f} ms; simulator: mean of 10 seeds, "
        f"{sdk_attempts} attempts per Secrets Manager call; the local "
        f"fleet's quiet segment (no rotation): longest transaction "
        f"{quiet['longest_transaction_s']:.2f} s, worst worker's p99 "
        f"{quiet['worst_worker_p99_s']:.2f} s (what CPU contention alone costs here)\n"
    )
    print(f"{'figure':<30} {'local fleet':>12} {'simulator':>12} {'sim / local':>12}  goal")
    within = True
    for label, key, judged in rows:
        ratio = sim[key] / local[key] if local[key] else float("nan")
        verdict = ""
        if judged:
            ok = abs(ratio - 1) <= 0.25
            within &= ok
            verdict = "within 25%" if ok else "OFF by more than 25%"
        print(f"{label:<30} {local[key]:>12.2f} {sim[key]:>12.2f} {ratio:>12.2f}  {verdict}")
    suffix = "" if sdk_attempts == SDK_ATTEMPTS else f"_sdk_attempts_{sdk_attempts}"
    _write(
        RESULTS / f"fleet_sim_calibration{suffix}.json",
        {
            "local": local,
            "simulator": sim,
            "bed_latencies": measured,
            "local_quiet": quiet,
            "simulator_sdk_attempts": sdk_attempts,
            "within_25pct": within,
        },
    )
    return 0


def _bed_latencies(bed: Any, rounds: int = 30) -> dict[str, float]:
    """Medians on the local bed: a GetSecretValue through a proxy, a login, a refused login."""
    import statistics  # noqa: PLC0415

    import rotating_pool  # noqa: PLC0415
    from benchmarks.bed import counting_proxy  # noqa: PLC0415
    from benchmarks.clients import static_engine  # noqa: PLC0415

    secret = bed.new_secret("single")
    timings: dict[str, list[float]] = {
        "get_secret_value_s": [],
        "login_s": [],
        "refused_login_s": [],
    }
    with counting_proxy(bed) as proxy:
        client = bed.secretsmanager.client(proxy.endpoint_url)
        good = static_engine(bed, secret, poolclass=NullPool)
        bad = sqlalchemy.create_engine(
            good.url.set(password="not-the-password"), poolclass=NullPool
        )
        for _ in range(rounds):
            began = time.perf_counter()
            client.get_secret_value(SecretId=secret.arn)
            timings["get_secret_value_s"].append(time.perf_counter() - began)
            began = time.perf_counter()
            good.connect().close()
            timings["login_s"].append(time.perf_counter() - began)
            began = time.perf_counter()
            try:
                bad.connect().close()
            except Exception as error:
                if not rotating_pool.is_login_rejection(error):
                    raise
            timings["refused_login_s"].append(time.perf_counter() - began)
        good.dispose()
        bad.dispose()
    return {name: statistics.median(values) for name, values in timings.items()}


def _mean(values: Iterable[float]) -> float:
    listed = list(values)
    return sum(listed) / len(listed)


# -- recommending a retry budget -------------------------------------------------------

CANDIDATES = (
    RetryBudget(rounds=8, base_delay=0.1, max_delay=2.0),  # the defaults before this ran
    RetryBudget(rounds=16, base_delay=0.1, max_delay=2.0),
    RetryBudget(rounds=12, base_delay=0.25, max_delay=2.0),
    RetryBudget(rounds=16, base_delay=0.25, max_delay=1.0),
    RetryBudget(rounds=12, base_delay=0.5, max_delay=4.0, deadline=25.0),
)


def recommend_configs(scale: float, tasks: int = 10_000, workers: int = 4) -> list[WorldConfig]:
    """Each candidate budget on the largest fleet's hardest case: a single-user
    rotation read directly, under AWS's announced quotas and under the quotas
    page's combined reading.

    At `scale` < 1 the fleet and the quotas shrink together (1,000 tasks
    against 1,000 GetSecretValue a second behave as 10,000 against 10,000:
    same demand per second of quota, same bucket depth in seconds, same
    latencies), which the sweep's full-size run checks (`--recommend` prints both).
    """
    return [
        WorldConfig(
            tasks=round(tasks * scale),
            workers=workers,
            strategy="single",
            budget=budget,
            combined_quota=combined,
            get_tps=GET_TPS * scale,
            describe_tps=DESCRIBE_TPS * scale,
        )
        for budget in CANDIDATES
        for combined in (False, True)
    ]


def _budget_text(budget: RetryBudget | dict[str, Any]) -> str:
    fields = budget if isinstance(budget, dict) else _budget_dict(budget)
    text = f"rounds {fields['rounds']}, base {fields['base_delay']}, max {fields['max_delay']}"
    if fields.get("deadline") is not None:
        text += f", deadline {fields['deadline']}"
    return text


# -- main ---------------------------------------------------------------------------


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="100 and 1,000 tasks only (CI)")
    mode.add_argument("--calibrate", action="store_true", help="local fleet vs simulator")
    mode.add_argument("--recommend", action="store_true", help="retry budgets on 10,000 x 4")
    mode.add_argument(
        "--refusals", action="store_true", help="a refusal nobody listed (1,000 x 4 tasks)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write results")
    parser.add_argument("--jobs", type=int, default=2, help="fleets simulated at once (cores)")
    parser.add_argument(
        "--scale",
        type=float,
        default=0.1,
        help="--recommend: fleet and quotas scaled together (default 0.1: 1,000 x 4 tasks "
        "against 1,000 GetSecretValue/s)",
    )
    parser.add_argument(
        "--sdk-attempts",
        type=int,
        default=SDK_ATTEMPTS,
        help=f"--calibrate: attempts per Secrets Manager call in the simulator (default "
        f"{SDK_ATTEMPTS}, as rotating_pool's default client)",
    )
    args = parser.parse_args(argv)
    if args.calibrate:
        return calibrate(args.sdk_attempts)
    started = time.monotonic()
    if args.refusals:
        results = run_all(refusal_configs(), args.jobs)
        table = refusals_markdown(results)
        print("\n" + table)
        _write(args.output / "fleet_sim_refusals.json", {"fleets": results})
        (args.output / "fleet_sim_refusals.md").write_text(table + "\n")
        print(f"wrote {args.output / 'fleet_sim_refusals'}.json and .md")
        return 0
    if args.recommend:
        results = run_all(recommend_configs(args.scale), args.jobs)
        stem = "fleet_sim_recommend"
    else:
        sizes = QUICK_SIZES if args.quick else SIZES
        results = run_all(sweep_configs(sizes, RetryBudget()), args.jobs)
        stem = "fleet_sim_quick" if args.quick else "fleet_sim"
    seconds = time.monotonic() - started
    cpu = sum(r["cpu_seconds"] for r in results)
    table = markdown(results, with_budget=args.recommend)
    print("\n" + table)
    print(
        f"\n{len(results)} fleets simulated in {seconds:.0f} s ({cpu:.0f} CPU seconds, "
        f"{args.jobs} at a time)"
    )
    _write(
        args.output / f"{stem}.json",
        {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "fleets": results},
    )
    (args.output / f"{stem}.md").write_text(table + "\n")
    if not args.recommend:
        config = WorldConfig(tasks=0, workers=0)
        chart(
            results,
            args.output / f"{stem}.png",
            f"Fleet simulator ({stem}): one rotation, {config.window:.0f} s from setSecret to "
            f"finishSecret, {config.threads} pooled connections per process recycled every "
            f"{config.pool_recycle} s\nquotas per account: GetSecretValue 10,000/s, "
            "DescribeSecret 40,000/s; RetryBudget() defaults",
        )
    print(f"wrote {args.output / stem}.json and .md" + ("" if args.recommend else " and .png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
