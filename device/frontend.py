"""What turns audio into a model's input on the device: MFCC (numpy) or the frozen speech-embedding graphs.

A bundle names its front end in the manifest (``frontend``; absent = MFCC). Both front ends give the classifier an
image ``(1, H, W)``: normalised MFCC ``(1, n_mfcc, frames)`` or a sequence of speech embeddings
``(1, 96, n_windows)``. Each offers

``clips(y)``
    model inputs ``(N, 1, H, W)`` of fixed-length clips ``(N, samples)`` (labelling, fine-tuning, checks), computed
    exactly as the server computed its training inputs;
``stream()``
    a streaming state whose ``push(block)`` returns the :class:`Window` objects that became complete: the model
    input, its start and end time in the stream, plus ``levels`` (dB per 10 ms frame) for the detector's gate.

Streaming windows equal the offline ones (tested for both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekws.features import FeatureConfig, StreamingMFCC, mfcc, normalize

__all__ = ["EmbeddingFrontEnd", "FrontEndError", "MfccFrontEnd", "Window", "frontend_for"]


class FrontEndError(RuntimeError):
    """A bundle's front end cannot be set up; the message names the file or the missing package."""


@dataclass
class Window:
    """One model input of a stream: ``x`` ``(1, 1, H, W)``; ``start``/``end`` in seconds of stream time;
    ``level_count``: how many of the push's ``levels`` were known when the window became complete."""

    x: np.ndarray
    start: float
    end: float
    level_count: int = 0


class MfccFrontEnd:
    """Normalised MFCC windows of ``feature_config.n_frames`` frames, one every ``hop_frames`` frames."""

    kind = "mfcc"

    def __init__(self, fc: FeatureConfig, hop_ms: float = 100.0) -> None:
        self.fc = fc
        self.hop_level_frames = max(1, round(hop_ms / fc.hop_ms))  # a window every this many level frames
        self.level_frame_ms = fc.hop_ms
        self.window_level_frames = fc.n_frames  # level frames one window spans (for the detector's gate)
        self.window_seconds = fc.clip_samples / fc.sample_rate
        self.input_shape = tuple(fc.shape)

    def clips(self, y: np.ndarray) -> np.ndarray:
        return mfcc(np.asarray(y, np.float32), self.fc)[:, None]

    def stream(self) -> _MfccStream:
        return _MfccStream(self)


class _MfccStream:
    def __init__(self, fe: MfccFrontEnd) -> None:
        self.fe = fe
        fc = fe.fc
        self._mfcc = StreamingMFCC(fc)
        self._ring = np.zeros((fc.n_mfcc, 2 * fc.n_frames), dtype=np.float32)
        self._frames = 0
        self._since = 0
        self.levels: list[float] = []

    def reset(self) -> None:
        self.__init__(self.fe)

    def push(self, block: np.ndarray) -> list[Window]:
        fc = self.fe.fc
        T = fc.n_frames
        frames = self._mfcc.push(block)
        out: list[Window] = []
        self.levels = []
        for j in range(frames.shape[1]):
            f = frames[:, j]
            p = self._frames % T
            self._ring[:, p] = f
            self._ring[:, p + T] = f
            self._frames += 1
            self._since += 1
            # c0 of the orthonormal DCT is proportional to the mean log-mel energy: a cheap level estimate
            self.levels.append(float(f[0]) / math.sqrt(fc.n_mels))
            if self._frames >= T and (self._frames == T or self._since >= self.fe.hop_level_frames):
                self._since = 0
                start = (self._frames - T) * fc.hop_length / fc.sample_rate
                q = self._frames % T
                x = normalize(self._ring[:, q: q + T][None], fc)[:, None]
                out.append(Window(x=x, start=start, end=start + self.fe.window_seconds, level_count=j + 1))
        return out


class EmbeddingFrontEnd:
    """Sequences of ``n_windows`` speech embeddings (one per 80 ms), from the bundle's two frozen graphs."""

    kind = "speech-embedding"

    def __init__(self, graphs: Mapping[str, str | Path], config: Mapping[str, Any], threads: int = 1) -> None:
        from edgekws.speech_embedding import (
            FrontendConfig,
            FrontendError,
            SpeechEmbedder,
        )

        try:
            self.cfg = FrontendConfig.from_dict(config)
            self.embedder = SpeechEmbedder(graphs, threads=threads)
        except (FrontendError, ValueError, TypeError) as exc:
            raise FrontEndError(f"speech-embedding front end: {exc}") from exc
        from edgekws.speech_embedding import (
            EMBEDDING_SPAN,
            MEL_HOP,
            SAMPLE_RATE,
            STRIDE_FRAMES,
        )

        T = self.cfg.n_windows
        self.hop_level_frames = STRIDE_FRAMES  # one window per embedding (80 ms); levels are 10 ms mel frames
        self.level_frame_ms = 1000.0 * MEL_HOP / SAMPLE_RATE
        self.window_level_frames = (T - 1) * STRIDE_FRAMES + (EMBEDDING_SPAN - MEL_HOP) // MEL_HOP
        self.window_seconds = ((T - 1) * STRIDE_FRAMES * MEL_HOP + EMBEDDING_SPAN) / SAMPLE_RATE
        self.input_shape = self.cfg.shape

    def clips(self, y: np.ndarray) -> np.ndarray:
        return self.embedder.clip_features(np.asarray(y, np.float32), self.cfg)[:, None]

    def windows(self, y: np.ndarray) -> np.ndarray:
        """The stream's windows ``(n, 1, 96, n_windows)`` cut from a whole recording (equal to :meth:`stream`'s)."""
        e = self.embedder.embeddings(np.asarray(y, np.float32))
        T = self.cfg.n_windows
        if len(e) < T:
            return np.zeros((0, 1, *self.input_shape), np.float32)
        return np.stack([e[i: i + T].T for i in range(len(e) - T + 1)])[:, None]

    def stream(self) -> _EmbeddingStream:
        return _EmbeddingStream(self)


class _EmbeddingStream:
    def __init__(self, fe: EmbeddingFrontEnd) -> None:
        from edgekws.speech_embedding import BLOCK_SAMPLES, StreamingEmbedder

        self.fe = fe
        self._emb = StreamingEmbedder(fe.embedder)
        self._seq = np.zeros((fe.cfg.embedding_dim, 0), np.float32)
        self._block = BLOCK_SAMPLES
        self.levels: list[float] = []

    def reset(self) -> None:
        self.__init__(self.fe)

    def push(self, block: np.ndarray) -> list[Window]:
        from edgekws.speech_embedding import (
            EMBEDDING_SPAN,
            SAMPLE_RATE,
            STRIDE_FRAMES,
            WINDOW_FRAMES,
        )

        blocks_before = self._emb.blocks
        new = self._emb.push(np.asarray(block, np.float32).reshape(-1))
        # level of each new 10 ms mel frame in dB: the graph gives 10 log10(mel power), scaled by x / 10 + 2
        self.levels = [float(v) for v in (self._emb.new_mel.mean(axis=1) - 2.0) * 10.0]
        out: list[Window] = []
        T = self.fe.cfg.n_windows
        first_new = self._emb.emitted - len(new)  # stream index of new[0]
        for k, e in enumerate(new):
            keep = self._seq[:, max(0, self._seq.shape[1] - (T - 1)):] if T > 1 else self._seq[:, :0]
            self._seq = np.concatenate([keep, e[:, None]], axis=1)
            i = first_new + k
            if self._seq.shape[1] == T:
                # embedding i is complete once the mel block holding its last frame (8 i + 75) exists
                frames_known = ((i * STRIDE_FRAMES + WINDOW_FRAMES - 1) // STRIDE_FRAMES + 1 - blocks_before) * STRIDE_FRAMES
                start = (i - T + 1) * self._block / SAMPLE_RATE
                end = (i * self._block + EMBEDDING_SPAN) / SAMPLE_RATE
                out.append(Window(x=self._seq[None, None].copy(), start=start, end=end,
                                  level_count=max(0, min(len(self.levels), frames_known))))
        return out


def frontend_for(bundle: Any, hop_ms: float = 100.0, threads: int = 1) -> MfccFrontEnd | EmbeddingFrontEnd:
    """The front end a bundle's manifest names (``frontend``; MFCC when absent).

    ``bundle``: a verified :class:`~edgekws.bundle.Bundle`.
    """
    fe = (bundle.manifest or {}).get("frontend")
    if not fe:
        return MfccFrontEnd(bundle.feature_config, hop_ms=hop_ms)
    kind = fe.get("kind")
    if kind != EmbeddingFrontEnd.kind:
        raise FrontEndError(f"bundle {bundle.path}: unknown front end {kind!r}; upgrade edgekws on this device")
    graphs = {role: Path(bundle.path) / rel for role, rel in (fe.get("files") or {}).items()}
    return EmbeddingFrontEnd(graphs, fe.get("config") or {}, threads=threads)
