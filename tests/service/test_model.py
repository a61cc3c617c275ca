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

from contract.bundle import (
    MAX_ACCURACY_LOSS, MIN_TOP1_AGREEMENT, MIN_TOP3_ORDER_AGREEMENT, BundleError, RuntimeCheck, load_bundle,
)
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


def test_the_export_measures_what_each_fast_runtime_costs(int8_bundle, image_folder):
    checks = {c.runtime: c for c in load_bundle(int8_bundle).manifest.runtime_checks}
    assert set(checks) == {"onnx-int8", "torch-bf16"}
    train, test = (load_split(image_folder, split, image_size=16, cache_dir=None) for split in ("train", "test"))
    reference = Model(load_bundle(int8_bundle), "onnx-fp32")
    queries, bank = reference.infer(test.images), reference.infer(train.images)
    top3 = queries.probabilities.topk(3, dim=1).indices
    for runtime, check in checks.items():
        assert check.data_dir == str(image_folder) and check.test_images == len(test)
        assert check.fp32_top1 == (top3[:, 0] == test.labels).double().mean().item()
        model = Model(load_bundle(int8_bundle), runtime)
        served = model.infer(test.images)
        fast = served.probabilities.topk(3, dim=1).indices
        assert check.top1 == (fast[:, 0] == test.labels).double().mean().item()
        assert check.top1_agreement == (fast[:, 0] == top3[:, 0]).double().mean().item()
        assert check.top3_order_agreement == (fast == top3).all(dim=1).double().mean().item()
        if runtime == "onnx-int8":  # the kNN is measured for the int8 graph, each side embedded by its runtime
            assert check.train_images == len(train)
            for top1, side in ((check.fp32_knn_top1, (queries, bank)), (check.knn_top1, (served, model.infer(
                    train.images)))):
                votes = knn_predict(side[0].unit, side[1].unit, train.labels, len(train.classes))
                assert top1 == (votes.argmax(dim=1) == test.labels).double().mean().item()


def test_version_reports_what_the_fast_runtimes_cost(int8_bundle, tmp_path):
    checks = load_bundle(int8_bundle).manifest.runtime_checks
    settings = Settings(bundle=int8_bundle, data_dir=None, index_root=tmp_path, runtime="onnx-int8")
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        version = client.get("/version").json()
    assert version["runtime"] == "onnx-int8"
    assert version["evaluation"]["runtime_checks"] == [
        {"runtime": c.runtime, "top1": c.top1, "knn_top1": c.knn_top1, "top1_agreement": c.top1_agreement,
         "top3_agreement": c.top3_agreement, "top3_order_agreement": c.top3_order_agreement, "passed": c.passed}
        for c in checks]


def test_without_the_evaluation_data_the_fast_runtimes_are_left_unchecked(tmp_path, image_folder, capsys):
    run, _ = make_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())  # calibration images, but the test set is elsewhere
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(image_folder), "cache_dir": str(tmp_path)}))
    export(run, tmp_path / "bundle", int8_calibration=16)
    assert load_bundle(tmp_path / "bundle").manifest.runtime_checks == []
    assert "fast runtimes not checked: the evaluation's data colours cannot be read here" in capsys.readouterr().err


def check_of(runtime: str, accuracy_loss: float = 0.0, knn_loss: float | None = None, top1_agreement: float = 1.0,
             order_agreement: float = 1.0) -> RuntimeCheck:
    knn = {} if knn_loss is None else {"train_images": 500, "fp32_knn_top1": 0.8, "knn_top1": 0.8 - knn_loss}
    return RuntimeCheck(runtime=runtime, data_dir="d", test_images=100, fp32_top1=0.9, top1=0.9 - accuracy_loss,
                        top1_agreement=top1_agreement, top3_agreement=order_agreement,
                        top3_order_agreement=order_agreement, **knn)


@pytest.mark.parametrize("check, passed", [
    (check_of("onnx-int8"), True), (check_of("onnx-int8", knn_loss=0.0), True),
    (check_of("onnx-int8", accuracy_loss=MAX_ACCURACY_LOSS), False),
    (check_of("onnx-int8", knn_loss=MAX_ACCURACY_LOSS), False),
    (check_of("onnx-int8", top1_agreement=MIN_TOP1_AGREEMENT - 0.01), False),
    (check_of("onnx-int8", order_agreement=MIN_TOP3_ORDER_AGREEMENT - 0.01), False),
    (check_of("onnx-int8", order_agreement=0.42), False),  # the graph that quantised its probabilities
])
def test_the_gate(check, passed):
    assert check.passed == passed


@pytest.mark.parametrize("checked", [(), ("onnx-int8",), ("torch-bf16",), ("onnx-int8", "torch-bf16")])
@pytest.mark.parametrize("failed", [False, True])
@pytest.mark.parametrize("fast", ["torch-bf16", "onnx-fp32", "onnx-int8", None])
def test_auto_takes_the_fastest_of_fp32_and_the_runtimes_that_passed_their_check(int8_bundle, monkeypatch, fast,
                                                                                 checked, failed):
    model = Model(load_bundle(int8_bundle))
    checks = [check_of(r, top1_agreement=0.5 if failed else 1.0) for r in checked]
    monkeypatch.setattr(model.bundle.manifest, "runtime_checks", checks)
    monkeypatch.setattr(model, "infer", lambda images: time.sleep(0.001 if model.runtime == fast else 0.01))
    runtime, why = pick_runtime(model, "auto")
    competes = {"torch-fp32", "onnx-fp32"} | (set() if failed else set(checked))
    expected = fast if fast in competes else "torch-fp32"
    assert runtime == expected == model.runtime and why.startswith("auto: torch-fp32 1.00x")
    assert {r for r in ("torch-bf16", "onnx-int8") if r in why} == competes - {"torch-fp32", "onnx-fp32"}
    assert pick_runtime(model, "onnx-int8") == ("onnx-int8", "as asked") and model.runtime == "onnx-int8"
