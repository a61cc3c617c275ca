"""The index backends side by side on the same vectors: the local folder (FAISS + SQLite, service.index) and
Milvus (service.milvus_index), here Milvus Lite, embedded: not a Milvus cluster, whose figures depend on its
nodes. For each: adding --n vectors as the service adds them (10,000 a call, each durable when it returns),
single-query latency through the backend's search (as served: the hits' records read too) and recall@10 against
exact search.

    python -m benchmarks.backends  # 1,000,000 x 512: local Flat and HNSW32, Milvus FLAT and HNSW
    python -m benchmarks.backends --n 100000 --types local:Flat milvus:FLAT
    python -m benchmarks.backends --queries 100 --filtered 5 --types local:HNSW32 milvus:HNSW  # what ran here

The vectors are benchmarks.index_types' clustered synthetic ones.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from benchmarks.index_types import clustered
from service.catalog import Item
from service.indexes import create_index, location_of

CHUNK = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors (default: 1,000,000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--filtered", type=int, default=100, help="queries with a filter a tenth of the images pass")
    parser.add_argument("--types", nargs="+", default=["local:Flat", "local:HNSW32", "milvus:FLAT", "milvus:HNSW"],
                        help="backend:type, the type a FAISS factory string (local) or a Milvus index type")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.dim), dtype="float32")
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = np.arange(1, args.dim + 1, dtype="float32") ** -1.0
    scale *= 0.9 / np.linalg.norm(scale)
    spread = scale[:, None] * np.linalg.qr(rng.standard_normal((args.dim, args.dim)))[0].astype("float32")
    vectors = clustered(args.n, rng, centres, spread)
    queries = clustered(args.queries, rng, centres, spread)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    del exact
    faiss.omp_set_num_threads(1)  # one search thread, as the service searches

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.types:
            backend, index_type = kind.split(":", 1)
            where = Path(tmp) / index_type if backend == "local" else f"milvus-lite:{tmp}/milvus?collection=bench"
            index = create_index(location_of(where), dim=args.dim, bundle="b" * 64, bundle_name="synthetic",
                                 runtime="none", factory=index_type)
            started = time.perf_counter()
            for start in tqdm(range(0, args.n, CHUNK), desc=f"{kind} add", unit="chunk", leave=False):
                index.add([Item(str(i), vectors[i], {"n": i % 10}) for i in range(start, min(start + CHUNK, args.n))])
            added = time.perf_counter() - started
            found, seconds = [], np.empty(len(queries))
            for i, query in enumerate(queries):
                started = time.perf_counter()
                found.append({hit.id for hit in index.search(query[None], 10)[0]})
                seconds[i] = time.perf_counter() - started
            filtered = np.empty(min(args.filtered, len(queries)))
            for i, query in enumerate(queries[:len(filtered)]):  # a tenth of the images match
                started = time.perf_counter()
                index.search(query[None], 10, where={"n": [3]})
                filtered[i] = time.perf_counter() - started
            recall = np.mean([len({str(i) for i in t} & f) / 10 for t, f in zip(truth, found)])
            rows.append((kind, added, *np.percentile(seconds * 1000, [50, 99]),
                         np.median(filtered) * 1000 if len(filtered) else np.nan, recall))
            print(f"{kind}: added in {added:.1f} s, p50 {rows[-1][2]:.2f} ms, recall@10 {recall:.3f}", flush=True)
            if backend == "milvus":
                index.client.drop_collection(index.location.collection)
            index.close()
            del index
            gc.collect()

    print(f"\n{args.n:,} vectors x {args.dim}, {args.queries} queries one at a time, k=10")
    print("| backend:type | add s | p50 ms | p99 ms | filtered p50 ms | recall@10 |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, added, p50, p99, filtered_p50, recall in rows:
        print(f"| {kind} | {added:.1f} | {p50:.2f} | {p99:.2f} | {filtered_p50:.2f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
