"""The weighted kNN classifier on frozen features (Wu et al. 2018).

The monitor's settings, k=200 and a vote temperature of 0.1, are lightly's CIFAR-10 benchmark's (leftthomas/SimCLR's
code divides by the loss temperature instead).
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def knn_predict(queries: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """Class scores (Q, C) from the k most cosine-similar bank features, each voting exp(sim / temperature).

    queries (Q, D) and bank (N, D) are L2-normalised; the scores sort the classes best first.
    """
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(queries), chunk):
        sim = queries[start:start + chunk] @ bank.T  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, bank_labels[top_idx], (top_sim / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k best-scored classes, for each k."""
    ranked = scores.argsort(dim=1, descending=True)
    hits = ranked == labels.view(-1, 1)
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}
