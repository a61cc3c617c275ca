"""Classifier heads for frozen representations, and folding feature standardisation into them."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def classifier_head(in_dim: int, num_classes: int, hidden_dim: int | None = None, dropout: float = 0.8) -> nn.Sequential:
    """A linear classifier, or masterzero-hw/ssl-simclr's Linear - ReLU - Dropout - Linear when hidden_dim is given."""
    if hidden_dim is None:
        return nn.Sequential(nn.Linear(in_dim, num_classes))
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))


@torch.no_grad()
def fold_standardization(head: nn.Sequential, mean: Tensor, std: Tensor) -> nn.Sequential:
    """A copy of head that takes raw features: folded(x) == head((x - mean) / std).

    Heads train faster on standardised features; folding the affine map into the first Linear lets the
    saved head (and the service) read the encoder's raw representation with no extra statistics.
    """
    folded = copy.deepcopy(head)
    first = folded[0]
    first.weight.div_(std)
    first.bias.sub_(first.weight @ mean)
    return folded
