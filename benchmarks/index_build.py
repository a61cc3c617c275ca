"""The similar-image index build, end to end, against the way it was built before, side by side in one run.

    python -m benchmarks.index_build --data-dir ~/data/cifar10                  # all 50,000 training images
    python -m benchmarks.index_build --data-dir ~/data/cifar10 --bundle models/reference --limit 10000

Before: images decoded one after another, the encoder in fp32 on NCHW tensors (timed on --before-images
images and projected to the whole set). Now: service.build_index.build as the service runs it (threads
decode), once per --runtime. Speed does not depend on the weights: without --bundle a ResNet-18 bundle with
random weights (and its ONNX graphs, int8 calibrated on noise) is made in a temporary folder. Target: 50,000 CIFAR-10
images in at most 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from contract.bundle import (ENCODER, ONNX_FP32, ONNX_INT8, PROJECTOR, Architecture, InputSpec, Manifest, OnnxGraphs,
                             Projection, Training, load_bundle, write_bundle)
from contract.images import RESIZE, decode_image
from contract.networks import projector, resnet_encoder
from service.build_index import BuildOptions, build, find_images
from service.model import RUNTIMES
from trainer.onnx_export import OPSET, InferenceGraph, export_graph, quantize_int8


def random_bundle(out: Path) -> Path:
    encoder, head = resnet_encoder("resnet18"), projector(512, 512, 128)
    manifest = Manifest(
        architecture=Architecture(backbone="resnet18", width=1, stem="cifar", representation_dim=512,
                                  projection=Projection(hidden_dim=512, out_dim=128), classifier=None),
        input=InputSpec(size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), resize=RESIZE),
        classes=[], metrics=None,
        training=Training(epochs=0, checkpoint_epoch=0, checkpoint="none (random weights, for timing)", batch_size=0,
                          optimizer="none", lr=0, weight_decay=0, temperature=1, data_dir="none"))
    graph = InferenceGraph(encoder, head, None, manifest.input.mean, manifest.input.std)
    calibration = np.random.default_rng(0).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)  # timing only
    manifest.onnx = OnnxGraphs(int8=ONNX_INT8, opset=OPSET, int8_calibration_images=len(calibration))
    write_bundle(out, manifest, {ENCODER: encoder.state_dict(), PROJECTOR: head.state_dict()},
                 {ONNX_FP32: export_graph(graph, 32), ONNX_INT8: quantize_int8(graph, 32, calibration)})
    return out


def before(bundle_dir: Path, data_dir: Path, n: int, batch_size: int = 256) -> float:
    """Images per second the old way: serial decode, fp32 NCHW encoder."""
    entries = find_images(data_dir, ["train"])[:n]
    encoder = load_bundle(bundle_dir).encoder
    started = time.perf_counter()
    images = np.stack([decode_image(e.pixels.read_bytes(), 32, 40_000_000) if isinstance(e.pixels, Path)
                       else e.pixels for e in entries])
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).contiguous().float() / 255
            encoder(x)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="CIFAR-10 (either layout) or an image folder")
    parser.add_argument("--bundle", type=Path, help="bundle to embed with (default: random ResNet-18 weights)")
    parser.add_argument("--limit", type=int, help="index only the first N training images (default: all)")
    parser.add_argument("--before-images", type=int, default=5000, help="images the old way is timed on")
    parser.add_argument("--runtime", nargs="+", default=list(RUNTIMES), choices=RUNTIMES,
                        help="runtimes to build with (default: all four)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or random_bundle(Path(tmp) / "bundle")
        data = args.data_dir
        if args.limit:  # a folder of the first N images, linked, so that build() sees only those
            data = Path(tmp) / "subset"
            for entry in find_images(args.data_dir, ["train"])[:args.limit]:
                link = data / "train" / entry.source.split("/", 1)[1]
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(entry.pixels.resolve())
        n = len(find_images(data, ["train"]))
        rate = before(bundle, args.data_dir, min(args.before_images, n))
        rows = [("before: serial decode, fp32 NCHW", n / rate, rate)]
        for runtime in args.runtime:
            started = time.perf_counter()
            build(bundle, [str(data)], Path(tmp) / f"index-{runtime}", BuildOptions(runtime=runtime))
            seconds = time.perf_counter() - started
            rows.append((f"now: build(), {runtime}", seconds, n / seconds))
    print(f"\n{n} images, {torch.get_num_threads()} torch threads")
    print(f"{'path':<40} {'seconds':>9} {'images/s':>9} {'vs before':>10}")
    for name, seconds, rate in rows:
        print(f"{name:<40} {seconds:9.1f} {rate:9.0f} {rate / rows[0][2]:9.2f}x")
    print("(before: timed on the first images and projected; now: decode, embed, index and write, all measured)")


if __name__ == "__main__":
    main()
