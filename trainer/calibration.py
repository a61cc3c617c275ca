"""Calibrated probabilities and the familiarity threshold, fitted on images held out of the head's training.

Temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017): one scalar T, the
probabilities softmax(logits / T), T chosen to minimise the negative log-likelihood of held-out labels. It
changes no prediction, only how sure the probabilities say the head is. The expected calibration error (ECE,
15 equal-width confidence bins, the same paper's) measures the gap between confidence and accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ECE_BINS = 15


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T > 0 minimising the mean NLL of softmax(logits / T) on these (held-out) logits and labels."""
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t): positive, well scaled
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.detach().exp().item()


def reliability(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per equal-width bin of top-1 confidence: its share of the images, their mean confidence and accuracy."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    which = (confidence.double() * bins).ceil().clamp(1, bins).long() - 1  # (0, 1/bins] is bin 0
    count = torch.bincount(which, minlength=bins).double()

    def mean(values: Tensor) -> Tensor:
        return torch.bincount(which, values, minlength=bins) / count.clamp(min=1)

    return {"share": (count / len(labels)).tolist(), "confidence": mean(confidence.double()).tolist(),
            "accuracy": mean(correct).tolist()}


def expected_calibration_error(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Sum over confidence bins of (share of images) x |accuracy - mean confidence|."""
    r = reliability(probabilities, labels, bins)
    return sum(s * abs(a - c) for s, a, c in zip(r["share"], r["accuracy"], r["confidence"]))


def acceptance_threshold(distances: Tensor, accepted: float = 0.95) -> float:
    """The distance within which the share accepted of these held-out in-distribution images lie."""
    return float(torch.quantile(distances.double().cpu(), accepted))
