"""The bundle's ONNX graphs: the whole inference (normalisation, encoder, heads) exported from torch, and a
statically quantised int8 copy for CPUs with fast int8 dot products (VNNI), calibrated on training images."""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

OPSET = 17


class InferenceGraph(nn.Module):
    """uint8 images (N, 3, S, S) -> representation, projection[, class probabilities], as the service's torch
    path computes them (service.model.Model.infer)."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, classifier: nn.Module | None,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.encoder, self.projector, self.classifier = encoder, projector, classifier
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        h = self.encoder((images.float() - self.mean) / self.std)
        outputs = (h, self.projector(h))
        return outputs + ((F.softmax(self.classifier(h), dim=1),) if self.classifier is not None else ())


def export_graph(graph: InferenceGraph, size: int) -> bytes:
    """The graph as ONNX (opset OPSET), any batch size."""
    outputs = ["representation", "projection"] + (["probabilities"] if graph.classifier is not None else [])
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated; it needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.eval(), (torch.zeros(2, 3, size, size, dtype=torch.uint8),), buffer,
                          input_names=["images"], output_names=outputs, opset_version=OPSET, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]})
    return buffer.getvalue()


def quantize_int8(graph: bytes, calibration: np.ndarray, batch_size: int = 32) -> bytes:
    """graph with int8 weights (per channel) and uint8 activations (QDQ), the activation ranges calibrated on
    calibration: uint8 images (N, 3, S, S)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, out = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        quant_pre_process(str(source), str(prepared))  # shapes inferred and graph optimised, as advised
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()
