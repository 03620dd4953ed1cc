"""Synthetic streams for the speech-embedding head: the windows a detector sees, and where its threshold goes.

Training streams (voices of the synthetic set's training fold, :func:`edgekws.datasets.synthetic_streams.render_stream`)
are embedded once and cut into every detector window (9 embeddings, one every 80 ms); each window is labelled by
what lies inside it (:func:`~edgekws.datasets.synthetic_streams.window_labels`: a whole keyword, no keyword, or
left out). Validation streams (validation-fold voices, never trained on) are played through the device's own front
end as ``listen`` plays audio (:func:`edgekws.device.detection.record`); on them the head's softmax temperature is
fitted (with the validation clips) and the detector threshold is chosen (:func:`calibrate_detector`).

Rendering and embedding run in worker processes, one stream per task, each stream cached on disk under a key of
everything it depends on, so they depend on neither the order nor the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekws.datasets.cache import default_cache_dir
from edgekws.fileio import atomic_open

__all__ = ["StreamConfig", "calibrate_detector", "fit_temperature", "training_windows", "validation_streams"]

Progress = Callable[[dict[str, Any]], None]


@dataclass
class StreamConfig:
    """How many synthetic streams train the head and calibrate the detector, and how they are used."""

    train: int = 30  # training-fold streams whose windows join the training clips (0: none)
    val: int = 20  # validation-fold streams for the temperature and the threshold (0: neither)
    seconds: float = 60.0
    margin_s: float = 0.1  # a keyword window holds the whole word this far from both edges
    negative_below: float = 0.5  # a window with at most this much of any keyword is a non-keyword window
    positives_per_epoch: int = 2500  # keyword windows drawn per epoch (of all the streams')
    negatives_per_epoch: int = 5000  # non-keyword windows drawn per epoch
    max_false_alarms_per_hour: float = 50.0  # on the validation streams (speech-dense), for the shipped threshold
    workers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _workers(n: int | None) -> int:
    if n:
        return max(1, int(n))
    try:
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(os.cpu_count() or 1, 8))


def _stream_key(kind: str, vocabulary: Sequence[str], fold: str, index: int, seed: int, seconds: float) -> str:
    from edgekws import tts
    from edgekws.datasets.synthetic import voice_pool
    from edgekws.datasets.synthetic_streams import STREAM_VERSION
    from edgekws.speech_embedding import GRAPHS

    return json.dumps({"kind": kind, "stream": STREAM_VERSION, "vocabulary": list(vocabulary), "fold": fold,
                       "index": int(index), "seed": int(seed), "seconds": round(float(seconds), 3),
                       "espeak": tts.version(), "voices": hashlib.sha256("|".join(voice_pool()).encode()).hexdigest(),
                       "graphs": {k: v[1] for k, v in GRAPHS.items()}}, sort_keys=True)


def _cache_file(key: str) -> Path:
    return default_cache_dir() / "streams" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def _save(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _train_stream(args: tuple) -> tuple[np.ndarray, list[dict]]:
    """Embeddings ``(n, 96)`` and events of one training stream (cached)."""
    vocabulary, index, seed, seconds = args
    key = _stream_key("embeddings", vocabulary, "train", index, seed, seconds)
    path = _cache_file(key)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return z["embeddings"], json.loads(str(z["events"]))
        except (OSError, ValueError, KeyError, EOFError):
            pass  # damaged entry: made again
    from edgekws.datasets.synthetic_streams import render_stream
    from edgekws.speech_embedding import SpeechEmbedder

    y, events = render_stream(index, seed=seed, seconds=seconds, vocabulary=vocabulary, fold="train")
    emb = SpeechEmbedder(threads=1).embeddings(y)
    ev = [e.to_dict() for e in events]
    _save(path, embeddings=emb, events=np.array(json.dumps(ev)), key=np.array(key))
    return emb, ev


def _val_stream(args: tuple) -> tuple[dict[str, np.ndarray], list[dict]]:
    """One validation stream as the device front end records it (cached)."""
    vocabulary, index, seed, seconds, graphs, fe_config = args
    key = _stream_key("recording", vocabulary, "val", index, seed, seconds)
    path = _cache_file(key)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return {k: z[k] for k in z.files if k not in ("key", "events")}, json.loads(str(z["events"]))
        except (OSError, ValueError, KeyError, EOFError):
            pass
    from edgekws.device.detection import record
    from edgekws.device.frontend import EmbeddingFrontEnd

    from edgekws.datasets.synthetic_streams import render_stream

    y, events = render_stream(index, seed=seed, seconds=seconds, vocabulary=vocabulary, fold="val")
    rec = record(EmbeddingFrontEnd(graphs, fe_config, threads=1), y)
    arrays = _pack(rec)
    ev = [e.to_dict() for e in events]
    _save(path, **arrays, events=np.array(json.dumps(ev)), key=np.array(key))
    return arrays, ev


def _pack(rec) -> dict[str, np.ndarray]:
    wins = [w for ws, _ in rec.pushes for w in ws]
    return {"inputs": rec.inputs.astype(np.float32),
            "n_windows": np.array([len(ws) for ws, _ in rec.pushes], np.int32),
            "n_levels": np.array([len(lv) for _, lv in rec.pushes], np.int32),
            "windows": np.array(wins, np.float64).reshape(-1, 3),
            "levels": np.array([v for _, lv in rec.pushes for v in lv], np.float64),
            "meta": np.array([rec.seconds, rec.block_samples], np.float64)}


def _unpack(a: dict[str, np.ndarray]):
    from edgekws.device.detection import Recording

    pushes, wi, li = [], 0, 0
    for nw, nl in zip(a["n_windows"].tolist(), a["n_levels"].tolist()):
        ws = [(float(s), float(e), int(c)) for s, e, c in a["windows"][wi: wi + nw]]
        pushes.append((ws, a["levels"][li: li + nl].tolist()))
        wi, li = wi + nw, li + nl
    return Recording(pushes=pushes, inputs=a["inputs"], seconds=float(a["meta"][0]), block_samples=int(a["meta"][1]))


def _map(fn, jobs: list, workers: int, progress: Progress | None, event: str) -> list:
    out: list = [None] * len(jobs)
    if progress:
        progress({"event": event, "done": 0, "total": len(jobs)})
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            out[i] = fn(job)
            if progress:
                progress({"event": event, "done": i + 1, "total": len(jobs)})
        return out
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        for i, fut in enumerate(futures):
            out[i] = fut.result()
            if progress:
                progress({"event": event, "done": i + 1, "total": len(jobs)})
    return out


def _windows(emb: np.ndarray, n: int) -> np.ndarray:
    """Every run of ``n`` consecutive embeddings as a model input ``(k, 96, n)``."""
    k = len(emb) - n + 1
    if k <= 0:
        return np.zeros((0, emb.shape[1] if emb.ndim == 2 else 96, n), np.float32)
    idx = np.arange(k)[:, None] + np.arange(n)[None]
    return np.ascontiguousarray(emb[idx].transpose(0, 2, 1), dtype=np.float32)


def training_windows(vocabulary: Sequence[str], cfg: StreamConfig, *, seed: int = 0, n_windows: int = 9,
                     progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labelled windows ``(N, 96, n_windows)`` of ``cfg.train`` training streams; labels index ``vocabulary``,
    ``len(vocabulary)`` is the non-keyword class; windows left out of training are dropped."""
    from edgekws.datasets.synthetic_streams import (
        StreamEvent,
        window_labels,
        window_spans,
    )

    jobs = [(tuple(vocabulary), i, int(seed), float(cfg.seconds)) for i in range(int(cfg.train))]
    parts = _map(_train_stream, jobs, _workers(cfg.workers), progress, "training streams")
    xs, ys = [], []
    for emb, ev in parts:
        w = _windows(emb, n_windows)
        lab = window_labels([StreamEvent(**e) for e in ev], window_spans(len(w), n_embeddings=n_windows),
                            vocabulary, margin_s=cfg.margin_s, negative_below=cfg.negative_below)
        keep = lab >= 0
        xs.append(w[keep])
        ys.append(lab[keep])
    if not xs:
        return np.zeros((0, 96, n_windows), np.float32), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def validation_streams(vocabulary: Sequence[str], cfg: StreamConfig, graphs: dict[str, Path],
                       fe_config: dict[str, Any], *, seed: int = 0, progress: Progress | None = None) -> list[tuple]:
    """``cfg.val`` validation streams, each ``(Recording, events)`` as the device front end records it."""
    jobs = [(tuple(vocabulary), i, int(seed), float(cfg.seconds), {k: str(v) for k, v in graphs.items()},
             dict(fe_config)) for i in range(int(cfg.val))]
    parts = _map(_val_stream, jobs, _workers(cfg.workers), progress, "validation streams")
    return [(_unpack(a), ev) for a, ev in parts]


def window_targets(rec, events: list[dict], vocabulary: Sequence[str], cfg: StreamConfig) -> np.ndarray:
    """Labels of a recording's windows (as :func:`training_windows` labels them), from their recorded spans."""
    from edgekws.datasets.synthetic_streams import StreamEvent, window_labels

    spans = np.array([(s, e) for ws, _ in rec.pushes for s, e, _ in ws], np.float64).reshape(-1, 2)
    return window_labels([StreamEvent(**e) for e in events], spans, vocabulary, margin_s=cfg.margin_s,
                         negative_below=cfg.negative_below)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """The softmax temperature minimising the negative log-likelihood of ``labels`` (a grid from 0.05 to 20), and
    the NLL at 1 and at the fit."""
    z = np.asarray(logits, np.float64)
    t = np.asarray(labels, np.int64)

    def nll(T: float) -> float:
        s = z / T
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(t)), t]))

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    vals = [nll(float(T)) for T in grid]
    best = float(grid[int(np.argmin(vals))])
    return best, {"nll_at_1": nll(1.0), "nll": min(vals), "n": len(t)}


def calibrate_detector(logits_fn: Callable[[np.ndarray], np.ndarray], classes: Sequence[str],
                       val_clips: tuple[np.ndarray, np.ndarray] | None, streams: list[tuple],
                       vocabulary: Sequence[str], graphs: dict[str, Path], fe_config: dict[str, Any],
                       cfg: StreamConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Temperature (validation clips + labelled validation-stream windows) and the detector threshold (the lowest
    whose false alarms on the validation streams stay within ``cfg.max_false_alarms_per_hour``).

    Returns the ``detector`` entry a bundle ships: ``temperature``, ``threshold`` and how they were chosen.
    """
    from edgekws.device.detection import SpokenWord, choose_threshold
    from edgekws.device.frontend import EmbeddingFrontEnd
    from edgekws.device.runtime import DetectorConfig

    zs, ts = [], []
    if val_clips is not None and len(val_clips[0]):
        zs.append(logits_fn(val_clips[0]))
        ts.append(np.asarray(val_clips[1]))
    stream_logits = [logits_fn(rec.inputs[:, 0]) for rec, _ in streams]
    for (rec, ev), lg in zip(streams, stream_logits):
        lab = window_targets(rec, ev, vocabulary, cfg)
        zs.append(lg[lab >= 0])
        ts.append(lab[lab >= 0])
    out: dict[str, Any] = {"temperature": 1.0, "threshold": None}
    if zs:
        T, stats = fit_temperature(np.concatenate(zs), np.concatenate(ts))
        out.update(temperature=round(T, 4), temperature_fit={**stats, "on": "synthetic validation voices: clips and "
                                                             "stream windows"})
    if streams:
        fe = EmbeddingFrontEnd(graphs, fe_config, threads=1)
        words = [[SpokenWord(e["text"], e["onset"], e["offset"], e["kind"] == "keyword") for e in ev]
                 for _, ev in streams]
        base = DetectorConfig()
        thr, curve = choose_threshold(
            fe, [r for r, _ in streams], stream_logits, words, classes, base, temperature=out["temperature"],
            max_false_alarms_per_hour=cfg.max_false_alarms_per_hour,
            progress=(lambda t, p: progress({"event": "threshold", **p})) if progress else None)
        out.update(threshold=thr, chosen_on={
            "streams": len(streams), "minutes": round(sum(r.seconds for r, _ in streams) / 60.0, 2),
            "voices": "synthetic validation fold", "max_false_alarms_per_hour": cfg.max_false_alarms_per_hour,
            "curve": curve})
    return out
