"""Frozen-feature extraction and the weighted kNN classifier (Wu et al. 2018).

The monitor's settings, k=200 and a vote temperature of 0.1, are lightly's CIFAR-10 benchmark's (leftthomas/SimCLR's
code divides by the loss temperature instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.augment import normalize, to_float


@torch.no_grad()
def extract_features(encoder: nn.Module, images: Tensor, batch_size: int = 512,
                     device: torch.device | str | None = None, l2_normalize: bool = True) -> Tensor:
    """Representations (N, D), float32, L2-normalised unless asked otherwise, of un-augmented uint8 images
    (N, 3, H, W).

    The encoder runs in eval mode (BatchNorm uses its running statistics) and its mode is restored after.
    """
    param = next(encoder.parameters())
    device = device or param.device
    was_training = encoder.training
    encoder.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = normalize(to_float(images[start:start + batch_size].to(device, non_blocking=True)))
        h = encoder(x.contiguous(memory_format=torch.channels_last)).float()  # fp32, as the service runs it
        chunks.append(F.normalize(h, dim=1) if l2_normalize else h)
    encoder.train(was_training)
    return torch.cat(chunks)


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
