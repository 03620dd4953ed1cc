"""Streaming realism: recall and false alarms per hour of `edgekws listen` on long streams of real speech.

Each stream (seeded) is a bed of Speech Commands background noise (``_background_noise_``: segments of the six
recordings at random levels) with real keyword clips from held-out Speech Commands speakers placed 1-3 s apart at
a random SNR, other speech that is not a keyword (synthetic voices, ``edgekws.tts``, saying Speech Commands'
non-keyword words and short sentences) and noise-only stretches. The streams are played through the detector that
``edgekws listen`` runs: the bundle opened the way the CLI opens it (recommended graph, the temperature and threshold
the bundle ships, local fine-tuned versions from the device state folder), a fresh
:class:`edgekws.device.runtime.Detector` per stream with the CLI's defaults, fed 20 ms blocks.

Scoring (:func:`score`): a placed word is caught when a detection names it while the detection's time (the end of
the window that fired) lies in ``[word onset, word offset + tolerance]`` (default tolerance: the detector's window
plus the span of its posterior smoothing, i.e. the latest time a window holding part of the word can still show in
the smoothed posterior: 1.4 s for MFCC bundles, 1.74 s for speech-embedding ones); every detection is matched to at most one
word (and a word to at most one detection); everything else is a false alarm. Classes whose names start with ``_``
(``_nothing_``, ``_silence_``, ``_unknown_``) never count as detections. Recall and false alarms per hour are
reported at the default threshold and over a threshold sweep (the curve). The sweep replays the front end's windows
and the logits recorded on the first pass (the same audio gives the same inputs and logits); the detector's decisions
(smoothing, gate, thresholds, re-arming, refractory time) run again for each threshold.

Fine-tuned variants: n labelled clips per class (n = 5, 10, 20 by default) from Speech Commands speakers that are
not in the streams (the speaker-hash train split; the streams use the validation and test speakers), embedded with
the bundle's embedding graph and passed to :func:`edgekws.device.finetune.finetune`, which writes a local version
into a temporary state folder that the detector then loads, as ``edgekws device finetune`` + ``listen`` would.

    python benchmarks/streaming_kws.py --bundle runs/rpi/bundle --gsc ../shared/data/gsc-dev

Writes ``benchmarks/results/streaming_<name>.json|md|png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

# Speech Commands' words that are not the ten keywords (its "unknown" words), and filler for short sentences.
OTHER_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine", "one",
               "seven", "sheila", "six", "three", "tree", "two", "wow", "zero", "backward", "follow", "forward",
               "learn", "visual")
SENTENCE_WORDS = ("the", "a", "is", "was", "we", "they", "have", "this", "that", "very", "today", "morning", "water",
                  "kitchen", "table", "window", "garden", "music", "little", "yellow", "paper", "coffee", "later",
                  "maybe", "really", "weather", "quiet", "dinner", "around", "seven", "house", "bird", "happy")
DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)


def is_detection_class(name: str) -> bool:
    """Whether a class can count as a detection: ``_nothing_``, ``_silence_``, ``_unknown_`` … never do."""
    return not name.startswith("_")


# ----------------------------------------------------------------------------------------------------------------
# Streams


@dataclass(frozen=True)
class Placement:
    """Something placed in a stream. ``start``/``end``: the clip's span; ``onset``/``offset``: where its sound is
    (seconds from the stream's start). ``kind``: ``"keyword"`` or ``"speech"`` (other speech)."""

    kind: str
    label: str
    start: float
    end: float
    onset: float
    offset: float
    snr_db: float
    source: str = ""


@dataclass
class Stream:
    audio: np.ndarray  # float32 (n,)
    sample_rate: int
    seed: int
    placements: list[Placement]
    noise_segments: list[dict] = field(default_factory=list)
    noise_only: list[tuple[float, float]] = field(default_factory=list)  # stretches left to the noise bed

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def keywords(self) -> list[Placement]:
        return [p for p in self.placements if p.kind == "keyword"]


def active_span(y: np.ndarray, sample_rate: int, *, frame_ms: float = 25.0, below_peak_db: float = 30.0
                ) -> tuple[int, int]:
    """First and last sample of the frames within ``below_peak_db`` of the loudest frame (where the word is)."""
    n = max(1, int(sample_rate * frame_ms / 1000))
    m = len(y) // n
    if m == 0:
        return 0, len(y)
    e = 10 * np.log10(np.mean(np.square(y[: m * n].reshape(m, n), dtype=np.float64), axis=1) + 1e-12)
    on = np.flatnonzero(e >= e.max() - below_peak_db)
    return int(on[0] * n), int(min(len(y), (on[-1] + 1) * n))


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) if len(y) else 0.0


def _noise_bed(noises: Sequence[np.ndarray], n: int, rng: np.random.Generator, rms_range: tuple[float, float],
               seg_s: tuple[float, float], sample_rate: int) -> tuple[np.ndarray, list[dict]]:
    """Segments of the noise recordings at log-uniform RMS levels, joined with 50 ms cross-fades."""
    out = np.zeros(n, np.float32)
    fade = int(0.05 * sample_rate)
    pos, segs = 0, []
    while pos < n:
        k = int(rng.integers(len(noises)))
        src = noises[k]
        length = min(int(rng.uniform(*seg_s) * sample_rate), len(src))
        off = int(rng.integers(0, max(1, len(src) - length)))
        seg = np.asarray(src[off : off + length], np.float64)
        level = float(math.exp(rng.uniform(math.log(rms_range[0]), math.log(rms_range[1]))))
        seg = seg * (level / max(_rms(seg), 1e-9))
        env = np.ones(len(seg))
        f = min(fade, len(seg) // 2)
        if f:
            env[:f] = np.linspace(0, 1, f)
            env[-f:] = np.linspace(1, 0, f)
        start = max(0, pos - f)
        end = min(n, start + len(seg))
        out[start:end] += (seg * env)[: end - start].astype(np.float32)
        segs.append({"noise": k, "start": start / sample_rate, "end": end / sample_rate, "rms": level})
        pos = end
    return out, segs


def build_stream(keyword_clips: Sequence[tuple[np.ndarray, str]], noises: Sequence[np.ndarray], *, seconds: float,
                 seed: int, distractors: Sequence[tuple[np.ndarray, str]] = (), sample_rate: int = 16000,
                 gap_s: tuple[float, float] = (1.0, 3.0), snr_db: tuple[float, float] = (5.0, 20.0),
                 noise_rms: tuple[float, float] = (0.002, 0.03), noise_segment_s: tuple[float, float] = (4.0, 15.0),
                 p_speech: float = 0.25, p_noise_only: float = 0.1,
                 noise_only_s: tuple[float, float] = (3.0, 8.0)) -> Stream:
    """A seeded stream: a noise bed with keyword clips and other speech placed ``gap_s`` apart.

    Args:
        keyword_clips: ``(waveform, keyword)`` at ``sample_rate``; used in a seeded random order, each once before
            any repeats.
        noises: background recordings (at least one) the bed is cut from.
        distractors: ``(waveform, text)`` of other speech; each event is other speech with probability
            ``p_speech``, a noise-only stretch of ``noise_only_s`` with ``p_noise_only``, else a keyword.
        snr_db: each placed clip is scaled so its active part is this far (uniform) above the local noise RMS.
    Returns: the :class:`Stream`; the same inputs and seed give the same stream.
    """
    if not keyword_clips:
        raise ValueError("no keyword clips to place")
    if not noises:
        raise ValueError("no background noise recordings")
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    audio, segs = _noise_bed(noises, n, rng, noise_rms, noise_segment_s, sample_rate)
    bed = audio.copy()
    order = rng.permutation(len(keyword_clips))
    k_next = 0
    placements: list[Placement] = []
    quiet: list[tuple[float, float]] = []
    t = float(rng.uniform(*gap_s))
    while True:
        u = float(rng.random())
        if u < p_noise_only:
            d = float(rng.uniform(*noise_only_s))
            quiet.append((t, min(t + d, seconds)))
            t += d
            continue
        if u < p_noise_only + p_speech and len(distractors):
            y, label = distractors[int(rng.integers(len(distractors)))]
            kind, source = "speech", ""
        else:
            idx = int(order[k_next % len(order)])
            k_next += 1
            if k_next % len(order) == 0:
                order = rng.permutation(len(keyword_clips))
            y, label = keyword_clips[idx]
            kind, source = "keyword", str(idx)
        y = np.asarray(y, np.float32)
        a = round(t * sample_rate)
        if a + len(y) > n:
            break
        on, off = active_span(y, sample_rate)
        level = _rms(y[on:off])
        snr = float(rng.uniform(*snr_db))
        noise_level = max(_rms(bed[a + on : a + off]), 1e-4)
        if level > 0:
            y = y * (noise_level * 10 ** (snr / 20) / level)
        audio[a : a + len(y)] += y
        placements.append(Placement(kind=kind, label=label, start=a / sample_rate, end=(a + len(y)) / sample_rate,
                                    onset=(a + on) / sample_rate, offset=(a + off) / sample_rate, snr_db=snr,
                                    source=source))
        t = (a + len(y)) / sample_rate + float(rng.uniform(*gap_s))
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > 0.99:  # keep the stream a valid recording (rare: loud noise plus a high-SNR clip)
        audio *= 0.99 / peak
    return Stream(audio=audio.astype(np.float32), sample_rate=sample_rate, seed=seed, placements=placements,
                  noise_segments=segs, noise_only=[q for q in quiet if q[0] < seconds])


# ----------------------------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class Event:
    """A detection as ``listen --json`` prints it: ``time`` (end of the window that fired) and ``keyword``."""

    time: float
    keyword: str
    score: float = 1.0


def score(placements: Sequence[Placement], detections: Sequence[Event], *, seconds: float,
          tolerance_s: float = 1.5) -> dict:
    """Recall and false alarms of ``detections`` against the keyword ``placements`` of one or more streams.

    A word is caught by the first unused detection of its keyword whose time lies in
    ``[onset, offset + tolerance_s]``; each detection catches at most one word. Detections of classes starting with
    ``_`` are ignored. A detection that catches nothing is a false alarm: ``wrong_keyword`` when it falls in the
    window of a placed word (of another keyword, or one already caught), ``during_speech`` when it falls in the
    window of other speech, else ``in_noise``.
    """
    words = sorted((p for p in placements if p.kind == "keyword"), key=lambda p: p.onset)
    speech = [p for p in placements if p.kind != "keyword"]
    dets = sorted((d for d in detections if is_detection_class(d.keyword)), key=lambda d: d.time)
    caught = [False] * len(words)
    used = [False] * len(dets)
    for i, w in enumerate(words):
        for j, d in enumerate(dets):
            if used[j] or d.keyword != w.label:
                continue
            if w.onset <= d.time <= w.offset + tolerance_s:
                caught[i] = used[j] = True
                break
    fa = {"wrong_keyword": 0, "during_speech": 0, "in_noise": 0}
    fa_by_keyword: dict[str, int] = {}
    for j, d in enumerate(dets):
        if used[j]:
            continue
        if any(w.onset <= d.time <= w.offset + tolerance_s for w in words):
            fa["wrong_keyword"] += 1
        elif any(s.onset <= d.time <= s.offset + tolerance_s for s in speech):
            fa["during_speech"] += 1
        else:
            fa["in_noise"] += 1
        fa_by_keyword[d.keyword] = fa_by_keyword.get(d.keyword, 0) + 1
    per_kw: dict[str, list[int]] = {}
    for w, c in zip(words, caught):
        per_kw.setdefault(w.label, [0, 0])
        per_kw[w.label][0] += int(c)
        per_kw[w.label][1] += 1
    by_snr: dict[str, list[int]] = {}
    for w, c in zip(words, caught):
        lo = 5 * math.floor(w.snr_db / 5)
        by_snr.setdefault(f"{lo}-{lo + 5} dB", [0, 0])
        by_snr[f"{lo}-{lo + 5} dB"][0] += int(c)
        by_snr[f"{lo}-{lo + 5} dB"][1] += 1
    n_fa = sum(fa.values())
    hours = seconds / 3600.0
    return {"words": len(words), "caught": int(sum(caught)), "recall": sum(caught) / len(words) if words else 0.0,
            "recall_by_snr": {k: v[0] / v[1] for k, v in sorted(by_snr.items(), key=lambda kv: int(kv[0].split("-")[0]))},
            "detections": len(dets), "false_alarms": n_fa,
            "false_alarms_per_hour": n_fa / hours if hours > 0 else 0.0,
            "false_alarm_kinds": fa, "false_alarms_by_keyword": dict(sorted(fa_by_keyword.items())),
            "recall_by_keyword": {k: v[0] / v[1] for k, v in sorted(per_kw.items())},
            "seconds": seconds, "tolerance_s": tolerance_s}


# ----------------------------------------------------------------------------------------------------------------
# Running the detector


class _Recorder:
    """Wraps a model: records every logits row it returns (for the threshold sweep)."""

    def __init__(self, model) -> None:
        self.model, self.rows = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(self.model.logits(x), np.float32)
        self.rows.append(z)
        return z


class _Replay:
    """The model that produced ``rows`` (classes, temperature, bundle), giving back those logits in order."""

    def __init__(self, model, rows: list[np.ndarray]) -> None:
        self.model, self._rows, self._i = model, rows, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self._i >= len(self._rows):
            raise RuntimeError("replay ran out of recorded logits: the stream differs from the recorded one")
        z = self._rows[self._i]
        self._i += 1
        return z


class _RecordingFrontEnd:
    """The detector's own front end, with every ``push`` result recorded: the windows' times and the level frames
    (the model inputs themselves are not kept; :class:`_Replay` gives back their logits)."""

    def __init__(self, frontend) -> None:
        self.frontend, self.pushes = frontend, []

    def __getattr__(self, name):
        return getattr(self.frontend, name)

    def stream(self):
        rec = self

        class _Stream:
            def __init__(self) -> None:
                self.inner, self.levels = rec.frontend.stream(), []

            def push(self, block):
                windows = self.inner.push(block)
                self.levels = self.inner.levels
                rec.pushes.append(([(w.start, w.end, w.level_count) for w in windows], list(self.levels)))
                return windows

        return _Stream()


class _ReplayFrontEnd:
    """Gives back a recorded front end's windows and levels, push by push."""

    def __init__(self, frontend, pushes) -> None:
        self.frontend, self.pushes = frontend, pushes

    def __getattr__(self, name):
        return getattr(self.frontend, name)

    def stream(self):
        from edgekws.device.frontend import Window

        rep = self

        class _Stream:
            def __init__(self) -> None:
                self.i, self.levels = 0, []

            def push(self, block):
                if self.i >= len(rep.pushes):
                    raise RuntimeError("replay ran out of recorded audio blocks")
                wins, self.levels = rep.pushes[self.i]
                self.i += 1
                return [Window(x=np.zeros((1, 1, 1, 1), np.float32), start=a, end=b, level_count=c)
                        for a, b, c in wins]

        return _Stream()


def _detector(model, feature_config, threshold: float, frontend=None):
    from edgekws.device.runtime import Detector, DetectorConfig

    return Detector(model, feature_config, DetectorConfig(threshold=threshold), frontend=frontend)


def _play(det, audio: np.ndarray, sample_rate: int, block_ms: float = 20.0) -> list[Event]:
    from edgekws.device.runtime import run_detector
    from edgekws.device.stream import ArraySource

    src = ArraySource(audio, sample_rate, block_ms=block_ms)  # 20 ms blocks, as `listen --wav` reads a file
    return [Event(d.time, d.keyword, d.score) for d in run_detector(det, src)]


def default_tolerance(model, feature_config) -> float:
    """The detector's window plus the span its posterior smoothing covers (seconds)."""
    det = _detector(model, feature_config, 0.5)
    hop_s = det.hop * det.frontend.level_frame_ms / 1000.0
    return round(det.window_seconds + (det.cfg.smooth - 1) * hop_s, 3)


def run_stream(model, feature_config, audio: np.ndarray, threshold: float) -> list[Event]:
    """Play ``audio`` through a fresh detector with ``listen``'s defaults and ``threshold``; return the detections."""
    return _play(_detector(model, feature_config, threshold), audio, feature_config.sample_rate)


def evaluate(model, feature_config, streams: Sequence[Stream], thresholds: Sequence[float], *,
             default_threshold: float = 0.6, tolerance_s: float | None = None,
             progress: Callable[[str], None] | None = None) -> dict:
    """Score ``model`` on ``streams`` at ``default_threshold`` and over ``thresholds``.

    The default threshold runs everything (front end, graphs, detector). The sweep runs the detector's decisions
    (smoothing, gate, thresholds, re-arming, refractory time) again on the front end's windows and level frames
    and the logits recorded in that run; the sweep's pass at the default threshold must reproduce it exactly.
    """
    placements = [p for i, s in enumerate(streams) for p in _shifted(s, _offset(i, streams))]
    total = sum(s.seconds for s in streams)
    sr = feature_config.sample_rate
    if tolerance_s is None:
        tolerance_s = default_tolerance(model, feature_config)
    recorded: list[tuple[list, list, object]] = []
    events: list[Event] = []
    t0 = time.perf_counter()
    for i, s in enumerate(streams):
        rec_model = _Recorder(model)
        rec_front = _RecordingFrontEnd(_detector(model, feature_config, default_threshold).frontend)
        ev = _play(_detector(rec_model, feature_config, default_threshold, rec_front), s.audio, sr)
        recorded.append((rec_model.rows, rec_front.pushes, rec_front.frontend))
        events += [Event(e.time + _offset(i, streams), e.keyword, e.score) for e in ev]
        if progress:
            progress(f"stream {i + 1}/{len(streams)} ({s.seconds / 60:.1f} min): {len(ev)} detections")
    seconds_run = time.perf_counter() - t0
    default = score(placements, events, seconds=total, tolerance_s=tolerance_s)
    default["threshold"] = default_threshold
    default["events"] = [asdict(e) for e in events]
    curve = []
    for thr in sorted(set(thresholds) | {default_threshold}):
        ev_t: list[Event] = []
        for i, s in enumerate(streams):
            rows, pushes, frontend = recorded[i]
            det = _detector(_Replay(model, rows), feature_config, thr, _ReplayFrontEnd(frontend, pushes))
            ev_t += [Event(e.time + _offset(i, streams), e.keyword, e.score) for e in _play(det, s.audio, sr)]
        if thr == default_threshold and [(e.time, e.keyword) for e in ev_t] != [(e.time, e.keyword) for e in events]:
            raise RuntimeError("the replayed run did not reproduce the detector's own run")
        r = score(placements, ev_t, seconds=total, tolerance_s=tolerance_s)
        curve.append({"threshold": thr, "recall": r["recall"], "false_alarms": r["false_alarms"],
                      "false_alarms_per_hour": r["false_alarms_per_hour"]})
        if progress:
            progress(f"threshold {thr:g}: recall {100 * r['recall']:.1f} %, "
                     f"{r['false_alarms_per_hour']:.0f} false alarms/h")
    return {"default": default, "curve": curve, "seconds_audio": total, "seconds_first_pass": seconds_run,
            "tolerance_s": tolerance_s,
            "classes": list(model.classes), "temperature": float(getattr(model, "temperature", 1.0) or 1.0)}


def _offset(i: int, streams: Sequence[Stream]) -> float:
    return float(sum(s.seconds for s in streams[:i]))


def _shifted(s: Stream, off: float) -> list[Placement]:
    """A stream's placements moved by ``off`` seconds: streams are scored together on one time line."""
    return [Placement(p.kind, p.label, p.start + off, p.end + off, p.onset + off, p.offset + off, p.snr_db, p.source)
            for p in s.placements]


# ----------------------------------------------------------------------------------------------------------------
# Data: Speech Commands clips, background noise, synthetic other speech


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_speech(gsc: Path, keywords: Sequence[str]):
    """Held-out keyword clips (validation + test speakers) for the streams, and the train-speaker pool for labels."""
    from edgekws.datasets import load_dataset, split_indices
    from edgekws.datasets.cache import load_waveforms

    ds = load_dataset("gsc", gsc, keywords=tuple(keywords))
    waves = load_waveforms(ds)
    sp = split_indices(ds)
    held = np.concatenate([sp.val, sp.test])
    names = list(ds.class_names)
    stream_clips = [(waves[i], names[ds.labels[i]]) for i in held]
    pool = {"waves": waves[sp.train], "labels": [names[ds.labels[i]] for i in sp.train],
            "speakers": ds.groups[sp.train]}
    info = {"stream_clips": len(held), "stream_speakers": len(set(ds.groups[held].tolist())),
            "pool_clips": len(sp.train), "pool_speakers": len(set(ds.groups[sp.train].tolist())),
            "split": ds.meta.get("split")}
    assert not set(ds.groups[held].tolist()) & set(ds.groups[sp.train].tolist())
    return stream_clips, pool, info


def load_noises(gsc: Path, sample_rate: int) -> tuple[list[np.ndarray], list[str]]:
    from edgekws.audio import load_audio
    from edgekws.datasets.gsc import background_noise_files

    files = background_noise_files(gsc)
    if not files:
        raise SystemExit(f"{gsc}: no _background_noise_/ recordings")
    return [load_audio(f, sample_rate=sample_rate) for f in files], [f.name for f in files]


def synth_other_speech(n: int, seed: int, sample_rate: int) -> list[tuple[np.ndarray, str]]:
    """``n`` utterances that are not keywords: single Speech Commands non-keywords and 3-6 word sentences, in
    varied English espeak-ng voices, rates and pitches."""
    from edgekws import tts
    from edgekws.audio import resample

    rng = np.random.default_rng(seed)
    voices = [v for v in tts.english_voices()]
    variants = ["", "+m1", "+m3", "+f1", "+f2", "+f4", "+klatt2"]
    known = set(tts.list_variants())
    variants = [v for v in variants if not v or v[1:] in known]
    sp = tts.Speaker()
    out = []
    for i in range(n):
        if rng.random() < 0.5:
            text = str(rng.choice(OTHER_WORDS))
        else:
            text = " ".join(rng.choice(SENTENCE_WORDS, size=int(rng.integers(3, 7))).tolist())
        voice = str(rng.choice(voices)) + str(rng.choice(variants))
        y, sr = sp.synth(text, voice, rate=int(rng.integers(130, 200)), pitch=int(rng.integers(30, 70)), seed=i)
        y = resample(y, sr, sample_rate).astype(np.float32)
        a, b = active_span(y, sample_rate, below_peak_db=45.0)
        out.append((y[max(0, a - 800) : b + 800], text))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Models: the bundle as listen opens it, and fine-tuned local versions


def open_like_listen(bundle: Path, state: Path | None, public_key: Path | None, embedded_key: bool,
                     fmt: str | None = None, precision: str | None = None):
    """The model ``edgekws listen --bundle B [--state S]`` runs (same loader, same defaults)."""
    from edgekws.device import Spotter

    return Spotter.open(bundle, public_key=public_key, trust_embedded_key=embedded_key, state=state,
                        local=state is not None, fmt=fmt, precision=precision, threads=1).model


def finetune_variant(bundle: Path, public_key: Path | None, embedded_key: bool, pool: dict, per_class: int,
                     seed: int, state_root: Path, fmt: str | None, precision: str | None) -> dict:
    """Fine-tune the bundle's head on ``per_class`` labelled pool clips per keyword; returns the report."""
    from edgekws.device.finetune import FinetuneConfig, finetune
    from edgekws.device.model import state_dir_for

    from edgekws.audio import fit_length

    model = open_like_listen(bundle, state_root, public_key, embedded_key, fmt, precision)
    fc = model.feature_config
    rng = np.random.default_rng(seed)
    labels = np.asarray(pool["labels"])
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in sorted(set(labels))])
    clips = np.stack([fit_length(np.asarray(pool["waves"][i], np.float32), fc.clip_samples) for i in idx])
    Z = model.embed(model.clip_inputs(clips))  # the model's own front end, as `device collect` embeds clips
    state = state_dir_for(model.bundle, state_root)
    rep = finetune(model, None, state, FinetuneConfig(seed=seed), extra=(Z, [str(labels[i]) for i in idx]))
    rep["speakers"] = len(set(np.asarray(pool["speakers"])[idx].tolist()))
    return rep


# ----------------------------------------------------------------------------------------------------------------
# Report


def _plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekws.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        c = r["curve"]
        x = [max(p["false_alarms_per_hour"], 0.5) for p in c]
        line, = ax.plot(x, [100 * p["recall"] for p in c], marker="o", ms=3, label=name)
        d = r["default"]
        ax.plot([max(d["false_alarms_per_hour"], 0.5)], [100 * d["recall"]], marker="*", ms=12,
                color=line.get_color())
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    ax.axhline(85.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("false alarms per hour (log; 0 drawn at 0.5)")
    ax.set_ylabel("recall %")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, title="★ = default threshold", title_fontsize=8)
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def report(res: dict) -> str:
    a = res["args"]
    d = res["data"]
    L = [f"# Streaming keyword spotting: `{a['bundle']}`", "",
         (f"{len(res['streams'])} streams (seeds {', '.join(str(s['seed']) for s in res['streams'])}), "
         f"{res['seconds_audio'] / 60:.1f} min of audio in all: {d['stream_words']} real keyword clips from "
         f"{d['stream_speakers']} held-out Speech Commands speakers (`{a['gsc']}`, validation + test speakers of "
         f"the speaker-hash split), {d['speech_events']} stretches of other speech (espeak-ng, non-keywords and "
         f"short sentences), {d['noise_only']} noise-only stretches ({d['noise_only_seconds'] / 60:.1f} min), over `_background_noise_` segments at RMS "
         f"{a['noise_rms'][0]}–{a['noise_rms'][1]}; clips {a['gap_s'][0]}–{a['gap_s'][1]} s apart at "
         f"{a['snr_db'][0]}–{a['snr_db'][1]} dB SNR. Detector: `edgekws listen` defaults (hop 100 ms, smoothing 5, "
         f"refractory 1 s, gate 10 dB, the bundle's threshold), graph `{res['graph']}`, temperature "
         f"{next(iter(res['results'].values()))['temperature']:.3g}. A word counts as caught when a detection names it "
         f"between its onset and {res['tolerance_s']} s after its offset (the detector's window plus its smoothing "
         "span)."), "",
         (f"Machine: {res['machine'].get('cpu')}, {res['machine'].get('usable_cores')} usable cores, one thread; "
         f"load average at start {res['machine'].get('load_average_start')}. Run took {res['wall_s'] / 60:.1f} min."),
         "", f"## At the default threshold ({a['threshold']})", "",
         ("| model | labels per class | recall % | caught / words | false alarms | per hour | in noise / during "
         "other speech / wrong keyword |"), "|---|---|---|---|---|---|---|"]
    for name, r in res["results"].items():
        x = r["default"]
        k = x["false_alarm_kinds"]
        L.append(f"| {name} | {r.get('labels_per_class', 0)} | {100 * x['recall']:.1f} | {x['caught']} / "
                 f"{x['words']} | {x['false_alarms']} | {x['false_alarms_per_hour']:.0f} | {k['in_noise']} / "
                 f"{k['during_speech']} / {k['wrong_keyword']} |")
    L += ["", "## Recall vs false alarms per hour over thresholds", "",
          "| threshold | " + " | ".join(res["results"]) + " |", "|---|" + "---|" * len(res["results"])]
    thrs = [c["threshold"] for c in next(iter(res["results"].values()))["curve"]]
    for i, t in enumerate(thrs):
        cells = [f"{100 * r['curve'][i]['recall']:.1f} % / {r['curve'][i]['false_alarms_per_hour']:.0f}"
                 for r in res["results"].values()]
        L.append(f"| {t:g} | " + " | ".join(cells) + " |")
    L += ["", "Cells: recall / false alarms per hour.", "", "## Recall and false alarms by keyword (default threshold)",
          "", "| model | " + " | ".join(res["keywords"]) + " |", "|---|" + "---|" * len(res["keywords"])]
    for name, r in res["results"].items():
        x = r["default"]
        L.append(f"| {name} | " + " | ".join(
            f"{100 * x['recall_by_keyword'].get(k, 0):.0f} % / {x['false_alarms_by_keyword'].get(k, 0)}"
            for k in res["keywords"]) + " |")
    L += ["", "Cells: recall / false alarms naming that keyword.", "",
          "## Recall by the keyword's SNR over the local noise (default threshold)", ""]
    snrs = list(next(iter(res["results"].values()))["default"].get("recall_by_snr", {}))
    if snrs:
        L += ["| model | " + " | ".join(snrs) + " |", "|---|" + "---|" * len(snrs)]
        for name, r in res["results"].items():
            x = r["default"].get("recall_by_snr", {})
            L.append(f"| {name} | " + " | ".join(f"{100 * x.get(k, 0):.0f} %" for k in snrs) + " |")
    L += ["", f"![curve]({Path(res['png']).name})", ""]
    return "\n".join(L)


def merge(paths: Sequence[Path], name: str) -> int:
    """One report from several runs' results files (same bundle, streams and settings; different models)."""
    from edgekws.fileio import atomic_write_bytes, atomic_write_json

    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    keys = ("graph", "keywords", "tolerance_s", "seconds_audio")
    for p, other in zip(paths[1:], parts[1:]):
        if any(other[k] != first[k] for k in keys) or other["streams"] != first["streams"] \
                or other["args"]["bundle"] != first["args"]["bundle"]:
            raise SystemExit(f"{p} was measured on other streams, settings or bundle than {paths[0]}")
    results = {k: v for part in parts for k, v in part["results"].items()}
    order = sorted(results, key=lambda k: results[k].get("labels_per_class", 0))
    png = RESULTS / f"streaming_{name}.png"
    res = {**first, "results": {k: results[k] for k in order}, "png": str(png),
           "wall_s": sum(p["wall_s"] for p in parts), "merged_from": [str(p) for p in paths],
           "machine": {**first["machine"], "load_average_start": [p["machine"]["load_average_start"] for p in parts]}}
    a = first["args"]
    _plot(res["results"], png, f"{a['bundle']} on {res['seconds_audio'] / 60:.0f} min of streams (seeds {a['seed']}.."
                               f"{a['seed'] + a['streams'] - 1})")
    atomic_write_json(RESULTS / f"streaming_{name}.json", res)
    atomic_write_bytes(RESULTS / f"streaming_{name}.md", report(res).encode())
    _log(f"wrote {RESULTS / f'streaming_{name}'}.json|md|png from {len(parts)} runs")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--gsc", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "gsc-dev")
    ap.add_argument("--public-key", type=Path, default=None)
    ap.add_argument("--embedded-key", action="store_true")
    ap.add_argument("--format", dest="fmt", default=None)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--streams", type=int, default=12)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0, help="streams use seeds seed .. seed+streams-1")
    ap.add_argument("--threshold", type=float, default=None,
                    help="the detector's threshold (default: as listen, the bundle's, else 0.6)")
    ap.add_argument("--thresholds", default=",".join(map(str, DEFAULT_THRESHOLDS)))
    ap.add_argument("--tolerance", dest="tolerance_s", type=float, default=None,
                    help="seconds after a word's offset a detection may come (default: window + smoothing span)")
    ap.add_argument("--gap", dest="gap_s", type=float, nargs=2, default=(1.0, 3.0))
    ap.add_argument("--snr", dest="snr_db", type=float, nargs=2, default=(5.0, 20.0))
    ap.add_argument("--noise-rms", type=float, nargs=2, default=(0.002, 0.03))
    ap.add_argument("--finetune", default="5,10,20", help="labels per class for fine-tuned variants ('' for none)")
    ap.add_argument("--other-speech", type=int, default=120, help="synthetic non-keyword utterances to draw from")
    ap.add_argument("--name", default=None, help="results/streaming_<name>.* (default: the bundle's parent folder)")
    ap.add_argument("--save-wav", type=Path, default=None, help="also write stream 0 as a WAV here")
    ap.add_argument("--no-bundle", action="store_true", help="only the fine-tuned variants (runs split over "
                    "processes; join them with --merge)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="join the results files of runs on the same streams into streaming_<name>.*")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.name or "merged")
    if args.bundle is None:
        ap.error("--bundle is required")

    from edgekws.machine import describe_machine
    from edgekws.fileio import atomic_write_bytes, atomic_write_json

    t_start = time.perf_counter()
    machine = describe_machine()
    base = open_like_listen(args.bundle, None, args.public_key, args.embedded_key, args.fmt, args.precision)
    fc = base.feature_config
    if args.threshold is None:
        from edgekws.device.runtime import DetectorConfig

        args.threshold = base.bundle.detector.get("threshold", DetectorConfig.threshold)
    keywords = [c for c in base.classes if is_detection_class(c)]
    missing = [k for k in keywords if not (args.gsc / k).is_dir()]
    if missing:
        raise SystemExit(f"{args.gsc} has no clips for the bundle's keyword(s) {missing}")
    _log(f"bundle {args.bundle}: classes {list(base.classes)}, graph {base.fmt}/{base.precision}, "
         f"temperature {base.temperature:.3g}")
    stream_clips, pool, data_info = load_speech(args.gsc, keywords)
    noises, noise_names = load_noises(args.gsc, fc.sample_rate)
    _log(f"{data_info['stream_clips']} stream clips ({data_info['stream_speakers']} speakers), label pool "
         f"{data_info['pool_clips']} clips ({data_info['pool_speakers']} speakers)")
    other = synth_other_speech(args.other_speech, args.seed, fc.sample_rate) if args.other_speech else []
    _log(f"{len(other)} synthetic non-keyword utterances")
    streams = [build_stream(stream_clips, noises, seconds=60 * args.minutes, seed=args.seed + i, distractors=other,
                            sample_rate=fc.sample_rate, gap_s=tuple(args.gap_s), snr_db=tuple(args.snr_db),
                            noise_rms=tuple(args.noise_rms))
               for i in range(args.streams)]
    if args.save_wav:
        from edgekws.audio import save_wav

        save_wav(args.save_wav, streams[0].audio, fc.sample_rate)
        atomic_write_json(args.save_wav.with_suffix(".json"), [asdict(p) for p in streams[0].placements])
    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    results: dict[str, dict] = {}

    def run(name: str, model, extra: dict) -> None:
        _log(f"{name}: {len(streams)} streams")
        r = evaluate(model, fc, streams, thresholds, default_threshold=args.threshold, tolerance_s=args.tolerance_s,
                     progress=lambda m: _log(f"  {name}: {m}"))
        r.update(extra)
        d = r["default"]
        _log(f"{name}: recall {100 * d['recall']:.1f} % ({d['caught']}/{d['words']}), {d['false_alarms']} false "
             f"alarms = {d['false_alarms_per_hour']:.0f}/h")
        results[name] = r

    name = args.name or args.bundle.resolve().parent.name
    RESULTS.mkdir(exist_ok=True)
    png = RESULTS / f"streaming_{name}.png"

    def write() -> None:  # after every model: a long run that is stopped keeps what it measured
        res = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "machine": machine, "graph": f"{base.fmt}/{base.precision}", "keywords": keywords,
               "tolerance_s": next(iter(results.values()))["tolerance_s"],
               "noise_files": noise_names, "seconds_audio": sum(s.seconds for s in streams),
               "data": {**data_info, "stream_words": sum(len(s.keywords()) for s in streams),
                        "speech_events": sum(len(s.placements) - len(s.keywords()) for s in streams),
                        "noise_only": sum(len(s.noise_only) for s in streams),
                        "noise_only_seconds": sum(b - a for s in streams for a, b in s.noise_only)},
               "streams": [{"seed": s.seed, "seconds": s.seconds, "keywords": len(s.keywords()),
                            "other_speech": len(s.placements) - len(s.keywords()), "noise_only": s.noise_only,
                            "noise_segments": s.noise_segments,
                            "placements": [asdict(p) for p in s.placements]} for s in streams],
               "results": results, "png": str(png), "wall_s": time.perf_counter() - t_start}
        _plot(results, png, f"{args.bundle} on {res['seconds_audio'] / 60:.0f} min of streams (seeds {args.seed}.."
                            f"{args.seed + args.streams - 1})")
        atomic_write_json(RESULTS / f"streaming_{name}.json", res)
        atomic_write_bytes(RESULTS / f"streaming_{name}.md", report(res).encode())
        _log(f"wrote {RESULTS / f'streaming_{name}'}.json|md|png ({len(results)} model(s))")

    if not args.no_bundle:
        run("bundle", base, {"labels_per_class": 0})
        write()
    for n in [int(v) for v in args.finetune.split(",") if v.strip()]:
        with tempfile.TemporaryDirectory(prefix="stream-ft-") as st:
            rep = finetune_variant(args.bundle, args.public_key, args.embedded_key, pool, n, args.seed, Path(st),
                                   args.fmt, args.precision)
            model = open_like_listen(args.bundle, Path(st), args.public_key, args.embedded_key, args.fmt,
                                     args.precision)
            if model.version != rep["version"]:
                raise RuntimeError(f"listen did not pick up the fine-tuned version {rep['version']}")
            run(f"fine-tuned {n}/class", model, {"labels_per_class": n, "finetune": {
                k: rep[k] for k in ("n_labeled", "n_coreset", "train_accuracy", "seconds", "speakers")}})
        write()

    return 0


if __name__ == "__main__":
    sys.exit(main())
