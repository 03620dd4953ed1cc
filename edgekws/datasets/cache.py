"""On-disk caches of decoded waveforms and MFCC features, keyed by dataset fingerprint (+ FeatureConfig).

Waveforms are stored as int16 (lossless for 16-bit sources), features as float32 ``.npy``; both are written to a
temporary file and renamed, so a killed process never leaves a half-written cache entry behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgekws.datasets.base import Dataset
from edgekws.features import FeatureConfig, mfcc
from edgekws.fileio import atomic_open

__all__ = ["default_cache_dir", "load_waveforms", "load_features", "atomic_save_npy"]

Progress = Callable[[int, int], None]


def default_cache_dir() -> Path:
    """``$EDGEKWS_CACHE`` or ``~/.cache/edgekws``."""
    return Path(os.environ.get("EDGEKWS_CACHE") or Path.home() / ".cache" / "edgekws")


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, array)


def _try_load(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError):
        return None  # damaged entry: recompute
    return arr if arr.shape == shape else None


def load_waveforms(
    ds: Dataset, *, cache_dir: str | os.PathLike | None = None, progress: Progress | None = None
) -> np.ndarray:
    """All clips of ``ds`` as float32 ``(N, clip_samples)``, decoded once and cached as int16."""
    n_samples = int(round(ds.sample_rate * ds.clip_seconds))
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "waveforms" / f"{ds.name}-{ds.fingerprint()}.npy"
    shape = (len(ds), n_samples)
    cached = _try_load(path, shape)
    if cached is not None:
        if progress:
            progress(len(ds), len(ds))
        return (np.asarray(cached, dtype=np.float32) / 32768.0).astype(np.float32)
    out = np.empty(shape, dtype=np.int16)
    for i in range(len(ds)):
        y = ds.waveform(i)
        if y.shape != (n_samples,):
            raise ValueError(f"{ds.name}: clip {i} has shape {y.shape}, expected ({n_samples},)")
        out[i] = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
        if progress and (i % 64 == 0 or i == len(ds) - 1):
            progress(i + 1, len(ds))
    atomic_save_npy(path, out)
    return out.astype(np.float32) / 32768.0


def features_from_waveforms(
    waves: np.ndarray, cfg: FeatureConfig, *, batch: int = 256, progress: Progress | None = None
) -> np.ndarray:
    """Un-normalised MFCC ``(N, n_mfcc, T)`` of waveforms ``(N, n)``, computed in batches."""
    n = len(waves)
    first = mfcc(waves[:1], cfg, normalize_output=False)
    out = np.empty((n,) + first.shape[1:], dtype=np.float32)
    for s in range(0, n, batch):
        out[s : s + batch] = mfcc(np.asarray(waves[s : s + batch], dtype=np.float32), cfg, normalize_output=False)
        if progress:
            progress(min(n, s + batch), n)
    return out


def load_features(
    ds: Dataset,
    cfg: FeatureConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    waveforms: np.ndarray | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Un-normalised MFCC of every clip, ``(N, n_mfcc, n_frames)`` float32, cached per (dataset, config)."""
    if cfg.sample_rate != ds.sample_rate:
        raise ValueError(f"FeatureConfig rate {cfg.sample_rate} differs from dataset rate {ds.sample_rate}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(f"{ds.fingerprint()}|{cfg.key()}".encode()).hexdigest()[:24]
    path = root / "features" / f"{ds.name}-{key}.npy"
    n_samples = int(round(ds.sample_rate * ds.clip_seconds))
    n_frames = 1 + (n_samples - cfg.win_length) // cfg.hop_length
    cached = _try_load(path, (len(ds), cfg.n_mfcc, n_frames))
    if cached is not None:
        return np.asarray(cached, dtype=np.float32)
    if waveforms is None:
        waveforms = load_waveforms(ds, cache_dir=root, progress=progress)
    feats = features_from_waveforms(waveforms, cfg, progress=progress)
    atomic_save_npy(path, feats)
    return feats
