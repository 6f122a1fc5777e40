"""The Secrets Manager calls a rotation makes on one secret.

Every read names its version explicitly (a stage or a version id): moto
5.2.5's GetSecretValue without a stage keeps returning the old version after
AWSCURRENT moves (the test bed patches it: `rotating_pool.testing._moto_main`),
and a rotation must never act on a version it did not mean.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from rotating_pool.errors import SecretAccessDeniedError, SecretNotFoundError
from rotating_pool.secret import (
    AWSCURRENT,
    Credentials,
    load_secret_document,
    parse_credentials,
)

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = [
    "SecretDescription",
    "SecretVersion",
    "SecretVersions",
    "VersionInfo",
    "random_password",
]

_ACCESS_DENIED = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "KMSAccessDeniedException",
        "DecryptionFailure",
    }
)


@dataclass(frozen=True)
class SecretDescription:
    """What DescribeSecret says about a secret.

    Attributes:
        arn, name: the secret's ARN and name.
        rotation_enabled: None when the answer did not say (AWS's templates then
            proceed).
        stages: version id -> its staging labels, for every labelled version.
        tags: the secret's tags (key -> value), system tags such as
            ``aws:rds:primaryDBInstanceArn`` included.
    """

    arn: str
    name: str
    rotation_enabled: bool | None
    stages: Mapping[str, tuple[str, ...]]
    tags: Mapping[str, str] = field(default_factory=dict)

    def version_with(self, stage: str) -> str | None:
        """The id of the version carrying `stage`, if any."""
        for version_id, stages in self.stages.items():
            if stage in stages:
                return version_id
        return None


@dataclass(frozen=True)
class VersionInfo:
    """One row of ListSecretVersionIds."""

    version_id: str
    stages: tuple[str, ...]
    created: datetime.datetime | None


@dataclass(frozen=True)
class SecretVersion:
    """One version's value. The document holds the password: it is kept out
    of ``repr``.

    Attributes:
        version_id: the version read.
        document: the parsed JSON object.
        credentials: its login fields.
    """

    version_id: str
    document: dict[str, Any] = field(repr=False)
    credentials: Credentials


class SecretVersions:
    """Reads and labels the versions of one secret.

    Args:
        client: a boto3 ``secretsmanager`` client.
        secret_id: the secret's name or ARN.
    """

    def __init__(self, client: SecretsManagerClient, secret_id: str) -> None:
        self.client = client
        self.secret_id = secret_id

    def __repr__(self) -> str:
        return f"SecretVersions(secret_id={self.secret_id!r})"

    def describe(self) -> SecretDescription:
        """DescribeSecret.

        Raises:
            SecretNotFoundError, SecretAccessDeniedError.
        """
        try:
            answer = self.client.describe_secret(SecretId=self.secret_id)
        except botocore.exceptions.ClientError as error:
            raise self._translate(error, "DescribeSecret") from None
        stages = {
            version_id: tuple(labels)
            for version_id, labels in answer.get("VersionIdsToStages", {}).items()
        }
        enabled = answer.get("RotationEnabled")
        return SecretDescription(
            arn=answer["ARN"],
            name=answer["Name"],
            rotation_enabled=None if enabled is None else bool(enabled),
            stages=stages,
            tags={tag["Key"]: tag["Value"] for tag in answer.get("Tags", [])},
        )

    def list_versions(self) -> list[VersionInfo]:
        """Every version still stored, labelled or not, newest first."""
        rows: list[VersionInfo] = []
        next_token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"SecretId": self.secret_id, "IncludeDeprecated": True}
            if next_token:
                kwargs["NextToken"] = next_token
            try:
                page = self.client.list_secret_version_ids(**kwargs)
            except botocore.exceptions.ClientError as error:
                raise self._translate(error, "ListSecretVersionIds") from None
            rows.extend(
                VersionInfo(
                    version_id=v["VersionId"],
                    stages=tuple(v.get("VersionStages", ())),
                    created=v.get("CreatedDate"),
                )
                for v in page.get("Versions", [])
            )
            next_token = page.get("NextToken")
            if not next_token:
                break
        oldest = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        rows.sort(key=lambda row: row.created or oldest, reverse=True)
        return rows

    def read(
        self, *, stage: str | None = None, version_id: str | None = None
    ) -> SecretVersion | None:
        """GetSecretValue of one version, by stage, id, or both (then both must match).

        Returns None when there is no such version, it has no value yet (the
        empty AWSPENDING version RotateSecret stages before createSecret), or
        it does not carry `stage` (any more: another rotation took the label).

        Raises:
            SecretFormatError: the value is not an RDS secret document.
            SecretAccessDeniedError.
        """
        kwargs: dict[str, Any] = {"SecretId": self.secret_id}
        if stage is not None:
            kwargs["VersionStage"] = stage
        if version_id is not None:
            kwargs["VersionId"] = version_id
        try:
            answer = self.client.get_secret_value(**kwargs)
        except botocore.exceptions.ClientError as error:
            if _code(error) == "ResourceNotFoundException":
                return None
            if _code(error) == "InvalidRequestException" and stage and version_id:
                # "You provided a VersionStage that is not associated to the
                # provided VersionId": the label is elsewhere now.
                return None
            raise self._translate(error, "GetSecretValue") from None
        secret_string = answer.get("SecretString")
        read_id = answer["VersionId"]
        credentials = parse_credentials(
            self.secret_id, secret_string, version_id=read_id, stage=stage or AWSCURRENT
        )
        document = load_secret_document(self.secret_id, secret_string)
        return SecretVersion(version_id=read_id, document=document, credentials=credentials)

    def read_required(self, stage: str, version_id: str | None = None) -> SecretVersion:
        """`read`, but a missing version is an error.

        Raises:
            SecretNotFoundError: no such version, or it has no value.
        """
        version = self.read(stage=stage, version_id=version_id)
        if version is None:
            which = f"version {version_id!r} labelled {stage}" if version_id else stage
            raise SecretNotFoundError(
                f"secret {self.secret_id!r} has no value for {which}", secret_id=self.secret_id
            )
        return version

    def put(self, token: str, document: Mapping[str, Any], stages: list[str]) -> None:
        """PutSecretValue of `document` as version `token` with `stages`.

        Labels are unique per secret: a stage given here leaves the version that
        had it.
        """
        try:
            self.client.put_secret_value(
                SecretId=self.secret_id,
                ClientRequestToken=token,
                SecretString=json.dumps(dict(document)),
                VersionStages=stages,
            )
        except botocore.exceptions.ClientError as error:
            raise self._translate(error, "PutSecretValue") from None

    def move_stage(self, stage: str, to_version: str, from_version: str | None) -> None:
        """UpdateSecretVersionStage: move `stage` onto `to_version`."""
        kwargs: dict[str, Any] = {
            "SecretId": self.secret_id,
            "VersionStage": stage,
            "MoveToVersionId": to_version,
        }
        if from_version is not None:
            kwargs["RemoveFromVersionId"] = from_version
        try:
            self.client.update_secret_version_stage(**kwargs)
        except botocore.exceptions.ClientError as error:
            raise self._translate(error, "UpdateSecretVersionStage") from None

    def remove_stage(self, stage: str, from_version: str) -> None:
        """UpdateSecretVersionStage: take `stage` off `from_version`."""
        try:
            self.client.update_secret_version_stage(
                SecretId=self.secret_id, VersionStage=stage, RemoveFromVersionId=from_version
            )
        except botocore.exceptions.ClientError as error:
            raise self._translate(error, "UpdateSecretVersionStage") from None

    def _translate(self, error: botocore.exceptions.ClientError, what: str) -> Exception:
        # AWS's error messages name the secret, never its value: safe to keep.
        code = _code(error)
        if code == "ResourceNotFoundException":
            return SecretNotFoundError(
                f"secret {self.secret_id!r} was not found ({what}): check the id or ARN and the "
                "region (AWS_REGION / AWS_DEFAULT_REGION)",
                secret_id=self.secret_id,
            )
        if code in _ACCESS_DENIED:
            return SecretAccessDeniedError(
                f"{what} on secret {self.secret_id!r} was denied ({code}): see the IAM policy in "
                "the deploy guide (docs/guides/deploy.md, IAM)",
                secret_id=self.secret_id,
            )
        return error


def random_password(client: SecretsManagerClient, *, length: int, exclude_characters: str) -> str:
    """A new password from Secrets Manager's GetRandomPassword."""
    answer = client.get_random_password(PasswordLength=length, ExcludeCharacters=exclude_characters)
    return answer["RandomPassword"]


def _code(error: botocore.exceptions.ClientError) -> str | None:
    return str(error.response.get("Error", {}).get("Code", "")) or None
