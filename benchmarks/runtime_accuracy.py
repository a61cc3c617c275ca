"""What each runtime's rounding costs in accuracy: kNN top-1 (and the bundle's classifier's top-1, when it has
one) on the CIFAR-10 test set, embedded by each runtime, side by side in one run.

    python -m benchmarks.runtime_accuracy --bundle models/reference --data-dir ~/data/cifar10

The kNN protocol is the evaluation's (k=200, cosine similarity, votes weighted by exp(similarity / 0.1)); its
bank is the training set (or --bank class-balanced images of it) embedded by the same runtime. Issue 16's
rule: the int8 graph is offered only where it loses less than 0.5 points against torch-fp32.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from contract.bundle import load_bundle
from service.build_index import decode_entries, find_images
from service.model import RUNTIMES, Model


def embed(model: Model, images: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unit representations and class probabilities (or None) of uint8 images (N, S, S, 3)."""
    units, probabilities = [], []
    for start in range(0, len(images), batch):
        out = model.infer(torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2))
        units.append(out.unit)
        probabilities.append(out.probabilities)
    return torch.cat(units), torch.cat(probabilities) if probabilities[0] is not None else None


def knn_top1(queries: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor, classes: int, k: int = 200,
             temperature: float = 0.1) -> torch.Tensor:
    """Predicted class per query (the evaluation's weighted kNN)."""
    predictions = []
    for start in range(0, len(queries), 1024):
        similarity, index = (queries[start:start + 1024] @ bank.T).topk(min(k, len(bank)), dim=1)
        votes = torch.zeros(len(similarity), classes).scatter_add_(1, labels[index], (similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="CIFAR-10, either layout")
    parser.add_argument("--bank", type=int, help="class-balanced training images as the kNN bank (default: all)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, help="default: all the bundle offers")
    args = parser.parse_args()
    model = Model(load_bundle(args.bundle))
    splits = {}
    for split in ("train", "test"):
        entries = find_images(args.data_dir, [split], download=False)
        if split == "train" and args.bank:
            entries = entries[::max(1, len(entries) // args.bank)][:args.bank]  # every n-th: classes stay balanced
        names = sorted({e.class_name for e in entries})
        labels = torch.tensor([names.index(e.class_name) for e in entries])
        images, _ = decode_entries(entries, model.size, 10**8)
        splits[split] = images, labels, names
    (bank_images, bank_labels, names), (test_images, test_labels, _) = splits["train"], splits["test"]
    head_classes = model.bundle.manifest.classes
    print(f"{model.bundle.name}: {len(test_labels)} test images, kNN bank of {len(bank_labels)}")
    print(f"{'runtime':<11} {'kNN top-1':>9} {'linear top-1':>12} {'seconds':>8}")
    for runtime in args.runtimes or model.runtimes:
        model.use(runtime)
        started = time.perf_counter()
        bank, _ = embed(model, bank_images)
        test, probabilities = embed(model, test_images)
        knn = (knn_top1(test, bank, bank_labels, len(names)) == test_labels).float().mean().item()
        linear = "-"
        if probabilities is not None:
            predicted = [head_classes[i] for i in probabilities.argmax(dim=1).tolist()]
            linear = f"{100 * np.mean([p == names[t] for p, t in zip(predicted, test_labels.tolist())]):.2f}%"
        print(f"{runtime:<11} {100 * knn:8.2f}% {linear:>12} {time.perf_counter() - started:8.0f}")


if __name__ == "__main__":
    main()
