"""Hear a feature matrix: invert MFCC back to audio (numpy only, so a device can play a prototype to a person).

MFCC throw away the phase, the fine spectral detail the DCT truncation drops, and (with utterance normalisation)
each coefficient's level. The inversion undoes what can be undone:

1. normalisation: ``x * std + mean`` for a fitted "global" config; utterance-normalised inputs get nominal
   statistics (their true levels are gone);
2. truncated orthonormal DCT: the transpose is its least-squares inverse -> log-mel in dB;
3. mel filterbank: non-negative least squares by multiplicative updates -> linear power spectrum;
4. phase: Griffin-Lim with the very analysis window and hop the features used (frames are not centre-padded).

The result is intelligible enough to recognise a keyword or a sound class, not studio audio.
"""

from __future__ import annotations

import numpy as np

from edgekws.features import FeatureConfig, _frames, _hann, dct_matrix, mel_filterbank

__all__ = ["denormalize", "mfcc_to_logmel", "mfcc_to_power", "griffin_lim", "mfcc_to_audio"]

# Nominal per-coefficient statistics for features whose levels were normalised away (dB, typical of speech).
_NOMINAL_C0_MEAN = -250.0
_NOMINAL_C0_STD = 40.0
_NOMINAL_STD = 10.0


def denormalize(features: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Undo ``cfg.normalization`` on ``(..., n_mfcc, T)`` features (nominal levels for "utterance")."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim < 2 or x.shape[-2] != cfg.n_mfcc:
        raise ValueError(f"expected (..., {cfg.n_mfcc}, T) features, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain non-finite values")
    if cfg.normalization == "none":
        return x
    if cfg.normalization == "global":
        if cfg.mean is None or cfg.std is None:
            raise ValueError("FeatureConfig uses global normalization but has no fitted mean/std")
        return x * np.asarray(cfg.std)[:, None] + np.asarray(cfg.mean)[:, None]
    std = np.full(cfg.n_mfcc, _NOMINAL_STD)
    std[0] = _NOMINAL_C0_STD
    mean = np.zeros(cfg.n_mfcc)
    mean[0] = _NOMINAL_C0_MEAN
    return x * std[:, None] + mean[:, None]


def mfcc_to_logmel(mfcc: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Un-normalised MFCC ``(..., n_mfcc, T)`` -> log-mel power in dB ``(..., n_mels, T)``."""
    d = dct_matrix(cfg.n_mels, cfg.n_mfcc)  # (n_mfcc, n_mels), orthonormal rows
    return np.swapaxes(np.swapaxes(mfcc, -1, -2) @ d, -1, -2)


def mfcc_to_power(mfcc: np.ndarray, cfg: FeatureConfig, n_iter: int = 50) -> np.ndarray:
    """Un-normalised MFCC ``(n_mfcc, T)`` -> non-negative linear power spectrum ``(n_fft // 2 + 1, T)``.

    Solves ``min ||M S - mel||`` with ``S >= 0`` by multiplicative updates (each keeps ``S`` non-negative and does
    not increase the error), started from the filterbank's transpose applied to the mel power.
    """
    mel = 10.0 ** (mfcc_to_logmel(mfcc, cfg) / 10.0)  # (n_mels, T)
    m = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)  # (n_mels, F)
    col = m.sum(0)
    mtm = m.T @ m
    target = m.T @ mel
    s = np.maximum(target, 1e-30)
    for _ in range(n_iter):
        s *= target / np.maximum(mtm @ s, 1e-30)
    s[col <= 0] = 0.0  # bins no filter covers carry no information
    return s


def _stft(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    frames = _frames(np.ascontiguousarray(y, dtype=np.float64), cfg.win_length, cfg.hop_length)
    return np.fft.rfft(frames * _hann(cfg.win_length), n=cfg.n_fft, axis=-1).T  # (F, T)


def _istft(spec: np.ndarray, cfg: FeatureConfig, length: int) -> np.ndarray:
    win = _hann(cfg.win_length).astype(np.float64)
    frames = np.fft.irfft(spec.T, n=cfg.n_fft, axis=-1)[:, : cfg.win_length] * win
    out = np.zeros(length)
    norm = np.zeros(length)
    for t, frame in enumerate(frames):
        s = t * cfg.hop_length
        out[s : s + cfg.win_length] += frame
        norm[s : s + cfg.win_length] += win**2
    return out / np.maximum(norm, 1e-3 * norm.max())


def griffin_lim(magnitude: np.ndarray, cfg: FeatureConfig, n_iter: int = 48, momentum: float = 0.99,
                seed: int = 0) -> np.ndarray:
    """Audio whose STFT magnitude (``(n_fft // 2 + 1, T)``, the features' framing) approximates ``magnitude``.

    Fast Griffin-Lim (with momentum), random initial phase from ``seed``.
    """
    n_bins, n_frames = magnitude.shape
    if n_bins != cfg.n_fft // 2 + 1:
        raise ValueError(f"magnitude has {n_bins} bins, the config gives {cfg.n_fft // 2 + 1}")
    length = (n_frames - 1) * cfg.hop_length + cfg.win_length
    rng = np.random.default_rng(seed)
    angles = np.exp(2j * np.pi * rng.random(magnitude.shape))
    prev = np.zeros_like(angles)
    y = _istft(magnitude * angles, cfg, length)
    for _ in range(n_iter):
        rebuilt = _stft(y, cfg)
        accel = rebuilt - (momentum / (1.0 + momentum)) * prev
        prev = rebuilt
        angles = accel / np.maximum(np.abs(accel), 1e-16)
        y = _istft(magnitude * angles, cfg, length)
    return y


def mfcc_to_audio(features: np.ndarray, cfg: FeatureConfig, *, normalized: bool = True, n_iter: int = 48,
                  peak_dbfs: float = -3.0, seed: int = 0) -> np.ndarray:
    """Audio ``(n,)`` float32 at ``cfg.sample_rate`` for one MFCC matrix ``(n_mfcc, T)``.

    Args:
        features: one clip's MFCC, normalised with ``cfg`` when ``normalized`` (as in coresets and bundles).
        cfg: the FeatureConfig the features were made with.
        n_iter: Griffin-Lim iterations.
        peak_dbfs: the output is scaled to this peak level (levels are not preserved by MFCC anyway).
        seed: initial phase.
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"expected one (n_mfcc, T) feature matrix, got shape {x.shape}")
    raw = denormalize(x, cfg) if normalized else np.asarray(x, dtype=np.float64)
    y = griffin_lim(np.sqrt(mfcc_to_power(raw, cfg)), cfg, n_iter=n_iter, seed=seed)
    peak = float(np.max(np.abs(y)))
    if peak > 0:
        y = y * (10.0 ** (peak_dbfs / 20.0) / peak)
    return y.astype(np.float32)
