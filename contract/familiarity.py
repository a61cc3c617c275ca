"""How like the training images an image is: the one score the evaluation fits a threshold on and the service
reports (contract.bundle.Familiarity describes the bundle's part)."""

from __future__ import annotations

from torch import Tensor


def familiarity(unit: Tensor, bank: Tensor, k: int) -> Tensor:
    """Per row of unit (N, D), L2-normalised representations: its cosine similarity to its k-th most similar row
    of bank (M, D), unit training representations. The k-th nearest neighbour score of Sun et al., "Out-of-
    distribution detection with deep nearest neighbors" (ICML 2022), as a similarity: low is unfamiliar."""
    return (unit @ bank.T).topk(min(k, len(bank)), dim=1).values[:, -1]
