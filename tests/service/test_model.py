"""service.model: the runtimes (torch fp32 / bf16, ONNX Runtime fp32 / int8) give the same answers within their
rounding, and the automatic choice takes the fastest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from factories import colour_images, make_run, wait_ready
from fastapi.testclient import TestClient

from contract.bundle import MAX_INT8_LOSS, BundleError, Int8Check, load_bundle
from service.app import create_app
from service.model import Model, pick_runtime
from service.settings import Settings
from trainer.data import load_split
from trainer.knn import knn_predict
from trainer.export import export

IMAGES = torch.from_numpy(colour_images(3, seed=2)[0]).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, image_folder):
    """A bundle with both ONNX graphs, the int8 one calibrated on the run's (colour) training images and checked
    on their test split."""
    root = tmp_path_factory.mktemp("int8")
    return evaluated_on(image_folder, make_run(root / "run")[0], root, root / "bundle", int8_calibration=16)


def evaluated_on(image_folder: Path, run: Path, cache: Path, out: Path, **export_options) -> Path:
    """Export run as though it was trained and evaluated on image_folder (the factory's run names no data)."""
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(image_folder), "cache_dir": str(cache)}))
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    metrics["protocol"]["data_dir"] = str(image_folder)
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    export(run, out, **export_options)
    return out


def test_a_half_bundle_stores_the_weights_once_and_its_graphs_compute_with_them(tmp_path, image_folder):
    evaluated_on(image_folder, make_run(tmp_path / "run")[0], tmp_path, tmp_path / "bundle", int8_calibration=16,
                 half=True)
    weights = (tmp_path / "bundle" / "encoder.safetensors").stat().st_size
    for graph in ("model.onnx", "model.int8.onnx"):  # the weights are read from encoder.safetensors
        assert (tmp_path / "bundle" / graph).stat().st_size < 0.1 * weights
    reference = Model(load_bundle(tmp_path / "bundle")).infer(IMAGES)
    fp32 = Model(load_bundle(tmp_path / "bundle"), "onnx-fp32").infer(IMAGES)
    torch.testing.assert_close(fp32.representation, reference.representation, rtol=1e-4, atol=1e-4)
    int8 = Model(load_bundle(tmp_path / "bundle"), "onnx-int8").infer(IMAGES)
    assert F.cosine_similarity(int8.representation, reference.representation).min() > 0.95


@pytest.mark.parametrize("runtime, min_cosine, max_probability_error", [
    ("torch-bf16", 0.99, 0.05), ("onnx-fp32", 0.99999, 1e-4), ("onnx-int8", 0.95, 0.15)])
def test_every_runtime_gives_the_torch_fp32_answers_within_its_rounding(int8_bundle, runtime, min_cosine,
                                                                        max_probability_error):
    reference = Model(load_bundle(int8_bundle)).infer(IMAGES)
    out = Model(load_bundle(int8_bundle), runtime).infer(IMAGES)
    for a, b in [(out.representation, reference.representation), (out.projection, reference.projection)]:
        assert a.dtype == torch.float32 and F.cosine_similarity(a, b).min() > min_cosine
    assert (out.probabilities - reference.probabilities).abs().max() < max_probability_error
    torch.testing.assert_close(out.unit.norm(dim=1), torch.ones(len(IMAGES)))
    if runtime != "onnx-fp32":
        assert not torch.equal(out.representation, reference.representation)  # it really ran


def test_any_input_layout_gives_the_same_answer(bundle_dir):
    model = Model(load_bundle(bundle_dir))
    torch.testing.assert_close(model.infer(IMAGES.contiguous()).representation, model.infer(IMAGES).representation)


def test_runtimes_a_bundle_or_device_lacks_are_refused(bundle_dir):
    model = Model(load_bundle(bundle_dir))
    assert model.runtimes == ["torch-fp32", "torch-bf16", "onnx-fp32"]  # exported without int8; no fp16 on CPU
    with pytest.raises(BundleError, match="onnx-int8 is not available"):
        model.use("onnx-int8")
    with pytest.raises(BundleError, match="torch-fp16 runs on GPUs"):
        model.use("torch-fp16")


def test_the_export_measures_what_int8_costs(int8_bundle, image_folder):
    check = load_bundle(int8_bundle).manifest.onnx.int8_check
    train, test = (load_split(image_folder, split, image_size=16, cache_dir=None) for split in ("train", "test"))
    assert check.data_dir == str(image_folder) and (check.test_images, check.train_images) == (len(test), len(train))
    for runtime, top1, knn_top1 in (("onnx-fp32", check.fp32_top1, check.fp32_knn_top1),
                                    ("onnx-int8", check.int8_top1, check.int8_knn_top1)):
        model = Model(load_bundle(int8_bundle), runtime)
        queries, bank = model.infer(test.images), model.infer(train.images)
        assert top1 == (queries.probabilities.argmax(dim=1) == test.labels).float().mean().item()
        votes = knn_predict(queries.unit, bank.unit, train.labels, len(train.classes))
        assert knn_top1 == (votes.argmax(dim=1) == test.labels).float().mean().item()


def test_version_reports_what_int8_costs(int8_bundle, tmp_path):
    check = load_bundle(int8_bundle).manifest.onnx.int8_check
    settings = Settings(bundle=int8_bundle, data_dir=None, index_root=tmp_path, runtime="onnx-int8")
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        version = client.get("/version").json()
    assert version["runtime"] == "onnx-int8" and version["evaluation"]["int8_top1"] == check.int8_top1
    assert version["evaluation"]["int8_knn_top1"] == check.int8_knn_top1 is not None


def test_without_the_evaluation_data_int8_is_left_unchecked(tmp_path, image_folder, capsys):
    run, _ = make_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())  # calibration images, but the test set is elsewhere
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(image_folder), "cache_dir": str(tmp_path)}))
    export(run, tmp_path / "bundle", int8_calibration=16)
    assert load_bundle(tmp_path / "bundle").manifest.onnx.int8_check is None
    assert "int8 graph not checked: the evaluation's data colours cannot be read here" in capsys.readouterr().err


@pytest.mark.parametrize("int8_loss, knn_loss", [(None, None), (0.0, 0.0), (0.0, None), (MAX_INT8_LOSS, 0.0),
                                                (0.0, MAX_INT8_LOSS)])
@pytest.mark.parametrize("fast", ["torch-bf16", "onnx-fp32", "onnx-int8", None])
def test_auto_takes_the_fastest_and_int8_only_where_it_costs_little(int8_bundle, monkeypatch, fast, int8_loss,
                                                                    knn_loss):
    model = Model(load_bundle(int8_bundle))
    check = None if int8_loss is None else Int8Check(data_dir="d", test_images=100, fp32_top1=0.9,
                                                     int8_top1=0.9 - int8_loss)
    if knn_loss is not None:  # bundles exported before the kNN was measured have only the linear figures
        check = check.model_copy(update=dict(train_images=500, fp32_knn_top1=0.8, int8_knn_top1=0.8 - knn_loss))
    monkeypatch.setattr(model.bundle.manifest.onnx, "int8_check", check)
    monkeypatch.setattr(model, "infer", lambda images: time.sleep(0.001 if model.runtime == fast else 0.01))
    runtime, why = pick_runtime(model, "auto")
    int8_competes = int8_loss == 0.0 and knn_loss in (0.0, None)
    expected = fast if fast and (fast != "onnx-int8" or int8_competes) else "torch-fp32"
    assert runtime == expected == model.runtime and why.startswith("auto: torch-fp32 1.00x")
    assert ("onnx-int8" in why) == int8_competes
    assert pick_runtime(model, "onnx-int8") == ("onnx-int8", "as asked") and model.runtime == "onnx-int8"
