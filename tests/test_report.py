import re

import torch

from trainer.report import classification_metrics, format_report

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_metrics(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    scores = torch.randn(n, 10, generator=g)
    scores[torch.arange(n), labels] += 1.0  # better than chance, far from perfect
    return classification_metrics(scores, labels, CLASSES), scores, labels


def test_counts_add_up_and_topk_is_monotone():
    metrics, scores, labels = random_metrics()
    assert sum(r["count"] for r in metrics["per_class"]) == metrics["count"] == 1000
    for k in (1, 3, 5):
        assert sum(r[f"top{k}_correct"] for r in metrics["per_class"]) == metrics[f"top{k}_correct"]
    assert metrics["top1"] <= metrics["top3"] <= metrics["top5"] <= 1
    assert all(r["top1"] <= r["top3"] <= r["top5"] for r in metrics["per_class"])
    assert metrics["top1_correct"] == int((scores.argmax(1) == labels).sum())
    confusion = torch.tensor(metrics["confusion"])
    assert confusion.sum() == 1000 and confusion.trace() == metrics["top1_correct"]
    assert confusion.sum(1).tolist() == [r["count"] for r in metrics["per_class"]]


def test_report_has_seed_000_lines():
    metrics, _, _ = random_metrics()
    metrics.update(knn_top1=0.5, knn_top5=0.9, knn_k=200, knn_temperature=0.1)
    lines = format_report(metrics).splitlines()
    per_class = [line for line in lines if line.startswith("Top 1 Accuracy of class")]
    assert len(per_class) == 10
    assert re.fullmatch(r"Top 1 Accuracy of class  0 \(airplane\) is \d+/\d+  \d+\.\d\d%", per_class[0])
    row = metrics["per_class"][3]
    assert (f"Top 3 Accuracy of class  3 (cat) is {row['top3_correct']}/{row['count']}  "
            f"{100 * row['top3']:.2f}%") in lines
    assert (f"Top 3 accuracy of the network on the 1000 test images: {metrics['top3_correct']}/1000  "
            f"{100 * metrics['top3']:.2f} %") in lines
    assert any(line.startswith("Top 5 accuracy of the network") for line in lines)
    assert any(line.startswith("kNN (k=200") and "top-1 50.00 %" in line for line in lines)
