"""Which FAISS index type at which size: build time, memory, single-query latency and recall@10 against exact
search, for each --types factory string, on --n synthetic unit vectors made here (not stored).

    python -m benchmarks.index_types                       # 1,000,000 x 512, Flat HNSW32 IVF4096,Flat IVF4096,PQ32
    python -m benchmarks.index_types --n 100000 --types Flat HNSW32

The vectors are clustered like embeddings (1,000 centres, cosine ~0.55 within a cluster), not uniform noise,
on which every approximate index looks worse than on real data. Each index is built as the service builds it
(service.index.vector_index: inner product, the catalog's ids, trained on a sample) and searched as the service
searches (one thread, one query at a time, its nprobe / efSearch). Memory is the index's serialised size, what
it holds in RAM; "mmap RSS" is the resident memory that opening it memory-mapped (--index-mmap) adds, before
and after the queries touch it.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from service.index import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, vector_index


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, dim), dtype="float32")
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim), dtype="float32") * 0.04
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def latencies(index: faiss.Index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(ids (Q, k), seconds per query) searching one query at a time."""
    found, seconds = np.empty((len(queries), k), dtype="int64"), np.empty(len(queries))
    for i, query in enumerate(queries):
        started = time.perf_counter()
        _, found[i] = index.search(query[None], k)
        seconds[i] = time.perf_counter() - started
    return found, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="indexed vectors (default: 1,000,000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--types", nargs="+", default=["Flat", "HNSW32", "IVF4096,Flat", "IVF4096,PQ32"])
    parser.add_argument("--train", type=int, default=200_000, help="training sample for IVF/PQ (default: 200,000)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS threads to build")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.dim), dtype="float32")
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    started = time.perf_counter()
    vectors = clustered(args.n, args.dim, rng, centres)
    queries = clustered(args.queries, args.dim, rng, centres)  # not indexed: as new uploads are
    ids = np.arange(1, args.n + 1, dtype="int64")  # the catalog's vids start at 1
    print(f"{args.n:,} x {args.dim} vectors made in {time.perf_counter() - started:.1f} s; {args.queries} queries; "
          f"{faiss.omp_get_max_threads()} threads build, 1 searches")

    faiss.omp_set_num_threads(args.threads)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    truth += 1  # positions -> vids
    del exact
    gc.collect()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factory in args.types:
            faiss.omp_set_num_threads(args.threads)
            index = vector_index(args.dim, factory)
            started = time.perf_counter()
            if not index.is_trained:
                index.train(vectors[rng.choice(args.n, min(args.train, args.n), replace=False)])
            trained = time.perf_counter()
            for start in tqdm(range(0, args.n, 100_000), desc=factory, unit="chunk", leave=False):
                index.add_with_ids(vectors[start:start + 100_000], ids[start:start + 100_000])
            built = time.perf_counter()
            faiss.ParameterSpace().set_index_parameters(index, f"nprobe={DEFAULT_NPROBE}" if "IVF" in factory else
                                                        f"efSearch={DEFAULT_EF_SEARCH}" if "HNSW" in factory else "")
            path = Path(tmp) / "index.faiss"
            faiss.write_index(index, str(path))
            size = path.stat().st_size
            faiss.omp_set_num_threads(1)  # as the service searches
            found, seconds = latencies(index, queries)
            recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
            del index
            gc.collect()
            before = rss()
            mapped = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
            opened = rss() - before
            latencies(mapped, queries[:200])
            touched = rss() - before
            del mapped
            rows.append((factory, trained - started, built - trained, size, opened, touched,
                         *np.percentile(seconds * 1000, [50, 99]), recall))
            print(f"{factory}: train {rows[-1][1]:.1f} s, add {rows[-1][2]:.1f} s, {size / 2**20:.0f} MiB, "
                  f"p50 {rows[-1][6]:.2f} ms, recall@10 {recall:.3f}", flush=True)

    print(f"\n{args.n:,} vectors x {args.dim}, {args.queries} queries, k=10, search on 1 thread "
          f"(nprobe {DEFAULT_NPROBE}, efSearch {DEFAULT_EF_SEARCH})")
    print("| type | train s | add s | size MiB | mmap RSS open / after queries MiB | p50 ms | p99 ms | recall@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for factory, train, add, size, opened, touched, p50, p99, recall in rows:
        print(f"| {factory} | {train:.1f} | {add:.1f} | {size / 2**20:.0f} | {opened / 2**20:.0f} / {touched / 2**20:.0f} "
              f"| {p50:.2f} | {p99:.2f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
