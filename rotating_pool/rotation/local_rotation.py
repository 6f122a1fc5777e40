"""One whole rotation without a Lambda: the local driver of the four steps.

`rotate` runs the steps Secrets Manager would invoke, in order and with one
token, through a `rotating_pool.rotation.Rotator` (the same code as the
Lambda). The rotator is passed in, and imported for its type only, so the
steps module can offer this driver as `Rotator.rotate` without an import cycle.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rotating_pool.rotation.settings import RotationSettings, Strategy
from rotating_pool.rotation.strategies import StepOutcome
from rotating_pool.rotation.versions import SecretVersions
from rotating_pool.secret import AWSCURRENT, AWSPENDING

if TYPE_CHECKING:
    from rotating_pool.rotation.rotator import Rotator

__all__ = ["RotationResult", "rotate"]

logger = logging.getLogger("rotating_pool.rotation")


@dataclass(frozen=True)
class RotationResult:
    """What one `rotate` did.

    Attributes:
        secret_id: the secret rotated.
        token: the ClientRequestToken (= the new AWSCURRENT version id).
        strategy: the strategy the secret named.
        username: the database user AWSCURRENT now names.
        durations: seconds per step, in step order.
        outcomes: what each step did (`StepOutcome`).
        resumed: True when the rotation finished one left half-done (its
            AWSPENDING version) rather than starting anew.
    """

    secret_id: str
    token: str
    strategy: Strategy
    username: str
    durations: Mapping[str, float]
    outcomes: Mapping[str, StepOutcome]
    resumed: bool = False

    @property
    def total(self) -> float:
        """Seconds for the four steps together."""
        return sum(self.durations.values())


def rotate(
    runner: Rotator,
    secret_id: str,
    *,
    steps: Sequence[str],
    token: str | None = None,
    on_step: Callable[[str, float], None] | None = None,
) -> RotationResult:
    """Perform one whole rotation, as Secrets Manager would drive it.

    Needs neither a Lambda nor rotation enabled on the secret: createSecret
    itself stores the AWSPENDING version (PutSecretValue) that RotateSecret
    would have staged empty. The steps are the same code the Lambda runs.

    Args:
        runner: runs each step (a `Rotator`).
        steps: the steps in order (`rotator.STEPS`).
        token: the ClientRequestToken. None: if an unfinished rotation left an
            AWSPENDING version (not also AWSCURRENT), finish that one with its
            token, as Secrets Manager's retry would; otherwise a new uuid4.
            Giving a new token instead starts afresh (createSecret moves the
            AWSPENDING label onto it).
        on_step: called as ``on_step(step, seconds)`` after each step; it may
            sleep (to widen the window between setSecret and finishSecret) or
            raise (to simulate a crash: re-run with the same token).

    Returns:
        per-step durations and outcomes, the token, the strategy and the user
        now AWSCURRENT.
    """
    versions = SecretVersions(runner.client, secret_id)
    resumed = False
    if token is None:
        description = versions.describe()
        pending = description.version_with(AWSPENDING)
        # A version labelled AWSPENDING alone is a rotation that did not
        # finish; with other labels it is a leftover marker, which
        # createSecret moves onto the new token.
        if pending is not None and description.stages[pending] == (AWSPENDING,):
            logger.warning(
                "secret %r: finishing the unfinished rotation of version %s first",
                secret_id,
                pending,
            )
            token, resumed = pending, True
        else:
            token = str(uuid.uuid4())
    durations: dict[str, float] = {}
    outcomes: dict[str, StepOutcome] = {}
    for step in steps:
        started = time.perf_counter()
        outcomes[step] = runner.run_step(secret_id, token, step, check_enabled=False)
        durations[step] = time.perf_counter() - started
        if on_step is not None:
            on_step(step, durations[step])
    current = versions.read_required(AWSCURRENT)
    settings = RotationSettings.from_document(secret_id, current.document)
    return RotationResult(
        secret_id=secret_id,
        token=token,
        strategy=settings.strategy,
        username=current.credentials.username,
        durations=durations,
        outcomes=outcomes,
        resumed=resumed,
    )
