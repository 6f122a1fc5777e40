"""rotating_pool: SQLAlchemy engines that survive credential rotation.

Credentials for PostgreSQL (RDS/Aurora) live in AWS Secrets Manager and rotate;
an engine made by `create_engine` (or given to `attach`) logs in with the
secret's current version at every new connection and, when a login is refused,
refetches once per process, tries AWSPENDING when a single-user rotation is half
way, and retries within a budget. Applications see no failed request.

>>> import rotating_pool
>>> engine = rotating_pool.create_engine("postgresql+psycopg://", secret_id="prod/app/db")
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from rotating_pool._version import __version__ as __version__
from rotating_pool.errors import (
    AgentAnswerError,
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
from rotating_pool.secret import Credentials, parse_credentials

if TYPE_CHECKING:
    from rotating_pool.agent import AgentSource
    from rotating_pool.core.classify import is_login_rejection
    from rotating_pool.core.plan import RetryBudget
    from rotating_pool.engine import (
        DEFAULT_REFRESH_INTERVAL,
        attach,
        create_async_engine,
        create_engine,
        credential_store,
        stats,
    )
    from rotating_pool.redact import RedactSecretsFilter, redact_botocore_logs
    from rotating_pool.sources import SecretsManagerSource, SecretSource
    from rotating_pool.store import CredentialStore, Stats

# Imported on first use, so that the rotation side (`rotating_pool.rotation`,
# deployed as a Lambda) does not load SQLAlchemy and the client machinery.
_LAZY = {
    "AgentSource": "rotating_pool.agent",
    "DEFAULT_REFRESH_INTERVAL": "rotating_pool.engine",
    "attach": "rotating_pool.engine",
    "create_async_engine": "rotating_pool.engine",
    "create_engine": "rotating_pool.engine",
    "credential_store": "rotating_pool.engine",
    "stats": "rotating_pool.engine",
    "RetryBudget": "rotating_pool.core.plan",
    "is_login_rejection": "rotating_pool.core.classify",
    "RedactSecretsFilter": "rotating_pool.redact",
    "redact_botocore_logs": "rotating_pool.redact",
    "SecretSource": "rotating_pool.sources",
    "SecretsManagerSource": "rotating_pool.sources",
    "CredentialStore": "rotating_pool.store",
    "Stats": "rotating_pool.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rotating_pool' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "AgentAnswerError",
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
