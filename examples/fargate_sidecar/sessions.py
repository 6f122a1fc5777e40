"""The app's database sessions per user, sampled from pg_stat_activity during the run."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from examples.fargate_sidecar.load import LoadGenerator
from examples.fargate_sidecar.scene import DBNAME
from rotating_pool.testing import LocalPostgres


@dataclass(frozen=True)
class SessionSample:
    """Open sessions of the app's database per user, at `at` seconds since the load started."""

    at: float
    by_user: dict[str, int]


class SessionSampler:
    """Counts the app's sessions per user in ``pg_stat_activity`` every `every` seconds.

    The rotation's own logins (application_name ``rotating-pool-rotation``) and
    the sampler's are left out: what remains is the app's pools.
    """

    def __init__(self, postgres: LocalPostgres, clock: LoadGenerator, every: float = 0.25) -> None:
        self.postgres = postgres
        self.clock = clock
        self.every = every
        self.samples: list[SessionSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sessions", daemon=True)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> list[SessionSample]:
        """Stop and return the samples."""
        self._stop.set()
        self._thread.join()
        return self.samples

    def _run(self) -> None:
        with self.postgres.admin_connect() as conn:
            conn.autocommit = True
            while not self._stop.wait(self.every):
                rows = conn.execute(
                    "SELECT usename, count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()"
                    " AND application_name IS DISTINCT FROM 'rotating-pool-rotation'"
                    " AND usename IS NOT NULL GROUP BY usename",
                    [DBNAME],
                ).fetchall()
                self.samples.append(SessionSample(self.clock.now(), dict(rows)))

