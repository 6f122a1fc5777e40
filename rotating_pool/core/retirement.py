"""Retirement's windows and timing, without I/O: when superseded connections close.

The scheduler thread and the pool surgery that carry these out live in
`rotating_pool.retire`; see its docstring for the whole mechanism.
"""

from __future__ import annotations

import math
import random

from rotating_pool.errors import ConfigurationError

__all__ = [
    "MIN_POLL_INTERVAL",
    "MIN_RETIRE_AFTER",
    "max_per_second",
    "poll_interval",
    "retirement_times",
    "retirement_window",
    "validate_retire_after",
]

MIN_RETIRE_AFTER = 5.0
"""The shortest ``retire_after`` accepted, in seconds: the window must leave
room for two poll intervals (noticing, and the refresh's own jitter)."""

MIN_POLL_INTERVAL = 1.0
"""The shortest background refresh interval the store accepts."""


def validate_retire_after(retire_after: object) -> float | None:
    """`retire_after` as a float, or None (off).

    Raises:
        ConfigurationError: not a number of seconds >= `MIN_RETIRE_AFTER`.
    """
    if retire_after is None:
        return None
    if isinstance(retire_after, bool) or not isinstance(retire_after, int | float):
        raise ConfigurationError(
            f"retire_after must be a number of seconds or None, not {type(retire_after).__name__}"
        )
    if not math.isfinite(retire_after) or retire_after < MIN_RETIRE_AFTER:
        raise ConfigurationError(
            f"retire_after must be at least {MIN_RETIRE_AFTER:g} seconds, not {retire_after}"
        )
    return float(retire_after)


def poll_interval(retire_after: float) -> float:
    """Seconds between background refreshes that retirement needs: a tenth of
    `retire_after`, at least 1 s."""
    return max(MIN_POLL_INTERVAL, retire_after / 10)


def retirement_window(retire_after: float) -> float:
    """Seconds over which superseded connections are spread, counted from when
    the process notices the change: `retire_after` less two poll intervals
    (the rotation may have happened just after a poll, and the refresh itself
    is jittered), so that the last one closes within `retire_after` of the
    rotation."""
    return retire_after - 2 * poll_interval(retire_after)


def retirement_times(
    count: int, start: float, window: float, rng: random.Random | None = None
) -> list[float]:
    """`count` moments in ``[start, start + window)``, one at random in each of
    `count` equal slices: at most ceil(count / window) + 1 fall in any 1-second
    interval, where independent draws could bunch up.

    Each moment falls in the middle half of its slice, so that the small
    delays of carrying a retirement out (waiting for a checkin, the
    scheduler's wake-up on a busy machine) cannot push the moments of four
    slices into one second.
    """
    if count <= 0:
        return []
    uniform = (rng or random).uniform
    width = window / count
    return [start + (slot + uniform(0.25, 0.75)) * width for slot in range(count)]


def max_per_second(count: int, window: float) -> int:
    """The most retirements `retirement_times` puts in any 1-second interval."""
    return math.ceil(count / window) + 1 if count else 0
