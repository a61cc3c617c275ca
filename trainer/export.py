"""Export a pretraining run as a model bundle (contract.bundle), the service's only input from the trainer.

    python -m trainer.export --run runs/simclr --out bundles/r18                 # the evaluated checkpoint
    python -m trainer.export --run runs/simclr --out bundles/r18 --checkpoint runs/simclr/checkpoints/epoch_0100.pt
    python -m trainer.export --bundle bundles/r18 --evaluation eval-r18 --data-dir ~/data/cifar10 \
        --out bundles/r18-v2 --int8-calibration 512            # a bundle again: a new head, new graphs and checks

BUNDLE_DIR gets the encoder and projector, the classifier, its temperature and the familiarity bank when the
evaluation (RUN_DIR/eval, or --evaluation for a bundle) evaluated the same weights, the ONNX graphs and, for each
fast runtime, its accuracy and agreement with fp32 on the evaluation's test set, and manifest.json, written last
(contract/bundle.py describes each file); then README.md, the model card (trainer/model_card.py), and the
evaluation's reliability diagram.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import Tensor, nn

from contract.bundle import (CLASSIFIER, ENCODER, FAMILIARITY, ONNX_FP32, ONNX_INT8, PROJECTOR, Architecture,
                             BundleError, Familiarity, InputSpec, Manifest, Metrics, OnnxGraphs, Projection,
                             RuntimeCheck, Training, load_bundle, load_weights, read_manifest, write_bundle)
from contract.evaluation import (HEAD_FILE, METRICS_FILE, EvaluationError, EvaluationFile, EvaluationHead,
                                 EvaluationMetrics)
from contract.files import atomic_write, recorded_path
from contract.images import RESIZE
from contract.networks import classifier_head
from contract.preprocess import CIFAR_MEAN, CIFAR_STD
from trainer import provenance
from trainer.cli import OneLineErrorParser
from trainer.config import recorded_paths
from trainer.data import ImageSet, balanced_subset, load_split
from trainer.errors import UserError
from trainer.features import weights_digest
from trainer.knn import knn_predict, topk_accuracy
from trainer.model_card import RELIABILITY, model_card
from trainer.onnx_export import OPSET, InferenceGraph, export_graph, quantize_int8, run_graph
from trainer.run_dir import RunDir


@dataclass
class Source:
    """The networks and what the manifest says of their training, from a run's checkpoint or from a bundle."""

    encoder: nn.Module
    projector: nn.Module
    architecture: Architecture
    input: InputSpec
    classes: list[str]
    training: Training
    name: str  # what an evaluation of these weights calls them (its metrics' "checkpoint")
    cache_dir: str | None
    data_dir: str | None  # int8 calibration images come from its training split


def export(run_dir: str | Path, out: str | Path, checkpoint_file: str | Path | None = None, onnx: bool = True,
           int8_calibration: int = 0, half: bool = False) -> Manifest:
    """Write the bundle of run_dir's checkpoint (default: the one RUN_DIR/eval evaluated, else the latest) into
    out and return its manifest. With onnx, the inference also goes in as an ONNX graph, and with
    int8_calibration N > 0 as an int8 graph calibrated on N class-balanced training images of the run (and, for
    an evaluated run, checked against the fp32 graph on its test set). With half, the safetensors hold float16,
    and the graphs compute with those same rounded weights."""
    run = RunDir(run_dir)
    config = run.read_config()
    evaluation = run.eval_dir()
    evaluated = _read(EvaluationHead, evaluation / HEAD_FILE) if (evaluation / HEAD_FILE).is_file() else None
    if checkpoint_file is None:
        checkpoint_file = run.resolve(evaluated.checkpoint) if evaluated else run.latest_checkpoint()
    checkpoint_file = Path(checkpoint_file)
    if evaluated and run.resolve(evaluated.checkpoint).resolve() != checkpoint_file.resolve():
        raise UserError(f"{evaluation} evaluated {evaluated.checkpoint}, not {checkpoint_file}: evaluate "
                        f"that checkpoint first (python -m trainer.linear_eval --checkpoint ...) or export the "
                        f"evaluated one")
    model, state = run.load_model(config, checkpoint_file)
    if evaluated and evaluated.encoder_sha256 not in (None, weights_digest(model.encoder)):
        raise UserError(f"{checkpoint_file} holds other weights than {evaluation} evaluated under that name (it was "
                        f"saved again since: a stop inside an epoch, then the epoch's end): evaluate it again "
                        f"(python -m trainer.linear_eval --run {run_dir})")
    projection = model.projector
    source = Source(
        model.encoder, model.projector,
        Architecture(backbone=config.backbone, width=config.width, stem="cifar", representation_dim=model.feature_dim,
                     projection=Projection(hidden_dim=projection[0].out_features,
                                           out_dim=projection[3].out_features), classifier=None),
        InputSpec(size=config.image_size, mean=CIFAR_MEAN, std=CIFAR_STD, resize=RESIZE),
        list(state.get("classes") or []),
        Training(epochs=config.epochs, checkpoint_epoch=state["epoch"], checkpoint=run.relative(checkpoint_file),
                 batch_size=config.batch_size, optimizer=config.optimizer, lr=config.peak_lr, weight_decay=config.wd,
                 temperature=config.temperature, data_dir=recorded_path(config.data_dir),  # older runs': absolute
                 recipe=recorded_paths(config.to_dict()),
                 **provenance.summary(run, state["epoch"])),
        run.relative(checkpoint_file), config.cache_dir, config.data_dir)
    return _write(source, evaluation if evaluated else None, Path(out), onnx, int8_calibration, half)


def export_bundle(bundle_dir: str | Path, out: str | Path, evaluation: str | Path | None = None,
                  data_dir: str | None = None, onnx: bool = True, int8_calibration: int = 0) -> Manifest:
    """Write bundle_dir's networks as a bundle again into out (its own folder too): its training record as it was
    (its paths as recorded today: no home directory), the head and metrics of `evaluation` (python -m
    trainer.linear_eval --bundle's output) where given, else its own, and the ONNX graphs and runtime checks made
    anew (int8 calibrated on data_dir's training split)."""
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as e:
        raise UserError(str(e)) from None
    manifest = bundle.manifest
    if evaluation is None and manifest.metrics and bundle.classifier is not None:
        raise UserError(f"{bundle_dir}'s own head has no evaluation folder to re-read: give --evaluation, the output "
                        f"of python -m trainer.linear_eval --bundle {bundle_dir}")
    trained = manifest.training
    training = trained.model_copy(update={"data_dir": recorded_path(trained.data_dir),
                                          "recipe": trained.recipe and recorded_paths(trained.recipe)})
    source = Source(bundle.encoder, bundle.projector, manifest.architecture.model_copy(update={"classifier": None}),
                    manifest.input, manifest.classes, training, bundle.name, None, data_dir)
    if int8_calibration and not data_dir:
        raise UserError("--int8-calibration with --bundle needs --data-dir: its training images calibrate the graph")
    return _write(source, Path(evaluation) if evaluation else None, Path(out), onnx, int8_calibration,
                  manifest.weights_dtype == "float16")


def _write(source: Source, evaluation: Path | None, out: Path, onnx: bool, int8_calibration: int,
           half: bool) -> Manifest:
    weights = {ENCODER: source.encoder.state_dict(), PROJECTOR: source.projector.state_dict()}
    classes, metrics, head, familiarity = source.classes, None, None, None
    architecture = source.architecture
    if evaluation is not None:
        evaluated = _read(EvaluationHead, evaluation / HEAD_FILE)
        if evaluated.checkpoint != source.name:
            raise UserError(f"{evaluation} evaluated {evaluated.checkpoint}, not {source.name}: evaluate these "
                            f"weights first (python -m trainer.linear_eval)")
        classes, classifier = evaluated.classes, evaluated.spec
        architecture = architecture.model_copy(update={"classifier": classifier})
        head = classifier_head(architecture.representation_dim, len(classes), classifier.hidden_dims)
        weights[CLASSIFIER] = load_weights(head, evaluation / CLASSIFIER, UserError).state_dict()
        figures = _read(EvaluationMetrics, evaluation / METRICS_FILE)
        metrics = figures.bundled()
        metrics.protocol.data_dir = recorded_path(metrics.protocol.data_dir)  # older evaluations': absolute
        familiarity = _familiarity(evaluation, figures.familiarity, weights)
    manifest = Manifest(architecture=architecture, input=source.input, classes=classes, metrics=metrics,
                        training=source.training, familiarity=familiarity,
                        weights_dtype="float16" if half else "float32")
    graphs = {}
    if onnx:
        if half:  # the graphs compute with the weights the bundle holds, as its torch networks do
            with torch.no_grad():
                for tensor in (t for state in weights.values() for t in state.values() if t.is_floating_point()):
                    tensor.copy_(tensor.half())
        inference = InferenceGraph(source.encoder, source.projector, head, source.input.mean, source.input.std)
        size = source.input.size
        graphs[ONNX_FP32] = export_graph(inference, size)
        manifest.onnx = OnnxGraphs(opset=OPSET)
        if int8_calibration:
            graphs[ONNX_INT8] = quantize_int8(inference, size, _calibration_images(source, int8_calibration))
            manifest.onnx.int8, manifest.onnx.int8_calibration_images = ONNX_INT8, int8_calibration
        if metrics is not None:
            manifest.runtime_checks = _runtime_checks(graphs, inference, metrics, classes, size, source.cache_dir)
    manifest = write_bundle(out, manifest, weights, graphs)
    atomic_write(out / "README.md", model_card(*read_manifest(out)))
    if evaluation is not None and (evaluation / RELIABILITY).is_file():
        shutil.copyfile(evaluation / RELIABILITY, out / RELIABILITY)  # the card shows it; no bundle file
    return manifest


File = TypeVar("File", bound=EvaluationFile)


def _read(kind: type[File], path: Path) -> File:
    """An evaluation file, validated; a missing, newer or malformed one is a one-line UserError naming it."""
    try:
        return kind.read(path)
    except EvaluationError as e:
        raise UserError(str(e)) from None


def _familiarity(evaluation: Path, recorded: Familiarity | None,
                 weights: dict[str, dict[str, Tensor]]) -> Familiarity | None:
    """The evaluation's familiarity figures (recorded in its metrics), with its statistics added to the bundle's
    weights (evaluations from before it have neither)."""
    if recorded is None or not (evaluation / FAMILIARITY).is_file():
        return None
    try:
        tensors = load_safetensors((evaluation / FAMILIARITY).read_bytes())
        weights[FAMILIARITY] = {k: tensors[k] for k in ("means", "precision")}
    except (OSError, SafetensorError, KeyError) as e:
        raise UserError(f"{evaluation}: the familiarity statistics are unreadable ({e})") from None
    return recorded


def _calibration_images(source: Source, n: int) -> np.ndarray:
    """n class-balanced training images (uint8 (n, 3, S, S)): the int8 graph's activation ranges."""
    train = load_split(source.data_dir, "train", source.input.size, download=False, cache_dir=source.cache_dir)
    if train is None:
        raise UserError(f"{source.data_dir} has no training split to calibrate the int8 graph on")
    return balanced_subset(train, min(n, len(train)), seed=0).images.numpy()


def _runtime_checks(graphs: dict[str, bytes], inference: InferenceGraph, metrics: Metrics, classes: list[str],
                    size: int, cache_dir: str | None) -> list[RuntimeCheck]:
    """Each fast runtime (the int8 graph, torch bf16) beside the fp32 graph on the data the encoder was evaluated
    on: linear top-1 and agreement on the test set, and for int8 the kNN top-1 with the training set as bank."""
    data_dir = metrics.protocol.data_dir  # ~/... as recorded: load_split expands it
    try:
        train, test = (load_split(data_dir, split, size, download=False, cache_dir=cache_dir)
                       for split in ("train", "test"))
        problem = None if None not in (train, test) and train.classes == test.classes == classes \
            else "no train and test splits of the run's classes"
    except (OSError, ValueError, UserError) as e:
        problem = str(e)
    if problem:
        print(f"fast runtimes not checked: the evaluation's data {data_dir} cannot be read here ({problem}); the "
              f"service will run them only when asked", file=sys.stderr)
        return []
    fp32 = _graph_outputs(graphs[ONNX_FP32], "fp32", train, test)
    checks = []
    if ONNX_INT8 in graphs:
        checks.append(_check("onnx-int8", fp32, _graph_outputs(graphs[ONNX_INT8], "int8", train, test), train, test,
                             data_dir, classes))
    checks.append(_check("torch-bf16", fp32, {"logits": _torch_bf16_logits(inference, test.images)}, train, test,
                         data_dir, classes))
    for c in checks:
        knn = f", kNN top-1 {100 * c.knn_top1:.2f}% against {100 * c.fp32_knn_top1:.2f}%" if c.knn_top1 else ""
        print(f"{c.runtime} on {c.test_images} test images of {data_dir}: linear top-1 {100 * c.top1:.2f}% against "
              f"fp32's {100 * c.fp32_top1:.2f}%{knn}; fp32's top-1 on {100 * c.top1_agreement:.2f}%, its top 3 in "
              f"order on {100 * c.top3_order_agreement:.2f}%: {'passed' if c.passed else 'FAILED'} the gate")
    return checks


def _graph_outputs(graph: bytes, name: str, train: ImageSet, test: ImageSet) -> dict[str, Tensor]:
    bank, = run_graph(graph, train.images.numpy(), ["representation"], f"{name} graph on the training set")
    queries, logits = run_graph(graph, test.images.numpy(), ["representation", "logits"],
                                f"{name} graph on the test set")
    return {"bank": torch.from_numpy(bank), "queries": torch.from_numpy(queries), "logits": torch.from_numpy(logits)}


@torch.no_grad()
def _torch_bf16_logits(inference: InferenceGraph, images: Tensor, batch: int = 256) -> Tensor:
    """The service's torch-bf16 runtime: the encoder under bf16 autocast, the head in float32."""
    inference.eval()
    chunks = []
    for start in range(0, len(images), batch):
        x = inference.preprocess(images[start:start + batch])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = inference.encoder(x.contiguous(memory_format=torch.channels_last))
        chunks.append(inference.classifier(h.float()))
    return torch.cat(chunks)


def _check(runtime: str, fp32: dict[str, Tensor], fast: dict[str, Tensor], train: ImageSet, test: ImageSet,
           data_dir: str, classes: list[str]) -> RuntimeCheck:
    top3, fast_top3 = fp32["logits"].topk(3, dim=1).indices, fast["logits"].topk(3, dim=1).indices
    figures = {"fp32_top1": topk_accuracy(fp32["logits"], test.labels, (1,))[1],
               "top1": topk_accuracy(fast["logits"], test.labels, (1,))[1],
               "top1_agreement": (top3[:, 0] == fast_top3[:, 0]).double().mean().item(),
               "top3_agreement": (top3.sort(dim=1).values == fast_top3.sort(dim=1).values).all(dim=1).double().mean()
               .item(),
               "top3_order_agreement": (top3 == fast_top3).all(dim=1).double().mean().item()}
    if "bank" in fast:
        for key, side in (("fp32_knn_top1", fp32), ("knn_top1", fast)):
            votes = knn_predict(F.normalize(side["queries"], dim=1), F.normalize(side["bank"], dim=1), train.labels,
                                len(classes))
            figures[key] = topk_accuracy(votes, test.labels, (1,))[1]
        figures["train_images"] = len(train)
    return RuntimeCheck(runtime=runtime, data_dir=data_dir, test_images=len(test), **figures)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m trainer.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="pretraining run directory")
    source.add_argument("--bundle", metavar="BUNDLE_DIR", help="a bundle to write again (new head, graphs, checks)")
    parser.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="bundle directory to write")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="checkpoint to export (default: the one RUN_DIR/eval evaluated, else the latest)")
    parser.add_argument("--evaluation", metavar="DIR", help="with --bundle: the head and figures of python -m "
                        "trainer.linear_eval --bundle (default: none, for a bundle without a classifier)")
    parser.add_argument("--data-dir", metavar="DIR", help="with --bundle: the data whose training images calibrate "
                        "the int8 graph")
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                        help="add the inference as an ONNX graph, for ONNX Runtime (default: on)")
    parser.add_argument("--int8-calibration", type=int, default=0, metavar="N",
                        help="add an int8 ONNX graph (the encoder quantised) calibrated on N training images and, "
                        "for an evaluated model, checked against the fp32 graph on its test set (default: 0, none)")
    parser.add_argument("--half", action="store_true",
                        help="store the weights as float16: half the size, still run in float32 (default: float32; "
                        "a --bundle keeps its own)")
    args = parser.parse_args(argv)
    try:
        if args.bundle:
            if args.checkpoint or args.half:
                raise UserError("--checkpoint and --half go with --run")
            manifest = export_bundle(args.bundle, args.out, args.evaluation, args.data_dir, args.onnx,
                                     args.int8_calibration)
        else:
            if args.evaluation or args.data_dir:
                raise UserError("--evaluation and --data-dir go with --bundle (a run's are RUN_DIR/eval and its own)")
            manifest = export(args.run, args.out, args.checkpoint, args.onnx, args.int8_calibration, args.half)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    head = "with" if manifest.metrics is not None else "without (the run was not evaluated)"
    print(f"bundle {args.out}: {manifest.architecture.backbone}, epoch {manifest.training.checkpoint_epoch}, "
          f"{len(manifest.classes)} classes, {head} a classifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
