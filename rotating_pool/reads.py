"""Which secret version to read: the version reads moved to `rotating_pool.core.reads`
(kept here so that existing imports work), and the Secrets Manager Agent's read order.

Through the Secrets Manager Agent there are no labels to look at, only
questions to ask it (`AgentAsk`): `AGENT_LOAD` for the first read and the
refresh, `next_agent_ask` after a refused login. `AgentSource` carries them out.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

from rotating_pool.core.reads import Labels, Read, recovery_reads, steady_read
from rotating_pool.secret import AWSCURRENT, AWSPENDING

__all__ = [
    "AGENT_LOAD",
    "AgentAsk",
    "Labels",
    "Read",
    "next_agent_ask",
    "recovery_reads",
    "steady_read",
]


@dataclass(frozen=True)
class AgentAsk:
    """One question to the Secrets Manager Agent.

    Attributes:
        stage: the staging label asked for.
        refresh: with ``refreshNow=true`` (the agent reads Secrets Manager at
            once) or not (the agent answers from its cache, which every process
            behind it shares).
    """

    stage: str
    refresh: bool


AGENT_LOAD = AgentAsk(AWSCURRENT, refresh=False)
"""The first read and the periodic refresh: AWSCURRENT from the agent's cache
(free for Secrets Manager; the agent refreshes it on its own TTL)."""

# After a refused login: the agent's cache first, since another process behind
# the agent may have refreshed it already and then this costs Secrets Manager
# nothing; then refreshNow, AWSPENDING before AWSCURRENT: a refusal comes from
# setSecret on, while AWSPENDING names the password the database has (single
# user, and the user an alternating rotation is changing).
_AGENT_RECOVERY = (
    AgentAsk(AWSCURRENT, refresh=False),
    AgentAsk(AWSPENDING, refresh=False),
    AgentAsk(AWSPENDING, refresh=True),
    AgentAsk(AWSCURRENT, refresh=True),
)


def next_agent_ask(
    asked: Sequence[AgentAsk], missing: Set[str], *, use_pending: bool = True
) -> AgentAsk | None:
    """After a refused login: what to ask the agent next, or None when nothing is left.

    `asked` holds what was asked already, each answered with the refused
    credentials (or a version refused lately); `missing` the stages the agent
    said no version has. The agent caches no error, so a stage it said is
    missing came from Secrets Manager just now: asking again would cost a read
    and teach nothing.

    >>> next_agent_ask([], set())
    AgentAsk(stage='AWSCURRENT', refresh=False)
    >>> next_agent_ask([AgentAsk("AWSCURRENT", False), AgentAsk("AWSPENDING", False)],
    ...                {"AWSPENDING"})
    AgentAsk(stage='AWSCURRENT', refresh=True)
    >>> next_agent_ask([AgentAsk("AWSCURRENT", False)], set(), use_pending=False)
    AgentAsk(stage='AWSCURRENT', refresh=True)
    """
    for ask in _AGENT_RECOVERY:
        if ask in asked or ask.stage in missing:
            continue
        if ask.stage == AWSPENDING and not use_pending:
            continue
        return ask
    return None
