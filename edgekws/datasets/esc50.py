"""ESC-50: ``meta/esc50.csv`` + ``audio/*.wav`` (5 s, 44.1 kHz, resampled to 16 kHz), official folds 1..5.

Groups are the ``src_file`` recording, which the official folds already keep together. ESC-10 is the subset of
rows whose ``esc10`` column is ``True`` (10 classes, CC BY); :func:`load_esc10` re-indexes its targets to 0..9 in
the order of the original targets, and also opens a folder whose metadata lists only the ESC-10 rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekws.audio import load_audio
from edgekws.datasets.base import ClipDataset, read_metadata_csv, sizes_key

__all__ = ["ESC10_CATEGORIES", "load_esc10", "load_esc50"]

_REQUIRED = ("filename", "fold", "target", "category")
# ESC-10's classes in ESC-50 target order (targets 0, 1, 10, 11, 12, 20, 21, 38, 40, 41)
ESC10_CATEGORIES = ("dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing",
                    "clock_tick", "helicopter", "chainsaw")


def _class_names(rows: list[dict[str, str]], meta: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    for r in rows:
        t = int(r["target"])
        if names.setdefault(t, r["category"]) != r["category"]:
            raise ValueError(f"{meta}: target {t} names both {names[t]!r} and {r['category']!r}")
    return names


def load_esc50(root: str | os.PathLike, *, sample_rate: int = 16000, clip_seconds: float = 5.0) -> ClipDataset:
    """Load ESC-50 as a :class:`ClipDataset` with CV folds "1".."5"; class names ordered by ``target``."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    rows = read_metadata_csv(meta, _REQUIRED, "ESC-50")
    names = _class_names(rows, meta)
    targets = sorted(names)
    if targets != list(range(len(targets))):
        hint = (" (this looks like the ESC-10 subset: open it with --dataset esc10)"
                if set(names.values()) <= set(ESC10_CATEGORIES) else "")
        raise ValueError(f"{meta}: targets are not 0..{len(targets) - 1}{hint}")
    return _clip_dataset("esc50", root, rows, {t: t for t in targets}, names, sample_rate, clip_seconds)


def load_esc10(root: str | os.PathLike, *, sample_rate: int = 16000, clip_seconds: float = 5.0) -> ClipDataset:
    """Load ESC-10: the rows of ``meta/esc50.csv`` marked ``esc10`` (all rows when the column is absent), targets
    re-indexed to 0..9 in the order of their ESC-50 targets, official folds "1".."5"."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    rows = read_metadata_csv(meta, _REQUIRED, "ESC-10")
    if "esc10" in rows[0]:
        rows = [r for r in rows if str(r["esc10"]).strip().lower() in ("true", "1", "yes")]
        if not rows:
            raise ValueError(f"{meta}: no row is marked esc10")
    names = _class_names(rows, meta)
    targets = sorted(names)
    if len(targets) != 10:
        raise ValueError(f"{meta}: the ESC-10 rows name {len(targets)} classes, expected 10")
    return _clip_dataset("esc10", root, rows, {t: i for i, t in enumerate(targets)}, names, sample_rate,
                         clip_seconds)


def _clip_dataset(name: str, root: Path, rows: list[dict[str, str]], index: dict[int, int], names: dict[int, str],
                  sample_rate: int, clip_seconds: float) -> ClipDataset:
    rel_paths = [f"audio/{r['filename']}" for r in rows]
    for rel in rel_paths:
        if not (root / rel).is_file():
            raise FileNotFoundError(f"ESC-50 clip listed in metadata is missing: {root / rel}")
    groups = [r.get("src_file") or os.path.splitext(r["filename"])[0] for r in rows]
    folds = [str(int(r["fold"])) for r in rows]

    def loader(i: int) -> np.ndarray:
        return load_audio(root / rel_paths[i], sample_rate=sample_rate, clip_seconds=clip_seconds)

    return ClipDataset(
        name=name,
        class_names=tuple(names[t] for t in sorted(index, key=index.__getitem__)),
        labels=np.asarray([index[int(r["target"])] for r in rows]),
        groups=np.asarray(groups),
        folds=np.asarray(folds),
        sample_rate=sample_rate,
        clip_seconds=clip_seconds,
        loader=loader,
        source_ids=rel_paths,
        content_key=f"sizes={sizes_key(root, rel_paths)}",
        meta={"root": str(root), "split": "official 5 folds"},
    )
