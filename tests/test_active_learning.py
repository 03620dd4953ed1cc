import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from edgekws.features import FeatureConfig
from edgekws.models import create_model
from edgekws.server.active_learning import (
    ALConfig,
    _fingerprint,
    acquisition_scores,
    budget_schedule,
    canonical_strategy,
    run_active_learning,
    score_pool,
    seed_set,
    small_set_train_config,
)

SHAPE = (8, 8)
TINY = {"widths": (16, 16, 16, 16), "dropout": 0.3}


def toy_pool(n_easy=90, n_hard=30, n_test=60, seed=0):
    """Three classes of 8x8 "features": easy samples sit near their class pattern, hard ones halfway between two
    classes. Returns pool (x, y, is_hard), val and test sets."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((3, *SHAPE)).astype(np.float32) * 1.5

    def easy(n):
        y = np.arange(n) % 3
        return means[y] + 0.4 * rng.standard_normal((n, *SHAPE)).astype(np.float32), y

    xe, ye = easy(n_easy)
    a = np.arange(n_hard) % 3
    b = (a + 1) % 3
    xh = 0.5 * (means[a] + means[b]) + 0.4 * rng.standard_normal((n_hard, *SHAPE)).astype(np.float32)
    yh = np.where(rng.random(n_hard) < 0.5, a, b)
    x = np.concatenate([xe, xh]).astype(np.float32)
    y = np.concatenate([ye, yh])
    hard = np.r_[np.zeros(n_easy, bool), np.ones(n_hard, bool)]
    perm = rng.permutation(len(y))
    xv, yv = easy(30)
    xt, yt = easy(n_test)
    return x[perm], y[perm], hard[perm], xv, yv, xt, yt


def feature_cfg():
    return FeatureConfig(n_mfcc=8)


def tiny_train(epochs=4, seed=0):
    cfg = small_set_train_config("cnn4", epochs=epochs, seed=seed, min_steps_per_epoch=3, device="cpu",
                                 model_kwargs=TINY)
    cfg.batch_size, cfg.lr = 16, 1e-2
    return cfg


def al_config(strategy, budgets=(12, 24, 36), **kw):
    kw.setdefault("seed_size", 6)
    kw.setdefault("mc_passes", 8)
    kw.setdefault("train", tiny_train())
    return ALConfig(strategy=strategy, budgets=budgets, **kw)


def run(strategy, data, **kw):
    x, y, _, xv, yv, xt, yt = data
    state_path = kw.pop("state_path", None)
    progress = kw.pop("progress", None)
    first_round = kw.pop("first_round", None)
    return run_active_learning(x, y, xv, yv, xt, yt, feature_cfg(), 3, al_config(strategy, **kw),
                               state_path=state_path, progress=progress, first_round=first_round)


def test_acquisition_scores_follow_their_definitions():
    sure = [1.0, 0.0, 0.0]
    flat = [1 / 3] * 3
    # T=2 passes, 3 samples: confident and agreeing; flat in every pass; confident but disagreeing passes
    probs = np.array([[sure, flat, [1.0, 0.0, 0.0]],
                      [sure, flat, [0.0, 1.0, 0.0]]])
    ent = acquisition_scores(probs, "entropy")
    vr = acquisition_scores(probs, "least_confident")
    bald = acquisition_scores(probs, "bald")
    assert ent[0] == pytest.approx(0.0, abs=1e-9)
    assert ent[1] == pytest.approx(math.log(3))
    assert ent[2] == pytest.approx(math.log(2))
    assert vr.tolist() == pytest.approx([0.0, 2 / 3, 0.5])
    # BALD: zero when passes agree (even when each pass is uncertain), log 2 for two confident disagreeing passes
    assert bald.tolist() == pytest.approx([0.0, 0.0, math.log(2)], abs=1e-9)
    with pytest.raises(ValueError, match=r"\(T, B, C\)"):
        acquisition_scores(probs[0], "entropy")
    with pytest.raises(ValueError, match="no scores"):
        acquisition_scores(probs, "random")


def test_strategy_names_and_config_errors():
    assert canonical_strategy("Max-Entropy") == "entropy"
    assert canonical_strategy("least_confident") == "variation_ratios"
    with pytest.raises(ValueError, match="unknown acquisition strategy 'coreset'"):
        ALConfig(strategy="coreset", budgets=(10,))
    with pytest.raises(ValueError, match="budgets is empty"):
        ALConfig(budgets=())
    with pytest.raises(ValueError, match="ascending"):
        ALConfig(budgets=(30, 20), seed_size=5)
    with pytest.raises(ValueError, match="larger than the smallest budget"):
        ALConfig(budgets=(10, 20), seed_size=11)
    with pytest.raises(ValueError, match="BALD needs mc_passes >= 2"):
        ALConfig(strategy="bald", budgets=(10,), seed_size=5, mc_passes=1)
    cfg = ALConfig(budgets=(10, 25, 50), seed_size=4, max_batch=10)
    assert cfg.sizes() == [4, 10, 20, 25, 35, 45, 50]


def test_budget_schedule_and_seed_set():
    # coreset sizes 20/30/50 per class in total samples, then 10..60 % of the pool
    assert budget_schedule(2509, 10) == [200, 251, 300, 500, 502, 753, 1004, 1254, 1505]
    assert budget_schedule(100, 10, per_class=(5, 20), fractions=(0.5,)) == [50]
    with pytest.raises(ValueError, match="fractions"):
        budget_schedule(100, 10, fractions=(1.5,))
    y = np.repeat(np.arange(4), [10, 10, 10, 2])
    s = seed_set(y, 12, 4, seed=3)
    assert len(set(s.tolist())) == 12
    assert np.bincount(y[s], minlength=4).tolist()[3] == 2  # a small class gives all it has
    assert np.array_equal(s, seed_set(y, 12, 4, seed=3)) and not np.array_equal(s, seed_set(y, 12, 4, seed=4))


def test_scoring_is_one_pass_over_the_pool_with_batched_mc_samples():
    torch.manual_seed(0)
    model = create_model("cnn4", 3, SHAPE, **TINY)
    x = np.random.default_rng(0).standard_normal((70, *SHAPE)).astype(np.float32)
    calls = []
    embed = model.embed
    model.embed = lambda xb: (calls.append(len(xb)), embed(xb))[1]
    sc = score_pool(model, x, "bald", mc_passes=25, batch_size=32, seed=1)
    assert calls == [32, 32, 6]  # each sample embedded once, whatever T
    assert sc.score.shape == sc.entropy.shape == (70,)
    assert np.array_equal(sc.score, sc.mutual_information)
    assert np.all(sc.score > 0) and np.all(sc.score <= sc.entropy + 1e-9)  # 0 < mutual information <= entropy
    assert np.array_equal(sc.score, score_pool(model, x, "bald", mc_passes=25, batch_size=32, seed=1).score)
    assert not np.array_equal(sc.score, score_pool(model, x, "bald", mc_passes=25, batch_size=32, seed=2).score)
    assert model.training  # create_model returns a module in train mode; scoring restores it


def test_uncertainty_acquisitions_are_more_uncertain_than_random():
    data = toy_pool()
    hard = data[2]
    shared, epochs = {}, {}
    out = {}
    for s in ("random", "entropy", "variation_ratios", "bald"):
        events = []
        out[s] = run(s, data, budgets=(9, 39), seed_size=9, train=tiny_train(epochs=10), first_round=shared,
                     progress=events.append)
        epochs[s] = sorted({e["round"] for e in events if e["event"] == "al_epoch"})
    first = {s: r.records[0] for s, r in out.items()}
    # the same seed set and the same first net for every strategy: trained once, then shared
    assert len({tuple(r.labelled[:9]) for r in out.values()}) == 1
    assert len({f["test_accuracy"] for f in first.values()}) == 1
    assert epochs == {"random": [0, 1], "entropy": [1], "variation_ratios": [1], "bald": [1]}
    alone = run("bald", data, budgets=(9, 39), seed_size=9, train=tiny_train(epochs=10))
    assert alone.labelled == out["bald"].labelled  # sharing the first net changes nothing
    for s in ("entropy", "variation_ratios"):
        assert first[s]["acquired_entropy"] > first["random"]["acquired_entropy"] + 0.05, (s, first)
    # BALD asks for what the dropout passes disagree on
    assert first["bald"]["acquired_mutual_information"] > 1.3 * first["random"]["acquired_mutual_information"]
    # the ambiguous (between-class) samples are what Max Entropy asks for
    acquired = {s: np.asarray(r.labelled[9:]) for s, r in out.items()}
    assert hard[acquired["entropy"]].mean() > hard[acquired["random"]].mean()
    assert hard[acquired["entropy"]].mean() > hard.mean()


def test_records_budgets_and_labelled_set():
    data = toy_pool()
    x, y = data[0], data[1]
    events = []
    res = run("entropy", data, budgets=(12, 24, 36), max_batch=8, progress=events.append)
    assert [r["labelled"] for r in res.records] == [6, 12, 20, 24, 32, 36]
    assert [r["labelled"] for r in res.at_budgets()] == [12, 24, 36]
    assert len(res.labelled) == len(set(res.labelled)) == 36 and max(res.labelled) < len(x)
    for r in res.records:
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["fraction"] == pytest.approx(r["labelled"] / len(x))
    last = res.records[-1]
    assert "acquired" not in last
    assert last["class_counts"] == np.bincount(y[res.labelled], minlength=3).tolist()
    rounds = [e for e in events if e["event"] == "al_round"]
    assert [e["round"] for e in rounds] == list(range(6)) and rounds[-1]["rounds"] == 6
    assert any(e["event"] == "al_epoch" for e in events) and any(e["event"] == "al_score" for e in events)


class Interrupt(Exception):
    pass


def test_resume_gives_the_uninterrupted_result(tmp_path):
    data = toy_pool()
    whole = run("bald", data, state_path=tmp_path / "whole.json")

    def stop_after_round_one(ev):
        if ev["event"] == "al_round" and ev["round"] == 1:
            raise Interrupt

    path = tmp_path / "run.json"
    with pytest.raises(Interrupt):
        run("bald", data, state_path=path, progress=stop_after_round_one)
    state = json.loads(path.read_text())
    assert state["round"] == 2 and len(state["records"]) == 2
    assert len(state["labelled"]) == 24  # the next acquisition is saved with the round
    trained = []
    resumed = run("bald", data, state_path=path, progress=lambda ev: ev["event"] == "al_round" and trained.append(ev))
    assert [e["round"] for e in trained] == [2, 3]  # only the rounds left were trained
    assert resumed.labelled == whole.labelled
    key = ("labelled", "test_accuracy", "val_accuracy", "acquired_entropy", "class_counts")
    assert [{k: r.get(k) for k in key} for r in resumed.records] == [{k: r.get(k) for k in key} for r in whole.records]
    # a finished state returns its records without training
    trained.clear()
    assert run("bald", data, state_path=path, progress=trained.append).labelled == whole.labelled
    assert not [e for e in trained if e["event"] == "al_epoch"]
    # another thread count is how the run executes, not what it computes: the finished state is reused
    trained.clear()
    threads = dataclasses.replace(tiny_train(), threads=2)
    assert run("bald", data, state_path=path, train=threads, progress=trained.append).labelled == whole.labelled
    assert not [e for e in trained if e["event"] == "al_epoch"]
    # a state file from other settings is refused, not silently reused, and the message names what differs
    with pytest.raises(ValueError, match="other settings \\(strategy: 'bald' -> 'entropy'\\)"):
        run("entropy", data, state_path=path)
    with pytest.raises(ValueError, match="train.epochs: 4 -> 5"):
        run("bald", data, state_path=path, train=tiny_train(epochs=5))
    x, y, hard, xv, yv, xt, yt = data
    with pytest.raises(ValueError, match="other data"):
        run("bald", (x, y, hard, xv, yv, xt[:-1], yt[:-1]), state_path=path)


def test_state_files_hashed_with_the_thread_count_still_resume(tmp_path):
    data = toy_pool()
    path = tmp_path / "run.json"
    whole = run("random", data, state_path=path)
    x, y, _, xv, yv, xt, yt = data
    state = json.loads(path.read_text())
    # as version-1 states were written: the fingerprint covered train.threads and train.device too
    state["fingerprint"] = _fingerprint(al_config("random"), x, y, xt, yt, xv, yv, legacy=True)
    path.write_text(json.dumps(state))
    trained = []
    assert run("random", data, state_path=path, progress=trained.append).labelled == whole.labelled
    assert not [e for e in trained if e["event"] == "al_epoch"]


def test_bad_inputs_are_named():
    x, y, hard, xv, yv, xt, yt = toy_pool()
    fc = feature_cfg()
    with pytest.raises(ValueError, match="exceeds the pool"):
        run_active_learning(x, y, xv, yv, xt, yt, fc, 3, al_config("random", budgets=(12, 500)))
    with pytest.raises(ValueError, match="inputs but"):
        run_active_learning(x, y[:-1], xv, yv, xt, yt, fc, 3, al_config("random"))
    with pytest.raises(ValueError, match="labels must lie in"):
        run_active_learning(x, y, xv, yv, xt, yt, fc, 2, al_config("random"))
    with pytest.raises(ValueError, match="do not match the pool"):
        run_active_learning(x, y, xv, yv, xt[:, :4], yt, fc, 3, al_config("random"))
    with pytest.raises(ValueError, match=r"classes \[2\] have no samples"):
        keep = y != 2
        run_active_learning(x[keep], y[keep], xv, yv, xt, yt, fc, 3, al_config("random"))
