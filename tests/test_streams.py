"""Synthetic streams (events where they are said, window labels), recording and replaying a detector on a stream,
scoring, the threshold and temperature a speech-embedding bundle ships, and the window pool of head training."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from edgekws.device.detection import SpokenWord, choose_threshold, record, replay, score

from edgekws.datasets.synthetic_streams import (
    StreamEvent,
    render_stream,
    window_labels,
    window_spans,
)

KW = ("yes", "no", "up")


def _ev(kind, text, onset, offset):
    return StreamEvent(kind=kind, text=text, voice="v", start=onset, end=offset + 0.1, onset=onset, offset=offset,
                       level_dbfs=-20.0)


# Window labels ---------------------------------------------------------------------------------------------------


def test_window_spans_follow_the_embedding_geometry():
    sp = window_spans(3)
    # window i reads embeddings i..i+8: samples [1280 i, 1280 (i + 8) + 12512)
    np.testing.assert_allclose(sp[:, 0], [0.0, 0.08, 0.16])
    np.testing.assert_allclose(sp[:, 1] - sp[:, 0], (8 * 1280 + 12512) / 16000)


def test_window_labels_whole_keyword_partial_keyword_and_other_speech():
    spans = np.array([[0.0, 1.46], [0.5, 1.96], [0.9, 2.36], [1.2, 2.66], [3.0, 4.46], [5.0, 6.46]])
    events = [_ev("keyword", "no", 1.0, 1.4),  # inside windows 0 (0.06 s from its end: too close), 1, 2
              _ev("sentence", "the blue car", 3.2, 4.2),  # other speech: never a keyword
              _ev("fragment", "up", 5.3, 5.5)]  # a cut-off keyword: never a keyword either
    lab = window_labels(events, spans, KW, margin_s=0.1, negative_below=0.5)
    nothing = len(KW)
    # window 0: the whole word, but within the margin of the end -> left out; windows 1, 2: "no"; window 3 holds
    # half of it (0.2 of 0.4 s): at most negative_below -> non-keyword
    assert lab.tolist() == [-1, 1, 1, nothing, nothing, nothing]
    # two keywords partly inside the same window: left out unless one is whole and the other at most marginal
    two = [_ev("keyword", "yes", 0.2, 0.5), _ev("keyword", "up", 1.1, 1.6)]
    assert window_labels(two, spans[:1], KW).tolist() == [-1]
    assert window_labels([], spans, KW).tolist() == [nothing] * len(spans)


def test_render_stream_is_deterministic_and_says_what_its_events_say():
    from edgekws import tts
    from edgekws.datasets.synthetic import nothing_words

    if not tts.is_available():
        pytest.skip("espeak-ng (espeakng-loader) is not installed")
    y, ev = render_stream(3, seed=1, seconds=12.0, vocabulary=KW, fold="val")
    y2, ev2 = render_stream(3, seed=1, seconds=12.0, vocabulary=KW, fold="val")
    assert np.array_equal(y, y2) and ev == ev2
    assert y.dtype == np.float32 and len(y) == 12 * 16000 and np.all(np.abs(y) <= 0.99 + 1e-6)
    y3, _ = render_stream(4, seed=1, seconds=12.0, vocabulary=KW, fold="val")
    assert not np.array_equal(y, y3)
    assert ev, "a 12 s stream holds some speech"
    allowed = set(nothing_words(KW))
    for a, b in itertools.pairwise(ev):
        assert a.end <= b.start  # utterances do not overlap, in time order
    for e in ev:
        assert 0 <= e.start <= e.onset < e.offset <= e.end <= 12.0
        if e.kind in ("keyword", "fragment"):
            assert e.text in KW
        else:
            assert e.kind in ("words", "sentence") and set(e.text.split()) <= allowed
    with pytest.raises(ValueError, match="fold"):
        render_stream(0, fold="dev")


# Recording, replay, scoring ----------------------------------------------------------------------------------------


def test_score_counts_catches_and_false_alarm_kinds():
    words = [SpokenWord("yes", 1.0, 1.4), SpokenWord("no", 4.0, 4.4), SpokenWord("the cat", 8.0, 8.6, keyword=False)]
    dets = [(1.8, "yes"), (2.0, "yes"), (4.2, "up"), (9.0, "no"), (20.0, "up"), (21.0, "_nothing_")]
    r = score(words, dets, seconds=3600.0, tolerance_s=1.0)
    assert r["words"] == 2 and r["caught"] == 1 and r["recall"] == 0.5
    assert r["false_alarm_kinds"] == {"wrong_keyword": 2, "during_speech": 1, "in_noise": 1}
    assert r["false_alarms_per_hour"] == 4.0 and r["detections"] == 5


@pytest.fixture(scope="module")
def keyword_model(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from device_support import bundle_public_key, keyword_bundle
    from edgekws.device.model import DeviceModel, open_bundle

    b = keyword_bundle(tmp_path_factory.getbasetemp().parent)
    return DeviceModel(open_bundle(b, bundle_public_key(b)), calibrate=True)


def test_replay_of_a_recording_gives_the_live_detections(keyword_model):
    from device_support import sentence
    from edgekws.device.runtime import Detector, DetectorConfig, run_detector
    from edgekws.device.stream import ArraySource

    y, spans = sentence(["yes", "stop", "no", "yes"], gap_s=1.0, lead_s=0.8, seed=2)
    cfg = DetectorConfig(threshold=0.5)
    live = list(run_detector(Detector(keyword_model, keyword_model.feature_config, cfg), ArraySource(y)))
    fe = keyword_model.frontend
    rec = record(fe, y)
    logits = keyword_model.logits(rec.inputs)
    again = replay(fe, rec, logits, keyword_model.classes, cfg, keyword_model.temperature)
    assert [(d.time, d.keyword) for d in again] == [(d.time, d.keyword) for d in live]
    assert live, "the fixture model finds some of these clean keywords"
    # a higher threshold replayed on the same recording can only drop detections here
    strict = replay(fe, rec, logits, keyword_model.classes, DetectorConfig(threshold=0.999),
                    keyword_model.temperature)
    assert len(strict) <= len(live)
    with pytest.raises(ValueError, match="logits"):
        replay(fe, rec, logits[:-1], keyword_model.classes, cfg)
    # threshold choice: the lowest on the grid within the false-alarm budget, from a curve it reports
    words = [SpokenWord(w, a, b) for w, a, b in spans]
    thr, curve = choose_threshold(fe, [rec], [logits], [words], keyword_model.classes, cfg,
                                  temperature=keyword_model.temperature, max_false_alarms_per_hour=0.0,
                                  grid=(0.3, 0.6, 0.9))
    ok = [p["threshold"] for p in curve if p["false_alarms"] == 0]
    assert thr == (min(ok) if ok else 0.9)
    assert all(0.0 <= p["recall"] <= 1.0 for p in curve)


# Server: temperature, window pool -------------------------------------------------------------------------------


def test_fit_temperature_recovers_the_temperature_of_the_labels():
    from edgekws.server.speech_streams import fit_temperature

    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 4)) * 3.0
    # labels drawn from softmax(z / 2): the fitted temperature is close to 2 and beats T = 1
    p = np.exp(z / 2.0)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    T, stats = fit_temperature(z, y)
    assert 1.7 < T < 2.3 and stats["nll"] < stats["nll_at_1"]


def test_window_pool_draws_capped_balanced_subsets_and_training_uses_them():
    from edgekws.server.speech_head import (
        SpeechHeadConfig,
        WindowPool,
        train_speech_head,
    )

    rng = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 20 + [2] * 500)
    pool = WindowPool(rng.standard_normal((len(y), 96, 9)).astype(np.float32), y, negative_class=2, positives=40,
                      negatives=60)
    sel = pool.draw(np.random.default_rng(1))
    assert len(sel) == pool.per_epoch() == 100 and len(set(sel.tolist())) == 100
    assert np.sum(y[sel] == 2) == 60
    assert not np.array_equal(sel, pool.draw(np.random.default_rng(2)))
    x = rng.standard_normal((30, 96, 9)).astype(np.float32)
    cfg = SpeechHeadConfig(epochs=2, seed=3)
    a = train_speech_head(x, np.arange(30) % 3, None, None, 3, cfg, pool=pool).model.state_dict()
    b = train_speech_head(x, np.arange(30) % 3, None, None, 3, cfg, pool=pool).model.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # deterministic for a seed
    with pytest.raises(ValueError, match="do not fit"):
        bad = WindowPool(np.zeros((5, 96, 4), np.float32), np.zeros(5, np.int64), negative_class=2)
        train_speech_head(x, np.arange(30) % 3, None, None, 3, cfg, pool=bad)


def test_prior_correction_restores_the_clip_prior_of_a_head_trained_on_many_non_keyword_windows():
    import torch
    from edgekws.models import create_model
    from edgekws.server.speech_head import WindowPool, correct_prior, training_prior

    y = np.repeat(np.arange(3), 10)  # clips: balanced over 2 keywords and the non-keyword class (2)
    pool = WindowPool(np.zeros((70, 96, 9), np.float32), np.array([0] * 5 + [1] * 5 + [2] * 60), negative_class=2,
                      positives=10, negatives=40)
    p = training_prior(y, pool, 3)
    np.testing.assert_allclose(p, np.array([15, 15, 50]) / 80)  # per epoch: 10 + 5, 10 + 5, 10 + 40
    m = create_model("se-head", 3, (96, 9), seed=0).eval()
    x = torch.randn(4, 1, 96, 9)
    with torch.no_grad():
        before = m(x).numpy()
    info = correct_prior(m, p, np.full(3, 1 / 3))
    with torch.no_grad():
        after = m(x).numpy()
    # the non-keyword class loses log(50/15) against each keyword, the keywords keep their difference
    d = (after - before)
    np.testing.assert_allclose(d[:, 0] - d[:, 2], np.log(50 / 15), rtol=1e-5)
    np.testing.assert_allclose(d[:, 0], d[:, 1], atol=1e-6)
    assert len(info["shift"]) == 3
