"""Google Speech Commands (v0.01 / v0.02 folder layout).

Layout: ``<root>/<word>/<speaker>_nohash_<n>.wav``, optional ``_background_noise_/*.wav``, optional
``validation_list.txt`` and ``testing_list.txt`` (paths relative to root). With the lists, their split is used;
without them, a deterministic speaker-disjoint split by a hash of the speaker id (10 % val, 10 % test).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekws.audio import load_audio
from edgekws.datasets.base import ClipDataset, sizes_key, stable_hash_fraction

__all__ = ["PAPER_KEYWORDS", "UNKNOWN", "SILENCE", "load_gsc", "speaker_of", "background_noise_files"]

PAPER_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
NOISE_DIR = "_background_noise_"


def speaker_of(filename: str) -> str:
    """Speaker id of a Speech Commands file name (``<speaker>_nohash_<n>.wav`` -> ``<speaker>``)."""
    base = os.path.basename(filename)
    return base.split("_nohash_")[0] if "_nohash_" in base else os.path.splitext(base)[0]


def background_noise_files(root: str | os.PathLike) -> list[Path]:
    d = Path(root) / NOISE_DIR
    return sorted(d.glob("*.wav")) if d.is_dir() else []


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()}


def _hash_fold(speaker: str, val_fraction: float, test_fraction: float) -> str:
    r = stable_hash_fraction(speaker, salt="gsc-split")
    if r < test_fraction:
        return "test"
    if r < test_fraction + val_fraction:
        return "val"
    return "train"


def load_gsc(
    root: str | os.PathLike,
    *,
    keywords: Sequence[str] = PAPER_KEYWORDS,
    include_unknown: bool = False,
    include_silence: bool = False,
    silence_per_split: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    sample_rate: int = 16000,
    clip_seconds: float = 1.0,
) -> ClipDataset:
    """Load a Speech Commands folder as a :class:`ClipDataset`.

    Args:
        root: dataset folder.
        keywords: words that become classes (default: the paper's 10).
        include_unknown: add an ``_unknown_`` class made of every other word folder.
        include_silence: add a ``_silence_`` class of 1 s windows cut from ``_background_noise_`` recordings
            (``silence_per_split`` windows per split; default: the mean keyword count of that split).
        val_fraction, test_fraction: speaker-hash split fractions, used only when the list files are absent.

    Raises:
        FileNotFoundError: root missing. ValueError: a keyword folder missing or empty.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Speech Commands folder not found: {root}")
    keywords = tuple(keywords)
    if len(set(keywords)) != len(keywords):
        raise ValueError(f"duplicate keywords in {keywords}")
    val_list = _read_list(root / "validation_list.txt")
    test_list = _read_list(root / "testing_list.txt")
    use_lists = bool(val_list or test_list)

    word_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    missing = [k for k in keywords if k not in word_dirs]
    if missing:
        raise ValueError(f"{root}: no folder for keyword(s) {missing}; found {word_dirs}")
    class_names = list(keywords)
    if include_unknown:
        class_names.append(UNKNOWN)

    rel_paths: list[str] = []
    labels: list[int] = []
    groups: list[str] = []
    folds: list[str] = []
    for word in word_dirs:
        if word in keywords:
            label = keywords.index(word)
        elif include_unknown:
            label = class_names.index(UNKNOWN)
        else:
            continue
        files = sorted((root / word).glob("*.wav"))
        if word in keywords and not files:
            raise ValueError(f"{root / word}: no .wav files")
        for f in files:
            rel = f"{word}/{f.name}"
            spk = speaker_of(f.name)
            if use_lists:
                fold = "test" if rel in test_list else "val" if rel in val_list else "train"
            else:
                fold = _hash_fold(spk, val_fraction, test_fraction)
            rel_paths.append(rel)
            labels.append(label)
            groups.append(spk)
            folds.append(fold)

    clip_samples = int(round(sample_rate * clip_seconds))
    silence_windows: list[tuple[str, int]] = []  # (noise file rel path, start sample)
    noise_files = background_noise_files(root)
    if include_silence:
        if not noise_files:
            raise ValueError(f"{root}: include_silence needs {NOISE_DIR}/ recordings")
        class_names.append(SILENCE)
        silence_label = class_names.index(SILENCE)
        counts = {f: folds.count(f) for f in ("train", "val", "test")}
        n_kw = max(1, len(keywords))
        rng = np.random.default_rng(12345)
        noise = [load_audio(p, sample_rate=sample_rate) for p in noise_files]
        for split in ("train", "val", "test"):
            n = silence_per_split if silence_per_split is not None else max(1, counts[split] // n_kw)
            for j in range(n):
                k = int(rng.integers(len(noise)))
                start = int(rng.integers(0, max(1, len(noise[k]) - clip_samples)))
                rel = f"{NOISE_DIR}/{noise_files[k].name}"
                silence_windows.append((rel, start))
                rel_paths.append(f"{rel}@{start}")
                labels.append(silence_label)
                groups.append(f"silence-{split}-{j}")
                folds.append(split)

    if not rel_paths:
        raise ValueError(f"{root}: no clips found")

    n_files = len(rel_paths) - len(silence_windows)

    def loader(i: int) -> np.ndarray:
        rel = rel_paths[i]
        if i >= n_files:
            path, start = rel.rsplit("@", 1)
            y = load_audio(root / path, sample_rate=sample_rate)
            seg = y[int(start) : int(start) + clip_samples]
            return np.pad(seg, (0, clip_samples - len(seg))).astype(np.float32)
        return load_audio(root / rel, sample_rate=sample_rate, clip_seconds=clip_seconds)

    return ClipDataset(
        name="gsc",
        class_names=tuple(class_names),
        labels=np.asarray(labels),
        groups=np.asarray(groups),
        folds=np.asarray(folds),
        sample_rate=sample_rate,
        clip_seconds=clip_seconds,
        loader=loader,
        source_ids=rel_paths,
        content_key=f"lists={use_lists};sizes={sizes_key(root, rel_paths[:n_files])}",
        meta={
            "root": str(root),
            "split": "lists" if use_lists else f"speaker-hash val={val_fraction} test={test_fraction}",
            "background_noise": [str(p) for p in noise_files],
        },
    )
