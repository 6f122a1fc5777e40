"""The errors the rotation side raises.

Each message names the secret (and version or user, where known) and says what
to fix. None ever contains a password, a SCRAM verifier or a secret string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rotating_pool.errors import RotatingPoolError

__all__ = [
    "AdminHostError",
    "AuthenticationMethodError",
    "DatabaseLoginError",
    "DatabaseUnavailableError",
    "IamRoleMissingError",
    "LoginAttempt",
    "PasswordChangeError",
    "PrivilegedRoleError",
    "RoleRefusedError",
    "RoleSetupError",
    "RotationConfigError",
    "RotationError",
    "RotationNotEnabledError",
    "RotationStateError",
    "RotationTakenOverError",
    "SettingsMismatchError",
    "StepDeadlineError",
    "TLSSetupError",
    "TokenNotFoundError",
    "TokenNotPendingError",
]


def secret_prefix(secret_id: str | None) -> str:
    """``secret 'ID': `` to start a message about `secret_id`; nothing when the
    message is about no secret (bootstrap's people accounts have none)."""
    return "" if secret_id is None else f"secret {secret_id!r}: "


class RotationError(RotatingPoolError):
    """Base class of the rotation side's errors.

    Attributes:
        secret_id: the secret concerned, when there is one.
    """

    def __init__(self, message: str, *, secret_id: str | None = None) -> None:
        super().__init__(message)
        self.secret_id = secret_id


class RotationConfigError(RotationError, ValueError):
    """The rotation cannot run as configured: a rotation key of the secret
    (``rotation_strategy``, ``rotation_role``, ``rotation_users``,
    ``masterarn``), an environment variable, or an argument is missing or wrong.

    Attributes:
        key: the offending key or variable, when one is to blame.
    """

    def __init__(self, message: str, *, secret_id: str | None = None, key: str | None = None):
        super().__init__(message, secret_id=secret_id)
        self.key = key


class RotationStateError(RotationError):
    """The secret's versions and labels do not allow the step asked for."""


class RotationNotEnabledError(RotationStateError):
    """A Lambda step was called for a secret whose rotation is not enabled."""


class TokenNotFoundError(RotationStateError):
    """The ClientRequestToken is not a version of the secret."""


class TokenNotPendingError(RotationStateError):
    """The ClientRequestToken is a version of the secret, but neither
    AWSPENDING nor AWSCURRENT."""


@dataclass(frozen=True)
class LoginAttempt:
    """One login tried during a step, for error messages and logs.

    Attributes:
        source: where the credentials came from, e.g. ``"AWSCURRENT"`` or
            ``"admin secret AWSCURRENT"``.
        username: the database user.
        reason: why the server refused it; None when it logged in.
    """

    source: str
    username: str
    reason: str | None

    def __str__(self) -> str:
        outcome = "logged in" if self.reason is None else self.reason
        return f"{self.source} (user {self.username!r}): {outcome}"


class DatabaseLoginError(RotationError):
    """No credential the step could use was accepted by the database.

    Attributes:
        attempts: every login tried, in order, with the server's reason.
    """

    def __init__(
        self, message: str, *, secret_id: str | None, attempts: Sequence[LoginAttempt]
    ) -> None:
        tried = "; ".join(str(attempt) for attempt in attempts)
        super().__init__(f"{message} (tried: {tried})" if tried else message, secret_id=secret_id)
        self.attempts = tuple(attempts)


class DatabaseUnavailableError(RotationError):
    """The database could not be reached, or failed for a reason other than a
    rejected login (network, timeout, too many clients, server starting up)."""


class PasswordChangeError(RotationError):
    """The database refused the ``ALTER ROLE ... PASSWORD`` statement."""


class RoleSetupError(RotationError):
    """The database roles are not set up as the strategy needs (a user is not a
    member of the group role, or lacks its ``SET ROLE`` default). Running
    ``rotating-pool bootstrap`` again fixes it."""


class AdminHostError(RotationConfigError):
    """The admin's credentials would go to a server the admin secret does not
    name: the admin secret has no host (and is not an RDS-managed master secret
    whose endpoint can be looked up), or the app secret names another server
    than the admin's, one of its replicas, or an allowed host name.

    Raised before any login of the step, so the admin password is never sent.
    """


class TLSSetupError(RotationError):
    """A rotation login could not be made over verified TLS: the server offers
    no TLS, its certificate is not signed by the configured CA bundle or names
    another host, the CA bundle cannot be read, or libpq is too old (< 16)."""


class AuthenticationMethodError(RotationError):
    """The server asked for an authentication method the rotation refuses to
    use (a cleartext password always; MD5 unless allowed), so no password was
    sent."""


class StepDeadlineError(RotationError):
    """The step cannot finish within the time left to the Lambda invocation;
    Secrets Manager retries the rotation with the same token."""


class PrivilegedRoleError(RotationConfigError):
    """bootstrap refused to touch an existing role: it is privileged (or a
    member of a privileged role), it is the admin itself, or the group role can
    log in. Nothing was changed."""


class IamRoleMissingError(RotationConfigError):
    """bootstrap was asked for a people account but the server has no
    ``rds_iam`` role to grant it. RDS creates that role; a plain PostgreSQL
    does not, and without it the account could not log in with IAM tokens.
    Nothing was changed."""


class RoleRefusedError(RotationConfigError):
    """A rotation step refused to change a role's password: the role the secret
    names is not one a rotation may change (privileged, the admin, outside the
    application's group role, outside the deployer's pin, ...). Raised before
    ``ALTER ROLE``: nothing was changed.

    Attributes:
        role: the role refused.
        checks: the names of the checks it failed (``superuser``,
            ``member_of_privileged_role``, ``pin``, ...; see
            `rotating_pool.rotation.role_check`).
    """

    def __init__(
        self,
        message: str,
        *,
        secret_id: str | None,
        role: str,
        checks: Sequence[str],
    ) -> None:
        super().__init__(message, secret_id=secret_id, key="username")
        self.role = role
        self.checks = tuple(checks)


class SettingsMismatchError(RotationStateError):
    """AWSPENDING's rotation keys disagree with AWSCURRENT's (the rotation reads
    them from AWSCURRENT, as AWS does)."""


class RotationTakenOverError(RotationStateError):
    """Another rotation (another token) took the AWSPENDING label from this one;
    this rotation is abandoned and has nothing left to do."""
