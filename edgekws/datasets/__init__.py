"""Audio datasets behind one protocol (:class:`edgekws.datasets.base.Dataset`).

``load_dataset(name, data_dir)`` opens any of them by name: ``synthetic`` (the embedded default: spoken keywords
synthesised on the fly, no download), ``gsc`` (Speech Commands), ``us8k`` (UrbanSound8K), ``esc50`` (ESC-50).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from edgekws.datasets.base import ClipDataset, Dataset, Split, hash_text, split_indices, stable_hash_fraction

__all__ = [
    "ClipDataset",
    "Dataset",
    "Split",
    "DATASETS",
    "load_dataset",
    "split_indices",
    "stable_hash_fraction",
    "hash_text",
]

DATASETS = ("synthetic", "gsc", "us8k", "esc50")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    keywords: Sequence[str] | None = None,
    **kwargs: Any,
) -> ClipDataset:
    """Open a dataset by name. ``data_dir`` is required for the real datasets."""
    if name == "synthetic":
        from edgekws.datasets.synthetic import PAPER_KEYWORDS, synthetic_keywords

        return synthetic_keywords(tuple(keywords) if keywords else PAPER_KEYWORDS, **kwargs)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs --data-dir pointing at its folder")
    if name == "gsc":
        from edgekws.datasets.gsc import PAPER_KEYWORDS as GSC_KEYWORDS
        from edgekws.datasets.gsc import load_gsc

        return load_gsc(data_dir, keywords=tuple(keywords) if keywords else GSC_KEYWORDS, **kwargs)
    if keywords:
        raise ValueError(f"--keywords applies to speech datasets, not {name!r}")
    if name == "us8k":
        from edgekws.datasets.us8k import load_us8k

        return load_us8k(data_dir, **kwargs)
    from edgekws.datasets.esc50 import load_esc50

    return load_esc50(data_dir, **kwargs)
