"""The index's catalog: every indexed image's record in SQLite, the index's source of truth.

One row per image: the caller's id, the FAISS id (vid) its vector has in the vector index, its metadata (a
JSON object of strings and numbers), its unit vector (float32 bytes, so the FAISS index can always be rebuilt
from here, of another type too, and exported exactly) and a thumbnail. Metadata is also kept one (key, value)
pair a row in an indexed table, so that equality filters are index lookups, not scans of every row's JSON.

A change is durable when its method returns: each is one transaction, committed in WAL mode with
synchronous=FULL (the log is fsynced at every commit), so a killed process loses no acknowledged change.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    vid INTEGER PRIMARY KEY AUTOINCREMENT,  -- the vector's id in FAISS, never reused: a stale snapshot's
    id TEXT NOT NULL UNIQUE,                -- vids are either live rows' or gone, never another image's
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    thumbnail BLOB,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    key TEXT NOT NULL,
    value NOT NULL,                         -- a string or a number, as the metadata gave it
    vid INTEGER NOT NULL REFERENCES images (vid) ON DELETE CASCADE,
    PRIMARY KEY (key, value, vid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_by_vid ON tags (vid);
"""

MetadataValues = dict[str, str | int | float]  # as stored; the API validates them as service.schemas.Metadata
# A metadata filter: per key, the values accepted (a list: any of them), or a dict of conditions that must all
# hold: "in" (a list), "not" (a list: none of them; an image without the key passes) and the numeric bounds "gt",
# "gte", "lt", "lte" (only numbers pass them). Every key must match.
Where = dict[str, list | dict[str, "list | int | float"]]
RANGES = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass
class Record:
    """One indexed image as the catalog keeps it."""

    id: str
    metadata: MetadataValues
    added: float
    vid: int = 0  # the vector's id in the local index's FAISS (service.index); backends without one leave it 0


@dataclass
class Item:
    """One image to add: its id, unit vector, metadata and thumbnail (JPEG bytes)."""

    id: str
    vector: np.ndarray
    metadata: MetadataValues
    thumbnail: bytes | None = None


class Catalog:
    def __init__(self, path: str | Path):
        # One connection, used by one thread at a time (the service's search thread, or the build).
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # A new database's pages: 16 KiB hold seven 2 KiB vectors, where the default 4 KiB holds one (half empty).
        self.db.execute("PRAGMA page_size=16384")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def version(self) -> int:
        """SQLite's data_version: it changes when another connection (another process) commits a change."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM images").fetchone()[0]

    def add(self, items: list[Item]) -> tuple[list[int], list[int]]:
        """Add the items, replacing any with the same id, in one transaction; returns the vids added and the
        vids of the rows replaced (their vectors leave the vector index)."""
        added, replaced, now = [], [], time.time()
        with self._transaction():
            for item in items:
                old = self.db.execute("DELETE FROM images WHERE id = ? RETURNING vid", (item.id,)).fetchone()
                if old:
                    replaced.append(old[0])
                vid = self.db.execute(
                    "INSERT INTO images (id, metadata, vector, thumbnail, added) VALUES (?, ?, ?, ?, ?)",
                    (item.id, json.dumps(item.metadata), np.asarray(item.vector, dtype="<f4").tobytes(),
                     item.thumbnail, now)).lastrowid
                self.db.executemany("INSERT INTO tags (key, value, vid) VALUES (?, ?, ?)",
                                    [(key, value, vid) for key, value in item.metadata.items()])
                added.append(vid)
        return added, replaced

    def update_metadata(self, id: str, metadata: MetadataValues) -> Record | None:
        """Replace the metadata of the record with this id, keeping its vid (its place in the listing), vector,
        thumbnail and time added; None when no record has the id."""
        with self._transaction():
            row = self.db.execute("UPDATE images SET metadata = ? WHERE id = ? RETURNING vid, added",
                                  (json.dumps(metadata), id)).fetchone()
            if row is None:
                return None
            self.db.execute("DELETE FROM tags WHERE vid = ?", (row[0],))
            self.db.executemany("INSERT INTO tags (key, value, vid) VALUES (?, ?, ?)",
                                [(key, value, row[0]) for key, value in metadata.items()])
        return Record(id, metadata, row[1], row[0])

    def remove(self, ids: Iterable[str]) -> list[int]:
        """Remove the records with these ids (unknown ids are skipped); returns the vids removed."""
        with self._transaction():
            return [row[0] for id in ids
                    for row in self.db.execute("DELETE FROM images WHERE id = ? RETURNING vid", (id,))]

    def get(self, id: str) -> Record | None:
        row = self.db.execute("SELECT id, vid, metadata, added FROM images WHERE id = ?", (id,)).fetchone()
        return Record(row[0], json.loads(row[2]), row[3], row[1]) if row else None

    def page(self, after_vid: int = 0, limit: int = 100, where: Where | None = None) -> list[Record]:
        """Up to limit records after after_vid, in the order they were added (a listing's page), only those
        matching where."""
        query, params = _matching(where) if where else ("SELECT vid FROM images", [])
        rows = self.db.execute(f"SELECT id, vid, metadata, added FROM images WHERE vid > ? AND vid IN ({query}) "
                               f"ORDER BY vid LIMIT ?", (after_vid, *params, limit))
        return [Record(row[0], json.loads(row[2]), row[3], row[1]) for row in rows]

    def records(self, vids: list[int]) -> dict[int, Record]:
        """The records of these vids (those that exist), by vid."""
        rows = self.db.execute(f"SELECT id, vid, metadata, added FROM images WHERE vid IN "
                               f"({','.join('?' * len(vids))})", vids) if vids else []
        return {row[1]: Record(row[0], json.loads(row[2]), row[3], row[1]) for row in rows}

    def vector(self, id: str) -> tuple[int, np.ndarray] | None:
        row = self.db.execute("SELECT vid, vector FROM images WHERE id = ?", (id,)).fetchone()
        return (row[0], np.frombuffer(row[1], dtype="<f4")) if row else None

    def thumbnail(self, id: str) -> bytes | None:
        row = self.db.execute("SELECT thumbnail FROM images WHERE id = ?", (id,)).fetchone()
        return row[0] if row else None

    def vids(self, after: int = 0) -> np.ndarray:
        """The vids of every record (or of those added after vid `after`: vids only grow), ascending (int64)."""
        return np.fromiter((row[0] for row in self.db.execute("SELECT vid FROM images WHERE vid > ? ORDER BY vid",
                                                              (after,))), dtype="int64")

    def vectors(self, vids: np.ndarray, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(vids, unit vectors (n, D) float32) of these vids, in chunks."""
        for start in range(0, len(vids), chunk):
            part = [int(v) for v in vids[start:start + chunk]]
            rows = self.db.execute(f"SELECT vid, vector FROM images WHERE vid IN ({','.join('?' * len(part))})",
                                   part).fetchall()
            if rows:
                yield (np.array([r[0] for r in rows], dtype="int64"),
                       np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype("float32"))

    def items(self, chunk: int = 10_000) -> Iterator[list[tuple[str, MetadataValues, np.ndarray]]]:
        """(id, metadata, vector) of every record, in chunks: what an export writes."""
        after = 0
        while rows := self.db.execute("SELECT vid, id, metadata, vector FROM images WHERE vid > ? ORDER BY vid "
                                      "LIMIT ?", (after, chunk)).fetchall():
            yield [(r[1], json.loads(r[2]), np.frombuffer(r[3], dtype="<f4")) for r in rows]
            after = rows[-1][0]

    def matching(self, where: Where) -> np.ndarray:
        """The vids whose metadata matches where (int64, ascending)."""
        query, params = _matching(where)
        return np.fromiter((row[0] for row in self.db.execute(query + " ORDER BY vid", params)), dtype="int64")

    def values(self, key: str, limit: int = 100) -> list[str | int | float]:
        """The distinct values of one metadata key (the classes, for "class"), sorted, at most limit."""
        return [row[0] for row in self.db.execute("SELECT DISTINCT value FROM tags WHERE key = ? ORDER BY value "
                                                  "LIMIT ?", (key, limit))]

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception: all of a request's changes or none."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")


def _matching(where: Where) -> tuple[str, list]:
    """SQL selecting the vids that match where, and its parameters: one SELECT per condition, intersected. The
    tags' (key, value) primary key serves equality, lists and ranges alike."""
    selects, params = [], []
    for key, condition in where.items():
        conditions = {"in": condition} if isinstance(condition, list) else condition
        for op, operand in conditions.items():
            if op in ("in", "not"):
                values = operand if isinstance(operand, list) else [operand]
                select = f"SELECT vid FROM tags WHERE key = ? AND value IN ({','.join('?' * len(values))})"
                selects.append(select if op == "in" else f"SELECT vid FROM images EXCEPT {select}")
                params += [key, *values]
            else:  # a numeric bound: text values never pass (SQLite orders every text after every number)
                selects.append(f"SELECT vid FROM tags WHERE key = ? AND typeof(value) IN ('integer', 'real') "
                               f"AND value {RANGES[op]} ?")
                params += [key, operand]
    return " INTERSECT ".join(f"SELECT * FROM ({select})" for select in selects), params

