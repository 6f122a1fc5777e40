"""The login settings every integration takes, and the process's shared store.

`create_engine`, `rotating_pool.pool` and the Django backend take the same
settings (secret, source, retry budget, ``use_pending``, refresh interval,
``retire_after``). `LoginOptions` holds them, validated once, and `store()`
returns the process's one `CredentialStore` for that secret and source: the
engine's own registry, so a SQLAlchemy engine, a psycopg pool and a Django
connection on one secret share one store and a rotation costs one set of
Secrets Manager reads per process, not one per integration.

>>> from rotating_pool.login_options import LoginOptions
>>> options = LoginOptions("prod/app/db", source="agent", retire_after=300)
>>> store = options.store()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rotating_pool.core.plan import RetryBudget
from rotating_pool.core.retirement import validate_retire_after
from rotating_pool.engine import DEFAULT_REFRESH_INTERVAL, SourceName, store_for
from rotating_pool.errors import ConfigurationError
from rotating_pool.sources import SecretSource

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

    from rotating_pool.store import CredentialStore

__all__ = ["OPTION_NAMES", "LoginOptions"]

OPTION_NAMES = (
    "secret_id",
    "client",
    "refresh_interval",
    "retry",
    "use_pending",
    "source",
    "retire_after",
)
"""The keys `LoginOptions.pop_from` takes out of a settings mapping."""


@dataclass(frozen=True)
class LoginOptions:
    """How an integration logs in: the same settings as `rotating_pool.attach`.

    Attributes:
        secret_id: the secret's name or ARN.
        client: the boto3 ``secretsmanager`` client (default: boto3's chain).
        refresh_interval: seconds between background refreshes.
        retry: one connection's login budget (a `RetryBudget`, or a mapping
            of its fields, as a settings file writes it).
        use_pending: try AWSPENDING during a single-user rotation.
        source: ``"secretsmanager"``, ``"agent"`` or a `SecretSource`.
        retire_after: seconds within which connections on superseded
            credentials are closed (None: off).

    Raises:
        ConfigurationError: a setting is invalid; the message names it.
    """

    secret_id: str
    client: SecretsManagerClient | None = None
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL
    retry: RetryBudget = field(default_factory=RetryBudget)
    use_pending: bool = True
    source: SecretSource | SourceName | None = None
    retire_after: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.secret_id, str) or not self.secret_id.strip():
            raise ConfigurationError(
                "secret_id must be the secret's name or ARN (a non-empty string)"
            )
        retry: object = self.retry
        if isinstance(retry, Mapping):
            try:
                retry = RetryBudget(**retry)
            except TypeError as error:
                raise ConfigurationError(
                    f"retry: {error}; its keys are rounds, base_delay, max_delay, deadline"
                ) from None
        if not isinstance(retry, RetryBudget):
            raise ConfigurationError(
                f"retry must be a RetryBudget or a mapping of its fields, "
                f"not {type(retry).__name__}"
            )
        object.__setattr__(self, "retry", retry)
        object.__setattr__(self, "retire_after", validate_retire_after(self.retire_after))

    @classmethod
    def pop_from(cls, settings: MutableMapping[str, Any]) -> LoginOptions:
        """Take rotating_pool's keys (`OPTION_NAMES`) out of `settings`.

        What is left is for the driver. A missing ``secret_id`` is an error.
        """
        mine = {name: settings.pop(name) for name in OPTION_NAMES if name in settings}
        if "secret_id" not in mine:
            raise ConfigurationError(
                "secret_id is missing: name the secret (its name or ARN) that holds the "
                "database credentials"
            )
        return cls(**mine)

    def store(self) -> CredentialStore:
        """The process's store for this secret and source (made on first use)."""
        return store_for(
            self.secret_id, self.client, self.refresh_interval, self.use_pending, self.source
        )
