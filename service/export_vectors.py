"""Export an index's ids, vectors and metadata as Parquet in the layout Milvus's bulk import reads, for a
distributed vector database (Milvus, Qdrant, Weaviate ...) when a collection outgrows one machine: they import it,
rather than this project sharding. `python -m service.build_index --from-parquet` reads it back into an index.

    python -m service.export_vectors --index indexes/photos --out photos.parquet

Columns, as pymilvus's bulk writer writes them for a collection with fields `id` (VARCHAR, primary key) and
`vector` (FLOAT_VECTOR) and the dynamic field on: id (string), vector (list of float32: the unit representation,
exactly as indexed, whatever the FAISS type), $meta (the metadata, a JSON object as text: Milvus's dynamic
fields, Qdrant's payload). The file's schema metadata names the bundle that embedded the vectors (simclr.bundle,
its manifest's sha256; simclr.bundle_name; simclr.runtime), so that they are never mixed with another model's.
docs/serving.md shows the import into each. Needs the [export] extra (pyarrow).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from contract.files import atomic_write
from service.catalog import Catalog, MetadataValues
from service.index import SearchIndexError, read_info

META = "$meta"  # Milvus's name for the column of dynamic fields
PROVENANCE = ("bundle", "bundle_name", "runtime")  # index.json's fields the file carries, as simclr.<name>


def export(index_dir: str | Path, out: str | Path) -> int:
    """Write the index's records to out (Parquet, atomically); returns how many. Reads the catalog only: the
    FAISS index, possibly approximate and large, is not loaded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = read_info(Path(index_dir))
    catalog = Catalog(Path(index_dir) / "catalog.sqlite")
    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32())), (META, pa.string())],
                       metadata={f"simclr.{k}": str(getattr(info, k)) for k in PROVENANCE})
    written = 0

    def write(f: BinaryIO) -> None:
        nonlocal written
        with pq.ParquetWriter(f, schema) as writer, tqdm(total=len(catalog), unit="vec") as bar:
            for chunk in catalog.items():
                vectors = np.stack([vector for _, _, vector in chunk]).astype("float32")
                writer.write_table(pa.table({
                    "id": [id for id, _, _ in chunk],
                    "vector": pa.ListArray.from_arrays(np.arange(0, vectors.size + 1, info.dim, dtype=np.int32),
                                                       pa.array(vectors.ravel())),
                    META: [json.dumps(metadata) for _, metadata, _ in chunk]}, schema=schema))
                written += len(chunk)
                bar.update(len(chunk))

    try:
        atomic_write(out, write)
    finally:
        catalog.close()
    return written


@dataclass
class Exported:
    """What a Parquet export holds: ids, unit vectors (N, D), metadata, and the bundle that embedded them."""

    ids: list[str]
    vectors: np.ndarray
    metadata: list[MetadataValues]
    provenance: dict[str, str]


def read_exported(path: str | Path) -> Exported:
    """An export (this module's, or one in its layout from elsewhere: an older file's `metadata` column reads
    too), checked; SearchIndexError says what is wrong with it in one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise SearchIndexError(f"{path} is not a Parquet file: {e}") from None
    meta = META if META in table.column_names else "metadata"
    if not {"id", "vector", meta} <= set(table.column_names):
        raise SearchIndexError(f"{path} has columns {table.column_names}: an export has id, vector and {META}")
    provenance = {k: (table.schema.metadata or {}).get(f"simclr.{k}".encode(), b"").decode() for k in PROVENANCE}
    if not all(provenance.values()):
        raise SearchIndexError(f"{path} does not say which bundle embedded its vectors (simclr.bundle in its "
                               f"schema metadata): only vectors of a known model are indexed")
    columns = table.to_pydict()
    try:
        vectors = np.array(columns["vector"], dtype=np.float32)
        metadata = [json.loads(text) if text else {} for text in columns[meta]]
    except (ValueError, TypeError) as e:
        raise SearchIndexError(f"{path}: its vectors are not all of one length, or its {meta} not JSON ({e})") \
            from None
    if vectors.ndim != 2 or not all(isinstance(m, dict) for m in metadata):
        raise SearchIndexError(f"{path}: vector must hold one list of numbers per row, {meta} one JSON object")
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for m in metadata for v in m.values()):
        raise SearchIndexError(f"{path}: {meta} values must be strings or numbers, as an index's metadata are")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise SearchIndexError(f"{path}: a vector is zero or not finite")
    return Exported(columns["id"], vectors / norms, metadata, provenance)  # unit, as the index holds them


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.export_vectors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index directory (service.build_index, or the service's)")
    parser.add_argument("--out", required=True, help="Parquet file to write")
    args = parser.parse_args(argv)
    try:
        count = export(args.index, args.out)
    except SearchIndexError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError:
        print("error: the export needs pyarrow: pip install 'simclr-cifar[export]'", file=sys.stderr)
        return 2
    print(f"{count} vectors written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
