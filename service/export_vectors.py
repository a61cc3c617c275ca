"""Export an index's ids, vectors and metadata as Parquet, for a distributed vector database (Milvus, Qdrant,
Weaviate ...) when a collection outgrows one machine: they import it, rather than this project sharding.

    python -m service.export_vectors --index indexes/photos --out photos.parquet

Columns: id (string), vector (list of float32: the unit representation, exactly as indexed, whatever the FAISS
type), metadata (a JSON object as text: Milvus's dynamic field, Qdrant's payload). docs/serving.md shows the
import into each. Needs the [export] extra (pyarrow).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from contract.files import atomic_write
from service.catalog import Catalog
from service.index import SearchIndexError, read_info


def export(index_dir: str | Path, out: str | Path) -> int:
    """Write the index's records to out (Parquet, atomically); returns how many. Reads the catalog only: the
    FAISS index, possibly approximate and large, is not loaded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = read_info(Path(index_dir)).dim
    catalog = Catalog(Path(index_dir) / "catalog.sqlite")
    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), dim)), ("metadata", pa.string())])
    written = 0

    def write(f: BinaryIO) -> None:
        nonlocal written
        with pq.ParquetWriter(f, schema) as writer, tqdm(total=len(catalog), unit="vec") as bar:
            for chunk in catalog.items():
                vectors = np.stack([vector for _, _, vector in chunk]).astype("float32").ravel()
                writer.write_table(pa.table({
                    "id": [id for id, _, _ in chunk],
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors), dim),
                    "metadata": [json.dumps(metadata) for _, metadata, _ in chunk]}, schema=schema))
                written += len(chunk)
                bar.update(len(chunk))

    try:
        atomic_write(out, write)
    finally:
        catalog.close()
    return written


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
