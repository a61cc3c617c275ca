"""Similar-image search: single-query latency and recall@10 of FAISS index types on real embeddings.

    python -m benchmarks.search --index indexes/cifar10-train --bundle bundles/r18 --data-dir ~/data/cifar10

The index's own vectors (e.g. the 50,000 CIFAR-10 training images embedded by the bundle) are searched with
real queries (test images embedded by the same bundle), one query per call as the service searches, with
FAISS on one thread as the service runs it. Recall@10 is against exact (flat) search; the class-filtered
rows search only one class, as /search?class_name=... does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from contract.bundle import load_bundle
from service.index import SearchIndex
from service.model import Model


def timed_search(index: faiss.Index | SearchIndex, queries: np.ndarray, k: int, params=None,
                 class_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids (Q, k), per-query ms (Q,)) searching one query at a time, with a FAISS index or the service's
    SearchIndex (which also builds the hits' metadata)."""
    ids, ms = [], []
    for q in queries:
        started = time.perf_counter()
        if isinstance(index, SearchIndex):
            found = [[hit.id for hit in index.search(q[None], k, class_name)[0]]]
        else:
            _, found = index.search(q[None], k, params=params)
        ms.append(1000 * (time.perf_counter() - started))
        ids.append(found[0])
    return np.array(ids), np.array(ms)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="an index built by service.build_index")
    parser.add_argument("--bundle", required=True, help="the bundle that built it (embeds the queries)")
    parser.add_argument("--data-dir", required=True, help="image folder whose test/ split gives the queries")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    faiss.omp_set_num_threads(1)
    model = Model(load_bundle(args.bundle))
    served = SearchIndex(args.index, model.bundle.fingerprint)
    vectors = served.faiss.reconstruct_n(0, served.count)
    files = sorted(Path(args.data_dir, "test").rglob("*.*"))
    files = files[::max(1, len(files) // args.queries)][:args.queries]
    images = model.batch([model.preprocess(f.read_bytes(), 10**8) for f in files])
    queries = np.concatenate([model.infer(images[i:i + 256]).unit.numpy()
                              for i in range(0, len(images), 256)])
    print(f"{len(vectors)} indexed {vectors.shape[1]}-d vectors, {len(queries)} queries from {args.data_dir}/test, "
          f"k={args.k}, FAISS {faiss.__version__} on 1 thread")

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    sq8 = faiss.IndexScalarQuantizer(vectors.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(vectors)
    sq8.add(vectors)
    hnsw = served.faiss if isinstance(served.faiss, faiss.IndexHNSW) else None
    if hnsw is None:
        hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 128
        started = time.perf_counter()
        hnsw.add(vectors)
        print(f"built HNSW (M 32) in {time.perf_counter() - started:.1f} s")

    truth, flat_ms = timed_search(flat, queries, args.k)
    rows = [("flat (exact)", flat_ms, 1.0)]
    found, ms = timed_search(sq8, queries, args.k)
    rows.append(("scalar-quantised 8 bit", ms, recall(found, truth)))
    for ef in (16, 32, 64, 128):
        found, ms = timed_search(hnsw, queries, args.k, faiss.SearchParametersHNSW(efSearch=ef))
        rows.append((f"HNSW M 32, efSearch {ef}", ms, recall(found, truth)))

    # One class, as /search?class_name= filters inside FAISS: exact truth from the flat index with the same filter.
    labels = np.array(served.labels)
    label = int(np.bincount(labels[labels >= 0]).argmax())
    selector = faiss.IDSelectorBatch(np.flatnonzero(labels == label).astype("int64"))
    truth_class, ms = timed_search(flat, queries, args.k, faiss.SearchParameters(sel=selector))
    rows.append((f"class {served.classes[label]!r}: flat (as served)", ms, 1.0))
    ef = served.info.get("ef_search", 128)
    found, ms = timed_search(hnsw, queries, args.k, faiss.SearchParametersHNSW(efSearch=ef, sel=selector))
    rows.append((f"class {served.classes[label]!r}: HNSW efSearch {ef}", ms, recall(found, truth_class)))
    found, ms = timed_search(served, queries, args.k, class_name=served.classes[label])
    rows.append((f"SearchIndex.search, class {served.classes[label]!r}", ms, recall(found, truth_class)))
    found, ms = timed_search(served, queries, args.k)
    rows.append(("SearchIndex.search (as served)", ms, recall(found, truth)))

    print(f"\n  {'index':40s} {'p50 ms':>7s} {'p99 ms':>7s} {'recall@10':>10s}  {'p99 vs flat':>11s}")
    for name, ms, r in rows:
        print(f"  {name:40s} {np.percentile(ms, 50):7.3f} {np.percentile(ms, 99):7.3f} {r:10.4f}  "
              f"{np.percentile(ms, 99) / np.percentile(flat_ms, 99):11.2f}")


if __name__ == "__main__":
    main()
