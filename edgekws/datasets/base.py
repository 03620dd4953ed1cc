"""The one dataset protocol every loader implements, and the split logic built on it.

A dataset is a list of fixed-length mono clips at a known sample rate, each with an integer label, a *group*
(speaker, source recording, synthetic voice: clips of one group never straddle train and test) and a *fold*
(``"train"``/``"val"``/``"test"`` for datasets with a fixed split, ``"1"``..``"5"`` for cross-validated ones).
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = [
    "Dataset",
    "ClipDataset",
    "Split",
    "split_indices",
    "stable_hash_fraction",
    "hash_text",
    "sizes_key",
    "read_metadata_csv",
]


@runtime_checkable
class Dataset(Protocol):
    """What training, distillation and evaluation need from any audio dataset."""

    name: str
    class_names: tuple[str, ...]
    labels: np.ndarray  # int64 (N,)
    groups: np.ndarray  # str (N,): speaker / recording id; splits never cut a group
    folds: np.ndarray  # str (N,): "train"/"val"/"test" or CV fold "1".."k"
    sample_rate: int
    clip_seconds: float

    def __len__(self) -> int: ...

    def waveform(self, i: int) -> np.ndarray:
        """Clip ``i`` as float32 ``(clip_samples,)`` at ``sample_rate``, padded/trimmed to ``clip_seconds``."""
        ...

    def fingerprint(self) -> str:
        """Hex digest identifying the exact content (files and their sizes/mtimes, or generator settings)."""
        ...


@dataclass
class ClipDataset:
    """A concrete :class:`Dataset` backed by a per-clip loader function.

    ``loader(i)`` must return the clip already at ``sample_rate`` and ``clip_seconds`` long.
    ``source_ids`` name each clip (a relative path or a synthetic recipe) and feed the fingerprint.
    """

    name: str
    class_names: tuple[str, ...]
    labels: np.ndarray
    groups: np.ndarray
    folds: np.ndarray
    sample_rate: int
    clip_seconds: float
    loader: Callable[[int], np.ndarray]
    source_ids: Sequence[str]
    content_key: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.source_ids)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.groups = np.asarray(self.groups, dtype=str)
        self.folds = np.asarray(self.folds, dtype=str)
        for what, arr in (("labels", self.labels), ("groups", self.groups), ("folds", self.folds)):
            if len(arr) != n:
                raise ValueError(f"{self.name}: {what} has {len(arr)} entries for {n} clips")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"{self.name}: labels outside 0..{len(self.class_names) - 1}")
        self.class_names = tuple(self.class_names)

    def __len__(self) -> int:
        return len(self.source_ids)

    def waveform(self, i: int) -> np.ndarray:
        return self.loader(int(i))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.sample_rate}|{self.clip_seconds}|{self.content_key}|".encode())
        h.update("|".join(self.class_names).encode())
        for sid, lab, grp, fold in zip(self.source_ids, self.labels.tolist(), self.groups, self.folds):
            h.update(f"\n{sid}|{lab}|{grp}|{fold}".encode())
        return h.hexdigest()[:32]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {c: int(n) for c, n in zip(self.class_names, counts)}


def read_metadata_csv(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a dataset's metadata CSV; clear errors for a missing file, missing columns or no rows."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} metadata not found: {path}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def sizes_key(root: Path, rel_paths: Sequence[str]) -> str:
    """Short hash of the files' sizes: part of a file-backed dataset's fingerprint (cheap; catches replaced files)."""
    return hash_text("|".join(str(os.stat(root / p).st_size) for p in rel_paths))


def hash_text(text: str, n: int = 16) -> str:
    """Short hex sha256 of a string."""
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def stable_hash_fraction(key: str, salt: str = "edgekws") -> float:
    """Deterministic number in [0, 1) from a string (independent of Python's hash seed)."""
    digest = hashlib.sha1(f"{salt}:{key}".encode()).hexdigest()
    return int(digest[:12], 16) / float(16**12)


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_indices(ds: Dataset, test_fold: str | None = None, val_fold: str | None = None) -> Split:
    """Train/val/test indices.

    Fixed-split datasets (folds are "train"/"val"/"test") ignore ``test_fold``. Cross-validated datasets hold out
    ``test_fold`` (default: the first fold) for test and ``val_fold`` (default: the fold after it, cyclically)
    for validation/early stopping; the rest is train.
    """
    folds = np.asarray(ds.folds)
    names = sorted(set(folds.tolist()), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else s))
    if set(names) <= {"train", "val", "test"}:
        return Split(*(np.flatnonzero(folds == f) for f in ("train", "val", "test")))
    if test_fold is None:
        test_fold = names[0]
    if test_fold not in names:
        raise ValueError(f"{ds.name}: no fold {test_fold!r}; folds are {names}")
    if val_fold is None:
        val_fold = names[(names.index(test_fold) + 1) % len(names)]
    if val_fold == test_fold:
        raise ValueError("validation and test folds must differ")
    train = np.flatnonzero((folds != test_fold) & (folds != val_fold))
    return Split(train, np.flatnonzero(folds == val_fold), np.flatnonzero(folds == test_fold))
