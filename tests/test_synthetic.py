"""The eSpeak NG binding and the synthetic keyword dataset built on it."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edgekws import tts
from edgekws.datasets.base import Dataset, split_indices
from edgekws.datasets.synthetic import (
    PAPER_KEYWORDS,
    default_cache_dir,
    describe_variants,
    render_clip,
    synthetic_keywords,
    voice_pool,
)

pytestmark = pytest.mark.skipif(not tts.is_available(), reason="espeak-ng (espeakng-loader) is not installed")


def _active_seconds(y: np.ndarray, sr: int) -> float:
    hop = sr // 100
    e = np.square(y[: len(y) // hop * hop].astype(np.float64)).reshape(-1, hop).mean(axis=1)
    active = np.flatnonzero(e > e.max() * 1e-3)
    return (active[-1] - active[0] + 1) / 100.0


# The binding -------------------------------------------------------------------------------------------------


def test_synth_word_is_speech_of_plausible_length():
    audio, sr = tts.Speaker().synth("stop", voice="en-us+m3")
    assert sr == 22050
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.2 < len(audio) / sr < 1.2
    assert np.max(np.abs(audio)) <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.01
    assert 0.15 < _active_seconds(audio, sr) < 1.0


def test_rate_and_pitch_change_the_audio():
    speaker = tts.Speaker()
    slow, sr = speaker.synth("left", rate=90, fresh=True)
    fast, _ = speaker.synth("left", rate=350, fresh=True)
    assert len(slow) > 1.5 * len(fast)
    low, _ = speaker.synth("left", pitch=5, fresh=True)
    high, _ = speaker.synth("left", pitch=95, fresh=True)
    assert not (len(low) == len(high) and np.array_equal(low, high))


def test_voices_and_variants():
    names = [v.name for v in tts.list_voices("en")]
    for expected in ("en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc"):
        assert expected in names
    variants = tts.list_variants()
    assert {"m3", "f2", "klatt3", "whisper"} <= set(variants)
    speaker = tts.Speaker()
    a, _ = speaker.synth("go", voice="en-gb-scotland+klatt3", fresh=True)
    b, _ = speaker.synth("go", voice="en-gb-scotland+f2", fresh=True)
    assert len(a) and len(b) and not (len(a) == len(b) and np.array_equal(a, b))
    with pytest.raises(tts.TTSError):
        speaker.synth("go", voice="xx-nowhere")
    with pytest.raises(tts.TTSError):
        speaker.synth("go", voice="en-us+no-such-variant")


def test_fresh_synthesis_does_not_depend_on_history():
    speaker = tts.Speaker()
    first, _ = speaker.synth("right", voice="en-us+m1", seed=3, fresh=True)
    speaker.synth("something else entirely", voice="en-gb-x-rp+f4")
    again, _ = speaker.synth("right", voice="en-us+m1", seed=3, fresh=True)
    assert np.array_equal(first, again)


def test_phonemes_and_ssml_input():
    speaker = tts.Speaker()
    assert "l" in speaker.text_to_phonemes("left").lower()
    ph, _ = speaker.synth("[[j'Es]]", phonemes=True)
    assert len(ph) > 2000
    plain, _ = speaker.synth("yes no")
    paused, _ = speaker.synth('<speak>yes <break time="500ms"/> no</speak>', ssml=True)
    assert len(paused) > len(plain) + 0.3 * 22050


def test_missing_library_is_a_clear_error(tmp_path):
    with pytest.raises(tts.TTSError):
        tts._Engine(str(tmp_path / "libespeak-ng.so"), str(tmp_path))


# The dataset -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("synthetic-cache")
    events: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    ds = synthetic_keywords(
        PAPER_KEYWORDS, per_class=4, seed=0, cache_dir=cache, progress=lambda d, t: events.append((d, t))
    )
    return ds, cache, events, time.perf_counter() - t0


def test_dataset_shapes_labels_and_classes(small):
    ds, _, _, _ = small
    assert isinstance(ds, Dataset)
    assert ds.class_names == PAPER_KEYWORDS
    assert len(ds) == 40
    assert ds.class_counts() == {k: 4 for k in PAPER_KEYWORDS}
    assert ds.sample_rate == 16000 and ds.clip_seconds == 1.0
    for i in (0, 17, 39):
        y = ds.waveform(i)
        assert y.dtype == np.float32 and y.shape == (16000,)
        assert np.max(np.abs(y)) <= 1.0
        assert np.sqrt(np.mean(y**2)) > 1e-3
    pool = set(voice_pool())
    assert set(ds.groups.tolist()) <= pool
    params = [json.loads(p) for p in ds.meta["params"]]
    assert [p["voice"] for p in params] == ds.groups.tolist()
    assert all(p["text"].rstrip(".,!?") == ds.class_names[lab] for p, lab in zip(params, ds.labels))


def test_groups_never_cross_folds_and_every_class_in_every_split(small):
    ds, _, _, _ = small
    fold_of: dict[str, str] = {}
    for g, f in zip(ds.groups.tolist(), ds.folds.tolist()):
        assert fold_of.setdefault(g, f) == f
    split = split_indices(ds)
    for part in (split.train, split.val, split.test):
        assert set(ds.labels[part].tolist()) == set(range(len(ds.class_names)))


def test_progress_is_reported(small):
    _, _, events, _ = small
    assert events[0] == (0, 40) and events[-1] == (40, 40)
    assert all(a[0] <= b[0] for a, b in zip(events, events[1:]))


def test_cache_hit_is_identical_and_faster(small):
    ds, cache, _, generate_seconds = small
    files = list(cache.glob("synthetic-*.npz"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    t0 = time.perf_counter()
    again = synthetic_keywords(PAPER_KEYWORDS, per_class=4, seed=0, cache_dir=cache, progress=lambda d, t: 1 / 0)
    load_seconds = time.perf_counter() - t0
    assert again.meta["from_cache"] and not ds.meta["from_cache"]
    assert load_seconds < generate_seconds / 3
    assert again.fingerprint() == ds.fingerprint()
    assert np.array_equal(again.labels, ds.labels)
    assert np.array_equal(again.groups, ds.groups) and np.array_equal(again.folds, ds.folds)
    assert all(np.array_equal(again.waveform(i), ds.waveform(i)) for i in range(len(ds)))


def test_corrupt_cache_is_regenerated(tmp_path):
    ds = synthetic_keywords(("yes", "no"), per_class=3, cache_dir=tmp_path)
    path = ds.meta["cache_path"]
    with open(path, "wb") as f:
        f.write(b"not an npz")
    again = synthetic_keywords(("yes", "no"), per_class=3, cache_dir=tmp_path)
    assert not again.meta["from_cache"]
    assert all(np.array_equal(again.waveform(i), ds.waveform(i)) for i in range(len(ds)))


def test_same_seed_same_clips_other_seed_other_clips():
    kw = ("up", "down")
    a = synthetic_keywords(kw, per_class=3, seed=5, cache=False)
    b = synthetic_keywords(kw, per_class=3, seed=5, cache=False, workers=2)
    c = synthetic_keywords(kw, per_class=3, seed=6, cache=False)
    assert all(np.array_equal(a.waveform(i), b.waveform(i)) for i in range(len(a)))
    assert np.array_equal(a.groups, b.groups)
    assert not any(np.array_equal(a.waveform(i), c.waveform(i)) for i in range(len(a)))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_clip_does_not_depend_on_generation_order():
    kw = ("on", "off")
    first, _ = render_clip("off", 4, seed=1, vocabulary=kw)
    render_clip("on", 0, seed=1, vocabulary=kw)
    render_clip("on", 9, seed=2, vocabulary=kw)
    again, params = render_clip("off", 4, seed=1, vocabulary=kw)
    assert np.array_equal(first, again)
    ds = synthetic_keywords(kw, per_class=5, seed=1, cache=False)
    assert np.max(np.abs(ds.waveform(9) - first)) < 1.0 / 16000
    assert ds.groups[9] == params["voice"]


def test_multi_word_keywords():
    kw = ("lights on", "lights off", "hey robot")
    ds = synthetic_keywords(kw, per_class=3, seed=0, cache=False)
    assert ds.class_names == kw and len(ds) == 9
    params = [json.loads(p) for p in ds.meta["params"]]
    assert [p["text"].rstrip(".,!?") for p in params] == [k for k in kw for _ in range(3)]
    for i in range(len(ds)):
        y = ds.waveform(i)
        assert y.shape == (16000,) and np.sqrt(np.mean(y**2)) > 1e-3


def test_fingerprint_tracks_the_recipe():
    base = synthetic_keywords(("yes", "no"), per_class=3, cache=False)
    assert str(base.meta["recipe"]["version"]) in base.content_key
    more = synthetic_keywords(("yes", "no"), per_class=4, cache=False)
    other = synthetic_keywords(("yes", "go"), per_class=3, cache=False)
    assert len({base.fingerprint(), more.fingerprint(), other.fingerprint()}) == 3
    assert base.content_key != more.content_key


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        synthetic_keywords(("yes", "Yes"), per_class=2, cache=False)
    with pytest.raises(ValueError):
        synthetic_keywords(("yes", ""), per_class=2, cache=False)
    with pytest.raises(ValueError):
        synthetic_keywords(("yes",), per_class=0, cache=False)
    with pytest.raises(TypeError):
        synthetic_keywords("yes", per_class=2, cache=False)


def test_voice_pool_and_default_cache_dir(monkeypatch, tmp_path):
    info = describe_variants()
    assert info["voices"] == len(voice_pool()) > 500
    assert sum(info["per_fold"].values()) == info["voices"]
    assert min(info["per_fold"].values()) > 20
    monkeypatch.setenv("EDGEKWS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "synthetic"
    monkeypatch.delenv("EDGEKWS_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "edgekws", "synthetic")


def test_breathy_voices_do_not_depend_on_what_was_spoken_before():
    """Breathy variants draw noise from libc's rand(); a clip must not depend on the process's history."""
    from edgekws.datasets.synthetic import render_clip

    first, _ = render_clip("go", 7, voice="en-us+Reed")
    for i in range(3):
        render_clip("yes", i, voice="en-us+caleb")
    again, _ = render_clip("go", 7, voice="en-us+Reed")
    np.testing.assert_array_equal(first, again)


# The "_nothing_" class -------------------------------------------------------------------------------------------


def test_nothing_words_leave_out_keywords_and_their_sound_alikes():
    from edgekws.datasets.synthetic import nothing_words

    words = set(nothing_words(PAPER_KEYWORDS))
    assert not words & set(PAPER_KEYWORDS)
    assert not words & {"know", "let", "write", "light", "now", "start", "town"}
    assert {"apple", "water", "morning"} <= words
    assert "let" in nothing_words(("yes",))  # only the given vocabulary's sound-alikes are left out


def test_nothing_class_is_appended_and_keyword_clips_do_not_change():
    from edgekws.datasets.synthetic import NOTHING, render_nothing

    kw = ("yes", "no")
    plain = synthetic_keywords(kw, per_class=3, seed=2, cache=False, workers=1)
    ds = synthetic_keywords(kw, per_class=3, seed=2, cache=False, workers=1, nothing=4)
    assert ds.class_names == ("yes", "no", NOTHING) and len(ds) == 10
    assert np.asarray(ds.labels).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    for i in range(6):
        np.testing.assert_array_equal(ds.waveform(i), plain.waveform(i))
    assert ds.fingerprint() != plain.fingerprint()
    y, params = render_nothing(2, seed=2, vocabulary=kw)
    y2, _ = render_nothing(2, seed=2, vocabulary=kw)
    np.testing.assert_array_equal(y, y2)
    assert y.shape == (16000,) and params["kind"] in ("speech", "background", "silence")
    kinds = {json.loads(p)["kind"] for p in ds.meta["params"][6:]}
    assert kinds <= {"speech", "background", "silence"}
    with pytest.raises(ValueError, match="_nothing_"):
        synthetic_keywords(("yes", NOTHING), per_class=2, cache=False)
