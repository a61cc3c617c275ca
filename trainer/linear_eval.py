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
metrics.json (accuracies as fractions in [0, 1]), report.txt (percentages), confusion.png, head_curves.png and,
for frozen protocols, classifier.safetensors + classifier.json: the head the export step bundles.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from trainer import checkpoint
from trainer.augment import normalize, random_crop_flip
from trainer.config import Config, OneLineErrorParser, make_config
from trainer.data import ImageSet, balanced_indices, load_split
from trainer.errors import UserError
from trainer.heads import classifier_head, fold_standardization
from trainer.knn import extract_features, knn_predict, topk_accuracy
from trainer.models import SimCLR
from trainer.plots import save_confusion, save_head_curves
from trainer.report import classification_metrics, format_report

# Per protocol: epochs, peak learning rate, weight decay (linear: common practice; mlp: masterzero-hw/ssl-simclr;
# finetune: RDR2Blackwater/SimCLR-v1).
PROTOCOL_DEFAULTS = {"linear": (100, 0.1, 0.0), "mlp": (150, 0.2, 0.0), "finetune": (100, 1e-4, 0.0)}


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class EvalOptions:
    run: str = _opt(None, "pretraining run directory (its config.json and checkpoints/)", required=True)
    checkpoint: str | None = _opt(None, "checkpoint to evaluate (default: the run's latest)")
    data_dir: str | None = _opt(None, "labelled data set with train/ and test/ splits (default: the run's "
                                "--eval-data-dir, else its --data-dir); another one evaluates transfer")
    download: bool = _opt(True, "download CIFAR-10 into --data-dir when it holds no data")
    cache_dir: str = _opt("~/.cache/simclr-cifar", "where decoded image arrays are cached between runs")
    out: str | None = _opt(None, "output directory (default: RUN_DIR/eval, or RUN_DIR/eval-<variant>)")
    limit_train: int | None = _opt(None, "class-balanced subset of N training images, for quick runs (default: all)")
    limit_test: int | None = _opt(None, "class-balanced subset of N test images, for quick runs (default: all)")
    label_fraction: float = _opt(1.0, "fraction of the training labels used, class-balanced and seeded "
                                 "(e.g. 0.01, 0.1, 1.0)")
    val_fraction: float = _opt(0.0, "fraction of the training set held out to choose the weight decay and the "
                               "stopping epoch (0: both fixed in advance)")
    head: str = _opt("linear", "linear, or mlp: masterzero-hw/ssl-simclr's Linear-ReLU-Dropout-Linear",
                     choices=("linear", "mlp"))
    hidden_dim: int = _opt(20480, "hidden size of the mlp head (masterzero-hw/ssl-simclr)")
    dropout: float = _opt(0.8, "dropout of the mlp head (masterzero-hw/ssl-simclr)")
    finetune: bool = _opt(False, "train the whole network with a linear head at a low learning rate "
                          "(RDR2Blackwater/SimCLR-v1), views cropped and flipped, instead of a head on frozen "
                          "features")
    random_init: bool = _opt(False, "evaluate a randomly initialised encoder of the run's architecture: the floor")
    flip_average: bool = _opt(False, "frozen features averaged over each image and its mirror image")
    epochs: int | None = _opt(None, "classifier epochs (default: linear 100, mlp 150, finetune 100)")
    batch_size: int = _opt(512, "classifier batch size")
    lr: float | None = _opt(None, "peak learning rate, cosine-decayed (default: linear 0.1 and mlp 0.2 with SGD "
                            "momentum 0.9 on standardised features; finetune 1e-4 with NAdam)")
    weight_decay: list[float] | None = _opt(None, "weight decay; several values are compared on the validation "
                                            "split (default: 0)", nargs="+")
    schedule_step: str = _opt("step", "step the learning-rate schedule every optimizer step or every epoch",
                              choices=("step", "epoch"))
    knn_k: int = _opt(200, "neighbours of the kNN evaluation (lightly's benchmark setting)")
    knn_temperature: float = _opt(0.1, "temperature of the kNN evaluation's weighted votes")
    device: str | None = _opt(None, "cpu or cuda (default: cuda when available)", choices=("cpu", "cuda"))
    seed: int = _opt(0, "seed of the splits, label fractions, head initialisation and batches")

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
        return Path(self.run) / "-".join(["eval", *variant])


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m trainer.linear_eval", description=__doc__,
                                argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(EvalOptions):
        flag, meta = "--" + f.name.replace("_", "-"), dict(f.metadata)
        help_text = meta.pop("help")
        if "(default:" not in help_text and not meta.get("required"):
            help_text += f" (default: {f.default})"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        kind = {"str": str, "int": int, "float": float}.get(f.type.split(" ")[0].removeprefix("list[").rstrip("]"))
        choices = meta.get("choices")
        metavar = "{" + ",".join(choices) + "}" if choices else ("N" if kind is int else "X" if kind is float else "PATH")
        parser.add_argument(flag, type=kind, metavar=metavar, help=help_text, **meta)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    try:
        metrics = evaluate(EvalOptions(**args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(metrics["report"], end="")
    return 0


def evaluate(opts: EvalOptions) -> dict[str, Any]:
    """Run the protocol opts asks for, write OUT, and return the metrics (with the text report)."""
    run_dir = Path(opts.run)
    config = _run_config(run_dir)
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU")
    encoder, source = load_encoder(run_dir, config, opts)
    encoder = encoder.to(device)
    train, test = _load_data(opts, config)
    val_idx, train_idx = split_indices(train.labels, opts.val_fraction, opts.label_fraction, opts.seed)
    epochs, lr, decays = opts.resolved()

    encoder.requires_grad_(False).eval()  # frozen: no gradient reaches it and BatchNorm statistics stay put
    train_x = _cached_features(run_dir, source, opts, "train", train, encoder)
    test_x = _cached_features(run_dir, source, opts, "test", test, encoder)
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
        "data_dir": opts.data_dir or config.eval_data_dir or config.data_dir,
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
    metrics["report"] = (f"{opts.protocol} evaluation of {source} on {metrics['protocol']['data_dir']}\n\n"
                         + format_report(metrics))
    _write_outputs(opts.out_dir(), metrics, chosen, train.classes, None if opts.finetune else train_x.shape[1],
                   opts, run_dir)
    return metrics


def load_encoder(run_dir: Path, config: Config, opts: EvalOptions) -> tuple[nn.Module, str]:
    """The run's encoder with the weights of the checkpoint evaluated (or seeded random ones), and a name
    for what was loaded."""
    torch.manual_seed(opts.seed)
    model = SimCLR(config.backbone, config.width, config.proj_hidden_dim, config.proj_dim)
    if opts.random_init:
        return model.encoder, f"random initialisation (seed {opts.seed})"
    path = Path(opts.checkpoint) if opts.checkpoint else checkpoint.latest(run_dir)
    state = checkpoint.load(path)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"checkpoint {path} does not fit the run's {config.backbone} (width {config.width}): "
                        f"{str(e).splitlines()[0]}") from None
    return model.encoder, _relative(path, run_dir)


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


def train_head(x: Tensor, y: Tensor, num_classes: int, *, epochs: int, lr: float, weight_decay: float,
               batch_size: int, schedule_step: str, seed: int, hidden_dim: int | None = None, dropout: float = 0.8,
               val: tuple[Tensor, Tensor] | None = None) -> tuple[nn.Sequential, list[dict]]:
    """A classifier trained on features x (standardised, with SGD and a cosine schedule), returned folded to
    take raw features, with one history row per epoch. With val, the epoch of best validation accuracy is kept."""
    torch.manual_seed(seed)
    g = torch.Generator(device=x.device).manual_seed(seed)
    mean, std = x.mean(dim=0), (x.var(dim=0) + 1e-5).sqrt()  # as BatchNorm: nearly dead channels stay small
    standardise = lambda f: (f - mean) / std  # noqa: E731
    xs = standardise(x)
    head = classifier_head(x.shape[1], num_classes, hidden_dim, dropout).to(x.device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = math.ceil(len(x) / batch_size)
    scheduler = cosine_schedule(optimizer, epochs * steps if schedule_step == "step" else epochs)
    history, best_state, best_acc = [], None, -1.0
    for epoch in tqdm(range(1, epochs + 1), desc="classifier", unit="epoch", leave=False, mininterval=1):
        head.train()
        order = torch.randperm(len(x), generator=g, device=x.device)
        loss_sum = torch.zeros((), device=x.device)
        lrs = []
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(head(xs[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if schedule_step == "step":
                scheduler.step()
            loss_sum += loss.detach() * len(idx)
        if schedule_step == "epoch":
            scheduler.step()
        row = {"epoch": epoch, "loss": loss_sum.item() / len(x), "lr_first": lrs[0], "lr_last": lrs[-1]}
        if val is not None:
            head.eval()
            with torch.no_grad():
                row["val_top1"] = (head(standardise(val[0])).argmax(dim=1) == val[1]).float().mean().item()
            if row["val_top1"] > best_acc:
                best_acc, best_state = row["val_top1"], copy.deepcopy(head.state_dict())
        history.append(row)
    if best_state is not None:
        head.load_state_dict(best_state)
    return fold_standardization(head.eval(), mean, std), history


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay from the optimizer's lr to 0 over `total` scheduler steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))


def finetune(encoder: nn.Module, data: ImageSet, train_idx: Tensor, val_idx: Tensor, image_size: int, *,
             epochs: int, lr: float, weight_decay: float, batch_size: int, schedule_step: str,
             seed: int) -> tuple[nn.Sequential, list[dict]]:
    """Seed 003's protocol: encoder and a linear head trained together with NAdam on cropped, flipped views.
    Returns nn.Sequential(encoder, head) in eval mode; with a validation split, its best epoch's weights."""
    device = next(encoder.parameters()).device
    torch.manual_seed(seed)
    g = torch.Generator(device=device).manual_seed(seed)
    head = nn.Linear(encoder.feature_dim, len(data.classes)).to(device)
    net = nn.Sequential(encoder, head)
    optimizer = torch.optim.NAdam(net.parameters(), lr=lr, weight_decay=weight_decay)
    images, labels = data.images.to(device), data.labels.to(device)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    steps = math.ceil(len(train_idx) / batch_size)
    scheduler = cosine_schedule(optimizer, epochs * steps if schedule_step == "step" else epochs)
    history, best_state, best_acc = [], None, -1.0
    for epoch in tqdm(range(1, epochs + 1), desc="fine-tuning", unit="epoch", leave=False):
        net.train()
        order = train_idx[torch.randperm(len(train_idx), generator=g, device=device)]
        loss_sum, lrs = torch.zeros((), device=device), []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x = normalize(random_crop_flip(images[idx], g, image_size, scale=(0.5, 1.0)))
            loss = F.cross_entropy(net(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if schedule_step == "step":
                scheduler.step()
            loss_sum += loss.detach() * len(idx)
        if schedule_step == "epoch":
            scheduler.step()
        row = {"epoch": epoch, "loss": loss_sum.item() / len(order), "lr_first": lrs[0], "lr_last": lrs[-1]}
        if len(val_idx):
            with torch.no_grad():
                scores = head(extract_features(encoder, images[val_idx], l2_normalize=False))
            row["val_top1"] = (scores.argmax(dim=1) == labels[val_idx]).float().mean().item()
            if row["val_top1"] > best_acc:
                best_acc, best_state = row["val_top1"], copy.deepcopy(net.state_dict())
        history.append(row)
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), history


def _run_config(run_dir: Path) -> Config:
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a pretraining run: it has no config.json")
    try:
        return make_config(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def _load_data(opts: EvalOptions, config: Config) -> tuple[ImageSet, ImageSet]:
    root = opts.data_dir or config.eval_data_dir or config.data_dir
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


def _cached_features(run_dir: Path, source: str, opts: EvalOptions, split: str, data: ImageSet,
                     encoder: nn.Module) -> Tensor:
    """Raw representations of a split, extracted once per (weights, images, flip averaging) and kept in
    RUN_DIR/features/ so that other heads, label fractions and seeds reuse them."""
    weights = hashlib.sha256()
    for tensor in encoder.state_dict().values():
        weights.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    images = hashlib.sha256(data.images.numpy().tobytes()).hexdigest()
    key = hashlib.sha256(f"{weights.hexdigest()} {images} {opts.flip_average}".encode()).hexdigest()[:24]
    path = run_dir / "features" / f"{split}-{key}.npz"
    device = next(encoder.parameters()).device
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return torch.from_numpy(z["features"]).to(device)
        except (OSError, ValueError, KeyError):  # a damaged cache is recomputed, not trusted
            path.unlink(missing_ok=True)
    with tqdm(total=len(data), desc=f"features of {split} ({source})", unit="img", leave=False) as bar:
        chunks = []
        for start in range(0, len(data), 2048):
            batch = data.images[start:start + 2048].to(device)
            f = extract_features(encoder, batch, l2_normalize=False)
            if opts.flip_average:
                f = (f + extract_features(encoder, batch.flip(-1), l2_normalize=False)) / 2
            chunks.append(f)
            bar.update(len(batch))
        features = torch.cat(chunks)
    buffer = io.BytesIO()
    np.savez(buffer, features=features.cpu().numpy())
    checkpoint.atomic_write(path, lambda file: file.write(buffer.getvalue()))
    return features


def _write_outputs(out: Path, metrics: dict[str, Any], chosen: dict[str, Any], classes: list[str],
                   feature_dim: int | None, opts: EvalOptions, run_dir: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if feature_dim is not None:  # a head on the frozen encoder: what the export step bundles
        from safetensors.torch import save as save_safetensors

        head = chosen["model"]
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        checkpoint.atomic_write(out / "classifier.safetensors", lambda f: f.write(save_safetensors(state)))
        spec = {"input_dim": feature_dim, "hidden_dims": [opts.hidden_dim] if opts.head == "mlp" else [],
                "classes": classes, "checkpoint": metrics["checkpoint"],
                "input": "the encoder's raw representation (feature standardisation is folded into the first layer)"}
        _write_json(out / "classifier.json", spec)
    _write_json(out / "metrics.json", {k: v for k, v in metrics.items() if k != "report"})
    checkpoint.atomic_write(out / "report.txt", lambda f: f.write(metrics["report"].encode()))
    save_confusion(metrics["confusion"], classes, out / "confusion.png",
                   title=f"{opts.protocol}: top-1 {100 * metrics['top1']:.2f}%")
    save_head_curves(metrics["history"], out / "head_curves.png")


def _write_json(path: Path, value: Any) -> None:
    checkpoint.atomic_write(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


if __name__ == "__main__":
    sys.exit(main())
