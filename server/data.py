"""Turn a dataset into what training and distillation consume: waveforms, normalised features, splits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgekws.audio import AudioError, load_audio
from edgekws.datasets import Dataset, Split, split_indices
from edgekws.datasets.cache import load_features, load_waveforms
from edgekws.features import FeatureConfig, fit_normalization, normalize
from edgekws.server.train import synthetic_noise_bank

__all__ = ["Prepared", "prepare", "noise_bank_for", "split_by_group_hash"]


@dataclass
class Prepared:
    """A dataset ready for training.

    ``waves`` (N, n_samples) float32; ``feats`` (N, n_mfcc, T) normalised with ``feature_cfg`` (fitted on the
    training split only); ``labels`` (N,); ``split`` train/val/test indices.
    """

    dataset: Dataset
    feature_cfg: FeatureConfig
    waves: np.ndarray
    feats: np.ndarray
    labels: np.ndarray
    split: Split
    noise: list[np.ndarray]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.dataset.class_names)

    @property
    def n_classes(self) -> int:
        return len(self.dataset.class_names)

    def subset(self, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(waves, feats, labels) of "train", "val" or "test"."""
        idx = getattr(self.split, part)
        return self.waves[idx], self.feats[idx], self.labels[idx]


def split_by_group_hash(ds: Dataset, val: float = 0.15, test: float = 0.15) -> Dataset:
    """A copy of ``ds`` with train/val/test folds drawn by a stable hash of each clip's group (speaker, recording).

    For a development subset that holds a single fold (e.g. one official UrbanSound8K fold): the split never cuts
    a group and does not depend on the order or number of clips.
    """
    import dataclasses

    from edgekws.datasets.base import stable_hash_fraction

    if not (val > 0 and test > 0 and val + test < 1):
        raise ValueError("need val, test > 0 and val + test < 1")
    names = []
    for g in ds.groups:
        r = stable_hash_fraction(str(g), salt="dev-split")
        names.append("test" if r < test else "val" if r < test + val else "train")
    return dataclasses.replace(ds, folds=np.asarray(names))


def noise_bank_for(ds: Dataset, sample_rate: int) -> list[np.ndarray]:
    """Background recordings the dataset ships (Speech Commands' ``_background_noise_``) plus synthetic noise."""
    bank = []
    for path in getattr(ds, "meta", {}).get("background_noise", []):
        try:
            bank.append(load_audio(path, sample_rate=sample_rate))
        except AudioError:
            continue
    return bank + synthetic_noise_bank(sample_rate)


def prepare(
    ds: Dataset,
    feature_cfg: FeatureConfig,
    *,
    test_fold: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Prepared:
    """Decode (cached), compute MFCC (cached), split, and fit normalisation on the training split."""
    if feature_cfg.sample_rate != ds.sample_rate:
        raise ValueError(f"features expect {feature_cfg.sample_rate} Hz, dataset is {ds.sample_rate} Hz")
    if abs(feature_cfg.clip_seconds - ds.clip_seconds) > 1e-9:
        feature_cfg = feature_cfg.replace(clip_seconds=ds.clip_seconds)
    waves = load_waveforms(ds, cache_dir=cache_dir, progress=(lambda d, t: progress("decode", d, t)) if progress else None)
    raw = load_features(ds, feature_cfg, cache_dir=cache_dir, waveforms=waves,
                        progress=(lambda d, t: progress("mfcc", d, t)) if progress else None)
    split = split_indices(ds, test_fold=test_fold)
    if len(split.train) == 0:
        raise ValueError(f"{ds.name}: the training split is empty")
    if feature_cfg.normalization == "global":
        feature_cfg = fit_normalization(raw[split.train], feature_cfg)
    feats = normalize(raw, feature_cfg)
    return Prepared(ds, feature_cfg, waves, feats, np.asarray(ds.labels), split, noise_bank_for(ds, ds.sample_rate))
