"""SQLite store of collected clips, their embeddings, label requests and the labels a person gave.

One file per device state directory (``labels.sqlite``), in WAL mode with ``synchronous=FULL``: every label is
committed as it is given, so a session killed at any point keeps every label answered before the kill, and the
web page and the terminal can label the same store side by side.

Tables::

    clips(id, path, source, start_s, end_s, created_at, embedding BLOB, margin, requested)
    labels(clip_id PK -> clips.id, label, labeled_at)       label NULL = skipped
    classes(name PK, added_at)                              classes a person introduced
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SKIP", "Clip", "LabelStore"]

SKIP = None

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    start_s REAL NOT NULL DEFAULT 0,
    end_s REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    embedding BLOB,
    dim INTEGER NOT NULL DEFAULT 0,
    margin REAL,
    predicted TEXT,
    requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS labels (
    clip_id INTEGER PRIMARY KEY REFERENCES clips(id) ON DELETE CASCADE,
    label TEXT,
    labeled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS classes (
    name TEXT PRIMARY KEY,
    added_at REAL NOT NULL
);
"""


@dataclass
class Clip:
    id: int
    path: str
    source: str
    start_s: float
    end_s: float
    embedding: np.ndarray | None
    margin: float | None
    predicted: str | None
    requested: bool
    label: str | None = None
    labeled: bool = False


class LabelStore:
    """Clips, label requests and labels in one SQLite file (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    # Clips ---------------------------------------------------------------------------------------------------
    def add_clips(self, rows: Sequence[dict]) -> list[int]:
        """Insert clips: dicts with path, source, start_s, end_s, and optional embedding, margin, predicted."""
        ids = []
        now = time.time()
        with self._tx() as db:
            for r in rows:
                emb = r.get("embedding")
                blob, dim = (None, 0)
                if emb is not None:
                    e = np.ascontiguousarray(emb, dtype=np.float32).reshape(-1)
                    blob, dim = e.tobytes(), e.size
                cur = db.execute(
                    "INSERT INTO clips(path, source, start_s, end_s, created_at, embedding, dim, margin, predicted) "
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        str(r["path"]),
                        str(r.get("source", "")),
                        float(r.get("start_s", 0.0)),
                        float(r.get("end_s", 0.0)),
                        now,
                        blob,
                        dim,
                        None if r.get("margin") is None else float(r["margin"]),
                        r.get("predicted"),
                    ),
                )
                assert cur.lastrowid is not None
                ids.append(int(cur.lastrowid))
        return ids

    def count(self) -> int:
        """How many clips the store holds."""
        return int(self._db.execute("SELECT COUNT(*) FROM clips").fetchone()[0])

    def request(self, clip_ids: Sequence[int]) -> None:
        """Mark clips as chosen for labelling (prototypes)."""
        with self._tx() as db:
            db.executemany("UPDATE clips SET requested = 1 WHERE id = ?", [(int(i),) for i in clip_ids])

    def _row(self, r: tuple) -> Clip:
        emb = np.frombuffer(r[5], dtype=np.float32).copy() if r[5] is not None else None
        return Clip(
            id=r[0],
            path=r[1],
            source=r[2],
            start_s=r[3],
            end_s=r[4],
            embedding=emb,
            margin=r[6],
            predicted=r[7],
            requested=bool(r[8]),
            label=r[9],
            labeled=r[10] is not None,
        )

    _SELECT = (
        "SELECT c.id, c.path, c.source, c.start_s, c.end_s, c.embedding, c.margin, c.predicted, c.requested, "
        "l.label, l.labeled_at FROM clips c LEFT JOIN labels l ON l.clip_id = c.id"
    )

    def clips(self, *, requested: bool | None = None, labeled: bool | None = None) -> list[Clip]:
        where = []
        if requested is not None:
            where.append(f"c.requested = {1 if requested else 0}")
        if labeled is not None:
            where.append("l.labeled_at IS NOT NULL" if labeled else "l.labeled_at IS NULL")
        sql = self._SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY c.id"
        return [self._row(r) for r in self._db.execute(sql).fetchall()]

    def pool(self) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The clips that may still be asked about (not requested, not answered, with an embedding), compactly:
        ``(ids, embeddings (N, D) float32, margins (N,) float64, NaN where unknown)``; rows are copied into one
        array as they are read, so choosing among thousands of clips stays small."""
        where = "WHERE c.requested = 0 AND l.labeled_at IS NULL AND c.embedding IS NOT NULL"
        join = "FROM clips c LEFT JOIN labels l ON l.clip_id = c.id"
        n = int(self._db.execute(f"SELECT COUNT(*) {join} {where}").fetchone()[0])
        dims = self._db.execute(f"SELECT DISTINCT c.dim {join} {where}").fetchall()
        if n == 0 or len(dims) != 1:
            if len(dims) > 1:
                raise ValueError(f"{self.path}: clips hold embeddings of different sizes {sorted(d[0] for d in dims)}")
            return [], np.zeros((0, 0), np.float32), np.zeros(0)
        E = np.empty((n, int(dims[0][0])), np.float32)
        margins = np.full(n, np.nan)
        ids: list[int] = []
        for i, (cid, blob, margin) in enumerate(
            self._db.execute(f"SELECT c.id, c.embedding, c.margin {join} {where} ORDER BY c.id")
        ):
            if i >= n:  # written meanwhile by another process: the next collect sees it
                break
            ids.append(int(cid))
            E[i] = np.frombuffer(blob, dtype=np.float32)
            if margin is not None:
                margins[i] = float(margin)
        return ids, E[: len(ids)], margins[: len(ids)]

    def clip(self, clip_id: int) -> Clip:
        r = self._db.execute(self._SELECT + " WHERE c.id = ?", (int(clip_id),)).fetchone()
        if r is None:
            raise KeyError(f"no clip {clip_id}")
        return self._row(r)

    def pending(self) -> list[Clip]:
        """Requested clips nobody has answered yet (neither labelled nor skipped)."""
        return self.clips(requested=True, labeled=False)

    # Labels --------------------------------------------------------------------------------------------------
    def set_label(self, clip_id: int, label: str | None) -> None:
        """Record a label (``None`` = skipped) and commit at once."""
        if label is not None:
            label = label.strip()
            if not label:
                raise ValueError("a label cannot be empty")
        with self._tx() as db:
            if db.execute("SELECT 1 FROM clips WHERE id = ?", (int(clip_id),)).fetchone() is None:
                raise KeyError(f"no clip {clip_id}")
            db.execute(
                "INSERT INTO labels(clip_id, label, labeled_at) VALUES (?,?,?) "
                "ON CONFLICT(clip_id) DO UPDATE SET label = excluded.label, labeled_at = excluded.labeled_at",
                (int(clip_id), label, time.time()),
            )

    def add_class(self, name: str) -> None:
        name = name.strip()
        if not name:
            raise ValueError("a class name cannot be empty")
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO classes(name, added_at) VALUES (?, ?)", (name, time.time()))

    def new_classes(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM classes ORDER BY added_at, name").fetchall()]

    def labeled(self) -> list[Clip]:
        """Clips with a real label (skips excluded)."""
        return [c for c in self.clips(labeled=True) if c.label is not None]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT label, COUNT(*) FROM labels WHERE label IS NOT NULL GROUP BY label")
        return {r[0]: int(r[1]) for r in rows.fetchall()}
