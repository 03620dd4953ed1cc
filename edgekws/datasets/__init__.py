"""Audio datasets behind one protocol (:class:`edgekws.datasets.base.Dataset`).

``load_dataset(name, data_dir)`` opens any of them by name: ``synthetic`` (the embedded default: spoken keywords
synthesised on the fly, no download), ``gsc`` (Speech Commands), ``us8k`` (UrbanSound8K), ``esc50`` (ESC-50),
``esc10`` (its ESC-10 subset). Without ``data_dir`` a real dataset comes from the cache, where
:func:`edgekws.datasets.download.fetch_dataset` puts it (``download=True`` fetches it when it is not there yet).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from edgekws.datasets.base import (
    ClipDataset,
    Dataset,
    Split,
    hash_text,
    split_indices,
    stable_hash_fraction,
)

__all__ = [
    "DATASETS",
    "ClipDataset",
    "Dataset",
    "Split",
    "hash_text",
    "load_dataset",
    "split_indices",
    "stable_hash_fraction",
]

DATASETS = ("synthetic", "gsc", "us8k", "esc50", "esc10")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    keywords: Sequence[str] | None = None,
    download: bool = False,
    download_progress: Callable[[dict], None] | None = None,
    **kwargs: Any,
) -> ClipDataset:
    """Open a dataset by name.

    A real dataset is read from ``data_dir``; without it, from the copy :func:`~edgekws.datasets.download.fetch_dataset`
    left in the cache, which ``download=True`` fetches first when it is missing (progress events go to
    ``download_progress``).
    """
    if name == "synthetic":
        from edgekws.datasets.synthetic import PAPER_KEYWORDS, synthetic_keywords

        return synthetic_keywords(tuple(keywords) if keywords else PAPER_KEYWORDS, **kwargs)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is None:
        from edgekws.datasets.download import fetch_dataset, find_downloaded

        data_dir = find_downloaded(name)
        if data_dir is None and download:
            data_dir = fetch_dataset(name, progress=download_progress)
        if data_dir is None:
            raise ValueError(f"dataset {name!r} needs --data-dir pointing at its folder (or a download: "
                             f"`edgekws data download --dataset {name}`)")
    if name == "gsc":
        from edgekws.datasets.gsc import PAPER_KEYWORDS as GSC_KEYWORDS
        from edgekws.datasets.gsc import load_gsc

        return load_gsc(data_dir, keywords=tuple(keywords) if keywords else GSC_KEYWORDS, **kwargs)
    if keywords:
        raise ValueError(f"--keywords applies to speech datasets, not {name!r}")
    if name == "us8k":
        from edgekws.datasets.us8k import load_us8k

        return load_us8k(data_dir, **kwargs)
    if name == "esc10":
        from edgekws.datasets.esc50 import load_esc10

        return load_esc10(data_dir, **kwargs)
    from edgekws.datasets.esc50 import load_esc50

    return load_esc50(data_dir, **kwargs)
