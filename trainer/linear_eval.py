"""Evaluate a pretraining run's encoder by the standard protocols and report what the seeds report.

    python -m trainer.linear_eval --run runs/simclr                         # linear eval + kNN (headline)
    python -m trainer.linear_eval --run runs/simclr --random-init           # the floor: same protocol, untrained
    python -m trainer.linear_eval --run runs/simclr --label-fraction 0.1    # 10% of the labels, class-balanced
    python -m trainer.linear_eval --run runs/simclr --head mlp              # masterzero-hw/ssl-simclr's head
    python -m trainer.linear_eval --run runs/simclr --finetune              # the whole network trains
    python -m trainer.linear_eval --run runs/simclr --data-dir ~/data/other # transfer to another labelled set
    python -m trainer.linear_eval --run runs/simclr --val-fraction 0.1 --weight-decay 0 1e-5 1e-4
    python -m trainer.linear_eval --bundle models/reference --data-dir ~/data/cifar10 --out eval-ref  # a bundle

Frozen protocols extract the train and test features once (cached in RUN_DIR/features/) and train the head on
them: no epoch runs the encoder again, and the encoder, in eval mode with gradients off, cannot change.
Nothing is chosen on the test set: with --val-fraction the weight decay and the stopping epoch are chosen on a
class-balanced validation split of the training set; without it they are fixed in advance (the last epoch).
For a head on frozen features, --calibration-fraction (10% by default) of the training images are held out of
the head's training too: the probabilities' temperature and the familiarity threshold (how far from the training
images an image may be, contract.familiarity) are fitted on them; the test set measures both after.

OUT (default RUN_DIR/eval, or RUN_DIR/eval-<variant> for random-init, fine-tuning and label fractions) gets
metrics.json (accuracies as fractions in [0, 1]), report.txt (percentages), predictions.csv (each test
image's label and top-3 classes with their calibrated probabilities), confusion.png, head_curves.png,
retrieval.png (the first test image of each class beside its nearest training images by the frozen features:
the kNN's neighbours) and, for frozen protocols, classifier.safetensors + classifier.json (the head, with its
temperature), reliability.png (confidence against accuracy on the test set, before and after the temperature)
and familiarity.safetensors: what the export step bundles. metrics.json and classifier.json are versioned files
of contract.evaluation; the data's path is recorded without the home directory (~/...).
"""

from __future__ import annotations

import copy
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contract.cifar10 import is_cifar10_root
from contract.device import pick_device
from contract.familiarity import distance, gaussian
from contract.files import atomic_write, recorded_path
from trainer.calibration import acceptance_threshold, expected_calibration_error, fit_temperature, reliability
from trainer.classifier import finetune, train_head
from trainer.cli import build_parser, option
from trainer.data import ImageSet, balanced_indices, load_split
from trainer.errors import UserError
from trainer.features import cached_features, extract_features, weights_digest
from trainer.knn import knn_predict, topk_accuracy
from trainer.models import SimCLR
from trainer.plots import save_confusion, save_head_curves, save_reliability, save_retrieval_grid
from trainer.report import classification_metrics, format_report
from trainer.run_dir import RunDir
from trainer.synthetic import synthetic_sets

if TYPE_CHECKING:
    from contract.evaluation import EvaluationMetrics

# Per protocol: epochs, peak learning rate, weight decay (linear: common practice; mlp: masterzero-hw/ssl-simclr;
# finetune: RDR2Blackwater/SimCLR-v1).
PROTOCOL_DEFAULTS = {"linear": (100, 0.1, 0.0), "mlp": (150, 0.2, 0.0), "finetune": (100, 1e-4, 0.0)}


@dataclass
class EvalOptions:
    run: str | None = option(None, "pretraining run directory (its config.json and checkpoints/)")
    bundle: str | None = option(None, "a model bundle to evaluate instead of a run (its encoder; needs --data-dir "
                                "and --out)")
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
    calibration_fraction: float = option(0.1, "fraction of the training set held out of a frozen-feature head's "
                                         "training to fit its temperature and the familiarity threshold (0: none)")
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
            ((self.run is None) != (self.bundle is None), "give one of --run and --bundle"),
            (self.bundle is None or (self.data_dir and self.out), "--bundle needs --data-dir and --out"),
            (self.bundle is None or not (self.checkpoint or self.random_init),
             "--checkpoint and --random-init go with --run"),
            (0 <= self.calibration_fraction < 0.5, "--calibration-fraction must be in [0, 0.5)"),
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

    @property
    def calibrates(self) -> bool:
        """Whether this evaluation holds out calibration images: heads on frozen features only."""
        return self.calibration_fraction > 0 and not self.finetune

    def resolved(self) -> tuple[int, float, list[float]]:
        """epochs, peak lr and weight-decay candidates, defaults filled in per protocol."""
        epochs, lr, wd = PROTOCOL_DEFAULTS[self.protocol]
        return self.epochs or epochs, self.lr if self.lr is not None else lr, self.weight_decay or [wd]

    def out_dir(self) -> Path:
        if self.out:  # always given with --bundle
            return Path(self.out)
        variant = [v for v, on in [("random-init", self.random_init), ("finetune", self.finetune),
                                   (f"labels{self.label_fraction:g}", self.label_fraction < 1)] if on]
        return RunDir(self.run).eval_dir(*variant)


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser(EvalOptions, "python -m trainer.linear_eval", __doc__).parse_args(argv))
    try:
        _, report = evaluate(EvalOptions(**args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report, end="")
    return 0


@dataclass
class Source:
    """What is evaluated: an encoder, its name in the outputs, the input size, the data it was trained on and
    where its features are cached."""

    encoder: nn.Module
    name: str
    image_size: int
    data_dir: str | None
    features: Path


def evaluate(opts: EvalOptions) -> tuple[EvaluationMetrics, str]:
    """Run the protocol opts asks for, write OUT, and return the metrics and the text report."""
    # pydantic's models here, not with the module: importing trainer.linear_eval needs no pydantic
    # (tests/contract/test_boundaries.py); the GPU run installs it to write these files (gpu_prepare.sh)
    from contract.bundle import Protocol
    from contract.evaluation import EvaluationMetrics

    device = pick_device(opts.device, UserError)
    source = _source(opts)
    encoder = source.encoder.to(device)
    data_dir = opts.data_dir or source.data_dir
    train, test = _load_data(data_dir, opts, source.image_size)
    data_name = opts.data_name or data_name_of(data_dir)
    val_idx, cal_idx, train_idx = split_indices(train.labels, opts.val_fraction, opts.label_fraction, opts.seed,
                                                opts.calibration_fraction if opts.calibrates else 0.0)
    epochs, lr, decays = opts.resolved()

    encoder.requires_grad_(False).eval()  # frozen: no gradient reaches it and BatchNorm statistics stay put
    train_x, test_x = (cached_features(source.features, split, encoder, data.images, opts.flip_average,
                                       desc=f"features of {split} ({source.name})")
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
                                      source.image_size, **settings)
        else:
            model, history = train_head(train_x[train_idx], train_y[train_idx], len(train.classes),
                                        val=(train_x[val_idx], train_y[val_idx]) if len(val_idx) else None,
                                        hidden_dim=opts.hidden_dim if opts.head == "mlp" else None,
                                        dropout=opts.dropout, **settings)
        best = max(history, key=lambda r: r.get("val_top1", 0.0)) if len(val_idx) else history[-1]
        search.append({"weight_decay": wd, "model": model, "history": history, "epoch": best["epoch"],
                       "val_top1": best.get("val_top1")})
    chosen = max(search, key=lambda s: s["val_top1"] or 0.0) if len(val_idx) else search[0]

    calibration = familiar = None
    with torch.no_grad():  # the test set, scored once, by the choice made without it
        if opts.finetune:
            scores = chosen["model"][1](extract_features(chosen["model"][0], test.images, l2_normalize=False))
        else:
            head = chosen["model"].eval()
            scores = head(test_x)
            if len(cal_idx):
                calibration = _calibrate(head(train_x[cal_idx]), train_y[cal_idx], scores, test_y)
                unlike = {name: extract_features(encoder, torch.from_numpy(images), l2_normalize=False)
                          for name, images in synthetic_sets(500, source.image_size, opts.seed).items()}
                familiar = _familiarity(train_x, train_y, train_idx, cal_idx, test_x, unlike, len(train.classes))
    temperature = calibration["temperature"] if calibration else 1.0
    data_dir = recorded_path(data_dir)  # as the files record it: no home directory
    protocol = Protocol(
        name=opts.protocol, encoder="fine-tuned" if opts.finetune else "frozen", data_dir=data_dir,
        data_name=data_name, train_images=len(train_idx), val_images=len(val_idx), calibration_images=len(cal_idx),
        test_images=len(test), label_fraction=opts.label_fraction, val_fraction=opts.val_fraction, epochs=epochs,
        stopping_epoch=chosen["epoch"], batch_size=opts.batch_size, lr=lr, weight_decay=chosen["weight_decay"],
        weight_decay_candidates=decays, optimizer="nadam" if opts.finetune else "sgd momentum 0.9",
        schedule=f"cosine, per {opts.schedule_step}", flip_average=opts.flip_average, seed=opts.seed,
        **({"hidden_dim": opts.hidden_dim, "dropout": opts.dropout} if opts.head == "mlp" else {}))
    metrics = EvaluationMetrics(
        **classification_metrics(scores, test_y, train.classes), knn_top1=knn[1], knn_top5=knn[5], knn_k=opts.knn_k,
        knn_temperature=opts.knn_temperature, checkpoint=source.name, protocol=protocol,
        validation=[{k: s[k] for k in ("weight_decay", "epoch", "val_top1")} for s in search] if len(val_idx)
        else None,
        calibration={k: v for k, v in calibration.items() if k != "reliability"} if calibration else None,
        familiarity={k: v for k, v in familiar.items() if k not in ("means", "precision")} if familiar else None,
        history=chosen["history"])
    report = (f"{opts.protocol} evaluation of {source.name} on {data_name} ({data_dir})\n\n"
              + format_report(metrics.model_dump(by_alias=True)) + _held_out_report(calibration, familiar))
    out = opts.out_dir()
    _write_outputs(out, metrics, report, chosen, train.classes, None if opts.finetune else train_x.shape[1], opts,
                   temperature, weights_digest(source.encoder))
    if calibration:
        save_reliability(calibration["reliability"], out / "reliability.png",
                         title=f"{data_name} test set, temperature {temperature:.2f}")
    if familiar:
        from safetensors.torch import save as save_safetensors

        atomic_write(out / "familiarity.safetensors", save_safetensors({k: familiar[k].contiguous()
                                                                        for k in ("means", "precision")}))
    atomic_write(out / "predictions.csv", predictions_csv(scores / temperature, test_y, train.classes))
    queries, neighbours, similarities = retrieval_examples(test_x, test_y, train_x[train_idx])
    bank = train_idx[neighbours.cpu()]
    save_retrieval_grid(test.subset(queries.cpu()), train.subset(bank.flatten()), similarities.cpu(),
                        out / "retrieval.png", title=f"nearest training images by the frozen features "
                        f"of {source.name} (kNN top-1 {100 * knn[1]:.2f}%)")
    return metrics, report


def _held_out_report(calibration: dict[str, Any] | None, familiar: dict[str, Any] | None) -> str:
    if not calibration:
        return ""
    lines = [f"Temperature {calibration['temperature']:.3f}, fitted on {calibration['images']} held-out training "
             f"images: expected calibration error on the test images {100 * calibration['test_ece_before']:.2f} % "
             f"before, {100 * calibration['test_ece_after']:.2f} % after"]
    if familiar:
        rejected = ", ".join(f"{name} {100 * rate:.1f} %" for name, rate in familiar["rejected"].items())
        lines.append(f"Familiarity: distance threshold {familiar['threshold']:.2f} (Mahalanobis, to the nearest class "
                     f"mean of {familiar['images']} training images): takes in "
                     f"{100 * familiar['heldout_accepted']:.1f} % of the held-out images, "
                     f"{100 * familiar['test_accepted']:.1f} % of the test images; flags {rejected}")
    return "\n".join(lines) + "\n"


def _calibrate(held_out: Tensor, held_out_y: Tensor, test_logits: Tensor, test_y: Tensor) -> dict[str, Any]:
    """The temperature fitted on the held-out logits, and what it does on the test set."""
    temperature = fit_temperature(held_out, held_out_y)
    before, after = (F.softmax(test_logits.double() / t, dim=1).cpu() for t in (1.0, temperature))
    return {"images": len(held_out_y), "temperature": temperature,
            "test_ece_before": expected_calibration_error(before, test_y.cpu()),
            "test_ece_after": expected_calibration_error(after, test_y.cpu()),
            "test_nll_before": F.nll_loss(before.log(), test_y.cpu()).item(),
            "test_nll_after": F.nll_loss(after.log(), test_y.cpu()).item(),
            "reliability": {"before": reliability(before, test_y.cpu()), "after": reliability(after, test_y.cpu())}}


def _familiarity(train_x: Tensor, train_y: Tensor, train_idx: Tensor, cal_idx: Tensor, test_x: Tensor,
                 unlike: dict[str, Tensor], num_classes: int) -> dict[str, Any]:
    """The class means and shared precision of the head's training representations (contract.familiarity), the
    distance within which 95% of the held-out calibration images fall; the test set's acceptance at it, and the
    share of each set of unit representations of images unlike the training data (unlike) beyond it."""
    means, precision = gaussian(train_x[train_idx].cpu(), train_y[train_idx].cpu(), num_classes)
    far = lambda x: distance(F.normalize(x.float().cpu(), dim=1), means, precision)  # noqa: E731
    held_out = far(train_x[cal_idx])
    threshold = acceptance_threshold(held_out)
    return {"means": means, "precision": precision, "images": len(train_idx), "threshold": threshold,
            "heldout_images": len(cal_idx), "heldout_accepted": (held_out <= threshold).double().mean().item(),
            "test_accepted": (far(test_x) <= threshold).double().mean().item(),
            "rejected": {name: (far(x) > threshold).double().mean().item() for name, x in unlike.items()}}


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


def _source(opts: EvalOptions) -> Source:
    """The run's encoder with the weights of the checkpoint evaluated (or seeded random ones), or the bundle's."""
    if opts.bundle:
        from contract.bundle import BundleError, load_bundle  # pydantic: only here, not on the run path

        try:
            bundle = load_bundle(opts.bundle)
        except BundleError as e:
            raise UserError(str(e)) from None
        return Source(bundle.encoder, bundle.name, bundle.manifest.input.size, None, Path(opts.out) / "features")
    run = RunDir(opts.run)
    config = run.read_config()
    data_dir = config.eval_data_dir or config.data_dir
    if opts.random_init:
        torch.manual_seed(opts.seed)
        return Source(SimCLR(config.backbone, config.width).encoder, f"random initialisation (seed {opts.seed})",
                      config.image_size, data_dir, run.features)
    path = Path(opts.checkpoint) if opts.checkpoint else run.latest_checkpoint()
    model, _ = run.load_model(config, path)
    return Source(model.encoder, run.relative(path), config.image_size, data_dir, run.features)


def split_indices(labels: Tensor, val_fraction: float, label_fraction: float, seed: int,
                  calibration_fraction: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(validation, calibration, training) indices: class-balanced calibration and validation splits held out
    first, then a class-balanced label_fraction of the rest; all reproducible from seed."""
    everything = torch.arange(len(labels))
    calibration = (balanced_indices(labels, round(calibration_fraction * len(labels)), seed + 2)
                   if calibration_fraction else everything[:0])
    rest = everything[~torch.isin(everything, calibration)]
    val = rest[balanced_indices(labels[rest], round(val_fraction * len(labels)), seed)] if val_fraction \
        else everything[:0]
    rest = rest[~torch.isin(rest, val)]
    if label_fraction < 1:
        keep = max(1, round(label_fraction * len(rest)))
        rest = rest[balanced_indices(labels[rest], keep, seed + 1)]
    if not len(rest):
        raise UserError("no training images are left after the held-out splits and the label fraction")
    return val, calibration, rest


def data_name_of(root: str) -> str:
    """The evaluation data's name when none is given: CIFAR-10 for torchvision's copy, else the folder's name."""
    path = Path(root).expanduser()
    return "CIFAR-10" if is_cifar10_root(path) else path.resolve().name


def _load_data(root: str, opts: EvalOptions, image_size: int) -> tuple[ImageSet, ImageSet]:
    kwargs = dict(image_size=image_size, download=opts.download, cache_dir=opts.cache_dir)
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


def _write_outputs(out: Path, metrics: EvaluationMetrics, report: str, chosen: dict[str, Any], classes: list[str],
                   feature_dim: int | None, opts: EvalOptions, temperature: float, encoder_sha256: str) -> None:
    from contract.evaluation import HEAD_FILE, METRICS_FILE, EvaluationHead

    out.mkdir(parents=True, exist_ok=True)
    if feature_dim is not None:  # a head on the frozen encoder: what the export step bundles
        from safetensors.torch import save as save_safetensors

        head = chosen["model"]
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        atomic_write(out / "classifier.safetensors", save_safetensors(state))
        EvaluationHead(input_dim=feature_dim, hidden_dims=[opts.hidden_dim] if opts.head == "mlp" else [],
                       classes=classes, checkpoint=metrics.checkpoint, encoder_sha256=encoder_sha256,
                       temperature=temperature).write(out / HEAD_FILE)
    metrics.write(out / METRICS_FILE)
    atomic_write(out / "report.txt", report)
    save_confusion(metrics.confusion, classes, out / "confusion.png",
                   title=f"{opts.protocol}: top-1 {100 * metrics.top1:.2f}%")
    save_head_curves(metrics.history, out / "head_curves.png")


if __name__ == "__main__":
    sys.exit(main())
