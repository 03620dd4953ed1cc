"""UrbanSound8K: ``metadata/UrbanSound8K.csv`` + ``audio/fold1..fold10/*.wav``.

The official release has 10 folds (clips of one source recording, ``fsID``, always share a fold). The paper
evaluates with 5-fold cross-validation, so official folds are merged pairwise: {1,2}->"1", {3,4}->"2",
{5,6}->"3", {7,8}->"4", {9,10}->"5". Merging whole official folds keeps recordings from straddling folds.
``folds=10`` keeps the official ten. Clips are up to 4 s; shorter ones are zero-padded (centred).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekws.audio import load_audio
from edgekws.datasets.base import ClipDataset, read_metadata_csv, sizes_key

__all__ = ["US8K_CLASSES", "load_us8k", "official_to_cv_fold"]

US8K_CLASSES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)
_REQUIRED = ("slice_file_name", "fsID", "fold", "classID", "class")


def official_to_cv_fold(official: int, folds: int = 5) -> str:
    """Map an official fold 1..10 to a CV fold name ("1".."5" when folds=5, unchanged when folds=10)."""
    if not 1 <= official <= 10:
        raise ValueError(f"UrbanSound8K folds are 1..10, got {official}")
    if folds == 10:
        return str(official)
    if folds == 5:
        return str((official + 1) // 2)
    raise ValueError("folds must be 5 or 10")


def load_us8k(
    root: str | os.PathLike, *, folds: int = 5, sample_rate: int = 16000, clip_seconds: float = 4.0
) -> ClipDataset:
    """Load UrbanSound8K as a :class:`ClipDataset` with CV folds "1".."5" (or the official 10)."""
    root = Path(root)
    meta = root / "metadata" / "UrbanSound8K.csv"
    rows = read_metadata_csv(meta, _REQUIRED, "UrbanSound8K")
    rel_paths, labels, groups, fold_names = [], [], [], []
    for r in rows:
        label = int(r["classID"])
        if not 0 <= label < len(US8K_CLASSES) or US8K_CLASSES[label] != r["class"]:
            raise ValueError(f"{meta}: row {r['slice_file_name']} has classID {label} / class {r['class']!r}")
        official = int(r["fold"])
        rel = f"audio/fold{official}/{r['slice_file_name']}"
        if not (root / rel).is_file():
            raise FileNotFoundError(f"UrbanSound8K clip listed in metadata is missing: {root / rel}")
        rel_paths.append(rel)
        labels.append(label)
        groups.append(f"fs{r['fsID']}")
        fold_names.append(official_to_cv_fold(official, folds))

    def loader(i: int) -> np.ndarray:
        return load_audio(root / rel_paths[i], sample_rate=sample_rate, clip_seconds=clip_seconds)

    return ClipDataset(
        name="us8k",
        class_names=US8K_CLASSES,
        labels=np.asarray(labels),
        groups=np.asarray(groups),
        folds=np.asarray(fold_names),
        sample_rate=sample_rate,
        clip_seconds=clip_seconds,
        loader=loader,
        source_ids=rel_paths,
        content_key=f"folds={folds};sizes={sizes_key(root, rel_paths)}",
        meta={"root": str(root), "split": f"{folds}-fold CV (official folds merged pairwise)" if folds == 5 else "official 10 folds"},
    )
