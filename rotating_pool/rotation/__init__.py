"""The rotation side: a Secrets Manager rotation handler for PostgreSQL.

Two strategies, named by the secret's ``rotation_strategy`` key:

- ``single``: the user changes its own password;
- ``alternating``: two login users, members of a NOLOGIN group role that owns
  the objects, take turns; an admin (``masterarn``) gives the one that is not
  AWSCURRENT ``LOGIN`` and a new password.

Entry points: `lambda_handler` (deploy as an AWS Lambda), `Rotator.rotate`
(one whole rotation without a Lambda), and the ``rotating-pool`` command
(`rotating_pool.rotation.cli`). It shares only the secret format
(`rotating_pool.secret`) with the client side.

Layout: `rotator` (the four steps, with the label checks), `strategies` (what
each strategy does at createSecret and setSecret), `role_check` and `pin` (which
roles a rotation may change: see docs/guides/rotation-trust.md),
`local_rotation` (one whole rotation without a Lambda), `handler` (the Lambda
entry point), `bootstrap`, `people` (IAM-only people accounts), `status`
(gathering) and `status_text` (rendering), `cli`; below them `database`,
`security`, `hosts`, `password`, `versions`, `settings`, `deadline`,
`clients`, `errors`.

>>> from rotating_pool.rotation import Rotator
>>> rotator = Rotator()
>>> # rotator.rotate("prod/app/db").durations
"""

from __future__ import annotations

from rotating_pool.rotation.bootstrap import (
    BootstrapPlan,
    BootstrapReport,
    bootstrap,
    bootstrap_sql,
)
from rotating_pool.rotation.errors import (
    AdminHostError,
    AuthenticationMethodError,
    DatabaseLoginError,
    DatabaseUnavailableError,
    IamRoleMissingError,
    LoginAttempt,
    PasswordChangeError,
    PrivilegedRoleError,
    RoleRefusedError,
    RoleSetupError,
    RotationConfigError,
    RotationError,
    RotationNotEnabledError,
    RotationStateError,
    RotationTakenOverError,
    SettingsMismatchError,
    StepDeadlineError,
    TLSSetupError,
    TokenNotFoundError,
    TokenNotPendingError,
)
from rotating_pool.rotation.handler import lambda_handler, rotator_from_environment
from rotating_pool.rotation.people import PeoplePlan, PeopleReport, bootstrap_people
from rotating_pool.rotation.rotator import (
    DEFAULT_EXCLUDE_CHARACTERS,
    STEPS,
    RotationResult,
    Rotator,
)
from rotating_pool.rotation.security import SecuritySettings
from rotating_pool.rotation.settings import RotationSettings, Strategy
from rotating_pool.rotation.status import (
    IamUser,
    SecretStatus,
    UserStatus,
    VersionStatus,
    secret_status,
)
from rotating_pool.rotation.strategies import StepOutcome

__all__ = [
    "DEFAULT_EXCLUDE_CHARACTERS",
    "STEPS",
    "AdminHostError",
    "AuthenticationMethodError",
    "BootstrapPlan",
    "BootstrapReport",
    "DatabaseLoginError",
    "DatabaseUnavailableError",
    "IamRoleMissingError",
    "IamUser",
    "LoginAttempt",
    "PasswordChangeError",
    "PeoplePlan",
    "PeopleReport",
    "PrivilegedRoleError",
    "RoleRefusedError",
    "RoleSetupError",
    "RotationConfigError",
    "RotationError",
    "RotationNotEnabledError",
    "RotationResult",
    "RotationSettings",
    "RotationStateError",
    "RotationTakenOverError",
    "Rotator",
    "SecretStatus",
    "SecuritySettings",
    "SettingsMismatchError",
    "StepDeadlineError",
    "StepOutcome",
    "Strategy",
    "TLSSetupError",
    "TokenNotFoundError",
    "TokenNotPendingError",
    "UserStatus",
    "VersionStatus",
    "bootstrap",
    "bootstrap_people",
    "bootstrap_sql",
    "lambda_handler",
    "rotator_from_environment",
    "secret_status",
]
