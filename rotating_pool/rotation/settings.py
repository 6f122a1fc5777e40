"""The rotation keys of a secret: which strategy, which roles, which admin.

They sit beside the usual RDS keys of the app secret::

    {"engine": "postgres", "host": "...", "port": 5432, "dbname": "app",
     "username": "app_a", "password": "...",
     "rotation_strategy": "alternating",
     "rotation_role": "app",
     "rotation_users": ["app_a", "app_b"],
     "masterarn": "arn:aws:secretsmanager:...:secret:db-admin-..."}

``single`` needs only ``rotation_strategy``; ``rotation_role`` is optional
there (when given, testSecret checks the user really acts as that role).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rotating_pool.rotation.errors import RotationConfigError

__all__ = ["MAX_IDENTIFIER_BYTES", "RotationSettings", "Strategy", "check_role_name"]

# PostgreSQL truncates longer names (NAMEDATALEN - 1) with only a NOTICE, so a
# long name would silently designate another role than the secret says.
MAX_IDENTIFIER_BYTES = 63


class Strategy(str, enum.Enum):
    """How a rotation changes the database.

    - ``single``: one login user changes its own password. Between setSecret
      and finishSecret the old password no longer works.
    - ``alternating``: two login users take turns; each rotation gives the user
      that is not AWSCURRENT a new password, as an admin. The old one keeps
      working until the next rotation.
    """

    SINGLE = "single"
    ALTERNATING = "alternating"


def check_role_name(name: object, *, what: str, secret_id: str | None, key: str | None) -> str:
    """Return `name` if it can name a PostgreSQL role, else raise RotationConfigError.

    Any characters are fine (names are always quoted); only emptiness, NUL and
    length are refused.
    """
    if not isinstance(name, str) or not name:
        raise RotationConfigError(
            f"{_where(secret_id)}{what} must be a non-empty string, not {type(name).__name__}",
            secret_id=secret_id,
            key=key,
        )
    if "\x00" in name:
        raise RotationConfigError(
            f"{_where(secret_id)}{what} {name!r} contains a NUL character, which PostgreSQL "
            "names cannot hold",
            secret_id=secret_id,
            key=key,
        )
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise RotationConfigError(
            f"{_where(secret_id)}{what} {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes: "
            "PostgreSQL would truncate it to another name; choose a shorter one",
            secret_id=secret_id,
            key=key,
        )
    return name


@dataclass(frozen=True)
class RotationSettings:
    """The validated rotation keys of one secret version.

    Attributes:
        strategy: `Strategy.SINGLE` or `Strategy.ALTERNATING`.
        role: the NOLOGIN group role that owns the objects (``rotation_role``);
            required for alternating, optional for single.
        users: the two login users that take turns (``rotation_users``);
            alternating only.
        master_arn: the admin secret's ARN (``masterarn``); alternating only.
    """

    strategy: Strategy
    role: str | None = None
    users: tuple[str, str] | None = None
    master_arn: str | None = None

    @classmethod
    def from_document(cls, secret_id: str, document: Mapping[str, Any]) -> RotationSettings:
        """Read and validate the rotation keys of a secret document.

        Raises:
            RotationConfigError: a key is missing or malformed; the message names
                the key and shows the value expected.
        """
        raw_strategy = document.get("rotation_strategy")
        try:
            strategy = Strategy(raw_strategy)
        except ValueError:
            shown = "missing" if raw_strategy is None else f"{raw_strategy!r}"
            raise RotationConfigError(
                f"secret {secret_id!r}: key 'rotation_strategy' is {shown}: add "
                '"rotation_strategy": "single" or "rotation_strategy": "alternating" '
                "to the secret (rotating-pool bootstrap writes it)",
                secret_id=secret_id,
                key="rotation_strategy",
            ) from None

        role = document.get("rotation_role")
        if strategy is Strategy.SINGLE:
            if role is not None:
                role = check_role_name(
                    role, what="'rotation_role'", secret_id=secret_id, key="rotation_role"
                )
            return cls(strategy=strategy, role=role)

        missing = [k for k in ("rotation_role", "rotation_users", "masterarn") if k not in document]
        if missing:
            raise RotationConfigError(
                f"secret {secret_id!r}: the alternating strategy needs the keys "
                f"{', '.join(repr(k) for k in missing)}: 'rotation_role' (the NOLOGIN group "
                "role), 'rotation_users' (its two login users) and 'masterarn' (the ARN of an "
                "admin secret); rotating-pool bootstrap writes them",
                secret_id=secret_id,
                key=missing[0],
            )
        role = check_role_name(
            role, what="'rotation_role'", secret_id=secret_id, key="rotation_role"
        )
        users = document["rotation_users"]
        if not isinstance(users, list) or len(users) != 2:
            raise RotationConfigError(
                f"secret {secret_id!r}: key 'rotation_users' must be a list of exactly two "
                'user names, e.g. ["app_a", "app_b"]',
                secret_id=secret_id,
                key="rotation_users",
            )
        first, second = (
            check_role_name(
                u, what="each of 'rotation_users'", secret_id=secret_id, key="rotation_users"
            )
            for u in users
        )
        if first == second:
            raise RotationConfigError(
                f"secret {secret_id!r}: key 'rotation_users' names {first!r} twice: the two "
                "users must differ",
                secret_id=secret_id,
                key="rotation_users",
            )
        if role in (first, second):
            raise RotationConfigError(
                f"secret {secret_id!r}: {role!r} is both 'rotation_role' and one of "
                "'rotation_users': the group role must be a third role",
                secret_id=secret_id,
                key="rotation_role",
            )
        master_arn = document["masterarn"]
        if not isinstance(master_arn, str) or not master_arn:
            raise RotationConfigError(
                f"secret {secret_id!r}: key 'masterarn' must be the ARN (or name) of the admin "
                "secret, a non-empty string",
                secret_id=secret_id,
                key="masterarn",
            )
        return cls(strategy=strategy, role=role, users=(first, second), master_arn=master_arn)

    def other_user(self, secret_id: str, username: str) -> str:
        """The alternating user that is not `username`.

        Raises:
            RotationConfigError: `username` is not one of `users`.
        """
        assert self.users is not None
        if username not in self.users:
            raise RotationConfigError(
                f"secret {secret_id!r}: AWSCURRENT's username {username!r} is not one of "
                f"'rotation_users' {list(self.users)}: fix the secret (or re-run "
                "rotating-pool bootstrap)",
                secret_id=secret_id,
                key="rotation_users",
            )
        return self.users[1] if username == self.users[0] else self.users[0]


def _where(secret_id: str | None) -> str:
    return f"secret {secret_id!r}: " if secret_id else ""
