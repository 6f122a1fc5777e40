"""Secrets Manager's rotation schedule, played: RotateSecret, then the four Lambda steps."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import sql

from examples.fargate_sidecar.load import LoadGenerator
from examples.fargate_sidecar.scene import (
    ROLE,
    ROTATION_LAMBDA_ARN,
    SECRET_NAME,
    bootstrap_secret,
    current_username,
)
from rotating_pool.rotation import STEPS, Strategy, lambda_handler
from rotating_pool.testing import LocalPostgres

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

@dataclass(frozen=True)
class Rotation:
    """One rotation, start and end in seconds since the load started."""

    strategy: str
    started: float
    finished: float
    username: str
    error: str | None = None


class RotationSchedule:
    """Rotates the secret every `every` seconds as Secrets Manager would, in a thread.

    Alternating rotations until `switch_at`, then a re-bootstrap to the
    single-user strategy, then single-user rotations until `end_at` (seconds on
    the load generator's clock).
    """

    def __init__(
        self,
        client: SecretsManagerClient,
        postgres: LocalPostgres,
        clock: LoadGenerator,
        *,
        every: float,
        window: float,
        start_at: float,
        switch_at: float,
        end_at: float,
    ) -> None:
        self.client = client
        self.postgres = postgres
        self.clock = clock
        self.every = every
        self.window = window
        self.start_at = start_at
        self.switch_at = switch_at
        self.end_at = end_at
        self.rotations: list[Rotation] = []
        self.switched_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rotations", daemon=True)

    def start(self) -> None:
        """Start the schedule."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the rotation in progress (a rotation is never cut in half)."""
        self._stop.set()
        self._thread.join()

    def counts(self) -> Counter[str]:
        """Finished rotations by strategy."""
        with self._lock:
            return Counter(r.strategy for r in self.rotations if r.error is None)

    def _wait_until(self, at: float) -> bool:
        """Sleep until `at` on the load clock; False when stopped meanwhile."""
        return not self._stop.wait(max(0.0, at - self.clock.now()))

    def _run(self) -> None:
        strategy = Strategy.ALTERNATING
        next_at = self.start_at
        while self._wait_until(next_at):
            if strategy is Strategy.ALTERNATING and self.clock.now() >= self.switch_at:
                self._switch_to_single()
                strategy = Strategy.SINGLE
            if self.clock.now() + self.window + 1.0 > self.end_at:
                return  # no time for another whole rotation before the quiet end
            rotation = self._rotate(strategy.value)
            with self._lock:
                self.rotations.append(rotation)
            print_rotation(len(self.rotations), rotation)
            next_at += self.every

    def _rotate(self, strategy: str) -> Rotation:
        """One rotation: RotateSecret, then the four Lambda invocations with its token."""
        started = self.clock.now()
        try:
            token = self.client.rotate_secret(
                SecretId=SECRET_NAME, RotationLambdaARN=ROTATION_LAMBDA_ARN
            )["VersionId"]
            for step in STEPS:
                if step == "finishSecret":
                    # Secrets Manager invokes each step separately; between
                    # setSecret and finishSecret a single-user rotation has
                    # changed the password while AWSCURRENT still has the old one.
                    time.sleep(self.window)
                event = {"SecretId": SECRET_NAME, "ClientRequestToken": token, "Step": step}
                lambda_handler(event, None)
            username = current_username(self.client)
        except Exception as exc:  # reported in the summary; the run then fails
            return Rotation(strategy, started, self.clock.now(), "?", f"{type(exc).__name__}")
        return Rotation(strategy, started, self.clock.now(), username)

    def _switch_to_single(self) -> None:
        """Re-bootstrap the secret for the single-user strategy, keeping its user,
        and retire the other user, as moving a real deployment would.

        Retiring it matters: the app keeps the credentials it has until a login
        is refused, and after an alternating rotation those are the previous
        user's, which single-user rotations would never touch.
        """
        user = current_username(self.client)
        retired = next(u for u in (f"{ROLE}_a", f"{ROLE}_b") if u != user)
        report = bootstrap_secret(self.postgres, self.client, Strategy.SINGLE, users=(user,))
        with self.postgres.admin_connect() as conn:
            # Open sessions of the retired user go on; its new logins are refused.
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(retired)))
        self.switched_at = self.clock.now()
        print(
            f"  {self.switched_at:5.1f} s  re-bootstrapped {SECRET_NAME!r} for the single-user "
            f"strategy (user {report.username!r}, password "
            f"{'changed' if report.password_set else 'kept'}) and retired {retired!r} (NOLOGIN): "
            "rotations now change that user's own password",
            flush=True,
        )


def print_rotation(number: int, rotation: Rotation) -> None:
    took = rotation.finished - rotation.started
    if rotation.error:
        outcome = f"FAILED ({rotation.error})"
    else:
        outcome = f"AWSCURRENT is now user {rotation.username!r}"
    print(
        f"  {rotation.finished:5.1f} s  rotation {number} ({rotation.strategy}) "
        f"in {took:.2f} s: {outcome}",
        flush=True,
    )

