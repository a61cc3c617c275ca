"""Measured speed: the step time of this model on this machine, which precision pays, and the run's ETA.

Whether bf16 pays on a CPU depends on the chip, not on a flag it advertises (measured: an AVX512_BF16 Xeon
without AMX ran bf16 no faster than fp32; an AVX512_BF16 EPYC ran it twice as fast), so `--precision auto`
times a few steps of both on a copy of the model instead of guessing.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from trainer.errors import UserError
from trainer.loss import nt_xent

BF16_MIN_GAIN = 1.15  # bf16 must beat fp32 by this factor to be picked: its small precision cost must buy speed


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _step_timer(model: nn.Module, device: torch.device, precision: str, size: int, pairs: int,
                channels_last: bool) -> Callable[[], float]:
    """A function timing one forward and backward pass of NT-Xent through a copy of `model` (its weights and
    BatchNorm statistics are left as they were) on random views of size x size; warmed up once already."""
    probe = copy.deepcopy(model).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    noise = torch.Generator(device=device).manual_seed(0)  # the run's own random stream stays untouched
    x = torch.randn(2 * pairs, 3, size, size, device=device, generator=noise).contiguous(memory_format=fmt)

    def once() -> float:
        started = time.perf_counter()
        with autocast(device, precision):
            z = probe(x)
        nt_xent(z[:pairs], z[pairs:]).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    once()
    return once


def step_seconds(model: nn.Module, device: torch.device, precision: str, size: int, pairs: int = 32,
                 channels_last: bool = True, steps: int = 2) -> float:
    """Seconds per image pair of a training step's forward and backward pass here: the fastest of `steps`
    timed steps, since other work on the machine can only slow a step down."""
    once = _step_timer(model, device, precision, size, pairs, channels_last)
    return min(once() for _ in range(steps)) / pairs


def pick_precision(requested: str, model: nn.Module, device: torch.device, size: int,
                   channels_last: bool = True, rounds: int = 5) -> tuple[str, str]:
    """The precision to train in, and why. `auto` is bf16 on CUDA GPUs that support it; on a CPU, bf16 only
    where it measured at least BF16_MIN_GAIN times faster than fp32 here: the two are timed in turns, `rounds`
    times each, and their medians compared, so that a burst of other work on the machine moves neither much."""
    if requested == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    if requested != "auto":
        return requested, "as asked"
    if device.type == "cuda":
        return ("bf16", "auto on CUDA") if torch.cuda.is_bf16_supported() else ("fp16", "auto on CUDA without bf16")
    timers = {p: _step_timer(model, device, p, size, 32, channels_last) for p in ("fp32", "bf16")}
    times: dict[str, list[float]] = {p: [] for p in timers}
    for _ in range(rounds):
        for p, once in timers.items():
            times[p].append(once())
    gain = statistics.median(times["fp32"]) / statistics.median(times["bf16"])
    choice = "bf16" if gain >= BF16_MIN_GAIN else "fp32"
    return choice, f"auto: bf16 measured {gain:.2f}x fp32 on this CPU (medians of {rounds})"


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
