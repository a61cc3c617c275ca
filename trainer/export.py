"""Export a pretraining run as a model bundle (contract.bundle), the service's only input from the trainer.

    python -m trainer.export --run runs/simclr --out bundles/r18                 # the evaluated checkpoint
    python -m trainer.export --run runs/simclr --out bundles/r18 --checkpoint runs/simclr/checkpoints/epoch_0100.pt

BUNDLE_DIR gets the encoder and projector, the classifier when RUN_DIR/eval holds a linear evaluation of the
same checkpoint, and manifest.json, written last (contract/bundle.py describes each file); then README.md, the
model card (trainer/model_card.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from contract.bundle import (CLASSIFIER, ENCODER, ONNX_FP32, ONNX_INT8, PROJECTOR, Architecture, ClassifierSpec,
                             InputSpec, Int8Check, Manifest, Metrics, OnnxGraphs, Projection, Training, describe,
                             load_weights, read_manifest, write_bundle)
from contract.files import atomic_write
from contract.images import RESIZE
from contract.networks import classifier_head
from trainer import provenance
from trainer.augment import CIFAR_MEAN, CIFAR_STD
from trainer.cli import OneLineErrorParser
from trainer.config import Config
from trainer.data import balanced_subset, load_split
from trainer.errors import UserError
from trainer.knn import knn_predict, topk_accuracy
from trainer.model_card import model_card
from trainer.onnx_export import OPSET, InferenceGraph, export_graph, quantize_int8, run_graph
from trainer.run_dir import RunDir


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
    head_spec = run.read_json(evaluation / "classifier.json") if (evaluation / "classifier.json").is_file() else None
    if checkpoint_file is None:
        checkpoint_file = run.path / head_spec["checkpoint"] if head_spec else run.latest_checkpoint()
    checkpoint_file = Path(checkpoint_file)
    if head_spec and (run.path / head_spec["checkpoint"]).resolve() != checkpoint_file.resolve():
        raise UserError(f"{evaluation} evaluated {head_spec['checkpoint']}, not {checkpoint_file}: evaluate "
                        f"that checkpoint first (python -m trainer.linear_eval --checkpoint ...) or export the "
                        f"evaluated one")
    model, state = run.load_model(config, checkpoint_file)
    weights = {ENCODER: model.encoder.state_dict(), PROJECTOR: model.projector.state_dict()}
    classes, classifier, metrics, head = list(state.get("classes") or []), None, None, None
    if head_spec:
        try:
            classes = [str(c) for c in head_spec["classes"]]
            classifier = ClassifierSpec(hidden_dims=head_spec["hidden_dims"], num_classes=len(classes))
        except (KeyError, TypeError, ValidationError) as e:
            raise UserError(f"{evaluation}/classifier.json is malformed ({e})") from None
        head = classifier_head(model.feature_dim, len(classes), classifier.hidden_dims)
        weights[CLASSIFIER] = load_weights(head, evaluation / CLASSIFIER, UserError).state_dict()
        metrics = _metrics(evaluation / "metrics.json")

    projection = model.projector
    manifest = Manifest(
        architecture=Architecture(
            backbone=config.backbone, width=config.width, stem="cifar", representation_dim=model.feature_dim,
            projection=Projection(hidden_dim=projection[0].out_features, out_dim=projection[3].out_features),
            classifier=classifier),
        input=InputSpec(size=config.image_size, mean=CIFAR_MEAN, std=CIFAR_STD, resize=RESIZE),
        classes=classes,
        metrics=metrics,
        training=Training(
            epochs=config.epochs, checkpoint_epoch=state["epoch"], checkpoint=run.relative(checkpoint_file),
            batch_size=config.batch_size, optimizer=config.optimizer, lr=config.peak_lr, weight_decay=config.wd,
            temperature=config.temperature, data_dir=config.data_dir, recipe=config.to_dict(),
            **provenance.summary(run, state["epoch"])),
        weights_dtype="float16" if half else "float32")
    graphs = {}
    if onnx:
        if half:  # the graphs compute with the weights the bundle holds, as its torch networks do
            with torch.no_grad():
                for tensor in (t for state in weights.values() for t in state.values() if t.is_floating_point()):
                    tensor.copy_(tensor.half())
        inference = InferenceGraph(model.encoder, model.projector, head, CIFAR_MEAN, CIFAR_STD)
        graphs[ONNX_FP32] = export_graph(inference, config.image_size)
        manifest.onnx = OnnxGraphs(opset=OPSET)
        if int8_calibration:
            graphs[ONNX_INT8] = quantize_int8(inference, config.image_size,
                                              _calibration_images(config, int8_calibration))
            manifest.onnx.int8, manifest.onnx.int8_calibration_images = ONNX_INT8, int8_calibration
            if metrics is not None:
                manifest.onnx.int8_check = _check_int8(graphs, metrics, classes, config)
    manifest = write_bundle(out, manifest, weights, graphs)
    atomic_write(Path(out) / "README.md", model_card(*read_manifest(out)))
    return manifest


def _calibration_images(config: Config, n: int) -> np.ndarray:
    """n class-balanced training images of the run (uint8 (n, 3, S, S)): the int8 graph's activation ranges."""
    train = load_split(config.data_dir, "train", config.image_size, download=False, cache_dir=config.cache_dir)
    return balanced_subset(train, min(n, len(train)), seed=0).images.numpy()


def _check_int8(graphs: dict[str, bytes], metrics: Metrics, classes: list[str], config: Config) -> Int8Check | None:
    """The int8 graph's linear top-1 and kNN top-1 beside the fp32 graph's, on the data the run was evaluated
    on: the test set, with the training set as the kNN's bank."""
    data_dir = metrics.protocol.data_dir
    try:
        train, test = (load_split(data_dir, split, config.image_size, download=False, cache_dir=config.cache_dir)
                       for split in ("train", "test"))
        problem = None if None not in (train, test) and train.classes == test.classes == classes \
            else "no train and test splits of the run's classes"
    except (OSError, ValueError, UserError) as e:
        problem = str(e)
    if problem:
        print(f"int8 graph not checked: the evaluation's data {data_dir} cannot be read here ({problem}); the "
              f"service will run it only when asked", file=sys.stderr)
        return None
    scores = {}
    for name, graph in (("fp32", graphs[ONNX_FP32]), ("int8", graphs[ONNX_INT8])):
        bank, = run_graph(graph, train.images.numpy(), ["representation"], f"{name} graph on the training set")
        queries, probabilities = run_graph(graph, test.images.numpy(), ["representation", "probabilities"],
                                           f"{name} graph on the test set")
        knn = knn_predict(F.normalize(torch.from_numpy(queries), dim=1), F.normalize(torch.from_numpy(bank), dim=1),
                          train.labels, len(classes))
        scores[f"{name}_top1"] = topk_accuracy(torch.from_numpy(probabilities), test.labels, (1,))[1]
        scores[f"{name}_knn_top1"] = topk_accuracy(knn, test.labels, (1,))[1]
    check = Int8Check(data_dir=data_dir, test_images=len(test), train_images=len(train), **scores)
    verdict = "served unasked where fastest" if check.passed else "served only when asked"
    print(f"int8 graph on {check.test_images} test images of {data_dir}: linear top-1 {100 * check.int8_top1:.2f}% "
          f"against fp32's {100 * check.fp32_top1:.2f}%, kNN top-1 {100 * check.int8_knn_top1:.2f}% against "
          f"{100 * check.fp32_knn_top1:.2f}%: {verdict}")
    return check


def _metrics(path: Path) -> Metrics:
    if not path.is_file():
        raise UserError(f"{path} is missing: evaluate the run again (python -m trainer.linear_eval)")
    try:
        return Metrics.model_validate(RunDir.read_json(path))
    except ValidationError as e:
        raise UserError(f"{path} does not hold what trainer.linear_eval writes ({describe(e)})") from None


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m trainer.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="pretraining run directory")
    parser.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="bundle directory to write")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="checkpoint to export (default: the one RUN_DIR/eval evaluated, else the latest)")
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                        help="add the inference as an ONNX graph, for ONNX Runtime (default: on)")
    parser.add_argument("--int8-calibration", type=int, default=0, metavar="N",
                        help="add an int8 ONNX graph calibrated on N training images of the run and, for an "
                        "evaluated run, checked against the fp32 graph on its test set (default: 0, none)")
    parser.add_argument("--half", action="store_true",
                        help="store the weights as float16: half the size, still run in float32 (default: float32)")
    args = parser.parse_args(argv)
    try:
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
