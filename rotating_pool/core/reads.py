"""Which secret version to read, decided without I/O.

A rotation moves labels between versions, and a version's value never changes
once written (Secrets Manager refuses a second value under one version id). So
a process that knows which version it holds, and which versions were refused,
can tell from the labels alone whether a read would teach it anything:

- the steady-state refresh asks DescribeSecret (its quota is four times
  GetSecretValue's) and reads a value only when AWSCURRENT moved to a version it
  has not read yet;
- a refused login reads AWSCURRENT if it moved, else AWSPENDING (the password a
  single-user rotation has set between setSecret and finishSecret), skipping
  versions already refused. Where what the process has seen tells which label
  holds the answer (`recovery_route`), one GetSecretValue by stage is the
  whole answer in one round trip (its response carries VersionId and
  VersionStages); otherwise DescribeSecret comes first.

Either way a rotation costs a process at most one GetSecretValue where the
route was chosen right, and one more where it was not. The
`CredentialStore` and the fleet simulator in ``benchmarks/`` both run these
functions, so what is measured is what ships.

Through the Secrets Manager Agent there are no labels to look at, only
questions to ask it (`AgentAsk`): `AGENT_LOAD` for the first read and the
refresh, `next_agent_ask` after a refused login. `AgentSource` carries them out.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence, Set
from dataclasses import dataclass

from rotating_pool.secret import AWSCURRENT, AWSPENDING

__all__ = [
    "AGENT_LOAD",
    "AgentAsk",
    "Labels",
    "Read",
    "Route",
    "next_agent_ask",
    "next_stage",
    "recovery_reads",
    "recovery_route",
    "steady_read",
]


@dataclass(frozen=True)
class Labels:
    """Where the staging labels are: DescribeSecret's ``VersionIdsToStages``.

    Attributes:
        current: the version labelled AWSCURRENT.
        pending: the version labelled AWSPENDING, when it is another one
            (a rotation in progress); None otherwise.
    """

    current: str
    pending: str | None = None

    @classmethod
    def from_stages(cls, versions_to_stages: Mapping[str, Sequence[str]]) -> Labels | None:
        """Labels from a ``VersionIdsToStages`` mapping; None if nothing is AWSCURRENT."""
        current = pending = None
        for version_id, stages in versions_to_stages.items():
            if AWSCURRENT in stages:
                current = version_id
            elif AWSPENDING in stages:
                pending = version_id
        return None if current is None else cls(current, pending)


@dataclass(frozen=True)
class Read:
    """Read this version (GetSecretValue by VersionId); `stage` says why."""

    version_id: str
    stage: str


def steady_read(labels: Labels, held: str | None) -> Read | None:
    """The periodic refresh: read AWSCURRENT only when it is not the version held.

    >>> steady_read(Labels("v2"), held="v1")
    Read(version_id='v2', stage='AWSCURRENT')
    >>> steady_read(Labels("v2", pending="v3"), held="v2") is None
    True
    """
    if labels.current == held:
        return None
    return Read(labels.current, AWSCURRENT)


def recovery_reads(
    labels: Labels, refused: Collection[str | None], *, use_pending: bool = True
) -> list[Read]:
    """After a refused login: the versions worth trying, best first.

    `refused` holds the version ids refused lately (the one just refused
    first). AWSCURRENT comes first when it was not refused; then AWSPENDING,
    when allowed. An empty list means the secret offers nothing new.

    >>> recovery_reads(Labels("v1", pending="v2"), refused={"v1"})
    [Read(version_id='v2', stage='AWSPENDING')]
    >>> recovery_reads(Labels("v2"), refused={"v1"})
    [Read(version_id='v2', stage='AWSCURRENT')]
    >>> recovery_reads(Labels("v1"), refused={"v1"})
    []
    """
    reads = []
    if labels.current not in refused:
        reads.append(Read(labels.current, AWSCURRENT))
    if use_pending and labels.pending is not None and labels.pending not in refused:
        reads.append(Read(labels.pending, AWSPENDING))
    return reads


class Route(enum.Enum):
    """How a recovery starts reading (`recovery_route`)."""

    LABELS = "labels"
    """DescribeSecret, then GetSecretValue by VersionId: exactly one value read
    whichever label moved, and none when nothing did."""
    CURRENT = "current"
    """GetSecretValue(VersionStage=AWSCURRENT): its answer carries VersionId
    and VersionStages, so it is the whole answer when AWSCURRENT moved."""
    PENDING = "pending"
    """GetSecretValue(VersionStage=AWSPENDING): the whole answer while a
    single-user rotation is between setSecret and finishSecret."""


def recovery_route(
    rejected_stage: str,
    last_found: str | None,
    *,
    use_pending: bool,
    read_other: bool = False,
) -> Route:
    """After a refused login: the first read, chosen to be the whole answer.

    - A version other than the refused ones was read already (`read_other`:
      the periodic refresh found it): DescribeSecret, so that the version read
      before answers without a GetSecretValue.
    - Credentials read as AWSPENDING were refused: their single-user rotation
      is over and a newer one has changed the password, so its AWSPENDING is
      the answer (processes that keep connecting are refused between its
      setSecret and finishSecret).
    - The last recovery of this process found AWSCURRENT moved (alternating
      users: AWSCURRENT moves before the password it replaces changes): read
      AWSCURRENT.
    - Otherwise nothing is known: DescribeSecret first, which saves a value
      read when AWSCURRENT has not moved (a single-user rotation half way, or
      a password changed outside rotation).

    Each route reads at most one value per rotation in the case it is chosen
    for; a wrong guess costs one more read, never a wrong login.

    >>> recovery_route("AWSPENDING", None, use_pending=True)
    <Route.PENDING: 'pending'>
    >>> recovery_route("AWSCURRENT", "AWSCURRENT", use_pending=True)
    <Route.CURRENT: 'current'>
    >>> recovery_route("AWSCURRENT", None, use_pending=True)
    <Route.LABELS: 'labels'>
    """
    if read_other:
        return Route.LABELS
    if use_pending and rejected_stage == AWSPENDING:
        return Route.PENDING
    if last_found == AWSCURRENT:
        return Route.CURRENT
    return Route.LABELS


def next_stage(
    read_stage: str,
    stages: Collection[str],
    *,
    use_pending: bool,
    already_read: Collection[str] = (),
) -> str | None:
    """After a read by stage found nothing new: the other stage to read, or None.

    `stages` are the VersionStages of the version the read returned (empty
    when no version had the stage); `already_read` the stages this recovery
    has read so far. The other label is worth a read only when it is on
    another version and was not read already: each label is read at most once
    per recovery, so a recovery whose every label names a refused version ends
    with "nothing new" after two reads instead of asking again and again.

    >>> next_stage("AWSCURRENT", ["AWSCURRENT"], use_pending=True)
    'AWSPENDING'
    >>> next_stage("AWSPENDING", ["AWSPENDING", "AWSCURRENT"], use_pending=True) is None
    True
    >>> next_stage("AWSCURRENT", ["AWSCURRENT"], use_pending=False) is None
    True
    >>> next_stage("AWSCURRENT", ["AWSCURRENT"], use_pending=True,
    ...            already_read=["AWSPENDING", "AWSCURRENT"]) is None
    True
    """
    other = AWSPENDING if read_stage == AWSCURRENT else AWSCURRENT
    if other == AWSPENDING and not use_pending:
        return None
    if other in already_read:
        return None
    return None if other in stages else other


# The Secrets Manager Agent: no labels to look at, only questions to ask it.


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
