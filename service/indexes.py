"""Where a similar-image index lives, and opening, creating and publishing one there: a folder (service.index:
FAISS + SQLite, embedded, the default) or a Milvus collection (service.milvus_index: a server that many service
processes on many hosts share). The routes, the build and the service's state call what the Index protocol
names, and nothing else, so either backend serves every route.

    location_of("indexes/photos")                      a folder
    location_of("milvus://milvus:19530", fingerprint)  the bundle's collection on a Milvus server
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from service.catalog import Item, MetadataValues, Record, Where
from service.index import Hit, IndexInfo, SearchIndex, SearchIndexError, read_info, vector_index
from service.milvus_index import (MilvusIndex, MilvusLocation, collection_exists, drop_collection, is_milvus,
                                  parse_location)
from service.milvus_index import check_type as check_milvus_type

Location = Path | MilvusLocation


class Index(Protocol):
    """What every backend answers. Changes are durable and searchable when they return."""

    info: IndexInfo
    read_only: bool

    @property
    def count(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def factory(self) -> str: ...
    @property
    def classes(self) -> list[str]: ...
    def get(self, id: str) -> Record | None: ...
    def vector(self, id: str) -> np.ndarray | None: ...
    def thumbnail(self, id: str) -> bytes | None: ...
    def page(self, after: str | None, limit: int, where: Where | None = None) -> tuple[list[Record], str | None]: ...
    def add(self, items: list[Item]) -> tuple[int, int]: ...
    def update_metadata(self, id: str, metadata: MetadataValues) -> Record | None: ...
    def remove(self, ids: list[str]) -> int: ...
    def remove_matching(self, where: Where) -> list[str]: ...
    def search(self, queries: np.ndarray, k: int, where: Where | None = None, exclude: list[str] | None = None,
               offset: int = 0, min_score: float | None = None) -> list[list[Hit]]: ...
    def refresh(self) -> None: ...
    def snapshot(self) -> None: ...
    def close(self) -> None: ...


def location_of(text: str | Path, bundle_fingerprint: str | None = None) -> Location:
    """A folder, or a milvus:// / milvus-lite: URI (whose collection defaults to the bundle's)."""
    if is_milvus(str(text)):
        return parse_location(str(text), bundle_fingerprint and collection_name(bundle_fingerprint))
    return Path(text)


def collection_name(bundle_fingerprint: str) -> str:
    """The default collection of a bundle's index (Milvus names: letters, digits and underscores)."""
    return f"simclr_{bundle_fingerprint[:16]}"


def _collection(location: MilvusLocation) -> MilvusLocation:
    if location.collection is None:
        raise SearchIndexError(f"{location.uri}: name the collection (?collection=NAME)")
    return location


def exists(location: Location) -> bool:
    """Whether an index is there (a Milvus server that does not answer raises IndexUnavailable)."""
    if isinstance(location, Path):
        return (location / "index.json").is_file()  # written last: without it an index was never made
    return collection_exists(_collection(location))


def open_index(location: Location, bundle_fingerprint: str | None = None, mmap: bool = False) -> Index:
    """The index at location, checked to be the bundle's (when a fingerprint is given)."""
    if isinstance(location, Path):
        return SearchIndex(location, bundle_fingerprint, mmap=mmap)
    if mmap:
        raise SearchIndexError("--index-mmap is for a local index: a Milvus server keeps its own memory")
    return MilvusIndex(_collection(location), bundle_fingerprint)


def read_index_info(location: Location, bundle_fingerprint: str | None = None) -> IndexInfo:
    """What the index at location is, checked to be the bundle's."""
    if isinstance(location, Path):
        return read_info(location, bundle_fingerprint)
    index = open_index(location, bundle_fingerprint)
    index.close()
    return index.info


def check_type(location: Location, dim: int, factory: str) -> None:
    """A bad index type for a new index is said before minutes of embedding, not after."""
    if isinstance(location, Path):
        vector_index(dim, factory)
    else:
        check_milvus_type(milvus_type(factory))


def milvus_type(factory: str) -> str:
    """Milvus's name for an index type: FLAT, HNSW ... (the default FAISS "Flat" is FLAT)."""
    return factory.upper()


def staging(location: Location) -> Location:
    """Where a new index is built before publish() gives it its place: a whole index is there, or none."""
    if isinstance(location, Path):
        staged = location.with_name(f".{location.name}.building-{os.getpid()}")
        shutil.rmtree(staged, ignore_errors=True)
        return staged
    staged = _collection(location).named(f"{location.collection}_building_{os.getpid()}")
    drop_collection(staged)  # a build killed earlier
    return staged


def create_index(location: Location, *, dim: int, bundle: str, bundle_name: str, runtime: str,
                 factory: str = "Flat", thumbnail_size: int = 128, sample: np.ndarray | None = None,
                 sources: list[str] | None = None, splits: list[str] | None = None) -> Index:
    """A new empty index at location (a FAISS factory string, or a Milvus index type, as factory)."""
    if isinstance(location, Path):
        return SearchIndex.create(location, dim=dim, bundle=bundle, bundle_name=bundle_name, runtime=runtime,
                                  factory=factory, thumbnail_size=thumbnail_size, sample=sample, sources=sources,
                                  splits=splits)
    info = IndexInfo(bundle=bundle, bundle_name=bundle_name, factory=milvus_type(factory), dim=dim, runtime=runtime,
                     thumbnail_size=thumbnail_size, created=time.time(), sources=sources or [], splits=splits or [])
    return MilvusIndex.create(_collection(location), info)


def publish(index: Index, staged: Location, location: Location) -> None:
    """Close an index built at staged and move it to location."""
    if isinstance(index, MilvusIndex):
        index.rename(_collection(location).collection)
        index.close()
        return
    index.close()
    try:
        staged.rename(location)
    except OSError as e:  # another process published its own build first
        shutil.rmtree(staged, ignore_errors=True)
        raise SearchIndexError(f"{location} could not be written: {e}") from None

