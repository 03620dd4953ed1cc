"""Segment what the device heard, embed it, and choose the few clips worth asking a person about.

- :func:`segment` finds speech/event regions with an energy VAD (frame RMS above an adaptive noise floor), or the
  "spectral" variant that also requires a non-flat spectrum (rejects broadband noise bursts).
- :func:`clip_windows` turns regions into model-length windows centred on each region's energy.
- :func:`choose` picks prototypes from embeddings: ``kcenter`` (greedy farthest-first cover), ``kmedoids``
  (Voronoi iteration started from the k-center cover), ``uncertain`` (smallest top-1/top-2 posterior margin),
  ``hybrid`` (half k-center cover, half most uncertain) or ``random``. Measured on real Speech Commands
  (``benchmarks/results/device_finetune.md``), k-center came closest to random sampling and the uncertainty-based
  choices did worst, so k-center is the default.
- :func:`collect` runs the whole step on a waveform or a sound file and records clips and requests in a
  :class:`LabelStore`; a file is read in blocks (:func:`noise_floor`, then :class:`Segmenter`), so memory does not
  grow with its length.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekws.audio import save_wav
from edgekws.features import FeatureConfig, mfcc

from .runtime import softmax
from .store import LabelStore

__all__ = [
    "METHODS",
    "NoiseFloor",
    "Segmenter",
    "VADConfig",
    "choose",
    "clip_windows",
    "collect",
    "margins",
    "noise_floor",
    "segment",
    "window_features",
]

METHODS = ("kcenter", "kmedoids", "uncertain", "hybrid", "random")


@dataclass(frozen=True)
class VADConfig:
    method: str = "energy"  # "energy" | "spectral"
    frame_ms: float = 20.0
    margin_db: float = 12.0  # above the noise floor
    min_db: float = -60.0  # never call anything quieter than this active
    flatness: float = 0.5  # "spectral": frames flatter than this are noise
    min_ms: float = 120.0
    max_gap_ms: float = 250.0
    pad_ms: float = 80.0

    def __post_init__(self) -> None:
        if self.method not in ("energy", "spectral"):
            raise ValueError(f"unknown VAD method {self.method!r} (energy or spectral)")
        if self.frame_ms <= 0 or self.min_ms < 0 or self.max_gap_ms < 0 or self.pad_ms < 0:
            raise ValueError("VAD durations must be positive")


def _frame_stats(y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    m = len(y) // n
    fr = y[: m * n].reshape(m, n).astype(np.float64)
    rms_db = 10 * np.log10(np.mean(fr**2, axis=1) + 1e-12)
    spec = np.abs(np.fft.rfft(fr * np.hanning(n), axis=1)) ** 2 + 1e-12
    flat = np.exp(np.mean(np.log(spec), axis=1)) / np.mean(spec, axis=1)
    return rms_db, flat


class NoiseFloor:
    """The 10th percentile of frame levels, from a histogram of 0.01 dB steps: one pass, fixed memory on any
    length. Equal to ``np.percentile(round(levels, 2), 10)`` of all levels seen (within float rounding)."""

    STEP = 100  # bins per dB
    LO, HI = -130 * STEP, 60 * STEP  # levels outside are counted at the edge bins

    def __init__(self, q: float = 10.0) -> None:
        self.q = q
        self.counts = np.zeros(self.HI - self.LO + 1, np.int64)
        self.n = 0

    def add(self, levels_db: np.ndarray) -> None:
        k = np.clip(np.rint(np.asarray(levels_db, np.float64) * self.STEP), self.LO, self.HI).astype(np.int64)
        self.counts += np.bincount(k - self.LO, minlength=len(self.counts))
        self.n += len(k)

    def value(self) -> float:
        if self.n == 0:
            return float("nan")
        rank = self.q / 100.0 * (self.n - 1)
        lo, frac = int(np.floor(rank)), rank - np.floor(rank)
        cum = np.cumsum(self.counts)
        v_lo = int(np.searchsorted(cum, lo + 1))
        v_hi = int(np.searchsorted(cum, min(lo + 2, self.n)))
        q_lo, q_hi = (v_lo + self.LO) / self.STEP, (v_hi + self.LO) / self.STEP
        return float(q_lo + frac * (q_hi - q_lo))


class _Frames:
    """Cuts a stream into whole frames of ``n`` samples (the remainder waits for the next block)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._rest = np.zeros(0, np.float32)

    def push(self, block: np.ndarray) -> np.ndarray:
        y = np.concatenate([self._rest, np.asarray(block, np.float32).reshape(-1)])
        m = len(y) // self.n
        self._rest = y[m * self.n :]
        return y[: m * self.n]


def noise_floor(blocks: Iterable[np.ndarray], sample_rate: int = 16000, cfg: VADConfig | None = None) -> float:
    """The VAD's noise floor (dB) of a stream: the first pass of :func:`segment` over a long recording."""
    cfg = cfg or VADConfig()
    n = max(1, round(sample_rate * cfg.frame_ms / 1000))
    frames, floor = _Frames(n), NoiseFloor()
    for block in blocks:
        y = frames.push(block)
        if len(y):
            floor.add(_frame_stats(y, n)[0])
    return floor.value()


class Segmenter:
    """The second pass of :func:`segment` and :func:`clip_windows` over a stream, in bounded memory.

    ``push(block)`` returns the model-length clips that became final, as ``(start, end, clip)`` with ``clip``
    ``(clip_samples,)`` float32 (zero-padded past the end of the audio); ``finish()`` returns the rest. Only the
    audio a pending clip may still need is kept (a few seconds), whatever the length of the stream. The clips equal
    ``clip_windows(y, segment(y))`` of the whole recording (tested).
    """

    def __init__(
        self, floor_db: float, sample_rate: int, clip_samples: int | None, cfg: VADConfig | None = None
    ) -> None:
        """``clip_samples=None``: find segments only (no clips, no audio kept)."""
        self.cfg = cfg or VADConfig()
        self.windows = clip_samples is not None
        clip_samples = clip_samples or 0
        self.n = max(1, round(sample_rate * self.cfg.frame_ms / 1000))
        self.clip = int(clip_samples)
        self.threshold = max(floor_db + self.cfg.margin_db, self.cfg.min_db)
        self.gap = round(self.cfg.max_gap_ms / self.cfg.frame_ms)
        self.pad = round(self.cfg.pad_ms / self.cfg.frame_ms)
        self.min_frames = self.cfg.min_ms / self.cfg.frame_ms
        self._frames = _Frames(self.n)
        self._i = 0  # frames seen
        self._raw: list[int] | None = None  # open run of active frames [A, B)
        self._out: list[int] | None = None  # open padded segment [a, b) in frames
        self._tiled = 0  # tiles already taken from a long open segment
        self._pending: list[int] = []  # window starts waiting for their audio, in order
        self.segments: list[tuple[int, int]] = []  # finished segments, in samples (a count is all a caller needs)
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # stream sample index of _buf[0]
        self.samples = 0

    # audio kept ---------------------------------------------------------------------------------------------

    def _audio(self, a: int, b: int) -> np.ndarray:
        """Samples ``[a, b)`` of the stream (``a`` and ``b`` clipped to what was seen)."""
        a, b = max(a, self._buf_start), min(b, self.samples)
        return self._buf[a - self._buf_start : max(a, b) - self._buf_start]

    def _trim(self) -> None:
        if not self.windows:
            self._buf_start, self._buf = self.samples, self._buf[:0]
            return
        keep = self.samples - self.clip  # the last clip's worth: a window may be pushed back from the end
        if self._raw is not None:
            keep = min(keep, (self._raw[0] - self.pad) * self.n - self.clip // 2)
        if self._out is not None:
            keep = min(keep, self._out[0] * self.n - self.clip // 2, self._next_tile() if self._long() else keep)
        if self._pending:
            keep = min(keep, self._pending[0])
        keep = max(keep - self.n, 0)
        if keep > self._buf_start:
            self._buf = self._buf[keep - self._buf_start :].copy()
            self._buf_start = keep

    # segments -----------------------------------------------------------------------------------------------

    def push(self, block: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        block = np.asarray(block, np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, block])
        self.samples += len(block)
        y = self._frames.push(block)
        out: list[tuple[int, int, np.ndarray]] = []
        if len(y):
            rms_db, flat = _frame_stats(y, self.n)
            active = rms_db > self.threshold
            if self.cfg.method == "spectral":
                active &= flat < self.cfg.flatness
            for j in range(len(rms_db)):
                i = self._i
                self._i += 1
                if active[j]:
                    if self._raw is not None and i - self._raw[1] <= self.gap:
                        self._raw[1] = i + 1
                    else:
                        self._close_raw()
                        self._raw = [i, i + 1]
                self._maybe_emit()
        self._tiles()
        out = self._drain(final=False)
        self._trim()
        return out

    def finish(self) -> list[tuple[int, int, np.ndarray]]:
        """The clips still pending once the stream has ended."""
        self._close_raw()
        if self._out is not None:
            self._out[1] = min(self._out[1], self._i)
            self._emit_out()
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[tuple[int, int, np.ndarray]]:
        out = []
        while self._pending and (final or self._pending[0] + self.clip <= self.samples):
            out.append(self._cut(self._pending.pop(0)))
        return out

    def _close_raw(self) -> None:
        if self._raw is None:
            return
        A, B = self._raw
        self._raw = None
        if self.min_frames > B - A:
            return
        a, b = max(0, A - self.pad), B + self.pad  # b is clipped to the stream's length when it ends
        if self._out is not None and a <= self._out[1]:
            self._out[1] = b
            return
        if self._out is not None:
            self._emit_out()
        self._out = [a, b]
        self._tiled = 0

    def _maybe_emit(self) -> None:
        """Close the open segment once nothing to come can reach it."""
        if self._out is None:
            return
        b = self._out[1]
        if self._i - self.pad > b and (self._raw is None or self._raw[0] - self.pad > b):
            self._emit_out()

    def _long(self) -> bool:
        return self.windows and self._out is not None and (self._out[1] - self._out[0]) * self.n > self.clip * 1.5

    def _next_tile(self) -> int:
        assert self._out is not None
        return self._out[0] * self.n + self._tiled * (self.clip // 2)

    def _tiles(self) -> None:
        """Queue the tiles of a long open segment whose start is certain (its end only grows)."""
        while self._long():
            assert self._out is not None
            s = self._next_tile()
            if s >= self._out[1] * self.n - self.clip // 2:
                break
            self._pending.append(s)
            self._tiled += 1

    def _emit_out(self) -> None:
        assert self._out is not None
        a, b = self._out[0] * self.n, self._out[1] * self.n
        self.segments.append((a, b))
        if not self.windows:
            pass
        elif self._long():
            self._tiles()
        else:
            self._pending += _window_starts(self._audio(a, b), a, b, self.clip)
        self._out = None
        self._tiled = 0

    def _cut(self, s: int) -> tuple[int, int, np.ndarray]:
        """The window starting at ``s`` as :func:`clip_windows` cuts it: within the audio, pulled back from its end
        (cut once the audio reaches ``s + clip`` or the stream ended)."""
        s = int(min(max(0, s), max(0, self.samples - self.clip)))
        clip = np.zeros(self.clip, np.float32)
        seg = self._audio(s, s + self.clip)
        clip[: len(seg)] = seg
        return s, s + self.clip, clip


def _window_starts(seg: np.ndarray, a: int, b: int, clip_samples: int) -> list[int]:
    """Window starts for segment ``[a, b)`` whose samples are ``seg`` (before clamping to the audio)."""
    if b - a <= clip_samples * 1.5:
        e = seg.astype(np.float64) ** 2
        centre = a + int(np.sum(np.arange(b - a) * e) / max(np.sum(e), 1e-12)) if e.sum() > 0 else (a + b) // 2
        return [centre - clip_samples // 2]
    return list(range(a, b - clip_samples // 2, clip_samples // 2))


def segment(y: np.ndarray, sample_rate: int = 16000, cfg: VADConfig | None = None) -> list[tuple[int, int]]:
    """Active regions of ``y`` as ``[(start_sample, end_sample)]``, in order, not overlapping.

    A frame is active when its level is ``margin_db`` above the noise floor (:class:`NoiseFloor`, the 10th
    percentile of frame levels) and above ``min_db``; runs closer than ``max_gap_ms`` join, runs shorter than
    ``min_ms`` are dropped, the rest are padded by ``pad_ms`` and merged where they touch. :class:`Segmenter` does
    the same over a stream."""
    cfg = cfg or VADConfig()
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    n = max(1, round(sample_rate * cfg.frame_ms / 1000))
    if len(y) < n:
        return []
    seg = Segmenter(noise_floor([y], sample_rate, cfg), sample_rate, None, cfg)
    seg.push(y)
    seg.finish()
    return list(seg.segments)


def clip_windows(y: np.ndarray, segments: list[tuple[int, int]], clip_samples: int) -> list[tuple[int, int]]:
    """Model-length windows ``[(start, end)]`` for each segment, centred on its energy (long ones are tiled)."""
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    out = []
    for a, b in segments:
        for s in _window_starts(y[a:b], a, b, clip_samples):
            s = int(min(max(0, s), max(0, len(y) - clip_samples)))
            out.append((s, s + clip_samples))
    return out


def _window_clips(y: np.ndarray, windows: list[tuple[int, int]], n: int) -> np.ndarray:
    batch = np.zeros((len(windows), n), dtype=np.float32)
    for i, (a, b) in enumerate(windows):
        seg = y[a:b]
        batch[i, : len(seg)] = seg
    return batch


def window_features(y: np.ndarray, windows: list[tuple[int, int]], fc: FeatureConfig) -> np.ndarray:
    """Normalised MFCC ``(N, 1, n_mfcc, n_frames)`` of the windows (zero-padded at the end of the audio)."""
    batch = _window_clips(y, windows, fc.clip_samples)
    if not len(windows):
        return np.zeros((0, 1, *fc.shape), dtype=np.float32)
    return mfcc(batch, fc)[:, None]


def margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 posterior: small = uncertain."""
    p = np.sort(softmax(logits), axis=1)
    return p[:, -1] - (p[:, -2] if p.shape[1] > 1 else 0.0)


def _unit(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    return e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)


def _dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(len(a), len(b))`` as ``sqrt(|a|^2 + |b|^2 - 2ab)``, at most a thousand rows at a
    time: never an array of difference vectors (``a[:, None] - b[None]`` for 2,500 embeddings of 320 values is
    16 GB), each block's distances at most about 32 MB."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    out = np.empty((len(a), len(b)))
    bb = np.einsum("ij,ij->i", b, b)[None]
    rows = max(1, min(1024, (1 << 22) // max(1, len(b))))
    for i in range(0, len(a), rows):
        x = a[i : i + rows]
        d2 = np.einsum("ij,ij->i", x, x)[:, None] + bb - 2.0 * (x @ b.T)
        np.sqrt(np.maximum(d2, 0.0, out=d2), out=out[i : i + rows])
    return out


def _kcenter(e: np.ndarray, k: int, chosen: list[int] | None = None) -> list[int]:
    chosen = list(chosen or [])
    if not chosen:
        chosen = [int(np.argmin(_dists(e, e.mean(0)[None])[:, 0]))]
    d = np.min(_dists(e, e[chosen]), axis=1)
    while len(chosen) < k:
        i = int(np.argmax(d))
        if d[i] <= 0:
            break
        chosen.append(i)
        d = np.minimum(d, _dists(e, e[i : i + 1])[:, 0])
    return chosen


def _kmedoids(e: np.ndarray, k: int, iters: int = 30) -> list[int]:
    med = np.array(_kcenter(e, k))
    D = _dists(e, e) if len(e) <= 2000 else None  # at most 32 MB
    for _ in range(iters):
        dist = D[:, med] if D is not None else _dists(e, e[med])
        assign = np.argmin(dist, axis=1)
        new = med.copy()
        for j in range(len(med)):
            members = np.flatnonzero(assign == j)
            if not len(members):
                continue
            if D is not None:
                total = D[np.ix_(members, members)].sum(axis=1)
            else:  # a block of rows at a time: a large cluster's full distance matrix would not fit
                m = e[members]
                rows = max(1, (1 << 22) // len(m))
                total = np.concatenate([_dists(m[i : i + rows], m).sum(axis=1) for i in range(0, len(m), rows)])
            new[j] = members[int(np.argmin(total))]
        if np.array_equal(np.sort(new), np.sort(med)):
            break
        med = new
    return [int(i) for i in med]


def choose(
    embeddings: np.ndarray, k: int, method: str = "kcenter", *, logits: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Indices of ``k`` prototypes among ``embeddings (N, D)`` (fewer when N < k), no repeats."""
    if method not in METHODS:
        raise ValueError(f"unknown prototype method {method!r}; choose one of {', '.join(METHODS)}")
    e = _unit(embeddings)
    n = len(e)
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if method in ("uncertain", "hybrid") and logits is None:
        raise ValueError(f"method {method!r} needs the current model's logits")
    if method == "random":
        return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    if method == "kcenter":
        return np.array(_kcenter(e, k), dtype=np.int64)
    if method == "kmedoids":
        return np.array(_kmedoids(e, k), dtype=np.int64)
    assert logits is not None
    order = np.argsort(margins(logits), kind="stable")
    if method == "uncertain":
        return order[:k].astype(np.int64)
    cover = _kcenter(e, (k + 1) // 2)
    rest = [int(i) for i in order if i not in set(cover)][: k - len(cover)]
    return np.array(cover + rest, dtype=np.int64)


def _passes(audio: Any, sample_rate: int) -> Callable[[], Iterable[np.ndarray]]:
    """A way to read ``audio`` from its start, as often as needed: a waveform, a sound file's path (read in
    blocks) or a callable giving an iterable of blocks."""
    if callable(audio):
        return audio
    if isinstance(audio, (str, os.PathLike)):
        from .stream import WavSource

        path = audio
        return lambda: WavSource(path, sample_rate, block_ms=1000.0)
    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    return lambda: [y]


def collect(
    model,
    audio: Any,
    store: LabelStore,
    clips_dir: str | Path,
    *,
    source: str = "",
    k: int = 10,
    method: str = "kcenter",
    vad: VADConfig | None = None,
    seed: int = 0,
    on_event: Callable[[dict], None] | None = None,
    batch: int = 8,
    rows_per_call: int = 4,
) -> dict:
    """Segment ``audio``, save each window as a WAV, embed it, store it, and request labels for ``k`` prototypes.

    ``audio``: a waveform ``(n,)`` at the model's rate, the path of a sound file, or a callable returning an
    iterable of blocks. It is read twice (the VAD's noise floor, then the clips) and never held whole: memory is
    bounded by ``batch`` clips (``rows_per_call`` through a graph at a time) and a few seconds of audio, whatever
    its length. ``model``: a :class:`~edgekws.device.model.DeviceModel` (or anything with ``feature_config``,
    ``classes``, ``embed``, ``logits`` and ``clip_inputs``). Prototypes are chosen among every clip in the store that has not been
    requested yet (earlier sessions included). Returns counts and the requested clip ids.
    """
    fc: FeatureConfig = model.feature_config
    vad = vad or VADConfig()
    read = _passes(audio, fc.sample_rate)
    floor = noise_floor(read(), fc.sample_rate, vad)
    cutter = Segmenter(floor, fc.sample_rate, fc.clip_samples, vad)
    clips_dir = Path(clips_dir)
    clips_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(source).stem or "audio"
    base = store.count()
    temperature = float(getattr(model, "temperature", 1.0) or 1.0)
    names = model.classes
    new_ids: list[int] = []
    todo: list[tuple[int, int, np.ndarray]] = []

    def flush() -> None:
        if not todo:
            return
        x = (
            model.clip_inputs(np.stack([c for _, _, c in todo]))
            if hasattr(model, "clip_inputs")
            else mfcc(np.stack([c for _, _, c in todo]), fc)[:, None]
        )
        # a few rows per graph call: the runtime's working memory grows with the largest batch it saw
        emb = np.concatenate([model.embed(x[i : i + rows_per_call]) for i in range(0, len(x), rows_per_call)])
        lg = np.concatenate([model.logits(x[i : i + rows_per_call]) for i in range(0, len(x), rows_per_call)])
        mg = margins(lg / temperature)
        rows = []
        for i, (a, b, clip) in enumerate(todo):
            path = clips_dir / f"{stem}-{base + len(new_ids) + i:05d}-{a / fc.sample_rate:08.2f}s.wav"
            save_wav(path, clip, fc.sample_rate)
            rows.append(
                {
                    "path": str(path),
                    "source": source,
                    "start_s": a / fc.sample_rate,
                    "end_s": b / fc.sample_rate,
                    "embedding": emb[i],
                    "margin": float(mg[i]),
                    "predicted": names[int(np.argmax(lg[i]))],
                }
            )
        new_ids.extend(store.add_clips(rows))
        todo.clear()
        if on_event:
            on_event({"event": "clip", "done": len(new_ids), "total": None})

    for block in read():
        for w in cutter.push(block):
            todo.append(w)
            if len(todo) >= batch:
                flush()
    todo.extend(cutter.finish())
    while todo:
        rest = todo[batch:]
        del todo[batch:]
        flush()
        todo.extend(rest)
    pool_ids, E, pool_margins = store.pool()  # one array, not an object per clip
    chosen: list[int] = []
    if pool_ids and k > 0:
        lg = None
        if method in ("uncertain", "hybrid"):
            # the stored margin stands in for logits: two-class logits with the same top-1/top-2 gap ordering
            m = np.where(np.isnan(pool_margins), 1.0, pool_margins)
            lg = np.stack([np.zeros_like(m), np.log((1 + m) / np.maximum(1 - m, 1e-6))], axis=1)
        idx = choose(E, k, method, logits=lg, seed=seed)
        chosen = [pool_ids[i] for i in idx]
        store.request(chosen)
    return {
        "segments": len(cutter.segments),
        "clips": len(new_ids),
        "requested": chosen,
        "seconds": cutter.samples / fc.sample_rate,
    }
