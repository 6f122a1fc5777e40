"""A rotation step's deadline: the Lambda invocation's remaining time.

Secrets Manager gives each step one Lambda invocation. A step that overruns it
is killed mid-way, with nothing logged; a step that stops in time raises
`StepDeadlineError` and Secrets Manager retries the rotation with the same
token (every step is idempotent). So everything a step waits for keeps within
its `Deadline`:

- database logins: the connect timeout shrinks to the whole seconds left
  (`Deadline.login_timeout`);
- Secrets Manager and RDS API calls: `Deadline.bound` wraps the boto3 client
  so that each call, botocore's own retries included, is waited for at most
  until the deadline. The call runs in a daemon thread of its own, because
  botocore fixes its socket timeouts when the client is made (5 s to connect,
  10 s to read, 3 attempts here: up to 45 s for one call, longer than many
  rotation functions' whole timeout). A call given up on finishes in its
  thread within those timeouts and its answer is dropped; every step is safe
  to run again, so a late write is harmless.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from rotating_pool.rotation.errors import RotationConfigError, StepDeadlineError

__all__ = ["MAX_SECONDS", "Deadline", "check_seconds"]

# psycopg's connect_timeout is in whole seconds and never less than 2.
MIN_CONNECT_TIMEOUT = 2
# Time kept back from a deadline for the step to report its failure.
DEADLINE_RESERVE = 0.5

# No login or step of a rotation may wait longer (a Lambda runs 900 s at most).
MAX_SECONDS = 3600.0

_Client = TypeVar("_Client")
_T = TypeVar("_T")


def check_seconds(value: object, *, key: str) -> float:
    """`value` as a number of seconds, if it is a finite number in (0, `MAX_SECONDS`].

    ``nan`` passes every comparison and ``inf`` overflows later (``math.ceil``,
    socket timeouts): both are refused here, where the setting is read.

    >>> check_seconds(2, key="connect_timeout")
    2.0

    Raises:
        RotationConfigError: naming `key`.
    """
    seconds = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= MAX_SECONDS:
        raise RotationConfigError(
            f"{key} must be a number of seconds above 0 and at most {MAX_SECONDS:g}, not {value!r}",
            key=key,
        )
    return float(seconds)


@dataclass(frozen=True)
class Deadline:
    """When the step must be over (``time.monotonic()`` seconds), if ever.

    >>> Deadline.after(None).seconds_left() is None
    True
    """

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """A deadline `seconds` from now (None: no deadline).

        Raises:
            RotationConfigError: `seconds` is not a finite number.
        """
        if seconds is None:
            return cls(None)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise RotationConfigError(
                f"time_left must be a number, not {seconds!r}", key="time_left"
            )
        if not math.isfinite(seconds):
            raise RotationConfigError(
                f"time_left must be a finite number of seconds (None: no limit), not {seconds!r}",
                key="time_left",
            )
        return cls(time.monotonic() + seconds)

    def seconds_left(self) -> float | None:
        """Seconds until the deadline, None without one."""
        return None if self.at is None else self.at - time.monotonic()

    def login_timeout(self, configured: float, *, what: str) -> tuple[int, bool]:
        """The connect timeout for a login now: the configured one, shrunk to the
        time left. Returns (seconds, whether it was shrunk).

        Raises:
            StepDeadlineError: too little time is left for a login.
        """
        wanted = max(MIN_CONNECT_TIMEOUT, math.ceil(configured))
        left = self.seconds_left()
        if left is None:
            return wanted, False
        whole = math.floor(left - DEADLINE_RESERVE)
        if whole < MIN_CONNECT_TIMEOUT:
            raise StepDeadlineError(
                f"{what}: only {max(left, 0):.1f} s of the invocation's time are left, too little "
                f"for a login (at least {MIN_CONNECT_TIMEOUT} s); the step stops here and Secrets "
                "Manager retries the rotation: give the Lambda a longer timeout, or a shorter "
                "CONNECT_TIMEOUT"
            )
        return min(wanted, whole), whole < wanted

    def run(self, what: str, call: Callable[[], _T]) -> _T:
        """Return ``call()``, or raise StepDeadlineError if it has not returned
        `DEADLINE_RESERVE` seconds before the deadline. Without a deadline the
        call runs in the caller's thread.

        Raises:
            StepDeadlineError: the deadline came first; the call goes on in
                its own thread and its outcome is dropped.
            Exception: whatever the call raised.
        """
        left = self.seconds_left()
        if left is None:
            return call()
        budget = left - DEADLINE_RESERVE
        if budget <= 0:
            raise StepDeadlineError(
                f"{what}: the invocation's time is up ({max(left, 0):.1f} s left); the step stops "
                "here and Secrets Manager retries the rotation: give the Lambda a longer timeout"
            )
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()

        def target() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as error:  # handed to the waiting step
                outcome.append((False, error))
            finally:
                done.set()

        threading.Thread(target=target, name="rotating-pool-step-call", daemon=True).start()
        if not done.wait(budget):
            raise StepDeadlineError(
                f"{what} did not answer within the {budget:.1f} s left to the invocation; the "
                "step stops here and Secrets Manager retries the rotation: check that the "
                "function reaches the endpoint (VPC endpoint, NAT), or give it a longer timeout"
            )
        ok, value = outcome[0]
        if ok:
            return cast(_T, value)
        raise value

    def bound(self, client: _Client) -> _Client:
        """`client` (a boto3 client) with every API call kept within this deadline
        by `run`; the client itself without a deadline."""
        if self.at is None:
            return client
        return cast(_Client, _BoundClient(client, self))


class _BoundClient:
    """A boto3 client whose API operations go through `Deadline.run`; everything
    else (``meta``, ``exceptions``, ...) is the client's own."""

    def __init__(self, client: Any, deadline: Deadline) -> None:
        self._client = client
        self._deadline = deadline
        self._operations: dict[str, str] = client.meta.method_to_api_mapping
        self._service: str = client.meta.service_model.service_id

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        operation = self._operations.get(name)
        if operation is None:
            return attribute
        what = f"{self._service} {operation}"

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._deadline.run(what, lambda: attribute(*args, **kwargs))

        return call

    def __repr__(self) -> str:
        return f"<{self._service} client bound to a rotation step's deadline>"
