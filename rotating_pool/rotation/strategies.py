"""The two rotation strategies: who gets the new password, and who sets it.

The four-step skeleton (label checks, createSecret, testSecret, finishSecret)
is the same for both and lives in `rotator`; a strategy decides only:

- createSecret: which user the AWSPENDING version names;
- setSecret: how the new password gets into the database.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rotating_pool.errors import SecretFormatError
from rotating_pool.rotation.database import Login, LoginOptions, login, try_login
from rotating_pool.rotation.errors import (
    DatabaseLoginError,
    LoginAttempt,
    RotationStateError,
)
from rotating_pool.rotation.hosts import AdminLogin, admin_login
from rotating_pool.rotation.password import set_password
from rotating_pool.rotation.role_check import check_role_to_rotate
from rotating_pool.rotation.security import tls_wanted
from rotating_pool.rotation.settings import RotationSettings, Strategy
from rotating_pool.rotation.versions import SecretVersion, SecretVersions
from rotating_pool.secret import AWSCURRENT, AWSPENDING, AWSPREVIOUS, Credentials

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = [
    "AlternatingUsers",
    "RotationStrategy",
    "SingleUser",
    "StepContext",
    "StepOutcome",
    "strategy_for",
]

logger = logging.getLogger("rotating_pool.rotation")

# How many unlabelled older versions setSecret (single) may try after AWSCURRENT
# and AWSPREVIOUS: enough to find a password set by a rotation whose AWSPENDING
# label was removed before finishSecret, few enough not to look like an attack.
_OLDER_VERSIONS_TRIED = 3


class StepOutcome(str, enum.Enum):
    """What a step did.

    - ``performed``: it changed something (a version, a password, a label).
    - ``already_done``: a previous run with this token had done it (retry).
    - ``skipped``: the token is already AWSCURRENT; there is nothing to do.
    """

    PERFORMED = "performed"
    ALREADY_DONE = "already_done"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class StepContext:
    """What a step runs against.

    Attributes:
        options: how logins are made (TLS rules, timeout, the step's deadline).
        rds: makes the ``rds`` client, for an RDS-managed admin secret.
    """

    secret_id: str
    token: str
    versions: SecretVersions
    client: SecretsManagerClient
    options: LoginOptions
    rds: Callable[[], RDSClient]

    def try_login(self, version: SecretVersion, source: str) -> tuple[Login | None, LoginAttempt]:
        """`database.try_login` of a version of this secret (its ``ssl`` key decides TLS)."""
        use_tls = tls_wanted(self.secret_id, version.document, what=source)
        return try_login(version.credentials, source=source, options=self.options, use_tls=use_tls)

    def login(self, version: SecretVersion, source: str) -> Login:
        """`database.login` of a version of this secret."""
        use_tls = tls_wanted(self.secret_id, version.document, what=source)
        return login(
            version.credentials,
            source=source,
            options=self.options,
            use_tls=use_tls,
            secret_id=self.secret_id,
        )


class RotationStrategy(Protocol):
    """The strategy-specific half of a rotation."""

    def pending_username(self, secret_id: str, current: Credentials) -> str:
        """The user the new (AWSPENDING) version names."""
        ...

    def set_password(
        self, ctx: StepContext, current: SecretVersion, pending: SecretVersion
    ) -> StepOutcome:
        """setSecret: make the AWSPENDING password the user's password."""
        ...


def strategy_for(settings: RotationSettings) -> RotationStrategy:
    """The strategy the secret's ``rotation_strategy`` names."""
    if settings.strategy is Strategy.ALTERNATING:
        return AlternatingUsers(settings)
    return SingleUser(settings)


@dataclass(frozen=True)
class SingleUser:
    """One user; it changes its own password.

    To log in it tries AWSCURRENT, then AWSPREVIOUS (after a half-finished
    rotation AWSCURRENT may no longer work), then the few newest unlabelled
    versions of the same user (a rotation whose AWSPENDING label was removed
    after its setSecret). No admin is needed.
    """

    settings: RotationSettings

    def pending_username(self, secret_id: str, current: Credentials) -> str:
        """The same user."""
        return current.username

    def set_password(
        self, ctx: StepContext, current: SecretVersion, pending: SecretVersion
    ) -> StepOutcome:
        """Log in as the user and ``ALTER ROLE`` itself, once the user passes
        the pin and `role_check` on its own session."""
        new = pending.credentials
        if new.username != current.credentials.username:
            raise RotationStateError(
                f"secret {ctx.secret_id!r}: AWSPENDING (version {ctx.token!r}) names user "
                f"{new.username!r} but AWSCURRENT names {current.credentials.username!r}; the "
                "single strategy changes one user's password: remove the AWSPENDING label "
                "from that version and rotate again",
                secret_id=ctx.secret_id,
            )
        # Before any login: AWSPENDING's password goes only to AWSCURRENT's server.
        _check_same_server(ctx, current.credentials, new, "AWSCURRENT")
        ctx.options.security.role_pin.check(new.username, secret_id=ctx.secret_id)
        conn, attempt = ctx.try_login(pending, AWSPENDING)
        if conn is not None:
            conn.close()
            return StepOutcome.ALREADY_DONE

        attempts = [attempt]
        tried_passwords = {new.password}
        for source, candidate in self._login_candidates(ctx, current):
            creds = candidate.credentials
            # An older version naming another server is not tried: this user's
            # passwords go only to the server AWSPENDING names.
            if (
                creds.username != new.username
                or creds.password in tried_passwords
                or (creds.host, creds.port) != (new.host, new.port)
            ):
                continue
            tried_passwords.add(creds.password)
            if source != AWSCURRENT:
                logger.info(
                    "secret %r: %s; trying %s to log in", ctx.secret_id, attempts[-1], source
                )
            conn, attempt = ctx.try_login(candidate, source)
            attempts.append(attempt)
            if conn is not None:
                break
        if conn is None:
            raise DatabaseLoginError(
                f"secret {ctx.secret_id!r}: no version of the secret logs in as "
                f"{new.username!r}, so it cannot change its password; set one by hand "
                "(as an admin) and store it as AWSCURRENT",
                secret_id=ctx.secret_id,
                attempts=attempts,
            )
        with conn:
            # With `ALTER ROLE user SET ROLE group` in force, current_user is
            # the group, and an ordinary role may change only its own password
            # (PostgreSQL's SET ROLE and ALTER ROLE pages): denied.
            conn.execute("SET ROLE NONE")
            check_role_to_rotate(
                conn,
                new.username,
                group=None,
                current=None,
                as_admin=False,
                nologin_ok=False,
                secret_id=ctx.secret_id,
            )
            set_password(
                conn, new.username, new.password, grant_login=False, secret_id=ctx.secret_id
            )
        return StepOutcome.PERFORMED

    def _login_candidates(
        self, ctx: StepContext, current: SecretVersion
    ) -> Iterator[tuple[str, SecretVersion]]:
        # Lazily: each read happens only if the previous login failed.
        yield AWSCURRENT, current
        previous = _read_fallback(ctx, stage=AWSPREVIOUS)
        if previous is not None:
            yield AWSPREVIOUS, previous
        seen = {current.version_id, ctx.token, previous.version_id if previous else None}
        older = [v for v in ctx.versions.list_versions() if v.version_id not in seen]
        for info in older[:_OLDER_VERSIONS_TRIED]:
            version = _read_fallback(ctx, version_id=info.version_id)
            if version is not None:
                yield f"version {info.version_id}", version


def _read_fallback(
    ctx: StepContext, *, stage: str | None = None, version_id: str | None = None
) -> SecretVersion | None:
    """A version to try a login with; a malformed one is skipped, not fatal:
    it is only a fallback, and an old version may predate today's format."""
    try:
        return ctx.versions.read(stage=stage, version_id=version_id)
    except SecretFormatError as error:
        logger.warning("secret %r: skipping a malformed older version: %s", ctx.secret_id, error)
        return None


@dataclass(frozen=True)
class AlternatingUsers:
    """Two login users, members of a NOLOGIN group role with ``SET ROLE`` to
    it, take turns; an admin gives the one that is not AWSCURRENT ``LOGIN``
    and the new password. The AWSCURRENT user and its sessions are never
    touched, so clients keep working through the whole rotation.
    """

    settings: RotationSettings

    def pending_username(self, secret_id: str, current: Credentials) -> str:
        """The other user of ``rotation_users``."""
        return self.settings.other_user(secret_id, current.username)

    def set_password(
        self, ctx: StepContext, current: SecretVersion, pending: SecretVersion
    ) -> StepOutcome:
        """As the admin, ``ALTER ROLE <other user> WITH LOGIN PASSWORD <verifier>``,
        once the user passes the pin and `role_check` on the admin's session."""
        new = pending.credentials
        expected = self.settings.other_user(ctx.secret_id, current.credentials.username)
        if new.username != expected:
            raise RotationStateError(
                f"secret {ctx.secret_id!r}: AWSPENDING (version {ctx.token!r}) names user "
                f"{new.username!r}, but the user to rotate is {expected!r} (AWSCURRENT is "
                f"{current.credentials.username!r}); it was made before AWSCURRENT moved: remove "
                "the AWSPENDING label from that version and rotate again",
                secret_id=ctx.secret_id,
            )
        _check_same_server(ctx, current.credentials, new, "AWSCURRENT")
        ctx.options.security.role_pin.check(new.username, secret_id=ctx.secret_id)
        # Before any login: the admin's password goes only to its own server.
        admin = self.admin_login(ctx, current)
        conn, _ = ctx.try_login(pending, AWSPENDING)
        if conn is not None:
            conn.close()
            return StepOutcome.ALREADY_DONE

        # AWS's guard against a confused deputy: the admin acts only for a
        # secret whose own current credentials are accepted by that database.
        conn, attempt = ctx.try_login(current, AWSCURRENT)
        if conn is None:
            raise DatabaseLoginError(
                f"secret {ctx.secret_id!r}: AWSCURRENT does not log in, so the admin secret is "
                "not used on its behalf; repair AWSCURRENT's user first",
                secret_id=ctx.secret_id,
                attempts=[attempt],
            )
        conn.close()

        conn = login(
            admin.credentials,
            source="admin secret AWSCURRENT",
            options=ctx.options,
            use_tls=admin.use_tls,
            secret_id=ctx.secret_id,
        )
        with conn:
            # The secret's writer is not trusted: the admin changes only a
            # fresh or unprivileged member of the group AWSCURRENT's user is in.
            check_role_to_rotate(
                conn,
                new.username,
                group=self.settings.role,
                current=current.credentials.username,
                as_admin=True,
                nologin_ok=True,
                secret_id=ctx.secret_id,
            )
            set_password(
                conn, new.username, new.password, grant_login=True, secret_id=ctx.secret_id
            )
        return StepOutcome.PERFORMED

    def admin_login(self, ctx: StepContext, current: SecretVersion) -> AdminLogin:
        """Find the admin's server and check that AWSCURRENT names it; no login.

        Raises:
            AdminHostError: the admin secret names no server, or AWSCURRENT
                names another one.
        """
        assert self.settings.master_arn is not None
        admin = admin_login(
            ctx.client,
            self.settings.master_arn,
            ctx.rds,
            secret_id=ctx.secret_id,
            dbname=current.credentials.dbname,
        )
        app = current.credentials
        admin.server.check_app_host(
            ctx.secret_id, app.host, app.port, ctx.options.security, what="AWSCURRENT"
        )
        return admin


def _check_same_server(
    ctx: StepContext, current: Credentials, pending: Credentials, label: str
) -> None:
    if (current.host, current.port) != (pending.host, pending.port):
        raise RotationStateError(
            f"secret {ctx.secret_id!r}: AWSPENDING (version {ctx.token!r}) points at "
            f"{pending.host}:{pending.port} but {label} at {current.host}:{current.port}; a "
            "rotation does not move a secret to another server: remove the AWSPENDING label "
            "from that version and rotate again",
            secret_id=ctx.secret_id,
        )
