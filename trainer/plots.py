"""PNG figures a person would rather look at than read: training curves, augmented views, confusion matrices,
reliability diagrams, retrieval grids.

    python -m trainer.plots views --data-dir ~/data/cifar10 --out views.png   # originals beside two views
    python -m trainer.plots curves --run runs/simclr                          # loss / lr / kNN curves
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from contract.files import atomic_write  # noqa: E402
from contract.preprocess import to_float  # noqa: E402
from trainer.augment import simclr_view  # noqa: E402
from trainer.data import ImageSet  # noqa: E402
from trainer.errors import UserError  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl. A last line cut short (the run killed, or the disk full, while it was
    appended) is left out: a resume logs that epoch again."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n < len(lines):
                raise UserError(f"{path}, line {n}, is not JSON ({e.msg}): the run's log is damaged") from None
    return rows


def save_curves(rows: list[dict], out: Path) -> None:
    """Loss, learning rate and kNN accuracy against epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    trained = [r for r in rows if "loss" in r]  # epoch 0 holds only the untrained network's kNN accuracy
    epochs = [r["epoch"] for r in trained]
    axes[0].plot(epochs, [r["loss"] for r in trained])
    axes[0].set(title="NT-Xent loss", xlabel="epoch")
    axes[1].plot(epochs, [r["lr"] for r in trained])
    axes[1].set(title="learning rate (end of epoch)", xlabel="epoch")
    knn = [(r["epoch"], 100 * r["knn_top1"]) for r in rows if "knn_top1" in r]
    if knn:
        axes[2].plot(*zip(*knn), marker="o")
    axes[2].set(title="kNN top-1 accuracy (%)", xlabel="epoch")
    sizes = [r.get("image_size") for r in trained]
    for ax in axes:
        ax.grid(alpha=0.3)
        for before, after, epoch in zip(sizes, sizes[1:], epochs[1:]):  # where a resolution schedule changes size
            if before and after and before != after:
                ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
                ax.annotate(f"{before} -> {after} px", (epoch - 0.5, 0.95), xycoords=("data", "axes fraction"),
                            fontsize=8, color="grey")
    fig.tight_layout()
    atomic_write(Path(out), lambda f: fig.savefig(f, format="png", dpi=100))  # a watcher never sees half a file
    plt.close(fig)


def save_confusion(confusion: list[list[int]], classes: list[str], out: Path, title: str = "") -> None:
    """Confusion matrix, rows normalised to the fraction of each true class, counts printed in the cells."""
    counts = torch.tensor(confusion, dtype=torch.float64)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    if len(classes) <= 20:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def save_head_curves(history: list[dict], out: Path) -> None:
    """The classifier's training loss and, when a validation split was held out, its validation accuracy."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in history]
    axes[0].plot(epochs, [r["loss"] for r in history])
    axes[0].set(title="classifier training loss", xlabel="epoch")
    if "val_top1" in history[0]:
        axes[1].plot(epochs, [100 * r["val_top1"] for r in history])
    axes[1].set(title="validation top-1 accuracy (%)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def save_reliability(reliability: dict[str, dict[str, list[float]]], out: Path, title: str = "") -> None:
    """Reliability diagrams, one per entry (before / after the temperature): per confidence bin, the accuracy of
    its images against their mean confidence (on the diagonal where the probabilities mean what they say), the
    bins' shares of the images beneath."""
    fig, axes = plt.subplots(2, len(reliability), figsize=(4.5 * len(reliability), 6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for column, (name, r) in enumerate(reliability.items()):
        bins = len(r["share"])
        centres = [(i + 0.5) / bins for i in range(bins)]
        used = [i for i, share in enumerate(r["share"]) if share > 0]
        top, bottom = axes[0, column], axes[1, column]
        top.bar([centres[i] for i in used], [r["accuracy"][i] for i in used], width=1 / bins, edgecolor="black",
                alpha=0.7, label="accuracy")
        top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
        top.plot([r["confidence"][i] for i in used], [r["accuracy"][i] for i in used], "o", color="black",
                 markersize=3, label="mean confidence")
        ece = sum(s * abs(a - c) for s, a, c in zip(r["share"], r["accuracy"], r["confidence"]))
        top.set(title=f"{name}: ECE {100 * ece:.2f}%", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(centres, r["share"], width=1 / bins, edgecolor="black", alpha=0.7)
        bottom.set(xlabel="confidence (top-1 probability)", ylabel="share of images")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def save_retrieval_grid(queries: ImageSet, neighbours: ImageSet, similarities: torch.Tensor, out: Path,
                        title: str = "") -> None:
    """One row per query image: the query, then its neighbours (Q x K of them, row by row) with their cosine
    similarity, framed green where their class is the query's and red where it is not."""
    rows, k = similarities.shape
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.3 * (k + 1), 1.45 * rows), squeeze=False)
    for row in range(rows):
        cells = [(queries.images[row], queries.labels[row], None)] + [
            (neighbours.images[row * k + j], neighbours.labels[row * k + j], similarities[row, j]) for j in range(k)]
        for col, (image, label, similarity) in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            name = queries.classes[label]
            if similarity is None:
                ax.set_title(f"query: {name}" if row == 0 else name, fontsize=8, fontweight="bold")
            else:
                ax.set_title(f"{name} {similarity:.2f}", fontsize=7)
                for spine in ax.spines.values():
                    spine.set(color="tab:green" if label == queries.labels[row] else "tab:red", linewidth=2.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def save_view_grid(images: torch.Tensor, out: Path, size: int = 32, blur: bool = False, seed: int = 0) -> None:
    """One row per image: the original, then two independently augmented views."""
    g = torch.Generator().manual_seed(seed)
    columns = [to_float(images), simclr_view(images, g, size, blur), simclr_view(images, g, size, blur)]
    if images.shape[-1] != size:
        columns[0] = torch.nn.functional.interpolate(columns[0], size=size, mode="bilinear", antialias=True)
    fig, axes = plt.subplots(len(images), 3, figsize=(4.5, 1.5 * len(images)), squeeze=False)
    for col, title in enumerate(["original", "view 1", "view 2"]):
        axes[0, col].set_title(title, fontsize=9)
        for row in range(len(images)):
            axes[row, col].imshow(columns[col][row].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from trainer.data import load_split

    parser = argparse.ArgumentParser(prog="python -m trainer.plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    views = sub.add_parser("views", help="a grid of training images beside two SimCLR views of each")
    views.add_argument("--data-dir", required=True, help="any data set the trainer accepts")
    views.add_argument("--out", default="views.png", help="PNG to write (default: views.png)")
    views.add_argument("--count", type=int, default=8, help="images in the grid (default: 8)")
    views.add_argument("--image-size", type=int, default=32, help="view resolution (default: 32)")
    views.add_argument("--blur", action="store_true", help="include the Gaussian blur")
    views.add_argument("--seed", type=int, default=0, help="which images and views (default: 0)")
    curves = sub.add_parser("curves", help="loss, learning-rate and kNN curves of a run")
    curves.add_argument("--run", required=True, help="run directory with metrics.jsonl")
    args = parser.parse_args(argv)
    try:
        if args.command == "views":
            data = load_split(args.data_dir, "train", args.image_size, download=False)
            pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:args.count]
            save_view_grid(data.images[pick], Path(args.out), args.image_size, args.blur, args.seed)
            print(f"wrote {args.out}")
        else:
            metrics = Path(args.run) / "metrics.jsonl"
            if not metrics.is_file():
                raise UserError(f"{metrics} does not exist")
            save_curves(read_metrics(metrics), Path(args.run) / "curves.png")
            print(f"wrote {Path(args.run) / 'curves.png'}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
