"""Fixtures: a local PostgreSQL, moto's Secrets Manager, and a fault proxy between."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from rotating_pool.testing import AppSchema, FaultProxy, LocalPostgres, LocalSecretsManager

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

_schema_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL 15 server for the whole session."""
    with LocalPostgres() as server:
        yield server


@pytest.fixture(scope="session")
def tls_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL 15 server that serves TLS only (certificate for 127.0.0.1
    signed by its own CA, `ca_path`), for the whole session."""
    with LocalPostgres(tls=True) as server:
        yield server


@pytest.fixture(scope="session")
def secretsmanager() -> Iterator[LocalSecretsManager]:
    """moto's Secrets Manager for the whole session; its env() is in os.environ meanwhile."""
    with LocalSecretsManager() as server, pytest.MonkeyPatch.context() as patch:
        for name, value in server.env().items():
            patch.setenv(name, value)
        yield server


@pytest.fixture
def proxy(secretsmanager: LocalSecretsManager) -> Iterator[FaultProxy]:
    """A FaultProxy in front of moto, stopped after the test."""
    with FaultProxy(secretsmanager.endpoint_url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def app_schema(postgres: LocalPostgres) -> AppSchema:
    """A fresh alternating-users schema: role/db `app_N`, users `app_N_a`, `app_N_b`."""
    name = f"app_{next(_schema_numbers)}"
    return postgres.create_app_schema(role=name, users=(f"{name}_a", f"{name}_b"))


@pytest.fixture
def sm_client(secretsmanager: LocalSecretsManager) -> SecretsManagerClient:
    """A boto3 Secrets Manager client straight to moto."""
    return secretsmanager.client()


@pytest.fixture
def make_secret(
    postgres: LocalPostgres, app_schema: AppSchema, sm_client: SecretsManagerClient
) -> Callable[..., str]:
    """A function `make_secret(strategy="alternating") -> ARN` of a new app secret.

    Each call stores, under unique names, an admin secret (the superuser) and
    the secret of `app_schema` whose `masterarn` points at it.
    """

    def make(strategy: str = "alternating") -> str:
        prefix = f"rotating-pool-test/{app_schema.role}-{uuid.uuid4().hex[:8]}"
        admin_arn = sm_client.create_secret(
            Name=f"{prefix}/admin", SecretString=json.dumps(postgres.admin_document())
        )["ARN"]
        document = app_schema.secret_document(strategy, masterarn=admin_arn)
        return sm_client.create_secret(Name=f"{prefix}/app", SecretString=json.dumps(document))[
            "ARN"
        ]

    return make
