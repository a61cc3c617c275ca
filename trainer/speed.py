"""Measured speed: the step time of this model on this machine, which precision pays, and the run's ETA.

Whether bf16 pays on a CPU depends on the chip, not on a flag it advertises (measured: an AVX512_BF16 Xeon
without AMX ran bf16 no faster than fp32; an AVX512_BF16 EPYC ran it twice as fast), so `--precision auto`
times a few steps of both on a copy of the model instead of guessing (contract.timing.pick_fastest).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch
from torch import nn

from contract.timing import pick_fastest, timed
from trainer.errors import UserError
from trainer.loss import nt_xent


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _training_step(model: nn.Module, device: torch.device, precision: str, size: int, pairs: int,
                   channels_last: bool) -> Callable[[], None]:
    """A function running one forward and backward pass of NT-Xent through a copy of `model` (its weights and
    BatchNorm statistics are left as they were) on random views of size x size; warmed up once already."""
    probe = copy.deepcopy(model).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    noise = torch.Generator(device=device).manual_seed(0)  # the run's own random stream stays untouched
    x = torch.randn(2 * pairs, 3, size, size, device=device, generator=noise).contiguous(memory_format=fmt)

    def step() -> None:
        with autocast(device, precision):
            z = probe(x)
        nt_xent(z[:pairs], z[pairs:]).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    return step


def step_seconds(model: nn.Module, device: torch.device, precision: str, size: int, pairs: int = 32,
                 channels_last: bool = True, steps: int = 2) -> float:
    """Seconds per image pair of a training step's forward and backward pass here: the fastest of `steps`
    timed steps, since other work on the machine can only slow a step down."""
    step = _training_step(model, device, precision, size, pairs, channels_last)
    return min(timed(step) for _ in range(steps)) / pairs


def pick_precision(requested: str, model: nn.Module, device: torch.device, size: int,
                   channels_last: bool = True, rounds: int = 5) -> tuple[str, str]:
    """The precision to train in, and why. `auto` is bf16 on CUDA GPUs that support it; on a CPU, bf16 only
    where it measured at least contract.timing.MIN_GAIN times faster than fp32 here (pick_fastest: medians of
    `rounds` steps of each, in turns)."""
    if requested == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    if requested != "auto":
        return requested, "as asked"
    if device.type == "cuda":
        return ("bf16", "auto on CUDA") if torch.cuda.is_bf16_supported() else ("fp16", "auto on CUDA without bf16")
    steps = {p: _training_step(model, device, p, size, 32, channels_last) for p in ("fp32", "bf16")}
    choice, gains = pick_fastest({p: partial(timed, step) for p, step in steps.items()}, "fp32", rounds=rounds)
    return choice, f"auto: bf16 measured {gains['bf16']:.2f}x fp32 on this CPU (medians of {rounds})"


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class RunClock:
    """The remaining time of a run whose steps cost differently per view size.

    Starts from a per-size estimate (seconds per step, e.g. from step_seconds) and follows the measured pace:
    a moving average per size over roughly the last 1/smoothing steps, so that the ETA follows the machine
    when other work starts or stops beside the run. A size not run yet is scaled by how far the last measured
    size came from its estimate (compilation, data and the optimizer are not in the estimate).
    """

    def __init__(self, estimate: dict[int, float], smoothing: float = 0.02):
        self.estimate, self.smoothing = dict(estimate), smoothing
        self.pace: dict[int, float] = {}
        self.last: int | None = None

    def record(self, size: int, seconds: float, steps: int = 1) -> None:
        """`steps` steps at this size took `seconds` together (a training loop that waits for the device only
        now and then times a window of steps). A step counts as at most 4x the pace so far: a run paused (kill
        -STOP) or a machine that stalled for minutes slows the estimate by a step, not by the whole pause."""
        mean = seconds / steps
        previous = self.pace.get(size)
        if previous is None:
            self.pace[size] = mean
        else:  # the moving average as if each step of the window had been recorded on its own
            weight = 1 - (1 - self.smoothing) ** steps
            self.pace[size] = previous + weight * (min(mean, 4 * previous) - previous)
        self.last = size

    def per_step(self, size: int) -> float:
        if size in self.pace:
            return self.pace[size]
        if self.last is None:
            return self.estimate[size]
        return self.estimate[size] * self.pace[self.last] / self.estimate[self.last]

    def remaining(self, steps_per_size: dict[int, int]) -> float:
        return sum(n * self.per_step(size) for size, n in steps_per_size.items() if n)
