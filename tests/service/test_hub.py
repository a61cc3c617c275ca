"""hubconf.py, torch.hub's entry points: loaded as torch.hub loads them (from a clone, and from GitHub's cache
layout), the reference model gives the evaluation's answers on tests/reference and the bundle's ONNX graph's
representations, and refuses input it would misread. Here beside the service's tests for their bundle factory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from factories import make_run

from contract.images import decode_image
from service.settings import REFERENCE_BUNDLE
from trainer.export import export

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "reference"


@pytest.fixture(scope="module")
def samples() -> tuple[torch.Tensor, dict]:
    expected = json.loads((SAMPLES / "expected.json").read_text())
    images = [torch.from_numpy(decode_image((SAMPLES / f).read_bytes(), 32)).permute(2, 0, 1) for f in expected]
    return torch.stack(images), expected


def test_the_entry_points_as_torch_hub_lists_them_from_github(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub's cache: OWNER_REPO_BRANCH, here this checkout
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "owner_simclr-cifar_main").symlink_to(ROOT)
    assert torch.hub.list("owner/simclr-cifar:main", trust_repo=True, skip_validation=True) == [
        "bundle", "simclr_resnet18"]


def test_the_reference_classifies_as_its_evaluation_did(samples):
    images, expected = samples
    model = torch.hub.load(str(ROOT), "simclr_resnet18", source="local", classifier=True)
    assert not model.training and model.manifest.classes[3] == "cat"
    with torch.no_grad():
        logits = model(images)
    probabilities = (logits / model.manifest.architecture.classifier.temperature).softmax(dim=1)
    top = probabilities.topk(3, dim=1)
    for answer, p, ids in zip(expected.values(), top.values, top.indices):
        assert [model.manifest.classes[i] for i in ids] == answer["top3"]
        assert p.tolist() == pytest.approx(answer["p"], abs=0.01)  # float16 weights, as the fp32 runtimes' test


def test_the_encoder_gives_the_bundles_onnx_representations(samples):
    images, _ = samples
    encoder = torch.hub.load(str(ROOT), "simclr_resnet18", source="local")
    with torch.no_grad():
        features = encoder(images)
    session = onnxruntime.InferenceSession(str(REFERENCE_BUNDLE / "model.onnx"))
    (graph,) = session.run(["representation"], {"images": images.numpy()})
    assert features.shape == (10, 512)
    np.testing.assert_allclose(features.numpy(), graph, atol=1e-4, rtol=1e-4)


def test_input_it_would_misread_and_a_bundle_without_a_head_are_refused(samples, tmp_path):
    images, _ = samples
    encoder = torch.hub.load(str(ROOT), "simclr_resnet18", source="local")
    with pytest.raises(TypeError, match=r"uint8 RGB images .* got torch.float32 \(10, 3, 32, 32\)"):
        encoder(images.float() / 255)  # ToTensor's floats: normalised again, they would be wrong, not an error
    with pytest.raises(TypeError, match=r"got torch.uint8 \(3, 32, 32\)"):
        encoder(images[0])
    run, _ = make_run(tmp_path / "run", evaluated=False)
    export(run, tmp_path / "bundle")
    assert torch.hub.load(str(ROOT), "bundle", str(tmp_path / "bundle"), source="local").classifier is None
    with pytest.raises(ValueError, match="has no classifier: its run was not evaluated"):
        torch.hub.load(str(ROOT), "bundle", str(tmp_path / "bundle"), source="local", classifier=True)
