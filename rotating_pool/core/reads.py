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
  versions already refused.

Either way a rotation costs a process at most one GetSecretValue. The
`CredentialStore` and the fleet simulator in ``benchmarks/`` both run these
functions, so what is measured is what ships.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from rotating_pool.secret import AWSCURRENT, AWSPENDING

__all__ = ["Labels", "Read", "recovery_reads", "steady_read"]


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
