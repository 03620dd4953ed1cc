"""Detectors measured on streams whose words are known: record a front end once, replay decisions, score them.

The streaming detector (:class:`~edgekws.device.runtime.Detector`) makes its decisions from three things per hop:
the window's logits, the window's place in time and the level frames its gate reads. :func:`record` plays a stream
through a front end exactly as ``listen`` feeds it (blocks of 20 ms) and keeps all of that plus every window's model
input; :func:`replay` then runs the detector's decisions again for any logits (another head, another temperature)
and any :class:`~edgekws.device.runtime.DetectorConfig` without touching the audio or the front-end graphs. A replay
with the recorded model's logits gives exactly the detections of the live run (tested).

:func:`score` counts caught words and false alarms; :func:`choose_threshold` picks the detector threshold a bundle
ships with, on streams held out from training. Torch-free: the server and the benchmarks use it, a device could.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .frontend import Window
from .runtime import Detection, Detector, DetectorConfig, run_detector

__all__ = ["Recording", "SpokenWord", "choose_threshold", "record", "replay", "score"]


@dataclass
class Recording:
    """A front end's output over one stream: per ``push`` of ``block_samples`` audio samples, the windows that
    became complete ``(start, end, level_count)`` and the level frames it computed; every window's model input
    ``inputs (n, 1, H, W)`` in order; the stream's length in seconds."""

    pushes: list[tuple[list[tuple[float, float, int]], list[float]]]
    inputs: np.ndarray
    seconds: float
    block_samples: int


@dataclass(frozen=True)
class SpokenWord:
    """Something said in a stream: ``label`` (a keyword, or any text for other speech), where it is audible."""

    label: str
    onset: float
    offset: float
    keyword: bool = True


def record(frontend, audio: np.ndarray, sample_rate: int = 16000, block_ms: float = 20.0) -> Recording:
    """Play ``audio`` through ``frontend.stream()`` in blocks of ``block_ms`` (as ``listen --wav`` does)."""
    y = np.asarray(audio, np.float32).reshape(-1)
    n = max(1, round(sample_rate * block_ms / 1000.0))
    st = frontend.stream()
    pushes, xs = [], []
    for i in range(0, len(y), n):
        wins = st.push(y[i: i + n])
        pushes.append(([(float(w.start), float(w.end), int(w.level_count)) for w in wins], list(st.levels)))
        xs += [w.x[0] for w in wins]
    shape = tuple(getattr(frontend, "input_shape", ()))
    inputs = np.stack(xs) if xs else np.zeros((0, 1, *shape), np.float32)
    return Recording(pushes=pushes, inputs=inputs, seconds=len(y) / sample_rate, block_samples=n)


class _ReplayModel:
    def __init__(self, logits: np.ndarray, classes: Sequence[str], temperature: float) -> None:
        self.rows, self.classes, self.temperature, self.i = np.asarray(logits, np.float32), tuple(classes), \
            float(temperature), 0

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.i >= len(self.rows):
            raise RuntimeError("replay ran out of logits: they do not belong to this recording")
        z = self.rows[self.i: self.i + 1]
        self.i += 1
        return z


class _ReplayFrontEnd:
    def __init__(self, frontend, rec: Recording) -> None:
        self.frontend, self.rec = frontend, rec

    def __getattr__(self, name):
        return getattr(self.frontend, name)

    def stream(self):
        rec = self.rec

        class _Stream:
            def __init__(self) -> None:
                self.i, self.levels = 0, []

            def push(self, block):
                wins, self.levels = rec.pushes[self.i]
                self.i += 1
                return [Window(x=np.zeros((1, 1, 1, 1), np.float32), start=a, end=b, level_count=c)
                        for a, b, c in wins]

        return _Stream()


def replay(frontend, rec: Recording, logits: np.ndarray, classes: Sequence[str], config: DetectorConfig,
           temperature: float = 1.0) -> list[Detection]:
    """The detections a :class:`Detector` with ``config`` makes on the recorded stream when its model gives
    ``logits`` (one row per recorded window) at ``temperature``."""
    if len(logits) != len(rec.inputs):
        raise ValueError(f"{len(logits)} logits rows for {len(rec.inputs)} recorded windows")
    det = Detector(_ReplayModel(logits, classes, temperature), None, config, frontend=_ReplayFrontEnd(frontend, rec))
    blocks = (np.zeros(rec.block_samples, np.float32) for _ in rec.pushes)
    return list(run_detector(det, blocks))


def score(words: Sequence[SpokenWord], detections: Sequence[tuple[float, str]], *, seconds: float,
          tolerance_s: float) -> dict:
    """Recall and false alarms of ``detections`` ``(time, label)`` against the ``words`` of a stream.

    A keyword is caught by the first unused detection of its label whose time lies in ``[onset, offset +
    tolerance_s]``; each detection catches at most one word. Labels starting with ``_`` are no detections. Every
    other detection is a false alarm: ``wrong_keyword`` inside a keyword's span (another keyword, or a second
    detection of one already caught), ``during_speech`` inside the span of other speech, else ``in_noise``.
    """
    kws = sorted((w for w in words if w.keyword), key=lambda w: w.onset)
    speech = [w for w in words if not w.keyword]
    dets = sorted(((float(t), str(k)) for t, k in detections if not str(k).startswith("_")), key=lambda d: d[0])
    caught = [False] * len(kws)
    used = [False] * len(dets)
    for i, w in enumerate(kws):
        for j, (t, k) in enumerate(dets):
            if not used[j] and k == w.label and w.onset <= t <= w.offset + tolerance_s:
                caught[i] = used[j] = True
                break
    fa = {"wrong_keyword": 0, "during_speech": 0, "in_noise": 0}
    fa_by_keyword: dict[str, int] = {}
    for j, (t, k) in enumerate(dets):
        if used[j]:
            continue
        if any(w.onset <= t <= w.offset + tolerance_s for w in kws):
            fa["wrong_keyword"] += 1
        elif any(s.onset <= t <= s.offset + tolerance_s for s in speech):
            fa["during_speech"] += 1
        else:
            fa["in_noise"] += 1
        fa_by_keyword[k] = fa_by_keyword.get(k, 0) + 1
    per_kw: dict[str, list[int]] = {}
    for w, c in zip(kws, caught):
        per_kw.setdefault(w.label, [0, 0])
        per_kw[w.label][0] += int(c)
        per_kw[w.label][1] += 1
    n_fa = sum(fa.values())
    hours = seconds / 3600.0
    return {"words": len(kws), "caught": int(sum(caught)), "recall": sum(caught) / len(kws) if kws else 0.0,
            "detections": len(dets), "false_alarms": n_fa,
            "false_alarms_per_hour": n_fa / hours if hours > 0 else 0.0,
            "false_alarm_kinds": fa, "false_alarms_by_keyword": dict(sorted(fa_by_keyword.items())),
            "recall_by_keyword": {k: v[0] / v[1] for k, v in sorted(per_kw.items())},
            "seconds": seconds, "tolerance_s": tolerance_s}


THRESHOLD_GRID: tuple[float, ...] = tuple(sorted({float(v) for v in np.round(np.concatenate([
    np.arange(0.3, 0.99, 0.01), np.arange(0.99, 0.999, 0.001), [0.999, 0.9995, 0.9999]]), 4)}))
"""Thresholds :func:`choose_threshold` tries: calibrated posteriors of a confident head crowd near 1."""


def default_tolerance(frontend, config: DetectorConfig) -> float:
    """The detector's window plus the span its posterior smoothing covers (seconds): the latest a detection of a
    word can come after the word ended."""
    hop_s = frontend.hop_level_frames * frontend.level_frame_ms / 1000.0
    return round(frontend.window_seconds + (config.smooth - 1) * hop_s, 3)


def choose_threshold(frontend, recordings: Sequence[Recording], logits: Sequence[np.ndarray],
                     words: Sequence[Sequence[SpokenWord]], classes: Sequence[str], config: DetectorConfig, *,
                     temperature: float = 1.0, max_false_alarms_per_hour: float = 10.0,
                     grid: Sequence[float] = THRESHOLD_GRID,
                     progress: Callable[[float, dict], None] | None = None) -> tuple[float, list[dict]]:
    """The lowest threshold of ``grid`` whose false alarms per hour over all ``recordings`` stay at or below
    ``max_false_alarms_per_hour`` (the highest threshold when none does), and the curve ``[{threshold, recall,
    false_alarms, false_alarms_per_hour}]`` it was chosen from. Lower thresholds catch more words: recall rises
    as the threshold falls, false alarms too."""
    tol = default_tolerance(frontend, config)
    seconds = sum(r.seconds for r in recordings)
    curve = []
    for thr in sorted(grid, reverse=True):
        cfg = replace(config, threshold=float(thr), thresholds={})
        dets, ws, off = [], [], 0.0
        for rec, lg, wd in zip(recordings, logits, words):
            dets += [(d.time + off, d.keyword) for d in replay(frontend, rec, lg, classes, cfg, temperature)]
            ws += [SpokenWord(w.label, w.onset + off, w.offset + off, w.keyword) for w in wd]
            off += rec.seconds
        r = score(ws, dets, seconds=seconds, tolerance_s=tol)
        point = {"threshold": float(thr), "recall": r["recall"], "false_alarms": r["false_alarms"],
                 "false_alarms_per_hour": r["false_alarms_per_hour"]}
        curve.append(point)
        if progress is not None:
            progress(float(thr), point)
        if r["false_alarms_per_hour"] > max_false_alarms_per_hour:
            break  # lower thresholds only add detections
    ok = [p for p in curve if p["false_alarms_per_hour"] <= max_false_alarms_per_hour]
    best = min(ok, key=lambda p: p["threshold"]) if ok else max(curve, key=lambda p: p["threshold"])
    return best["threshold"], sorted(curve, key=lambda p: p["threshold"])
