"""The bundle's model card, BUNDLE_DIR/README.md: what the model is, how well it does by which protocol, what
trained it and where it falls short, for the person who finds the bundle (models/reference in the repository).

It is written from the manifest alone, so it never says more than the manifest does; the manifest stays the
authority (the service never reads the card, and the card is not among the checksummed files). It opens with
the YAML front matter Hugging Face's Hub reads (licence, tags, data set, and a model-index with each result and
its protocol), so the folder can be pushed to the Hub as it is.

    python -m trainer.model_card BUNDLE_DIR   # write the card again (after a change here), the bundle untouched
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from contract.bundle import (MAX_ACCURACY_LOSS, MIN_TOP1_AGREEMENT, MIN_TOP3_ORDER_AGREEMENT, Manifest,
                             BundleError, bundle_name, read_manifest)
from contract.files import atomic_write

RELIABILITY = "reliability.png"  # beside the card in the bundle's folder, from the evaluation
LICENSE = "apache-2.0"  # the repository's (LICENSE); the README says what CIFAR-10's terms mean for the weights
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def model_card(manifest: Manifest, fingerprint: str) -> str:
    """Markdown describing the bundle whose manifest.json has sha256 fingerprint."""
    arch, training = manifest.architecture, manifest.training
    size, route = manifest.input.size, "classify" if arch.classifier else "embed"
    head = "an MLP" if arch.classifier and arch.classifier.hidden_dims else "a linear"
    lines = ["---", *_yaml(card_metadata(manifest, fingerprint)), "---", "",
             f"# {bundle_name(manifest, fingerprint)}", "",
             f"A {arch.backbone} encoder (width x{arch.width}, CIFAR stem: 3x3 first convolution, no max-pool) "
             f"trained with SimCLR, without labels, for {training.checkpoint_epoch} epochs"
             + (f", and {head} classifier on its frozen features." if arch.classifier else "."),
             "Written by `python -m trainer.export` from `manifest.json`, which is the authority (checksums "
             "included).", "",
             "## Use", "", "```bash", "python -m service --bundle BUNDLE_DIR   # this folder; models/reference is "
             "the default", f"curl -F images=@cat.png http://127.0.0.1:8000/{route}", "```", "",
             "Or in Python, an `nn.Module` through torch.hub (the project's `hubconf.py`; SIMCLR: a clone of it):",
             "", "```python", "import torch",
             "model = torch.hub.load(SIMCLR, \"bundle\", BUNDLE_DIR, source=\"local\")"
             + ("  # classifier=True: class logits" if arch.classifier else ""),
             f"features = model(images)  # uint8 RGB (N, 3, {size}, {size}) -> (N, {arch.representation_dim})",
             "```", "",
             f"Inputs: any image, resized (shorter side, bicubic) and centre-cropped to {size} x {size} px. Outputs: "
             f"a {arch.representation_dim}-d representation (`/embed`, similar-image search), its "
             f"{arch.projection.out_dim}-d SimCLR projection"
             + (f", and probabilities over {len(manifest.classes)} classes (`/classify`): "
                f"{', '.join(manifest.classes)}." if arch.classifier else "."), ""]
    lines += _evaluation(manifest) + _training(manifest)
    calibrated = arch.classifier is not None and manifest.metrics is not None and manifest.metrics.calibration
    lines += ["## Limitations", "",
              f"- Every image is reduced to {size} x {size} px, the size it learnt from: fine detail is lost, and "
              f"images unlike its training data embed less well.",
              "- The classifier knows only its classes and always answers with them: there is no \"none of "
              "these\"" + (". Each answer's `unlike_training_data` says where an image is far from the training "
                           "images (Familiarity above); that is no class, and it misses some."
                           if manifest.familiarity else ".") if arch.classifier else
              "- No classifier: the run was not evaluated.",
              (f"- Its probabilities come from {head} head trained with cross-entropy"
               + (", scaled by a temperature fitted on held-out images (Calibration above): calibrated on data "
                  "like the evaluation's, not on images unlike it." if calibrated else ", and are not calibrated."))
              if arch.classifier else "",
              "- The figures above are the evaluation's, on its test set; a different data set needs its own.", "",
              *_licence(manifest), "## Files", "", "| file | sha256 |", "| --- | --- |"]
    lines += [f"| {name} | `{digest}` |" for name, digest in manifest.files.items()]
    return "\n".join(lines) + "\n"


def card_metadata(manifest: Manifest, fingerprint: str) -> dict[str, Any]:
    """The Hub's model card metadata: what it filters and shows, and the results with their protocols."""
    arch, metrics = manifest.architecture, manifest.metrics
    cifar10 = manifest.classes == CIFAR10
    tags = ["simclr", "self-supervised-learning", "contrastive-learning", arch.backbone, "safetensors"]
    tags += ["onnx"] if manifest.onnx else []
    meta: dict[str, Any] = {"license": LICENSE, "library_name": "pytorch", "pipeline_tag": "image-feature-extraction",
                            "tags": tags}
    if cifar10:
        meta["datasets"] = ["cifar10"]
    if metrics is None:
        return meta
    p = metrics.protocol
    dataset = {"name": p.data_name or "test set", "type": "cifar10" if cifar10 else "imagefolder", "split": "test"}

    def result(task: str, scores: list[tuple[str, float]]) -> dict[str, Any]:
        return {"task": {"type": "image-classification", "name": task}, "dataset": dataset,
                "metrics": [{"type": "accuracy", "name": name, "value": round(value, 4)} for name, value in scores]}

    head = f"{p.name} head on the {p.encoder} encoder, trained on {p.train_images:,} training images"
    results = [result(f"{p.name} evaluation, {p.encoder} encoder",
                      [(f"top-1 accuracy ({head})", metrics.top1), (f"top-3 accuracy ({head})", metrics.top3)])]
    if metrics.knn_top1 is not None:
        results.append(result(f"kNN evaluation, {p.encoder} encoder", [
            (f"kNN top-1 accuracy (k={metrics.knn_k}, {p.train_images:,} training images as the bank)",
             metrics.knn_top1)]))
    meta["metrics"] = ["accuracy"]
    meta["model-index"] = [{"name": bundle_name(manifest, fingerprint), "results": results}]
    return meta


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML lines of nested dicts and lists; scalars as JSON, which YAML reads as they are."""
    pad, lines = " " * indent, []
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    for key, item in items:
        head = f"{pad}{key}:" if key is not None else f"{pad}-"
        if not isinstance(item, dict | list):
            lines.append(f"{head} {json.dumps(item)}")
        elif key is None and isinstance(item, dict):  # "- first: x" then the other keys under it
            inner = _yaml(item, indent + 2)
            lines += [f"{head} {inner[0].lstrip()}", *inner[1:]]
        else:
            lines += [head, *_yaml(item, indent + 2)]
    return lines


def _licence(manifest: Manifest) -> list[str]:
    p = manifest.metrics.protocol if manifest.metrics else None
    data = (p.data_name if p and p.data_name else None) or manifest.training.data_dir
    if manifest.classes == CIFAR10:
        terms = ("CIFAR-10's images were gathered from the web by its authors (Krizhevsky, 2009, from the 80 Million "
                 "Tiny Images) and carry no licence of their own; it is widely used for research, and whether "
                 "another use fits the images' rights is for the user to judge.")
    else:
        terms = "Its terms apply to the weights as well as ours."
    return ["## Licence", "", f"{LICENSE}, the licence of the code that trained and exported it. The weights were "
            f"learnt from {data}: {terms}", ""]


def _evaluation(manifest: Manifest) -> list[str]:
    metrics = manifest.metrics
    if metrics is None:
        return ["## Evaluation", "", "None: the run was not evaluated (python -m trainer.linear_eval).", ""]
    p = metrics.protocol
    data = p.data_name or p.data_dir
    head = "a linear head" if p.name == "linear" else "an MLP head"  # only heads on frozen features are bundled
    length = f"{p.epochs} epochs" if p.stopping_epoch == p.epochs else f"{p.stopping_epoch} of {p.epochs} epochs"
    chosen = (f"weight decay and stopping epoch chosen on a class-balanced validation split of {p.val_images:,} "
              f"training images" if p.val_images else "settings fixed in advance")
    lines = [f"## Evaluation: {data}, test set ({p.test_images:,} images)", "",
             f"Protocol: {head} on the {p.encoder} encoder's features (`python -m trainer.linear_eval`), trained on "
             f"{p.train_images:,} training images for {length}, lr {p.lr:g}, weight "
             f"decay {p.weight_decay:g}; {chosen}; the test set scored once.", "",
             "| measure | protocol | value |", "| --- | --- | ---: |",
             *(f"| top-{k} | {p.name}, {p.encoder} encoder | {100 * getattr(metrics, f'top{k}'):.2f}% |"
               for k in (1, 3, 5))]
    if metrics.knn_top1 is not None:
        knn = f"k={metrics.knn_k}, votes exp(similarity / {metrics.knn_temperature:g})" if metrics.knn_k else "kNN"
        lines.append(f"| kNN top-1 | {knn}, {p.train_images:,} training images as the bank "
                     f"| {100 * metrics.knn_top1:.2f}% |")
    lines += _runtimes(manifest) + _calibration(manifest) + _familiarity(manifest)
    lines += ["", f"Per class ({p.name}, {p.encoder} encoder):", "", "| class | images | top-1 | top-3 |",
              "| --- | ---: | ---: | ---: |"]
    lines += [f"| {c.name} | {c.count:,} | {100 * c.top1:.1f}% | {100 * c.top3:.1f}% |" for c in metrics.per_class]
    return lines + [""]


def _runtimes(manifest: Manifest) -> list[str]:
    checks = manifest.runtime_checks
    if not checks:
        return []
    calibration = (f"the int8 graph quantises the encoder only, calibrated on {manifest.onnx.int8_calibration_images} "
                   f"training images, and the heads stay float; " if manifest.onnx and manifest.onnx.int8 else "")
    fp32, fp32_knn = checks[0], next((c.fp32_knn_top1 for c in checks if c.fp32_knn_top1 is not None), None)
    lines = ["", f"Fast runtimes against fp32 (the fp32 ONNX graph) on the same {fp32.test_images:,} test images "
             f"({calibration}every runtime takes the softmax of float logits). The service runs one "
             f"unasked only where it loses under {100 * MAX_ACCURACY_LOSS:g} points of top-1 and gives fp32's first "
             f"class on {100 * MIN_TOP1_AGREEMENT:g}% of the images and its top 3 in order on "
             f"{100 * MIN_TOP3_ORDER_AGREEMENT:g}%:", "",
             "| runtime | linear top-1 | kNN top-1 | same top-1 | same top 3 | same top 3, same order | gate |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
             f"| fp32 | {100 * fp32.fp32_top1:.2f}% | {_percent(fp32_knn)} | | | | |"]
    lines += [f"| {c.runtime} | {100 * c.top1:.2f}% | {_percent(c.knn_top1)} | "
              f"{100 * c.top1_agreement:.2f}% | {100 * c.top3_agreement:.2f}% | {100 * c.top3_order_agreement:.2f}% | "
              f"{'passed' if c.passed else 'failed: runs only when asked'} |" for c in checks]
    return lines


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _calibration(manifest: Manifest) -> list[str]:
    c = manifest.metrics.calibration
    if c is None:
        return []
    return ["", f"Calibration: the probabilities are softmax(logits / {c.temperature:.3f}), the temperature fitted "
            f"(lowest negative log-likelihood) on {c.images:,} training images held out of the head's training. "
            f"Expected calibration error on the test set (15 bins): {100 * c.test_ece_before:.2f}% before, "
            f"{100 * c.test_ece_after:.2f}% after.", "", f"![reliability diagrams before and after]({RELIABILITY})"]


def _familiarity(manifest: Manifest) -> list[str]:
    f = manifest.familiarity
    if f is None:
        return []
    lines = ["", f"Familiarity (`training_distance` in each answer): the Mahalanobis distance of an image's "
             f"normalised representation to the nearest class mean, under the classes' shared covariance, both "
             f"estimated on {f.images:,} training images (SSD+, Sehwag et al., ICLR 2021); beyond "
             f"{f.threshold:.2f} the answer says `unlike_training_data`. The threshold takes in "
             f"{100 * f.heldout_accepted:.1f}% of {f.heldout_images:,} training images held out of the head's training"
             + (f" and {100 * f.test_accepted:.1f}% of the test set" if f.test_accepted is not None else "") + "."]
    if f.rejected:
        lines += ["", "| synthetic images unlike the training data (trainer/synthetic.py) | flagged |",
                  "| --- | ---: |"]
        lines += [f"| {name} | {100 * rate:.1f}% |" for name, rate in f.rejected.items()]
    return lines


def _training(manifest: Manifest) -> list[str]:
    t, p = manifest.training, manifest.metrics.protocol if manifest.metrics else None
    recipe = t.recipe or {}
    data = p.data_name if p and p.data_name and p.data_dir == t.data_dir else t.data_dir
    hours = "not recorded" if t.hours is None else (
        f"{t.hours:g} as run (including any time the machine was shared or the run paused)"
        + (f"; {t.median_pace_hours:g} at the run's median epoch time per view size"
           if t.median_pace_hours is not None else ""))
    return ["## Training", "",
            f"- SimCLR, {t.checkpoint_epoch} of {t.epochs:g} epochs, batch {t.batch_size}, {t.optimizer} lr "
            f"{t.lr:g}, weight decay {t.weight_decay:g}, temperature {t.temperature:g}"
            + (f", view-size schedule `{recipe['resolution_schedule']}`" if recipe.get("resolution_schedule")
               else "") + (f", {recipe['precision']}" if recipe.get("precision") else "") + f"; data: {data}.",
            f"- Wall-clock hours of its epochs: {hours}.",
            f"- Machines: {'; '.join(t.machines) if t.machines else 'not recorded'}.",
            f"- Code: {', '.join(t.commits) if t.commits else 'not recorded'}.",
            "- The whole recipe: `training.recipe` in manifest.json.", ""]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trainer.model_card BUNDLE_DIR", file=sys.stderr)
        return 2
    try:
        manifest, fingerprint = read_manifest(args[0])
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    atomic_write(Path(args[0]) / "README.md", model_card(manifest, fingerprint))
    print(f"{args[0]}/README.md written from its manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
