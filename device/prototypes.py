"""Segment what the device heard, embed it, and choose the few clips worth asking a person about.

- :func:`segment` finds speech/event regions with an energy VAD (frame RMS above an adaptive noise floor), or the
  "spectral" variant that also requires a non-flat spectrum (rejects broadband noise bursts).
- :func:`clip_windows` turns regions into model-length windows centred on each region's energy.
- :func:`choose` picks prototypes from embeddings: ``kcenter`` (greedy farthest-first cover), ``kmedoids``
  (Voronoi iteration started from the k-center cover), ``uncertain`` (smallest top-1/top-2 posterior margin),
  ``hybrid`` (half k-center cover, half most uncertain) or ``random``. Measured on real Speech Commands
  (``benchmarks/results/device_finetune.md``), k-center came closest to random sampling and the uncertainty-based
  choices did worst, so k-center is the default.
- :func:`collect` runs the whole step on a waveform and records clips and requests in a :class:`LabelStore`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekws.audio import save_wav
from edgekws.features import FeatureConfig, mfcc

from .runtime import softmax
from .store import LabelStore

__all__ = ["METHODS", "VADConfig", "choose", "clip_windows", "collect", "margins", "segment", "window_features"]

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


def segment(y: np.ndarray, sample_rate: int = 16000, cfg: VADConfig | None = None) -> list[tuple[int, int]]:
    """Active regions of ``y`` as ``[(start_sample, end_sample)]``, in order, not overlapping."""
    cfg = cfg or VADConfig()
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    n = max(1, round(sample_rate * cfg.frame_ms / 1000))
    if len(y) < n:
        return []
    rms_db, flat = _frame_stats(y, n)
    floor = float(np.percentile(rms_db, 10))
    active = rms_db > max(floor + cfg.margin_db, cfg.min_db)
    if cfg.method == "spectral":
        active &= flat < cfg.flatness
    segs: list[list[int]] = []
    gap = round(cfg.max_gap_ms / cfg.frame_ms)
    for i in np.flatnonzero(active):
        if segs and i - segs[-1][1] <= gap:
            segs[-1][1] = i + 1
        else:
            segs.append([i, i + 1])
    pad = round(cfg.pad_ms / cfg.frame_ms)
    min_frames = cfg.min_ms / cfg.frame_ms
    out = []
    for a, b in segs:
        if b - a < min_frames:
            continue
        a, b = max(0, a - pad), min(len(rms_db), b + pad)
        if out and a * n <= out[-1][1]:
            out[-1] = (out[-1][0], b * n)
        else:
            out.append((a * n, b * n))
    return out


def clip_windows(y: np.ndarray, segments: list[tuple[int, int]], clip_samples: int) -> list[tuple[int, int]]:
    """Model-length windows ``[(start, end)]`` for each segment, centred on its energy (long ones are tiled)."""
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    out = []
    for a, b in segments:
        if b - a <= clip_samples * 1.5:
            e = y[a:b].astype(np.float64) ** 2
            centre = a + int(np.sum(np.arange(b - a) * e) / max(np.sum(e), 1e-12)) if e.sum() > 0 else (a + b) // 2
            starts = [centre - clip_samples // 2]
        else:
            starts = list(range(a, b - clip_samples // 2, clip_samples // 2))
        for s in starts:
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


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(len(a), len(b))`` in O(len(a) * len(b)) memory (``a[:, None] - b[None]`` would hold
    every difference vector: 16 GB for 2,500 embeddings of 320 values)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2, 0.0))


def _kcenter(e: np.ndarray, k: int, chosen: list[int] | None = None) -> list[int]:
    chosen = list(chosen or [])
    if not chosen:
        chosen = [int(np.argmin(np.linalg.norm(e - e.mean(0), axis=1)))]
    d = np.min(_distances(e, e[chosen]), axis=1)
    while len(chosen) < k:
        i = int(np.argmax(d))
        if d[i] <= 0:
            break
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(e - e[i], axis=1))
    return chosen


def _kmedoids(e: np.ndarray, k: int, iters: int = 30) -> list[int]:
    med = np.array(_kcenter(e, k))
    D = _distances(e, e) if len(e) <= 4000 else None
    for _ in range(iters):
        dist = D[:, med] if D is not None else _distances(e, e[med])
        assign = np.argmin(dist, axis=1)
        new = med.copy()
        for j in range(len(med)):
            members = np.flatnonzero(assign == j)
            if not len(members):
                continue
            sub = D[np.ix_(members, members)] if D is not None else _distances(e[members], e[members])
            new[j] = members[int(np.argmin(sub.sum(axis=1)))]
        if np.array_equal(np.sort(new), np.sort(med)):
            break
        med = new
    return [int(i) for i in med]


def choose(embeddings: np.ndarray, k: int, method: str = "kcenter", *, logits: np.ndarray | None = None,
           seed: int = 0) -> np.ndarray:
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
    order = np.argsort(margins(logits), kind="stable")
    if method == "uncertain":
        return order[:k].astype(np.int64)
    cover = _kcenter(e, (k + 1) // 2)
    rest = [int(i) for i in order if i not in set(cover)][: k - len(cover)]
    return np.array(cover + rest, dtype=np.int64)


def collect(model, y: np.ndarray, store: LabelStore, clips_dir: str | Path, *, source: str = "",
            k: int = 10, method: str = "kcenter", vad: VADConfig | None = None, seed: int = 0,
            on_event: Callable[[dict], None] | None = None) -> dict:
    """Segment ``y``, save each window as a WAV, embed it, store it, and request labels for ``k`` prototypes.

    Prototypes are chosen among every clip in the store that has not been requested yet (earlier sessions
    included). Returns counts and the requested clip ids.
    """
    fc: FeatureConfig = model.feature_config
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    segs = segment(y, fc.sample_rate, vad)
    wins = clip_windows(y, segs, fc.clip_samples)
    clips_dir = Path(clips_dir)
    clips_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    if wins:
        x = (model.clip_inputs(_window_clips(y, wins, fc.clip_samples)) if hasattr(model, "clip_inputs")
             else window_features(y, wins, fc))
        emb = model.embed(x)
        lg = model.logits(x)
        mg = margins(lg / float(getattr(model, "temperature", 1.0) or 1.0))
        names = model.classes
        stem = Path(source).stem or "audio"
        base = len(store.clips())
        for i, (a, b) in enumerate(wins):
            path = clips_dir / f"{stem}-{base + i:05d}-{a / fc.sample_rate:08.2f}s.wav"
            clip = np.zeros(fc.clip_samples, np.float32)
            clip[: min(b, len(y)) - a] = y[a : min(b, len(y))]
            save_wav(path, clip, fc.sample_rate)
            rows.append({"path": str(path), "source": source, "start_s": a / fc.sample_rate,
                         "end_s": b / fc.sample_rate, "embedding": emb[i], "margin": float(mg[i]),
                         "predicted": names[int(np.argmax(lg[i]))]})
            if on_event:
                on_event({"event": "clip", "done": i + 1, "total": len(wins)})
    new_ids = store.add_clips(rows)
    pool = [c for c in store.clips(requested=False, labeled=False) if c.embedding is not None]
    chosen: list[int] = []
    if pool and k > 0:
        E = np.stack([c.embedding for c in pool])
        lg = None
        if method in ("uncertain", "hybrid"):
            # the stored margin stands in for logits: two-class logits with the same top-1/top-2 gap ordering
            m = np.array([c.margin if c.margin is not None else 1.0 for c in pool])
            lg = np.stack([np.zeros_like(m), np.log((1 + m) / np.maximum(1 - m, 1e-6))], axis=1)
        idx = choose(E, k, method, logits=lg, seed=seed)
        chosen = [pool[i].id for i in idx]
        store.request(chosen)
    return {"segments": len(segs), "clips": len(new_ids), "requested": chosen}
