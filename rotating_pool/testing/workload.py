"""A write load for demos, tests and benchmarks: threads inserting rows.

Each worker commits one row per transaction and counts what it saw, so a run
can check that rows in the table equal commits counted and that no
transaction failed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

__all__ = ["WriteLoad", "WriteLoadResult", "static_url"]

logger = logging.getLogger("rotating_pool.testing")

TABLE = "rotating_pool_load"


def static_url(document: Mapping[str, Any]) -> sqlalchemy.URL:
    """The URL of an engine built once from a secret document, credentials written in.

    The control that demos, tests and benchmarks compare rotating_pool against:
    what an application has when it reads the secret once at start-up.
    """
    return sqlalchemy.URL.create(
        "postgresql+psycopg",
        username=document["username"],
        password=document["password"],
        host=document["host"],
        port=document["port"],
        database=document["dbname"],
    )


@dataclass
class WriteLoadResult:
    """What the workers counted.

    Attributes:
        commits: transactions committed.
        failures: transactions that raised.
        errors: failures by exception type and first line of the message.
        latencies: seconds per transaction, committed or not, in order.
        seconds: wall time of the run.
    """

    commits: int = 0
    failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile (0-100) of transaction latency, in seconds."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class WriteLoad:
    """`threads` workers inserting into a table through `engine` until stopped.

    Args:
        engine: the engine to write through.
        threads: how many workers.
        use_session: go through an ORM `Session` instead of ``engine.begin()``.
        table: the table to write to (created if missing).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        threads: int = 8,
        use_session: bool = False,
        table: str = TABLE,
    ) -> None:
        self.engine = engine
        self.threads = threads
        self.use_session = use_session
        self.table = table
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._result = WriteLoadResult()
        self._workers: list[threading.Thread] = []
        self._started = 0.0
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", table):
            raise ValueError(f"table must be a plain lower-case SQL name, not {table!r}")
        # The name is checked above; identifiers cannot be bind parameters.
        self._insert = sqlalchemy.text(f"INSERT INTO {table} (worker) VALUES (:worker)")  # noqa: S608
        self._count = sqlalchemy.text(f"SELECT count(*) FROM {table}")  # noqa: S608

    def create_table(self) -> None:
        """Create the table if it does not exist."""
        with self.engine.begin() as conn:
            conn.execute(
                sqlalchemy.text(
                    f"CREATE TABLE IF NOT EXISTS {self.table} "
                    "(id bigserial PRIMARY KEY, worker int NOT NULL, "
                    "at timestamptz NOT NULL DEFAULT now())"
                )
            )

    def count_rows(self) -> int:
        """Rows in the table now."""
        with self.engine.connect() as conn:
            return int(conn.execute(self._count).scalar_one())

    def start(self) -> None:
        """Start the workers."""
        self._started = time.perf_counter()
        for number in range(self.threads):
            worker = threading.Thread(
                target=self._work, args=(number,), name=f"write-load-{number}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def stop(self) -> WriteLoadResult:
        """Stop the workers, wait for them, and return what they counted."""
        self._stop.set()
        for worker in self._workers:
            worker.join()
        self._result.seconds = time.perf_counter() - self._started
        return self._result

    def snapshot(self) -> tuple[int, int]:
        """(commits, failures) so far."""
        with self._lock:
            return self._result.commits, self._result.failures

    def _work(self, number: int) -> None:
        params = {"worker": number}
        while not self._stop.is_set():
            began = time.perf_counter()
            try:
                if self.use_session:
                    with Session(self.engine) as session, session.begin():
                        session.execute(self._insert, params)
                else:
                    with self.engine.begin() as conn:
                        conn.execute(self._insert, params)
            except Exception as error:  # counted, never lost: the run reports every failure
                elapsed = time.perf_counter() - began
                first_line = str(error).splitlines()[0][:160] if str(error) else ""
                with self._lock:
                    self._result.failures += 1
                    self._result.errors[f"{type(error).__name__}: {first_line}"] += 1
                    self._result.latencies.append(elapsed)
            else:
                elapsed = time.perf_counter() - began
                with self._lock:
                    self._result.commits += 1
                    self._result.latencies.append(elapsed)
