"""ESC-50: ``meta/esc50.csv`` + ``audio/*.wav`` (5 s, 44.1 kHz, resampled to 16 kHz), official folds 1..5.

Groups are the ``src_file`` recording, which the official folds already keep together.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekws.audio import load_audio
from edgekws.datasets.base import ClipDataset, read_metadata_csv, sizes_key

__all__ = ["load_esc50"]

_REQUIRED = ("filename", "fold", "target", "category")


def load_esc50(root: str | os.PathLike, *, sample_rate: int = 16000, clip_seconds: float = 5.0) -> ClipDataset:
    """Load ESC-50 as a :class:`ClipDataset` with CV folds "1".."5"; class names ordered by ``target``."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    rows = read_metadata_csv(meta, _REQUIRED, "ESC-50")
    names: dict[int, str] = {}
    for r in rows:
        t = int(r["target"])
        if names.setdefault(t, r["category"]) != r["category"]:
            raise ValueError(f"{meta}: target {t} names both {names[t]!r} and {r['category']!r}")
    targets = sorted(names)
    if targets != list(range(len(targets))):
        raise ValueError(f"{meta}: targets are not 0..{len(targets) - 1}")
    rel_paths = [f"audio/{r['filename']}" for r in rows]
    for rel in rel_paths:
        if not (root / rel).is_file():
            raise FileNotFoundError(f"ESC-50 clip listed in metadata is missing: {root / rel}")
    groups = [r.get("src_file") or os.path.splitext(r["filename"])[0] for r in rows]
    folds = [str(int(r["fold"])) for r in rows]

    def loader(i: int) -> np.ndarray:
        return load_audio(root / rel_paths[i], sample_rate=sample_rate, clip_seconds=clip_seconds)

    return ClipDataset(
        name="esc50",
        class_names=tuple(names[t] for t in targets),
        labels=np.asarray([int(r["target"]) for r in rows]),
        groups=np.asarray(groups),
        folds=np.asarray(folds),
        sample_rate=sample_rate,
        clip_seconds=clip_seconds,
        loader=loader,
        source_ids=rel_paths,
        content_key=f"sizes={sizes_key(root, rel_paths)}",
        meta={"root": str(root), "split": "official 5 folds"},
    )
