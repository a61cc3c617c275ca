"""Optimizers (SGD, LARS, Adam) with SimCLR's parameter groups, and the warmup-cosine schedule."""

from __future__ import annotations

import math
import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017), as SimCLR uses it.

    Per parameter: g <- g + wd * p; then, unless the group says `lars_exclude`, g <- g * eta * |p| / |g|;
    then momentum SGD. SimCLR excludes BatchNorm and bias parameters from both decay and adaptation.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if not group["lars_exclude"]:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm,
                                        torch.ones_like(p_norm))
                    grad.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool) -> list[dict]:
    """Two groups: weights of conv and linear layers, and the rest (BatchNorm scales and shifts, biases),
    the latter without weight decay when exclude_bn_bias."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": others, "weight_decay": 0.0 if exclude_bn_bias else weight_decay},
    ]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """sgd and adam decay every parameter, as the CIFAR recipes they come from; lars follows SimCLR."""
    if name == "lars":
        weights, others = parameter_groups(model, weight_decay, exclude_bn_bias=True)
        return LARS([weights, {**others, "lars_exclude": True}], lr=lr)
    groups = parameter_groups(model, weight_decay, exclude_bn_bias=False)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def loss_scale(name: str) -> float:
    """What the optimizer's loss is multiplied by. SimCLR's reference sums its two directions' losses, twice our
    mean over 2B anchors; LARS's trust ratio cancels the gradient's scale but not the weight decay added to it,
    so under LARS the loss is doubled to give weight decay the reference's relative strength."""
    return 2.0 if name == "lars" else 1.0


class WarmupCosine:
    """LR multiplier per step: linear from 1/warmup to 1 over warmup_steps, then cosine to 0 at total_steps.

    An object rather than a closure so that a time-budgeted run can re-plan its length, and so that the
    scheduler's state_dict (which keeps a callable object's attributes) carries the plan into checkpoints."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimisation step (not per epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps))


def replan(scheduler: torch.optim.lr_scheduler.LambdaLR, total_steps: int) -> None:
    """Make the schedule end at total_steps from now on; the warm-up is cut to half the run where it was longer."""
    schedule = scheduler.lr_lambdas[0]
    schedule.total_steps = total_steps
    schedule.warmup_steps = min(schedule.warmup_steps, total_steps // 2)


def follow_config(scheduler: torch.optim.lr_scheduler.LambdaLR, planned: list[dict], total_steps: int) -> None:
    """After a checkpoint is loaded into a run: the schedule ends at total_steps (its warm-up kept, cut to half
    the run where longer, as replan does) and each group takes the peak lr and weight decay in planned (the
    groups' as build_optimizer and build_scheduler set them from the config), so that flags given with --resume
    (more --epochs, another --lr or --wd) hold from there on; the progress is the checkpoint's."""
    replan(scheduler, total_steps)
    scheduler.base_lrs = [group["initial_lr"] for group in planned]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, fresh in zip(scheduler.optimizer.param_groups, planned):
        group.update(initial_lr=fresh["initial_lr"], weight_decay=fresh["weight_decay"],
                     lr=fresh["initial_lr"] * factor)
