"""trainer.onnx_export: folding the batch norms keeps the outputs, and the int8 graph that computes its weights
from the unfolded ones (so that a bundle stores them once) answers as the plain quantised graph does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from contract.networks import projector, resnet_encoder
from trainer import onnx_export
from trainer.onnx_export import InferenceGraph, fold_batch_norms, quantize_int8

SIZE = 16


@pytest.fixture(scope="module")
def graph() -> InferenceGraph:
    """A ResNet-18 inference whose batch norms are far from the identity (random statistics and affine)."""
    torch.manual_seed(0)
    encoder = resnet_encoder("resnet18")
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5), module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 2)
    return InferenceGraph(encoder, projector(512, 64, 32), None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)


def run(graph: bytes, x: np.ndarray) -> list[np.ndarray]:
    return onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, {"images": x})


def test_folding_the_batch_norms_keeps_the_outputs_and_leaves_the_graph_alone(graph):
    before = {k: v.clone() for k, v in graph.state_dict().items()}
    folded, factors = fold_batch_norms(graph)
    x = torch.from_numpy(images(4, seed=1))
    with torch.no_grad():
        for a, b in zip(graph(x), folded(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.encoder.modules())
    convs = {f"encoder.{name}.weight" for name, m in graph.encoder.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(factors) == convs
    assert all(torch.equal(v, before[k]) for k, v in graph.state_dict().items())


def test_int8_weights_computed_at_load_equal_the_quantised_ones(graph, monkeypatch):
    calibration = images(32, seed=2)
    formulas = quantize_int8(graph, SIZE, calibration)
    monkeypatch.setattr(onnx_export, "weights_as_formulas", lambda quantized, factors, weights: quantized)
    plain = quantize_int8(graph, SIZE, calibration)
    x = images(8, seed=3)
    for a, b in zip(run(plain, x), run(formulas, x)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())
    initializers = {t.name: t for t in onnx.load_from_string(formulas).graph.initializer}
    conv = "encoder.layer4.1.conv2.weight"
    assert conv + "_quantized" in {t.name for t in onnx.load_from_string(plain).graph.initializer}
    assert conv + "_quantized" not in initializers  # computed, not stored ...
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(initializers[conv]),
                                  graph.state_dict()[conv].numpy())  # ... from the weight under its own name
