"""Build the similar-image index: embed image folders with a bundle's encoder into a FAISS index.

    python -m service.build_index --bundle bundles/r18 --data-dir ~/data/cifar10 --out indexes/cifar10-train
    python -m service.build_index --bundle bundles/r18 --data-dir ~/data/cifar10 --splits train test \\
        --data-dir ~/photos --index-type hnsw --out indexes/all

A --data-dir laid out as train/<class>/* [test/<class>/*] contributes its --splits, labelled; any other folder
contributes all its images, unlabelled. Images go through the service's own preprocessing, so an indexed
image sent to /search finds itself. --index-type flat (default) is exact; hnsw is a graph index for large
collections, whose recall@10 against exact search is measured on a sample of the indexed vectors and printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from contract.bundle import BundleError, load_bundle
from contract.images import ImageError, decode_image, list_images
from service.index import FORMAT, FORMAT_VERSION, write_index
from service.model import Model


class BuildError(Exception):
    """Bad input to the build: printed as one line, exit status 2."""


def find_images(root: Path, splits: list[str]) -> list[tuple[Path, str, str | None]]:
    """(file, split, class name or None) for every image the folder contributes."""
    if not root.is_dir():
        raise BuildError(f"--data-dir {root} is not a directory")
    if (root / "train").is_dir():
        found = []
        for split in splits:
            for class_dir in sorted(d for d in (root / split).glob("*") if d.is_dir() and not d.name.startswith(".")):
                found += [(f, split, class_dir.name) for f in list_images(class_dir)]
        return found
    return [(f, root.name, None) for f in list_images(root)]


def recall_at(approx: faiss.Index, vectors: np.ndarray, k: int = 10, queries: int = 1000, seed: int = 0) -> float:
    """Mean fraction of the exact top-k that the approximate index returns, over a sample of the vectors."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    sample = vectors[np.random.default_rng(seed).choice(len(vectors), min(queries, len(vectors)), replace=False)]
    _, truth = exact.search(sample, k)
    _, found = approx.search(sample, k)
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found)]))


def build(bundle_dir: str, data_dirs: list[str], out: str, splits: list[str], index_type: str = "flat",
          hnsw_m: int = 32, ef_search: int = 128, batch_size: int = 256, max_pixels: int = 40_000_000) -> dict:
    """Embed the images, build the index, write it to out; returns the index's info (index.json)."""
    bundle = load_bundle(bundle_dir)
    model = Model(bundle)
    classes = list(bundle.manifest.classes)  # label ids agree with /classify's where the names do
    entries = []
    for root in map(Path, data_dirs):
        entries += [(root, *entry) for entry in find_images(root, splits)]
    if not entries:
        raise BuildError(f"no images found in {', '.join(data_dirs)} (splits {', '.join(splits)})")
    for _, _, _, name in entries:
        if name is not None and name not in classes:
            classes.append(name)

    images = np.empty((len(entries), model.size, model.size, 3), dtype=np.uint8)
    for i, (root, file, _, _) in enumerate(tqdm(entries, desc="decoding", unit="img", mininterval=1)):
        try:
            images[i] = decode_image(file.read_bytes(), model.size, max_pixels)
        except (ImageError, OSError) as e:
            raise BuildError(f"cannot read image {file}: {e}") from None
    vectors = np.empty((len(entries), bundle.manifest.architecture.representation_dim), dtype=np.float32)
    with tqdm(total=len(entries), desc="embedding", unit="img", mininterval=1) as bar:
        for start in range(0, len(entries), batch_size):
            batch = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2)
            vectors[start:start + len(batch)] = F.normalize(model.infer(batch).representation, dim=1).numpy()
            bar.update(len(batch))

    started = time.perf_counter()
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(vectors.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(2 * hnsw_m, ef_search)
        index.hnsw.efSearch = ef_search
    else:
        index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    print(f"{index_type} index of {len(vectors)} vectors built in {time.perf_counter() - started:.1f} s")
    recall = recall_at(index, vectors) if index_type != "flat" else 1.0
    if index_type != "flat":
        print(f"recall@10 against exact search: {recall:.4f} (efSearch {ef_search}, {min(1000, len(vectors))} "
              f"indexed vectors as queries)")

    info = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "bundle": bundle.fingerprint, "bundle_name": bundle.name,
        "index_type": index_type, **({"hnsw_m": hnsw_m, "ef_search": ef_search} if index_type == "hnsw" else {}),
        "recall_at_10": recall, "count": len(vectors), "dim": int(vectors.shape[1]), "image_size": model.size,
        "classes": classes, "data_dirs": [str(Path(d).resolve()) for d in data_dirs], "splits": splits,
    }
    metadata = {
        "split": [split for _, _, split, _ in entries],
        "label": [classes.index(name) if name is not None else -1 for _, _, _, name in entries],
        "source": [str(file.relative_to(root)) for root, file, _, _ in entries],
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
    args = parser.parse_args(argv)
    try:
        info = build(args.bundle, args.data_dir, args.out, args.splits, args.index_type, args.hnsw_m,
                     args.ef_search, args.batch_size)
    except (BuildError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"index {args.out}: {info['count']} images, {info['dim']}-d, {info['index_type']}, "
          f"bundle {info['bundle_name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

