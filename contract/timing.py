"""Choosing the fastest of a few ways to compute the same thing by timing them here (the trainer's precision, the
service's runtime): what is fast depends on the chip, not on the flags it advertises."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

MIN_GAIN = 1.15  # a candidate must beat the baseline by this factor: its cost in precision must buy speed


def timed(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds one call of fn took."""
    started = clock()
    fn()
    return clock() - started


def pick_fastest(candidates: Mapping[str, Callable[[], float]], baseline: str, min_gain: float = MIN_GAIN,
                 rounds: int = 5) -> tuple[str, dict[str, float]]:
    """The candidate to use, and each one's gain (the baseline's median seconds over its own).

    Each candidate is a function that runs it once, warmed up already, and returns the seconds it took. They run
    in turns, `rounds` times each, and their medians are compared: a burst of other work on a busy machine slows
    a round or two of one candidate, which moves its median little, where the fastest of a few would have been
    the luck of a quiet moment. The fastest wins where its gain is at least min_gain; otherwise the baseline."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, once in candidates.items():
            seconds[name].append(once())
    base = statistics.median(seconds[baseline])
    gains = {name: base / statistics.median(times) for name, times in seconds.items()}
    best = max(gains, key=gains.__getitem__)
    return (best if gains[best] >= min_gain else baseline), gains
