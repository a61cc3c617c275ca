"""Build the similar-image index: embed images with a bundle's encoder into a FAISS index.

    python -m service.build_index --bundle bundles/r18 --data-dir ~/data/cifar10 --out indexes/cifar10-train
    python -m service.build_index --bundle bundles/r18 --data-dir ~/data/cifar10 --splits train test \\
        --data-dir ~/photos --index-type hnsw --out indexes/all

A --data-dir with CIFAR-10 in torchvision's layout (cifar-10-batches-py/; an empty or missing folder gets it
downloaded, as the trainer does) or laid out as train/<class>/* [test/<class>/*] contributes its --splits,
labelled; any other folder contributes all its images, unlabelled. Images go through the service's own
preprocessing and --runtime, so an indexed image sent to /search finds itself. --index-type flat (default) is
exact; hnsw is a graph index for large collections, whose recall@10 against exact search is measured on a
sample of the indexed vectors and printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from contract.bundle import BundleError, load_bundle
from contract.cifar10 import DataError, is_cifar10_root, load_cifar10
from contract.images import ImageError, decode_image, fit, list_images
from service.index import FORMAT, FORMAT_VERSION, write_index
from service.model import RUNTIMES, Model, Outputs, pick_runtime


class BuildError(Exception):
    """Bad input to the build: printed as one line, exit status 2."""


@dataclass
class Entry:
    """One image to index: its pixels (already decoded) or its file, and what the index says of it."""

    pixels: np.ndarray | Path
    split: str
    class_name: str | None
    source: str


def find_images(root: Path, splits: list[str], download: bool = True) -> list[Entry]:
    """Every image a --data-dir contributes: CIFAR-10 in torchvision's layout (downloaded into an empty or
    missing folder) or a labelled image folder gives its splits, any other folder all its images, unlabelled."""
    if is_cifar10_root(root):
        entries = []
        for split in splits:
            try:
                images, labels, classes = load_cifar10(root, split, download)
            except DataError as e:
                raise BuildError(str(e)) from None
            entries += [Entry(image, split, classes[label], f"cifar-10-batches-py/{split}/{i}")
                        for i, (image, label) in enumerate(zip(images, labels))]
        return entries
    if not root.is_dir():
        raise BuildError(f"--data-dir {root} is not a directory")
    if (root / "train").is_dir():
        entries = []
        for split in splits:
            for class_dir in sorted(d for d in (root / split).glob("*") if d.is_dir() and not d.name.startswith(".")):
                entries += [Entry(f, split, class_dir.name, str(f.relative_to(root))) for f in list_images(class_dir)]
        return entries
    return [Entry(f, root.name, None, str(f.relative_to(root))) for f in list_images(root)]


def decode_all(entries: list[Entry], size: int, max_pixels: int, threads: int = os.cpu_count() or 1,
               bar: bool = True) -> np.ndarray:
    """uint8 (N, size, size, 3): files decoded (Pillow releases the GIL, so threads decode in parallel) and
    arrays resized as the service resizes uploads."""
    images = np.empty((len(entries), size, size, 3), dtype=np.uint8)

    def decode(i: int) -> None:
        pixels = entries[i].pixels
        try:
            images[i] = decode_image(pixels.read_bytes(), size, max_pixels) if isinstance(pixels, Path) \
                else fit(pixels, size)
        except (ImageError, OSError) as e:
            raise BuildError(f"cannot read image {pixels}: {e}") from None

    with ThreadPoolExecutor(threads) as pool:
        for _ in tqdm(pool.map(decode, range(len(entries)), chunksize=256), total=len(entries), desc="decoding",
                      unit="img", mininterval=1, disable=not bar):
            pass
    return images


def recall_at(approx: faiss.Index, vectors: np.ndarray, k: int = 10, queries: int = 1000, seed: int = 0) -> float:
    """Mean fraction of the exact top-k that the approximate index returns, over a sample of the vectors."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    sample = vectors[np.random.default_rng(seed).choice(len(vectors), min(queries, len(vectors)), replace=False)]
    _, truth = exact.search(sample, k)
    _, found = approx.search(sample, k)
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found)]))


def build(bundle_dir: str | Path, data_dirs: list[str], out: str | Path, splits: list[str],
          index_type: str = "flat", hnsw_m: int = 32, ef_search: int = 128, batch_size: int = 256,
          max_pixels: int = 40_000_000, download: bool = True, model: Model | None = None,
          infer: Callable[[Tensor], Outputs] | None = None, progress: Callable[[int, int], None] | None = None,
          runtime: str = "auto") -> dict:
    """Embed the images, build the index, write it to out; returns the index's info (index.json). The service
    passes its own model, an infer that runs each batch in its inference thread, and progress(done, total),
    called after each batch instead of drawing progress bars."""
    if model is None:
        model = Model(load_bundle(bundle_dir))
        print(f"inference: {pick_runtime(model, runtime)[0]}")
    infer = infer or model.infer
    bundle = model.bundle
    classes = list(bundle.manifest.classes)  # label ids agree with /classify's where the names do
    entries = [entry for root in data_dirs for entry in find_images(Path(root), splits, download)]
    if not entries:
        raise BuildError(f"no images found in {', '.join(data_dirs)} (splits {', '.join(splits)})")
    for entry in entries:
        if entry.class_name is not None and entry.class_name not in classes:
            classes.append(entry.class_name)

    started = time.perf_counter()
    images = decode_all(entries, model.size, max_pixels, bar=progress is None)
    vectors = np.empty((len(entries), bundle.manifest.architecture.representation_dim), dtype=np.float32)
    with tqdm(total=len(entries), desc="embedding", unit="img", mininterval=1, disable=progress is not None) as bar:
        for start in range(0, len(entries), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)
            vectors[start:start + len(batch)] = infer(batch).unit.numpy()
            bar.update(len(batch))
            if progress:
                progress(start + len(batch), len(entries))
    embedded = time.perf_counter()

    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(vectors.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(2 * hnsw_m, ef_search)
        index.hnsw.efSearch = ef_search
    else:
        index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    print(f"{len(vectors)} images decoded and embedded in {embedded - started:.1f} s "
          f"({len(vectors) / (embedded - started):.0f} images/s); {index_type} index built in "
          f"{time.perf_counter() - embedded:.1f} s")
    recall = recall_at(index, vectors) if index_type != "flat" else 1.0
    if index_type != "flat":
        print(f"recall@10 against exact search: {recall:.4f} (efSearch {ef_search}, {min(1000, len(vectors))} "
              f"indexed vectors as queries)")

    info = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "bundle": bundle.fingerprint, "bundle_name": bundle.name,
        "index_type": index_type, **({"hnsw_m": hnsw_m, "ef_search": ef_search} if index_type == "hnsw" else {}),
        "recall_at_10": recall, "count": len(vectors), "dim": int(vectors.shape[1]), "image_size": model.size,
        "runtime": model.runtime,
        "classes": classes, "data_dirs": [str(Path(d).resolve()) for d in data_dirs], "splits": splits,
    }
    metadata = {
        "split": [e.split for e in entries],
        "label": [classes.index(e.class_name) if e.class_name is not None else -1 for e in entries],
        "source": [e.source for e in entries],
    }
    write_index(Path(out), index, images, metadata, info)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.build_index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="model bundle directory (python -m trainer.export)")
    parser.add_argument("--data-dir", required=True, action="append",
                        help="image folder to index; repeat for several")
    parser.add_argument("--out", required=True, help="index directory to write")
    parser.add_argument("--splits", nargs="+", default=["train"], help="splits of labelled folders (default: train)")
    parser.add_argument("--index-type", choices=("flat", "hnsw"), default="flat",
                        help="flat: exact inner product (default); hnsw: approximate graph index")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node (default: 32)")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth (default: 128)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per inference batch (default: 256)")
    parser.add_argument("--runtime", choices=("auto", *RUNTIMES), default=os.environ.get("SIMCLR_RUNTIME", "auto"),
                        help="what runs the model: queries score best against an index embedded as they are, so "
                             "this is the service's --runtime, SIMCLR_RUNTIME too (default: that, else auto)")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="download CIFAR-10 into an empty or missing --data-dir (default: on)")
    args = parser.parse_args(argv)
    try:
        info = build(args.bundle, args.data_dir, args.out, args.splits, args.index_type, args.hnsw_m,
                     args.ef_search, args.batch_size, download=args.download, runtime=args.runtime)
    except (BuildError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"index {args.out}: {info['count']} images, {info['dim']}-d, {info['index_type']}, "
          f"bundle {info['bundle_name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

