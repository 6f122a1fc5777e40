"""The environment a deployed rotation function has, pointed at the test bed."""

from __future__ import annotations

import pytest

from rotating_pool.rotation import lambda_handler
from rotating_pool.testing import LocalPostgres, LocalSecretsManager

# The handler's settings (rotating_pool.rotation.handler); a test sets the ones it needs.
SETTINGS = (
    "EXCLUDE_CHARACTERS",
    "PASSWORD_LENGTH",
    "CONNECT_TIMEOUT",
    "ALLOWED_HOSTS",
    "ALLOW_MD5",
    "ALLOWED_ROLES",
)


def set_lambda_env(
    monkeypatch: pytest.MonkeyPatch, secretsmanager: LocalSecretsManager, server: LocalPostgres
) -> None:
    """moto's endpoint, the settings at their defaults, and the bed's CA as SSL_ROOT_CERT."""
    for name, value in secretsmanager.env().items():
        monkeypatch.setenv(name, value)
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_ROOT_CERT", str(server.ca_path))


def invoke(secret_id: str, token: str, step: str, context: object = None) -> None:
    """Call the handler as Secrets Manager does."""
    lambda_handler({"SecretId": secret_id, "ClientRequestToken": token, "Step": step}, context)
