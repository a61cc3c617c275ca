"""The bundle's ONNX graphs: the whole inference (normalisation, encoder, heads) exported from torch, and a
statically quantised int8 copy for CPUs with fast int8 dot products (VNNI), calibrated on training images."""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from contract.preprocess import Preprocess

OPSET = 17


class InferenceGraph(nn.Module):
    """uint8 images (N, 3, S, S) -> representation, projection[, class logits], as the service's torch path
    computes them (service.model.Model.infer), which takes the probabilities from the logits."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, classifier: nn.Module | None,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.preprocess = Preprocess(mean, std)
        self.encoder, self.projector, self.classifier = encoder, projector, classifier

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        h = self.encoder(self.preprocess(images))
        outputs = (h, self.projector(h))
        return outputs + ((self.classifier(h),) if self.classifier is not None else ())


def export_graph(graph: InferenceGraph, size: int) -> bytes:
    """The graph as ONNX (opset OPSET), any batch size."""
    outputs = ["representation", "projection"] + (["logits"] if graph.classifier is not None else [])
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated; it needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.eval(), (torch.zeros(2, 3, size, size, dtype=torch.uint8),), buffer,
                          input_names=["images"], output_names=outputs, opset_version=OPSET, dynamo=False,
                          # unfolded, the initializers keep the state_dict's names (the bundle links them to its
                          # safetensors); ONNX Runtime folds batch norms into convolutions when it opens the graph
                          do_constant_folding=False,
                          dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]})
    return buffer.getvalue()


def quantize_int8(graph: InferenceGraph, size: int, calibration: np.ndarray, batch_size: int = 32) -> bytes:
    """graph as int8 ONNX: int8 weights (per channel) and uint8 activations (QDQ), the activation ranges
    calibrated on calibration: uint8 images (N, 3, S, S).

    The batch norms are folded into the convolutions here (so the factors are known), and each convolution's
    int8 weights are written as what computes them, QuantizeLinear(weight x factor, scale), over the unfolded
    weight under its state_dict name: ONNX Runtime computes them once when it opens the graph, and the bundle
    reads the weight from its safetensors (contract.bundle) rather than storing the network a third time."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    folded, factors = fold_batch_norms(graph)
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, out = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(export_graph(folded, size))
        # Shapes inferred as advised, but not optimised: the optimiser fuses the projector's Linear and BatchNorm1d
        # into new float weights that the bundle's safetensors do not hold (1 MB more in the graph), and the
        # encoder's batch norms are folded above already.
        quant_pre_process(str(source), str(prepared), skip_optimization=True)
        # The encoder only: the representation, the heads and the softmax stay float. Quantised, the
        # probabilities came in steps of 1/255, so wherever the first class passed 0.99 the second and third were
        # ties at zero, and the top 3 arbitrary (42% of test images kept fp32's top-3 order).
        import onnx

        keep_float = [n.name for n in onnx.load(str(prepared)).graph.node
                      if not n.name.startswith("/encoder/") or n.op_type in ("GlobalAveragePool", "Flatten")]
        # Activation ranges from the 99.999th percentile, not the extremes: on 5,000 training images held out of
        # calibration (an epoch-9 reference checkpoint), min-max lost 0.22 points of linear top-1 against fp32,
        # 2,048 calibration images 0.32, entropy 0.22, moving-average min-max 0.12, and the percentile none (+0.08).
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile, extra_options={"CalibPercentile": 99.999},
                        nodes_to_exclude=keep_float)
        quantized = out.read_bytes()
    weights = {name: value.detach().numpy() for name, value in graph.state_dict().items()}
    return weights_as_formulas(quantized, factors, weights)


def fold_batch_norms(graph: InferenceGraph) -> tuple[InferenceGraph, dict[str, Tensor]]:
    """A copy of graph whose encoder has each batch norm that follows a convolution folded into it (same
    outputs in eval mode), and the factor each folded convolution's weight was multiplied by, keyed by the
    weight's state_dict name (encoder.layer1.0.conv1.weight): factor = gamma / sqrt(running_var + eps)."""
    folded = copy.deepcopy(graph)
    encoder = folded.encoder
    modules = dict(encoder.named_modules())
    factors = {}
    with torch.no_grad():
        for node in torch.fx.symbolic_trace(encoder).graph.nodes:
            source = node.args[0] if node.op == "call_module" and node.args else None
            if not (isinstance(modules.get(node.target), nn.BatchNorm2d) and getattr(source, "op", None) ==
                    "call_module" and isinstance(modules[source.target], nn.Conv2d) and len(source.users) == 1):
                continue
            conv, norm = modules[source.target], modules[node.target]
            factor = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            bias = norm.bias - norm.running_mean * factor + (conv.bias * factor if conv.bias is not None else 0)
            conv.weight.mul_(factor.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias)
            encoder.set_submodule(node.target, nn.Identity())
            factors[f"encoder.{source.target}.weight"] = factor.clone()
    return folded, factors


def weights_as_formulas(quantized: bytes, factors: dict[str, Tensor], weights: dict[str, np.ndarray]) -> bytes:
    """quantized (QDQ ONNX of the folded graph) with each folded weight's int8 initializer replaced by the nodes
    that compute it from the unfolded weight (weights[name], as an initializer of that name) and its factor."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX

    model = onnx.load_from_string(quantized)
    initializers = {t.name: t for t in model.graph.initializer}
    dequantizers = {node.input[0]: node for node in model.graph.node if node.op_type == "DequantizeLinear"}
    formulas, replaced = [], set()
    for name, factor in factors.items():
        int8 = name + TENSOR_NAME_QUANT_SUFFIX
        if int8 not in initializers or int8 not in dequantizers or name in initializers:
            continue  # not quantized as expected: its int8 weights stay as they are
        scale, zero_point = dequantizers[int8].input[1:3]
        axis = next((a.i for a in dequantizers[int8].attribute if a.name == "axis"), 1)
        shape = [-1] + [1] * (weights[name].ndim - 1)
        model.graph.initializer.extend([numpy_helper.from_array(weights[name], name),
                                        numpy_helper.from_array(factor.numpy().reshape(shape), name + ".factor")])
        formulas += [helper.make_node("Mul", [name, name + ".factor"], [name + ".folded"]),
                     helper.make_node("QuantizeLinear", [name + ".folded", scale, zero_point], [int8], axis=axis)]
        replaced.add(int8)
    kept = [t for t in model.graph.initializer if t.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = formulas + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()


def run_graph(graph: bytes, images: np.ndarray, outputs: list[str], desc: str,
              batch_size: int = 256) -> list[np.ndarray]:
    """The named outputs of a graph (self-contained ONNX bytes) for uint8 images (N, 3, S, S), with a progress
    bar."""
    import onnxruntime
    from tqdm import tqdm

    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    batches = [session.run(outputs, {"images": images[start:start + batch_size]})
               for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False)]
    return [np.concatenate(parts) for parts in zip(*batches)]
