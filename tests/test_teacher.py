"""Teacher labels: temperature fitting, distillation on augmented views, budgets, the coreset's label kind."""

import numpy as np
import pytest
import torch

from edgekws.features import FeatureConfig, fit_normalization, mfcc
from edgekws.server.budgets import BUDGETS, get_budget, rfad_settings
from edgekws.server.rfad import Coreset, RFADConfig, coreset_mismatch
from edgekws.server.teacher import distillation_train_config, fit_temperature, softmax, teacher_soft_labels
from edgekws.server.train import (
    AugmentConfig,
    TrainConfig,
    _cutmix_frames,
    _kd_loss,
    _mixed_loss,
    _shift_frames,
    predict_logits,
    train_model,
)
from tests.test_train import CFG, SMALL, tone_set


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, size=(20000, 5))
    for t_true in (0.5, 2.0, 4.0):
        p = softmax(logits, t_true).astype(np.float64)
        labels = (rng.random((len(p), 1)) > np.cumsum(p, 1)).sum(1)
        assert fit_temperature(logits, labels) == pytest.approx(t_true, rel=0.1)


def test_fit_temperature_refuses_bad_shapes():
    with pytest.raises(ValueError, match="N >= 1"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(ValueError, match="N >= 1"):
        fit_temperature(np.zeros((4, 3)), np.zeros(3, int))


def test_kd_loss_is_zero_only_when_the_student_matches_the_teacher():
    t = torch.randn(8, 4)
    assert float(_kd_loss(t.clone(), t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(_kd_loss(t + torch.randn(8, 4), t, 2.0)) > 1e-3
    assert float(_kd_loss(t + 5.0, t, 2.0)) == pytest.approx(0.0, abs=1e-5)  # softmax ignores a shared offset


def test_frame_shift_moves_whole_frames_and_fills_with_zeros():
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10) + 1
    gen = torch.Generator().manual_seed(0)
    out = _shift_frames(x, 3, gen)
    for i in range(2):
        # find the shift: every output frame is an input frame or zeros
        s = next(s for s in range(-3, 4) if all(
            (out[i, :, j] == 0).all() if not 0 <= j - s < 10 else torch.equal(out[i, :, j], x[i, :, j - s])
            for j in range(10)))
        assert -3 <= s <= 3


def test_cutmix_splices_a_span_and_mixed_targets_follow_the_share_kept():
    x = torch.stack([torch.full((2, 16), float(i)) for i in range(4)])
    gen = torch.Generator().manual_seed(1)
    out, perm, keep = _cutmix_frames(x, gen)
    for i in range(4):
        own = (out[i] == i).all(0)
        assert own.float().mean().item() == pytest.approx(keep) or perm[i] == i
        assert ((out[i] == i) | (out[i] == float(perm[i]))).all()
    cfg = TrainConfig(loss="ce", label_smoothing=0.0)
    logits = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    mixed = _mixed_loss(logits, y, [(perm, keep)], False, cfg)
    ce = torch.nn.functional.cross_entropy
    expect = keep * ce(logits, y) + (1 - keep) * ce(logits, y[perm])
    assert float(mixed.detach()) == pytest.approx(float(expect.detach()), rel=1e-5)


def _features():
    w, y = tone_set(24)
    cfg = fit_normalization(mfcc(w, CFG, normalize_output=False), CFG)
    wv, yv = tone_set(8, seed=1)
    wt, yt = tone_set(12, seed=2)
    return mfcc(w, cfg), y, mfcc(wv, cfg), yv, mfcc(wt, cfg), yt, cfg


def test_a_student_learns_the_teacher_from_two_clips_per_class_and_augmented_views():
    x, y, xv, yv, xt, yt, cfg = _features()
    teacher = train_model(x, y, xv, yv, cfg, 3, TrainConfig(**{**SMALL, "min_steps_per_epoch": 6}),
                          inputs="features").model
    assert (predict_logits(teacher, xt).argmax(1) == yt).mean() >= 0.9
    pick = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(3)])
    temp = fit_temperature(predict_logits(teacher, xv), yv)
    soft = teacher_soft_labels(teacher, x[pick], temp)
    assert np.allclose(soft.sum(1), 1.0, atol=1e-5)
    cfg_kd = distillation_train_config("cnn4", epochs=12, patience=0, temperature=temp,
                                       model_kwargs=SMALL["model_kwargs"])
    cfg_kd.threads, cfg_kd.batch_size, cfg_kd.lr = 1, 6, 1e-2
    res = train_model(x[pick], soft, xv, yv, cfg, 3, cfg_kd, inputs="features", teacher=teacher)
    agree = (predict_logits(res.model, xt).argmax(1) == predict_logits(teacher, xt).argmax(1)).mean()
    assert agree >= 0.8
    # the teacher was not trained further
    assert (predict_logits(teacher, xt).argmax(1) == yt).mean() >= 0.9
    assert all(not p.requires_grad for p in teacher.parameters())


def test_plateau_schedule_cuts_the_learning_rate_when_validation_stalls():
    x, y, xv, yv, _, _, cfg = _features()
    rng = np.random.default_rng(0)
    yv_noise = rng.integers(0, 3, len(yv))  # validation labels unrelated to the inputs: accuracy soon stalls
    tcfg = TrainConfig(**{**SMALL, "epochs": 12, "schedule": "plateau", "patience": 6, "lr": 1e-2,
                          "augment": AugmentConfig(enabled=False)})
    res = train_model(x, y, xv, yv_noise, cfg, 3, tcfg, inputs="features")
    lrs = [h["lr"] for h in res.history]
    assert lrs[0] == pytest.approx(1e-2)
    assert min(lrs) < 1e-2 * 0.31  # cut at least once
    assert res.stopped_early or len(res.history) == 12


def test_coreset_keeps_its_label_kind_and_names_mismatches(tmp_path):
    fc = FeatureConfig(n_mfcc=13, n_mels=32, clip_seconds=0.5)
    h, w = fc.shape
    x = np.zeros((4, h, w), np.float32)
    y = softmax(np.eye(2)[[0, 0, 1, 1]] * 3.0)
    core = Coreset(x=x, y=y, class_names=("a", "b"), feature_config=fc, config=RFADConfig(per_class=2),
                   labels="teacher", label_temperature=1.7)
    back = Coreset.load(core.save(tmp_path / "c.npz"))
    assert back.labels == "teacher" and back.label_temperature == pytest.approx(1.7)
    assert coreset_mismatch(back, ("a", "b"), fc) is None
    assert "missing ['c']" in coreset_mismatch(back, ("a", "b", "c"), fc)
    assert "another order" in coreset_mismatch(back, ("b", "a"), fc)
    other = fc.replace(n_mfcc=10)
    assert "inputs are" in coreset_mismatch(back, ("a", "b"), other)
    assert "fmax" in coreset_mismatch(back, ("a", "b"), fc.replace(fmax=7000.0))
    with pytest.raises(ValueError, match="labels must be one of"):
        Coreset(x=x, y=y, class_names=("a", "b"), feature_config=fc, config=RFADConfig(per_class=2), labels="x")


def test_budgets_make_valid_rfad_configs_and_grow_in_cost():
    for name in BUDGETS:
        RFADConfig(per_class=10, **rfad_settings(name))
    fast, best = get_budget("fast"), get_budget("best")
    assert best.rfad["steps"] > fast.rfad["steps"] and best.rfad["width"] > fast.rfad["width"]
    with pytest.raises(ValueError, match="unknown budget"):
        get_budget("huge")


def test_time_mean_readout_makes_the_kernel_indifferent_to_when_a_sound_happens():
    from edgekws.server.rfad import RandomConvNets

    h, w = 16, 64
    early, late = torch.zeros(1, h, w), torch.zeros(1, h, w)
    pattern = torch.randn(h, 8, generator=torch.Generator().manual_seed(0))
    early[0, :, 8:16], late[0, :, 40:48] = pattern, pattern

    def cosine(readout):
        nets = RandomConvNets(2, width=16, depth=3, seed=0, readout=readout)
        a, b = nets.features(early).flatten(), nets.features(late).flatten()
        return float(a @ b / (a.norm() * b.norm()))

    assert cosine("time-mean") > 0.99  # the same sound at another time: (almost) the same features
    assert cosine("flatten") < 0.5  # every position is its own feature
    with pytest.raises(ValueError, match="unknown readout"):
        RFADConfig(readout="max")
    nets = RandomConvNets(3, width=8, depth=2, readout="time-mean")
    assert nets.feature_dim((16, 64)) == 8 * 4 and nets.features(torch.zeros(2, 16, 64)).shape == (2, 3, 32)


def test_auto_readout_is_chosen_on_validation_and_kept_in_the_metrics():
    from edgekws.server.rfad import READOUTS, distill

    rng = np.random.default_rng(0)
    h, w, n = 8, 32, 60
    # a class is a spectral shape that can sit anywhere in time: only a time-blind readout generalises
    shapes = rng.normal(size=(3, h, 4)).astype(np.float32)

    def make(count, seed):
        r = np.random.default_rng(seed)
        x = 0.1 * r.normal(size=(count, h, w)).astype(np.float32)
        y = r.integers(0, 3, count)
        for i in range(count):
            t = int(r.integers(0, w - 4))
            x[i, :, t : t + 4] += shapes[y[i]]
        return x, y

    xtr, ytr = make(n, 1)
    xv, yv = make(30, 2)
    fc = FeatureConfig(n_mfcc=h, n_mels=16, clip_seconds=(w - 1) * 0.02 + 0.05)
    assert fc.shape == (h, w)
    cfg = RFADConfig(per_class=3, steps=1, n_models=1, pool_size=1, width=8, depth=2, readout="auto", eval_every=1,
                     patience=0, threads=1)
    core = distill(xtr, ytr, xv, yv, ("a", "b", "c"), fc, cfg)
    scores = core.metrics["readout_scores"]
    assert set(scores) == set(READOUTS)
    assert core.metrics["readout"] == max(READOUTS, key=lambda r: scores[r])
    assert scores["global-mean"] > scores["flatten"]
