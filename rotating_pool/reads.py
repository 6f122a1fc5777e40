"""Moved to `rotating_pool.core.reads`; kept so that existing imports work."""

from rotating_pool.core.reads import (
    AGENT_LOAD,
    AgentAsk,
    Labels,
    Read,
    next_agent_ask,
    recovery_reads,
    steady_read,
)

__all__ = [
    "AGENT_LOAD",
    "AgentAsk",
    "Labels",
    "Read",
    "next_agent_ask",
    "recovery_reads",
    "steady_read",
]
