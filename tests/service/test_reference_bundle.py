"""The committed reference bundle (models/reference): within its size budget, served by default, and it
classifies a few CIFAR-10 test images (tests/reference, picked by its pick_samples.py from the evaluation's
predictions.csv) as the evaluation said, whatever runtime runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factories import wait_ready
from fastapi.testclient import TestClient

from contract.bundle import load_bundle
from contract.images import decode_image
from service.app import create_app
from service.model import Model
from service.settings import REFERENCE_BUNDLE, Settings

SAMPLES = Path(__file__).resolve().parents[1] / "reference"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((SAMPLES / "expected.json").read_text())


def test_it_fits_its_budget_and_says_how_it_was_measured():
    assert sum(f.stat().st_size for f in REFERENCE_BUNDLE.iterdir()) <= 25e6
    manifest = load_bundle(REFERENCE_BUNDLE).manifest  # every file against its sha256
    assert manifest.classes == CIFAR10 and manifest.architecture.backbone == "resnet18"
    protocol = manifest.metrics.protocol
    assert protocol.name == "linear" and protocol.encoder == "frozen" and protocol.test_images == 10_000


@pytest.mark.parametrize("runtime", ["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"])
def test_the_samples_are_classified_as_the_evaluation_said(expected, runtime):
    model = Model(load_bundle(REFERENCE_BUNDLE))
    if runtime not in model.runtimes:
        pytest.skip(f"the bundle offers {', '.join(model.runtimes)}")
    model.use(runtime)
    assert len(expected) == len(CIFAR10) and "cat" in {e["label"] for e in expected.values()}
    images = torch.stack([torch.from_numpy(decode_image((SAMPLES / file).read_bytes(), model.size)).permute(2, 0, 1)
                          for file in expected])
    probabilities = model.infer(images).probabilities
    for (file, answer), p in zip(expected.items(), probabilities):
        assert CIFAR10[p.argmax()] == answer["top3"][0], (file, runtime)
        if runtime.endswith("fp32"):  # float16 weights against the evaluation's float32 ones
            assert p.max().item() == pytest.approx(answer["p"][0], abs=0.02), (file, runtime)


def test_served_by_default_a_cat_has_cat_in_its_top_3(tmp_path, expected):
    cat = next(file for file, answer in expected.items() if answer["label"] == "cat" and answer["top3"][0] == "cat")
    with TestClient(create_app(Settings(data_dir=None, index_root=tmp_path))) as client:  # no bundle named
        assert wait_ready(client)["ready"]
        body = client.post("/classify", files=[("images", (cat, (SAMPLES / cat).read_bytes(), "image/png"))]).json()
    assert "cat" in [p["class_name"] for p in body["classifications"][0]["predictions"]]
