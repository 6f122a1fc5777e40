"""The boto3 clients of the rotation side, with short timeouts.

A rotation step is a handful of short calls; botocore's 60 s default read
timeout would let one hung call eat a Lambda's whole budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import botocore.config

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["CLIENT_CONFIG", "make_rds_client", "make_secretsmanager_client"]

CLIENT_CONFIG = botocore.config.Config(
    connect_timeout=5,
    read_timeout=10,
    # Three attempts in all (botocore's ``max_attempts`` would count retries only).
    retries={"mode": "standard", "total_max_attempts": 3},
    user_agent_extra="rotating_pool.rotation",
)


def make_secretsmanager_client(endpoint_url: str | None = None) -> SecretsManagerClient:
    """A boto3 ``secretsmanager`` client from the default chain (it honours
    ``AWS_ENDPOINT_URL_SECRETS_MANAGER``), or for `endpoint_url`."""
    import boto3  # noqa: PLC0415  (slow to import; only when needed)

    return boto3.session.Session().client(
        "secretsmanager", endpoint_url=endpoint_url, config=CLIENT_CONFIG
    )


def make_rds_client() -> RDSClient:
    """A boto3 ``rds`` client from the default chain (it honours
    ``AWS_ENDPOINT_URL_RDS``), with the same short timeouts."""
    import boto3  # noqa: PLC0415  (slow to import; only when needed)

    return boto3.session.Session().client("rds", config=CLIENT_CONFIG)
