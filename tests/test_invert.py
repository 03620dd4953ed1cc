import numpy as np
import pytest

from edgekws.features import FeatureConfig, fit_normalization, mfcc
from edgekws.invert import denormalize, griffin_lim, mfcc_to_audio, mfcc_to_power


def _voice(seconds: float = 1.0, sr: int = 16000, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A vowel-like buzz gliding in pitch, with two formants, inside a 0.6 s envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.3 * t)) / sr
    y = sum(np.sin(k * phase) / k * (1.5 if 5 <= k <= 7 or 14 <= k <= 17 else 0.4) for k in range(1, 40))
    env = np.exp(-0.5 * ((t - 0.5) / 0.15) ** 2)
    return (0.2 * y * env + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_inverted_audio_has_the_same_mfcc():
    cfg = FeatureConfig(normalization="none")
    y = _voice()
    m = mfcc(y, cfg)
    z = mfcc_to_audio(m, cfg, normalized=False)
    assert z.dtype == np.float32 and abs(np.abs(z).max() - 10 ** (-3 / 20)) < 1e-3
    m2 = mfcc(np.pad(z, (0, len(y) - len(z))), cfg)[:, : m.shape[1]]
    other = mfcc(_voice(f0=260.0, seed=1)[::-1].copy(), cfg)
    # the spectral shape (coefficients 1..) and the energy contour (c0 over time) come back
    assert _corr(m[1:], m2[1:]) > 0.95
    assert _corr(m[0], m2[0]) > 0.95
    assert _corr(m[1:], other[1:]) < _corr(m[1:], m2[1:]) - 0.2


def test_normalised_features_are_denormalised_first():
    raw_cfg = FeatureConfig(normalization="none")
    y = _voice()
    raw = mfcc(y, raw_cfg)
    cfg = fit_normalization(np.stack([raw, mfcc(_voice(f0=200.0, seed=2), raw_cfg)]), FeatureConfig())
    norm = mfcc(y, cfg)
    np.testing.assert_allclose(denormalize(norm, cfg), raw, atol=1e-3)
    a = mfcc_to_audio(norm, cfg, seed=3)
    b = mfcc_to_audio(raw, raw_cfg, normalized=False, seed=3)
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_power_solver_is_non_negative_and_fits_the_mel_spectrum():
    cfg = FeatureConfig(normalization="none", n_mfcc=40)
    m = mfcc(_voice(), cfg)
    p = mfcc_to_power(m, cfg)
    assert p.shape == (cfg.n_fft // 2 + 1, m.shape[1]) and (p >= 0).all()
    from edgekws.features import dct_matrix, mel_filterbank

    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    logmel = 10 * np.log10(np.maximum(fb @ p, cfg.amin))
    back = dct_matrix(cfg.n_mels, cfg.n_mfcc) @ logmel
    assert np.abs(back - m).mean() < 1.0  # dB, against coefficients spanning ~100 dB


def test_griffin_lim_recovers_a_tone():
    cfg = FeatureConfig(normalization="none")
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 1000 * t)
    from edgekws.features import _frames, _hann

    spec = np.abs(np.fft.rfft(_frames(tone, cfg.win_length, cfg.hop_length) * _hann(cfg.win_length), n=cfg.n_fft)).T
    y = griffin_lim(spec, cfg, n_iter=30)
    f = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(f) * 16000 / len(y) - 1000) < 5


def test_bad_inputs_are_refused():
    cfg = FeatureConfig(normalization="none")
    with pytest.raises(ValueError, match="one"):
        mfcc_to_audio(np.zeros((2, 40, 48)), cfg, normalized=False)
    with pytest.raises(ValueError, match="non-finite"):
        mfcc_to_audio(np.full((40, 48), np.nan), cfg)
    with pytest.raises(ValueError, match="fitted"):
        mfcc_to_audio(np.zeros((40, 48)), FeatureConfig())
    with pytest.raises(ValueError, match="40"):
        mfcc_to_audio(np.zeros((13, 48)), cfg)
