"""Small statistics, and the interleaving that cancels the machine's drift.

The machine has 2 cores shared with other work, so its speed changes during a
run. A baseline measured at one time and a candidate at another would compare
two machines; here the sides take turns in many short rounds, in an order that
rotates every round, and are compared by medians, which a few slow rounds
cannot move, with a bootstrap interval of the ratio.

Two clocks are read for every sample: wall time (what an application sees)
and this thread's CPU time (what the client code itself costs, which other
processes' load does not inflate). And an A/A control, a second baseline
identical to the first, shows how far noise alone moves a ratio.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "Comparison",
    "Interleaved",
    "Sample",
    "goal",
    "interleave",
    "judge",
    "percentile",
    "ratio_goal",
    "sample",
    "summary",
]


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of durations, in milliseconds."""
    return {
        "p50_ms": percentile(seconds, 50) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": max(seconds, default=0.0) * 1000,
    }


def goal(name: str, target: str, measured: str, met: bool | None) -> dict[str, object]:
    """One line of the goals table; `met` None when the measurement cannot decide."""
    return {"goal": name, "target": target, "measured": measured, "met": met}


class Sample(NamedTuple):
    """One timing: wall seconds and the calling thread's CPU seconds."""

    wall: float
    cpu: float


def sample(action: Callable[[], object]) -> Sample:
    """Time `action` on both clocks."""
    wall, cpu = time.perf_counter(), time.thread_time()
    action()
    return Sample(time.perf_counter() - wall, time.thread_time() - cpu)


class Comparison(NamedTuple):
    """median(side) / median(baseline) on one clock, with a bootstrap 95% interval."""

    ratio: float
    low: float
    high: float

    def inverse(self) -> Comparison:
        """The same comparison as a throughput ratio (the time ratio's inverse)."""
        return Comparison(1 / self.ratio, 1 / self.high, 1 / self.low)

    def as_dict(self) -> dict[str, float]:
        return {"ratio": self.ratio, "ci95_low": self.low, "ci95_high": self.high}


@dataclass
class Interleaved:
    """Samples of several sides, taken in turns.

    Attributes:
        rounds: per round, each side's samples.
    """

    rounds: list[dict[str, list[Sample]]]

    def values(self, side: str, clock: str = "wall") -> list[float]:
        """Every sample of `side` on `clock` ("wall" or "cpu")."""
        return [float(getattr(s, clock)) for one in self.rounds for s in one[side]]

    def median(self, side: str, clock: str = "wall") -> float:
        return statistics.median(self.values(side, clock))

    def compare(
        self, side: str, baseline: str, clock: str = "wall", resamples: int = 400
    ) -> Comparison:
        """median(side) / median(baseline), with an interval from resampling whole rounds.

        Rounds, not samples, are resampled: the sides of one round ran side by
        side, so the noise they shared stays paired.
        """
        rng = random.Random(6)
        ratios = sorted(
            _ratio(rng.choices(self.rounds, k=len(self.rounds)), side, baseline, clock)
            for _ in range(resamples)
        )
        return Comparison(
            _ratio(self.rounds, side, baseline, clock),
            ratios[int(0.025 * resamples)],
            ratios[int(0.975 * resamples) - 1],
        )


def _ratio(rounds: Sequence[dict[str, list[Sample]]], side: str, base: str, clock: str) -> float:
    side_values = [float(getattr(s, clock)) for one in rounds for s in one[side]]
    base_values = [float(getattr(s, clock)) for one in rounds for s in one[base]]
    return statistics.median(side_values) / statistics.median(base_values)


def interleave(
    rounds: int,
    sides: dict[str, Callable[[], list[Sample]]],
    *,
    every: int = 50,
    between: Callable[[], None] | None = None,
) -> Interleaved:
    """Run each side once per round, `rounds` times, in turns.

    The order rotates every round and reverses every other cycle, so each
    side runs first, last and in between equally often and a drift in speed
    favours none. Every `every` rounds, outside any timing, the garbage
    collector runs (it is off meanwhile, so that no side pays for another's
    garbage) and so does `between` (e.g. renewing pooled connections, so that
    no side keeps a luckier database backend process all run long).
    """
    names = list(sides)
    samples: list[dict[str, list[Sample]]] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for number in range(rounds):
            if number % every == 0:
                if between is not None:
                    between()
                gc.collect()
            shift = number % len(names)
            order = names[shift:] + names[:shift]
            if (number // len(names)) % 2:
                order.reverse()
            samples.append({name: sides[name]() for name in order})
    finally:
        if enabled:
            gc.enable()
    return Interleaved(samples)


def judge(wall: Comparison, control: Comparison, meets: Callable[[float], bool]) -> bool | None:
    """Whether a ratio goal is met, from the wall-clock ratio.

    True when the wall-clock ratio meets it. None (cannot tell) when it does
    not but the A/A control, two identical engines, moved at least as far from
    1 as the candidate did: noise alone explains the miss, and this run could
    not resolve the goal. False otherwise.
    """
    if meets(wall.ratio):
        return True
    if abs(control.ratio - 1) >= abs(wall.ratio - 1):
        return None
    return False


def ratio_goal(
    samples: Interleaved,
    name: str,
    target: float,
    *,
    throughput: bool,
) -> dict[str, object]:
    """rotating_pool against static (and the A/A control) on both clocks, with its goal line.

    `throughput`: compare rates (the inverse of the time ratios) and require
    at least `target`; otherwise compare times and require at most `target`.
    """

    def compare(side: str, clock: str) -> Comparison:
        comparison = samples.compare(side, "static", clock)
        return comparison.inverse() if throughput else comparison

    wall, cpu = compare("rotating_pool", "wall"), compare("rotating_pool", "cpu")
    control = compare("static_control", "wall")
    sign = ">=" if throughput else "<="
    return {
        "ratio": wall.ratio,
        "wall": wall.as_dict(),
        "cpu": cpu.as_dict(),
        "control_wall": control.as_dict(),
        "control_cpu": compare("static_control", "cpu").as_dict(),
        "goal": goal(
            name,
            f"{sign} {target}",
            f"{wall.ratio:.3f} (95% CI {wall.low:.3f}-{wall.high:.3f}; CPU {cpu.ratio:.3f}; "
            f"A/A control {control.ratio:.3f})",
            judge(
                wall, control, (lambda r: r >= target) if throughput else (lambda r: r <= target)
            ),
        ),
    }
