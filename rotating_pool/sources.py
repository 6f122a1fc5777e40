"""Where credentials come from: a `SecretSource` reads one secret.

A source answers three questions, for the three moments a process reads:

- `load()`: the first read of AWSCURRENT, by the cheapest way that is fresh.
- `poll(held)`: the periodic refresh. Has AWSCURRENT moved away from the
  version held? `SecretsManagerSource` asks DescribeSecret (a quota four times
  GetSecretValue's) and reads a value only when it moved to a version it has
  not read yet.
- `newer(rejected, refused)`: a login was refused. What else is there?
  AWSCURRENT if it moved, else AWSPENDING (a single-user rotation between
  setSecret and finishSecret).

Which version to read is decided by `rotating_pool.core.reads`, without I/O. A
version's value never changes once written, so each source remembers the few
versions it has read and never reads one twice: a rotation costs a process at
most one GetSecretValue, whether a refusal or the refresh notices it first.

aws-secretsmanager-caching is not used on these paths: its getters do not say
which version they return (so its next refresh reads again a version a
recovery already fetched: one more GetSecretValue per rotation and process),
its forced refresh (`refresh_secret_now`) sleeps 2.5-5 s before it reads, and
it cannot read AWSPENDING.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import botocore.config
import botocore.exceptions

from rotating_pool.core.reads import (
    Labels,
    Read,
    Route,
    next_stage,
    recovery_reads,
    recovery_route,
    steady_read,
)
from rotating_pool.errors import (
    SecretAccessDeniedError,
    SecretNotFoundError,
    SecretsManagerUnavailableError,
)
from rotating_pool.secret import AWSCURRENT, AWSPENDING, Credentials, parse_credentials

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["SecretSource", "SecretsManagerSource"]

logger = logging.getLogger("rotating_pool")

# Short timeouts: a read that hangs must not hold a recovery for botocore's
# default 60 s. Two attempts in all (``total_max_attempts``; botocore's
# ``max_attempts`` counts retries only, so 2 there meant three attempts): a
# throttled call is retried once, after random() x 1 s; a third attempt would
# wait up to 2 s more, and the login policy (RetryBudget) retries with its own
# shorter jittered backoff, inside a budget the application chose. Measured
# with the fleet benchmark (benchmarks/README.md, 6): three attempts made its
# longest stall 2.1-2.4 s, two 1.x s.
DEFAULT_CLIENT_CONFIG = botocore.config.Config(
    connect_timeout=3,
    read_timeout=5,
    retries={"mode": "standard", "total_max_attempts": 2},
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
    `SecretsManagerUnavailableError`. The store runs every read in a thread of
    its own and stops waiting for it at the caller's deadline.
    """

    @property
    def secret_id(self) -> str:
        """The secret's id or ARN."""
        ...

    def load(self) -> Credentials:
        """The first read of AWSCURRENT, by the cheapest way that is fresh enough."""
        ...

    def poll(self, held: Credentials) -> Credentials | None:
        """The periodic refresh: AWSCURRENT if it is no longer `held`, else None."""
        ...

    def newer(
        self, rejected: Credentials, refused: Sequence[str | None], *, use_pending: bool
    ) -> Credentials | None:
        """After `rejected` was refused: other credentials to try, or None.

        `refused` lists the version ids refused lately (`rejected`'s first);
        they are not offered again. AWSPENDING is offered only with `use_pending`.
        """
        ...

    def after_fork(self) -> None:
        """Drop what must not cross a fork (network clients, locks)."""
        ...


class VersionMemo:
    """The last few versions read, by id: a version's value never changes."""

    def __init__(self, size: int = 4) -> None:
        self._versions: collections.OrderedDict[str, Credentials] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, version_id: str | None, stage: str) -> Credentials | None:
        """The version read before, labelled `stage` now; None if not read yet."""
        if version_id is None:
            return None
        with self._lock:
            credentials = self._versions.get(version_id)
        if credentials is None or credentials.stage == stage:
            return credentials
        return dataclasses.replace(credentials, stage=stage)

    def holds_other_than(self, refused: Sequence[str | None], rejected: Credentials) -> bool:
        """Whether a version read after `rejected`'s (the refresh found it) is
        neither refused nor `rejected`'s login."""
        with self._lock:
            known = list(self._versions.items())
        ids = [version_id for version_id, _ in known]
        later = known[ids.index(rejected.version_id) + 1 :] if rejected.version_id in ids else known
        return any(
            version_id not in refused and credentials != rejected
            for version_id, credentials in later
        )

    def add(self, credentials: Credentials) -> Credentials:
        """Remember `credentials` (when its version is known); returns it."""
        if credentials.version_id is not None:
            with self._lock:
                self._versions[credentials.version_id] = credentials
                self._versions.move_to_end(credentials.version_id)
                while len(self._versions) > self._size:
                    self._versions.popitem(last=False)
        return credentials


class SecretsManagerSource:
    """A secret in AWS Secrets Manager, read with boto3.

    Args:
        secret_id: the secret's name or ARN.
        client: a boto3 ``secretsmanager`` client. By default one is made on
            first use from boto3's default chain (region, credentials, and
            ``AWS_ENDPOINT_URL_SECRETS_MANAGER``), with 3 s/5 s connect/read
            timeouts, and made again in a forked child. A client you pass is used
            as is, in every process: pass a factory-made one per process if you
            fork after using it. Calls through either are bounded by the
            caller's deadline all the same (`rotating_pool.RetryBudget`).

    Reads: `load` is one GetSecretValue(AWSCURRENT); `poll` one DescribeSecret,
    plus a GetSecretValue when AWSCURRENT moved to a version not read yet;
    `newer` one GetSecretValue by stage where `recovery_route` says which label
    holds the answer (one round trip), else DescribeSecret and then at most the
    versions worth trying.

    >>> source = SecretsManagerSource("prod/app/db")  # nothing is fetched yet
    """

    def __init__(self, secret_id: str, *, client: SecretsManagerClient | None = None) -> None:
        self._secret_id = secret_id
        self._given_client = client
        self._client: SecretsManagerClient | None = client
        self._memo = VersionMemo()
        # The stage that answered the last recovery (`recovery_route` reads it).
        self._last_found: str | None = None
        self._lock = threading.Lock()
        self._client_hooks: list[Callable[[SecretsManagerClient], None]] = []

    @property
    def secret_id(self) -> str:
        """The secret's id or ARN."""
        return self._secret_id

    def __repr__(self) -> str:
        return f"SecretsManagerSource(secret_id={self._secret_id!r})"

    def add_client_hook(self, hook: Callable[[SecretsManagerClient], None]) -> None:
        """Call ``hook(client)`` on every boto3 client this source reads with
        (now, and whenever it makes one): for observers such as
        `rotating_pool.telemetry`, which count calls through botocore's events."""
        with self._lock:
            self._client_hooks.append(hook)
            client = self._client
        if client is not None:
            hook(client)

    def load(self) -> Credentials:
        """One GetSecretValue(AWSCURRENT); see `SecretSource.load`."""
        credentials = self.fetch(AWSCURRENT)
        assert credentials is not None  # AWSCURRENT always exists, or fetch raised
        return credentials

    def poll(self, held: Credentials) -> Credentials | None:
        """DescribeSecret, and a read if AWSCURRENT moved; see `SecretSource.poll`."""
        read = steady_read(self.labels(), held.version_id)
        return None if read is None else self.read(read)

    def newer(
        self, rejected: Credentials, refused: Sequence[str | None], *, use_pending: bool
    ) -> Credentials | None:
        """The first read `recovery_route` names, then what it leaves open; see
        `SecretSource.newer`."""
        route = recovery_route(
            rejected.stage,
            self._last_found,
            use_pending=use_pending,
            read_other=self._memo.holds_other_than(refused, rejected),
        )
        if route is Route.LABELS:
            found = self._newer_by_labels(rejected, refused, use_pending=use_pending)
        else:
            first = AWSCURRENT if route is Route.CURRENT else AWSPENDING
            found = self._newer_by_stage(first, rejected, refused, use_pending=use_pending)
        if found is not None:
            self._last_found = found.stage
        return found

    def _newer_by_labels(
        self, rejected: Credentials, refused: Sequence[str | None], *, use_pending: bool
    ) -> Credentials | None:
        for read in recovery_reads(self.labels(), refused, use_pending=use_pending):
            credentials = self.read(read)
            if credentials != rejected:  # another version, same login: nothing new
                return credentials
        return None

    def _newer_by_stage(
        self,
        stage: str | None,
        rejected: Credentials,
        refused: Sequence[str | None],
        *,
        use_pending: bool,
    ) -> Credentials | None:
        read: list[str] = []
        while stage is not None:
            credentials, stages = self._fetch(stage)
            read.append(stage)
            if (
                credentials is not None
                and credentials.version_id not in refused
                and credentials != rejected
            ):
                return credentials
            stage = next_stage(stage, stages, use_pending=use_pending, already_read=read)
        return None

    def labels(self) -> Labels:
        """Where AWSCURRENT and AWSPENDING are now (one DescribeSecret)."""
        try:
            response = self._get_client().describe_secret(SecretId=self._secret_id)
        except Exception as error:
            raise self._translate(error, "DescribeSecret") from error
        labels = Labels.from_stages(response.get("VersionIdsToStages") or {})
        if labels is None:
            raise SecretNotFoundError(
                f"secret {self._secret_id!r} has no version labelled AWSCURRENT (DescribeSecret):"
                " put a value in the secret",
                secret_id=self._secret_id,
            )
        return labels

    def read(self, read: Read) -> Credentials:
        """The version `read` names: from memory when read before, else GetSecretValue."""
        known = self._memo.get(read.version_id, read.stage)
        if known is not None:
            return known
        client = self._get_client()
        what = f"GetSecretValue({read.stage})"
        try:
            response = client.get_secret_value(SecretId=self._secret_id, VersionId=read.version_id)
        except Exception as error:
            raise self._translate(error, what) from error
        return self._memo.add(
            parse_credentials(
                self._secret_id,
                response.get("SecretString"),
                version_id=response.get("VersionId"),
                stage=read.stage,
            )
        )

    def fetch(self, stage: str) -> Credentials | None:
        """GetSecretValue by stage, bypassing every cache; None if no version has it."""
        return self._fetch(stage)[0]

    def _fetch(self, stage: str) -> tuple[Credentials | None, tuple[str, ...]]:
        """`fetch`, with the VersionStages of the version it returned."""
        client = self._get_client()
        try:
            response = client.get_secret_value(SecretId=self._secret_id, VersionStage=stage)
        except Exception as error:
            if stage != AWSCURRENT and _error_code(error) in _NOT_FOUND:
                return None, ()
            raise self._translate(error, f"GetSecretValue({stage})") from error
        stages = tuple(str(label) for label in response.get("VersionStages") or ())
        credentials = self._memo.add(
            parse_credentials(
                self._secret_id,
                response.get("SecretString"),
                version_id=response.get("VersionId"),
                stage=stage,
            )
        )
        return credentials, stages

    def after_fork(self) -> None:
        """Forget the default client; keep a client you passed."""
        self._lock = threading.Lock()
        self._client = self._given_client

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
                    for hook in self._client_hooks:
                        hook(self._client)
                client = self._client
        return client

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
