"""Training and evaluation of the finite networks (CNN-4, ResNet-18, ...) on MFCC inputs.

One trainer serves every case: full real data (waveforms, augmented on the fly, MFCC computed by the same numpy
code as the device), a coreset (features + learned soft labels) and small labelled pools for active learning.

Targets are either integer class labels ``(N,)`` or soft label vectors ``(N, C)`` (a coreset's learned labels).
Loss "ce" is cross-entropy (soft targets must be probability rows), "mse" regresses the logits onto the
targets (one-hot for integer labels), the recipe that matches kernel-ridge-regression labels.

Long runs checkpoint every epoch (atomic write) and resume from the last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgekws.features import FeatureConfig, mfcc, normalize
from edgekws.models import create_model, model_from_config
from edgekws.server.checkpoint import (CheckpointError, read_checkpoint, read_train_state, write_checkpoint,
                                        write_train_state)
from edgekws.server.runtime import pick_device

__all__ = [
    "AugmentConfig",
    "TrainConfig",
    "TrainResult",
    "train_model",
    "predict_logits",
    "evaluate",
    "save_checkpoint",
    "load_checkpoint",
    "synthetic_noise_bank",
    "pick_device",
]

Progress = Callable[[dict[str, Any]], None]


@dataclass
class AugmentConfig:
    """Augmentation. Waveform steps apply only when training on waveforms; SpecAugment applies to features."""

    enabled: bool = True
    time_shift_ms: float = 100.0
    gain_db: float = 6.0
    noise_prob: float = 0.8
    snr_db: tuple[float, float] = (5.0, 30.0)
    freq_masks: int = 2
    freq_mask_width: int = 5
    time_masks: int = 2
    time_mask_width: int = 6
    mixup: float = 0.0  # Beta(a, a) mixing of pairs of inputs and of their targets (0: off)
    # feature-domain steps (the only ones a coreset of features can take besides SpecAugment and mixup):
    frame_shift: int = 0  # roll each feature map by up to this many frames, zero-filling what enters
    feature_noise: float = 0.0  # add N(0, s^2) to the normalised features
    cutmix: float = 0.0  # probability that a batch splices a random time span from another clip of the batch
    # waveform-like steps on features, taken on each row's log-mel spectrum (see _SpectralAugmenter):
    spec_gain_db: float = 0.0  # level change of up to +-this many dB
    spec_noise_prob: float = 0.0  # share of rows that get background noise (mel power) at snr_db
    spec_warp: float = 0.0  # stretch or squeeze the mel axis by up to this fraction (vocal-tract length)
    spec_stretch: float = 0.0  # speak faster or slower: resample the time axis by up to this fraction


@dataclass
class TrainConfig:
    model: str = "cnn4"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # "onecycle" | "cosine" | "constant" | "plateau" (x0.3 when val stalls)
    loss: str = "ce"  # "ce" | "mse" (with a teacher the loss is always distillation from it)
    kd_temperature: float = 1.0  # softmax temperature of teacher and student in the distillation loss
    label_smoothing: float = 0.05
    patience: int = 0  # early stop after this many epochs without val improvement (0: off)
    min_steps_per_epoch: int = 0  # small sets (coresets) repeat data so an epoch has at least this many steps
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        aug = dict(d.pop("augment", None) or {})
        if "snr_db" in aug:
            aug["snr_db"] = tuple(aug["snr_db"])
        return cls(augment=AugmentConfig(**aug), **d)


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    seconds: float
    stopped_early: bool = False


def synthetic_noise_bank(sample_rate: int = 16000, seconds: float = 10.0, seed: int = 0) -> list[np.ndarray]:
    """White, pink and brown noise plus mains hum, each ``seconds`` long, unit RMS, float32."""
    rng = np.random.default_rng(seed)
    n = int(sample_rate * seconds)
    white = rng.standard_normal(n)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / sample_rate), 1.0)
    pink = np.fft.irfft(spec / np.sqrt(f), n)
    brown = np.fft.irfft(spec / f, n)
    t = np.arange(n) / sample_rate
    hum = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.28)) / k for k in (1, 2, 3, 5))
    hum = hum + 0.05 * white
    bank = []
    for x in (white, pink, brown, hum):
        x = x - x.mean()
        bank.append((x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32))
    return bank


class _WaveAugmenter:
    """Time shift, gain and background-noise mixing on a batch of waveforms (numpy, seeded)."""

    def __init__(self, aug: AugmentConfig, sample_rate: int, noise: list[np.ndarray], rng: np.random.Generator):
        self.aug, self.sr, self.rng = aug, sample_rate, rng
        self.noise = [n.astype(np.float32) for n in noise if len(n) > 0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        a, rng = self.aug, self.rng
        b, n = x.shape
        out = np.array(x, dtype=np.float32, copy=True)
        max_shift = int(self.sr * a.time_shift_ms / 1000.0)
        if max_shift > 0:
            shifts = rng.integers(-max_shift, max_shift + 1, size=b)
            for i, s in enumerate(shifts):
                if s > 0:
                    out[i, s:] = out[i, :-s].copy()
                    out[i, :s] = 0.0
                elif s < 0:
                    out[i, :s] = out[i, -s:].copy()
                    out[i, s:] = 0.0
        if a.gain_db > 0:
            out *= (10.0 ** (rng.uniform(-a.gain_db, a.gain_db, size=(b, 1)) / 20.0)).astype(np.float32)
        if self.noise and a.noise_prob > 0:
            rms = np.sqrt(np.mean(out**2, axis=1) + 1e-10)
            for i in np.flatnonzero(rng.random(b) < a.noise_prob):
                src = self.noise[int(rng.integers(len(self.noise)))]
                if len(src) >= n:
                    start = int(rng.integers(0, len(src) - n + 1))
                    seg = src[start : start + n]
                else:
                    seg = np.resize(src, n)
                seg_rms = float(np.sqrt(np.mean(seg**2)) + 1e-10)
                snr = rng.uniform(*a.snr_db)
                out[i] += seg * (rms[i] / seg_rms) * (10.0 ** (-snr / 20.0))
        return out


def _spec_augment(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero random coefficient bands and time spans of (B, H, W) features (in place on a copy)."""
    if aug.freq_masks == 0 and aug.time_masks == 0:
        return x
    x = x.clone()
    b, h, w = x.shape
    for masks, width, size, dim in ((aug.freq_masks, aug.freq_mask_width, h, 1), (aug.time_masks, aug.time_mask_width, w, 2)):
        if masks <= 0 or width <= 0:
            continue
        for _ in range(masks):
            widths = torch.randint(0, width + 1, (b,), generator=gen)
            starts = (torch.rand(b, generator=gen) * (size - widths).clamp(min=1)).long()
            idx = torch.arange(size).unsqueeze(0)
            m = (idx >= starts.unsqueeze(1)) & (idx < (starts + widths).unsqueeze(1))
            if dim == 1:
                x.masked_fill_(m.unsqueeze(2), 0.0)
            else:
                x.masked_fill_(m.unsqueeze(1), 0.0)
    return x


class _SpectralAugmenter:
    """What waveform augmentation does to a clip, done on its normalised MFCC ``(B, n_mfcc, T)``.

    A coreset holds features, not audio, so time shift, gain, background noise, speaking rate and vocal-tract
    length cannot be applied to waveforms. They can be applied to the log-mel spectrum the MFCC came from: undo
    the normalisation, invert the orthonormal DCT (exact when ``n_mfcc == n_mels``; otherwise the cepstrally
    smoothed spectrum), then per row

    * add a gain of ``U(-g, g)`` dB,
    * warp the mel axis by a factor in ``[1 - w, 1 + w]`` (formants move as with another speaker),
    * resample the time axis by a factor in ``[1 - s, 1 + s]`` about the clip's centre (speaking rate), filling
      frames that enter with the row's quietest level,
    * add background noise in the power domain: mel power frames of the noise recordings at an SNR drawn from
      ``snr_db`` relative to the row's mean power,

    and go back through the DCT and the normalisation. All draws come from the trainer's seeded generator.
    """

    def __init__(self, feature_cfg: FeatureConfig, aug: AugmentConfig, noise: list[np.ndarray], gen: torch.Generator):
        from edgekws.features import dct_matrix, mel_filterbank, power_frames

        if feature_cfg.normalization == "global" and not feature_cfg.is_fitted:
            raise ValueError("spectral augmentation needs fitted normalisation statistics")
        self.cfg, self.aug, self.gen = feature_cfg, aug, gen
        self.dct = torch.from_numpy(np.array(dct_matrix(feature_cfg.n_mels, feature_cfg.n_mfcc), dtype=np.float32))
        self.noise_mel: torch.Tensor | None = None
        if aug.spec_noise_prob > 0 and noise:
            fb = mel_filterbank(feature_cfg.sample_rate, feature_cfg.n_fft, feature_cfg.n_mels, feature_cfg.fmin,
                                feature_cfg.fmax).astype(np.float32)
            banks = []
            for rec in noise:
                rec = np.asarray(rec, dtype=np.float32)[: feature_cfg.sample_rate * 60]  # a minute of each is plenty
                if len(rec) < feature_cfg.clip_samples:
                    continue
                frames = _frames_of(rec, feature_cfg)
                mel = power_frames(frames, feature_cfg) @ fb.T  # (n_frames, n_mels)
                mel = mel / (mel.mean() + 1e-20)  # unit mean power: the SNR sets the level
                banks.append(torch.from_numpy(np.ascontiguousarray(mel.T, dtype=np.float32)))
            self.noise_mel = banks or None

    def to_logmel(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised MFCC ``(B, n_mfcc, T)`` -> log-mel spectra in dB ``(B, n_mels, T)``."""
        c = self.cfg
        if c.normalization == "global":
            x = x * torch.tensor(c.std, dtype=x.dtype)[:, None] + torch.tensor(c.mean, dtype=x.dtype)[:, None]
        return torch.einsum("km,bkt->bmt", self.dct, x)

    def from_logmel(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel spectra in dB ``(B, n_mels, T)`` -> normalised MFCC ``(B, n_mfcc, T)``."""
        c = self.cfg
        x = torch.einsum("km,bmt->bkt", self.dct, logmel)
        if c.normalization == "global":
            x = (x - torch.tensor(c.mean, dtype=x.dtype)[:, None]) / torch.tensor(c.std, dtype=x.dtype)[:, None]
        elif c.normalization == "utterance":
            x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5)
        return x

    @staticmethod
    def resample(logmel: torch.Tensor, factors: torch.Tensor, axis: str) -> torch.Tensor:
        """Read each row's spectrum at ``factor`` times its positions (linear interpolation).

        ``axis="time"``: about the clip's centre; frames read from outside the clip get the row's quietest level
        (a factor above 1 makes the sound shorter, as faster speech). ``axis="mel"``: from the bottom band;
        positions above the top band read the top band (a factor above 1 moves energy down the mel scale, as
        a longer vocal tract).
        """
        b, n_mel, n_t = logmel.shape
        dim = 2 if axis == "time" else 1
        size = logmel.shape[dim]
        centre = (size - 1) / 2.0 if axis == "time" else 0.0
        pos = centre + (torch.arange(size, dtype=logmel.dtype)[None, :] - centre) * factors.to(logmel.dtype)[:, None]
        lo = pos.floor().clamp(0, size - 1)
        frac = (pos - lo).clamp(0, 1)
        hi = (lo + 1).clamp(max=size - 1)
        if axis == "time":
            idx_lo = lo.long()[:, None, :].expand(b, n_mel, n_t)
            idx_hi = hi.long()[:, None, :].expand(b, n_mel, n_t)
            out = torch.gather(logmel, 2, idx_lo) * (1 - frac[:, None, :]) + torch.gather(logmel, 2, idx_hi) * frac[:, None, :]
            inside = ((pos >= 0) & (pos <= size - 1)).to(logmel.dtype)[:, None, :]
            floor = logmel.amin(dim=(1, 2), keepdim=True)
            return out * inside + floor * (1 - inside)
        idx_lo = lo.long()[:, :, None].expand(b, n_mel, n_t)
        idx_hi = hi.long()[:, :, None].expand(b, n_mel, n_t)
        return torch.gather(logmel, 1, idx_lo) * (1 - frac[:, :, None]) + torch.gather(logmel, 1, idx_hi) * frac[:, :, None]

    def add_noise(self, logmel: torch.Tensor, noise_power: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
        """Add mel power spectra ``noise_power`` ``(B, n_mels, T)`` (unit mean) at ``snr_db`` ``(B,)`` relative to
        each row's mean power; in dB in and out."""
        power = torch.pow(10.0, logmel.double() / 10.0)
        scale = power.mean(dim=(1, 2)) * torch.pow(10.0, -snr_db.double() / 10.0)
        power = power + noise_power.double() * scale[:, None, None]
        return (10.0 * torch.log10(power.clamp_min(self.cfg.amin))).to(logmel.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.aug, self.gen
        b = x.shape[0]
        lm = self.to_logmel(x.float())
        if a.spec_warp > 0:
            lm = self.resample(lm, 1.0 + a.spec_warp * (2 * torch.rand(b, generator=g) - 1), "mel")
        if a.spec_stretch > 0:
            lm = self.resample(lm, 1.0 + a.spec_stretch * (2 * torch.rand(b, generator=g) - 1), "time")
        if a.spec_gain_db > 0:
            lm = lm + (a.spec_gain_db * (2 * torch.rand(b, generator=g) - 1))[:, None, None]
        if self.noise_mel is not None and a.spec_noise_prob > 0:
            rows = torch.nonzero(torch.rand(b, generator=g) < a.spec_noise_prob).flatten()
            if len(rows):
                n_t = lm.shape[2]
                segs = []
                for _ in range(len(rows)):
                    bank = self.noise_mel[int(torch.randint(len(self.noise_mel), (1,), generator=g))]
                    start = int(torch.randint(0, bank.shape[1] - n_t + 1, (1,), generator=g))
                    segs.append(bank[:, start : start + n_t])
                lo, hi = a.snr_db
                snr = lo + (hi - lo) * torch.rand(len(rows), generator=g, dtype=torch.float64)
                lm = lm.clone()
                lm[rows] = self.add_noise(lm[rows], torch.stack(segs), snr)
        return self.from_logmel(lm).to(x.dtype)

    @property
    def active(self) -> bool:
        a = self.aug
        return a.spec_gain_db > 0 or a.spec_warp > 0 or a.spec_stretch > 0 or (
            a.spec_noise_prob > 0 and self.noise_mel is not None)


def _frames_of(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Analysis frames ``(n_frames, win_length)`` of one recording (the features' framing)."""
    n = 1 + (len(y) - cfg.win_length) // cfg.hop_length
    idx = np.arange(cfg.win_length)[None, :] + cfg.hop_length * np.arange(n)[:, None]
    return y[idx]


def _shift_frames(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each (H, W) map of a (B, H, W) batch by its own whole number of frames in [-max_shift, max_shift]."""
    b, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen)
    src = torch.arange(w).unsqueeze(0) - shifts.unsqueeze(1)  # (B, W): which input frame lands at each output frame
    valid = ((src >= 0) & (src < w)).to(x.dtype).unsqueeze(1)
    return torch.gather(x, 2, src.clamp(0, w - 1).unsqueeze(1).expand(b, h, w)) * valid


def _cutmix_frames(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Replace one random span of frames (1/4 to 1/2 of the clip) of every clip by the same span of a partner.

    Returns the mixed batch, the partner of each row and the share of frames each row kept.
    """
    b, _, w = x.shape
    perm = torch.randperm(b, generator=gen)
    width = int(torch.randint(max(1, w // 4), max(2, w // 2 + 1), (1,), generator=gen))
    start = int(torch.randint(0, w - width + 1, (1,), generator=gen))
    out = x.clone()
    out[:, :, start : start + width] = x[perm, :, start : start + width]
    return out, perm, 1.0 - width / w


def _kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton distillation: T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the batch."""
    t = float(temperature)
    target = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(F.log_softmax(logits.float() / t, dim=1), target, reduction="batchmean") * (t * t)


def _targets(y: np.ndarray, n_classes: int) -> tuple[np.ndarray, bool]:
    y = np.asarray(y)
    if y.ndim == 1:
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"labels must lie in 0..{n_classes - 1}")
        return y.astype(np.int64), False
    if y.ndim != 2 or y.shape[1] != n_classes:
        raise ValueError(f"soft targets must be (N, {n_classes}), got {y.shape}")
    return y.astype(np.float32), True


def _mixed_loss(logits: torch.Tensor, target: torch.Tensor, mixes: list[tuple[torch.Tensor, float]], soft: bool,
                cfg: TrainConfig) -> torch.Tensor:
    """The loss against targets mixed like the inputs were (cutmix, then mixup), for hard and soft labels."""
    if not mixes:
        return _loss(logits, target, soft, cfg)
    c = logits.shape[1]
    t = target.float() if soft else F.one_hot(target, c).float()
    if cfg.loss == "ce" and not soft and cfg.label_smoothing > 0:
        t = t * (1.0 - cfg.label_smoothing) + cfg.label_smoothing / c
    for perm, keep in mixes:
        t = keep * t + (1.0 - keep) * t[perm.to(t.device)]
    if cfg.loss == "mse":
        return F.mse_loss(logits, t, reduction="sum") / logits.shape[0]
    if cfg.loss == "ce":
        return -(t * F.log_softmax(logits, dim=1)).sum(1).mean()
    raise ValueError(f"unknown loss {cfg.loss!r}; use 'ce' or 'mse'")


def _loss(logits: torch.Tensor, target: torch.Tensor, soft: bool, cfg: TrainConfig) -> torch.Tensor:
    if cfg.loss == "mse":
        tgt = target if soft else F.one_hot(target, logits.shape[1]).float()
        return F.mse_loss(logits, tgt, reduction="sum") / logits.shape[0]
    if cfg.loss == "ce":
        return F.cross_entropy(logits, target, label_smoothing=0.0 if soft else cfg.label_smoothing)
    raise ValueError(f"unknown loss {cfg.loss!r}; use 'ce' or 'mse'")


@torch.no_grad()
def predict_logits(model: torch.nn.Module, feats: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits ``(N, C)`` of normalised features ``(N, H, W)``, eval mode."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    for s in range(0, len(feats), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(feats[s : s + batch_size], dtype=np.float32)).to(dev)
        outs.append(model(xb).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


def evaluate(model: torch.nn.Module, feats: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> dict[str, Any]:
    """Accuracy, macro-recall and the confusion matrix on normalised features with integer labels."""
    logits = predict_logits(model, feats)
    pred = logits.argmax(1)
    labels = np.asarray(labels)
    c = n_classes or logits.shape[1]
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (labels, pred), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(conf) / conf.sum(1)
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "macro_recall": float(np.nanmean(recall)) if len(labels) else float("nan"),
        "n": int(len(labels)),
        "confusion": conf.tolist(),
    }


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, feature_cfg: FeatureConfig,
                    class_names: list[str] | tuple[str, ...], metrics: dict[str, Any] | None = None,
                    train_cfg: TrainConfig | None = None) -> None:
    """A self-contained model file: architecture config, weights, FeatureConfig, class names, metrics, checksum."""
    write_checkpoint(
        {
            "format": "edgekws-model",
            "version": 2,
            "model_config": model.config,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "feature_config": feature_cfg.to_dict(),
            "class_names": list(class_names),
            "metrics": metrics or {},
            "train_config": train_cfg.to_dict() if train_cfg else None,
        },
        Path(path),
    )


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, FeatureConfig, list[str], dict]:
    """Rebuild a model saved by :func:`save_checkpoint`; returns (model in eval mode, FeatureConfig, classes, blob).

    The file is read as data only (tensors and plain values; nothing in it can run code) and its checksum is
    verified; version-1 files, written before checkpoints carried one, are read without it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: (:class:`CheckpointError`) damaged, refused, not an edgekws model, or weights that do not fit
            the model it describes; one line naming the file.
    """
    blob = read_checkpoint(path, what="checkpoint", require_checksum=lambda b: b.get("version") != 1)
    if blob.get("format") != "edgekws-model":
        raise CheckpointError(f"{path}: not an edgekws model checkpoint")
    version = blob.get("version")
    if not isinstance(version, int) or version > 2:
        raise CheckpointError(f"{path}: model checkpoint version {version!r} is newer than this edgekws reads (2)")
    try:
        model = model_from_config(blob["model_config"])
        model.load_state_dict(blob["state_dict"])
        fcfg = FeatureConfig.from_dict(blob["feature_config"])
        classes = list(blob["class_names"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: invalid model checkpoint ({exc.__class__.__name__}: "
                              f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from None
    model.to(device).eval()
    return model, fcfg, classes, blob


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15,
                                                   div_factor=20.0, final_div_factor=200.0)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.LambdaLR(opt, _PlateauFactor())
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


class _PlateauFactor:
    """Learning-rate factor of the "plateau" schedule: cut by ``PLATEAU_CUT`` whenever validation stalls.

    An object rather than a lambda so that the scheduler's state (and so a resumed run) keeps the factor.
    """

    def __init__(self) -> None:
        self.factor = 1.0

    def __call__(self, step: int) -> float:
        return self.factor


PLATEAU_CUT = 0.3


def _plateau_wait(cfg: TrainConfig) -> int:
    """Epochs without a better validation accuracy before the "plateau" schedule cuts the learning rate."""
    return max(2, cfg.patience // 3) if cfg.patience else 10


def train_model(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    feature_cfg: FeatureConfig,
    n_classes: int,
    cfg: TrainConfig = TrainConfig(),
    *,
    inputs: str = "waveform",
    noise: list[np.ndarray] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    teacher: torch.nn.Module | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``cfg.model`` and return the weights of the best validation epoch.

    Args:
        x_train: waveforms ``(N, n_samples)`` when ``inputs == "waveform"`` (augmented, then MFCC'd per batch),
            or normalised features ``(N, n_mfcc, T)`` when ``inputs == "features"``.
        y_train: integer labels ``(N,)`` or soft targets ``(N, C)``.
        x_val, y_val: normalised validation features ``(M, n_mfcc, T)`` and integer labels; None: no early stop
            and the final weights are returned.
        feature_cfg: fitted FeatureConfig (normalisation statistics included).
        noise: background-noise recordings for mixing (default: :func:`synthetic_noise_bank`).
        checkpoint_dir: write ``last.pt`` every epoch; with ``resume`` continue from it.
        teacher: a trained net on the same features; when given, every augmented (shifted, masked, mixed) view is
            labelled by it on the fly and the student learns by distillation at ``cfg.kd_temperature``
            (``y_train`` then only sizes the set). The teacher stays frozen and in eval mode.
        progress: receives ``{"event": "epoch", ...}`` dicts (and ``"step"`` within epochs).
    """
    if inputs not in ("waveform", "features"):
        raise ValueError("inputs must be 'waveform' or 'features'")
    if len(x_train) == 0:
        raise ValueError("empty training set")
    if len(x_train) != len(y_train):
        raise ValueError(f"{len(x_train)} inputs but {len(y_train)} targets")
    if inputs == "waveform" and not feature_cfg.is_fitted:
        raise ValueError("FeatureConfig needs fitted normalisation statistics before training")
    y_train, soft = _targets(y_train, n_classes)
    if soft and cfg.loss == "ce" and (np.any(y_train < -1e-6) or not np.allclose(y_train.sum(1), 1.0, atol=1e-3)):
        raise ValueError("cross-entropy on soft targets needs probability rows; use loss='mse' for regression labels")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    # channels-last convolutions and pooling run ~1.4x faster on CPU (training) and ~2x (evaluation); the
    # returned nets are put back into the default layout
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = create_model(cfg.model, n_classes, feature_cfg.shape, **cfg.model_kwargs).to(device, memory_format=layout)
    if teacher is not None:
        teacher = teacher.to(device, memory_format=layout).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if not cfg.kd_temperature > 0:
            raise ValueError("kd_temperature must be positive")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(x_train)
    bs = min(cfg.batch_size, n)
    steps = max(math.ceil(n / bs), cfg.min_steps_per_epoch)
    sched = _make_scheduler(opt, cfg, steps)
    aug = cfg.augment
    noise_bank = noise if noise is not None else synthetic_noise_bank(feature_cfg.sample_rate)
    wave_aug = _WaveAugmenter(aug, feature_cfg.sample_rate, noise_bank, rng) if inputs == "waveform" else None
    spectral = aug.spec_gain_db > 0 or aug.spec_warp > 0 or aug.spec_stretch > 0 or aug.spec_noise_prob > 0
    spec_aug = (_SpectralAugmenter(feature_cfg, aug, noise_bank, gen)
                if inputs == "features" and aug.enabled and spectral else None)
    if spec_aug is not None and not spec_aug.active:
        spec_aug = None

    history: list[dict[str, float]] = []
    best_state, best_acc, best_epoch, start_epoch, bad_epochs = None, -1.0, -1, 0, 0
    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    run = {"training_clips": n, "classes": n_classes, "inputs": inputs, "input_shape": list(feature_cfg.shape)}
    if resume and ckpt_path is not None and ckpt_path.is_file():
        st = read_train_state(ckpt_path, cfg.to_dict(), run)  # same settings and data, checksum verified
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        history, best_acc, best_epoch = st["history"], st["best_acc"], st["best_epoch"]
        best_state, bad_epochs, start_epoch = st["best_state"], st["bad_epochs"], st["epoch"] + 1
        rng.bit_generator.state = st["np_rng"]
        gen.set_state(st["torch_gen"])
        torch.set_rng_state(st["torch_rng"])

    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)  # elapsed time survives a resume
    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(steps * bs / n))])[: steps * bs]
        total, count = 0.0, 0
        for step in range(steps):
            idx = np.sort(order[step * bs : (step + 1) * bs])
            if inputs == "waveform":
                w = np.asarray(x_train[idx], dtype=np.float32)
                if aug.enabled:
                    w = wave_aug(w)
                xb = normalize(mfcc(w, feature_cfg, normalize_output=False), feature_cfg)
            else:
                xb = np.asarray(x_train[idx], dtype=np.float32)
            xt = torch.from_numpy(np.ascontiguousarray(xb))
            yt = torch.from_numpy(y_train[idx]).to(device)
            mixes: list[tuple[torch.Tensor, float]] = []  # (partner rows, share kept) of each mixing step
            if aug.enabled:
                if spec_aug is not None:
                    xt = spec_aug(xt)
                if aug.frame_shift > 0:
                    xt = _shift_frames(xt, aug.frame_shift, gen)
                if aug.feature_noise > 0:
                    xt = xt + aug.feature_noise * torch.randn(xt.shape, generator=gen)
                if aug.cutmix > 0 and len(idx) > 1 and float(torch.rand(1, generator=gen)) < aug.cutmix:
                    xt, perm, keep = _cutmix_frames(xt, gen)
                    mixes.append((perm, keep))
                xt = _spec_augment(xt, aug, gen)
            xt = xt.to(device)
            if aug.enabled and aug.mixup > 0 and len(idx) > 1:
                lam = float(rng.beta(aug.mixup, aug.mixup))
                perm = torch.from_numpy(rng.permutation(len(idx)))
                xt = lam * xt + (1.0 - lam) * xt[perm.to(device)]
                mixes.append((perm, lam))
            logits = model(xt)
            if teacher is not None:
                # the teacher labels exactly the view the student sees, whatever augmentation and mixing made it
                with torch.no_grad():
                    t_logits = teacher(xt)
                loss = _kd_loss(logits, t_logits, cfg.kd_temperature)
            else:
                loss = _mixed_loss(logits, yt, mixes, soft, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            if progress:
                progress({"event": "step", "epoch": epoch, "step": step + 1, "steps": steps, "loss": float(loss.detach())})
        rec: dict[str, float] = {"epoch": epoch, "train_loss": total / count, "lr": float(sched.get_last_lr()[0]),
                                 "seconds": time.perf_counter() - t0}
        if x_val is not None and y_val is not None and len(x_val):
            ev = evaluate(model, x_val, y_val, n_classes)
            rec["val_accuracy"] = ev["accuracy"]
            if ev["accuracy"] > best_acc:
                best_acc, best_epoch, bad_epochs = ev["accuracy"], epoch, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                bad_epochs += 1
                if cfg.schedule == "plateau" and bad_epochs % _plateau_wait(cfg) == 0:
                    sched.lr_lambdas[0].factor *= PLATEAU_CUT
                    for group, base in zip(opt.param_groups, sched.base_lrs):
                        group["lr"] = base * sched.lr_lambdas[0].factor
        history.append(rec)
        if ckpt_path is not None:
            write_train_state(
                ckpt_path,
                {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                 "history": history, "best_acc": best_acc, "best_epoch": best_epoch, "best_state": best_state,
                 "bad_epochs": bad_epochs, "np_rng": rng.bit_generator.state, "torch_gen": gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "config": cfg.to_dict()},
                run,
            )
        if progress:
            progress({"event": "epoch", "epochs": cfg.epochs, **rec})
        if cfg.patience and bad_epochs >= cfg.patience:
            stopped = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history) - 1
    model.to(memory_format=torch.contiguous_format).eval()
    if teacher is not None:
        teacher.to(memory_format=torch.contiguous_format)
    return TrainResult(model, history, best_epoch, best_acc, time.perf_counter() - t0, stopped)
