"""How often a bundle's familiarity threshold flags images unlike its training data, and how often it lets
CIFAR-10's own test images through, under the runtimes the service runs.

    pip install scikit-image    # its bundled sample photographs; not a dependency of the project
    python -m benchmarks.familiarity --bundle models/reference --data-dir ~/data/cifar10

The sets, each 32 x 32 as the service sees them (contract.images.fit of random crops, 10-100% of the area):
- CIFAR-10 test images (in distribution: the share accepted should be near the threshold's 95%);
- trainer.synthetic's four sets (noise, smooth noise, flat colour, stripes and checks);
- photographs of other things: scikit-image's astronaut, camera, coffee, coins, clock, rocket, moon and
  hubble_deep_field; microscopy and medical: immunohistochemistry, retina, cell; documents: page, text;
  textures: brick, grass, gravel (64 crops of each);
- a control: scikit-image's chelsea, a photograph of a cat, a CIFAR-10 class (64 crops): mostly accepted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from contract.bundle import load_bundle
from contract.images import fit
from service.model import Model
from trainer.data import balanced_subset, load_split
from trainer.synthetic import synthetic_sets

PHOTOS = {
    "photographs of other things": ["astronaut", "camera", "coffee", "coins", "clock", "rocket", "moon",
                                    "hubble_deep_field"],
    "microscopy and medical": ["immunohistochemistry", "retina", "cell"],
    "documents": ["page", "text"],
    "textures": ["brick", "grass", "gravel"],
    "control: a cat photograph (CIFAR-10 class)": ["chelsea"],
}


def crops(image: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n random crops (10-100% of the area, aspect 3/4 to 4/3) of an image, fitted to size: uint8 (n, 3, S, S)."""
    pil = Image.fromarray(image if image.ndim == 3 else np.stack([image] * 3, axis=-1)).convert("RGB")
    width, height = pil.size
    out = []
    for _ in range(n):
        area, ratio = rng.uniform(0.1, 1.0) * width * height, np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = min(width, round(np.sqrt(area * ratio))), min(height, round(np.sqrt(area / ratio)))
        left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
        out.append(fit(pil.crop((left, top, left + w, top + h)), size))
    return np.stack(out).transpose(0, 3, 1, 2)


def photo_sets(size: int, per_image: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    import skimage.data

    rng = np.random.default_rng(seed)
    return {group: np.concatenate([crops(getattr(skimage.data, name)(), per_image, size, rng) for name in names])
            for group, names in PHOTOS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("models/reference"))
    parser.add_argument("--data-dir", type=Path, required=True, help="the CIFAR-10 copy (its test split)")
    parser.add_argument("--test-images", type=int, default=10_000, help="class-balanced CIFAR-10 test images")
    parser.add_argument("--runtimes", nargs="+", default=["torch-fp32", "onnx-int8"])
    args = parser.parse_args(argv)
    bundle = load_bundle(args.bundle)
    spec = bundle.manifest.familiarity
    if spec is None:
        print(f"error: {args.bundle} carries no familiarity (export it again)", file=sys.stderr)
        return 2
    size = bundle.manifest.input.size
    test = load_split(args.data_dir, "test", size, download=False, cache_dir="~/.cache/simclr-cifar")
    sets = {f"CIFAR-10 test images ({min(args.test_images, len(test)):,})":
            balanced_subset(test, min(args.test_images, len(test))).images.numpy()}
    sets |= {f"synthetic: {name}": images for name, images in synthetic_sets(500, size).items()}
    sets |= photo_sets(size)
    print(f"{bundle.name}: distance threshold {spec.threshold:.2f} (class means and covariance of {spec.images:,} "
          f"training images)\n")
    print("| set | images | " + " | ".join(f"flagged, {r}" for r in args.runtimes) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in args.runtimes) + " |")
    model = Model(bundle)
    for name, images in sets.items():
        rates = []
        for runtime in args.runtimes:
            model.use(runtime)
            distances = torch.cat([model.infer(torch.from_numpy(images[i:i + 256])).distance
                                   for i in range(0, len(images), 256)])
            rates.append((distances > spec.threshold).double().mean().item())
        print(f"| {name} | {len(images):,} | " + " | ".join(f"{100 * r:.1f}%" for r in rates) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
