"""Progressive resolution: early training steps on smaller views, the last ones at the full resolution.

A step at 16 px costs about a quarter of one at 32 px, and the first epochs of contrastive training learn
coarse features that small views carry as well as large ones; the network is fully convolutional with a
global pool, so the same weights run at any size. The schedule ends at the full resolution so that the last
steps (and the BatchNorm statistics they leave) belong to the size that evaluation and the service see.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.errors import UserError


@dataclass(frozen=True)
class ResolutionSchedule:
    """phases: (size, fraction of the training steps), in order; the fractions sum to 1."""

    phases: tuple[tuple[int, float], ...]

    @classmethod
    def parse(cls, text: str | None, full_size: int) -> ResolutionSchedule:
        """'16:0.7,32' -> 16 px for the first 70% of the steps, then 32 px for the rest.

        Every phase but the last gives SIZE:FRACTION; the last gives SIZE alone (the remaining steps) and must
        be the full resolution. None or '' means the full resolution throughout.
        """
        if not text:
            return cls(((full_size, 1.0),))
        phases: list[tuple[int, float]] = []
        parts = [p.strip() for p in text.split(",")]
        try:
            for part in parts[:-1]:
                size, fraction = part.split(":")
                phases.append((int(size), float(fraction)))
            last = int(parts[-1])
        except ValueError:
            raise UserError(f"--resolution-schedule {text!r}: expected SIZE:FRACTION,...,SIZE, "
                            "e.g. '16:0.7,32'") from None
        rest = 1.0 - sum(f for _, f in phases)
        if last != full_size:
            raise UserError(f"--resolution-schedule {text!r} must end at --image-size {full_size}, the size that "
                            "evaluation sees")
        if any(not 0 < f < 1 for _, f in phases) or rest <= 1e-9:
            raise UserError(f"--resolution-schedule {text!r}: each fraction must be in (0, 1) and together under 1")
        if any(not 8 <= s <= full_size for s, _ in phases):
            raise UserError(f"--resolution-schedule {text!r}: sizes must be between 8 and --image-size {full_size}")
        return cls((*phases, (last, rest)))

    def boundaries(self, total_steps: int) -> list[tuple[int, int]]:
        """(first step, size) of each phase over a run of total_steps; the last phase keeps at least one step."""
        out, start = [], 0.0
        for size, fraction in self.phases:
            out.append((min(round(start * total_steps), total_steps - 1), size))
            start += fraction
        return out

    def size_at(self, step: int, total_steps: int) -> int:
        """The view size of training step `step` (0-based) of a run of total_steps."""
        size = self.phases[0][0]
        for first, s in self.boundaries(total_steps):
            if step >= first:
                size = s
        return size

    def steps_per_size(self, total_steps: int, done: int = 0) -> dict[int, int]:
        """How many of the steps from `done` to the end run at each size."""
        edges = self.boundaries(total_steps) + [(total_steps, 0)]
        counts: dict[int, int] = {}
        for (first, size), (end, _) in zip(edges, edges[1:]):
            counts[size] = counts.get(size, 0) + max(0, end - max(first, done))
        return counts
