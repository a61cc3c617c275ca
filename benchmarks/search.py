"""Similar-image search: single-query latency and recall@10 of FAISS index types on real embeddings.

    python -m benchmarks.search --index indexes/cifar10-train --bundle bundles/r18 --data-dir ~/data/cifar10

The index's own vectors (e.g. the 50,000 CIFAR-10 training images embedded by the bundle) are searched with
real queries (test images embedded by the same bundle), one query per call as the service searches, with
FAISS on one thread as the service runs it. Recall@10 is against exact (flat) search; the class-filtered
rows search only one class, as /search?class_name=... does; the SearchIndex rows include reading the hits'
records from the catalog.
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


def timed_search(index: faiss.Index | SearchIndex, queries: np.ndarray, k: int, ids: np.ndarray, params=None,
                 where: dict | None = None) -> tuple[list[set[str]], np.ndarray]:
    """(the ids found per query, per-query ms (Q,)) searching one query at a time, with a FAISS index over the
    vectors in catalog order (ids: its rows' ids) or the service's SearchIndex (which also reads the hits'
    records from its catalog)."""
    found, ms = [], []
    for q in queries:
        started = time.perf_counter()
        if isinstance(index, SearchIndex):
            hits = {hit.id for hit in index.search(q[None], k, where)[0]}
        else:
            _, rows = index.search(q[None], k, params=params)
            hits = set(ids[rows[0][rows[0] >= 0]])
        ms.append(1000 * (time.perf_counter() - started))
        found.append(hits)
    return found, np.array(ms)


def recall(found: list[set[str]], truth: list[set[str]]) -> float:
    return float(np.mean([len(f & t) / len(t) for f, t in zip(found, truth)]))


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
    served = SearchIndex(args.index, model.bundle.fingerprint, mmap=True)
    records = served.catalog.page(0, served.count)
    ids = np.array([r.id for r in records])
    position = {r.vid: i for i, r in enumerate(records)}
    vectors = np.empty((len(records), served.dim), dtype="float32")
    for vids, chunk in served.catalog.vectors(np.array([r.vid for r in records])):
        vectors[[position[v] for v in vids]] = chunk
    files = sorted(Path(args.data_dir, "test").rglob("*.*"))
    files = files[::max(1, len(files) // args.queries)][:args.queries]
    images = model.batch([model.preprocess(f.read_bytes(), 10**8) for f in files])
    queries = np.concatenate([model.infer(images[i:i + 256]).unit.numpy()
                              for i in range(0, len(images), 256)])
    print(f"{len(vectors)} indexed {vectors.shape[1]}-d vectors ({served.factory}), {len(queries)} queries from "
          f"{args.data_dir}/test, k={args.k}, FAISS {faiss.__version__} on 1 thread")

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    sq8 = faiss.IndexScalarQuantizer(vectors.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(vectors)
    sq8.add(vectors)
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 128
    started = time.perf_counter()
    hnsw.add(vectors)
    print(f"built HNSW (M 32) in {time.perf_counter() - started:.1f} s")

    truth, flat_ms = timed_search(flat, queries, args.k, ids)
    rows = [("flat (exact)", flat_ms, 1.0)]
    found, ms = timed_search(sq8, queries, args.k, ids)
    rows.append(("scalar-quantised 8 bit", ms, recall(found, truth)))
    for ef in (16, 32, 64, 128):
        found, ms = timed_search(hnsw, queries, args.k, ids, faiss.SearchParametersHNSW(efSearch=ef))
        rows.append((f"HNSW M 32, efSearch {ef}", ms, recall(found, truth)))

    # One class, as /search?class_name= filters: exact truth from the flat index with the same filter.
    classes = np.array([str(r.metadata.get("class")) for r in records])
    name = max(set(classes), key=lambda c: (classes == c).sum())
    selector = faiss.IDSelectorBatch(np.flatnonzero(classes == name).astype("int64"))
    truth_class, ms = timed_search(flat, queries, args.k, ids, faiss.SearchParameters(sel=selector))
    rows.append((f"class {name!r}: flat", ms, 1.0))
    found, ms = timed_search(hnsw, queries, args.k, ids, faiss.SearchParametersHNSW(efSearch=128, sel=selector))
    rows.append((f"class {name!r}: HNSW efSearch 128", ms, recall(found, truth_class)))
    found, ms = timed_search(served, queries, args.k, ids, where={"class": [name]})
    rows.append((f"SearchIndex.search, class {name!r}", ms, recall(found, truth_class)))
    found, ms = timed_search(served, queries, args.k, ids)
    rows.append(("SearchIndex.search (as served)", ms, recall(found, truth)))

    print(f"\n  {'index':40s} {'p50 ms':>7s} {'p99 ms':>7s} {'recall@10':>10s}  {'p99 vs flat':>11s}")
    for name, ms, r in rows:
        print(f"  {name:40s} {np.percentile(ms, 50):7.3f} {np.percentile(ms, 99):7.3f} {r:10.4f}  "
              f"{np.percentile(ms, 99) / np.percentile(flat_ms, 99):11.2f}")


if __name__ == "__main__":
    main()
