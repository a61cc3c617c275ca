"""service.model: the runtimes (torch fp32 / bf16, ONNX Runtime fp32 / int8) give the same answers within their
rounding, and the automatic choice takes the fastest."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from factories import colour_images, make_run

from contract.bundle import BundleError, load_bundle
from service.model import Model, pick_runtime
from trainer.export import export

IMAGES = torch.from_numpy(colour_images(3, seed=2)[0]).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, image_folder):
    """A bundle with both ONNX graphs, the int8 one calibrated on the run's (colour) training images."""
    root = tmp_path_factory.mktemp("int8")
    run, _ = make_run(root / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(image_folder), "cache_dir": str(root)}))
    export(run, root / "bundle", int8_calibration=16)
    return root / "bundle"


def test_a_half_bundle_stores_the_weights_once_and_its_graphs_compute_with_them(tmp_path, image_folder):
    run, _ = make_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(image_folder), "cache_dir": str(tmp_path)}))
    export(run, tmp_path / "bundle", int8_calibration=16, half=True)
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


@pytest.mark.parametrize("fast, expected", [("torch-bf16", "torch-bf16"), ("onnx-fp32", "onnx-fp32"),
                                            ("onnx-int8", "torch-fp32"), (None, "torch-fp32")])
def test_auto_takes_the_fastest_but_never_int8_unasked(int8_bundle, monkeypatch, fast, expected):
    model = Model(load_bundle(int8_bundle))
    monkeypatch.setattr(model, "infer", lambda images: time.sleep(0.001 if model.runtime == fast else 0.01))
    runtime, why = pick_runtime(model, "auto")
    assert runtime == expected == model.runtime and why.startswith("auto: torch-fp32 1.00x")
    assert "onnx-int8" not in why
    assert pick_runtime(model, "onnx-int8") == ("onnx-int8", "as asked") and model.runtime == "onnx-int8"
