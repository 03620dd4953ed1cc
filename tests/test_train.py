import numpy as np
import pytest
import torch

from edgekws.features import FeatureConfig, fit_normalization, mfcc
from edgekws.server.train import AugmentConfig, TrainConfig, evaluate, load_checkpoint, save_checkpoint, train_model

CFG = FeatureConfig(n_mfcc=13, n_mels=32, clip_seconds=0.5)


def tone_set(n_per_class=24, classes=(300.0, 900.0, 2500.0), seed=0):
    """Noisy tones at three pitches: an easy, real signal-processing task."""
    rng = np.random.default_rng(seed)
    t = np.arange(CFG.clip_samples) / CFG.sample_rate
    waves, labels = [], []
    for c, f in enumerate(classes):
        for _ in range(n_per_class):
            y = 0.3 * np.sin(2 * np.pi * f * rng.uniform(0.97, 1.03) * t + rng.uniform(0, 6.28))
            waves.append((y + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
            labels.append(c)
    return np.stack(waves), np.asarray(labels)


def _prepared():
    w, y = tone_set()
    cfg = fit_normalization(mfcc(w, CFG, normalize_output=False), CFG)
    wv, yv = tone_set(8, seed=1)
    return w, y, mfcc(wv, cfg), yv, cfg


SMALL = dict(model="cnn4", model_kwargs={"widths": (16, 16, 16, 16)}, epochs=10, batch_size=16, lr=1e-2, threads=1)


def test_train_on_waveforms_learns_and_checkpoint_round_trips(tmp_path):
    w, y, xv, yv, cfg = _prepared()
    res = train_model(w, y, xv, yv, cfg, 3, TrainConfig(**SMALL))
    assert res.best_val_accuracy >= 0.9
    assert len(res.history) == 10 and res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    save_checkpoint(tmp_path / "m.pt", res.model, cfg, ("lo", "mid", "hi"), {"x": 1})
    model, cfg2, classes, blob = load_checkpoint(tmp_path / "m.pt")
    assert cfg2 == cfg and classes == ["lo", "mid", "hi"] and blob["metrics"] == {"x": 1}
    assert evaluate(model, xv, yv)["accuracy"] == evaluate(res.model, xv, yv)["accuracy"]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "bad.pt")


def test_soft_labels_with_mse_on_features():
    w, y, xv, yv, cfg = _prepared()
    x = mfcc(w, cfg)
    soft = np.eye(3, dtype=np.float32)[y] * 0.8 + 0.1 - 1.0 / 3  # regression targets, negative entries allowed
    cfg_t = TrainConfig(**{**SMALL, "loss": "mse", "min_steps_per_epoch": 10, "augment": AugmentConfig(enabled=False)})
    res = train_model(x, soft, xv, yv, cfg, 3, cfg_t, inputs="features")
    assert res.best_val_accuracy >= 0.9
    with pytest.raises(ValueError, match="probability rows"):
        train_model(x, soft, xv, yv, cfg, 3, TrainConfig(**SMALL), inputs="features")
    with pytest.raises(ValueError, match=r"soft targets must be \(N, 3\)"):
        train_model(x, soft[:, :2], xv, yv, cfg, 3, cfg_t, inputs="features")


def test_resume_continues_where_it_stopped(tmp_path):
    w, y, xv, yv, cfg = _prepared()
    full = train_model(w, y, xv, yv, cfg, 3, TrainConfig(**{**SMALL, "epochs": 4}), checkpoint_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_after_two(ev):
        if ev["event"] == "epoch" and ev["epoch"] == 1:  # after epoch 1 is checkpointed
            raise Stop

    with pytest.raises(Stop):
        train_model(w, y, xv, yv, cfg, 3, TrainConfig(**{**SMALL, "epochs": 4}), checkpoint_dir=tmp_path / "b",
                    progress=stop_after_two)
    resumed = train_model(w, y, xv, yv, cfg, 3, TrainConfig(**{**SMALL, "epochs": 4}), checkpoint_dir=tmp_path / "b",
                          resume=True)
    assert len(resumed.history) == 4
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history], rel=1e-4)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bad_training_input_is_refused():
    w, y, xv, yv, cfg = _prepared()
    with pytest.raises(ValueError, match="labels must lie"):
        train_model(w, y + 5, xv, yv, cfg, 3, TrainConfig(**SMALL))
    with pytest.raises(ValueError, match="empty"):
        train_model(w[:0], y[:0], xv, yv, cfg, 3, TrainConfig(**SMALL))
    with pytest.raises(ValueError, match="normalisation"):
        train_model(w, y, xv, yv, CFG, 3, TrainConfig(**SMALL))


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_mixup_mixes_pairs_and_still_learns(loss):
    w, y, xv, yv, cfg = _prepared()
    x = mfcc(w, cfg)
    base = {**SMALL, "loss": loss, "min_steps_per_epoch": 10}
    plain = train_model(x, y, xv, yv, cfg, 3, TrainConfig(**base, augment=AugmentConfig(freq_masks=0, time_masks=0)),
                        inputs="features")
    mixed = train_model(x, y, xv, yv, cfg, 3,
                        TrainConfig(**base, augment=AugmentConfig(freq_masks=0, time_masks=0, mixup=0.4)),
                        inputs="features")
    assert mixed.best_val_accuracy >= 0.9
    # mixed targets cannot be fitted as tightly as the clean ones: the training loss stays higher
    assert mixed.history[-1]["train_loss"] > plain.history[-1]["train_loss"]
    restored = TrainConfig.from_dict(TrainConfig(augment=AugmentConfig(mixup=0.4)).to_dict())
    assert restored.augment.mixup == 0.4


def _spectral(cfg, **aug):
    from edgekws.server.train import _SpectralAugmenter

    return _SpectralAugmenter(cfg, AugmentConfig(**aug), [], torch.Generator().manual_seed(0))


def test_spectral_augmentation_acts_like_the_same_change_to_the_audio():
    full = FeatureConfig(clip_seconds=0.5)  # n_mfcc == n_mels: the DCT is inverted exactly
    w, _ = tone_set()
    cfg = fit_normalization(mfcc(w, full, normalize_output=False), full)
    x = torch.from_numpy(mfcc(w[:6], cfg))
    aug = _spectral(cfg)
    torch.testing.assert_close(aug.from_logmel(aug.to_logmel(x)), x, atol=1e-3, rtol=0)
    # a gain of g dB on the log-mel spectrum is the MFCC of the audio scaled by 10^(g/20)
    louder = torch.from_numpy(mfcc(w[:6] * 10 ** (6 / 20), cfg))
    torch.testing.assert_close(aug.from_logmel(aug.to_logmel(x) + 6.0), louder, atol=2e-3, rtol=0)
    # noise added as mel power: close to mixing the audio with the same noise (here at 0 dB SNR)
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(w[:6].shape).astype(np.float32)
    noise *= np.sqrt((w[:6] ** 2).mean(1, keepdims=True) / (noise**2).mean(1, keepdims=True))
    clean = aug.to_logmel(x)
    noise_power = torch.pow(10.0, aug.to_logmel(torch.from_numpy(mfcc(noise, cfg))) / 10.0)
    snr = 10 * torch.log10(torch.pow(10.0, clean / 10.0).mean(dim=(1, 2)) / noise_power.mean(dim=(1, 2)))
    est = aug.add_noise(clean, noise_power / noise_power.mean(dim=(1, 2), keepdim=True), snr)
    got = aug.to_logmel(torch.from_numpy(mfcc(w[:6] + noise, cfg)))
    # powers add up to the cross terms of each frame: within 2 dB on average, far below the change noise makes
    assert (est - got).abs().mean() < 2.0 < (clean - got).abs().mean()


def test_spectral_resampling_moves_energy_and_keeps_identity():
    from edgekws.server.train import _SpectralAugmenter

    lm = torch.full((1, 40, 48), -60.0)
    lm[0, 20, 20:28] = 0.0  # one band, eight frames
    same = _SpectralAugmenter.resample(lm, torch.ones(1), "time")
    torch.testing.assert_close(same, lm)
    torch.testing.assert_close(_SpectralAugmenter.resample(lm, torch.ones(1), "mel"), lm)
    faster = _SpectralAugmenter.resample(lm, torch.tensor([1.5]), "time")
    slower = _SpectralAugmenter.resample(lm, torch.tensor([0.5]), "time")
    loud = lambda t: int((t[0, 20] > -30).sum())  # noqa: E731
    assert loud(faster) < 8 < loud(slower)  # faster speech is shorter, slower is longer
    lower = _SpectralAugmenter.resample(lm, torch.tensor([1.25]), "mel")
    assert int(lower[0, :, 24].argmax()) == 16  # band 20 read at 1.25x its position: appears at band 16


def test_spectral_augmentation_is_seeded_and_used_in_training():
    w, y, xv, yv, cfg = _prepared()
    x = torch.from_numpy(mfcc(w[:8], cfg))
    kw = dict(spec_gain_db=6.0, spec_warp=0.1, spec_stretch=0.1, spec_noise_prob=1.0)
    from edgekws.server.train import _SpectralAugmenter

    def run(seed):
        a = _SpectralAugmenter(cfg, AugmentConfig(**kw), [np.random.default_rng(0).standard_normal(16000)],
                               torch.Generator().manual_seed(seed))
        return a(x)

    torch.testing.assert_close(run(1), run(1))
    assert not torch.allclose(run(1), run(2)) and not torch.allclose(run(1), x)
    res = train_model(mfcc(w, cfg), y, xv, yv, cfg, 3,
                      TrainConfig(**{**SMALL, "min_steps_per_epoch": 10}, augment=AugmentConfig(**kw)),
                      inputs="features")
    assert res.best_val_accuracy >= 0.9
