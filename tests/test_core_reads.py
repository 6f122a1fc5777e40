"""Which version to read, and what to ask the agent: the pure read order, without I/O.

Fast unit tests of `rotating_pool.reads` (the core's version reads and the
agent's order); `make mutation` runs them against every mutant of the core.
"""

from __future__ import annotations

import pytest

from rotating_pool.reads import (
    AGENT_LOAD,
    AgentAsk,
    Labels,
    Read,
    next_agent_ask,
    recovery_reads,
    steady_read,
)
from rotating_pool.secret import AWSCURRENT, AWSPENDING

CACHED_CURRENT = AgentAsk(AWSCURRENT, refresh=False)
CACHED_PENDING = AgentAsk(AWSPENDING, refresh=False)
FRESH_PENDING = AgentAsk(AWSPENDING, refresh=True)
FRESH_CURRENT = AgentAsk(AWSCURRENT, refresh=True)


# -- Labels from DescribeSecret's VersionIdsToStages ---------------------------------------


def test_labels_name_awscurrent_and_another_versions_awspending():
    stages = {"v1": ["AWSPREVIOUS"], "v2": ["AWSCURRENT"], "v3": ["AWSPENDING"]}
    assert Labels.from_stages(stages) == Labels("v2", pending="v3")


def test_awspending_on_the_current_version_is_no_rotation_in_progress():
    # Secrets Manager's state after a finished rotation, until the next one.
    assert Labels.from_stages({"v2": ["AWSCURRENT", "AWSPENDING"]}) == Labels("v2", pending=None)


def test_labels_without_awscurrent_are_none():
    assert Labels.from_stages({"v1": ["AWSPENDING"]}) is None
    assert Labels.from_stages({}) is None


def test_labels_default_to_no_pending():
    assert Labels("v1").pending is None


# -- the steady-state refresh -----------------------------------------------------------------


def test_the_refresh_reads_awscurrent_only_when_it_is_not_the_version_held():
    assert steady_read(Labels("v2"), held="v1") == Read("v2", AWSCURRENT)
    assert steady_read(Labels("v2", pending="v3"), held="v2") is None
    assert steady_read(Labels("v2"), held=None) == Read("v2", AWSCURRENT)


# -- after a refused login ---------------------------------------------------------------------


def test_a_moved_awscurrent_comes_before_awspending():
    assert recovery_reads(Labels("v2", pending="v3"), refused=["v1"]) == [
        Read("v2", AWSCURRENT),
        Read("v3", AWSPENDING),
    ]


def test_refused_versions_are_never_offered():
    assert recovery_reads(Labels("v1", pending="v2"), refused=["v1"]) == [Read("v2", AWSPENDING)]
    assert recovery_reads(Labels("v2", pending="v3"), refused=["v3", "v2"]) == []
    assert recovery_reads(Labels("v1"), refused=["v1"]) == []


def test_awspending_is_offered_only_when_allowed():
    labels = Labels("v1", pending="v2")
    assert recovery_reads(labels, refused=["v1"], use_pending=False) == []
    assert recovery_reads(labels, refused=["v0"], use_pending=False) == [Read("v1", AWSCURRENT)]
    assert recovery_reads(labels, refused=["v1"]) == [Read("v2", AWSPENDING)]  # the default


def test_no_pending_means_awscurrent_alone():
    assert recovery_reads(Labels("v2"), refused=[None]) == [Read("v2", AWSCURRENT)]


# -- the agent's order -----------------------------------------------------------------------


def test_the_first_read_and_the_refresh_take_the_agents_cached_awscurrent():
    assert AGENT_LOAD == CACHED_CURRENT


def _order(missing: set[str], *, use_pending: bool = True) -> list[AgentAsk]:
    asked: list[AgentAsk] = []
    while (ask := next_agent_ask(asked, missing, use_pending=use_pending)) is not None:
        asked.append(ask)
    return asked


def test_a_refusal_asks_the_cache_first_then_refreshes_awspending_before_awscurrent():
    assert _order(set()) == [CACHED_CURRENT, CACHED_PENDING, FRESH_PENDING, FRESH_CURRENT]


def test_a_stage_the_agent_said_is_missing_is_not_asked_again():
    assert _order({AWSPENDING}) == [CACHED_CURRENT, FRESH_CURRENT]


def test_without_use_pending_the_agent_is_asked_for_awscurrent_only():
    assert _order(set(), use_pending=False) == [CACHED_CURRENT, FRESH_CURRENT]


@pytest.mark.parametrize(
    ("asked", "missing", "expected"),
    [
        ([CACHED_CURRENT], set(), CACHED_PENDING),
        ([CACHED_CURRENT, CACHED_PENDING], {AWSPENDING}, FRESH_CURRENT),
        ([CACHED_CURRENT, CACHED_PENDING, FRESH_PENDING, FRESH_CURRENT], set(), None),
    ],
)
def test_the_next_ask_follows_what_was_asked(asked, missing, expected):
    assert next_agent_ask(asked, missing) == expected
