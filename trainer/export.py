"""Export a pretraining run as a model bundle (contract.bundle), the service's only input from the trainer.

    python -m trainer.export --run runs/simclr --out bundles/r18                 # the evaluated checkpoint
    python -m trainer.export --run runs/simclr --out bundles/r18 --checkpoint runs/simclr/checkpoints/epoch_0100.pt

BUNDLE_DIR gets the encoder and projector, the classifier when RUN_DIR/eval holds a linear evaluation of the
same checkpoint, and manifest.json, written last (contract/bundle.py describes each file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from contract.bundle import (CLASSIFIER, ENCODER, PROJECTOR, Architecture, ClassifierSpec, InputSpec, Manifest,
                             Metrics, Projection, Training, describe, load_weights, write_bundle)
from contract.images import RESIZE
from contract.networks import classifier_head
from trainer.augment import CIFAR_MEAN, CIFAR_STD
from trainer.cli import OneLineErrorParser
from trainer.errors import UserError
from trainer.run_dir import RunDir


def export(run_dir: str | Path, out: str | Path, checkpoint_file: str | Path | None = None) -> Manifest:
    """Write the bundle of run_dir's checkpoint (default: the one RUN_DIR/eval evaluated, else the latest) into
    out and return its manifest."""
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
    classes, classifier, metrics = list(state.get("classes") or []), None, None
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
            temperature=config.temperature, data_dir=config.data_dir))
    return write_bundle(out, manifest, weights)


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
    args = parser.parse_args(argv)
    try:
        manifest = export(args.run, args.out, args.checkpoint)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    head = "with" if manifest.metrics is not None else "without (the run was not evaluated)"
    print(f"bundle {args.out}: {manifest.architecture.backbone}, epoch {manifest.training.checkpoint_epoch}, "
          f"{len(manifest.classes)} classes, {head} a classifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
