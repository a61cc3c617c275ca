"""The similar-image index in Milvus: one collection per index, for indexes that outgrow one machine or that
several service processes on many hosts share. It answers everything service.index.SearchIndex does.

    milvus://HOST:PORT[?collection=NAME]            a Milvus server (http; milvus+https:// for TLS)
    milvus://USER:PASSWORD@HOST:PORT                with credentials (or a token as the user, no password)
    milvus-lite:PATH[?collection=NAME]              Milvus Lite, embedded: a folder of its files (tests, demos)

The collection (default: simclr_ and the bundle fingerprint's first 16 hex digits) has the caller's id as a
VARCHAR primary key, the unit vector (inner product: cosine), metadata as JSON, the thumbnail (base64 JPEG) and
when it was added; what the index is (service.index.IndexInfo) is the collection's property simclr.index.
Reads and writes are Strong: an acknowledged change is searched at once, from any process.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from service.catalog import RANGES, Item, MetadataValues, Record, Where
from service.index import Hit, IndexInfo, IndexUnavailable, SearchIndexError, checked_info

SCHEMES = {"milvus": "http", "milvus+https": "https", "milvus-lite": None}
INFO_PROPERTY = "simclr.index"
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "AUTOINDEX")  # Milvus's names; FAISS factory strings are the local's
MAX_THUMBNAIL = 65_535  # a VARCHAR's most bytes: a thumbnail whose base64 is longer is not kept
TIMEOUT_S = 10.0  # each call to the server: a request waits no longer than this for an answer
SCAN = 10_000  # rows a query reads at a time
# A bulk add of this many rows is sealed at once (flush) and so searched through the vector index: until Milvus
# seals a segment itself it searches its rows one by one (Milvus Lite, at 20,000 rows: 0.9 s a query, 38 ms sealed).
SEAL_AT = 1_000


@dataclass(frozen=True)
class MilvusLocation:
    """Where a Milvus index is: the server (or Milvus Lite folder), credentials and collection."""

    uri: str  # as given (without credentials): what messages name
    client_uri: str  # what pymilvus connects to
    token: str
    collection: str | None

    def named(self, collection: str) -> MilvusLocation:
        return MilvusLocation(self.uri, self.client_uri, self.token, collection)

    def __str__(self) -> str:
        return f"{self.uri} collection {self.collection}"


def is_milvus(location: object) -> bool:
    return isinstance(location, str) and location.split(":", 1)[0] in SCHEMES


def parse_location(text: str, default_collection: str | None = None) -> MilvusLocation:
    """A milvus:// or milvus-lite: URI (see the module's docstring); a bad one is a SearchIndexError."""
    parts = urlsplit(text)
    collection = parse_qs(parts.query).get("collection", [default_collection])[0]
    if parts.scheme == "milvus-lite":
        folder = unquote(parts.netloc + parts.path)
        if not folder:
            raise SearchIndexError(f"{text!r}: give Milvus Lite's folder, as milvus-lite:PATH")
        return MilvusLocation(f"milvus-lite:{folder}", f"{folder.rstrip('/')}/milvus.db", "", collection)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise SearchIndexError(f"{text!r} is not milvus://HOST:PORT, milvus+https://HOST:PORT or milvus-lite:PATH")
    token = ":".join(unquote(p) for p in (parts.username, parts.password) if p is not None)
    address = f"{parts.hostname}:{parts.port or 19530}"
    return MilvusLocation(f"{parts.scheme}://{address}", f"{SCHEMES[parts.scheme]}://{address}", token, collection)


def milvus_filter(where: Where | None) -> str:
    """A Milvus boolean expression on the metadata JSON field for service.catalog.Where, with the catalog's
    meaning: "not" passes an image without the key, numeric bounds pass numbers only."""
    clauses = []
    for key, condition in (where or {}).items():
        field = f"metadata[{json.dumps(key)}]"
        conditions = {"in": condition} if isinstance(condition, list) else condition
        for op, operand in conditions.items():
            if op in ("in", "not"):
                values = operand if isinstance(operand, list) else [operand]
                any_of = " or ".join(f"{field} == {_literal(v)}" for v in values) or "false"
                clauses.append(f"({any_of})" if op == "in" else f"(not exists {field} or not ({any_of}))")
            else:
                clauses.append(f"{field} {RANGES[op]} {_literal(operand)}")
    return " and ".join(clauses)


def _literal(value: str | int | float) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


def check_type(index_type: str) -> None:
    if index_type not in INDEX_TYPES:
        raise SearchIndexError(f"{index_type!r} is not a Milvus index type this service makes: "
                               f"{', '.join(INDEX_TYPES)}")


class MilvusIndex:
    """Nearest neighbours among the images of a Milvus collection (see the module's docstring)."""

    read_only = False

    def __init__(self, location: MilvusLocation, bundle_fingerprint: str | None = None):
        self.location = location
        self.client = _connect(location)
        with self._calls():
            if not self.client.has_collection(location.collection):
                raise SearchIndexError(f"{location} does not exist (build it with python -m service.build_index "
                                       f"--out {location.uri}, or start the service with --data-dir)")
            properties = self.client.describe_collection(location.collection).get("properties", {})
        try:
            raw = json.loads(properties.get(INFO_PROPERTY, "null"))
        except json.JSONDecodeError:
            raw = None
        self.info = checked_info(raw, str(location), bundle_fingerprint)
        with self._calls():
            self.client.load_collection(location.collection)
        self._classes: tuple[int, list[str]] | None = None  # (count when read, the classes)

    @classmethod
    def create(cls, location: MilvusLocation, info: IndexInfo) -> MilvusIndex:
        """A new empty collection at location, described by info (info.factory: a Milvus index type)."""
        from pymilvus import DataType

        check_type(info.factory)
        client = _connect(location)
        with _calls(location):
            if client.has_collection(location.collection):
                raise SearchIndexError(f"{location} already exists")
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=info.dim)
            schema.add_field("metadata", DataType.JSON)
            schema.add_field("thumbnail", DataType.VARCHAR, max_length=MAX_THUMBNAIL)
            schema.add_field("added", DataType.DOUBLE)
            params = client.prepare_index_params()
            params.add_index("vector", index_type=info.factory, metric_type="IP",
                             params={"M": 32, "efConstruction": 200} if info.factory == "HNSW" else {})
            client.create_collection(location.collection, schema=schema, index_params=params,
                                     consistency_level="Strong",
                                     properties={INFO_PROPERTY: info.model_dump_json()})
        client.close()
        return cls(location)

    def rename(self, collection: str) -> None:
        """Give the collection its final name (a build fills it under a temporary one)."""
        with self._calls():
            if self.client.has_collection(collection):
                raise SearchIndexError(f"{self.location.named(collection)} already exists")
            self.client.rename_collection(self.location.collection, collection)
            self.location = self.location.named(collection)
            self.client.load_collection(collection)

    # -- what it holds ------------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        with self._calls():
            return self.client.query(self.location.collection, filter="", output_fields=["count(*)"],
                                     consistency_level="Strong")[0]["count(*)"]

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def factory(self) -> str:
        return f"Milvus {self.info.factory}"

    @property
    def classes(self) -> list[str]:
        """The distinct values of metadata "class", sorted: read by scanning the collection, again when its
        count changed."""
        count = self.count
        if self._classes is None or self._classes[0] != count:
            classes = {str(row["metadata"]["class"]) for rows in self._scan('exists metadata["class"]', ["metadata"])
                       for row in rows}
            self._classes = count, sorted(classes)[:100]
        return self._classes[1]

    def get(self, id: str) -> Record | None:
        rows = self._get([id], ["metadata", "added"])
        return Record(id, rows[0]["metadata"], rows[0]["added"]) if rows else None

    def thumbnail(self, id: str) -> bytes | None:
        rows = self._get([id], ["thumbnail"])
        return base64.b64decode(rows[0]["thumbnail"]) if rows and rows[0]["thumbnail"] else None

    def vector(self, id: str) -> np.ndarray | None:
        rows = self._get([id], ["vector"])
        return np.asarray(rows[0]["vector"], dtype=np.float32) if rows else None

    def page(self, after: str | None, limit: int, where: Where | None = None) -> tuple[list[Record], str | None]:
        """Up to limit records in the order of their ids, after the id `after` (a page's `next`), only those
        matching where; and the next page's cursor (None after the last page)."""
        condition = " and ".join(c for c in (f"id > {json.dumps(after)}" if after else "", milvus_filter(where)) if c)
        with self._calls():
            iterator = self.client.query_iterator(self.location.collection, batch_size=limit, limit=limit,
                                                  filter=condition, output_fields=["metadata", "added"])
            try:
                rows = iterator.next()
            finally:
                iterator.close()
        records = [Record(row["id"], row["metadata"], row["added"]) for row in rows]
        return records, records[-1].id if len(records) == limit else None

    # -- changes ------------------------------------------------------------------------------------------

    def add(self, items: list[Item]) -> tuple[int, int]:
        """Add the images, replacing those whose ids are indexed already; searchable when it returns. Returns
        (added, replaced)."""
        if len({item.id for item in items}) != len(items):
            raise SearchIndexError("the same id is given twice in one request")
        if any(len(item.vector) != self.dim for item in items):
            raise SearchIndexError(f"vectors have other than the index's {self.dim} numbers")
        replaced = len(self._get([item.id for item in items], []))
        now = time.time()
        rows = [{"id": item.id, "vector": np.asarray(item.vector, dtype=np.float32).tolist(),
                 "metadata": item.metadata, "thumbnail": _thumbnail(item.thumbnail), "added": now} for item in items]
        with self._calls():
            self.client.upsert(self.location.collection, rows)
            if len(rows) >= SEAL_AT:
                self.client.flush(self.location.collection)
        return len(items) - replaced, replaced

    def update_metadata(self, id: str, metadata: MetadataValues) -> Record | None:
        """Replace an image's metadata, its row written again whole (Milvus has no partial update) with the same
        vector, thumbnail and time added. None when no image has the id."""
        rows = self._get([id], ["vector", "thumbnail", "added"])
        if not rows:
            return None
        row = {"id": id, "vector": rows[0]["vector"], "metadata": metadata, "thumbnail": rows[0]["thumbnail"],
               "added": rows[0]["added"]}
        with self._calls():
            self.client.upsert(self.location.collection, [row])
        self._classes = None  # its class may have changed, the count (what the cache is checked by) not
        return Record(id, metadata, row["added"])

    def remove(self, ids: list[str]) -> int:
        """Remove the images with these ids (unknown ones are skipped). Returns how many were removed."""
        found = [row["id"] for row in self._get(list(dict.fromkeys(ids)), [])]
        if found:
            with self._calls():
                self.client.delete(self.location.collection, ids=found)
        return len(found)

    def remove_matching(self, where: Where) -> list[str]:
        """Remove every image whose metadata matches where. Returns their ids."""
        ids = [row["id"] for rows in self._scan(milvus_filter(where), []) for row in rows]
        for start in range(0, len(ids), SCAN):
            with self._calls():
                self.client.delete(self.location.collection, ids=ids[start:start + SCAN])
        return ids

    def refresh(self) -> None:
        """Nothing to catch up with: every process reads the server."""

    def snapshot(self) -> None:
        """Nothing to write: the server keeps the index."""

    def close(self) -> None:
        self.client.close()

    # -- search -------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, where: Where | None = None, exclude: list[str] | None = None,
               offset: int = 0, min_score: float | None = None) -> list[list[Hit]]:
        """As service.index.SearchIndex.search."""
        limit = k + offset + (1 if exclude else 0)
        # The local index's search breadth (efSearch 128, nprobe 32): Milvus's defaults give HNSW an ef of k.
        params = {"HNSW": {"ef": max(128, limit)}, "IVF_FLAT": {"nprobe": 32}}.get(self.info.factory, {})
        with self._calls():
            results = self.client.search(
                self.location.collection, data=np.asarray(queries, dtype=np.float32).tolist(), limit=limit,
                filter=milvus_filter(where), output_fields=["metadata"],
                search_params={"metric_type": "IP", "params": params}, consistency_level="Strong")
        found = []
        for q, row in enumerate(results):
            hits = [Hit(hit["id"], float(hit["distance"]), hit["entity"]["metadata"]) for hit in row
                    if min_score is None or hit["distance"] >= min_score]
            hits = [hit for hit in hits if not (exclude and hit.id == exclude[q])]
            found.append(hits[offset:offset + k])
        return found

    # -- calls to the server ------------------------------------------------------------------------------

    def _get(self, ids: list[str], fields: list[str]) -> list[dict]:
        if not ids:
            return []
        with self._calls():
            return list(self.client.get(self.location.collection, ids=ids, output_fields=fields or ["id"],
                                        consistency_level="Strong"))

    def _scan(self, condition: str, fields: list[str]) -> Iterator[list[dict]]:
        with self._calls():
            iterator = self.client.query_iterator(self.location.collection, batch_size=SCAN, filter=condition,
                                                  output_fields=fields or ["id"])
        try:
            while True:
                with self._calls():
                    rows = iterator.next()
                if not rows:
                    return
                yield rows
        finally:
            iterator.close()

    def _calls(self):
        return _calls(self.location)


def collection_exists(location: MilvusLocation) -> bool:
    client = _connect(location)
    with _calls(location):
        found = client.has_collection(location.collection)
    client.close()
    return found


def drop_collection(location: MilvusLocation) -> None:
    client = _connect(location)
    with _calls(location):
        client.drop_collection(location.collection)
    client.close()


@contextmanager
def _calls(location: MilvusLocation) -> Iterator[None]:
    """Any error of the client or the server becomes IndexUnavailable (a 503 that says retry), in one line."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as e:
        raise IndexUnavailable(f"Milvus at {location.uri} failed: {e.message}") from None
    except Exception as e:  # grpc's errors, a connection refused or reset, a timeout
        if isinstance(e, SearchIndexError):
            raise
        raise IndexUnavailable(f"Milvus at {location.uri} failed: {type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None


def _connect(location: MilvusLocation):
    """A client of the server; one that cannot be reached is IndexUnavailable, in one line."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise SearchIndexError("an index in Milvus needs pymilvus: pip install 'simclr-cifar[milvus]' (and "
                               "milvus-lite for milvus-lite: locations)") from None

    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # it logs every failed call with a traceback
    if location.uri.startswith("milvus-lite:"):
        Path(location.client_uri).parent.mkdir(parents=True, exist_ok=True)
    with _calls(location):
        return MilvusClient(location.client_uri, token=location.token, timeout=TIMEOUT_S)


def _thumbnail(jpeg: bytes | None) -> str:
    text = base64.b64encode(jpeg).decode() if jpeg else ""
    return text if len(text) <= MAX_THUMBNAIL else ""

