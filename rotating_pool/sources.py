"""Where credentials come from: a `SecretSource` reads one secret.

A source has two ways in, because the steady state and a recovery want
different things:

- `read_cached()`: the cheap, possibly stale read that a periodic background
  refresh makes. `SecretsManagerSource` uses aws-secretsmanager-caching here:
  DescribeSecret every TTL and GetSecretValue only when AWSCURRENT moved, and
  the last good value while Secrets Manager fails.
- `fetch(stage)`: a direct read of one version stage, bypassing every cache,
  for the first load and for a rejected login. The caching library cannot serve
  this path: its forced refresh (`refresh_secret_now`) sleeps 2.5-5 s before it
  reads, it offers no invalidation, and its getters do not say which version
  they return.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import botocore.config
import botocore.exceptions
from aws_secretsmanager_caching import SecretCache, SecretCacheConfig

from rotating_pool.errors import (
    SecretAccessDeniedError,
    SecretNotFoundError,
    SecretsManagerUnavailableError,
)
from rotating_pool.secret import AWSCURRENT, Credentials, parse_credentials

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["SecretSource", "SecretsManagerSource"]

logger = logging.getLogger("rotating_pool")

# Short timeouts: a read that hangs must not hold a recovery for botocore's
# default 60 s. Few retries: the login policy (RetryBudget) retries throttling
# with its own jittered backoff, inside a budget the application chose.
DEFAULT_CLIENT_CONFIG = botocore.config.Config(
    connect_timeout=3,
    read_timeout=5,
    retries={"mode": "standard", "max_attempts": 2},
    user_agent_extra="rotating_pool",
)
"""The botocore config of the client rotating_pool makes when none is given."""

ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "DecryptionFailure",
        "KMSAccessDeniedException",
    }
)
"""Error codes that mean "this identity may not read the secret" (IAM, STS, KMS)."""
_NOT_FOUND = frozenset({"ResourceNotFoundException"})


@runtime_checkable
class SecretSource(Protocol):
    """Reads one secret. Implementations must be thread-safe.

    Errors are rotating_pool's typed errors: `SecretNotFoundError`,
    `SecretAccessDeniedError`, `SecretFormatError`,
    `SecretsManagerUnavailableError`.
    """

    @property
    def secret_id(self) -> str:
        """The secret's id or ARN."""
        ...

    def fetch(self, stage: str) -> Credentials | None:
        """Read the version labelled `stage`, bypassing caches.

        Returns None when no version has that label (only possible for a stage
        other than AWSCURRENT).
        """
        ...

    def load(self) -> Credentials:
        """The first read of AWSCURRENT, by the cheapest way that is fresh enough."""
        ...

    def read_cached(self) -> Credentials:
        """Read AWSCURRENT through the steady-state cache (may be stale)."""
        ...

    def after_fork(self) -> None:
        """Drop what must not cross a fork (network clients, locks)."""
        ...


class SecretsManagerSource:
    """A secret in AWS Secrets Manager, read with boto3.

    Args:
        secret_id: the secret's name or ARN.
        client: a boto3 ``secretsmanager`` client. By default one is made on
            first use from boto3's default chain (region, credentials, and
            ``AWS_ENDPOINT_URL_SECRETS_MANAGER``), with 3 s/5 s connect/read
            timeouts, and made again in a forked child. A client you pass is used
            as is, in every process: pass a factory-made one per process if you
            fork after using it.
        refresh_interval: the caching library's TTL in seconds; it refreshes
            after a random time between half of it and all of it.

    >>> source = SecretsManagerSource("prod/app/db")  # nothing is fetched yet
    """

    def __init__(
        self,
        secret_id: str,
        *,
        client: SecretsManagerClient | None = None,
        refresh_interval: float = 3600.0,
    ) -> None:
        self._secret_id = secret_id
        self._given_client = client
        self._client: SecretsManagerClient | None = client
        self._refresh_interval = refresh_interval
        self._cache: Any = None
        self._lock = threading.Lock()

    @property
    def secret_id(self) -> str:
        """The secret's id or ARN."""
        return self._secret_id

    def __repr__(self) -> str:
        return f"SecretsManagerSource(secret_id={self._secret_id!r})"

    def fetch(self, stage: str) -> Credentials | None:
        """GetSecretValue for one stage; see `SecretSource.fetch`."""
        client = self._get_client()
        try:
            response = client.get_secret_value(SecretId=self._secret_id, VersionStage=stage)
        except Exception as error:
            if stage != AWSCURRENT and _error_code(error) in _NOT_FOUND:
                return None
            raise self._translate(error, f"GetSecretValue({stage})") from error
        return parse_credentials(
            self._secret_id,
            response.get("SecretString"),
            version_id=response.get("VersionId"),
            stage=stage,
        )

    def load(self) -> Credentials:
        """One GetSecretValue(AWSCURRENT): the caching library's first read would
        cost two calls (DescribeSecret, then GetSecretValue); see `SecretSource.load`."""
        credentials = self.fetch(AWSCURRENT)
        assert credentials is not None  # AWSCURRENT always exists, or fetch raised
        return credentials

    def read_cached(self) -> Credentials:
        """AWSCURRENT through aws-secretsmanager-caching; see `SecretSource.read_cached`."""
        cache = self._get_cache()
        try:
            secret_string = cache.get_secret_string(self._secret_id)
        except Exception as error:
            raise self._translate(error, "the secret cache's refresh") from error
        return parse_credentials(self._secret_id, secret_string)

    def after_fork(self) -> None:
        """Forget the default client and the cache; keep a client you passed."""
        self._lock = threading.Lock()
        self._client = self._given_client
        self._cache = None

    def _get_client(self) -> SecretsManagerClient:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    import boto3  # noqa: PLC0415  (boto3 is slow to import; only when needed)

                    # A session of our own: boto3's default session is not
                    # thread-safe for creating clients.
                    self._client = boto3.session.Session().client(
                        "secretsmanager", config=DEFAULT_CLIENT_CONFIG
                    )
                client = self._client
        return client

    def _get_cache(self) -> Any:
        cache = self._cache
        if cache is None:
            client = self._get_client()
            with self._lock:
                if self._cache is None:
                    config = SecretCacheConfig(
                        secret_refresh_interval=max(1, round(self._refresh_interval)),
                        # The library's default backs off up to an hour after
                        # errors; we want a failed refresh retried next time.
                        exception_retry_delay_max=max(1, round(self._refresh_interval / 4)),
                    )
                    self._cache = SecretCache(config=config, client=client)
                cache = self._cache
        return cache

    def _translate(self, error: Exception, what: str) -> Exception:
        """Map a boto3 error to a typed one. AWS's messages name the secret,
        never its value, so they are safe to keep."""
        code = _error_code(error)
        secret_id = self._secret_id
        if code in _NOT_FOUND:
            return SecretNotFoundError(
                f"secret {secret_id!r} was not found ({what}): check the id or ARN, and the "
                "region (AWS_REGION / AWS_DEFAULT_REGION)",
                secret_id=secret_id,
            )
        if code in ACCESS_DENIED_CODES or isinstance(error, botocore.exceptions.NoCredentialsError):
            return SecretAccessDeniedError(
                f"reading secret {secret_id!r} was denied ({what}: {code or type(error).__name__})"
                ": grant secretsmanager:GetSecretValue and secretsmanager:DescribeSecret on it "
                "(and kms:Decrypt on its key) to this process's AWS identity",
                secret_id=secret_id,
            )
        if code == "InvalidRequestException":
            return SecretNotFoundError(
                f"secret {secret_id!r} cannot be read ({what}): {_error_message(error)}",
                secret_id=secret_id,
            )
        return SecretsManagerUnavailableError(
            f"Secrets Manager did not answer for secret {secret_id!r} ({what}): "
            f"{code or type(error).__name__}",
            secret_id=secret_id,
        )


def _error_code(error: BaseException) -> str | None:
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Code")) or None
    return None


def _error_message(error: BaseException) -> str:
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Message", ""))
    return type(error).__name__
