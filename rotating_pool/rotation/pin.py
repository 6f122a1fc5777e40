"""The deployer's pin: which roles a rotation function may ever give a new password.

A function shared by several applications can be limited to the roles of
those applications, whatever their secrets say: ``ALLOWED_ROLES`` in the
Lambda's environment, ``--allowed-role`` on the command line. Each entry is a
role name, or a prefix followed by ``*``. No entry: no pin (the database checks
of `role_check` still apply).

>>> pin = RolePin.from_entries(["orders_*", "billing_a"])
>>> pin.allows("orders_b"), pin.allows("billing_b")
(True, False)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rotating_pool.rotation.errors import RoleRefusedError, RotationConfigError, secret_prefix

__all__ = ["RolePin"]


@dataclass(frozen=True)
class RolePin:
    """Role names and name prefixes (``prefix*``) a rotation may change.

    Attributes:
        names: exact role names.
        prefixes: name prefixes (the entries that ended with ``*``).
        setting: how the deployer sets the pin here, named in error messages.
    """

    names: frozenset[str] = field(default_factory=frozenset)
    prefixes: frozenset[str] = field(default_factory=frozenset)
    setting: str = "allowed_roles"

    @classmethod
    def from_entries(cls, entries: Iterable[str], *, setting: str = "allowed_roles") -> RolePin:
        """Build from comma-separated or repeated entries, as the CLI and Lambda give them.

        A bare ``*`` would pin nothing and is refused, as is an entry with a
        ``*`` anywhere but at its end.

        Raises:
            RotationConfigError: an entry is malformed.
        """
        names: set[str] = set()
        prefixes: set[str] = set()
        for entry in entries:
            for part in (p.strip() for p in entry.split(",")):
                if not part:
                    continue
                if part.endswith("*") and "*" not in part[:-1] and len(part) > 1:
                    prefixes.add(part[:-1])
                elif "*" in part:
                    raise RotationConfigError(
                        f"{setting}: {part!r} is not a role name or a prefix followed by '*' "
                        "(e.g. orders_*); '*' alone would allow every role: leave the setting "
                        "unset for that",
                        key=setting,
                    )
                else:
                    names.add(part)
        return cls(frozenset(names), frozenset(prefixes), setting)

    @property
    def active(self) -> bool:
        """Whether the pin limits anything."""
        return bool(self.names or self.prefixes)

    def allows(self, role: str) -> bool:
        """Whether `role` may be rotated (always, without a pin)."""
        if not self.active:
            return True
        return role in self.names or any(role.startswith(p) for p in self.prefixes)

    def check(self, role: str, *, secret_id: str | None) -> None:
        """Refuse `role` unless the pin allows it.

        Raises:
            RoleRefusedError: with check ``pin``; nothing was changed.
        """
        if self.allows(role):
            return
        allowed = sorted(self.names) + sorted(p + "*" for p in self.prefixes)
        raise RoleRefusedError(
            f"{secret_prefix(secret_id)}the user {role!r} is outside the roles this rotation "
            f"function may change ({self.setting}: {', '.join(allowed)}); nothing was changed. "
            "If the secret is right, the deployer adds the role to that setting",
            secret_id=secret_id,
            role=role,
            checks=("pin",),
        )

    def __str__(self) -> str:
        if not self.active:
            return "(no pin)"
        return ", ".join(sorted(self.names) + sorted(p + "*" for p in self.prefixes))
