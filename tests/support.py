"""Small helpers the tests share."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from psycopg import sql

from rotating_pool.testing import LocalPostgres


def set_password(postgres: LocalPostgres, user: str, password: str) -> None:
    """Change a role's password as the superuser (a SCRAM verifier, as rotation does)."""
    with postgres.admin_connect() as conn:
        verifier = conn.pgconn.encrypt_password(
            password.encode(), user.encode(), b"scram-sha-256"
        ).decode()
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(verifier)
            )
        )


def put_version(client: Any, secret_id: str, document: dict[str, Any], stage: str) -> str:
    """Store `document` as a new version labelled `stage`; returns its version id."""
    answer = client.put_secret_value(
        SecretId=secret_id, SecretString=json.dumps(document), VersionStages=[stage]
    )
    return str(answer["VersionId"])


def current_document(client: Any, secret_id: str) -> dict[str, Any]:
    """The AWSCURRENT document of a secret."""
    value = client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
    return dict(json.loads(value["SecretString"]))


class RecordCounter(logging.Handler):
    """Counts records whose message contains `needle`; `reached` is set at `target`."""

    def __init__(self, needle: str, target: int) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.target = target
        self.count = 0
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            with self._lock:
                self.count += 1
                if self.count >= self.target:
                    self.reached.set()
