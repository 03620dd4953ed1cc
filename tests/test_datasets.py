import csv

import numpy as np
import pytest

from conftest import tone, write_wav
from edgekws.datasets import load_dataset, split_indices
from edgekws.datasets.cache import load_features, load_waveforms
from edgekws.datasets.esc50 import load_esc50
from edgekws.datasets.gsc import PAPER_KEYWORDS, SILENCE, UNKNOWN, load_gsc, speaker_of
from edgekws.datasets.us8k import US8K_CLASSES, load_us8k, official_to_cv_fold
from edgekws.features import FeatureConfig


def make_gsc(root, words=("yes", "no", "up", "cat"), speakers=12, per_speaker=2, noise=True, lists=False):
    rng = np.random.default_rng(0)
    for w_i, w in enumerate(words):
        for s in range(speakers):
            for n in range(per_speaker):
                y = tone(200 + 150 * w_i, seconds=rng.uniform(0.6, 1.0)) + 0.01 * rng.standard_normal(1).astype(np.float32)
                write_wav(root / w / f"spk{s:03d}ab_nohash_{n}.wav", y)
    if noise:
        write_wav(root / "_background_noise_" / "white.wav", (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32))
    if lists:
        (root / "validation_list.txt").write_text("yes/spk000ab_nohash_0.wav\nno/spk001ab_nohash_0.wav\n")
        (root / "testing_list.txt").write_text("yes/spk002ab_nohash_0.wav\nup/spk003ab_nohash_1.wav\n")
    return root


def test_gsc_speaker_disjoint_hash_split(tmp_path):
    root = make_gsc(tmp_path / "gsc", speakers=40)
    ds = load_gsc(root, keywords=("yes", "no", "up"))
    assert ds.class_names == ("yes", "no", "up")
    assert len(ds) == 3 * 40 * 2
    assert speaker_of("yes/0a7c2a8d_nohash_3.wav") == "0a7c2a8d"
    sp = split_indices(ds)
    groups = {p: set(ds.groups[getattr(sp, p)].tolist()) for p in ("train", "val", "test")}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
    assert len(sp.train) + len(sp.val) + len(sp.test) == len(ds)
    assert len(sp.test) > 0 and len(sp.val) > 0
    # deterministic: loading twice gives the same split and fingerprint
    again = load_gsc(root, keywords=("yes", "no", "up"))
    assert (again.folds == ds.folds).all() and again.fingerprint() == ds.fingerprint()
    w = ds.waveform(0)
    assert w.dtype == np.float32 and w.shape == (16000,)


def test_gsc_lists_unknown_and_silence(tmp_path):
    root = make_gsc(tmp_path / "gsc", lists=True)
    ds = load_gsc(root, keywords=("yes", "no"), include_unknown=True, include_silence=True, silence_per_split=3)
    assert ds.class_names == ("yes", "no", UNKNOWN, SILENCE)
    src = list(ds.source_ids)
    assert ds.folds[src.index("yes/spk002ab_nohash_0.wav")] == "test"
    assert ds.folds[src.index("no/spk001ab_nohash_0.wav")] == "val"
    assert ds.folds[src.index("yes/spk005ab_nohash_0.wav")] == "train"
    assert ds.class_counts()[UNKNOWN] == 2 * 12 * 2  # "up" and "cat"
    sil = np.flatnonzero(ds.labels == 3)
    assert len(sil) == 9 and sorted(set(ds.folds[sil].tolist())) == ["test", "train", "val"]
    assert ds.waveform(int(sil[0])).shape == (16000,)


def test_gsc_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_gsc(tmp_path / "nope")
    root = make_gsc(tmp_path / "gsc", noise=False)
    with pytest.raises(ValueError, match="no folder for keyword"):
        load_gsc(root)  # the 10 paper keywords are not all there
    with pytest.raises(ValueError, match="_background_noise_"):
        load_gsc(root, keywords=("yes",), include_silence=True)
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("gsc")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", tmp_path)


def make_us8k(root, per_fold=2):
    rows = []
    rng = np.random.default_rng(1)
    for fold in range(1, 11):
        for j in range(per_fold):
            cid = (fold + j) % 10
            name = f"{100 + fold}-{cid}-0-{j}.wav"
            write_wav(root / "audio" / f"fold{fold}" / name, tone(100 + 50 * cid, seconds=rng.uniform(0.5, 4.0), sr=44100), sr=44100)
            rows.append({"slice_file_name": name, "fsID": 100 + fold, "start": 0, "end": 1, "salience": 1,
                         "fold": fold, "classID": cid, "class": US8K_CLASSES[cid]})
    (root / "metadata").mkdir(parents=True)
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_us8k_folds_merged_pairwise(tmp_path):
    root = make_us8k(tmp_path / "us8k")
    ds = load_us8k(root)
    assert ds.class_names == US8K_CLASSES and len(ds) == 20
    assert sorted(set(ds.folds.tolist())) == ["1", "2", "3", "4", "5"]
    assert [official_to_cv_fold(k) for k in range(1, 11)] == ["1", "1", "2", "2", "3", "3", "4", "4", "5", "5"]
    # a recording (fsID) never spans two CV folds
    for g in set(ds.groups.tolist()):
        assert len(set(ds.folds[ds.groups == g].tolist())) == 1
    assert ds.waveform(0).shape == (4 * 16000,)
    sp = split_indices(ds, test_fold="3")
    assert set(ds.folds[sp.test].tolist()) == {"3"} and set(ds.folds[sp.val].tolist()) == {"4"}
    assert len(sp.train) == 12
    ten = load_us8k(root, folds=10)
    assert len(set(ten.folds.tolist())) == 10
    with pytest.raises(ValueError, match="no fold"):
        split_indices(ds, test_fold="9")


def test_us8k_missing_file_is_named(tmp_path):
    root = make_us8k(tmp_path / "us8k")
    victim = next((root / "audio" / "fold4").glob("*.wav"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        load_us8k(root)


def test_esc50(tmp_path):
    root = tmp_path / "esc50"
    rows = []
    cats = ["dog", "rain", "clock_tick"]
    for fold in range(1, 6):
        for t, cat in enumerate(cats):
            name = f"{fold}-{1000 + t}-A-{t}.wav"
            write_wav(root / "audio" / name, tone(300 + 100 * t, seconds=5.0, sr=44100), sr=44100)
            rows.append({"filename": name, "fold": fold, "target": t, "category": cat, "esc10": "False",
                         "src_file": f"{1000 + t + 10 * fold}", "take": "A"})
    (root / "meta").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds = load_esc50(root)
    assert ds.class_names == tuple(cats) and len(ds) == 15
    y = ds.waveform(0)
    assert y.shape == (80000,)
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 16000 / len(y) - 300) < 2  # 44.1 kHz -> 16 kHz keeps the tone
    sp = split_indices(ds, test_fold="5")
    assert len(sp.test) == 3 and set(ds.folds[sp.val].tolist()) == {"1"}


def test_feature_cache_hits_and_keys(tmp_path):
    root = make_gsc(tmp_path / "gsc", speakers=6)
    ds = load_gsc(root, keywords=("yes", "no"))
    cfg = FeatureConfig()
    cache = tmp_path / "cache"
    f1 = load_features(ds, cfg, cache_dir=cache)
    assert f1.shape == (len(ds),) + cfg.shape
    assert len(list((cache / "features").glob("*.npy"))) == 1
    import edgekws.datasets.cache as cache_mod

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached entry was computed again")

    with pytest.MonkeyPatch.context() as mp:  # a hit reads the entry: no audio is decoded, no MFCC computed
        mp.setattr(cache_mod, "load_waveforms", no_decoding)
        f2 = load_features(ds, cfg, cache_dir=cache)
    np.testing.assert_array_equal(f1, f2)
    # a different feature config is a different entry; normalisation stats are not part of the key
    load_features(ds, cfg.replace(n_mfcc=13), cache_dir=cache)
    assert len(list((cache / "features").glob("*.npy"))) == 2
    load_features(ds, cfg.replace(normalization="utterance"), cache_dir=cache)
    assert len(list((cache / "features").glob("*.npy"))) == 2
    # a damaged entry is recomputed, not trusted
    entry = next((cache / "waveforms").glob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:100])
    w = load_waveforms(ds, cache_dir=cache)
    assert w.shape == (len(ds), 16000)


def test_real_speech_commands_subset(gsc_dev):
    ds = load_gsc(gsc_dev)
    assert ds.class_names == PAPER_KEYWORDS
    counts = ds.class_counts()
    assert all(c > 250 for c in counts.values()), counts
    sp = split_indices(ds)
    train_spk = set(ds.groups[sp.train].tolist())
    test_spk = set(ds.groups[sp.test].tolist())
    assert not train_spk & test_spk
    assert 0.05 < len(sp.test) / len(ds) < 0.2
    for c in range(10):  # every keyword is in every split
        assert (ds.labels[sp.test] == c).any() and (ds.labels[sp.val] == c).any()
    y = ds.waveform(int(sp.test[0]))
    assert y.shape == (16000,) and np.isfinite(y).all() and np.abs(y).max() > 0.01
