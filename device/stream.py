"""Audio sources behind one interface: microphone, sound file (read in blocks), raw PCM on stdin. Torch-free.

Every source yields mono float32 blocks at ``sample_rate`` (16 kHz by default), whatever rate the hardware or file
uses (resampled with soxr), and is a context manager::

    with WavSource("sentence.wav", realtime=False) as src:
        for block in src:          # (n,) float32, about block_ms long
            ...

:func:`open_source` builds the right source from command-line style arguments; :func:`record` writes a source to a
WAV file as it comes. No source holds more than a block: memory does not grow with the length of the audio. A
microphone counts the audio it lost (``overflows``, ``dropped_seconds``) for the caller to report. A microphone that cannot be
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

from edgekws.audio import AudioError

__all__ = [
    "ArraySource",
    "AudioSource",
    "AudioSourceError",
    "MicrophoneSource",
    "RawPCMSource",
    "WavSource",
    "list_input_devices",
    "open_source",
    "record",
]

_FIX = (
    "install PortAudio (apt-get install libportaudio2), choose a device with --device, or read a file with --wav FILE"
)


class AudioSourceError(RuntimeError):
    """An audio source cannot be opened or read; the message says what to do."""


class AudioSource:
    """Base class: iterate to get float32 mono blocks at ``sample_rate``; ``close()`` releases the device.

    ``overflows`` counts the times audio was lost before it reached the caller (a microphone the process did not
    keep up with); it stays 0 for files and pipes, which wait for their reader."""

    sample_rate: int = 16000
    block_ms: float = 20.0
    name: str = "audio"
    overflows: int = 0

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

    def __init__(
        self,
        y: np.ndarray,
        sample_rate: int = 16000,
        *,
        block_ms: float = 20.0,
        realtime: bool = False,
        name: str = "array",
    ) -> None:
        y = np.asarray(y, dtype=np.float32)
        if y.ndim != 1:
            raise ValueError(f"expected mono (n,) audio, got shape {y.shape}")
        self.y, self.sample_rate, self.block_ms, self.realtime, self.name = (
            y,
            int(sample_rate),
            block_ms,
            realtime,
            name,
        )

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


class WavSource(AudioSource):
    """A sound file (WAV, FLAC, OGG) played as a stream, read in blocks: memory does not grow with its length.

    The file is checked when the source is made (readable, a supported rate, frames announced, a WAV whose chunks
    fit the file); samples are mixed to mono and resampled to ``sample_rate`` block by block (soxr, ``"HQ"``), at
    real-time pace (``realtime=True``) or as fast as possible. A block holding NaN or infinity, or a file that ends
    before the frames its header announced, raises :class:`AudioSourceError` where it happens. At the file's own
    rate the samples equal :func:`edgekws.audio.load_audio`'s."""

    def __init__(
        self, path: str | os.PathLike, sample_rate: int = 16000, *, block_ms: float = 20.0, realtime: bool = False
    ) -> None:
        self.path = Path(path)
        self.sample_rate, self.block_ms, self.realtime = int(sample_rate), block_ms, realtime
        self.name = str(self.path.name)
        with self._open() as snd:
            self.file_rate, self.channels, self.frames = int(snd.samplerate), int(snd.channels), int(snd.frames)
        self.seconds = self.frames / self.file_rate

    def _open(self):
        import soundfile as sf

        from edgekws.audio import SUPPORTED_RATE_RANGE, _check_riff

        name = str(self.path)
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - handed to SoundFile, closed with it
        except FileNotFoundError:
            raise AudioSourceError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise AudioSourceError(f"{name}: is a directory, not an audio file") from None
        except OSError as exc:
            raise AudioSourceError(f"{name}: cannot open the file ({exc.strerror or exc})") from None
        try:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise AudioSourceError(f"{name}: empty file (0 bytes); expected WAV, FLAC or OGG audio")
            _check_riff(fh, size, name)
            fh.seek(0)
            snd = sf.SoundFile(fh)
        except AudioError as exc:
            fh.close()
            raise AudioSourceError(str(exc)) from None
        except AudioSourceError:
            fh.close()
            raise
        except Exception as exc:
            fh.close()
            raise AudioSourceError(f"{name}: not a readable audio file ({exc}); expected WAV, FLAC or OGG") from None
        lo, hi = SUPPORTED_RATE_RANGE
        if not lo <= snd.samplerate <= hi or snd.channels < 1 or snd.frames == 0:
            why = (
                f"unsupported sample rate {snd.samplerate} Hz (supported: {lo}-{hi} Hz)"
                if not lo <= snd.samplerate <= hi
                else "contains no audio (the header announces 0 frames)"
            )
            snd.close()
            fh.close()
            raise AudioSourceError(f"{name}: {why}")
        return _Closing(snd, fh)

    def blocks(self) -> Iterator[np.ndarray]:
        n_in = max(1, round(self.file_rate * self.block_ms / 1000.0))
        rs = (
            soxr.ResampleStream(self.file_rate, self.sample_rate, 1, dtype="float32", quality="HQ")
            if self.file_rate != self.sample_rate
            else None
        )
        t0 = time.monotonic()
        out = got = 0
        with self._open() as snd:
            while True:
                try:
                    data = snd.read(n_in, dtype="float32", always_2d=True)
                except Exception as exc:
                    raise AudioSourceError(f"{self.path}: cannot decode the audio after {got} frames ({exc})") from None
                if not len(data):
                    break
                got += len(data)
                x = data[:, 0] if self.channels == 1 else data.mean(axis=1, dtype=np.float32)
                if not np.all(np.isfinite(x)):
                    raise AudioSourceError(
                        f"{self.path}: contains NaN or infinite samples (near "
                        f"{got / self.file_rate:.2f} s); the file is damaged"
                    )
                if rs is not None:
                    x = rs.resample_chunk(np.ascontiguousarray(x))
                if self.realtime:
                    delay = t0 + out / self.sample_rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                out += len(x)
                if len(x):
                    yield np.ascontiguousarray(x, dtype=np.float32)
        if rs is not None:
            tail = rs.resample_chunk(np.zeros(0, np.float32), last=True)
            if tail.size:
                yield tail
        if got < self.frames:
            raise AudioSourceError(
                f"{self.path}: truncated: the header announces {self.frames} frames but only "
                f"{got} could be decoded; the file was cut short or is damaged"
            )


class _Closing:
    """A SoundFile and the file object under it, closed together."""

    def __init__(self, snd, fh) -> None:
        self.snd, self.fh = snd, fh

    def __enter__(self):
        return self.snd

    def __exit__(self, *exc: object) -> None:
        self.snd.close()
        self.fh.close()


_PCM_DTYPES = {"s16le": ("<i2", 32768.0), "s32le": ("<i4", 2147483648.0), "f32le": ("<f4", 1.0)}


class RawPCMSource(AudioSource):
    """Raw interleaved PCM from a byte stream (default: stdin), e.g. ``arecord -f S16_LE -r 16000 -c 1 -t raw``."""

    def __init__(
        self,
        stream: BinaryIO | None = None,
        *,
        input_rate: int = 16000,
        channels: int = 1,
        fmt: str = "s16le",
        sample_rate: int = 16000,
        block_ms: float = 20.0,
    ) -> None:
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
        rs = (
            soxr.ResampleStream(self.input_rate, self.sample_rate, 1, dtype="float32")
            if self.input_rate != self.sample_rate
            else None
        )
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
    return [
        {
            "index": i,
            "name": d["name"],
            "channels": d["max_input_channels"],
            "default_samplerate": d["default_samplerate"],
        }
        for i, d in enumerate(sd.query_devices())
        if d.get("max_input_channels", 0) > 0
    ]


class MicrophoneSource(AudioSource):
    """A sounddevice input stream at the device's rate (or ``input_rate``), resampled to ``sample_rate``."""

    def __init__(
        self,
        device: int | str | None = None,
        *,
        input_rate: int | None = None,
        channels: int = 1,
        sample_rate: int = 16000,
        block_ms: float = 20.0,
        max_seconds: float | None = None,
    ) -> None:
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
        self.overflows = 0  # times audio was lost: PortAudio's input overflow, or blocks this process was too slow for
        self.dropped_frames = 0  # input frames known to be lost (a block the queue had no room for)
        blocksize = max(1, round(self.input_rate * block_ms / 1000.0))

        def callback(indata, frames, t, status):  # runs on PortAudio's thread
            if status and getattr(status, "input_overflow", True):
                self.overflows += 1
            try:
                self._q.put_nowait(indata.copy())
            except queue.Full:
                self.overflows += 1
                self.dropped_frames += int(frames)

        try:
            self._stream = sd.InputStream(
                device=device,
                channels=self.channels,
                samplerate=self.input_rate,
                blocksize=blocksize,
                dtype="float32",
                callback=callback,
            )
            self._stream.start()
        except Exception as exc:
            raise AudioSourceError(
                f"cannot start recording from {self.name} at {self.input_rate} Hz ({exc}); "
                f"try another --rate or --device, or {_FIX}"
            ) from exc
        self._rs = (
            soxr.ResampleStream(self.input_rate, self.sample_rate, 1, dtype="float32")
            if self.input_rate != self.sample_rate
            else None
        )

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

    @property
    def dropped_seconds(self) -> float:
        """Seconds of microphone audio known to be lost (PortAudio's own overflows add an unknown amount)."""
        return self.dropped_frames / self.input_rate

    def close(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.stop()
            stream.close()
            self._stream = None


def record(source: AudioSource, path: str | os.PathLike) -> Path:
    """Write what ``source`` gives into a 16-bit mono WAV file as it comes (never the whole recording in memory),
    atomically: the file appears at ``path`` once the source ends. Samples are quantised as
    :func:`edgekws.audio.save_wav` does. Returns the path."""
    import soundfile as sf

    from edgekws.fileio import atomic_open

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_open(path, "w+b") as fh,
        sf.SoundFile(fh, "w", samplerate=int(source.sample_rate), channels=1, format="WAV", subtype="PCM_16") as out,
    ):
        for block in source:
            pcm = np.clip(np.rint(np.asarray(block, np.float64) * 32768.0), -32768, 32767).astype(np.int16)
            out.write(pcm)
    return path


def open_source(
    *,
    wav: str | os.PathLike | None = None,
    stdin: bool = False,
    device: int | str | None = None,
    input_rate: int | None = None,
    realtime: bool = False,
    sample_rate: int = 16000,
    block_ms: float = 20.0,
    pcm_format: str = "s16le",
    max_seconds: float | None = None,
) -> AudioSource:
    """The source the options describe: ``wav`` > ``stdin`` > microphone."""
    if wav is not None and stdin:
        raise ValueError("choose one of --wav and --stdin")
    if input_rate is not None and input_rate <= 0:
        raise ValueError(f"the capture rate must be a positive number of Hz, got {input_rate}")
    if wav is not None:  # as fast as possible, larger blocks cost less per sample and detect the same
        return WavSource(wav, sample_rate, block_ms=block_ms if realtime else max(block_ms, 100.0), realtime=realtime)
    if stdin:
        return RawPCMSource(
            input_rate=input_rate or sample_rate, fmt=pcm_format, sample_rate=sample_rate, block_ms=block_ms
        )
    return MicrophoneSource(
        device, input_rate=input_rate, sample_rate=sample_rate, block_ms=block_ms, max_seconds=max_seconds
    )
