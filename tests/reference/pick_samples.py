"""Pick the CIFAR-10 test images that tests/service/test_reference_bundle.py checks the committed bundle against.

    python tests/reference/pick_samples.py --evaluation ~/eval-reference --data-dir ~/data/cifar10

For each class, the first test image (classified right, where one is) whose evaluated top 3 are apart (the first
leads the second by --margin, the second the third and the third the rest of the probability by --order-margin, so
that float16 weights or another runtime can neither reorder them nor let a fourth class in), saved losslessly as PNG
(the decoded pixels the evaluation saw), and expected.json with what the evaluation's predictions.csv says of each:
label, top 3 and their probabilities.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from PIL import Image

from contract.files import atomic_write
from trainer.data import load_split

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluation", type=Path, required=True,
                        help="the reference's evaluation folder (python -m trainer.linear_eval --out)")
    parser.add_argument("--data-dir", type=Path, required=True, help="the CIFAR-10 copy it was evaluated on")
    parser.add_argument("--margin", type=float, default=0.3, help="least lead of top-1 over top-2 (probability)")
    parser.add_argument("--order-margin", type=float, default=0.05,
                        help="least lead of top-2 over top-3, and of top-3 over all the other classes together")
    args = parser.parse_args()
    with open(args.evaluation / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = load_split(args.data_dir, "test", cache_dir=None, download=False)
    if test is None or len(rows) != len(test):
        raise SystemExit(f"{args.evaluation}/predictions.csv is not of {args.data_dir}'s test split")
    for old in HERE.glob("*.png"):
        old.unlink()
    expected = {}
    for name in test.classes:
        candidates = [r for r in rows if r["label"] == name and apart(*(float(r[f"p{i}"]) for i in (1, 2, 3)), args)]
        row = next((r for r in candidates if r["top1"] == name), candidates[0])  # one classified right if any
        file = f"{int(row['index']):05d}-{name}.png"
        Image.fromarray(test.images[int(row["index"])].permute(1, 2, 0).numpy()).save(HERE / file)
        expected[file] = {"index": int(row["index"]), "label": name, "top3": [row[f"top{i}"] for i in (1, 2, 3)],
                          "p": [float(row[f"p{i}"]) for i in (1, 2, 3)]}
    atomic_write(HERE / "expected.json", json.dumps(expected, indent=2) + "\n")
    print(f"{len(expected)} images in {HERE}: {sum(e['label'] == e['top3'][0] for e in expected.values())} "
          f"classified right by the evaluation")


def apart(p1: float, p2: float, p3: float, args: argparse.Namespace) -> bool:
    rest = 1 - p1 - p2 - p3  # the fourth class has at most this
    return p1 - p2 >= args.margin and p2 - p3 >= args.order_margin and p3 - rest >= args.order_margin


if __name__ == "__main__":
    main()
