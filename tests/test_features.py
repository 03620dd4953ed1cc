import json

import numpy as np
import pytest

from edgekws.features import FeatureConfig, StreamingMFCC, fit_normalization, mfcc, normalize


def _librosa_reference(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    librosa = pytest.importorskip("librosa")
    left = (cfg.n_fft - cfg.win_length) // 2
    yp = np.pad(y, (left, cfg.n_fft - cfg.win_length - left))
    mel = librosa.feature.melspectrogram(
        y=yp, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        center=False, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, power=2.0,
    )
    return librosa.feature.mfcc(S=librosa.power_to_db(mel, amin=cfg.amin, top_db=None), n_mfcc=cfg.n_mfcc)


@pytest.mark.parametrize(
    "cfg",
    [
        FeatureConfig(normalization="none"),
        FeatureConfig(normalization="none", n_mfcc=10, hop_ms=10.0, window_ms=30.0, n_fft=512, fmax=8000.0),
        FeatureConfig(normalization="none", sample_rate=8000, fmax=4000.0, n_fft=512, n_mels=32, n_mfcc=13),
    ],
)
def test_mfcc_matches_librosa(cfg):
    rng = np.random.default_rng(1)
    t = np.arange(cfg.clip_samples) / cfg.sample_rate
    y = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours = mfcc(y, cfg)
    ref = _librosa_reference(y, cfg)
    assert ours.shape == ref.shape == cfg.shape
    # Stated tolerance: 1e-3 dB-scaled units absolute (float32 vs float64 pipelines); values span tens of units.
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_batch_equals_single_clips():
    cfg = FeatureConfig(normalization="none")
    rng = np.random.default_rng(2)
    y = rng.standard_normal((5, cfg.clip_samples)).astype(np.float32) * 0.1
    batch = mfcc(y, cfg)
    assert batch.shape == (5,) + cfg.shape
    for i in range(5):
        np.testing.assert_allclose(batch[i], mfcc(y[i], cfg), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 160, 320, 333, 4000, 16000])
def test_streaming_equals_offline(chunk):
    cfg = FeatureConfig(normalization="none")
    rng = np.random.default_rng(3)
    y = rng.standard_normal(cfg.clip_samples * 2 + 123).astype(np.float32) * 0.1
    s = StreamingMFCC(cfg)
    outs = [s.push(y[i : i + chunk]) for i in range(0, len(y), chunk)]
    streamed = np.concatenate(outs, axis=1)
    offline = mfcc(y, cfg)
    assert streamed.shape == offline.shape
    assert s.frames_emitted == offline.shape[1]
    np.testing.assert_allclose(streamed, offline, atol=1e-4)


def test_config_json_round_trip_and_validation():
    cfg = FeatureConfig(n_mfcc=13, n_mels=32, clip_seconds=5.0)
    fitted = fit_normalization(np.random.default_rng(0).standard_normal((4, 13, cfg.n_frames)).astype(np.float32), cfg)
    again = FeatureConfig.from_json(fitted.to_json())
    assert again == fitted
    assert json.loads(fitted.to_json())["mean"] is not None
    assert cfg.shape == (13, 1 + (80000 - 800) // 320)
    with pytest.raises(ValueError, match="newer"):
        FeatureConfig.from_dict({**cfg.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="unknown FeatureConfig fields"):
        FeatureConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="n_fft"):
        FeatureConfig(window_ms=100.0, n_fft=1024)
    with pytest.raises(ValueError, match="fmax"):
        FeatureConfig(fmax=9000.0)
    with pytest.raises(ValueError, match="n_mfcc"):
        FeatureConfig(n_mfcc=50, n_mels=40)


def test_normalization_modes():
    cfg = FeatureConfig()
    rng = np.random.default_rng(4)
    raw = rng.normal(3.0, 2.0, size=(16,) + cfg.shape).astype(np.float32)
    with pytest.raises(ValueError, match="fit_normalization"):
        normalize(raw, cfg)
    fitted = fit_normalization(raw, cfg)
    z = normalize(raw, fitted)
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1.0, atol=1e-3)
    u = normalize(raw, cfg.replace(normalization="utterance"))
    np.testing.assert_allclose(u.mean(axis=-1), 0.0, atol=1e-4)


def test_mfcc_distinguishes_pitch_and_is_level_sensitive():
    cfg = FeatureConfig(normalization="none")
    t = np.arange(cfg.clip_samples) / cfg.sample_rate
    lo = mfcc((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), cfg)
    hi = mfcc((0.3 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32), cfg)
    assert np.abs(lo[1:] - hi[1:]).mean() > 5.0
    # broadband noise 20 dB quieter moves only c0 (by 20 dB * sqrt(n_mels) under the orthonormal DCT)
    noise = np.random.default_rng(5).standard_normal(cfg.clip_samples).astype(np.float32)
    loud, quiet = mfcc(0.3 * noise, cfg), mfcc(0.03 * noise, cfg)
    np.testing.assert_allclose(loud[0] - quiet[0], 20 * np.sqrt(cfg.n_mels), rtol=1e-3)
    np.testing.assert_allclose(loud[1:], quiet[1:], atol=1e-2)


def test_too_short_input_is_refused():
    cfg = FeatureConfig()
    with pytest.raises(ValueError, match="samples"):
        mfcc(np.zeros(100, dtype=np.float32), cfg)
