"""The four rotation steps, for the Lambda entry point and the local driver.

The local whole-rotation driver (`Rotator.rotate`) lives in `local_rotation`;
`RotationResult` is re-exported here, where it always was.

Secrets Manager drives a rotation by calling a function four times with the
same ClientRequestToken: createSecret, setSecret, testSecret, finishSecret. On
any failure it retries the whole rotation with that token, so each step here
is idempotent per token:

- createSecret reuses the AWSPENDING value already stored for the token;
- setSecret does nothing if the AWSPENDING password already logs in;
- finishSecret does nothing if the token is already AWSCURRENT.

Before each step come the checks AWS's templates make: rotation enabled, the
token is a version of the secret, a token already AWSCURRENT means nothing to
do, otherwise it must be AWSPENDING.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import botocore.exceptions
from psycopg import sql

from rotating_pool.rotation.clients import make_rds_client, make_secretsmanager_client
from rotating_pool.rotation.database import LoginOptions
from rotating_pool.rotation.deadline import Deadline, check_seconds
from rotating_pool.rotation.errors import (
    RoleSetupError,
    RotationConfigError,
    RotationNotEnabledError,
    RotationTakenOverError,
    SettingsMismatchError,
    TokenNotFoundError,
    TokenNotPendingError,
)
from rotating_pool.rotation.local_rotation import RotationResult, rotate
from rotating_pool.rotation.security import SecuritySettings
from rotating_pool.rotation.settings import RotationSettings
from rotating_pool.rotation.strategies import (
    AlternatingUsers,
    StepContext,
    StepOutcome,
    strategy_for,
)
from rotating_pool.rotation.versions import (
    SecretDescription,
    SecretVersion,
    SecretVersions,
    random_password,
)
from rotating_pool.secret import AWSCURRENT, AWSPENDING

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = [
    "DEFAULT_EXCLUDE_CHARACTERS",
    "STEPS",
    "RotationResult",
    "Rotator",
    "make_rds_client",
]

logger = logging.getLogger("rotating_pool.rotation")

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")

# AWS's templates exclude these by default: they break connection strings and
# shell quoting.
DEFAULT_EXCLUDE_CHARACTERS = "/@\"'\\"


class Rotator:
    """Runs rotation steps against Secrets Manager and PostgreSQL.

    Args:
        client: a boto3 ``secretsmanager`` client. By default one is made on
            first use from boto3's default chain (it honours
            ``AWS_ENDPOINT_URL_SECRETS_MANAGER``), with short timeouts.
        exclude_characters: characters GetRandomPassword must leave out.
        password_length: length of new passwords.
        connect_timeout: seconds allowed for each database login.
        security: TLS and authentication rules of the logins, and the host
            allow-list (default: verify-full against the system's CAs,
            SCRAM-SHA-256 only, no extra host).
        rds_client: a boto3 ``rds`` client, for admin secrets RDS manages (made
            on first use; it honours ``AWS_ENDPOINT_URL_RDS``).

    >>> rotator = Rotator(password_length=40)   # nothing is contacted yet
    >>> # result = rotator.rotate("prod/app/db")
    """

    def __init__(
        self,
        client: SecretsManagerClient | None = None,
        *,
        exclude_characters: str = DEFAULT_EXCLUDE_CHARACTERS,
        password_length: int = 32,
        connect_timeout: float = 5.0,
        security: SecuritySettings | None = None,
        rds_client: RDSClient | None = None,
    ) -> None:
        if (
            isinstance(password_length, bool)
            or not isinstance(password_length, int)
            or not 8 <= password_length <= 4096
        ):
            raise RotationConfigError(
                f"password_length must be between 8 and 4096, not {password_length}",
                key="password_length",
            )
        connect_timeout = check_seconds(connect_timeout, key="connect_timeout")
        self._client = client
        self._rds = rds_client
        self._client_lock = threading.Lock()
        self.security = security or SecuritySettings()
        self.exclude_characters = exclude_characters
        self.password_length = password_length
        self.connect_timeout = connect_timeout

    def __repr__(self) -> str:
        return (
            f"Rotator(password_length={self.password_length}, "
            f"connect_timeout={self.connect_timeout})"
        )

    @property
    def client(self) -> SecretsManagerClient:
        """The Secrets Manager client (made on first use)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = make_secretsmanager_client()
        return self._client

    @property
    def rds(self) -> RDSClient:
        """The RDS client (made on first use: only RDS-managed admin secrets need it)."""
        if self._rds is None:
            with self._client_lock:
                if self._rds is None:
                    self._rds = make_rds_client()
        return self._rds

    def run_step(
        self,
        secret_id: str,
        token: str,
        step: str,
        *,
        check_enabled: bool = True,
        time_left: float | None = None,
    ) -> StepOutcome:
        """Run one rotation step, after AWS's label checks.

        Args:
            secret_id: the secret's ARN or name.
            token: the ClientRequestToken (the AWSPENDING version's id).
            step: ``createSecret``, ``setSecret``, ``testSecret`` or ``finishSecret``.
            check_enabled: refuse when rotation is not enabled on the secret, and
                require the token's version to exist before createSecret, as for
                a Lambda invoked by RotateSecret. The local driver passes False:
                without a Lambda nothing enables rotation or stages the empty
                AWSPENDING version, so createSecret creates it.
            time_left: seconds the step may take (a Lambda's remaining time):
                login timeouts shrink to fit, a login that cannot fit and a
                Secrets Manager or RDS call that has not answered half a second
                before the end fail with StepDeadlineError. None: no limit
                beyond the timeouts.

        Raises:
            RotationConfigError: unknown step, or the secret's rotation keys are wrong.
            RotationStateError: the token fails the label checks.
            StepDeadlineError: the step could not finish within `time_left`.
            DatabaseLoginError, DatabaseUnavailableError, PasswordChangeError,
            RoleSetupError: the database side failed.
            rotating_pool.errors.SecretError: a version is missing or malformed.
        """
        if step not in STEPS:
            raise RotationConfigError(
                f"unknown rotation step {step!r}: expected one of {', '.join(STEPS)}",
                secret_id=secret_id,
                key="Step",
            )
        # Every login and every Secrets Manager or RDS call of the step ends by
        # this deadline (rotating_pool.rotation.deadline).
        deadline = Deadline.after(time_left)
        client = deadline.bound(self.client)
        versions = SecretVersions(client, secret_id)
        description = versions.describe()
        if not self._token_needs_step(versions, description, token, step, check_enabled):
            logger.info(
                "secret %r: %s: version %s is already AWSCURRENT; nothing to do",
                secret_id,
                step,
                token,
            )
            return StepOutcome.SKIPPED
        ctx = StepContext(
            secret_id=secret_id,
            token=token,
            versions=versions,
            client=client,
            options=LoginOptions(self.security, self.connect_timeout, deadline),
            rds=lambda: deadline.bound(self.rds),
        )
        started = time.perf_counter()
        if step == "createSecret":
            outcome = self._create_secret(ctx, description)
        elif step == "setSecret":
            outcome = self._set_secret(ctx)
        elif step == "testSecret":
            outcome = self._test_secret(ctx)
        else:
            outcome = self._finish_secret(ctx, description)
        logger.info(
            "secret %r: %s for version %s: %s in %.3f s",
            secret_id,
            step,
            token,
            outcome.value,
            time.perf_counter() - started,
        )
        return outcome

    def rotate(
        self,
        secret_id: str,
        *,
        token: str | None = None,
        on_step: Callable[[str, float], None] | None = None,
    ) -> RotationResult:
        """Perform one whole rotation, as Secrets Manager would drive it
        (`local_rotation.rotate`: no Lambda needed, the same steps).

        Args:
            token: the ClientRequestToken; None resumes an unfinished rotation
                or starts a new one.
            on_step: called as ``on_step(step, seconds)`` after each step.

        Returns:
            per-step durations and outcomes, the token, the strategy and the user
            now AWSCURRENT.
        """
        return rotate(self, secret_id, steps=STEPS, token=token, on_step=on_step)

    # -- the label checks ------------------------------------------------------

    @staticmethod
    def _token_needs_step(
        versions: SecretVersions,
        description: SecretDescription,
        token: str,
        step: str,
        check_enabled: bool,
    ) -> bool:
        """AWS's checks; False when the token is already AWSCURRENT (and, for
        finishSecret, no longer AWSPENDING)."""
        secret_id = versions.secret_id
        if check_enabled and description.rotation_enabled is False:
            raise RotationNotEnabledError(
                f"secret {secret_id!r} is not enabled for rotation: turn rotation on "
                "(RotateSecret with this function's ARN), or rotate it with "
                "`rotating-pool rotate`",
                secret_id=secret_id,
            )
        stages = description.stages.get(token)
        if stages is None:
            if not check_enabled and step == "createSecret":
                return True
            if any(v.version_id == token for v in versions.list_versions()):
                raise _taken_over(secret_id, token, description, step)
            raise TokenNotFoundError(
                f"secret {secret_id!r} has no version {token!r} to rotate ({step}): the "
                "ClientRequestToken must be the AWSPENDING version RotateSecret staged",
                secret_id=secret_id,
            )
        if AWSCURRENT in stages:
            # Done, unless a finishSecret moved AWSCURRENT and stopped before it
            # took AWSPENDING off: its retry finishes that.
            return step == "finishSecret" and AWSPENDING in stages
        if AWSPENDING not in stages:
            if not stages:
                raise _taken_over(secret_id, token, description, step)
            raise TokenNotPendingError(
                f"secret {secret_id!r}: version {token!r} is not AWSPENDING (its labels: "
                f"{', '.join(stages) or 'none'}), so it is not being rotated; start a new "
                "rotation instead",
                secret_id=secret_id,
            )
        return True

    # -- the steps ---------------------------------------------------------------

    def _create_secret(self, ctx: StepContext, description: SecretDescription) -> StepOutcome:
        current = ctx.versions.read_required(AWSCURRENT)
        settings = RotationSettings.from_document(ctx.secret_id, current.document)
        # The version may exist without a value (staged by RotateSecret): only
        # a value makes this step done.
        if ctx.token in description.stages:
            existing = ctx.versions.read(stage=AWSPENDING, version_id=ctx.token)
            if existing is not None:
                return StepOutcome.ALREADY_DONE
        strategy = strategy_for(settings)
        if isinstance(strategy, AlternatingUsers):
            # Refuse a secret whose admin would log in elsewhere before staging anything.
            strategy.admin_login(ctx, current)
        username = strategy.pending_username(ctx.secret_id, current.credentials)
        # The deployer's pin, before anything is staged (setSecret checks it again).
        ctx.options.security.role_pin.check(username, secret_id=ctx.secret_id)
        password = random_password(
            ctx.client,
            length=self.password_length,
            exclude_characters=self.exclude_characters,
        )
        # Every other key (host, rotation_*, masterarn, ...) carries over.
        document = {**current.document, "username": username, "password": password}
        ctx.versions.put(ctx.token, document, [AWSPENDING])
        return StepOutcome.PERFORMED

    def _set_secret(self, ctx: StepContext) -> StepOutcome:
        current = ctx.versions.read_required(AWSCURRENT)
        pending = self._read_pending(ctx)
        settings = _settings(ctx.secret_id, current, pending)
        return strategy_for(settings).set_password(ctx, current, pending)

    def _test_secret(self, ctx: StepContext) -> StepOutcome:
        current = ctx.versions.read_required(AWSCURRENT)
        pending = self._read_pending(ctx)
        settings = _settings(ctx.secret_id, current, pending)
        conn = ctx.login(pending, AWSPENDING)
        with conn:
            row = conn.execute("SELECT current_user, session_user").fetchone()
        assert row is not None
        current_user, session_user = row
        # The point of the group-role scheme: whatever the user creates is owned
        # by the role. If the SET ROLE default or the membership is missing, the
        # rotation would hand out a user whose tables the other user cannot use.
        if settings.role is not None and current_user != settings.role:
            raise RoleSetupError(
                f"secret {ctx.secret_id!r}: user {session_user!r} logs in but acts as "
                f"{current_user!r}, not as the group role {settings.role!r}; it needs "
                f"`GRANT {_quoted(settings.role)} TO {_quoted(session_user)}` and "
                f"`ALTER ROLE {_quoted(session_user)} SET role TO "
                f"{sql.Literal(settings.role).as_string(None)}` (run rotating-pool "
                "bootstrap again)",
                secret_id=ctx.secret_id,
            )
        return StepOutcome.PERFORMED

    @staticmethod
    def _read_pending(ctx: StepContext) -> SecretVersion:
        pending = ctx.versions.read(stage=AWSPENDING, version_id=ctx.token)
        if pending is not None:
            return pending
        description = ctx.versions.describe()
        if AWSPENDING not in description.stages.get(ctx.token, ()):
            # The label moved while this step ran: another rotation took over.
            raise _taken_over(ctx.secret_id, ctx.token, description, "this step")
        return ctx.versions.read_required(AWSPENDING, ctx.token)

    def _finish_secret(self, ctx: StepContext, description: SecretDescription) -> StepOutcome:
        outcome = StepOutcome.ALREADY_DONE
        stages = description.stages.get(ctx.token, ())
        if AWSCURRENT not in stages:
            # Secrets Manager puts AWSPREVIOUS on the version that loses AWSCURRENT.
            try:
                ctx.versions.move_stage(AWSCURRENT, ctx.token, description.version_with(AWSCURRENT))
            except botocore.exceptions.ClientError:
                # The same move, made by an earlier run of this step that gave up
                # waiting for it (its deadline) and landed since, fails this one.
                stages = ctx.versions.describe().stages.get(ctx.token, ())
                if AWSCURRENT not in stages:
                    raise
                logger.info(
                    "secret %r: finishSecret: version %s became AWSCURRENT meanwhile (an "
                    "earlier run's call)",
                    ctx.secret_id,
                    ctx.token,
                )
            outcome = StepOutcome.PERFORMED
        if AWSPENDING not in stages:
            return outcome
        # AWS takes both AWSPENDING on the new AWSCURRENT and AWSPENDING on no
        # version for a finished rotation. None is safer: once another value is
        # put, a label left here would sit on a non-current version, which
        # RotateSecret takes for a rotation in progress and refuses to start.
        try:
            ctx.versions.remove_stage(AWSPENDING, ctx.token)
        except botocore.exceptions.ClientError:
            latest = ctx.versions.describe()
            if AWSPENDING in latest.stages.get(ctx.token, ()):
                raise
            raise _taken_over(ctx.secret_id, ctx.token, latest, "finishSecret") from None
        return StepOutcome.PERFORMED


def _settings(secret_id: str, current: SecretVersion, pending: SecretVersion) -> RotationSettings:
    """The rotation keys, from AWSCURRENT (as AWS reads them); AWSPENDING must agree.

    Raises:
        SettingsMismatchError: AWSPENDING names another strategy, role, users or
            admin secret: it was not made from AWSCURRENT by createSecret.
    """
    settings = RotationSettings.from_document(secret_id, current.document)
    try:
        staged: RotationSettings | None = RotationSettings.from_document(
            secret_id, pending.document
        )
    except RotationConfigError:
        staged = None
    if staged != settings:
        keys = ("rotation_strategy", "rotation_role", "rotation_users", "masterarn")
        differ = [k for k in keys if current.document.get(k) != pending.document.get(k)]
        raise SettingsMismatchError(
            f"secret {secret_id!r}: AWSPENDING (version {pending.version_id!r}) disagrees with "
            f"AWSCURRENT on {', '.join(repr(k) for k in differ) or 'the rotation keys'}; the "
            "rotation reads them from AWSCURRENT only. If the change is wanted, make it in "
            "AWSCURRENT (rotating-pool bootstrap); otherwise remove the AWSPENDING label from "
            "that version and rotate again",
            secret_id=secret_id,
        )
    return settings


def _taken_over(
    secret_id: str, token: str, description: SecretDescription, step: str
) -> RotationTakenOverError:
    holder = description.version_with(AWSPENDING)
    by = f"version {holder!r} holds it now" if holder else "no version holds it now"
    return RotationTakenOverError(
        f"secret {secret_id!r}: version {token!r} lost its AWSPENDING label ({by}): another "
        f"rotation took over (e.g. `rotating-pool rotate --token ...`), so this one stops at "
        f"{step} and changes nothing more. Nothing to fix: the other rotation carries on; check "
        "with `rotating-pool status`",
        secret_id=secret_id,
    )


def _quoted(name: str) -> str:
    """`name` as SQL writes an identifier, for hints in messages."""
    return sql.Identifier(name).as_string(None)
