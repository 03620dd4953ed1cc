"""Audio sources behind one interface: microphone, WAV file, raw PCM on stdin. Torch-free.

Every source yields mono float32 blocks at ``sample_rate`` (16 kHz by default), whatever rate the hardware or file
uses (resampled with soxr), and is a context manager::

    with WavSource("sentence.wav", realtime=False) as src:
        for block in src:          # (n,) float32, about block_ms long
            ...

:func:`open_source` builds the right source from command-line style arguments. A microphone that cannot be
opened raises :class:`AudioSourceError` whose message names the fix (``apt-get install libportaudio2``,
``--device``, ``--wav``).
"""

from __future__ import annotations

import os
import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soxr

from edgekws.audio import AudioError, load_audio

__all__ = [
    "ArraySource",
    "AudioSource",
    "AudioSourceError",
    "MicrophoneSource",
    "RawPCMSource",
    "WavSource",
    "list_input_devices",
    "open_source",
]

_FIX = "install PortAudio (apt-get install libportaudio2), choose a device with --device, or read a file with --wav FILE"


class AudioSourceError(RuntimeError):
    """An audio source cannot be opened or read; the message says what to do."""


class AudioSource:
    """Base class: iterate to get float32 mono blocks at ``sample_rate``; ``close()`` releases the device."""

    sample_rate: int = 16000
    block_ms: float = 20.0
    name: str = "audio"

    def blocks(self) -> Iterator[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.blocks()

    def close(self) -> None:
        pass

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def block_samples(self) -> int:
        return max(1, round(self.sample_rate * self.block_ms / 1000.0))


class ArraySource(AudioSource):
    """An in-memory waveform as a stream (for tests and for audio already decoded)."""

    def __init__(self, y: np.ndarray, sample_rate: int = 16000, *, block_ms: float = 20.0,
                 realtime: bool = False, name: str = "array") -> None:
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 1:
            raise ValueError(f"expected mono (n,) audio, got shape {y.shape}")
        self.y, self.sample_rate, self.block_ms, self.realtime, self.name = y, int(sample_rate), block_ms, realtime, name

    def blocks(self) -> Iterator[np.ndarray]:
        n = self.block_samples
        t0 = time.monotonic()
        for i in range(0, len(self.y), n):
            if self.realtime:
                due = t0 + i / self.sample_rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield self.y[i : i + n]


class WavSource(ArraySource):
    """A sound file played as a stream, at real-time pace (``realtime=True``) or as fast as possible."""

    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, *, block_ms: float = 20.0,
                 realtime: bool = False) -> None:
        try:
            y = load_audio(path, sample_rate=sample_rate)
        except AudioError as exc:
            raise AudioSourceError(str(exc)) from exc
        if y.ndim != 1:
            y = y.reshape(-1)
        super().__init__(y, sample_rate, block_ms=block_ms, realtime=realtime, name=str(Path(path).name))


_PCM_DTYPES = {"s16le": ("<i2", 32768.0), "s32le": ("<i4", 2147483648.0), "f32le": ("<f4", 1.0)}


class RawPCMSource(AudioSource):
    """Raw interleaved PCM from a byte stream (default: stdin), e.g. ``arecord -f S16_LE -r 16000 -c 1 -t raw``."""

    def __init__(self, stream: BinaryIO | None = None, *, input_rate: int = 16000, channels: int = 1,
                 fmt: str = "s16le", sample_rate: int = 16000, block_ms: float = 20.0) -> None:
        if fmt not in _PCM_DTYPES:
            raise ValueError(f"unknown PCM format {fmt!r}; choose one of {sorted(_PCM_DTYPES)}")
        if channels < 1 or input_rate <= 0:
            raise ValueError("channels and input_rate must be positive")
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.input_rate, self.channels, self.fmt = int(input_rate), int(channels), fmt
        self.sample_rate, self.block_ms, self.name = int(sample_rate), block_ms, "stdin"

    def blocks(self) -> Iterator[np.ndarray]:
        dtype, scale = _PCM_DTYPES[self.fmt]
        frame_bytes = np.dtype(dtype).itemsize * self.channels
        n_in = max(1, round(self.input_rate * self.block_ms / 1000.0))
        rs = soxr.ResampleStream(self.input_rate, self.sample_rate, 1, dtype="float32") \
            if self.input_rate != self.sample_rate else None
        carry = b""
        while True:
            chunk = self.stream.read(n_in * frame_bytes - len(carry))
            if not chunk:
                break
            data = carry + chunk
            usable = len(data) - len(data) % frame_bytes
            carry = data[usable:]
            if not usable:
                continue
            x = np.frombuffer(data[:usable], dtype=dtype).reshape(-1, self.channels).astype(np.float32) / scale
            x = x.mean(axis=1)
            if rs is not None:
                x = rs.resample_chunk(x)
            if x.size:
                yield x
        if rs is not None:
            tail = rs.resample_chunk(np.zeros(0, np.float32), last=True)
            if tail.size:
                yield tail


def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as exc:  # the wheel imports fine but libportaudio is missing
        raise AudioSourceError(f"PortAudio library not found ({exc}); {_FIX}") from exc
    except ImportError as exc:
        raise AudioSourceError(f"sounddevice is not installed (pip install sounddevice); {_FIX}") from exc
    return sd


def list_input_devices() -> list[dict]:
    """Input devices PortAudio sees: ``[{"index", "name", "channels", "default_samplerate"}]``."""
    sd = _sounddevice()
    return [{"index": i, "name": d["name"], "channels": d["max_input_channels"],
             "default_samplerate": d["default_samplerate"]}
            for i, d in enumerate(sd.query_devices()) if d.get("max_input_channels", 0) > 0]


class MicrophoneSource(AudioSource):
    """A sounddevice input stream at the device's rate (or ``input_rate``), resampled to ``sample_rate``."""

    def __init__(self, device: int | str | None = None, *, input_rate: int | None = None, channels: int = 1,
                 sample_rate: int = 16000, block_ms: float = 20.0, max_seconds: float | None = None) -> None:
        sd = _sounddevice()
        try:
            info = sd.query_devices(device, "input")
        except (ValueError, sd.PortAudioError) as exc:
            try:
                names = ", ".join(f"{d['index']}: {d['name']}" for d in list_input_devices()) or "none"
            except Exception:
                names = "unknown"
            which = f"input device {device!r}" if device is not None else "a default input device"
            raise AudioSourceError(f"cannot open {which} ({exc}). Input devices: {names}. {_FIX}") from exc
        self.input_rate = int(input_rate or info["default_samplerate"])
        self.channels = max(1, min(int(channels), int(info["max_input_channels"]) or 1))
        self.sample_rate, self.block_ms = int(sample_rate), block_ms
        self.name = f"mic:{info['name']}"
        self.max_seconds = max_seconds
        self._q: queue.Queue = queue.Queue(maxsize=256)
        self.overflows = 0
        blocksize = max(1, round(self.input_rate * block_ms / 1000.0))

        def callback(indata, frames, t, status):  # runs on PortAudio's thread
            if status:
                self.overflows += 1
            try:
                self._q.put_nowait(indata.copy())
            except queue.Full:
                self.overflows += 1

        try:
            self._stream = sd.InputStream(device=device, channels=self.channels, samplerate=self.input_rate,
                                          blocksize=blocksize, dtype="float32", callback=callback)
            self._stream.start()
        except Exception as exc:
            raise AudioSourceError(f"cannot start recording from {self.name} at {self.input_rate} Hz ({exc}); "
                                   f"try another --rate or --device, or {_FIX}") from exc
        self._rs = soxr.ResampleStream(self.input_rate, self.sample_rate, 1, dtype="float32") \
            if self.input_rate != self.sample_rate else None

    def blocks(self) -> Iterator[np.ndarray]:
        got = 0
        while self.max_seconds is None or got < self.max_seconds * self.sample_rate:
            try:
                x = self._q.get(timeout=2.0)
            except queue.Empty:
                raise AudioSourceError(f"no audio from {self.name} for 2 s; {_FIX}") from None
            x = x.mean(axis=1).astype(np.float32)
            if self._rs is not None:
                x = self._rs.resample_chunk(x)
            got += x.size
            if x.size:
                yield x

    def close(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.stop()
            stream.close()
            self._stream = None


def open_source(*, wav: str | os.PathLike | None = None, stdin: bool = False, device: int | str | None = None,
                input_rate: int | None = None, realtime: bool = False, sample_rate: int = 16000,
                block_ms: float = 20.0, pcm_format: str = "s16le", max_seconds: float | None = None) -> AudioSource:
    """The source the options describe: ``wav`` > ``stdin`` > microphone."""
    if wav is not None and stdin:
        raise ValueError("choose one of --wav and --stdin")
    if input_rate is not None and input_rate <= 0:
        raise ValueError(f"the capture rate must be a positive number of Hz, got {input_rate}")
    if wav is not None:
        return WavSource(wav, sample_rate, block_ms=block_ms, realtime=realtime)
    if stdin:
        return RawPCMSource(input_rate=input_rate or sample_rate, fmt=pcm_format, sample_rate=sample_rate,
                            block_ms=block_ms)
    return MicrophoneSource(device, input_rate=input_rate, sample_rate=sample_rate, block_ms=block_ms,
                            max_seconds=max_seconds)
