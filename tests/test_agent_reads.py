"""The agent's read order, a decision without I/O (`rotating_pool.reads`)."""

from __future__ import annotations

from rotating_pool.reads import AGENT_LOAD, AgentAsk, next_agent_ask

CACHED_CURRENT = AgentAsk("AWSCURRENT", refresh=False)
CACHED_PENDING = AgentAsk("AWSPENDING", refresh=False)
FRESH_PENDING = AgentAsk("AWSPENDING", refresh=True)
FRESH_CURRENT = AgentAsk("AWSCURRENT", refresh=True)


def every_ask(use_pending: bool, missing_after: AgentAsk | None = None) -> list[AgentAsk]:
    """What a recovery asks when every answer is the refused credentials; the
    agent says AWSPENDING is missing when asked `missing_after`."""
    asked: list[AgentAsk] = []
    missing: set[str] = set()
    while (ask := next_agent_ask(asked, missing, use_pending=use_pending)) is not None:
        asked.append(ask)
        if ask == missing_after:
            missing.add(ask.stage)
    return asked


def test_the_first_read_and_the_refresh_ask_the_agents_cache_for_awscurrent():
    assert AgentAsk("AWSCURRENT", refresh=False) == AGENT_LOAD


def test_a_recovery_asks_the_cache_first_then_refreshes_awspending_before_awscurrent():
    assert every_ask(use_pending=True) == [
        CACHED_CURRENT,
        CACHED_PENDING,
        FRESH_PENDING,
        FRESH_CURRENT,
    ]


def test_without_awspending_only_awscurrent_is_asked_cached_then_fresh():
    assert every_ask(use_pending=False) == [CACHED_CURRENT, FRESH_CURRENT]


def test_a_stage_the_agent_said_is_missing_is_never_asked_again():
    assert every_ask(True, missing_after=CACHED_PENDING) == [
        CACHED_CURRENT,
        CACHED_PENDING,
        FRESH_CURRENT,
    ]
    assert every_ask(True, missing_after=FRESH_PENDING) == [
        CACHED_CURRENT,
        CACHED_PENDING,
        FRESH_PENDING,
        FRESH_CURRENT,
    ]


def test_nothing_is_left_once_everything_was_asked():
    assert next_agent_ask(every_ask(True), set()) is None
