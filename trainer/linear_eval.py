"""Evaluate a pretraining run's encoder by the standard protocols and report what the seeds report.

    python -m trainer.linear_eval --run runs/simclr                         # linear eval + kNN (headline)
    python -m trainer.linear_eval --run runs/simclr --random-init           # the floor: same protocol, untrained
    python -m trainer.linear_eval --run runs/simclr --label-fraction 0.1    # 10% of the labels, class-balanced
    python -m trainer.linear_eval --run runs/simclr --head mlp              # masterzero-hw/ssl-simclr's head
    python -m trainer.linear_eval --run runs/simclr --finetune              # the whole network trains
    python -m trainer.linear_eval --run runs/simclr --data-dir ~/data/other # transfer to another labelled set
    python -m trainer.linear_eval --run runs/simclr --val-fraction 0.1 --weight-decay 0 1e-5 1e-4

Frozen protocols extract the train and test features once (cached in RUN_DIR/features/) and train the head on
them: no epoch runs the encoder again, and the encoder, in eval mode with gradients off, cannot change.
Nothing is chosen on the test set: with --val-fraction the weight decay and the stopping epoch are chosen on a
class-balanced validation split of the training set; without it they are fixed in advance (the last epoch).

OUT (default RUN_DIR/eval, or RUN_DIR/eval-<variant> for random-init, fine-tuning and label fractions) gets
metrics.json (accuracies as fractions in [0, 1]), report.txt (percentages), predictions.csv (each test
image's label and top-3 classes with their probabilities), confusion.png, head_curves.png, retrieval.png (the
first test image of each class beside its nearest training images by the frozen features: the kNN's
neighbours) and, for frozen protocols, classifier.safetensors + classifier.json: the head the export step
bundles.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.cifar10 import is_cifar10_root
from contract.files import atomic_write
from trainer.classifier import finetune, train_head
from trainer.cli import build_parser, option
from trainer.config import Config
from trainer.data import ImageSet, balanced_indices, load_split
from trainer.device import pick_device
from trainer.errors import UserError
from trainer.features import cached_features, extract_features
from trainer.knn import knn_predict, topk_accuracy
from trainer.models import SimCLR
from trainer.plots import save_confusion, save_head_curves, save_retrieval_grid
from trainer.report import classification_metrics, format_report
from trainer.run_dir import RunDir

# Per protocol: epochs, peak learning rate, weight decay (linear: common practice; mlp: masterzero-hw/ssl-simclr;
# finetune: RDR2Blackwater/SimCLR-v1).
PROTOCOL_DEFAULTS = {"linear": (100, 0.1, 0.0), "mlp": (150, 0.2, 0.0), "finetune": (100, 1e-4, 0.0)}


@dataclass
class EvalOptions:
    run: str = option(None, "pretraining run directory (its config.json and checkpoints/)", required=True)
    checkpoint: str | None = option(None, "checkpoint to evaluate (default: the run's latest)")
    data_dir: str | None = option(None, "labelled data set with train/ and test/ splits (default: the run's "
                                  "--eval-data-dir, else its --data-dir); another one evaluates transfer")
    data_name: str | None = option(None, "what the data is called beside the numbers (reports, the bundle's "
                                   "manifest and model card), e.g. 'CIFAR-10 (JPEG q75 copy)' (default: CIFAR-10 "
                                   "for torchvision's copy, else the folder's name)")
    download: bool = option(True, "download CIFAR-10 into --data-dir when it holds no data")
    cache_dir: str = option("~/.cache/simclr-cifar", "where decoded image arrays are cached between runs")
    out: str | None = option(None, "output directory (default: RUN_DIR/eval, or RUN_DIR/eval-<variant>)")
    limit_train: int | None = option(None, "class-balanced subset of N training images, for quick runs (default: all)")
    limit_test: int | None = option(None, "class-balanced subset of N test images, for quick runs (default: all)")
    label_fraction: float = option(1.0, "fraction of the training labels used, class-balanced and seeded "
                                   "(e.g. 0.01, 0.1, 1.0)")
    val_fraction: float = option(0.0, "fraction of the training set held out to choose the weight decay and the "
                                 "stopping epoch (0: both fixed in advance)")
    head: str = option("linear", "linear, or mlp: masterzero-hw/ssl-simclr's Linear-ReLU-Dropout-Linear",
                       ("linear", "mlp"))
    hidden_dim: int = option(20480, "hidden size of the mlp head (masterzero-hw/ssl-simclr)")
    dropout: float = option(0.8, "dropout of the mlp head (masterzero-hw/ssl-simclr)")
    finetune: bool = option(False, "train the whole network with a linear head at a low learning rate "
                            "(RDR2Blackwater/SimCLR-v1), views cropped and flipped, instead of a head on frozen "
                            "features")
    random_init: bool = option(False, "evaluate a randomly initialised encoder of the run's architecture: the floor")
    flip_average: bool = option(False, "frozen features averaged over each image and its mirror image")
    epochs: int | None = option(None, "classifier epochs (default: linear 100, mlp 150, finetune 100)")
    batch_size: int = option(512, "classifier batch size")
    lr: float | None = option(None, "peak learning rate, cosine-decayed (default: linear 0.1 and mlp 0.2 with SGD "
                              "momentum 0.9 on standardised features; finetune 1e-4 with NAdam)")
    weight_decay: list[float] | None = option(None, "weight decay; several values are compared on the validation "
                                              "split (default: 0)")
    schedule_step: str = option("step", "step the learning-rate schedule every optimizer step or every epoch",
                                ("step", "epoch"))
    knn_k: int = option(200, "neighbours of the kNN evaluation (lightly's benchmark setting)")
    knn_temperature: float = option(0.1, "temperature of the kNN evaluation's weighted votes")
    device: str | None = option(None, "cpu or cuda (default: cuda when available)", ("cpu", "cuda"))
    seed: int = option(0, "seed of the splits, label fractions, head initialisation and batches")

    def __post_init__(self) -> None:
        checks = [
            (0 < self.label_fraction <= 1, "--label-fraction must be in (0, 1]"),
            (0 <= self.val_fraction < 1, "--val-fraction must be in [0, 1)"),
            (self.epochs is None or self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.knn_k >= 1, "--knn-k must be at least 1"),
            (self.hidden_dim >= 1, "--hidden-dim must be at least 1"),
            (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
            (not (self.finetune and self.head == "mlp"), "--finetune trains a linear head: drop --head mlp"),
            (len(self.weight_decay or [0]) == 1 or self.val_fraction > 0,
             "comparing several --weight-decay values needs a validation split: give --val-fraction"),
            (self.limit_train is None or self.limit_train >= 1, "--limit-train must be at least 1"),
            (self.limit_test is None or self.limit_test >= 1, "--limit-test must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @property
    def protocol(self) -> str:
        return "finetune" if self.finetune else self.head

    def resolved(self) -> tuple[int, float, list[float]]:
        """epochs, peak lr and weight-decay candidates, defaults filled in per protocol."""
        epochs, lr, wd = PROTOCOL_DEFAULTS[self.protocol]
        return self.epochs or epochs, self.lr if self.lr is not None else lr, self.weight_decay or [wd]

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        variant = [v for v, on in [("random-init", self.random_init), ("finetune", self.finetune),
                                   (f"labels{self.label_fraction:g}", self.label_fraction < 1)] if on]
        return RunDir(self.run).eval_dir(*variant)


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser(EvalOptions, "python -m trainer.linear_eval", __doc__).parse_args(argv))
    try:
        metrics = evaluate(EvalOptions(**args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(metrics["report"], end="")
    return 0


def evaluate(opts: EvalOptions) -> dict[str, Any]:
    """Run the protocol opts asks for, write OUT, and return the metrics (with the text report)."""
    run = RunDir(opts.run)
    config = run.read_config()
    device = pick_device(opts.device)
    encoder, source = load_encoder(run, config, opts)
    encoder = encoder.to(device)
    data_dir = opts.data_dir or config.eval_data_dir or config.data_dir
    train, test = _load_data(data_dir, opts, config)
    data_name = opts.data_name or data_name_of(data_dir)
    val_idx, train_idx = split_indices(train.labels, opts.val_fraction, opts.label_fraction, opts.seed)
    epochs, lr, decays = opts.resolved()

    encoder.requires_grad_(False).eval()  # frozen: no gradient reaches it and BatchNorm statistics stay put
    train_x, test_x = (cached_features(run.features, split, encoder, data.images, opts.flip_average,
                                       desc=f"features of {split} ({source})")
                       for split, data in (("train", train), ("test", test)))
    train_y, test_y = train.labels.to(device), test.labels.to(device)
    knn_scores = knn_predict(F.normalize(test_x, dim=1), F.normalize(train_x[train_idx], dim=1), train_y[train_idx],
                             len(train.classes), opts.knn_k, opts.knn_temperature)
    knn = topk_accuracy(knn_scores, test_y, (1, 5))

    search = []
    for wd in decays:
        settings = dict(epochs=epochs, lr=lr, weight_decay=wd, batch_size=opts.batch_size,
                        schedule_step=opts.schedule_step, seed=opts.seed)
        if opts.finetune:
            model, history = finetune(copy.deepcopy(encoder).requires_grad_(True), train, train_idx, val_idx,
                                      config.image_size, **settings)
        else:
            model, history = train_head(train_x[train_idx], train_y[train_idx], len(train.classes),
                                        val=(train_x[val_idx], train_y[val_idx]) if len(val_idx) else None,
                                        hidden_dim=opts.hidden_dim if opts.head == "mlp" else None,
                                        dropout=opts.dropout, **settings)
        best = max(history, key=lambda r: r.get("val_top1", 0.0)) if len(val_idx) else history[-1]
        search.append({"weight_decay": wd, "model": model, "history": history, "epoch": best["epoch"],
                       "val_top1": best.get("val_top1")})
    chosen = max(search, key=lambda s: s["val_top1"] or 0.0) if len(val_idx) else search[0]

    with torch.no_grad():  # the test set, scored once, by the choice made without it
        if opts.finetune:
            scores = chosen["model"][1](extract_features(chosen["model"][0], test.images, l2_normalize=False))
        else:
            scores = chosen["model"].eval()(test_x)
    metrics = classification_metrics(scores, test_y, train.classes)
    metrics.update(knn_top1=knn[1], knn_top5=knn[5], knn_k=opts.knn_k, knn_temperature=opts.knn_temperature)
    metrics["checkpoint"] = source
    metrics["protocol"] = {
        "name": opts.protocol, "encoder": "fine-tuned" if opts.finetune else "frozen",
        "data_dir": data_dir, "data_name": data_name,
        "train_images": len(train_idx), "val_images": len(val_idx), "test_images": len(test),
        "label_fraction": opts.label_fraction, "val_fraction": opts.val_fraction, "epochs": epochs,
        "stopping_epoch": chosen["epoch"], "batch_size": opts.batch_size, "lr": lr,
        "weight_decay": chosen["weight_decay"], "weight_decay_candidates": decays,
        "optimizer": "nadam" if opts.finetune else "sgd momentum 0.9", "schedule": f"cosine, per {opts.schedule_step}",
        "flip_average": opts.flip_average, "seed": opts.seed,
        **({"hidden_dim": opts.hidden_dim, "dropout": opts.dropout} if opts.head == "mlp" else {}),
    }
    metrics["validation"] = [{k: s[k] for k in ("weight_decay", "epoch", "val_top1")} for s in search] \
        if len(val_idx) else None
    metrics["history"] = chosen["history"]
    metrics["report"] = (f"{opts.protocol} evaluation of {source} on {data_name} ({data_dir})\n\n"
                         + format_report(metrics))
    _write_outputs(opts.out_dir(), metrics, chosen, train.classes, None if opts.finetune else train_x.shape[1],
                   opts)
    atomic_write(opts.out_dir() / "predictions.csv", predictions_csv(scores, test_y, train.classes))
    queries, neighbours, similarities = retrieval_examples(test_x, test_y, train_x[train_idx])
    bank = train_idx[neighbours.cpu()]
    save_retrieval_grid(test.subset(queries.cpu()), train.subset(bank.flatten()), similarities.cpu(),
                        opts.out_dir() / "retrieval.png", title=f"nearest training images by the frozen features "
                        f"of {source} (kNN top-1 {100 * knn[1]:.2f}%)")
    return metrics


def retrieval_examples(test_x: Tensor, test_y: Tensor, bank_x: Tensor, k: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """The first test image of each class (none chosen by its result), and the indices into bank_x and cosine
    similarities of its k most similar bank features, most similar first: the neighbours the kNN votes with."""
    queries = torch.stack([(test_y == c).nonzero()[0, 0] for c in test_y.unique()])
    similarities = F.normalize(test_x[queries], dim=1) @ F.normalize(bank_x, dim=1).T
    top = similarities.topk(min(k, len(bank_x)), dim=1)
    return queries, top.indices, top.values


def predictions_csv(scores: Tensor, labels: Tensor, classes: list[str], k: int = 3) -> str:
    """One row per test image, in the test split's order: its label, and the k most probable classes with
    their probabilities (softmax of scores): for looking at the errors, and for checking a served model against
    what the evaluation said."""
    k = min(k, len(classes))
    top = scores.float().softmax(dim=1).cpu().topk(k, dim=1)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "label"] + [f"{name}{i}" for i in range(1, k + 1) for name in ("top", "p")])
    for i, (label, probabilities, indices) in enumerate(zip(labels.tolist(), top.values.tolist(),
                                                            top.indices.tolist())):
        ranked = [(classes[c], f"{p:.4f}") for c, p in zip(indices, probabilities)]
        writer.writerow([i, classes[label], *(v for pair in ranked for v in pair)])
    return out.getvalue()


def load_encoder(run: RunDir, config: Config, opts: EvalOptions) -> tuple[nn.Module, str]:
    """The run's encoder with the weights of the checkpoint evaluated (or seeded random ones), and a name
    for what was loaded."""
    if opts.random_init:
        torch.manual_seed(opts.seed)
        return SimCLR(config.backbone, config.width).encoder, f"random initialisation (seed {opts.seed})"
    path = Path(opts.checkpoint) if opts.checkpoint else run.latest_checkpoint()
    model, _ = run.load_model(config, path)
    return model.encoder, run.relative(path)


def split_indices(labels: Tensor, val_fraction: float, label_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(validation, training) indices: a class-balanced validation split held out first, then a class-balanced
    label_fraction of the rest; both reproducible from seed."""
    everything = torch.arange(len(labels))
    val = balanced_indices(labels, round(val_fraction * len(labels)), seed) if val_fraction else everything[:0]
    rest = everything[~torch.isin(everything, val)]
    if label_fraction < 1:
        keep = max(1, round(label_fraction * len(rest)))
        rest = rest[balanced_indices(labels[rest], keep, seed + 1)]
    if not len(rest):
        raise UserError("no training images are left after the validation split and the label fraction")
    return val, rest


def data_name_of(root: str) -> str:
    """The evaluation data's name when none is given: CIFAR-10 for torchvision's copy, else the folder's name."""
    path = Path(root).expanduser()
    return "CIFAR-10" if is_cifar10_root(path) else path.resolve().name


def _load_data(root: str, opts: EvalOptions, config: Config) -> tuple[ImageSet, ImageSet]:
    kwargs = dict(image_size=config.image_size, download=opts.download, cache_dir=opts.cache_dir)
    train = load_split(root, "train", **kwargs)
    test = load_split(root, "test", **kwargs)
    if not train.labelled or test is None or not test.labelled:
        raise UserError(f"{root} needs labelled train/<class>/* and test/<class>/* splits to evaluate on "
                        f"(give a labelled set with --data-dir)")
    if test.classes != train.classes:
        raise UserError(f"{root}: the test split's classes ({', '.join(test.classes)}) differ from the training "
                        f"split's ({', '.join(train.classes)})")
    if opts.limit_train and opts.limit_train < len(train):
        train = train.subset(balanced_indices(train.labels, opts.limit_train, opts.seed))
    if opts.limit_test and opts.limit_test < len(test):
        test = test.subset(balanced_indices(test.labels, opts.limit_test, opts.seed))
    return train, test


def _write_outputs(out: Path, metrics: dict[str, Any], chosen: dict[str, Any], classes: list[str],
                   feature_dim: int | None, opts: EvalOptions) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if feature_dim is not None:  # a head on the frozen encoder: what the export step bundles
        from safetensors.torch import save as save_safetensors

        head = chosen["model"]
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        atomic_write(out / "classifier.safetensors", save_safetensors(state))
        spec = {"input_dim": feature_dim, "hidden_dims": [opts.hidden_dim] if opts.head == "mlp" else [],
                "classes": classes, "checkpoint": metrics["checkpoint"],
                "input": "the encoder's raw representation (feature standardisation is folded into the first layer)"}
        _write_json(out / "classifier.json", spec)
    _write_json(out / "metrics.json", {k: v for k, v in metrics.items() if k != "report"})
    atomic_write(out / "report.txt", metrics["report"])
    save_confusion(metrics["confusion"], classes, out / "confusion.png",
                   title=f"{opts.protocol}: top-1 {100 * metrics['top1']:.2f}%")
    save_head_curves(metrics["history"], out / "head_curves.png")


def _write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
