"""The speech-embedding backbone on the server: embed a dataset with the frozen front end, train a small head on the
embedding sequences, keep a coreset in the embedding space, write a checkpoint the exporter turns into a bundle.

The front end (:mod:`edgekws.speech_embedding`) is frozen, so the only trained part is a
:class:`~edgekws.models.sehead.SpeechEmbeddingHead` over ``(1, 96, 9)`` embedding sequences. Training data are the
dataset's clips, embedded once (cached per dataset fingerprint and front-end configuration), plus
``augment_copies`` re-recorded copies of each training clip (time shift, gain, background noise, speed), each
embedded too, plus (synthetic keywords, ``streams``) the windows of synthetic streams drawn afresh every epoch, after
which the classifier's biases are corrected back to the clips' class prior; the detector's temperature and threshold
are then fitted on held-out synthetic streams (:mod:`edgekws.server.speech_streams`). The coreset that ships for on-device fine-tuning is ``per_class`` embedding sequences per class,
chosen by k-medoids in the head's penultimate space (representative members spread over each class), with the
trained head's softened posteriors as soft labels (a teacher's labels carry most of what a small set can hold).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from edgekws.models import create_model
from edgekws.models.sehead import with_pooled_embedding
from edgekws.server.rfad import Coreset
from edgekws.server.speech_streams import (
    StreamConfig,
    calibrate_detector,
    training_windows,
    validation_streams,
)

from edgekws.datasets.base import Dataset, split_indices
from edgekws.datasets.cache import atomic_save_npy, default_cache_dir, load_waveforms
from edgekws.features import FeatureConfig
from edgekws.speech_embedding import FrontendConfig, SpeechEmbedder

__all__ = [
    "EmbeddingCoreset",
    "SelectionConfig",
    "SpeechHeadConfig",
    "augment_waveforms",
    "embed_clips",
    "select_coreset",
    "train_speech_head",
]

Progress = Callable[[dict[str, Any]], None]
MODEL_NAME = "se-head"


@dataclass
class SpeechHeadConfig:
    """Head architecture, training recipe and the audio augmentation applied before embedding."""

    channels: int = 96
    blocks: int = 0  # no temporal convolutions (they fitted the synthetic voices better, real ones worse: README)
    kernel: int = 3
    dropout: float = 0.25  # before the classifier
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-3
    label_smoothing: float = 0.1
    shift: int = 1  # shift each sequence by up to this many embeddings (80 ms each), zero-filled
    feature_noise: float = 0.0
    augment_copies: int = 0  # re-recorded copies of each training clip, embedded as extra data (no gain measured)
    augment_seed: int = 0
    seed: int = 0
    threads: int | None = None
    teacher_temperature: float = 2.0  # softmax temperature of the coreset's soft labels
    pool: str = "flatten"  # every embedding in time order ("meanmax": their mean and max; see SpeechEmbeddingHead)
    hidden: int = 128  # a ReLU layer of this width before the classifier (0: none)
    input_dropout: float = 0.5  # heavy: real voices are far from the synthetic ones
    pooled_embedding: bool = True  # ship the pooled input embeddings in the embedding too, for device fine-tuning

    def model_kwargs(self) -> dict[str, Any]:
        kw = {"channels": self.channels, "blocks": self.blocks, "kernel": self.kernel, "dropout": self.dropout}
        if self.pool != "meanmax" or self.hidden or self.input_dropout:
            kw.update(pool=self.pool, hidden=self.hidden, input_dropout=self.input_dropout)
        return kw

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SelectionConfig:
    """How the embedding-space coreset was made (stored in the coreset file)."""

    per_class: int = 50
    method: str = "kmedoids"
    teacher_temperature: float = 2.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Embedding a dataset ---------------------------------------------------------------------------------------


def _cache_path(key: str) -> Path:
    return default_cache_dir() / "embeddings" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"


def embed_clips(waves: np.ndarray, fcfg: FrontendConfig, *, key: str | None = None,
                embedder: SpeechEmbedder | None = None, threads: int = 1,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Front-end inputs ``(N, 96, n_windows)`` of clips ``(N, samples)``, cached under ``key`` when given."""
    path = _cache_path(json.dumps([key, fcfg.to_dict(), list(waves.shape)], sort_keys=True)) if key else None
    if path is not None and path.is_file():
        try:
            arr = np.load(path)
            if arr.shape == (len(waves), *fcfg.shape):
                if progress:
                    progress(len(waves), len(waves))
                return arr
        except (OSError, ValueError, EOFError):
            pass  # damaged entry: recompute
    embedder = embedder or SpeechEmbedder(threads=threads)
    step = max(1, len(waves) // 50)
    out = embedder.clip_features(waves, fcfg, progress=(lambda d, t: progress(d, t) if d % step == 0 or d == t
                                                        else None) if progress else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(path, out)
    return out


def _noise_sources(waves: np.ndarray, sample_rate: int, rng: np.random.Generator) -> list[np.ndarray]:
    from edgekws.server.train import synthetic_noise_bank

    return synthetic_noise_bank(sample_rate, seconds=5.0, seed=int(rng.integers(2**31)))


def augment_waveforms(waves: np.ndarray, sample_rate: int, seed: int,
                      noise: list[np.ndarray] | None = None) -> np.ndarray:
    """One re-recorded copy of each clip: speed x0.9-1.1 (resampled), time shift ±150 ms, gain ±8 dB, and with
    probability 0.7 background noise (synthetic noise or another clip of the batch, quieted: babble) at 0-25 dB SNR.
    Deterministic for a seed."""
    import soxr

    rng = np.random.default_rng(seed)
    n = waves.shape[1]
    noise = noise if noise is not None else _noise_sources(waves, sample_rate, rng)
    out = np.zeros_like(waves, dtype=np.float32)
    for i, y in enumerate(np.asarray(waves, dtype=np.float32)):
        rate = float(rng.uniform(0.9, 1.1))
        z = soxr.resample(y, sample_rate * rate, sample_rate).astype(np.float32) if abs(rate - 1) > 1e-3 else y
        if len(z) >= n:
            s = (len(z) - n) // 2
            z = z[s: s + n]
        else:
            z = np.pad(z, ((n - len(z)) // 2, n - len(z) - (n - len(z)) // 2))
        shift = int(rng.integers(-int(0.15 * sample_rate), int(0.15 * sample_rate) + 1))
        z = np.roll(z, shift)
        if shift > 0:
            z[:shift] = 0.0
        elif shift < 0:
            z[shift:] = 0.0
        z = z * np.float32(10 ** (rng.uniform(-8, 8) / 20))
        if rng.random() < 0.7:
            if rng.random() < 0.4:
                other = np.asarray(waves[int(rng.integers(len(waves)))], dtype=np.float32)
                seg = np.roll(other, int(rng.integers(n)))
            else:
                src = noise[int(rng.integers(len(noise)))]
                start = int(rng.integers(0, max(1, len(src) - n)))
                seg = np.resize(src[start: start + n], n)
            rms = float(np.sqrt(np.mean(z**2)) + 1e-8)
            seg_rms = float(np.sqrt(np.mean(seg**2)) + 1e-8)
            z = z + seg * np.float32(rms / seg_rms * 10 ** (-rng.uniform(0, 25) / 20))
        peak = float(np.max(np.abs(z)))
        out[i] = z / peak * 0.99 if peak > 0.99 else z
    return out


# Training --------------------------------------------------------------------------------------------------


@dataclass
class HeadResult:
    model: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = float("nan")
    seconds: float = 0.0


def _shift(x: torch.Tensor, k: int) -> torch.Tensor:
    if k == 0:
        return x
    out = torch.zeros_like(x)
    if k > 0:
        out[..., k:] = x[..., :-k]
    else:
        out[..., :k] = x[..., -k:]
    return out


@torch.no_grad()
def head_logits(model: torch.nn.Module, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(np.ascontiguousarray(x[i: i + batch], np.float32))).numpy()
            for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


@dataclass
class WindowPool:
    """Extra training windows drawn afresh every epoch: up to ``positives`` of the keyword windows and
    ``negatives`` of those labelled ``negative_class`` (a stream has far more of those than of keywords)."""

    x: np.ndarray
    y: np.ndarray
    negative_class: int
    positives: int = 2500
    negatives: int = 5000

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        neg = np.flatnonzero(self.y == self.negative_class)
        pos = np.flatnonzero(self.y != self.negative_class)
        pos = rng.choice(pos, size=min(len(pos), self.positives), replace=False) if len(pos) else pos
        neg = rng.choice(neg, size=min(len(neg), self.negatives), replace=False) if len(neg) else neg
        return np.sort(np.concatenate([pos, neg]))

    def per_epoch(self) -> int:
        n_neg = int(np.sum(self.y == self.negative_class))
        return min(len(self.y) - n_neg, self.positives) + min(n_neg, self.negatives)


def train_speech_head(x: np.ndarray, y: np.ndarray, xv: np.ndarray | None, yv: np.ndarray | None, n_classes: int,
                      cfg: SpeechHeadConfig | None = None, progress: Progress | None = None,
                      pool: WindowPool | None = None) -> HeadResult:
    """Train a head on ``(N, 96, T)`` embedding sequences with integer labels (plus, each epoch, windows drawn
    from ``pool``); keep the best validation epoch (the last epoch without a validation set). AdamW, one-cycle
    schedule, label smoothing, random shifts."""
    cfg = cfg or SpeechHeadConfig()
    threads_before = torch.get_num_threads()
    # a head of a few thousand weights gains nothing from more threads, and on a busy CPU their synchronisation
    # costs more than the work (measured: minutes instead of seconds)
    torch.set_num_threads(int(cfg.threads or 1))
    try:
        return _train(x, y, xv, yv, n_classes, cfg, progress, pool)
    finally:
        torch.set_num_threads(threads_before)


def _train(x: np.ndarray, y: np.ndarray, xv: np.ndarray | None, yv: np.ndarray | None, n_classes: int,
           cfg: SpeechHeadConfig, progress: Progress | None, pool: WindowPool | None = None) -> HeadResult:
    t0 = time.perf_counter()
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    if x.ndim != 3 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"training inputs must be (N, D, T) with N labels, got {x.shape} and {y.shape}")
    if pool is not None and (pool.x.shape[1:] != x.shape[1:] or len(pool.x) != len(pool.y)):
        raise ValueError(f"extra windows {pool.x.shape} do not fit the training inputs {x.shape}")
    rng = np.random.default_rng(int(cfg.seed))
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator: seeded, then restored
        torch.manual_seed(int(cfg.seed))
        gen = torch.Generator().manual_seed(int(cfg.seed))
        model = create_model(MODEL_NAME, n_classes, x.shape[1:], seed=cfg.seed, **cfg.model_kwargs())
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        n_epoch = len(x) + (pool.per_epoch() if pool is not None else 0)
        per_epoch = math.ceil(n_epoch / cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * per_epoch)
        X0, Y0 = torch.from_numpy(x), torch.from_numpy(y)
        best_state, best_acc, best_epoch, history = None, -1.0, 0, []
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            X, Y = X0, Y0
            if pool is not None:
                sel = pool.draw(rng)
                X = torch.cat([X0, torch.from_numpy(np.ascontiguousarray(pool.x[sel], np.float32))])
                Y = torch.cat([Y0, torch.from_numpy(np.asarray(pool.y[sel], np.int64))])
            perm = torch.randperm(len(X), generator=gen)
            total = 0.0
            for s in range(0, len(X), cfg.batch_size):
                idx = perm[s: s + cfg.batch_size]
                xb = X[idx]
                if cfg.shift:
                    xb = _shift(xb, int(torch.randint(-cfg.shift, cfg.shift + 1, (1,), generator=gen)))
                if cfg.feature_noise:
                    xb = xb + cfg.feature_noise * torch.randn(xb.shape, generator=gen)
                loss = F.cross_entropy(model(xb), Y[idx], label_smoothing=cfg.label_smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            rec = {"epoch": epoch, "train_loss": total / len(X)}
            if xv is not None and len(xv):
                rec["val_accuracy"] = float((head_logits(model, xv).argmax(1) == np.asarray(yv)).mean())
                if rec["val_accuracy"] > best_acc:
                    best_acc, best_epoch = rec["val_accuracy"], epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append(rec)
            if progress:
                progress({"event": "epoch", "epoch": epoch, "epochs": cfg.epochs, **rec})
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = cfg.epochs
    model.eval()
    return HeadResult(model=model, history=history, best_epoch=best_epoch,
                      best_val_accuracy=best_acc if best_acc >= 0 else float("nan"), seconds=time.perf_counter() - t0)


def training_prior(y: np.ndarray, pool: WindowPool | None, n_classes: int) -> np.ndarray:
    """Expected class frequencies of one training epoch: the clips ``y`` plus what ``pool`` draws."""
    counts = np.bincount(np.asarray(y, np.int64), minlength=n_classes).astype(np.float64)
    if pool is not None:
        py = np.asarray(pool.y, np.int64)
        neg = py == pool.negative_class
        pos_counts = np.bincount(py[~neg], minlength=n_classes).astype(np.float64)
        if pos_counts.sum() > 0:
            counts += pos_counts * min(1.0, pool.positives / pos_counts.sum())
        counts[pool.negative_class] += min(int(neg.sum()), pool.negatives)
    return counts / counts.sum()


@torch.no_grad()
def correct_prior(model: torch.nn.Module, train_prior: np.ndarray, target_prior: np.ndarray) -> dict[str, Any]:
    """Shift the classifier's biases by ``log(target / train)`` per class, in place: a head trained where the
    classes occur at ``train_prior`` then scores as if they occurred at ``target_prior`` (label-shift correction).

    Stream windows are mostly non-keyword windows, so a head trained on them expects that class far more often than
    clips of single words show it, and calls too many spoken words nothing; the correction restores the clips'
    prior. A detector threshold chosen afterwards on streams absorbs it there.
    """
    p = np.asarray(train_prior, np.float64)
    q = np.asarray(target_prior, np.float64)
    shift = np.log(np.maximum(q, 1e-12) / np.maximum(p, 1e-12))
    shift -= shift.mean()
    model.classifier.bias += torch.as_tensor(shift, dtype=model.classifier.bias.dtype)
    return {"shift": [round(float(v), 4) for v in shift], "train_prior": [round(float(v), 4) for v in p],
            "target_prior": [round(float(v), 4) for v in q]}


# Coreset in the embedding space ------------------------------------------------------------------------------


class EmbeddingCoreset(Coreset):
    """A coreset of front-end embedding sequences ``x (M, 96, T)`` with soft labels ``y (M, C)``.

    Same file layout as an RFAD coreset (``x``, ``y``, ``init_labels``, JSON ``meta``), so the device reads both
    alike; ``meta`` adds ``frontend`` (the :class:`FrontendConfig`) and ``config`` is a :class:`SelectionConfig`.
    """

    frontend: FrontendConfig

    def __init__(self, x, y, class_names, feature_config, config, frontend: FrontendConfig, source_fingerprint="",
                 metrics=None, init_labels=None):
        self.frontend = frontend
        super().__init__(x=x, y=y, class_names=class_names, feature_config=feature_config, config=config,
                         source_fingerprint=source_fingerprint, metrics=metrics or {}, init_labels=init_labels)

    def __post_init__(self) -> None:
        shape, fc = self.frontend.shape, self.feature_config
        object.__setattr__(self, "feature_config", _ShapeOverride(fc, shape))
        try:
            super().__post_init__()
        finally:
            object.__setattr__(self, "feature_config", fc)

    def _meta(self) -> dict[str, Any]:
        return {**super()._meta(), "frontend": self.frontend.to_dict()}

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingCoreset:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"coreset not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x", "y", "init_labels", "meta")}
            meta = json.loads(str(arrays["meta"]))
            return cls(x=arrays["x"], y=arrays["y"], init_labels=arrays["init_labels"],
                       class_names=tuple(meta["class_names"]),
                       feature_config=FeatureConfig.from_dict(meta["feature_config"]),
                       config=SelectionConfig(**meta["config"]), frontend=FrontendConfig.from_dict(meta["frontend"]),
                       source_fingerprint=str(meta.get("source_fingerprint", "")),
                       metrics=dict(meta.get("metrics") or {}))
        except Exception as exc:  # noqa: BLE001 - zipfile, numpy, json and the checks each raise their own types
            raise ValueError(f"{path}: not a readable embedding coreset ({exc.__class__.__name__}: {exc})") from None


class _ShapeOverride:
    """A FeatureConfig stand-in whose ``shape`` is the front end's input shape (for the shared shape check)."""

    def __init__(self, fc: FeatureConfig, shape: tuple[int, int]):
        self._fc, self.shape = fc, shape

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fc, name)


def _kcenter(z: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center: start at the point nearest the mean, then repeatedly take the point farthest from the set."""
    if k >= len(z):
        return np.arange(len(z))
    first = int(np.argmin(((z - z.mean(0)) ** 2).sum(1)))
    chosen = [first]
    d = ((z - z[first]) ** 2).sum(1)
    for _ in range(k - 1):
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, ((z - z[nxt]) ** 2).sum(1))
    return np.asarray(chosen)


def _kmedoids(z: np.ndarray, k: int, iters: int = 10) -> np.ndarray:
    """``k`` representative members: k-means from a k-center start, then the member nearest each centroid (distinct
    members; k-center alone picks the outliers, which make poor rehearsal samples)."""
    if k >= len(z):
        return np.arange(len(z))
    centres = z[_kcenter(z, k)]
    for _ in range(iters):
        assign = np.argmin(((z[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        for j in range(k):
            members = z[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    d = ((z[:, None] - centres[None]) ** 2).sum(-1)
    chosen: list[int] = []
    for j in np.argsort(d.min(0)):  # centroids closest to a member pick first
        for i in np.argsort(d[:, j]):
            if int(i) not in chosen:
                chosen.append(int(i))
                break
    return np.asarray(chosen)


@torch.no_grad()
def select_coreset(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...],
                   feature_config: FeatureConfig, frontend: FrontendConfig, cfg: SelectionConfig,
                   source_fingerprint: str = "") -> EmbeddingCoreset:
    """``cfg.per_class`` sequences per class by k-medoids in the head's penultimate space, labelled with the
    head's posteriors at ``cfg.teacher_temperature``."""
    model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    z = torch.cat([model.embed(xt[i: i + 1024]) for i in range(0, len(xt), 1024)]).numpy()
    z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-8)
    idx = []
    for c in range(len(class_names)):
        members = np.flatnonzero(np.asarray(y) == c)
        if len(members):
            idx.append(members[_kmedoids(z[members], cfg.per_class)])
    sel = np.concatenate(idx)
    logits = head_logits(model, x[sel])
    soft = torch.softmax(torch.from_numpy(logits) / cfg.teacher_temperature, dim=1).numpy()
    return EmbeddingCoreset(x=x[sel], y=soft, class_names=class_names, feature_config=feature_config, config=cfg,
                            frontend=frontend, source_fingerprint=source_fingerprint,
                            init_labels=np.asarray(y)[sel],
                            metrics={"teacher_agreement": float((soft.argmax(1) == np.asarray(y)[sel]).mean())})


def dataset_embeddings(ds: Dataset, fcfg: FrontendConfig, *, threads: int = 1,
                       progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All clips of a dataset as front-end inputs ``(N, 96, T)`` (cached), and their waveforms."""
    waves = load_waveforms(ds, progress=(lambda d, t: progress({"event": "decode", "done": d, "total": t}))
                           if progress else None)
    feats = embed_clips(waves, fcfg, key=f"{ds.name}-{ds.fingerprint()}", threads=threads,
                        progress=(lambda d, t: progress({"event": "embed", "done": d, "total": t})) if progress else None)
    return feats, waves


def _stream_vocabulary(ds: Dataset) -> tuple[str, ...] | None:
    """The keywords of a synthetic dataset whose last class is the non-keyword class (streams can be made for it
    in the same voices); None for any other dataset."""
    from edgekws.datasets.synthetic import NOTHING

    recipe = (getattr(ds, "meta", {}) or {}).get("recipe") or {}
    keywords = tuple(recipe.get("keywords") or ())
    if ds.name != "synthetic" or not keywords or tuple(ds.class_names) != keywords + (NOTHING,):
        return None
    return keywords


def split_of(ds: Dataset, test_fold: str | None = None):
    return split_indices(ds, test_fold=test_fold)


# The job behind `edgekws distill --backbone speech-embedding` ------------------------------------------------


def distill_speech_job(
    ds: Dataset,
    feature_cfg: FeatureConfig,
    out_dir: str | os.PathLike,
    *,
    per_class: int = 50,
    head_cfg: SpeechHeadConfig | None = None,
    test_fold: str | None = None,
    progress: Progress | None = None,
    shipped_why: str = "",
    streams: StreamConfig | None = None,
) -> dict[str, Any]:
    """Embed the dataset with the frozen front end, train the head on the training split (plus augmented copies),
    keep the best validation epoch, choose an embedding-space coreset with the head's soft labels.

    With ``streams`` and a synthetic dataset that has the non-keyword class: the head also trains on the windows of
    synthetic training streams (:mod:`edgekws.server.speech_streams`), and its softmax temperature and detector
    threshold are fitted on synthetic validation streams (``metrics["detector"]``, shipped in the bundle).

    Writes ``model.pt`` (checkpoint; its metrics carry the ``frontend`` configuration), ``coreset.npz``
    (:class:`EmbeddingCoreset`), ``metrics.json`` and ``history.json`` into ``out_dir``.
    """
    from edgekws.server.train import evaluate, save_checkpoint

    from edgekws.fileio import atomic_write_json

    cfg = head_cfg or SpeechHeadConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    threads = int(cfg.threads or torch.get_num_threads())
    fcfg = FrontendConfig(clip_seconds=float(ds.clip_seconds))
    feats, waves = dataset_embeddings(ds, fcfg, threads=threads, progress=progress)
    labels = np.asarray(ds.labels, dtype=np.int64)
    split = split_indices(ds, test_fold=test_fold)
    if len(split.train) == 0:
        raise ValueError(f"{ds.name}: the training split is empty")
    xtr, ytr = feats[split.train], labels[split.train]
    t_embed = time.perf_counter() - t0
    aug_parts, aug_labels = [xtr], [ytr]
    for c in range(cfg.augment_copies):
        seed = cfg.augment_seed + c
        copies = augment_waveforms(waves[split.train], ds.sample_rate, seed)
        aug_parts.append(embed_clips(copies, fcfg, key=f"{ds.name}-{ds.fingerprint()}-train-{test_fold}-aug{seed}",
                                     threads=threads,
                                     progress=(lambda d, t: progress({"event": "embed augmented", "done": d,
                                                                      "total": t})) if progress else None))
        aug_labels.append(ytr)
    t_aug = time.perf_counter() - t0 - t_embed
    xv, yv = feats[split.val], labels[split.val]
    xt, yt = feats[split.test], labels[split.test]
    classes = tuple(ds.class_names)
    vocabulary = _stream_vocabulary(ds) if streams is not None else None
    stream_seed = int((getattr(ds, "meta", {}).get("recipe") or {}).get("seed", 0))
    pool = None
    t_streams = 0.0
    if vocabulary and streams.train:
        t1 = time.perf_counter()
        xs, ys = training_windows(vocabulary, streams, seed=stream_seed, n_windows=fcfg.n_windows,
                                  progress=progress)
        pool = WindowPool(xs, ys, negative_class=len(vocabulary), positives=streams.positives_per_epoch,
                          negatives=streams.negatives_per_epoch)
        t_streams += time.perf_counter() - t1
    res = train_speech_head(np.concatenate(aug_parts), np.concatenate(aug_labels), xv if len(xv) else None,
                            yv if len(yv) else None, len(classes), cfg, progress=progress, pool=pool)
    prior = None
    if pool is not None:
        clips_y = np.concatenate(aug_labels)
        target = np.bincount(clips_y, minlength=len(classes)) / len(clips_y)
        val_before = res.best_val_accuracy
        prior = correct_prior(res.model, training_prior(clips_y, pool, len(classes)), target)
        if len(xv):
            prior.update(val_accuracy_before=val_before,
                         val_accuracy=float((head_logits(res.model, xv).argmax(1) == yv).mean()))
    detector = None
    if vocabulary and streams.val:
        from edgekws.speech_embedding import locate_graphs

        t1 = time.perf_counter()
        graphs = locate_graphs()
        val = validation_streams(vocabulary, streams, graphs, fcfg.to_dict(), seed=stream_seed, progress=progress)
        detector = calibrate_detector(lambda a: head_logits(res.model, a), classes,
                                      (xv, yv) if len(xv) else None, val, vocabulary, graphs, fcfg.to_dict(),
                                      streams, progress=progress)
        t_streams += time.perf_counter() - t1
    core = select_coreset(res.model, xtr, ytr, classes, feature_cfg, fcfg,
                          SelectionConfig(per_class=per_class, teacher_temperature=cfg.teacher_temperature,
                                          seed=cfg.seed), source_fingerprint=ds.fingerprint())
    core.save(out / "coreset.npz")
    if cfg.pooled_embedding and cfg.hidden:
        # the shipped embedding also carries the pooled input embeddings (outputs unchanged): a linear head a device
        # fine-tunes on them adapts to real voices much better than on the hidden layer alone (README)
        res.model = with_pooled_embedding(res.model).eval()
    test = evaluate(res.model, xt, yt, len(classes)) if len(xt) else None
    metrics: dict[str, Any] = {
        "dataset": ds.name,
        "fingerprint": ds.fingerprint(),
        "split": {**split.sizes(), "how": getattr(ds, "meta", {}).get("split", "")},
        "class_names": list(classes),
        "model": MODEL_NAME,
        "backbone": fcfg.kind,
        "frontend": fcfg.to_dict(),
        "training_clips": {"real_or_synthetic": len(xtr), "augmented_copies": int(cfg.augment_copies)},
        "coreset": {"per_class": per_class, "size": len(core.x), "method": "k-medoids in the head's embedding",
                    "labels": f"head posteriors at T={cfg.teacher_temperature}", **core.metrics},
        "best_epoch": res.best_epoch,
        "val_accuracy": res.best_val_accuracy,
        "test": test,
        "shipped": {"net": MODEL_NAME, "backbone": fcfg.kind, "params": int(sum(p.numel() for p in
                                                                             res.model.parameters())),
                    "trained_on": f"all {len(xtr)} training clips + {cfg.augment_copies} augmented copies of each",
                    "why": shipped_why or "the speech-embedding backbone was chosen"},
        "streams": ({**streams.to_dict(), "training_windows": len(pool.y) if pool is not None else 0,
                     "keyword_windows": int(np.sum(pool.y < len(vocabulary))) if pool is not None else 0}
                    if vocabulary else None),
        "embed_seconds": t_embed,
        "stream_seconds": t_streams,
        "augment_seconds": t_aug,
        "distill_seconds": t_embed + t_aug,  # the work before training (what RFAD costs on the MFCC path)
        "train_seconds": res.seconds,
        "total_seconds": time.perf_counter() - t0,
        "head_config": cfg.to_dict(),
    }
    if detector is not None:
        metrics["detector"] = detector
    if prior is not None:
        metrics["prior_correction"] = prior
    save_checkpoint(out / "model.pt", res.model, feature_cfg, classes, metrics)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "history.json", res.history)
    return metrics
