"""Preprocessing and inference: image bytes -> the evaluation's input tensor -> representation, projection,
class probabilities, distance from the training images.

Preprocessing is the one the linear evaluation used: contract.images decodes and resizes to the manifest's
input size, then contract.preprocess scales the pixels to [0, 1] and normalises them with the manifest's mean and
std, as the trainer and the bundle's ONNX graphs do.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contract.bundle import Bundle, BundleError
from contract.familiarity import distance
from contract.images import decode_image
from contract.preprocess import Preprocess
from contract.timing import MIN_GAIN, pick_fastest, timed

@dataclass
class Outputs:
    """Per image: raw representation (N, D), the same L2-normalised, projection (N, P), class probabilities
    (N, C) or None, and distance (N,) or None: how far the image is from the training images (the Mahalanobis
    distance of contract.familiarity), for bundles that carry its statistics."""

    representation: Tensor
    unit: Tensor
    projection: Tensor
    probabilities: Tensor | None
    distance: Tensor | None = None

    def familiar(self, threshold: float | None) -> list[dict[str, float | bool | None]]:
        """Per image, training_distance and unlike_training_data as the answers carry them (None without)."""
        if self.distance is None or threshold is None:
            return [{"training_distance": None, "unlike_training_data": None}] * len(self.representation)
        return [{"training_distance": d, "unlike_training_data": d > threshold} for d in self.distance.tolist()]

    def __getitem__(self, rows: slice) -> Outputs:
        """The outputs of some of the images: how the batcher hands each request its own rows."""
        return Outputs(*(t[rows] if t is not None else None for t in (
            self.representation, self.unit, self.projection, self.probabilities, self.distance)))


RUNTIMES = ("torch-fp32", "torch-bf16", "torch-fp16", "onnx-fp32", "onnx-int8")


class Model:
    """A loaded bundle's networks with its preprocessing; infer() is what the batcher runs, on one runtime:

    - torch-fp32, torch-bf16 (and torch-fp16 on a GPU): the torch networks, channels-last (uint8 images arrive
      in that layout, and the convolutions are faster in it), the encoder under autocast for bf16 and fp16;
    - onnx-fp32, onnx-int8 (CPU): the bundle's ONNX graphs (normalisation, encoder and heads) in ONNX Runtime.
    The torch networks live on device; every output is float32, on the CPU, whatever the runtime. Whatever the
    runtime, the probabilities are the softmax of float logits at the bundle's temperature, and the distance from
    the training images is computed from the float representation.
    """

    def __init__(self, bundle: Bundle, runtime: str = "torch-fp32", device: str | torch.device = "cpu"):
        self.bundle, self.device = bundle, torch.device(device)
        self.size = bundle.manifest.input.size
        self.to_input = Preprocess.of(bundle.manifest.input).to(self.device)
        for net in (bundle.encoder, bundle.projector, bundle.classifier):
            if net is not None:
                net.to(self.device)
        bundle.encoder.to(memory_format=torch.channels_last)
        classifier, familiar = bundle.manifest.architecture.classifier, bundle.manifest.familiarity
        self.temperature = classifier.temperature if classifier else 1.0
        self.familiarity_threshold = familiar.threshold if familiar else None
        self._sessions: dict[str, object] = {}
        self.use(runtime)

    @property
    def runtimes(self) -> list[str]:
        """The runtimes this bundle (and this install) offers on the model's device."""
        if self.device.type == "cuda":
            return ["torch-fp32", "torch-fp16", "torch-bf16"]
        graphs = self.bundle.manifest.onnx
        if graphs is None or importlib.util.find_spec("onnxruntime") is None:
            return ["torch-fp32", "torch-bf16"]
        return ["torch-fp32", "torch-bf16", "onnx-fp32"] + (["onnx-int8"] if graphs.int8 else [])

    def use(self, runtime: str) -> None:
        if runtime not in self.runtimes:
            raise BundleError(f"runtime {runtime} is not available for {self.bundle.path} on {self.device.type}: "
                              f"it offers {', '.join(self.runtimes)} (the ONNX runtimes run on CPUs and need a "
                              f"bundle exported with its graphs, onnx-int8 with --int8-calibration, and "
                              f"onnxruntime installed; torch-fp16 runs on GPUs)")
        self.runtime = runtime

    def preprocess(self, data: bytes, max_pixels: int) -> np.ndarray:
        """uint8 (S, S, 3) from encoded image bytes; raises ImageError."""
        return decode_image(data, self.size, max_pixels)

    @staticmethod
    def batch(images: list[np.ndarray]) -> Tensor:
        """uint8 (N, 3, S, S), a view of the images stacked by numpy: no torch kernel runs here (see infer)."""
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)

    @torch.inference_mode()
    def infer(self, images: Tensor) -> Outputs:
        """Outputs of uint8 images (N, 3, S, S), any strides. The heads cost almost nothing next to the encoder,
        so every output is computed and each route takes what it needs. All of it runs in the service's one
        inference thread: see service.state for why no other thread runs torch's parallel kernels."""
        if self.runtime.startswith("onnx"):
            return self._infer_onnx(images)
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x = self.to_input(x)
        dtype = {"torch-bf16": torch.bfloat16, "torch-fp16": torch.float16}.get(self.runtime)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            h = self.bundle.encoder(x)
        h = h.float()
        z = self.bundle.projector(h)
        head = self.bundle.classifier
        logits = head(h).cpu() if head is not None else None
        return self._outputs(h.cpu(), z.cpu(), logits)

    def _infer_onnx(self, images: Tensor) -> Outputs:
        session = self._session()
        named = dict(zip([o.name for o in session.get_outputs()],
                         session.run(None, {"images": images.contiguous().numpy()})))
        h, z = torch.from_numpy(named["representation"]), torch.from_numpy(named["projection"])
        # The softmax and the familiarity distance in one torch thread: ONNX Runtime's threads still spin for
        # work after run(), and torch's parallel kernels fought them for the two cores (the distance took an
        # int8 batch of 1 from 0.8 to 2.2 ms; in one thread, 1.0 ms).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if "probabilities" in named:  # a graph exported before the temperature: its own softmax, at 1
                return self._outputs(h, z, None, torch.from_numpy(named["probabilities"]))
            return self._outputs(h, z, torch.from_numpy(named["logits"]) if "logits" in named else None)
        finally:
            torch.set_num_threads(threads)

    def _outputs(self, h: Tensor, z: Tensor, logits: Tensor | None, probabilities: Tensor | None = None) -> Outputs:
        unit = F.normalize(h, dim=1)
        if logits is not None:
            probabilities = F.softmax(logits / self.temperature, dim=1)
        statistics = self.bundle.familiarity
        return Outputs(h, unit, z, probabilities, distance(unit, *statistics) if statistics is not None else None)

    def _session(self):
        """The runtime's ONNX Runtime session, made on first use (in the inference thread), with as many threads
        as torch has."""
        if self.runtime not in self._sessions:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
            graphs = self.bundle.manifest.onnx
            file = self.bundle.path / (graphs.int8 if self.runtime == "onnx-int8" else graphs.fp32)
            self._sessions[self.runtime] = onnxruntime.InferenceSession(str(file), options,
                                                                        providers=["CPUExecutionProvider"])
        return self._sessions[self.runtime]


def pick_runtime(model: Model, asked: str, batch: int = 32, min_gain: float = MIN_GAIN, rounds: int = 5
                 ) -> tuple[str, str]:
    """The runtime to serve with, and why: as asked, or for "auto" the fastest of those the bundle offers, timed
    on batches in turns (contract.timing.pick_fastest: medians of `rounds`), where it is at least min_gain times
    torch-fp32's speed (bf16 is that on CPUs with fast bf16, and slower on others). Besides the fp32 ones, a
    runtime competes only where the export measured it against fp32 and it passed the gate
    (contract.bundle.RuntimeCheck: accuracy, and the same top-1 and top 3); otherwise it runs when asked for."""
    if asked != "auto":
        model.use(asked)
        return asked, "as asked"
    images = torch.randint(0, 256, (batch, 3, model.size, model.size), dtype=torch.uint8)
    passed = {check.runtime for check in model.bundle.manifest.runtime_checks if check.passed}
    candidates = [r for r in model.runtimes if r in ("torch-fp32", "onnx-fp32") or r in passed]

    def batch_seconds(runtime: str) -> float:
        model.use(runtime)
        model.infer(images)  # untimed: the first call after a switch pays for it (a runtime's very first allocates)
        return timed(lambda: model.infer(images))

    choice, gains = pick_fastest({r: partial(batch_seconds, r) for r in candidates}, "torch-fp32", min_gain, rounds)
    model.use(choice)
    return model.runtime, "auto: " + ", ".join(f"{r} {g:.2f}x" for r, g in gains.items())
