"""Synthetic streams: what a keyword detector hears between and around keywords, with every word's position known.

A detector classifies the last 1.46 s of audio every 80 ms. Most of those windows hold no keyword: other speech,
a keyword half in or half out of the window, silence, noise, music. Clips of one centred word (the synthetic
keyword set) never show a classifier those windows. A synthetic stream does: a bed of background sound that changes
every few seconds (the keyword recipe's noise kinds, music-like tones, silence at a faint floor) with, 0.2-2.5 s
apart, keywords, other words, sentences of other words and cut-off keyword fragments spoken by eSpeak NG voices of
one fold, each through its own room, the whole stream through one microphone response.

:func:`render_stream` returns the audio and one :class:`StreamEvent` per utterance, with the span where it is
audible (``onset``/``offset``), so that every window of the stream can be labelled (``window_labels``): a keyword
when it lies wholly inside the window, the non-keyword class when no keyword is more than partly inside, and left
out in between. Other words never include a keyword or one of its sound-alikes (:func:`nothing_words`).

A stream is a pure function of (stream recipe version, seed, vocabulary, fold, index, seconds): each draws from
its own seeded generator and the synthesiser is reset before every utterance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from edgekws.datasets.synthetic import (
    PAPER_KEYWORDS,
    _active_region,
    _babble_bank,
    _banned_words,
    _db,
    _fft_convolve,
    _mic_response,
    _noise,
    _pools,
    _rms,
    _room_response,
    _seed_int,
    _speak,
    nothing_words,
)

__all__ = ["STREAM_VERSION", "StreamEvent", "render_stream", "window_labels", "window_spans"]

STREAM_VERSION = 1

# what an event is, with its probability (the rest of the time is background only)
_EVENT_KINDS = ("keyword", "words", "sentence", "fragment", "pause")
_EVENT_P = (0.38, 0.2, 0.22, 0.08, 0.12)
_BED_KINDS = ("noise", "music", "floor")
_BED_P = (0.6, 0.15, 0.25)


@dataclass(frozen=True)
class StreamEvent:
    """One utterance in a stream. ``kind``: ``keyword``, ``words`` (one or two other words), ``sentence`` (3-9
    other words) or ``fragment`` (the first 25-60 % of a keyword, cut off); ``text``: what was said (for a fragment,
    the keyword it was cut from); ``start``/``end``: where the utterance's samples lie, ``onset``/``offset`` where it
    is audible (within 30 dB of its loudest 10 ms), in seconds from the stream's start; ``level_dbfs``: its RMS."""

    kind: str
    text: str
    voice: str
    start: float
    end: float
    onset: float
    offset: float
    level_dbfs: float

    def to_dict(self) -> dict:
        return asdict(self)


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_seed_int("stream", STREAM_VERSION, *parts))


def _music(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Music-like sound: one to three voices of harmonic notes (a random scale, tempo, timbre and decay), with
    vibrato, sometimes a percussive pulse. Unit RMS."""
    t_total = n / sr
    out = np.zeros(n)
    root = 110.0 * 2 ** (rng.integers(0, 24) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11] if rng.random() < 0.6 else [0, 3, 5, 7, 10])
    beat = float(rng.uniform(0.12, 0.6))
    for _ in range(int(rng.integers(1, 4))):
        octave = int(rng.integers(0, 3))
        n_partials = int(rng.integers(1, 9))
        rolloff = float(rng.uniform(0.5, 2.0))
        decay = float(rng.uniform(1.0, 12.0))
        t0 = 0.0
        while t0 < t_total:
            dur = beat * int(rng.choice([1, 1, 2, 2, 3, 4]))
            f0 = root * 2 ** octave * 2 ** (scale[int(rng.integers(len(scale)))] / 12)
            a, b = int(t0 * sr), min(n, int((t0 + dur) * sr))
            if b > a and f0 < sr / 2:
                t = np.arange(b - a) / sr
                vib = 1 + 0.004 * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
                note = sum(k ** -rolloff * np.sin(2 * np.pi * k * f0 * np.cumsum(vib) / sr)
                           for k in range(1, n_partials + 1) if k * f0 < sr / 2)
                env = np.exp(-decay * t) * np.minimum(1.0, t / 0.01)
                out[a:b] += note * env
            t0 += dur
    if rng.random() < 0.4:
        period = int(beat * sr * rng.choice([1, 2]))
        m = int(0.03 * sr)
        for at in range(int(rng.integers(0, period)), n, max(period, 1)):
            end = min(n, at + m)
            out[at:end] += rng.standard_normal(end - at) * np.exp(-np.arange(end - at) / (m / 6)) * 0.8
    return out / _rms(out)


def _bed(rng: np.random.Generator, n: int, sr: int, babble: Sequence[np.ndarray]) -> np.ndarray:
    """Background segments of 2-10 s (noise kinds of the keyword recipe, music, a faint floor) at -75 to -28 dBFS,
    joined with 50 ms cross-fades."""
    out = np.zeros(n)
    fade = int(0.05 * sr)
    pos = 0
    while pos < n:
        length = min(int(rng.uniform(2.0, 10.0) * sr), n - pos + fade)
        kind = _BED_KINDS[int(rng.choice(len(_BED_KINDS), p=_BED_P))]
        if kind == "noise":
            seg, _ = _noise(rng, length, sr, babble)
            level = float(rng.uniform(-65.0, -28.0))
        elif kind == "music":
            seg = _music(rng, length, sr)
            level = float(rng.uniform(-55.0, -28.0))
        else:
            seg = rng.standard_normal(length)
            level = float(rng.uniform(-90.0, -60.0))
        seg = seg / _rms(seg) * _db(level)
        f = min(fade, length // 2)
        if f:
            seg[:f] *= np.linspace(0, 1, f)
            seg[-f:] *= np.linspace(1, 0, f)
        start = max(0, pos - f)
        end = min(n, start + length)
        out[start:end] += seg[: end - start]
        pos = end
    return out


def _utterance(rng: np.random.Generator, kind: str, vocabulary: Sequence[str], others: Sequence[str], voice: str,
               sr: int) -> tuple[np.ndarray, str]:
    if kind in ("keyword", "fragment"):
        text = str(vocabulary[int(rng.integers(len(vocabulary)))])
        speech, _ = _speak(rng, text, voice, sr, int(1.0 * sr))
        if kind == "fragment":  # the first part of the word, faded out over 10 ms
            a, b = _active_region(speech, sr, floor_db=30.0)
            cut = a + int((b - a) * rng.uniform(0.25, 0.6))
            speech = speech[:cut].copy()
            f = min(len(speech), int(0.01 * sr))
            if f:
                speech[-f:] *= np.linspace(1, 0, f)
        return speech, text
    count = 1 + int(rng.random() < 0.35) if kind == "words" else int(rng.integers(3, 10))
    text = " ".join(str(w) for w in rng.choice(others, size=count))
    speech, _ = _speak(rng, text, voice, sr, int(6.0 * sr))
    return speech, text


def render_stream(index: int, *, seed: int = 0, seconds: float = 60.0, vocabulary: Sequence[str] = PAPER_KEYWORDS,
                  fold: str = "train", sample_rate: int = 16000) -> tuple[np.ndarray, list[StreamEvent]]:
    """Stream ``index``: float32 audio ``(round(seconds * sample_rate),)`` and its events, in time order.

    Voices come from the keyword recipe's ``fold`` (``train``/``val``/``test``: disjoint voices), other words from
    :func:`nothing_words` of ``vocabulary``. Speech sits 0-30 dB above the background under it (at -40 to -8 dBFS).
    """
    if fold not in ("train", "val", "test"):
        raise ValueError(f"fold must be train, val or test, got {fold!r}")
    vocabulary = tuple(str(k) for k in vocabulary)
    if not vocabulary:
        raise ValueError("vocabulary must name at least one keyword")
    sr = int(sample_rate)
    n = round(seconds * sr)
    rng = _rng(seed, json.dumps(vocabulary), fold, index, round(float(seconds), 3), sr)
    babble = _babble_bank(int(seed), _banned_words(vocabulary), sr)
    bed = _bed(rng, n, sr, babble)
    speech_track = np.zeros(n)
    voices = _pools()[fold]
    others = nothing_words(vocabulary)
    events: list[StreamEvent] = []
    t = float(rng.uniform(0.2, 2.0))
    while t < seconds:
        kind = _EVENT_KINDS[int(rng.choice(len(_EVENT_KINDS), p=_EVENT_P))]
        if kind == "pause":
            t += float(rng.uniform(1.0, 5.0))
            continue
        voice = str(voices[int(rng.integers(len(voices)))])
        speech, text = _utterance(rng, kind, vocabulary, others, voice, sr)
        if rng.random() < 0.6:
            speech = _fft_convolve(speech, _room_response(rng, sr, float(rng.uniform(0.1, 0.8))))
        a = round(t * sr)
        if a + len(speech) > n:
            break
        on, off = (int(v) for v in _active_region(speech, sr, floor_db=30.0))
        local = _rms(bed[a + on: a + off]) if off > on else _rms(bed[a: a + len(speech)])
        level_db = float(np.clip(20 * math.log10(local) + rng.uniform(0.0, 30.0), -40.0, -8.0))
        speech = speech * (_db(level_db) / _rms(speech[on:off] if off > on else speech))
        speech_track[a: a + len(speech)] += speech
        events.append(StreamEvent(kind=kind, text=text, voice=voice, start=a / sr, end=(a + len(speech)) / sr,
                                  onset=(a + on) / sr, offset=(a + int(off)) / sr,
                                  level_dbfs=round(level_db, 2)))
        t = (a + len(speech)) / sr + float(rng.uniform(0.2, 2.5))
    mix = bed + speech_track
    gain, _ = _mic_response(rng, n, sr)
    mix = np.fft.irfft(np.fft.rfft(mix) * gain, n)
    peak = float(np.max(np.abs(mix))) if n else 0.0
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix.astype(np.float32), events


def window_spans(n_windows: int, *, n_embeddings: int = 9, stride_samples: int = 1280, span_samples: int = 12512,
                 sample_rate: int = 16000) -> np.ndarray:
    """``(n_windows, 2)`` start and end (seconds) of the audio each detector window reads: window ``i`` is the
    embeddings ``i .. i + n_embeddings - 1`` of the stream (embedding ``j`` reads samples ``[stride * j,
    stride * j + span)``)."""
    i = np.arange(n_windows, dtype=np.float64)
    start = i * stride_samples
    end = (i + n_embeddings - 1) * stride_samples + span_samples
    return np.stack([start, end], axis=1) / sample_rate


def window_labels(events: Sequence[StreamEvent], spans: np.ndarray, vocabulary: Sequence[str], *,
                  margin_s: float = 0.1, negative_below: float = 0.5) -> np.ndarray:
    """A class index per window (``len(vocabulary)`` = the non-keyword class) or -1 (left out of training).

    A window is keyword ``k`` when one ``k`` event is audible only inside it (at least ``margin_s`` from both ends)
    and no other keyword is partly inside; it is the non-keyword class when no keyword has more than
    ``negative_below`` of its audible span inside (fragments, other words, sentences, background never count as
    keywords); anything else (a keyword partly in) is left out.
    """
    vocabulary = tuple(vocabulary)
    labels = np.full(len(spans), len(vocabulary), np.int64)
    kws = [e for e in events if e.kind == "keyword"]
    if not kws or not len(spans):
        return labels
    on = np.array([e.onset for e in kws])
    off = np.array([e.offset for e in kws])
    cls = np.array([vocabulary.index(e.text) for e in kws])
    ws, we = spans[:, :1], spans[:, 1:]
    inside = np.clip(np.minimum(we, off[None]) - np.maximum(ws, on[None]), 0.0, None) / np.maximum(off - on, 1e-6)
    whole = (on[None] >= ws + margin_s) & (off[None] <= we - margin_s)
    partly = inside > negative_below
    n_whole = whole.sum(1)
    n_partly = partly.sum(1)
    pos = (n_whole == 1) & (n_partly == 1)
    labels[n_partly > 0] = -1
    labels[pos] = cls[np.argmax(whole[pos], axis=1)]
    return labels
