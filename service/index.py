"""The similar-image index: a FAISS vector index over the catalog's unit vectors (inner product, so cosine
similarity), changed at run time and searched with metadata filters.

INDEX_DIR holds
    index.json      what the index is: format, the bundle that embeds for it, FAISS factory string, dim ...
    catalog.sqlite  every image's id, metadata, vector and thumbnail (service.catalog): the source of truth
    trained.faiss   the FAISS index as trained, empty (IVF centroids, PQ codebooks): what a rebuild starts from
    vectors.faiss   a snapshot of the vector index, written now and then and at a clean close

Opening loads the snapshot and catches up with the catalog: vectors added since are added, those removed since
are removed (FAISS ids are the catalog's vids, never reused). A snapshot only saves work: a crash between
snapshots costs time at the next start, never an acknowledged change. HNSW cannot remove vectors: removed ones
are filtered out of its hits, and the graph is rebuilt without them at an opening that finds more than
COMPACT_AT of it removed. An open index catches up the same way before each search or change when another
process has changed the catalog (build_index adding a folder to an index a service serves).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from contract.bundle import describe
from contract.files import atomic_write
from service.catalog import Catalog, Item, MetadataValues, Record, Where

FORMAT, FORMAT_VERSION = "simclr-index", 2
DEFAULT_EF_SEARCH, DEFAULT_NPROBE = 128, 32


class IndexInfo(BaseModel):
    """index.json: what the index is. Written when it is made, read (and validated) whenever it is opened."""

    format: Literal["simclr-index"] = FORMAT
    format_version: Literal[2] = FORMAT_VERSION
    bundle: str = Field(description="sha256 of the manifest of the bundle that embeds for it")
    bundle_name: str
    factory: str = Field(description="FAISS factory string")
    dim: int
    runtime: str = Field(description="what embedded its images; queries score best embedded the same way")
    thumbnail_size: int = 128
    created: float = Field(description="Unix time")
    sources: list[str] = Field([], description="the image folders it was built from")
    splits: list[str] = []
    ef_search: int = Field(DEFAULT_EF_SEARCH, description="HNSW's efSearch, editable in the file")
    nprobe: int = Field(DEFAULT_NPROBE, description="IVF's nprobe, editable in the file")
RERANK = 4
COMPACT_AT = 0.1  # an index opened with more than this fraction of removed vectors still in FAISS is rebuilt


def make_thumbnail(img: Image.Image, size: int) -> bytes:
    """A JPEG of the image with its longest side at most size (a smaller image keeps its size)."""
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90, subsampling=0)  # 4:4:4: small images keep their colours
    return out.getvalue()


class SearchIndexError(Exception):
    """An index that cannot be served (missing, malformed, built with another bundle) or a change it refuses."""


class IndexUnavailable(SearchIndexError):
    """An index backend that does not answer (a Milvus server down or unreachable): worth retrying later."""


@dataclass
class Hit:
    id: str
    score: float
    metadata: MetadataValues


class SearchIndex:
    """Nearest neighbours among the indexed images. Not thread-safe: the service calls it from one thread."""

    def __init__(self, path: str | Path, bundle_fingerprint: str | None = None, mmap: bool = False,
                 snapshot_every: int = 10_000):
        self.path = Path(path)
        self.info = read_info(self.path, bundle_fingerprint)
        self.read_only, self.snapshot_every = mmap, snapshot_every
        try:
            self.catalog = Catalog(self.path / "catalog.sqlite")
            snapshot = self.path / "vectors.faiss"
            self.faiss = faiss.read_index(str(snapshot if snapshot.is_file() else self.path / "trained.faiss"),
                                          faiss.IO_FLAG_MMAP if mmap else 0)
        except Exception as e:  # sqlite3.DatabaseError, faiss's RuntimeError on a bad file, OSError
            raise SearchIndexError(f"index {self.path} is incomplete or corrupt: "
                                   f"{str(e).strip().splitlines()[0]}") from None
        self._use(self.faiss)
        self._dead: set[int] = set()  # vids still in FAISS whose records are gone (where FAISS cannot remove)
        self._can_remove = not mmap
        self._changes, self._last_vid = 0, 0  # the highest vid held: the catalog's are new past it
        self._catch_up()
        if not mmap and len(self._dead) > COMPACT_AT * self.faiss.ntotal:
            self._compact()
        self._version = self.catalog.version()

    @classmethod
    def create(cls, path: str | Path, *, dim: int, bundle: str, bundle_name: str, runtime: str,
               factory: str = "Flat", thumbnail_size: int = 128, sample: np.ndarray | None = None,
               sources: list[str] | None = None, splits: list[str] | None = None) -> SearchIndex:
        """A new empty index at path (a folder that must not hold an index). Index types that learn from data
        (IVF, PQ) are trained on sample, unit vectors like those to be indexed."""
        index = vector_index(dim, factory)
        if not index.is_trained:
            if sample is None or len(sample) < 40:
                raise SearchIndexError(f"a {factory} index learns from the vectors it will hold: build it from "
                                       f"images (python -m service.build_index), not empty")
            index.train(np.ascontiguousarray(sample, dtype="float32"))
        path = Path(path)
        if (path / "index.json").exists():
            raise SearchIndexError(f"{path} already holds an index")
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / "trained.faiss", lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)))
        Catalog(path / "catalog.sqlite").close()
        info = IndexInfo(bundle=bundle, bundle_name=bundle_name, factory=factory, dim=dim, runtime=runtime,
                         thumbnail_size=thumbnail_size, created=time.time(), sources=sources or [],
                         splits=splits or [])
        atomic_write(path / "index.json", info.model_dump_json(indent=2) + "\n")  # last: it makes the folder an index
        return cls(path)

    # -- what it holds ------------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self.faiss.ntotal - len(self._dead)

    @property
    def dim(self) -> int:
        return self.faiss.d

    @property
    def factory(self) -> str:
        return self.info.factory

    @property
    def classes(self) -> list[str]:
        return [str(v) for v in self.catalog.values("class")]

    def get(self, id: str) -> Record | None:
        return self.catalog.get(id)

    def thumbnail(self, id: str) -> bytes | None:
        return self.catalog.thumbnail(id)

    def vector(self, id: str) -> np.ndarray | None:
        """The unit vector of an indexed image, None when no image has that id."""
        found = self.catalog.vector(id)
        return found[1] if found else None

    def page(self, after: str | None, limit: int, where: Where | None = None) -> tuple[list[Record], str | None]:
        """Up to limit records in the order they were added, from the cursor `after` (a page's `next`) on, only
        those matching where; and the next page's cursor (None after the last page)."""
        if after is not None and not (after.isascii() and after.isdecimal() and int(after) < 2**63):
            raise SearchIndexError(f"after={after!r} is not a cursor of this index: give a page's `next`")
        records = self.catalog.page(int(after or 0), limit, where)
        return records, str(records[-1].vid) if len(records) == limit else None

    # -- changes ------------------------------------------------------------------------------------------

    def add(self, items: list[Item]) -> tuple[int, int]:
        """Add the images, replacing those whose ids are indexed already; durable when it returns. Returns
        (added, replaced)."""
        self._check_writable()
        self.refresh()
        if len({item.id for item in items}) != len(items):
            raise SearchIndexError("the same id is given twice in one request")
        vectors = np.stack([item.vector for item in items]).astype("float32")
        if vectors.shape[1] != self.dim:
            raise SearchIndexError(f"vectors have {vectors.shape[1]} numbers, the index {self.dim}")
        added, replaced = self.catalog.add(items)
        self._remove_vids(replaced)
        self.faiss.add_with_ids(vectors, np.asarray(added, dtype="int64"))
        self._last_vid = max(self._last_vid, *added)
        self._changed(len(items))
        return len(items) - len(replaced), len(replaced)

    def update_metadata(self, id: str, metadata: MetadataValues) -> Record | None:
        """Replace an image's metadata (its vector, thumbnail, time added and place in the listing stay); durable
        when it returns. None when no image has the id."""
        self._check_writable()
        return self.catalog.update_metadata(id, metadata)  # FAISS holds no metadata: nothing to do there

    def remove(self, ids: list[str]) -> int:
        """Remove the images with these ids (unknown ones are skipped); durable when it returns. Returns how
        many were removed."""
        self._check_writable()
        self.refresh()
        vids = self.catalog.remove(ids)
        self._remove_vids(vids)
        self._changed(len(vids))
        return len(vids)

    def remove_matching(self, where: Where) -> list[str]:
        """Remove every image whose metadata matches where; durable when it returns. Returns their ids."""
        self._check_writable()
        self.refresh()
        ids = [record.id for record in self.catalog.records(self.catalog.matching(where).tolist()).values()]
        self.remove(ids)
        return ids

    def refresh(self) -> None:
        """Catch up with the changes other processes committed to the catalog since the last look (a memory-mapped
        index serves what it opened: hits whose records are gone are dropped all the same)."""
        if self.read_only or (version := self.catalog.version()) == self._version:
            return
        self._version = version
        self._add_from_catalog(self.catalog.vids(after=self._last_vid))  # vids only grow: these are new
        if len(self.catalog) != self.count:  # and some were removed (or replaced): a full comparison finds which
            self._catch_up()

    def snapshot(self) -> None:
        """Write the vector index, so that the next start need not re-add what it holds."""
        if not self.read_only:
            atomic_write(self.path / "vectors.faiss",
                         lambda f: faiss.write_index(self.faiss, faiss.PyCallbackIOWriter(f.write)))
            self._changes = 0

    def close(self) -> None:
        if self._changes:
            self.snapshot()
        self.catalog.close()

    # -- search -------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, where: Where | None = None,
               exclude: list[str] | None = None, offset: int = 0, min_score: float | None = None) -> list[list[Hit]]:
        """The k best hits per query (Q, D) unit vectors after the first `offset` (a page), best first: only
        images whose metadata matches `where` (service.catalog.Where); only scores of at least min_score;
        never the image exclude[q] (an indexed query image need not find itself)."""
        self.refresh()
        queries = np.ascontiguousarray(queries, dtype="float32")
        n = min(k + offset + (1 if exclude else 0), max(self.faiss.ntotal, 1))
        selectors = []  # kept referenced here: FAISS's selectors hold raw pointers to each other
        if where:
            allowed = self.catalog.matching(where)
            if not len(allowed):
                return [[] for _ in queries]
            selectors.append(faiss.IDSelectorBatch(allowed))
        if self._dead:
            selectors += [batch := faiss.IDSelectorBatch(np.fromiter(self._dead, dtype="int64")),
                          faiss.IDSelectorNot(batch)]
            if where:
                selectors.append(faiss.IDSelectorAnd(selectors[0], selectors[-1]))
        selector = selectors[-1] if selectors else None
        candidates = n * RERANK if self._rerank else n
        if where and self._scannable:
            scores, vids = self._scan(queries, candidates, selector)
        else:
            scores, vids = self.faiss.search(queries, candidates, params=self._search_parameters(selector))
        if self._rerank:
            scores, vids = self._rescore(queries, vids, n)
        records = self.catalog.records(sorted({int(v) for v in vids.ravel() if v >= 0}))
        results = []
        for q, (row_scores, row_vids) in enumerate(zip(scores, vids)):
            hits = [Hit(records[v].id, float(s), records[v].metadata) for s, v in zip(row_scores, row_vids)
                    if v in records and (min_score is None or s >= min_score)]
            hits = [hit for hit in hits if not (exclude and hit.id == exclude[q])]
            results.append(hits[offset:offset + k])
        return results

    def _rescore(self, queries: np.ndarray, candidates: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The n best of each query's candidates by exact inner product with the catalog's vectors."""
        found = np.unique(candidates[candidates >= 0])
        vectors = {int(v): x for vids, chunk in self.catalog.vectors(found) for v, x in zip(vids, chunk)}
        scores, vids = np.full((len(queries), n), -np.inf, dtype="float32"), np.full((len(queries), n), -1)
        for q, (query, row) in enumerate(zip(queries, candidates)):
            row = row[row >= 0]
            exact = np.array([vectors[int(v)] @ query for v in row], dtype="float32")
            best = np.argsort(-exact, kind="stable")[:n]
            scores[q, :len(best)], vids[q, :len(best)] = exact[best], row[best]
        return scores, vids

    def _scan(self, queries: np.ndarray, n: int, selector: faiss.IDSelector) -> tuple[np.ndarray, np.ndarray]:
        """A filtered search of an HNSW index by scanning its stored vectors: a graph walk restricted to a
        small part of the graph misses many neighbours (recall@10 0.88 for one class of CIFAR-10's ten), and a
        scan that skips the rest is as fast as the walk."""
        translated = faiss.IDSelectorTranslated(self.faiss.id_map, selector)
        scores, rows = faiss.downcast_index(self._inner.storage).search(
            queries, n, params=faiss.SearchParameters(sel=translated))
        id_map = faiss.vector_to_array(self.faiss.id_map)
        return scores, np.where(rows >= 0, id_map[np.maximum(rows, 0)], -1)

    def _parameters(self) -> str:
        if isinstance(self._inner, faiss.IndexHNSW):
            return f"efSearch={self.info.ef_search}"
        if isinstance(self._inner, faiss.IndexIVF):
            return f"nprobe={self.info.nprobe}"
        return ""

    def _search_parameters(self, selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        if selector is None:
            return None
        if isinstance(self._inner, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self._inner.hnsw.efSearch)
        if isinstance(self._inner, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=selector, nprobe=self._inner.nprobe)
        return faiss.SearchParameters(sel=selector)

    # -- keeping FAISS in step with the catalog -----------------------------------------------------------

    def _catch_up(self) -> None:
        live = self.catalog.vids()
        if self._ivf is not None:
            lists = self._ivf.invlists
            held = np.concatenate([np.zeros(0, dtype="int64"), *(
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(lists.nlist))])
        else:
            held = faiss.vector_to_array(self.faiss.id_map).astype("int64")
        gone, missing = np.setdiff1d(held, live), np.setdiff1d(live, held)
        gone = gone[~np.isin(gone, np.fromiter(self._dead, dtype="int64"))]  # HNSW's are known dead already
        self._remove_vids(gone.tolist())
        if len(missing) and self.read_only:
            raise SearchIndexError(f"index {self.path}'s snapshot lacks {len(missing)} of its images: open it "
                                   f"once without memory mapping to bring it up to date")
        self._add_from_catalog(missing)
        self._last_vid = int(live[-1]) if len(live) else 0
        self._changed(len(gone))

    def _add_from_catalog(self, vids: np.ndarray) -> None:
        for chunk, vectors in self.catalog.vectors(vids):
            self.faiss.add_with_ids(vectors, chunk)
        self._last_vid = max(self._last_vid, int(vids.max())) if len(vids) else self._last_vid
        self._changed(len(vids))  # snapshotted at the next close, or sooner

    def _use(self, index: faiss.Index) -> None:
        self.faiss = index
        self._ivf = faiss.try_extract_index_ivf(index)
        # The index that does the work: the IVF (which keeps ids itself), or what the IDMap wraps.
        self._inner = faiss.downcast_index(self._ivf) if self._ivf else faiss.downcast_index(index.index)
        faiss.ParameterSpace().set_index_parameters(index, self._parameters())
        # Compressed types (PQ, SQ) score approximately: they fetch RERANK times more candidates, re-scored with
        # the catalog's exact vectors (recall@10 of IVF4096,PQ32 on 1M vectors: 0.28 without, see docs).
        storage = faiss.downcast_index(self._inner.storage) if isinstance(self._inner, faiss.IndexHNSW) else None
        self._rerank = not isinstance(storage or self._inner, (faiss.IndexFlat, faiss.IndexIVFFlat))
        self._scannable = isinstance(storage, faiss.IndexFlat)  # HNSW over flat vectors: filters scan them

    def _compact(self) -> None:
        """Rebuild the vector index from the catalog, without the removed vectors that HNSW cannot drop (a graph
        walk still passes through them, and with many it finds fewer live neighbours)."""
        self._use(faiss.read_index(str(self.path / "trained.faiss")))
        self._dead.clear()
        self._add_from_catalog(self.catalog.vids())
        self.snapshot()

    def _remove_vids(self, vids: list[int]) -> None:
        if not vids:
            return
        if self._can_remove:
            try:
                self.faiss.remove_ids(np.asarray(vids, dtype="int64"))
                return
            except RuntimeError:  # HNSW and a few others cannot remove: their hits are filtered out instead
                self._can_remove = False
        self._dead.update(vids)

    def _changed(self, n: int) -> None:
        self._changes += n
        if self._changes >= self.snapshot_every:
            self.snapshot()

    def _check_writable(self) -> None:
        if self.read_only:
            raise SearchIndexError("the index is open read-only (memory-mapped): it takes no changes")


def vector_index(dim: int, factory: str) -> faiss.Index:
    """An empty FAISS index of the factory string's type, by inner product, that takes the catalog's ids."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if faiss.try_extract_index_ivf(index) is None:  # IVF keeps ids itself (and IDMap cannot remove from it)
            index = faiss.index_factory(dim, f"IDMap,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:  # the last words of FAISS's message say what is wrong, the rest is C++ context
        raise SearchIndexError(f"{factory!r} is not a FAISS index factory string "
                               f"({str(e).strip().splitlines()[-1].rsplit(': ', 1)[-1]})") from None
    return index


def read_info(path: Path, bundle_fingerprint: str | None = None) -> IndexInfo:
    """index.json, checked for format, version and (when given) the bundle it must have been built with."""
    file = path / "index.json"
    if not file.is_file():
        raise SearchIndexError(f"{path} is not an index: {file} does not exist "
                               f"(build one with python -m service.build_index)")
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SearchIndexError(f"{file} is not valid JSON: {e}") from None
    return checked_info(info, str(file), bundle_fingerprint)


def checked_info(info: object, source: str, bundle_fingerprint: str | None = None) -> IndexInfo:
    """An index's description (index.json, or a Milvus collection's property) as read from source, checked for
    format, version and (when given) the bundle it must have been built with."""
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise SearchIndexError(f"{source} is not a {FORMAT} version {FORMAT_VERSION} index (an index of an older "
                               f"version is rebuilt with python -m service.build_index)")
    try:
        info = IndexInfo.model_validate(info)
    except ValidationError as e:
        raise SearchIndexError(f"{source} is malformed: {describe(e)} (rebuild it with python -m "
                               f"service.build_index)") from None
    if bundle_fingerprint is not None and info.bundle != bundle_fingerprint:
        raise SearchIndexError(f"index {source.removesuffix('/index.json')} was built with another bundle "
                               f"({info.bundle_name}, manifest sha256 {info.bundle[:12]}...) than the one served "
                               f"({bundle_fingerprint[:12]}...): rebuild it with python -m service.build_index")
    return info
