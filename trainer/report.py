"""Classification metrics of a test set (overall and per class) and their text report in
masterzero-hw/ssl-simclr's format."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def classification_metrics(scores: Tensor, labels: Tensor, classes: list[str],
                           ks: tuple[int, ...] = (1, 3, 5)) -> dict[str, Any]:
    """Top-k accuracies (fractions in [0, 1]) overall and per class, with the counts behind them, and the
    confusion matrix (rows: true class, columns: predicted class). scores (N, C) rank the classes."""
    labels = labels.cpu()
    ranked = scores.float().cpu().argsort(dim=1, descending=True)
    hits = ranked == labels.view(-1, 1)
    n, c = len(labels), len(classes)
    metrics: dict[str, Any] = {"units": "fraction", "count": n}
    for k in ks:
        correct = int(hits[:, :k].any(dim=1).sum())
        metrics[f"top{k}_correct"], metrics[f"top{k}"] = correct, correct / n
    per_class = []
    for i, name in enumerate(classes):
        mine = labels == i
        count = int(mine.sum())
        row: dict[str, Any] = {"class": i, "name": name, "count": count}
        for k in ks:
            correct = int(hits[mine, :k].any(dim=1).sum())
            row[f"top{k}_correct"], row[f"top{k}"] = correct, correct / count if count else 0.0
        per_class.append(row)
    metrics["per_class"] = per_class
    metrics["confusion"] = torch.bincount(labels * c + ranked[:, 0], minlength=c * c).view(c, c).tolist()
    return metrics


def format_report(metrics: dict[str, Any], per_class_ks: tuple[int, ...] = (1, 3)) -> str:
    """Seed 000's report: per-class lines for each k in per_class_ks, then the network's top-1/3/5."""
    lines = []
    for k in per_class_ks:
        for row in metrics["per_class"]:
            lines.append(f"Top {k} Accuracy of class {row['class']:2d} ({row['name']}) is "
                         f"{row[f'top{k}_correct']}/{row['count']}  {100 * row[f'top{k}']:.2f}%")
        lines.append(_overall(metrics, k))
        lines.append("")
    lines += [_overall(metrics, k) for k in (1, 3, 5) if f"top{k}" in metrics and k not in per_class_ks]
    if "knn_top1" in metrics:
        lines.append(f"kNN (k={metrics['knn_k']}, temperature {metrics['knn_temperature']}) accuracy of the network "
                     f"on the {metrics['count']} test images: top-1 {100 * metrics['knn_top1']:.2f} %, "
                     f"top-5 {100 * metrics['knn_top5']:.2f} %")
    return "\n".join(lines).rstrip() + "\n"


def _overall(metrics: dict[str, Any], k: int) -> str:
    return (f"Top {k} accuracy of the network on the {metrics['count']} test images: "
            f"{metrics[f'top{k}_correct']}/{metrics['count']}  {100 * metrics[f'top{k}']:.2f} %")
