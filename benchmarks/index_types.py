"""Which FAISS index type at which size: build time, memory, single-query latency and recall@10 against exact
search, for each --types factory string, on --n synthetic unit vectors made here (not stored).

    python -m benchmarks.index_types                       # 1,000,000 x 512, Flat HNSW32 IVF4096,Flat IVF4096,PQ32
    python -m benchmarks.index_types --n 100000 --types Flat HNSW32

The vectors are clustered like embeddings (1,000 centres, noise whose variance decays as 1/i^2 over the
directions), not isotropic noise: on isotropic 512-d noise, the worst case, recall@10 measured 0.82 for HNSW32
and 0.12 for IVF4096,PQ32. Each index is built as the service builds it
(service.index.vector_index: inner product, the catalog's ids, trained on a sample) and searched as the service
searches (service.index.SearchIndex: one thread, one query at a time, its nprobe / efSearch, compressed types
re-scored with the catalog's exact vectors, the hits' records read from the catalog). The catalog (SQLite) is
filled once; each type is then built as a restart rebuilds it, from the catalog. Memory is the vector index's
serialised size, what it holds in RAM (the catalog stays on disk); "mmap RSS" is the resident memory that
opening it memory-mapped (--index-mmap) adds, before and after 200 queries touch it.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from service.catalog import Catalog, Item
from service.index import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, RERANK, SearchIndex


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray, spread: np.ndarray,
              chunk: int = 100_000) -> np.ndarray:
    """n unit vectors around random centres, each offset by noise whose spectrum decays as 1/i (spread: the
    (dim, dim) scaled basis), as embeddings' does: a few directions carry most of the variance."""
    out = np.empty((n, centres.shape[1]), dtype="float32")
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, centres.shape[1]),
                                                                           dtype="float32") @ spread
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def latencies(index: SearchIndex, queries: np.ndarray, k: int = 10) -> tuple[list[set[str]], np.ndarray]:
    """(ids found per query, seconds per query) searching one query at a time, as the service does (compressed
    types re-scored with the catalog's vectors, the hits' records read from it)."""
    found, seconds = [], np.empty(len(queries))
    for i, query in enumerate(queries):
        started = time.perf_counter()
        found.append({hit.id for hit in index.search(query[None], k)[0]})
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
    scale = np.arange(1, args.dim + 1, dtype="float32") ** -1.0
    scale *= 0.9 / np.linalg.norm(scale)  # noise of norm ~0.9: a point's cosine to its centre ~0.75
    spread = scale[:, None] * np.linalg.qr(rng.standard_normal((args.dim, args.dim)))[0].astype("float32")
    started = time.perf_counter()
    vectors = clustered(args.n, rng, centres, spread)
    queries = clustered(args.queries, rng, centres, spread)  # not indexed: as new uploads are
    print(f"{args.n:,} x {args.dim} vectors made in {time.perf_counter() - started:.1f} s; {args.queries} queries; "
          f"{faiss.omp_get_max_threads()} threads build, 1 searches")

    faiss.omp_set_num_threads(args.threads)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)  # positions, which are the catalog's ids below
    del exact
    gc.collect()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # One catalog, as the service keeps it, shared by every type (hard links): each index is then built as a
        # restart rebuilds one, from the catalog's vectors.
        catalog = Catalog(Path(tmp) / "catalog.sqlite")
        started = time.perf_counter()
        for start in tqdm(range(0, args.n, 10_000), desc="catalog", unit="chunk", leave=False):
            catalog.add([Item(str(i), vectors[i], {}) for i in range(start, min(start + 10_000, args.n))])
        catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        catalog.close()
        print(f"catalog: {args.n:,} vectors committed in {time.perf_counter() - started:.1f} s "
              f"({(Path(tmp) / 'catalog.sqlite').stat().st_size / 2**30:.1f} GiB)", flush=True)
        for factory in args.types:
            faiss.omp_set_num_threads(args.threads)
            folder = Path(tmp) / factory.replace(",", "_")
            started = time.perf_counter()
            SearchIndex.create(folder, dim=args.dim, bundle="b" * 64, bundle_name="synthetic", runtime="none",
                               factory=factory, sample=vectors[rng.choice(args.n, min(args.train, args.n),
                                                                           replace=False)]).close()
            trained = time.perf_counter()
            for suffix in ("", "-wal", "-shm"):
                (folder / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
            os.link(Path(tmp) / "catalog.sqlite", folder / "catalog.sqlite")
            index = SearchIndex(folder)  # catches up: every vector added from the catalog
            built = time.perf_counter()
            index.snapshot()
            size = (folder / "vectors.faiss").stat().st_size
            faiss.omp_set_num_threads(1)  # as the service searches
            found, seconds = latencies(index, queries)
            recall = np.mean([len({str(i) for i in t} & f) / 10 for t, f in zip(truth, found)])
            index.close()
            del index
            gc.collect()
            before = rss()
            mapped = SearchIndex(folder, mmap=True)
            opened = rss() - before
            latencies(mapped, queries[:200])
            touched = rss() - before
            mapped.close()
            del mapped
            shutil.rmtree(folder)
            rows.append((factory, trained - started, built - trained, size, opened, touched,
                         *np.percentile(seconds * 1000, [50, 99]), recall))
            print(f"{factory}: train {rows[-1][1]:.1f} s, add {rows[-1][2]:.1f} s, {size / 2**20:.0f} MiB, "
                  f"p50 {rows[-1][6]:.2f} ms, recall@10 {recall:.3f}", flush=True)

    print(f"\n{args.n:,} vectors x {args.dim}, {args.queries} queries, k=10, search on 1 thread "
          f"(nprobe {DEFAULT_NPROBE}, efSearch {DEFAULT_EF_SEARCH}; PQ re-scores {RERANK}x k candidates)")
    print("| type | train s | add s | size MiB | mmap RSS open / after queries MiB | p50 ms | p99 ms | recall@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for factory, train, add, size, opened, touched, p50, p99, recall in rows:
        print(f"| {factory} | {train:.1f} | {add:.1f} | {size / 2**20:.0f} | {opened / 2**20:.0f} / "
              f"{touched / 2**20:.0f} | {p50:.2f} | {p99:.2f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
