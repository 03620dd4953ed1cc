"""MFCC features in numpy alone, shared by the server and the device.

The same code computes features for training (a batch of clips), for the coreset and on the device (a stream of
audio, frame by frame), so what a model sees on the board is exactly what it was trained on.

Pipeline (per frame): Hann-windowed frame of ``win_length`` samples, zero-padded to ``n_fft`` -> power spectrum ->
Slaney mel filterbank -> ``10 * log10(max(mel, amin))`` -> orthonormal DCT-II -> first ``n_mfcc`` coefficients.
Frames are taken without centre padding, starting at the first sample, so a stream of audio gives the same frames
as the whole clip. This equals librosa with ``center=False`` on the signal zero-padded by ``(n_fft - win_length)//2``
samples on the left (librosa frames are ``n_fft`` long with the window centred inside). Output layout is ``(..., n_mfcc, n_frames)``, librosa's.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "FeatureConfig",
    "mfcc",
    "mel_filterbank",
    "dct_matrix",
    "power_frames",
    "StreamingMFCC",
    "fit_normalization",
    "normalize",
]

FEATURE_CONFIG_VERSION = 1


@dataclass(frozen=True)
class FeatureConfig:
    """Everything needed to turn audio into model input, written into every coreset and bundle.

    ``mean``/``std`` hold per-coefficient statistics when ``normalization == "global"``; they are fitted on the
    training split (:func:`fit_normalization`) and travel with the config so the device normalises identically.
    """

    sample_rate: int = 16000
    window_ms: float = 50.0
    hop_ms: float = 20.0
    n_fft: int = 1024
    n_mels: int = 40
    n_mfcc: int = 40
    fmin: float = 20.0
    fmax: float = 7600.0
    clip_seconds: float = 1.0
    amin: float = 1e-10
    normalization: str = "global"  # "none" | "global" | "utterance"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    version: int = FEATURE_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.win_length > self.n_fft:
            raise ValueError(
                f"window of {self.window_ms} ms is {self.win_length} samples, longer than n_fft={self.n_fft}"
            )
        if self.hop_length <= 0 or self.hop_length > self.win_length:
            raise ValueError(f"hop of {self.hop_ms} ms must be positive and at most the window")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin} fmax={self.fmax}")
        if self.n_mfcc > self.n_mels:
            raise ValueError(f"n_mfcc={self.n_mfcc} exceeds n_mels={self.n_mels}")
        if self.normalization not in ("none", "global", "utterance"):
            raise ValueError(f"unknown normalization {self.normalization!r}")
        if self.clip_samples < self.win_length:
            raise ValueError("clip is shorter than one analysis window")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.n_mfcc:
                raise ValueError(f"{name} has {len(v)} entries, expected n_mfcc={self.n_mfcc}")

    # Derived sizes -----------------------------------------------------------------------------------------
    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def n_frames(self) -> int:
        """Frames in one clip of ``clip_seconds``."""
        return 1 + (self.clip_samples - self.win_length) // self.hop_length

    @property
    def shape(self) -> tuple[int, int]:
        """Model input shape (n_mfcc, n_frames) for one clip."""
        return (self.n_mfcc, self.n_frames)

    @property
    def is_fitted(self) -> bool:
        return self.normalization != "global" or (self.mean is not None and self.std is not None)

    # Serialisation -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("mean", "std"):
            if d[k] is not None:
                d[k] = [float(x) for x in d[k]]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FeatureConfig fields: {sorted(unknown)}")
        version = d.get("version", FEATURE_CONFIG_VERSION)
        if version > FEATURE_CONFIG_VERSION:
            raise ValueError(
                f"FeatureConfig version {version} is newer than this edgekws understands ({FEATURE_CONFIG_VERSION})"
            )
        d = dict(d)
        for k in ("mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(float(x) for x in d[k])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "FeatureConfig":
        return cls.from_dict(json.loads(s))

    def key(self) -> str:
        """Stable identity of the feature *extraction* (normalisation excluded), for caches."""
        d = self.to_dict()
        for k in ("normalization", "mean", "std"):
            d.pop(k)
        return json.dumps(d, sort_keys=True)

    def replace(self, **changes: Any) -> "FeatureConfig":
        return dataclasses.replace(self, **changes)


# Building blocks ---------------------------------------------------------------------------------------------


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape ``(n_mels, n_fft // 2 + 1)`` float64 (read-only)."""
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=16)
def dct_matrix(n_mels: int, n_mfcc: int) -> np.ndarray:
    """Orthonormal DCT-II rows, shape ``(n_mfcc, n_mels)`` (scipy ``dct(type=2, norm='ortho')``)."""
    n = np.arange(n_mels)
    k = np.arange(n_mfcc)[:, None]
    d = np.cos(np.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    d[0] /= math.sqrt(2.0)
    d.setflags(write=False)
    return d


@lru_cache(maxsize=16)
def _hann(win_length: int) -> np.ndarray:
    """Periodic Hann window of ``win_length`` samples, float32."""
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)).astype(np.float32)
    w.setflags(write=False)
    return w


def _frames(y: np.ndarray, size: int, hop: int) -> np.ndarray:
    """View of ``y`` (..., n) as frames (..., n_frames, size) without copying."""
    n = y.shape[-1]
    if n < size:
        raise ValueError(f"need at least {size} samples for one frame, got {n}")
    n_frames = 1 + (n - size) // hop
    shape = y.shape[:-1] + (n_frames, size)
    strides = y.strides[:-1] + (y.strides[-1] * hop, y.strides[-1])
    return np.lib.stride_tricks.as_strided(y, shape=shape, strides=strides, writeable=False)


def power_frames(frames: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Power spectra of frames (..., win_length) -> (..., n_fft // 2 + 1), float32.

    Each frame is Hann-windowed and zero-padded to ``n_fft``. Where the padding goes only changes the phase,
    so the power equals librosa's (which centres a short window inside an ``n_fft`` frame).
    """
    spec = np.fft.rfft(frames * _hann(cfg.win_length), n=cfg.n_fft, axis=-1)
    return (spec.real**2 + spec.imag**2).astype(np.float32, copy=False)


def _mfcc_from_frames(frames: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(..., n_frames, win_length) frames -> (..., n_mfcc, n_frames) un-normalised MFCC, float32."""
    power = power_frames(frames, cfg)
    mel = power @ mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax).T.astype(np.float32)
    logmel = 10.0 * np.log10(np.maximum(mel, cfg.amin))
    out = logmel @ dct_matrix(cfg.n_mels, cfg.n_mfcc).T.astype(np.float32)
    return np.swapaxes(out, -1, -2).astype(np.float32, copy=False)


def _analysis_frames(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Frames of ``win_length`` samples every ``hop_length`` (a strided view, no copy)."""
    return _frames(y, cfg.win_length, cfg.hop_length)


def mfcc(y: np.ndarray, cfg: FeatureConfig, *, normalize_output: bool = True) -> np.ndarray:
    """MFCC of one clip or a batch.

    Args:
        y: float audio at ``cfg.sample_rate``, shape ``(n,)`` or ``(batch, n)``; any length >= one window.
        cfg: the feature configuration.
        normalize_output: apply ``cfg.normalization`` (a "global" config must be fitted first).

    Returns:
        float32 array ``(n_mfcc, n_frames)`` or ``(batch, n_mfcc, n_frames)``.
    """
    y = np.ascontiguousarray(y, dtype=np.float32)
    if y.ndim not in (1, 2):
        raise ValueError(f"expected (n,) or (batch, n) audio, got shape {y.shape}")
    out = _mfcc_from_frames(_analysis_frames(y, cfg), cfg)
    return normalize(out, cfg) if normalize_output else out


def fit_normalization(features: np.ndarray, cfg: FeatureConfig) -> FeatureConfig:
    """Return ``cfg`` with per-coefficient mean/std fitted on un-normalised features ``(N, n_mfcc, T)``."""
    if features.ndim != 3 or features.shape[1] != cfg.n_mfcc:
        raise ValueError(f"expected (N, {cfg.n_mfcc}, T) features, got {features.shape}")
    f64 = features.astype(np.float64)
    mean = f64.mean(axis=(0, 2))
    std = np.sqrt(np.maximum(f64.var(axis=(0, 2)), 1e-8))
    return cfg.replace(mean=tuple(mean.tolist()), std=tuple(std.tolist()))


def normalize(features: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Apply ``cfg.normalization`` to un-normalised features ``(..., n_mfcc, T)``."""
    if cfg.normalization == "none":
        return features
    if cfg.normalization == "utterance":
        m = features.mean(axis=-1, keepdims=True)
        s = features.std(axis=-1, keepdims=True) + 1e-5
        return ((features - m) / s).astype(np.float32, copy=False)
    if cfg.mean is None or cfg.std is None:
        raise ValueError("FeatureConfig uses global normalization but has no fitted mean/std (fit_normalization)")
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None]
    return ((features - mean) / std).astype(np.float32, copy=False)


@dataclass
class StreamingMFCC:
    """Incremental MFCC over a stream of audio: only new frames are computed.

    ``push(samples)`` accepts any number of new samples and returns the un-normalised MFCC frames
    ``(n_mfcc, k)`` that became complete (k may be 0). Concatenating the outputs over a stream equals
    ``mfcc(whole_stream, cfg, normalize_output=False)`` (frames are aligned to the first sample pushed).
    """

    cfg: FeatureConfig
    _pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    frames_emitted: int = 0

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        win, hop = self.cfg.win_length, self.cfg.hop_length
        if buf.size < win:
            self._pending = buf.copy()
            return np.zeros((self.cfg.n_mfcc, 0), dtype=np.float32)
        n_new = 1 + (buf.size - win) // hop
        out = _mfcc_from_frames(_analysis_frames(buf[: (n_new - 1) * hop + win], self.cfg), self.cfg)
        self._pending = buf[n_new * hop :].copy()
        self.frames_emitted += n_new
        return out
