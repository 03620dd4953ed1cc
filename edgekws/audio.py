"""Audio input: load, decode, validate, resample and fit waveforms to a fixed length.

Everything here is numpy in, numpy out, and depends only on numpy, soundfile and soxr, so the device runtime can
import it without pulling in torch, librosa or numba.

Conventions
-----------
- A waveform is a ``float32`` array of shape ``(n,)`` (mono) or ``(..., n)`` (a batch of clips, or channels
  first, as in librosa); time is always the last axis.
- Integer PCM is scaled to ``[-1, 1)``: 16-bit samples are divided by 32768, 32-bit by 2**31, signed 8-bit by 128,
  unsigned 8-bit as ``(x - 128) / 128``.
- Multi-channel audio is mixed to mono by the mean over channels.
- Resampling uses soxr at ``"HQ"`` quality. Values are never clipped after resampling, so a full-scale signal may
  overshoot 1.0 slightly.

Errors
------
Every audio input that cannot be used raises :class:`AudioError`, whose message names the file (or ``name``) and
what is wrong with it and, where there is one, the fix. Invalid *arguments* (a negative length, an unknown
``offset`` mode) raise a plain :class:`ValueError` or :class:`TypeError`.

Damaged WAV files
-----------------
For RIFF/RIFX WAVE and RF64 files the chunk headers are checked before decoding. A file whose ``data`` chunk
declares more bytes than the file holds, or whose chunk list runs past the end of the file before a ``data``
chunk is found, is refused as truncated: libsndfile would otherwise silently return the part that is present,
and a clip cut short in transfer is damage, not data. The one exception is a ``data`` size of ``0xFFFFFFFF``,
the marker written by streaming encoders that cannot seek back to fill in the size; those files are read to
their end. For every format, a decode that stops before the number of frames the header announced is also
refused as truncated.
"""

from __future__ import annotations

import io
import math
import os
import struct
from typing import BinaryIO

import numpy as np
import soundfile as sf

from edgekws.fileio import atomic_open
import soxr

__all__ = [
    "AudioError",
    "SUPPORTED_RATE_RANGE",
    "load_audio",
    "decode_audio",
    "resample",
    "fit_length",
    "rms_db",
    "check_waveform",
    "save_wav",
]

SUPPORTED_RATE_RANGE: tuple[int, int] = (4000, 192000)
"""Accepted source sample rates in Hz, inclusive at both ends."""

_OFFSETS = ("center", "start", "random")
_STREAMING_DATA_SIZE = 0xFFFFFFFF
_INT_FULL_SCALE = {
    np.dtype(np.int8): (0.0, 128.0),
    np.dtype(np.uint8): (128.0, 128.0),
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2147483648.0),
}


class AudioError(ValueError):
    """Raised for any audio input we cannot use; message says what file and what is wrong and, where there is one,
    the fix."""


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int = 16000,
    clip_seconds: float | None = None,
    offset: str = "center",
    require_level: bool = False,
    min_rms_db: float = -70.0,
) -> np.ndarray:
    """Load an audio file as a mono ``float32`` waveform at ``sample_rate``.

    Parameters
    ----------
    path : str or os.PathLike
        A WAV, FLAC or OGG (Vorbis/Opus) file; any other container libsndfile decodes is accepted too.
    sample_rate : int > 0
        Target rate in Hz. The audio is resampled with soxr (``"HQ"``) when the file's rate differs.
    clip_seconds : float > 0 or None
        If given, the output is padded with zeros or trimmed to exactly ``round(clip_seconds * sample_rate)``
        samples (see :func:`fit_length`).
    offset : {"center", "start", "random"}
        Where to pad or trim when ``clip_seconds`` is given.
    require_level : bool
        If True, refuse a clip whose RMS level (of the decoded mono signal, before padding or trimming) is below
        ``min_rms_db``.
    min_rms_db : float
        Threshold in dBFS used when ``require_level`` is True.

    Returns
    -------
    y : np.ndarray [shape=(n,), dtype=float32]
        Mono waveform at ``sample_rate``. Integer PCM is scaled to ``[-1, 1)``; values are not clipped after
        resampling.

    Raises
    ------
    AudioError
        The file is missing, unreadable, empty, not audio, truncated, holds no frames, holds NaN or Inf samples,
        has a sample rate outside :data:`SUPPORTED_RATE_RANGE`, or is silent while ``require_level`` is True.

    See Also
    --------
    decode_audio : the same from bytes in memory.

    Examples
    --------
    >>> y = load_audio("yes.wav", clip_seconds=1.0)  # doctest: +SKIP
    >>> y.shape, y.dtype  # doctest: +SKIP
    ((16000,), dtype('float32'))
    """
    name = os.fsdecode(os.fspath(path))
    _check_target(sample_rate, clip_seconds, offset)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise AudioError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise AudioError(f"{name}: is a directory, not an audio file") from None
    except PermissionError:
        raise AudioError(f"{name}: cannot open the file (permission denied)") from None
    except OSError as exc:
        raise AudioError(f"{name}: cannot open the file ({exc.strerror or exc})") from None
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            raise AudioError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
        data, rate = _decode(fh, size, name)
    return _finish(data, rate, name, sample_rate, clip_seconds, offset, require_level, min_rms_db)


def decode_audio(
    data: bytes,
    *,
    sample_rate: int = 16000,
    clip_seconds: float | None = None,
    offset: str = "center",
    require_level: bool = False,
    min_rms_db: float = -70.0,
    name: str = "<bytes>",
) -> np.ndarray:
    """Decode an audio file held in memory as a mono ``float32`` waveform at ``sample_rate``.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The complete contents of a WAV, FLAC or OGG file.
    sample_rate, clip_seconds, offset, require_level, min_rms_db
        As in :func:`load_audio`.
    name : str
        How the source is called in error messages (for example the upload's file name).

    Returns
    -------
    y : np.ndarray [shape=(n,), dtype=float32]
        Mono waveform at ``sample_rate``.

    Raises
    ------
    AudioError
        For the same reasons as :func:`load_audio`.
    TypeError
        If ``data`` is not a bytes-like object.
    """
    if isinstance(data, (str, os.PathLike)):
        raise TypeError("decode_audio expects the file's bytes; use load_audio for a path")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"decode_audio expects bytes, got {type(data).__name__}") from None
    _check_target(sample_rate, clip_seconds, offset)
    buf = io.BytesIO(view.tobytes())
    samples, rate = _decode(buf, view.nbytes, name)
    return _finish(samples, rate, name, sample_rate, clip_seconds, offset, require_level, min_rms_db)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a waveform along its last axis with soxr (``"HQ"`` quality).

    Parameters
    ----------
    y : np.ndarray [shape=(..., n)]
        Waveform or batch of waveforms; time is the last axis.
    orig_sr : int > 0
        Rate of ``y`` in Hz.
    target_sr : int > 0
        Rate of the output in Hz.

    Returns
    -------
    y_hat : np.ndarray [shape=(..., m), dtype=float32]
        ``m = floor(n * target_sr / orig_sr + 0.5)``. When ``orig_sr == target_sr`` this is ``y`` as float32 (no copy
        when it already is). Values are not clipped.

    Examples
    --------
    >>> y = np.zeros(44100, dtype=np.float32)
    >>> resample(y, 44100, 16000).shape
    (16000,)
    >>> resample(np.zeros((4, 8000)), 8000, 16000).shape
    (4, 16000)
    """
    orig = _positive_rate(orig_sr, "orig_sr")
    target = _positive_rate(target_sr, "target_sr")
    y = np.asarray(y)
    if y.ndim == 0:
        raise ValueError("resample expects an array of shape (..., n), got a scalar")
    if y.dtype.kind not in "fiu":
        raise TypeError(f"resample expects real samples, got dtype {y.dtype}")
    y = y.astype(np.float32, copy=False)
    if orig == target:
        return y
    lead, n = y.shape[:-1], y.shape[-1]
    if y.ndim == 1:
        return soxr.resample(np.ascontiguousarray(y), orig, target, quality="HQ")
    frames = np.ascontiguousarray(y.reshape(-1, n).T)
    out = soxr.resample(frames, orig, target, quality="HQ")
    return np.ascontiguousarray(out.T).reshape(lead + (out.shape[0],))


def fit_length(
    y: np.ndarray,
    n_samples: int,
    *,
    offset: str = "center",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Pad with zeros or trim a waveform to exactly ``n_samples`` along its last axis.

    Parameters
    ----------
    y : np.ndarray [shape=(..., n)]
        Waveform or batch of waveforms.
    n_samples : int >= 0
        Length of the output.
    offset : {"center", "start", "random"}
        ``"center"`` keeps the middle when trimming and centres the signal when padding (the odd sample of
        padding goes to the end); ``"start"`` keeps the beginning and pads at the end; ``"random"`` draws the
        kept window, or the position of the signal inside the padding, uniformly from ``rng``.
    rng : np.random.Generator or None
        Source of randomness for ``offset="random"``; a fresh unseeded generator when None.

    Returns
    -------
    y_fit : np.ndarray [shape=(..., n_samples)]
        A new array with the dtype of ``y``; it never shares memory with ``y``.

    Examples
    --------
    >>> fit_length(np.array([1.0, 2.0]), 4)
    array([0., 1., 2., 0.])
    >>> fit_length(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 3)
    array([2., 3., 4.])
    >>> fit_length(np.array([1.0, 2.0, 3.0]), 5, offset="start")
    array([1., 2., 3., 0., 0.])
    """
    if offset not in _OFFSETS:
        raise ValueError(f"offset must be one of {_OFFSETS}, got {offset!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
        raise TypeError(f"n_samples must be an int, got {type(n_samples).__name__}")
    n_samples = int(n_samples)
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    y = np.asarray(y)
    if y.ndim == 0:
        raise ValueError("fit_length expects an array of shape (..., n), got a scalar")
    n = y.shape[-1]
    if n >= n_samples:
        excess = n - n_samples
        if offset == "center":
            start = excess // 2
        elif offset == "start":
            start = 0
        else:
            start = int((rng or np.random.default_rng()).integers(0, excess + 1))
        return y[..., start : start + n_samples].copy()
    pad = n_samples - n
    if offset == "center":
        left = pad // 2
    elif offset == "start":
        left = 0
    else:
        left = int((rng or np.random.default_rng()).integers(0, pad + 1))
    out = np.zeros(y.shape[:-1] + (n_samples,), dtype=y.dtype)
    out[..., left : left + n] = y
    return out


def rms_db(y: np.ndarray) -> float:
    """Root-mean-square level of a waveform in dBFS.

    Parameters
    ----------
    y : np.ndarray [shape=(...,)]
        Samples scaled to ``[-1, 1)``; all of them are pooled.

    Returns
    -------
    level : float
        ``20 * log10(sqrt(mean(y ** 2)))``: 0 dBFS for a full-scale square wave, about -3.01 dBFS for a
        full-scale sine, ``-inf`` for all zeros or an empty array.

    Examples
    --------
    >>> rms_db(np.ones(100))
    0.0
    >>> rms_db(np.zeros(100))
    -inf
    """
    y = np.asarray(y)
    if y.size == 0:
        return -math.inf
    power = float(np.mean(np.square(y, dtype=np.float64)))
    if power == 0.0:
        return -math.inf
    return 10.0 * math.log10(power)


def check_waveform(
    y: np.ndarray,
    *,
    name: str = "<array>",
    require_level: bool = False,
    min_rms_db: float = -70.0,
) -> np.ndarray:
    """Validate an in-memory waveform and return it as ``float32``.

    Parameters
    ----------
    y : array_like [shape=(n,) or (channels, n)]
        Real samples. Floating point is taken as is; int8, uint8, int16 and int32 are integer PCM and scaled to
        ``[-1, 1)``. Other dtypes (bool, complex, int64, unsigned wider than 8 bits, object) are refused, as their
        scale is ambiguous.
    name : str
        How the waveform is called in error messages.
    require_level : bool
        If True, refuse the waveform when the RMS level of any row is below ``min_rms_db``.
    min_rms_db : float
        Threshold in dBFS used when ``require_level`` is True.

    Returns
    -------
    y : np.ndarray [shape=(n,) or (channels, n), dtype=float32]
        The same samples as C-contiguous ``float32``; the input itself when it already is.

    Raises
    ------
    AudioError
        The array has more than 2 dimensions, no samples, an unsupported dtype, NaN or Inf values, or (with
        ``require_level``) a level below ``min_rms_db``.
    """
    try:
        y = np.asarray(y)
    except Exception as exc:
        raise AudioError(f"{name}: cannot be read as an array ({exc})") from None
    if y.ndim not in (1, 2):
        raise AudioError(
            f"{name}: expected a waveform of shape (n,) or (channels, n), got shape {y.shape}"
            + ("; pass one clip at a time or reshape to (-1, n)" if y.ndim > 2 else "")
        )
    if y.dtype in _INT_FULL_SCALE:
        centre, scale = _INT_FULL_SCALE[y.dtype]
        y = ((y.astype(np.float32) - np.float32(centre)) / np.float32(scale)).astype(np.float32)
    elif y.dtype.kind == "f":
        y = np.ascontiguousarray(y, dtype=np.float32)
    else:
        raise AudioError(
            f"{name}: unsupported sample dtype {y.dtype}; expected floating point in [-1, 1) "
            "or int8/uint8/int16/int32 PCM"
        )
    if y.size == 0:
        raise AudioError(f"{name}: empty waveform (shape {y.shape}, no samples)")
    finite = np.isfinite(y)
    if not finite.all():
        kind = "NaN" if np.isnan(y).any() else "Inf"
        bad = np.isnan(y) if kind == "NaN" else ~finite
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), y.shape)
        where = f"sample {idx[0]}" if y.ndim == 1 else f"channel {idx[0]}, sample {idx[1]}"
        count = int(bad.sum())
        raise AudioError(f"{name}: contains {count} {kind} sample(s), first at {where}; the audio is corrupt")
    if require_level:
        rows = y[None, :] if y.ndim == 1 else y
        levels = [rms_db(row) for row in rows]
        worst = int(np.argmin(levels))
        if levels[worst] < min_rms_db:
            which = "" if y.ndim == 1 else f" (channel {worst})"
            raise AudioError(
                f"{name}: silent or too quiet{which}: RMS level {levels[worst]:.1f} dBFS is below "
                f"min_rms_db={min_rms_db:g} dBFS; check the recording, or lower min_rms_db / pass "
                "require_level=False"
            )
    return y


def save_wav(path: str | os.PathLike, y: np.ndarray, sample_rate: int) -> None:
    """Write a waveform as a 16-bit PCM WAV file, atomically.

    The file is written to a temporary name in the destination directory, flushed to disk and then moved over
    ``path`` with :func:`os.replace`, so readers see either the old file or the complete new one.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its directory must exist.
    y : np.ndarray [shape=(n,) or (channels, n)]
        Samples in ``[-1, 1)``. Values outside are saturated to the 16-bit range. Samples are quantised as
        ``round(y * 32768)``, the exact inverse of how :func:`load_audio` scales 16-bit PCM.
    sample_rate : int > 0
        Rate written into the header, in Hz.

    Raises
    ------
    AudioError
        ``y`` is not a usable waveform (see :func:`check_waveform`).
    OSError
        The file cannot be written.
    """
    name = os.fsdecode(os.fspath(path))
    rate = _positive_rate(sample_rate, "sample_rate")
    if rate != int(rate):
        raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate}")
    y = check_waveform(y, name=name)
    if y.ndim == 2 and y.shape[0] > y.shape[1]:
        raise AudioError(
            f"{name}: got shape {y.shape}, more channels than samples; pass channels first, shape (channels, n)"
        )
    pcm = np.clip(np.rint(y.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    frames = pcm if pcm.ndim == 1 else np.ascontiguousarray(pcm.T)
    if not os.path.isdir(os.path.dirname(os.path.abspath(name))):
        raise FileNotFoundError(f"{name}: the destination folder does not exist")
    with atomic_open(name, "w+b") as fh:
        sf.write(fh, frames, int(rate), format="WAV", subtype="PCM_16")


def _check_target(sample_rate: int, clip_seconds: float | None, offset: str) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise TypeError(f"sample_rate must be an int, got {type(sample_rate).__name__}")
    lo, hi = SUPPORTED_RATE_RANGE
    if not lo <= sample_rate <= hi:
        raise ValueError(f"sample_rate must be within {lo}-{hi} Hz, got {sample_rate}")
    if clip_seconds is not None and not (math.isfinite(clip_seconds) and clip_seconds > 0):
        raise ValueError(f"clip_seconds must be a positive number or None, got {clip_seconds}")
    if offset not in _OFFSETS:
        raise ValueError(f"offset must be one of {_OFFSETS}, got {offset!r}")


def _positive_rate(rate: float, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {type(rate).__name__}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{what} must be a positive number of Hz, got {rate}")
    return rate


def _decode(fh: BinaryIO, size: int, name: str) -> tuple[np.ndarray, int]:
    """Read a whole file object into ``(samples [shape=(channels, n), float32], rate)``."""
    if size == 0:
        raise AudioError(f"{name}: empty file (0 bytes); expected WAV, FLAC or OGG audio")
    _check_riff(fh, size, name)
    fh.seek(0)
    try:
        with sf.SoundFile(fh) as snd:
            rate, channels, declared = snd.samplerate, snd.channels, snd.frames
            lo, hi = SUPPORTED_RATE_RANGE
            if not lo <= rate <= hi:
                raise AudioError(
                    f"{name}: unsupported sample rate {rate} Hz (supported: {lo}-{hi} Hz); "
                    "resample the file into that range, or check that its header is not damaged"
                )
            if channels < 1:
                raise AudioError(f"{name}: header declares {channels} channels; the file is damaged")
            if declared == 0:
                raise AudioError(
                    f"{name}: contains no audio (the header announces 0 frames); if the file should hold "
                    "audio it is truncated or damaged"
                )
            data = snd.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except sf.LibsndfileError as exc:
        reason = (exc.error_string or "").strip().rstrip(".")
        if "not recognised" in reason.lower() or "unknown format" in reason.lower():
            raise AudioError(
                f"{name}: not a recognised audio file ({reason}); expected WAV, FLAC or OGG"
            ) from None
        raise AudioError(
            f"{name}: cannot decode the audio ({reason or f'libsndfile error {exc.code}'}); "
            "the file is damaged, truncated or not audio"
        ) from None
    except (RuntimeError, ValueError, TypeError, OSError, MemoryError) as exc:
        raise AudioError(f"{name}: cannot decode the audio ({exc}); the file is damaged or not audio") from None
    if data.shape[0] < declared:
        raise AudioError(
            f"{name}: truncated: header announces {declared} frames but only {data.shape[0]} could be decoded; "
            "the file was cut short or is damaged (re-export or re-download it)"
        )
    if data.shape[0] == 0:
        raise AudioError(f"{name}: contains no audio (0 frames could be decoded)")
    return data.T, rate


def _check_riff(fh: BinaryIO, size: int, name: str) -> None:
    """Refuse RIFF/RIFX/RF64 WAVE files whose chunk sizes run past the end of the file."""
    fh.seek(0)
    head = fh.read(12)
    if len(head) < 12:
        if head[:4] in (b"RIFF", b"RIFX", b"RF64"):
            raise AudioError(f"{name}: truncated WAV: only {size} bytes, the RIFF header alone needs 12")
        return
    magic, form = head[:4], head[8:12]
    if magic not in (b"RIFF", b"RIFX", b"RF64") or form != b"WAVE":
        return
    endian = ">" if magic == b"RIFX" else "<"
    ds64_data_size = None
    pos = 12
    while True:
        fh.seek(pos)
        chunk = fh.read(8)
        if len(chunk) < 8:
            raise AudioError(
                f"{name}: truncated WAV: the file ends after {size} bytes without a 'data' chunk; "
                "the file was cut short or is damaged (re-export or re-download it)"
            )
        cid = chunk[:4]
        (csize,) = struct.unpack(endian + "I", chunk[4:])
        body = pos + 8
        available = size - body
        if cid == b"ds64" and magic == b"RF64" and csize >= 16:
            ds64 = fh.read(16)
            if len(ds64) == 16:
                ds64_data_size = struct.unpack("<Q", ds64[8:16])[0]
        if cid == b"data":
            declared = csize
            if magic == b"RF64" and csize == _STREAMING_DATA_SIZE and ds64_data_size is not None:
                declared = ds64_data_size
            elif csize == _STREAMING_DATA_SIZE:
                return
            if declared > available:
                raise AudioError(
                    f"{name}: truncated WAV: the data chunk declares {declared} bytes but only {available} "
                    "follow; the file was cut short or is damaged (re-export or re-download it)"
                )
            return
        if csize > available:
            label = cid.decode("ascii", "replace")
            raise AudioError(
                f"{name}: truncated WAV: the {label!r} chunk declares {csize} bytes but only {available} "
                "follow and no 'data' chunk precedes it; the file is damaged"
            )
        pos = body + csize + (csize & 1)


def _finish(
    data: np.ndarray,
    rate: int,
    name: str,
    sample_rate: int,
    clip_seconds: float | None,
    offset: str,
    require_level: bool,
    min_rms_db: float,
) -> np.ndarray:
    """Validate ``(channels, n)`` samples, mix to mono, apply the level check, resample and fit the length."""
    if data.shape[0] == 1:
        y = data[0]
    else:
        y = check_waveform(data, name=name).mean(axis=0, dtype=np.float32)
    y = check_waveform(y, name=name, require_level=require_level, min_rms_db=min_rms_db)
    y = resample(y, rate, sample_rate)
    if clip_seconds is not None:
        y = fit_length(y, int(round(clip_seconds * sample_rate)), offset=offset)
    return np.ascontiguousarray(y, dtype=np.float32)
