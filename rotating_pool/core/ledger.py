"""What a process remembers about refused credentials, as an immutable value.

`CredentialStore` holds one `Ledger` under its lock and replaces it at each
event (a refusal, a refetch's answer), as urllib3's ``Retry.increment`` returns
a new policy: the rules below are data the store consults, testable without a
thread or a clock.

The rules:

- **Refused versions.** The version ids refused lately (newest first, at most
  `REFUSED_VERSIONS_KEPT`) are never offered again by a refetch, and never
  adopted by the background refresh (a cache or a lagging replica may still
  label a refused version AWSCURRENT).
- **Nothing new.** A refetch for some credentials that found nothing else is
  the answer, without a call, for the `reuse_for` seconds the plan asks
  (`rotating_pool.core.plan`): retries with the same credentials cost no
  further read.
- **Adopting another caller's recovery.** A caller refused with credentials
  that are no longer the ones in use takes the ones in use, without a read.
- **What the refresh may adopt.** Only over the credentials it started from
  (a recovery meanwhile wins), and never a version refused lately.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rotating_pool.secret import Credentials

__all__ = ["REFUSED_VERSIONS_KEPT", "Ledger"]

REFUSED_VERSIONS_KEPT = 4
"""How many refused version ids a process remembers: a rotation refuses at most
two (the old AWSCURRENT, and a single-user rotation's AWSPENDING once finished),
so four cover two rotations in quick succession."""


@dataclass(frozen=True)
class Ledger:
    """The refused-version ledger; see the module docstring.

    Attributes:
        refused: version ids refused lately, newest first.
        nothing_new: the refused credentials a refetch last found nothing
            other than, and when (the store's monotonic clock); or None.
    """

    refused: tuple[str | None, ...] = ()
    nothing_new: tuple[Credentials, float] | None = None

    def adopt_instead_of(
        self, current: Credentials | None, rejected: Credentials
    ) -> Credentials | None:
        """What a caller refused with `rejected` takes without a read: the
        credentials in use, when another caller already moved on from `rejected`.

        >>> old = Credentials("a", "x", version_id="v1")
        >>> new = Credentials("b", "y", version_id="v2")
        >>> Ledger().adopt_instead_of(new, old) is new
        True
        >>> Ledger().adopt_instead_of(old, old) is None
        True
        """
        return current if current is not None and current != rejected else None

    def reuses_nothing_new(self, rejected: Credentials, now: float, reuse_for: float) -> bool:
        """Whether "nothing new" for `rejected`, found less than `reuse_for`
        seconds before `now`, still answers a refetch without a read."""
        last = self.nothing_new
        return last is not None and last[0] == rejected and now - last[1] < reuse_for

    def refusing(self, rejected: Credentials) -> Ledger:
        """The ledger once `rejected` was refused (its version remembered first)."""
        if rejected.version_id in self.refused:
            return self
        kept = (rejected.version_id, *self.refused)[:REFUSED_VERSIONS_KEPT]
        return replace(self, refused=kept)

    def answered(self, rejected: Credentials, answer: object, now: float) -> Ledger:
        """The ledger once a refetch for `rejected` answered `answer`: new
        credentials clear "nothing new"; None (nothing new) records it; an
        error changes nothing."""
        if isinstance(answer, Credentials):
            return replace(self, nothing_new=None)
        if answer is None:
            return replace(self, nothing_new=(rejected, now))
        return self

    def refresh_may_adopt(
        self, newer: Credentials | None, current: Credentials | None, polled: Credentials
    ) -> bool:
        """Whether the background refresh, started from `polled`, may put
        `newer` in use while `current` is."""
        return newer is not None and current == polled and newer.version_id not in self.refused
