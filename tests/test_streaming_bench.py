"""The streaming benchmark: scoring on known placements and detections, seeded stream placement, and that its
detector run gives exactly what `edgekws listen --json` prints for the same audio."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_wav

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("streaming_kws", REPO / "benchmarks" / "streaming_kws.py")
sk = importlib.util.module_from_spec(_spec)
sys.modules["streaming_kws"] = sk  # dataclasses look their module up there
_spec.loader.exec_module(sk)

SR = 16000


def _word(kind: str, label: str, onset: float, offset: float) -> sk.Placement:
    return sk.Placement(kind=kind, label=label, start=onset - 0.2, end=offset + 0.2, onset=onset, offset=offset,
                        snr_db=10.0)


def test_score_known_case():
    words = [_word("keyword", "yes", 1.3, 1.7), _word("keyword", "no", 4.2, 4.6), _word("keyword", "yes", 7.3, 7.6),
             _word("keyword", "up", 10.3, 10.7), _word("speech", "house", 13.2, 13.8)]
    dets = [sk.Event(1.9, "yes"),       # catches word 1
            sk.Event(2.2, "yes"),       # second detection of word 1: a false alarm in a word's window
            sk.Event(5.0, "no"),        # catches word 2
            sk.Event(7.9, "up"),        # wrong keyword on word 3 (which stays missed)
            sk.Event(8.0, "_silence_"),  # never a detection
            sk.Event(8.1, "_nothing_"),
            sk.Event(12.5, "up"),       # 1.8 s after the offset of "up": outside the 1.5 s tolerance
            sk.Event(14.0, "up"),       # during other speech
            sk.Event(20.0, "stop")]     # in noise
    r = sk.score(words, dets, seconds=36.0, tolerance_s=1.5)
    assert r["words"] == 4 and r["caught"] == 2 and r["recall"] == 0.5
    assert r["detections"] == 7  # the two "_" classes are dropped
    assert r["false_alarms"] == 5
    # 12.5 s lies 1.8 s after "up" ended, past its tolerance, and outside any speech: counted as noise
    assert r["false_alarm_kinds"] == {"wrong_keyword": 2, "during_speech": 1, "in_noise": 2}
    assert r["false_alarms_per_hour"] == pytest.approx(5 / 0.01)
    assert r["recall_by_keyword"] == {"no": 1.0, "up": 0.0, "yes": 0.5}
    assert r["false_alarms_by_keyword"] == {"stop": 1, "up": 3, "yes": 1}
    # a wider tolerance turns the late "up" into a catch
    r2 = sk.score(words, dets, seconds=36.0, tolerance_s=2.0)
    assert r2["caught"] == 3 and r2["false_alarms"] == 4


def test_score_one_detection_per_word_and_word_per_detection():
    # two "yes" words close together: one detection inside both windows catches only the first
    words = [_word("keyword", "yes", 1.0, 1.4), _word("keyword", "yes", 2.0, 2.4)]
    one = sk.score(words, [sk.Event(2.2, "yes")], seconds=10.0)
    assert one["caught"] == 1 and one["false_alarms"] == 0
    two = sk.score(words, [sk.Event(2.2, "yes"), sk.Event(2.5, "yes")], seconds=10.0)
    assert two["caught"] == 2 and two["false_alarms"] == 0
    none = sk.score(words, [sk.Event(0.9, "yes")], seconds=10.0)  # before the onset: not the word
    assert none["caught"] == 0 and none["false_alarm_kinds"]["in_noise"] == 1


def _burst(freq: float, seconds: float = 1.0, word=(0.3, 0.7)) -> np.ndarray:
    """A 1 s "clip": a tone burst where the word would be, faint noise elsewhere."""
    t = np.arange(int(SR * seconds)) / SR
    y = 0.001 * np.random.default_rng(int(freq)).standard_normal(t.size)
    m = (t >= word[0]) & (t < word[1])
    y[m] += 0.3 * np.sin(2 * np.pi * freq * t[m])
    return y.astype(np.float32)


def _inputs():
    clips = [(_burst(300 + 40 * i), w) for i, w in enumerate(["yes", "no", "up", "down", "yes", "no"])]
    noises = [np.random.default_rng(k).standard_normal(SR * 20).astype(np.float32) * 0.1 for k in range(3)]
    other = [(_burst(900, 1.5, (0.2, 1.3)), "house"), (_burst(1100, 0.8, (0.1, 0.6)), "bird")]
    return clips, noises, other


def test_build_stream_is_deterministic_per_seed():
    clips, noises, other = _inputs()
    a = sk.build_stream(clips, noises, seconds=40, seed=3, distractors=other)
    b = sk.build_stream(clips, noises, seconds=40, seed=3, distractors=other)
    c = sk.build_stream(clips, noises, seconds=40, seed=4, distractors=other)
    assert a.placements == b.placements and np.array_equal(a.audio, b.audio)
    assert a.noise_segments == b.noise_segments and a.noise_only == b.noise_only
    assert [(p.label, p.start) for p in a.placements] != [(p.label, p.start) for p in c.placements]
    assert len(a.audio) == 40 * SR and a.audio.dtype == np.float32


def test_build_stream_places_clips_apart_in_range_and_at_their_snr():
    clips, noises, other = _inputs()
    s = sk.build_stream(clips, noises, seconds=120, seed=0, distractors=other, gap_s=(1.0, 3.0), snr_db=(5, 20))
    ps = s.placements
    assert len(s.keywords()) >= 15 and any(p.kind == "speech" for p in ps)
    for p, q in itertools.pairwise(ps):
        gap = q.start - p.end
        quiet = sum(b - a for a, b in s.noise_only if p.end <= a < q.start)
        assert 1.0 - 1e-6 <= gap - quiet <= 3.0 + 1e-6
    assert all(0 <= p.start < p.end <= s.seconds for p in ps)
    # every clip appears once before any repeats
    first = [p.source for p in s.keywords()[: len(clips)]]
    assert sorted(first) == sorted(str(i) for i in range(len(clips)))
    # onset/offset mark the tone burst (0.3-0.7 s into each keyword clip)
    for p in s.keywords():
        assert p.onset - p.start == pytest.approx(0.3, abs=0.03) and p.offset - p.start == pytest.approx(0.7, abs=0.03)
        assert 5 <= p.snr_db <= 20


def test_benchmark_runs_what_listen_runs(tmp_path):
    """The benchmark's detections on a tiny stream equal `edgekws listen --wav --json`'s on the same audio, and the
    threshold sweep replays them exactly."""
    from device_support import bundle_public_key, keyword_bundle, speak
    from typer.testing import CliRunner

    from edgekws.cli import app

    bundle = keyword_bundle(tmp_path.parent.parent)
    key = bundle_public_key(bundle)
    clips = [(np.pad(speak(w, rate=r), (2000, 2000))[:SR], w) for w in ("yes", "no", "stop") for r in (140, 170)]
    noises = [np.random.default_rng(1).standard_normal(SR * 10).astype(np.float32)]
    stream = sk.build_stream(clips, noises, seconds=25, seed=1, distractors=[(speak("house"), "house")],
                             noise_rms=(0.001, 0.003), snr_db=(20, 25))
    model = sk.open_like_listen(bundle, None, key, False)
    ours = sk.run_stream(model, model.feature_config, stream.audio, 0.5)
    wav = write_wav(tmp_path / "stream.wav", stream.audio)
    res = CliRunner().invoke(app, ["listen", "--bundle", str(bundle), "--wav", str(wav), "--json",
                                   "--public-key", str(key), "--threshold", "0.5", "--bundle-only"])
    assert res.exit_code == 0, res.output
    theirs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [(e["keyword"], e["time"]) for e in theirs] == [(e.keyword, round(e.time, 3)) for e in ours]
    assert ours, "the fixture bundle should detect some of these clean keywords"
    out = sk.evaluate(model, model.feature_config, [stream, stream], [0.3, 0.5, 0.9], default_threshold=0.5)
    d = out["default"]
    assert d["words"] == 2 * len(stream.keywords()) and d["detections"] == 2 * len(ours)
    assert {c["threshold"] for c in out["curve"]} == {0.3, 0.5, 0.9}
