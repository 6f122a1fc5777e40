"""The local stack every benchmark runs on, and the secrets and rotations they share.

One PostgreSQL 15 server and one moto Secrets Manager (over HTTP) serve the
whole run. Each benchmark makes its own secrets (`Bed.new_secret`), so no run
sees another's rotations. Clients under test read Secrets Manager through a
`FaultProxy`, which counts their calls; the rotator goes straight to moto, as a
rotation Lambda's calls are not the application's.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL

from rotating_pool.rotation import Rotator
from rotating_pool.testing import (
    AppSchema,
    FaultProxy,
    LocalPostgres,
    LocalSecretsManager,
    static_url,
)
from rotating_pool.testing.secretsmanager import REGION

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = ["Bed", "Rotations", "Secret", "counting_proxy", "hold_window", "start_bed"]

# A modelled pace: 1 s between setSecret and finishSecret stands for a Lambda's
# separate invocations, and the benchmarks rotate every 2 s.
ROTATION_EVERY = 2.0
ROTATION_WINDOW = 1.0


@dataclass(frozen=True)
class Secret:
    """One application secret made for a benchmark.

    Attributes:
        arn: the secret's ARN.
        strategy: ``single`` or ``alternating``.
        schema: the database roles behind it.
    """

    arn: str
    strategy: str
    schema: AppSchema


class Bed:
    """The shared local stack: PostgreSQL, moto, and a direct Secrets Manager client."""

    def __init__(self, postgres: LocalPostgres, secretsmanager: LocalSecretsManager) -> None:
        self.postgres = postgres
        self.secretsmanager = secretsmanager
        self.client: SecretsManagerClient = secretsmanager.client()
        self._numbers = itertools.count(1)
        self._redactions: set[str] = {postgres.admin_password}
        self._redactions_lock = threading.Lock()

    def new_secret(self, strategy: str) -> Secret:
        """A fresh schema (role, two users, database) and its secret, AWSCURRENT = user a."""
        name = f"bench_{next(self._numbers)}"
        schema = self.postgres.create_app_schema(role=name, users=(f"{name}_a", f"{name}_b"))
        with self._redactions_lock:
            self._redactions.update(schema.passwords.values())
        prefix = f"benchmarks/{name}-{uuid.uuid4().hex[:6]}"
        admin_arn = self.client.create_secret(
            Name=f"{prefix}/admin", SecretString=json.dumps(self.postgres.admin_document())
        )["ARN"]
        document = schema.secret_document(strategy, masterarn=admin_arn)
        arn = self.client.create_secret(Name=f"{prefix}/app", SecretString=json.dumps(document))[
            "ARN"
        ]
        return Secret(arn=arn, strategy=strategy, schema=schema)

    def current_document(self, secret: Secret, endpoint_url: str | None = None) -> dict[str, Any]:
        """The AWSCURRENT document now, read directly or through `endpoint_url` (a proxy)."""
        client = self.client if endpoint_url is None else self.secretsmanager.client(endpoint_url)
        answer = client.get_secret_value(SecretId=secret.arn, VersionStage="AWSCURRENT")
        document: dict[str, Any] = json.loads(answer["SecretString"])
        with self._redactions_lock:
            self._redactions.add(str(document["password"]))
        return document

    def static_url(self, document: dict[str, Any]) -> URL:
        """A URL with the credentials of `document` written in, as an engine built once has."""
        return static_url(document)

    def wrapper_url(self, secret: Secret, endpoint_url: str) -> URL:
        """A URL for aws-advanced-python-wrapper with only its aws_secrets_manager plugin.

        The wrapper reads Secrets Manager through `endpoint_url` (its
        ``secrets_manager_endpoint`` property). ``wrapper_dialect=pg`` skips its
        Aurora/RDS topology probing, which a plain PostgreSQL cannot answer;
        ``wrapper_plugins`` because SQLAlchemy itself takes ``plugins`` from URLs.
        """
        return URL.create(
            "postgresql+aws_wrapper_psycopg",
            host=secret.schema.host,
            port=secret.schema.port,
            database=secret.schema.dbname,
            query={
                "wrapper_plugins": "aws_secrets_manager",
                "wrapper_dialect": "pg",
                "secrets_manager_secret_id": secret.arn,
                "secrets_manager_region": REGION,
                "secrets_manager_endpoint": endpoint_url,
            },
        )

    def rotator(self) -> Rotator:
        """A rotation driver on the direct client (its calls are not counted)."""
        return Rotator(self.client)

    def redact(self, text: str) -> str:
        """`text` with every password the bed knows of, and any ``password=...``, masked."""
        with self._redactions_lock:
            known = list(self._redactions)
        for password in known:
            text = text.replace(password, "***")
        return _PASSWORD_PAIR.sub(r"\1***", text)


_PASSWORD_PAIR = re.compile(r"(password\s*[=:]\s*['\"]?)[^\s'\",}]+", re.IGNORECASE)


@contextmanager
def start_bed() -> Iterator[Bed]:
    """Start PostgreSQL and moto; point boto3 at moto meanwhile (dummy keys, region)."""
    with LocalPostgres() as postgres, LocalSecretsManager() as secretsmanager:
        saved = {name: os.environ.get(name) for name in secretsmanager.env()}
        os.environ.update(secretsmanager.env())
        try:
            yield Bed(postgres, secretsmanager)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@contextmanager
def counting_proxy(bed: Bed) -> Iterator[FaultProxy]:
    """A `FaultProxy` in front of moto: the client under test reads through it."""
    with FaultProxy(bed.secretsmanager.endpoint_url) as proxy:
        yield proxy


def hold_window(seconds: float) -> Callable[[str, float], None]:
    """An ``on_step`` callback that waits `seconds` after testSecret.

    This models a Lambda's own pace: between setSecret (the database has the new
    password) and finishSecret (AWSCURRENT moves) about a second passes.
    """

    def on_step(step: str, _elapsed: float) -> None:
        if step == "testSecret":
            time.sleep(seconds)

    return on_step


class Rotations:
    """Rotates one secret at a fixed pace, in the calling thread.

    Args:
        bed: the stack.
        secret: the secret to rotate.
        every: seconds from the start of one rotation to the start of the next.
        window: seconds between setSecret and finishSecret.
    """

    def __init__(
        self,
        bed: Bed,
        secret: Secret,
        *,
        every: float = ROTATION_EVERY,
        window: float = ROTATION_WINDOW,
    ) -> None:
        self.rotator = bed.rotator()
        self.secret = secret
        self.every = every
        self.window = window
        self.done = 0
        self.started_at: list[float] = []  # wall-clock (epoch) start of each rotation

    def run(self, *, seconds: float | None = None, count: int | None = None) -> int:
        """Rotate until `seconds` have passed or `count` rotations are done; returns rotations."""
        if seconds is None and count is None:
            raise ValueError("give seconds or count")
        deadline = None if seconds is None else time.monotonic() + seconds
        done = 0
        while True:
            if count is not None and done >= count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            started = time.monotonic()
            self.started_at.append(time.time())
            self.rotator.rotate(self.secret.arn, on_step=hold_window(self.window))
            done += 1
            self.done += 1
            time.sleep(max(0.0, self.every - (time.monotonic() - started)))
        return done
