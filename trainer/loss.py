"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy, with the global batch as negatives."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


class _AllGather(torch.autograd.Function):
    """all_gather whose backward hands each process the gradient of its own slice summed over processes:
    every process's loss reads every slice. (torch.distributed.nn's all_gather does the same but is
    deprecated in recent torch releases.)"""

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, ...]:
        gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, x.contiguous())
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:
        summed = torch.stack(grads)
        dist.all_reduce(summed)
        return summed[dist.get_rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate x over all processes (rank order); gradients flow back to each process's own slice."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(_AllGather.apply(x), dim=0)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent loss of the positive pairs (z1[i], z2[i]).

    z1, z2: (B, D) projections of two views of the same B images on this process. Under
    torch.distributed the negatives are all 2 x B x world_size views of the global batch: every anchor's
    2N-2 negatives, as in SimCLR. Returns the mean over this process's 2B anchors; averaging that over
    processes (as DDP does with gradients) gives the loss of the global batch.
    """
    b = z1.shape[0]
    local = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D); float32 before the norm, even under autocast
    every = torch.cat([gather_with_grad(local[:b]), gather_with_grad(local[b:])])  # (2N, D): all z1, all z2
    n = every.shape[0] // 2
    rank = dist.get_rank() if n != b else 0
    logits = local @ every.T / temperature  # (2B, 2N)
    rows = torch.arange(2 * b, device=z1.device)
    own = rank * b + rows % b + (rows >= b) * n  # each anchor's own column in `every`
    positive = (own + n) % (2 * n)  # its other view
    logits[rows, own] = float("-inf")  # an anchor is not its own negative
    return F.cross_entropy(logits, positive)
