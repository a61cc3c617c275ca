"""Training for a time instead of a number of epochs: `--time-budget 7m` (or `12h` on a CPU).

The run measures its own pace once compiled and warmed up, then plans the number of steps that fills the budget,
so that the warmup-cosine schedule reaches zero when the budget ends; about half way it plans again with the
pace of everything it has run by then (epoch ends, the kNN monitor and checkpoints included). The budget's clock
starts at the first training step: loading data and building the model come before it.

A view size not run yet (a `--resolution-schedule`'s later phases) is costed from the measured one by its pixel
count: 24 px and 32 px epochs of the CPU reference run took 527 s and 915 s, 1.74x, against 1.78x in pixels.
"""

from __future__ import annotations

import re
import time
from typing import Any

from trainer.errors import UserError
from trainer.resolution import ResolutionSchedule

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
WARM_STEPS = 2  # the first steps compile and tune kernels: not the pace of the rest
PLAN_AFTER = 20  # steps timed after the warm-up before the first plan


def parse_duration(text: str) -> float:
    """'90s', '7m', '1.5h', '12h30m' -> seconds; a bare number is seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            raise UserError(f"--time-budget {text!r}: expected a duration such as 90s, 7m, 1.5h or 12h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UserError(f"--time-budget {text!r} must be longer than zero")
    return seconds


def now() -> float:
    """The budget's clock (the tests put a fake one here)."""
    return time.monotonic()


class TimeBudget:
    """A wall-clock budget for the training steps, and the plan that fills it."""

    def __init__(self, text: str):
        self.text, self.seconds = text, parse_duration(text)
        self.started: float | None = None
        self.warm: tuple[float, int] | None = None  # (time, step) once the warm-up steps are done
        self.plans: list[dict[str, float]] = []  # each plan: where it was made, the pace it saw, its steps

    def start(self) -> None:
        self.started = now()

    def left(self) -> float:
        return self.seconds - (now() - self.started) if self.started is not None else self.seconds

    def expired(self) -> bool:
        return self.started is not None and self.left() <= 0

    def due(self, step: int, first_step: int) -> bool:
        """Whether `step` (steps done) is where this run plans: after the warm-up and PLAN_AFTER timed steps,
        then once more half way through the first plan. The same steps on every process of a DDP run."""
        if self.warm is None:
            if step - first_step == WARM_STEPS:
                self.warm = (now(), step)
            return False
        warm_step = self.warm[1]
        if not self.plans:
            return step == warm_step + PLAN_AFTER
        return len(self.plans) == 1 and step == max(warm_step + PLAN_AFTER + 1, self.plans[0]["steps"] // 2)

    def plan(self, step: int, size: int, schedule: ResolutionSchedule) -> int:
        """The total number of steps that fits the budget, given `step` steps done at view size `size` now:
        the most steps whose remaining ones, at the pace measured since the warm-up, end within the budget."""
        warm_time, warm_step = self.warm
        pace = (now() - warm_time) / (step - warm_step)  # seconds a step, at this size, all overheads in
        left = self.left()

        def cost(total: int) -> float:
            return sum(n * pace * (s / size) ** 2 for s, n in schedule.steps_per_size(total, step).items())

        smallest = min(s for s, _ in schedule.phases)
        lo, hi = step + 1, step + 2 + int(left / (pace * (smallest / size) ** 2))  # cost(hi) > left
        while lo < hi:  # the largest total with cost(total) <= left; cost grows with total
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid) <= left else (lo, mid - 1)
        self.plans.append({"at_step": step, "seconds_left": round(left, 3), "seconds_per_step": pace, "steps": lo})
        return lo

    def record(self) -> dict[str, Any]:
        """What RUN_DIR/budget.json keeps: the budget and its plans."""
        return {"time_budget": self.text, "seconds": self.seconds, "plans": self.plans}
