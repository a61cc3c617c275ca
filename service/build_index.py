"""Build a similar-image index, or add a folder of images to one: embed them with a bundle's encoder into a
FAISS index whose catalog keeps each image's id, metadata and thumbnail (service.index).

    python -m service.build_index --bundle models/reference --data-dir ~/data/cifar10 --out indexes/cifar10-train
    python -m service.build_index --bundle models/reference --data-dir ~/photos --metadata photos.csv \\
        --index-type HNSW32 --out indexes/photos
    python -m service.build_index --bundle models/reference --data-dir ~/more-photos --out indexes/photos  # adds
    python -m service.build_index --bundle models/reference --data-dir ~/photos --out milvus://milvus:19530 \\
        --index-type HNSW                                         # into Milvus: the bundle's collection there
    python -m service.build_index --from-parquet vectors.parquet --out indexes/copy    # an export, back

A --data-dir with CIFAR-10 in torchvision's layout (cifar-10-batches-py/; an empty or missing folder gets it
downloaded, as the trainer does) or laid out as train/<class>/* [test/<class>/*] contributes its --splits,
with metadata {"class": ..., "split": ...}; any other folder contributes all its images. Ids are the images'
paths relative to their --data-dir (CIFAR-10's: split/number). --metadata adds per-id metadata from a CSV
file with an "id" column or a JSON Lines file of objects with an "id". Images go through the service's own
preprocessing and --runtime, so an indexed image sent to /search finds itself. --index-type is a FAISS
factory string (for Milvus, its index type: FLAT, HNSW, IVF_FLAT, AUTOINDEX): Flat (default) is exact; HNSW32,
IVF4096,PQ32 ... are approximate, for large collections (docs/serving.md says which at which size), and their
recall@10 against exact search is measured and printed.
An --out that holds an index gets the images added (replacing those with the same ids), also while a service
serves it: the service sees them at its next search (service.index).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from contract.bundle import BundleError, load_bundle
from contract.cifar10 import DataError, load_cifar10
from contract.files import recorded_path
from contract.images import ImageError, data_layout, decode_all, fit, list_images, open_image
from service.catalog import Item, MetadataValues
from service.index import SearchIndexError, make_thumbnail
from service.indexes import (Index, Location, check_type, create_index, exists, location_of, open_index, publish,
                             read_index_info, staging)
from service.model import RUNTIMES, Model, Outputs, pick_runtime


class BuildError(Exception):
    """Bad input to the build: printed as one line, exit status 2."""


@dataclass
class Entry:
    """One image to index: its pixels (already decoded) or its file, its id and metadata."""

    pixels: np.ndarray | Path
    id: str
    metadata: MetadataValues = field(default_factory=dict)

    @property
    def class_name(self) -> str | None:
        return self.metadata.get("class")


def find_images(root: Path, splits: list[str], download: bool = True) -> list[Entry]:
    """Every image a --data-dir contributes: CIFAR-10 in torchvision's layout (downloaded into an empty or
    missing folder) or a labelled image folder gives its splits, any other folder all its images."""
    layout = data_layout(root)
    if layout == "cifar10":
        entries = []
        for split in splits:
            try:
                images, labels, classes = load_cifar10(root, split, download)
            except DataError as e:
                raise BuildError(str(e)) from None
            entries += [Entry(image, f"{split}/{i:05d}", {"class": classes[label], "split": split})
                        for i, (image, label) in enumerate(zip(images, labels))]
        return entries
    if not root.is_dir():
        raise BuildError(f"--data-dir {root} is not a directory")
    if layout == "labelled":
        entries = []
        for split in splits:
            for class_dir in sorted(d for d in (root / split).glob("*") if d.is_dir() and not d.name.startswith(".")):
                entries += [Entry(f, str(f.relative_to(root)), {"class": class_dir.name, "split": split})
                            for f in list_images(class_dir)]
        return entries
    return [Entry(f, str(f.relative_to(root))) for f in list_images(root)]


def read_metadata(path: Path) -> dict[str, MetadataValues]:
    """Per-id metadata from a CSV file with an "id" column (values stay strings) or a JSON Lines file of
    objects with an "id" (strings and numbers)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".csv":
                rows = list(csv.DictReader(f))
            else:
                rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise BuildError(f"cannot read --metadata {path}: {e}") from None
    table = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise BuildError(f"--metadata {path}, record {n}: no \"id\" string")
        values = {k: v for k, v in row.items() if k != "id"}
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values.values()):
            raise BuildError(f"--metadata {path}, record {n}: values must be strings or numbers")
        table[row["id"]] = values
    return table


def decode_entries(entries: list[Entry], size: int, max_pixels: int, thumbnail_size: int | None = None,
                   bar: bool = True) -> tuple[np.ndarray, list[bytes | None]]:
    """uint8 (N, size, size, 3) as the service resizes uploads, and (with a thumbnail_size) each image's
    thumbnail, decoded in threads (contract.images.decode_all) into one preallocated array."""
    images = np.empty((len(entries), size, size, 3), dtype=np.uint8)
    thumbnails: list[bytes | None] = [None] * len(entries)

    def decode(i: int) -> None:
        pixels = entries[i].pixels
        try:
            img = open_image(pixels.read_bytes(), max_pixels) if isinstance(pixels, Path) else Image.fromarray(pixels)
        except (ImageError, OSError) as e:
            raise BuildError(f"cannot read image {pixels}: {e}") from None
        images[i] = fit(img, size)
        if thumbnail_size:
            thumbnails[i] = make_thumbnail(img, thumbnail_size)

    decode_all(range(len(entries)), decode, desc="decoding", bar=bar)
    return images, thumbnails


def recall_at(index: Index, ids: list[str], vectors: np.ndarray, k: int = 10, queries: int = 1000,
              seed: int = 0) -> float:
    """Mean fraction of the exact top-k (among vectors, whose ids are ids) that the index returns, over a
    sample of the vectors as queries."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    sample = np.random.default_rng(seed).choice(len(vectors), min(queries, len(vectors)), replace=False)
    _, truth = exact.search(vectors[sample], k)
    found = index.search(vectors[sample], k)
    return float(np.mean([len({ids[t] for t in row} & {hit.id for hit in hits}) / len(row)
                          for row, hits in zip(truth, found)]))


@dataclass(frozen=True)
class BuildOptions:
    """How an index is built: what the command's flags (or the service's settings) choose."""

    splits: tuple[str, ...] = ("train",)  # of labelled folders
    factory: str = "Flat"  # FAISS factory string (a new index only)
    batch_size: int = 256  # images per inference batch
    max_pixels: int = 40_000_000  # larger images are refused, not decoded
    download: bool = True  # CIFAR-10 into an empty or missing data folder
    runtime: str = "auto"  # what runs the model, when build() loads it itself
    metadata: Path | None = None  # per-id metadata: CSV with an id column, or JSON Lines
    thumbnail_size: int = 128  # longest side (a new index only: an existing one keeps its own)


def build(bundle_dir: str | Path, data_dirs: list[str], out: str | Path, options: BuildOptions = BuildOptions(),
          model: Model | None = None, infer: Callable[[Tensor], Outputs] | None = None,
          progress: Callable[[int, int], None] | None = None) -> dict:
    """Embed the images into a new index at out, or add them to the index there; returns the index's info
    (index.json) with its count. The service passes its own model, an infer that runs each batch in its
    inference thread, and progress(done, total), called after each batch instead of drawing progress bars."""
    splits, factory, metadata, thumbnail_size = options.splits, options.factory, options.metadata, \
        options.thumbnail_size
    if model is None:
        model = Model(load_bundle(bundle_dir))
        print(f"inference: {pick_runtime(model, options.runtime)[0]}")
    infer = infer or model.infer
    bundle = model.bundle
    entries = [entry for root in data_dirs for entry in find_images(Path(root), splits, options.download)]
    if not entries:
        raise BuildError(f"no images found in {', '.join(data_dirs)} (splits {', '.join(splits)})")
    if len({e.id for e in entries}) != len(entries):
        raise BuildError("two images have the same id (path relative to their --data-dir): index the folders "
                         "one at a time, or under one parent folder")
    if metadata is not None:
        extra = read_metadata(metadata)
        for entry in entries:
            entry.metadata.update(extra.get(entry.id, {}))
        print(f"metadata for {len(extra.keys() & {e.id for e in entries})} of {len(entries)} images from {metadata}")

    location = location_of(out, bundle.fingerprint)
    try:  # a bad --index-type or index is said before minutes of embedding, not after
        existing = exists(location)
        if existing:  # the thumbnails are made at the index's own size
            thumbnail_size = read_index_info(location, bundle.fingerprint).thumbnail_size
        else:
            check_type(location, bundle.manifest.architecture.representation_dim, factory)
    except SearchIndexError as e:
        raise BuildError(str(e)) from None
    started = time.perf_counter()
    images, thumbnails = decode_entries(entries, model.size, options.max_pixels, thumbnail_size, bar=progress is None)
    vectors = np.empty((len(entries), bundle.manifest.architecture.representation_dim), dtype=np.float32)
    with tqdm(total=len(entries), desc="embedding", unit="img", mininterval=1, disable=progress is not None) as bar:
        for start in range(0, len(entries), options.batch_size):
            batch = torch.from_numpy(images[start:start + options.batch_size]).permute(0, 3, 1, 2)
            vectors[start:start + len(batch)] = infer(batch).unit.numpy()
            bar.update(len(batch))
            if progress:
                progress(start + len(batch), len(entries))
    embedded = time.perf_counter()

    items = [Item(e.id, v, e.metadata, t) for e, v, t in zip(entries, vectors, thumbnails)]
    new = dict(bundle=bundle.fingerprint, bundle_name=bundle.name, runtime=model.runtime, factory=factory,
               thumbnail_size=thumbnail_size, splits=list(splits),
               sources=[recorded_path(Path(d).resolve()) for d in data_dirs])
    index, info = _fill(location, bundle.fingerprint, items, new, recall=True)
    print(f"{len(items)} images decoded and embedded in {embedded - started:.1f} s "
          f"({len(items) / (embedded - started):.0f} images/s); indexed in {time.perf_counter() - embedded:.1f} s")
    return info


def _fill(location: Location, bundle: str, items: list[Item], new: dict, recall: bool = False) -> tuple[Index, dict]:
    """Add items to the index at location, or to a new one made with the fields `new` (built beside its place
    and published whole). Returns the index (closed) and its info with its count (and recall@10 if asked and
    approximate)."""
    try:
        if exists(location):
            index, staged = open_index(location, bundle), None
        else:
            staged = staging(location)
            vectors = np.stack([item.vector for item in items])
            sample = vectors[np.random.default_rng(0).permutation(len(vectors))[:100_000]]
            index = create_index(staged, dim=vectors.shape[1], sample=sample, **new)
        for start in range(0, len(items), 10_000):
            index.add(items[start:start + 10_000])
        info = {**index.info.model_dump(), "count": index.count}
        if recall and index.info.factory.upper() != "FLAT":
            vectors = np.stack([item.vector for item in items])
            info["recall_at_10"] = recall_at(index, [item.id for item in items], vectors)
            print(f"recall@10 against exact search: {info['recall_at_10']:.4f} ({min(1000, len(vectors))} of the "
                  f"added vectors as queries)")
        if staged is None:
            index.close()
        else:
            publish(index, staged, location)
    except SearchIndexError as e:
        raise BuildError(str(e)) from None
    return index, info


def build_from_parquet(file: str | Path, out: str | Path, options: BuildOptions = BuildOptions()) -> dict:
    """Load an export (service.export_vectors, Milvus's bulk-import layout) into a new index at out, or add it to
    the index there: the vectors as they are, no thumbnails. The index belongs to the bundle the file names, and
    an existing one must be that bundle's."""
    from service.export_vectors import read_exported

    try:
        exported = read_exported(file)
    except SearchIndexError as e:
        raise BuildError(str(e)) from None
    bundle = exported.provenance["bundle"]
    items = [Item(*row) for row in zip(exported.ids, exported.vectors, exported.metadata)]
    new = dict(bundle=bundle, bundle_name=exported.provenance["bundle_name"], runtime=exported.provenance["runtime"],
               factory=options.factory, thumbnail_size=options.thumbnail_size,
               sources=[recorded_path(Path(file).resolve())])
    return _fill(location_of(out, bundle), bundle, items, new)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.build_index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="model bundle directory (python -m trainer.export); not with --from-parquet")
    parser.add_argument("--data-dir", action="append", help="image folder to index; repeat for several")
    parser.add_argument("--from-parquet", metavar="FILE", type=Path,
                        help="instead of images, the vectors and metadata of an export (python -m "
                             "service.export_vectors): the index is the bundle's that the file names")
    parser.add_argument("--out", required=True, help="index directory to write, or to add to; or a Milvus server "
                        "(milvus://HOST:PORT[?collection=NAME], the bundle's collection by default), or Milvus Lite "
                        "(milvus-lite:FOLDER)")
    parser.add_argument("--splits", nargs="+", default=["train"], help="splits of labelled folders (default: train)")
    parser.add_argument("--metadata", type=Path, help="per-id metadata: a CSV file with an id column, or JSON Lines")
    parser.add_argument("--index-type", default="Flat",
                        help="FAISS factory string: Flat (exact, the default), HNSW32, IVF4096,PQ32 ...; on Milvus "
                             "its index type: FLAT, HNSW, IVF_FLAT, AUTOINDEX")
    parser.add_argument("--thumbnail-size", type=int, default=128,
                        help="longest side of the thumbnails the index keeps (default: 128)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per inference batch (default: 256)")
    parser.add_argument("--runtime", choices=("auto", *RUNTIMES), default=os.environ.get("SIMCLR_RUNTIME", "auto"),
                        help="what runs the model: queries score best against an index embedded as they are, so "
                             "this is the service's --runtime, SIMCLR_RUNTIME too (default: that, else auto)")
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                        help="download CIFAR-10 into an empty or missing --data-dir (default: on)")
    args = parser.parse_args(argv)
    if (args.from_parquet is None) == (args.bundle is None or not args.data_dir):
        parser.error("give --bundle and --data-dir (images to embed), or --from-parquet (vectors embedded already)")
    options = BuildOptions(tuple(args.splits), args.index_type, args.batch_size, download=args.download,
                           runtime=args.runtime, metadata=args.metadata, thumbnail_size=args.thumbnail_size)
    try:
        info = build_from_parquet(args.from_parquet, args.out, options) if args.from_parquet else \
            build(args.bundle, args.data_dir, args.out, options)
    except (BuildError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"index {args.out}: {info['count']} images, {info['dim']}-d, {info['factory']}, "
          f"bundle {info['bundle_name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
