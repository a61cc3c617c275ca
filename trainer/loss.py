"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy, with the global batch as negatives."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate x over all processes (rank order); gradients flow back to each process's own slice."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent loss of the positive pairs (z1[i], z2[i]).

    z1, z2: (B, D) projections of two views of the same B images on this process. Under
    torch.distributed the negatives are all 2 x B x world_size views of the global batch: every anchor's
    2N-2 negatives, as in SimCLR. Returns the mean over this process's 2B anchors; averaging that over
    processes (as DDP does with gradients) gives the loss of the global batch.
    """
    b = z1.shape[0]
    local = F.normalize(torch.cat([z1, z2]), dim=1).float()  # (2B, D); float32 logits even under autocast
    every = torch.cat([gather_with_grad(local[:b]), gather_with_grad(local[b:])])  # (2N, D): all z1, all z2
    n = every.shape[0] // 2
    rank = dist.get_rank() if n != b else 0
    logits = local @ every.T / temperature  # (2B, 2N)
    rows = torch.arange(2 * b, device=z1.device)
    own = rank * b + rows % b + (rows >= b) * n  # each anchor's own column in `every`
    positive = (own + n) % (2 * n)  # its other view
    logits[rows, own] = float("-inf")  # an anchor is not its own negative
    return F.cross_entropy(logits, positive)
