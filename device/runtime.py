"""Streaming keyword detector: ring buffer of MFCC frames, inference every hop, smoothing, thresholds, events.

Audio enters in blocks of any size. :class:`~edgekws.features.StreamingMFCC` computes the MFCC of *new* frames
only; they go into a ring buffer holding one model window (``feature_config.n_frames`` frames). Every
``hop_frames`` new frames, once the buffer is full, the window is normalised exactly as the server normalised its
training clips, the model gives logits, and the posteriors (softmax) are averaged over the last ``smooth`` inferences
(the logits are divided by ``model.temperature`` first: the temperature a bundle ships, fitted by the server on
held-out synthetic speech, else one fitted on the bundle's coreset, see :class:`DeviceModel`).
A keyword fires when its smoothed posterior is the largest, reaches its threshold, the window holds sound at least
``gate_db`` above the recent noise floor (a model without a background class still names a word for silence), and
no detection happened in the last ``refractory_s`` seconds. A keyword that fired fires again only after its smoothed
posterior fell below its threshold (one utterance stays in the window for up to a second: one detection). Classes whose names start with ``_`` (``_silence_``, ``_unknown_``) never fire.

Window ``i`` (0-based) covers stream frames ``[i * hop_frames, i * hop_frames + n_frames)``, i.e. samples
``[i * hop_frames * hop_length, ... + clip_samples)``: :func:`offline_windows` cuts the same windows from a whole
recording, so the streaming logits equal the offline logits (tested).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from edgekws.features import FeatureConfig, mfcc, normalize

__all__ = ["Detection", "Detector", "DetectorConfig", "Update", "offline_windows", "run_detector", "softmax"]


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class DetectorConfig:
    """How the detector decides. Thresholds apply to smoothed posteriors in [0, 1]."""

    hop_ms: float = 100.0
    smooth: int = 5
    threshold: float = 0.6
    thresholds: Mapping[str, float] = field(default_factory=dict)
    refractory_s: float = 1.0
    gate_db: float = 10.0  # fire only when the window's loudest frame is this far above the noise floor (0 = off)
    floor_s: float = 5.0  # the noise floor is the 10th percentile of frame levels over this much recent audio

    def __post_init__(self) -> None:
        if self.hop_ms <= 0:
            raise ValueError(f"hop_ms must be positive, got {self.hop_ms}")
        if self.smooth < 1:
            raise ValueError(f"smooth must be >= 1, got {self.smooth}")
        for k, v in {"threshold": self.threshold, **dict(self.thresholds)}.items():
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"threshold for {k!r} must be in [0, 1], got {v}")
        if self.refractory_s < 0:
            raise ValueError("refractory_s must be >= 0")
        if self.gate_db < 0 or self.floor_s <= 0:
            raise ValueError("gate_db must be >= 0 and floor_s > 0")

    def hop_frames(self, fc: FeatureConfig) -> int:
        return max(1, round(self.hop_ms / fc.hop_ms))


@dataclass
class Detection:
    """A keyword event. ``time`` is the end of the window that fired, ``start`` its beginning (seconds)."""

    time: float
    keyword: str
    score: float
    start: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["time"], d["start"], d["score"] = round(self.time, 3), round(self.start, 3), round(self.score, 4)
        return d


@dataclass
class Update:
    """One inference: window end time, input level, raw logits, smoothed posteriors and any detection."""

    time: float
    level_db: float
    logits: np.ndarray
    probs: np.ndarray
    detection: Detection | None = None


def offline_windows(y: np.ndarray, fc: FeatureConfig, hop_frames: int) -> np.ndarray:
    """The detector's windows cut from a whole recording: ``(n_windows, 1, n_mfcc, n_frames)`` normalised MFCC."""
    feats = mfcc(np.asarray(y, dtype=np.float32), fc, normalize_output=False)
    T = fc.n_frames
    n = feats.shape[1]
    if n < T:
        return np.zeros((0, 1, fc.n_mfcc, T), dtype=np.float32)
    starts = range(0, n - T + 1, hop_frames)
    wins = np.stack([feats[:, s : s + T] for s in starts])
    return normalize(wins, fc)[:, None]


class Detector:
    """Streaming detector over any model with ``logits(x)`` and ``classes`` (see :class:`DeviceModel`).

    ``feed(block)`` returns the :class:`Update` objects produced by that block (one per hop).
    """

    def __init__(self, model, feature_config: FeatureConfig, config: DetectorConfig | None = None, *,
                 frontend=None) -> None:
        from .frontend import MfccFrontEnd, frontend_for

        self.model = model
        self.fc = feature_config
        self.cfg = config or DetectorConfig()
        if frontend is None:
            bundle = getattr(model, "bundle", None)
            if bundle is not None and (getattr(bundle, "manifest", None) or {}).get("frontend"):
                frontend = getattr(model, "frontend", None) or frontend_for(bundle, threads=getattr(model, "threads", 1))
            else:
                frontend = MfccFrontEnd(feature_config, hop_ms=self.cfg.hop_ms)
        self.frontend = frontend
        self.hop = frontend.hop_level_frames
        self._stream = frontend.stream()
        self._mfcc = getattr(self._stream, "_mfcc", None)  # the MFCC front end's incremental MFCC (timing harnesses)
        self._history: deque[np.ndarray] = deque(maxlen=self.cfg.smooth)
        self._last_fire = -math.inf
        T = frontend.window_level_frames
        self._levels: deque[float] = deque(maxlen=max(T, round(self.cfg.floor_s * 1000 / frontend.level_frame_ms)))
        self.samples_seen = 0
        self._set_classes(tuple(model.classes))

    def _set_classes(self, classes: tuple[str, ...]) -> None:
        self.classes = classes
        self._thr = np.array([float(self.cfg.thresholds.get(c, self.cfg.threshold)) for c in classes], np.float32)
        self._fires = np.array([not c.startswith("_") for c in classes], bool)
        self._armed = np.ones(len(classes), bool)
        self._history.clear()

    def reset(self) -> None:
        self._stream = self.frontend.stream()
        self._mfcc = getattr(self._stream, "_mfcc", None)
        self.samples_seen = 0
        self._history.clear()
        self._levels.clear()
        self._last_fire = -math.inf
        self._armed[:] = True

    def model_changed(self) -> None:
        """Call after the model switched version (classes may differ)."""
        self._set_classes(tuple(self.model.classes))

    @property
    def window_seconds(self) -> float:
        return self.frontend.window_seconds

    def feed(self, block: np.ndarray) -> list[Update]:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(block)):
            raise ValueError("audio block contains NaN or infinity")
        self.samples_seen += block.size
        windows = self._stream.push(block)
        levels = self._stream.levels
        out: list[Update] = []
        used = 0
        for w in windows:
            self._levels.extend(levels[used: w.level_count])
            used = max(used, w.level_count)
            logits = np.asarray(self.model.logits(w.x), dtype=np.float32)[0]
            out.append(self._decide(logits, w.start, w.end))
        self._levels.extend(levels[used:])
        return out

    def _decide(self, logits: np.ndarray, start: float, end: float) -> Update:
        if logits.shape[0] != len(self.classes):
            self._set_classes(tuple(self.model.classes))
        probs = softmax(logits / float(getattr(self.model, "temperature", 1.0) or 1.0))
        self._history.append(probs)
        smooth = np.mean(np.stack(self._history), axis=0)
        levels = np.fromiter(self._levels, dtype=np.float64)
        T = self.frontend.window_level_frames
        level = float(levels[-self.hop :].max()) if levels.size else -100.0
        loud = self.cfg.gate_db <= 0 or float(levels[-T:].max()) - float(np.percentile(levels, 10)) >= self.cfg.gate_db
        upd = Update(time=end, level_db=level, logits=logits, probs=smooth)
        k = int(np.argmax(smooth))
        self._armed |= (smooth < self._thr) | (not loud)
        if (self._fires[k] and loud and smooth[k] >= self._thr[k] and self._armed[k]
                and end - self._last_fire >= self.cfg.refractory_s):
            self._last_fire = end
            self._armed[k] = False
            upd.detection = Detection(time=end, keyword=self.classes[k], score=float(smooth[k]), start=start)
        return upd


def run_detector(detector: Detector, blocks: Iterable[np.ndarray],
                 on_update: Callable[[Update], None] | None = None) -> Iterator[Detection]:
    """Feed ``blocks`` through ``detector``; yield detections as they happen (``on_update`` sees every hop)."""
    for block in blocks:
        for upd in detector.feed(block):
            if on_update is not None:
                on_update(upd)
            if upd.detection is not None:
                yield upd.detection
