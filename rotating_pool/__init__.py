"""rotating_pool: SQLAlchemy engines that survive credential rotation.

Credentials for PostgreSQL (RDS/Aurora) live in AWS Secrets Manager and rotate;
an engine made by `create_engine` (or given to `attach`) logs in with the
secret's current version at every new connection and, when a login is refused,
refetches once per process, tries AWSPENDING when a single-user rotation is half
way, and retries within a budget. Applications see no failed request.

>>> import rotating_pool
>>> engine = rotating_pool.create_engine("postgresql+psycopg://", secret_id="prod/app/db")
"""

from rotating_pool.agent import AgentSource
from rotating_pool.engine import (
    DEFAULT_REFRESH_INTERVAL,
    attach,
    create_async_engine,
    create_engine,
    credential_store,
    stats,
)
from rotating_pool.errors import (
    AlreadyAttachedError,
    ConfigurationError,
    LoginRejectedError,
    RotatingPoolError,
    SecretAccessDeniedError,
    SecretError,
    SecretFormatError,
    SecretNotFoundError,
    SecretsManagerUnavailableError,
)
from rotating_pool.policy import RetryBudget, is_login_rejection
from rotating_pool.redact import RedactSecretsFilter, redact_botocore_logs
from rotating_pool.secret import Credentials, parse_credentials
from rotating_pool.sources import SecretsManagerSource, SecretSource
from rotating_pool.store import CredentialStore, Stats

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "AgentSource",
    "AlreadyAttachedError",
    "ConfigurationError",
    "CredentialStore",
    "Credentials",
    "LoginRejectedError",
    "RedactSecretsFilter",
    "RetryBudget",
    "RotatingPoolError",
    "SecretAccessDeniedError",
    "SecretError",
    "SecretFormatError",
    "SecretNotFoundError",
    "SecretSource",
    "SecretsManagerSource",
    "SecretsManagerUnavailableError",
    "Stats",
    "attach",
    "create_async_engine",
    "create_engine",
    "credential_store",
    "is_login_rejection",
    "parse_credentials",
    "redact_botocore_logs",
    "stats",
]

__version__ = "0.1.0"
