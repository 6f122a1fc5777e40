"""The fleet simulator (benchmarks/fleet_sim.py): small fleets whose outcome is known.

Pure logic in virtual time: no database, no network, no sleeping.
"""

from __future__ import annotations

import pytest

from benchmarks.fleet_model import World, WorldConfig
from benchmarks.fleet_services import DESCRIBE, GET
from benchmarks.fleet_sim import simulate
from rotating_pool.policy import RetryBudget


def test_a_single_user_rotation_costs_each_process_one_describe_and_one_get() -> None:
    result = simulate(WorldConfig(tasks=20, workers=2, strategy="single"))
    processes = 40
    assert result["failed"] == 0
    assert result["stalled_requests"] > 0  # every process met the new password
    recovery = result["calls_by_purpose"]["recovery"]
    assert recovery == 2 * processes
    assert result["calls"][GET] == processes


def test_threads_refused_together_share_one_refetch_per_process() -> None:
    world = World(WorldConfig(tasks=10, workers=1, threads=8, pool_recycle=0.05, think=0.0))
    out = world.run()
    assert out.failed == 0
    assert out.refetches == 10  # one per process, however many threads were refused
    assert out.refetch_joins > 0
    assert world.sm.calls[GET] == 10


def test_alternating_rotation_refuses_only_the_processes_holding_the_changed_user() -> None:
    world = World(WorldConfig(tasks=5, workers=2, strategy="alternating"))
    holder = world.processes[0]
    holder.current = world.sm.versions["v2"].credentials  # this one refreshed already
    out = world.run()
    assert out.failed == 0
    assert out.refetches == 9  # the other nine held app_a, whose password setSecret changed
    assert holder.current.username == "app_b"


def test_behind_an_agent_workers_share_its_cache() -> None:
    direct = simulate(WorldConfig(tasks=30, workers=4, strategy="single"))
    agent = simulate(WorldConfig(tasks=30, workers=4, strategy="single", agent=True))
    assert agent["failed"] == direct["failed"] == 0
    assert direct["recovery_calls_per_task_per_rotation"] == 8.0  # 4 x (Describe + Get)
    # One GetSecretValue per task, a little more when two workers miss the cache at once.
    assert 1.0 <= agent["recovery_calls_per_task_per_rotation"] < 2.0
    assert DESCRIBE not in agent["calls"]


@pytest.mark.parametrize(
    ("budget", "fails"),
    [
        (RetryBudget(rounds=1, base_delay=0.1, max_delay=0.1, deadline=3.0), True),
        (RetryBudget(), False),
    ],
)
def test_a_throttled_quota_needs_a_budget_that_outlasts_it(
    budget: RetryBudget, fails: bool
) -> None:
    # 60 processes, GetSecretValue at 10 per second (burst 10): 5 s to answer everyone.
    config = WorldConfig(tasks=60, workers=1, get_tps=10.0, describe_tps=40.0, budget=budget)
    result = simulate(config)
    assert result["throttled_calls"] > 0
    assert (result["failed"] > 0) is fails
    if not fails:
        assert result["stall_max_s"] < budget.deadline


def test_the_same_seed_gives_the_same_fleet() -> None:
    config = WorldConfig(tasks=50, workers=2, get_tps=20.0, describe_tps=80.0)
    first, second = simulate(config), simulate(config)
    for key in ("stall_max_s", "throttled_calls", "calls", "refetch_joins"):
        assert first[key] == second[key]


@pytest.mark.parametrize("strategy", ["single", "alternating"])
def test_a_pooler_refusing_with_an_unlisted_wording_is_ridden_out(strategy: str) -> None:
    # Issue 25's pooler: a third of the logins with a just-changed password are
    # refused (ERROR, a wording no list holds) for 4 s after setSecret.
    config = WorldConfig(tasks=50, workers=2, strategy=strategy, rotations=3, unlisted_share=1 / 3)
    world = World(config)
    out = world.run()
    if strategy == "single":  # the new password is the one just changed: the pooler bites
        assert out.refused_logins > out.recovered
    assert out.failed == 0
    assert out.recovered > 0


def test_a_permanent_unlisted_refusal_fails_within_its_bound_not_the_deadline() -> None:
    budget = RetryBudget()
    out = World(WorldConfig(tasks=20, workers=2, permanent_refusal=True)).run()
    assert out.failed == 20 * 2 * WorldConfig(tasks=0, workers=0).threads
    assert max(out.stalls) < 3.5 < budget.deadline  # the 3 s window, not 20 s
