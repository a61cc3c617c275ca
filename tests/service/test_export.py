"""trainer.export writes the bundle; contract.bundle reads it for the service: the round trip pins the format."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

import pytest
import torch
import torch.nn.functional as F
from factories import (CLASSES, DATA_NAME, MACHINE, SIZE, TEMPERATURE, colour_images, make_run, write_eval,
                       write_folder)
from safetensors.torch import load_file

from contract.bundle import load_bundle
from contract.networks import classifier_head
from contract.preprocess import preprocess
from service.model import Model
from trainer.export import export, main


@pytest.mark.parametrize("backbone, width, hidden", [("resnet18", 1, ()), ("resnet18", 2, (24,)),
                                                     ("resnet50", 1, ())])
def test_service_model_equals_trainer_model(tmp_path, backbone, width, hidden):
    run, model = make_run(tmp_path / "run", backbone=backbone, width=width, hidden_dims=hidden)
    export(run, tmp_path / "bundle")
    served = Model(load_bundle(tmp_path / "bundle"))
    images = torch.from_numpy(colour_images(2)[0]).permute(0, 3, 1, 2)

    out = served.infer(images)
    with torch.no_grad():
        x = preprocess(images)
        h = model.encoder(x)
        z = model.projector(h)
        head = classifier_head(model.feature_dim, len(CLASSES), hidden)
        head.load_state_dict(load_file(run / "eval" / "classifier.safetensors"))
        p = F.softmax(head.eval()(h) / TEMPERATURE, dim=1)
    torch.testing.assert_close(out.representation, h, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.projection, z, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.probabilities, p, atol=1e-5, rtol=0)


def test_manifest_describes_the_run(tmp_path, run_and_model):
    run, model = run_and_model
    written = export(run, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest == written.model_dump(mode="json", by_alias=True)
    assert manifest["format"] == "simclr-bundle" and manifest["format_version"] == 1
    arch = manifest["architecture"]
    assert (arch["backbone"], arch["width"], arch["stem"], arch["representation_dim"]) == ("resnet18", 1, "cifar", 512)
    assert arch["projection"] == {"hidden_dim": 64, "out_dim": 32}
    assert arch["classifier"] == {"hidden_dims": [], "num_classes": 4, "temperature": TEMPERATURE}
    assert manifest["input"] == {"size": SIZE, "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616],
                                 "resize": "fit-bicubic"}
    assert manifest["classes"] == list(CLASSES)
    evaluation = json.loads((run / "eval" / "metrics.json").read_text())
    assert {k: manifest["metrics"][k] for k in ("top1", "top3", "top5", "knn_top1", "checkpoint")} == \
        {k: evaluation[k] for k in ("top1", "top3", "top5", "knn_top1", "checkpoint")}
    assert [row["name"] for row in manifest["metrics"]["per_class"]] == list(CLASSES)
    assert manifest["metrics"]["per_class"][0]["class"] == 0 and manifest["metrics"]["protocol"]["name"] == "linear"
    assert manifest["training"]["checkpoint_epoch"] == 1 and manifest["training"]["batch_size"] == 16
    assert manifest["training"]["recipe"] == json.loads((run / "config.json").read_text())
    assert {k: manifest["training"][k] for k in ("hours", "median_pace_hours", "machines", "commits")} == \
        {"hours": 0.05, "median_pace_hours": 0.05, "machines": [MACHINE], "commits": ["abc123"]}  # from the run's jsonl
    assert set(manifest["files"]) == {"encoder.safetensors", "projector.safetensors", "classifier.safetensors",
                                      "familiarity.safetensors", "model.onnx"}
    assert manifest["onnx"] == {"fp32": "model.onnx", "int8": None, "int8_calibration_images": None, "opset": 17}
    assert manifest["runtime_checks"] == []  # the factory's evaluation data is not on this machine
    assert manifest["metrics"]["calibration"] == {**evaluation["calibration"], "test_nll_before": None,
                                                  "test_nll_after": None}
    assert manifest["familiarity"] == {"file": "familiarity.safetensors", **evaluation["familiarity"]}
    statistics = load_file(run / "eval" / "familiarity.safetensors")
    means, precision = load_bundle(tmp_path / "bundle").familiarity
    torch.testing.assert_close(means, statistics["means"])
    torch.testing.assert_close(precision, statistics["precision"])


def test_model_card_says_what_the_manifest_says(tmp_path, run_and_model):
    run, _ = run_and_model
    manifest = export(run, tmp_path / "bundle")
    card = (tmp_path / "bundle" / "README.md").read_text()
    bundle = load_bundle(tmp_path / "bundle")  # the card is no bundle file: the bundle verifies without it
    assert "README.md" not in manifest.files
    assert card.startswith("---\n") and f"\n---\n\n# {bundle.name}\n" in card
    assert f"## Evaluation: {DATA_NAME}, test set (20 images)" in card
    assert f"| top-1 | linear, frozen encoder | {100 * manifest.metrics.top1:.2f}% |" in card
    assert "| kNN top-1 | k=10, votes exp(similarity / 0.1), 40 training images as the bank | 40.00% |" in card
    assert "softmax(logits / 1.500)" in card and "20.00% before, 5.00% after" in card
    assert "estimated on 40 training images" in card and "beyond 3.50 the answer says `unlike_training_data`" in card
    assert "| uniform noise | 90.0% |" in card and "reliability.png" in card
    for row in manifest.metrics.per_class:
        assert f"| {row.name} | {row.count:,} | {100 * row.top1:.1f}% | {100 * row.top3:.1f}% |" in card
    assert "settings fixed in advance" in card and "Wall-clock hours of its epochs: 0.05 as run (" in card
    assert "; 0.05 at the run's median epoch time per view size." in card
    assert f"Machines: {MACHINE}." in card and "Code: abc123." in card
    for name, digest in manifest.files.items():
        assert f"| {name} | `{digest}` |" in card

    unevaluated, _ = make_run(tmp_path / "unevaluated", evaluated=False)
    export(unevaluated, tmp_path / "plain", onnx=False)
    card = (tmp_path / "plain" / "README.md").read_text()
    assert "None: the run was not evaluated" in card and "/classify" not in card and "top-1" not in card


def test_model_card_metadata_is_what_the_hub_reads(tmp_path, run_and_model):
    """The front matter parsed by huggingface_hub as the Hub parses it: the licence, and a model-index whose results
    are the manifest's, each named with its protocol; a model of other classes claims no CIFAR-10."""
    from huggingface_hub import ModelCard

    run, _ = run_and_model
    manifest = export(run, tmp_path / "bundle")
    card = ModelCard((tmp_path / "bundle" / "README.md").read_text())
    assert card.data.license == "apache-2.0" and card.data.datasets is None
    assert card.data.model_name == load_bundle(tmp_path / "bundle").name
    results = {(r.task_name, r.metric_name): r for r in card.data.eval_results}
    linear = "linear evaluation, frozen encoder"
    assert {key: r.metric_value for key, r in results.items()} == {
        (linear, "top-1 accuracy (linear head on the frozen encoder, trained on 40 training images)"):
            round(manifest.metrics.top1, 4),
        (linear, "top-3 accuracy (linear head on the frozen encoder, trained on 40 training images)"):
            round(manifest.metrics.top3, 4),
        ("kNN evaluation, frozen encoder", "kNN top-1 accuracy (k=10, 40 training images as the bank)"): 0.4}
    assert {(r.dataset_name, r.dataset_type, r.dataset_split) for r in results.values()} == {
        (DATA_NAME, "imagefolder", "test")}
    assert "## Licence" in card.text and "Its terms apply to the weights" in card.text

    unevaluated, _ = make_run(tmp_path / "unevaluated", evaluated=False)
    export(unevaluated, tmp_path / "plain", onnx=False)
    plain = ModelCard((tmp_path / "plain" / "README.md").read_text())
    assert plain.data.license == "apache-2.0" and not plain.data.eval_results


def test_half_weights_take_half_the_room_and_give_the_same_answers(tmp_path, run_and_model):
    run, _ = run_and_model
    full = export(run, tmp_path / "full", onnx=False)
    half = export(run, tmp_path / "half", onnx=False, half=True)
    assert (full.weights_dtype, half.weights_dtype) == ("float32", "float16")
    size = lambda folder: sum(f.stat().st_size for f in folder.glob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "half") < 0.55 * size(tmp_path / "full")
    images = torch.from_numpy(colour_images(2)[0]).permute(0, 3, 1, 2)
    a, b = (Model(load_bundle(tmp_path / name)).infer(images) for name in ("full", "half"))
    assert b.representation.dtype == torch.float32
    assert F.cosine_similarity(a.representation, b.representation).min() > 0.999
    torch.testing.assert_close(a.probabilities, b.probabilities, atol=1e-2, rtol=0)


def test_unevaluated_run_has_no_classifier(tmp_path):
    run, _ = make_run(tmp_path / "run", evaluated=False)
    out = tmp_path / "bundle"
    (out).mkdir()
    (out / "classifier.safetensors").write_bytes(b"stale, from an earlier export")
    manifest = export(run, out)
    assert manifest.metrics is None and manifest.architecture.classifier is None
    assert not (out / "classifier.safetensors").exists()
    assert load_bundle(out).classifier is None


def test_export_refuses_a_head_of_another_checkpoint(tmp_path, run_and_model):
    run, model = make_run(tmp_path / "run")
    other = run / "checkpoints" / "epoch_0002.pt"
    other.write_bytes((run / "checkpoints" / "epoch_0001.pt").read_bytes())
    result = _cli("--run", str(run), "--out", str(tmp_path / "b"), "--checkpoint", str(other))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "evaluated checkpoints/epoch_0001.pt" in result.stderr
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_a_checkpoint_outside_the_run_is_recorded_without_the_home_directory(tmp_path, monkeypatch):
    """linear_eval --checkpoint ~/elsewhere/...: the evaluation and the manifest name it "~/...", never the user's
    home, and the export finds the evaluated checkpoint from that name."""
    from trainer.run_dir import RunDir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run, model = make_run(tmp_path / "home" / "run", evaluated=False)
    elsewhere = tmp_path / "home" / "kept" / "epoch_0001.pt"
    elsewhere.parent.mkdir()
    (run / "checkpoints" / "epoch_0001.pt").rename(elsewhere)
    named = RunDir(run).relative(elsewhere)
    assert named == "~/kept/epoch_0001.pt" and RunDir(run).resolve(named) == elsewhere
    assert RunDir(run).relative(run / "checkpoints" / "epoch_0002.pt") == "checkpoints/epoch_0002.pt"
    write_eval(run, model.feature_dim, [], checkpoint_name=named)
    manifest = export(run, tmp_path / "bundle", onnx=False)  # the evaluated checkpoint, found from "~/..."
    assert manifest.training.checkpoint == named and manifest.metrics.checkpoint == named
    assert str(tmp_path) not in (tmp_path / "bundle" / "manifest.json").read_text()


def test_export_refuses_a_head_that_does_not_fit(tmp_path):
    run, _ = make_run(tmp_path / "run")
    spec = json.loads((run / "eval" / "classifier.json").read_text())
    (run / "eval" / "classifier.json").write_text(json.dumps({**spec, "classes": ["a", "b"]}))
    result = _cli("--run", str(run), "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "does not fit" in result.stderr


@pytest.mark.parametrize("name, change, message", [
    ("classifier.json", {"format_version": 2}, "has simclr-eval-classifier format version 2, newer than this trainer"),
    ("metrics.json", {"format": "simclr-bundle"}, "is not a simclr-eval-metrics file"),
])
def test_export_refuses_an_evaluation_file_of_another_format_or_a_newer_version(tmp_path, name, change, message):
    run, _ = make_run(tmp_path / "run")
    written = json.loads((run / "eval" / name).read_text())
    (run / "eval" / name).write_text(json.dumps({**written, **change}))
    result = _cli("--run", str(run), "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {run / 'eval' / name} {message}")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "b" / "manifest.json").exists()


def test_an_old_run_exports_with_its_paths_recorded_without_the_home_directory(tmp_path, monkeypatch):
    """A run and evaluation written before the evaluation files were versioned or paths were recorded as ~/...:
    no format fields, absolute data paths under the home directory. The bundle records those as ~/..., and the
    export still reads the data there for its runtime checks."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    data = home / "data" / "colours"
    write_folder(data, "train", *colour_images(6, seed=0))
    write_folder(data, "test", *colour_images(2, seed=1))
    run, _ = make_run(home / "runs" / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(data), "cache_dir": str(tmp_path)}))
    for name in ("metrics.json", "classifier.json"):
        old = {k: v for k, v in json.loads((run / "eval" / name).read_text()).items() if not k.startswith("format")}
        if name == "metrics.json":
            old["protocol"]["data_dir"] = str(data)
        (run / "eval" / name).write_text(json.dumps(old))
    manifest = export(run, tmp_path / "bundle")
    assert manifest.training.data_dir == manifest.metrics.protocol.data_dir == "~/data/colours"
    assert (manifest.training.recipe["data_dir"], manifest.training.recipe["out"]) == ("~/data/colours", "~/runs/run")
    assert [(c.runtime, c.data_dir) for c in manifest.runtime_checks] == [("torch-bf16", "~/data/colours")]
    for written in ("manifest.json", "README.md"):
        assert str(home) not in (tmp_path / "bundle" / written).read_text()


def test_export_refuses_metrics_of_another_shape(tmp_path):
    run, _ = make_run(tmp_path / "run")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    (run / "eval" / "metrics.json").write_text(json.dumps({**metrics, "per_class": {c: 0.5 for c in CLASSES}}))
    result = _cli("--run", str(run), "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "does not hold what trainer.linear_eval writes (per_class" in result.stderr
    assert not (tmp_path / "b" / "manifest.json").exists()


@pytest.mark.parametrize("make_args, message", [
    (lambda tmp: ["--run", str(tmp / "nowhere")], "nowhere does not exist"),
    (lambda tmp: ["--run", str(tmp)], "is not a pretraining run"),
    (lambda tmp: ["--run", str(tmp / "run"), "--checkpoint", str(tmp / "run" / "missing.pt")], "does not exist"),
])
def test_cli_errors_are_one_line(tmp_path, make_args, message):
    make_run(tmp_path / "run", evaluated=False)
    result = _cli(*make_args(tmp_path), "--out", str(tmp_path / "b"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_cli_writes_a_loadable_bundle(tmp_path, run_and_model):
    result = _cli("--run", str(run_and_model[0]), "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert "with a classifier" in result.stdout
    assert load_bundle(tmp_path / "b").manifest.classes == list(CLASSES)


def _cli(*args: str) -> subprocess.CompletedProcess:
    """main() in this process (importing torch again per call costs seconds), its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
