"""The embedded default dataset: spoken keywords synthesised with eSpeak NG, made to sound recorded.

Every clip is one keyword spoken by a voice drawn from a pool of English language voices (American, British RP,
Scottish, Lancastrian, West Midlands, Caribbean, New York ...) times eSpeak's voice variants (male, female, Klatt,
whispered, creaky ...), at a random speaking rate, pitch, intonation range and vocal-tract length (a frequency
warp), with a random clause ending (falling, exclamatory, questioning, continuing intonation) and sometimes SSML
emphasis. The dry speech then goes through a recording chain: a random position inside the window (fully inside
where it fits, occasionally clipped by a few percent at an edge), a random level, an optional synthetic room
(direct path, early reflections and an exponentially decaying noise tail, RT60 0.1-0.8 s), background noise at
0-40 dB SNR or only a faint noise floor (white, pink, brown, randomly coloured, mains hum and whine, fan-like
modulated noise, clicks, or babble made of other words in other voices), a microphone response (high-pass,
low-pass, tilt, resonances) and sometimes clipping or coarse quantisation.

A clip is a pure function of (recipe version, seed, keyword list, keyword, clip index) and the installed eSpeak NG
data: it draws its parameters from its own seeded generator and the synthesiser is reset before every utterance,
so clips depend neither on the order nor on the process they are generated in (generation runs in parallel).
``groups`` hold the voice (language voice + variant) and folds come from a hash of the voice, so no voice is
shared between train, val and test. The result is cached as one compressed ``.npz`` per recipe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import soxr

from edgekws.datasets.base import ClipDataset, stable_hash_fraction
from edgekws.fileio import atomic_open

__all__ = [
    "NOTHING",
    "PAPER_KEYWORDS",
    "RECIPE_VERSION",
    "synthetic_keywords",
    "describe_variants",
    "voice_pool",
    "default_cache_dir",
    "render_clip",
    "nothing_words",
    "render_nothing",
]

RECIPE_VERSION = 2

PAPER_KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

LANGUAGE_VOICES: tuple[str, ...] = (
    "en",
    "en-029",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-gb-x-rp",
    "en-us",
    "en-us-nyc",
)

_EXCLUDED_VARIANTS = frozenset({"fast"})

_FOLD_SALT = "edgekws-synthetic-voice"
_FOLD_EDGES = (0.8, 0.9)

_BABBLE_WORDS = (
    "about after again air all also always and another any apple around ask away back bad ball bank bed been "
    "before began best better big bird black blue boat body book both box boy bread bring brother brown build "
    "busy buy call came can car card care carry cat chair change child city class clean clear close cold color "
    "come cook could country cover cup cut dark day dear does dog done door draw dream drink drive each early "
    "earth east eat egg end enough even every eye face fall family far farm fast father feel few field find fine "
    "fire first fish five floor fly follow food foot found four friend from front full game garden girl give "
    "glass good great green ground group grow hand happy hard have head hear heart help here high hill hold home "
    "horse hot hour house how idea just keep kind king know lady land large last late laugh learn leave let "
    "letter life light like line list little live long look love made make man many may mean meet milk mind "
    "minute money month moon more morning most mother move much music name near never new next nice night "
    "north nothing now number often old only open orange other over page paper park part party pass people "
    "picture place plan plant play point poor pretty put quick quiet rain read ready real red rest river road "
    "rock room round run said same sand save say school sea second see seven sheep ship shoe short show side "
    "simple sing sister sit six sleep slow small snow some song soon sound south speak spring square stand star "
    "start stay still story street strong study such summer sun sure table take talk tall tea teacher tell ten "
    "than thank that them then there these thing think three through time today together told took town tree "
    "true try turn two under until use very visit voice wait walk want warm was watch water way week well went "
    "were west what wheel when where which while white who why wide wind window winter with woman wood word "
    "work world write year young"
).split()


def default_cache_dir() -> Path:
    """``$EDGEKWS_CACHE/synthetic`` when the variable is set, else ``~/.cache/edgekws/synthetic``."""
    root = os.environ.get("EDGEKWS_CACHE")
    if root:
        return Path(root).expanduser() / "synthetic"
    return Path.home() / ".cache" / "edgekws" / "synthetic"


# Voices -----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _installed_variants() -> tuple[str, ...]:
    from edgekws import tts

    return tuple(v for v in tts.list_variants() if v not in _EXCLUDED_VARIANTS)


def voice_pool() -> tuple[str, ...]:
    """Every voice the recipe draws from: ``"language"`` and ``"language+variant"`` names, sorted."""
    variants = _installed_variants()
    voices = []
    for lang in LANGUAGE_VOICES:
        voices.append(lang)
        voices.extend(f"{lang}+{v}" for v in variants)
    return tuple(sorted(voices))


def _voice_fold(voice: str) -> str:
    u = stable_hash_fraction(voice, salt=_FOLD_SALT)
    return "train" if u < _FOLD_EDGES[0] else "val" if u < _FOLD_EDGES[1] else "test"


@lru_cache(maxsize=1)
def _pools() -> dict[str, tuple[str, ...]]:
    pools: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for v in voice_pool():
        pools[_voice_fold(v)].append(v)
    for fold, members in pools.items():
        if not members:
            raise RuntimeError(f"synthetic voice pool has no {fold} voices")
    return {k: tuple(v) for k, v in pools.items()}


def describe_variants() -> dict:
    """How many distinct voices (language voice x variant) the recipe uses, and how they split."""
    pools = _pools()
    return {
        "language_voices": len(LANGUAGE_VOICES),
        "variants": len(_installed_variants()) + 1,
        "voices": sum(len(p) for p in pools.values()),
        "per_fold": {k: len(v) for k, v in pools.items()},
    }


# Deterministic randomness -----------------------------------------------------------------------------------


def _seed_int(*parts: object) -> int:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(_seed_int(RECIPE_VERSION, *parts))


def _clip_fold(seed: int, keyword: str, index: int) -> str:
    if index < 3:
        return ("train", "val", "test")[index]
    u = _rng("fold", seed, keyword, index).random()
    return "train" if u < _FOLD_EDGES[0] else "val" if u < _FOLD_EDGES[1] else "test"


# Signal helpers ---------------------------------------------------------------------------------------------


def _db(x: float) -> float:
    return 10.0 ** (x / 20.0)


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64)) + 1e-20))


def _fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(x) + len(h) - 1
    nfft = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[:n]


def _active_region(y: np.ndarray, sr: int, floor_db: float = 40.0) -> tuple[int, int]:
    """Start and end sample of the part of ``y`` within ``floor_db`` of its loudest 10 ms frame."""
    hop = max(1, sr // 100)
    n = len(y) // hop
    if n == 0:
        return 0, len(y)
    e = np.square(y[: n * hop].astype(np.float64)).reshape(n, hop).mean(axis=1)
    active = np.flatnonzero(e > e.max() * 10.0 ** (-floor_db / 10.0))
    if active.size == 0:
        return 0, len(y)
    pad = sr // 50
    return max(0, active[0] * hop - pad), min(len(y), (active[-1] + 1) * hop + pad)


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum proportional to ``f ** -exponent`` (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    f[0] = f[1]
    shape = np.maximum(f, 20.0) ** (-exponent / 2.0)
    shape[0] = 0.0
    y = np.fft.irfft(spec * shape, n)
    return y / _rms(y)


def _room_response(rng: np.random.Generator, sr: int, rt60: float) -> np.ndarray:
    """Impulse response of a synthetic room: a direct path, sparse early reflections and a diffuse tail whose
    high frequencies decay faster than its lows."""
    n = int(sr * min(1.2 * rt60, 0.9))
    t = np.arange(n) / sr
    lows = _shaped_noise(rng, n, sr, 1.0)
    highs = rng.standard_normal(n)
    tail = lows * np.exp(-6.9 * t / rt60) + 0.5 * highs * np.exp(-6.9 * t / (0.55 * rt60))
    predelay = int(sr * rng.uniform(0.001, 0.012))
    tail[:predelay] = 0.0
    h = tail / (np.sqrt(np.sum(tail**2)) + 1e-12)
    direct_to_reverb_db = rng.uniform(-2.0, 16.0)
    out = h * _db(-direct_to_reverb_db)
    out[0] += 1.0
    for _ in range(int(rng.integers(2, 7))):
        k = int(sr * rng.uniform(0.002, 0.03))
        if k < n:
            out[k] += rng.uniform(-0.5, 0.5) * math.exp(-6.9 * k / sr / rt60)
    return out / np.max(np.abs(out))


def _mic_response(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    """Magnitude response of a random microphone/recording chain on an ``n``-point rfft grid."""
    f = np.fft.rfftfreq(n, 1.0 / sr)
    fs = np.maximum(f, 1.0)
    hp = float(math.exp(rng.uniform(math.log(40.0), math.log(450.0))))
    hp_order = int(rng.integers(1, 4))
    nyq = sr / 2.0
    if rng.random() < 0.3:
        lp = float(rng.uniform(0.38, 0.75) * nyq)
    else:
        lp = float(rng.uniform(0.75, 1.05) * nyq)
    lp_order = int(rng.integers(2, 7))
    tilt = float(rng.uniform(-3.0, 3.0))
    gain_db = 10.0 * hp_order * np.log10(1.0 / (1.0 + (hp / fs) ** 2))
    gain_db += 10.0 * np.log10(1.0 / (1.0 + (f / lp) ** (2 * lp_order)))
    gain_db += tilt * np.log2(fs / 1000.0)
    bumps = []
    for _ in range(int(rng.integers(0, 4))):
        fc = math.exp(rng.uniform(math.log(200.0), math.log(0.8 * nyq)))
        g = rng.uniform(-9.0, 9.0)
        width = rng.uniform(0.2, 1.2)
        gain_db += g * np.exp(-0.5 * (np.log2(fs / fc) / width) ** 2)
        bumps.append([round(fc), round(g, 1)])
    gain_db = np.clip(gain_db, -60.0, 15.0)
    info = {"hp": round(hp), "lp": round(lp), "tilt": round(tilt, 2), "bumps": bumps}
    return 10.0 ** (gain_db / 20.0), info


# The babble bank --------------------------------------------------------------------------------------------


def _banned_words(keywords: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({w.strip(".,!?;:").lower() for k in keywords for w in k.split()}))


@lru_cache(maxsize=4)
def _babble_bank(seed: int, banned: tuple[str, ...], sample_rate: int, streams: int = 12) -> tuple[np.ndarray, ...]:
    """Streams of unrelated speech (none of the ``banned`` words) in several voices, each about 3 s long."""
    from edgekws import tts

    speaker = tts.Speaker()
    words = [w for w in _BABBLE_WORDS if w not in set(banned)]
    voices = voice_pool()
    bank = []
    for j in range(streams):
        rng = _rng("babble", seed, j)
        pieces = []
        total = 0
        while total < 3 * sample_rate:
            text = " ".join(rng.choice(words, size=int(rng.integers(3, 8))))
            y, sr = speaker.synth(
                text + ".",
                voice=str(voices[int(rng.integers(len(voices)))]),
                rate=int(rng.integers(140, 240)),
                pitch=int(rng.integers(10, 91)),
                pitch_range=int(rng.integers(20, 101)),
                volume=60,
                seed=int(rng.integers(2**31)),
                fresh=True,
            )
            y = soxr.resample(y, sr * rng.uniform(0.9, 1.12), sample_rate).astype(np.float32)
            pieces.append(y / _rms(y))
            total += len(y)
        bank.append(np.concatenate(pieces))
        bank[-1].setflags(write=False)
    return tuple(bank)


# One clip ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recipe:
    version: int
    seed: int
    keywords: tuple[str, ...]
    per_class: int
    sample_rate: int
    clip_seconds: float
    espeak: str
    voices: int

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.key().encode()).hexdigest()[:20]


def _speak(
    rng: np.random.Generator, keyword: str, voice: str, sample_rate: int, max_samples: int
) -> tuple[np.ndarray, dict]:
    """Dry speech of ``keyword`` at ``sample_rate`` with leading and trailing silence cut, and its parameters."""
    from edgekws import tts

    speaker = tts.Speaker()
    ending = str(rng.choice([".", "!", "?", ","], p=[0.5, 0.22, 0.13, 0.15]))
    emphasis = str(rng.choice(["", "moderate", "strong"], p=[0.8, 0.1, 0.1]))
    text = keyword + ending
    if emphasis:
        spoken = f'<speak><emphasis level="{emphasis}">{xml_escape(text)}</emphasis></speak>'
    else:
        spoken = text
    rate = int(np.clip(round(math.exp(rng.normal(math.log(150.0), 0.22))), 90, 280))
    pitch = int(rng.integers(5, 96))
    pitch_range = int(rng.integers(0, 101) if rng.random() < 0.15 else rng.integers(25, 101))
    gap = int(rng.integers(0, 16)) if " " in keyword.strip() else 0
    warp = float(math.exp(rng.uniform(math.log(0.88), math.log(1.14))))
    espeak_seed = int(rng.integers(2**31))
    for _ in range(3):
        y, sr = speaker.synth(
            spoken, voice=voice, rate=rate, pitch=pitch, pitch_range=pitch_range, gap=gap, volume=60,
            ssml=bool(emphasis), seed=espeak_seed, fresh=True,
        )
        y = soxr.resample(y, sr * warp, sample_rate).astype(np.float64)
        a, b = _active_region(y, sample_rate)
        y = y[a:b]
        if len(y) <= 0.92 * max_samples or rate >= 400:
            break
        rate = int(min(450, math.ceil(rate * len(y) / (0.85 * max_samples))))
        gap = gap // 2
    params = {
        "voice": voice, "text": text, "emphasis": emphasis or None, "rate": rate, "pitch": pitch,
        "range": pitch_range, "gap": gap, "warp": round(warp, 4),
    }
    return y, params


def _noise(rng: np.random.Generator, n: int, sr: int, bank: Sequence[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    kinds = ["white", "pink", "brown", "colored", "hum", "fan", "babble", "clicks"]
    p = np.array([0.1, 0.16, 0.1, 0.1, 0.07, 0.14, 0.25, 0.08])
    chosen = rng.choice(len(kinds), size=1 + int(rng.random() < 0.35), replace=False, p=p)
    total = np.zeros(n)
    names = []
    for idx in chosen:
        kind = kinds[int(idx)]
        names.append(kind)
        if kind == "white":
            y = rng.standard_normal(n)
        elif kind == "pink":
            y = _shaped_noise(rng, n, sr, 1.0)
        elif kind == "brown":
            y = _shaped_noise(rng, n, sr, 2.0)
        elif kind == "colored":
            y = _shaped_noise(rng, n, sr, rng.uniform(-0.5, 2.5))
        elif kind == "hum":
            f0 = (50.0 if rng.random() < 0.5 else 60.0) * rng.uniform(0.995, 1.005)
            t = np.arange(n) / sr
            y = np.zeros(n)
            for k in range(1, int(rng.integers(3, 12))):
                if k * f0 < sr / 2:
                    y += rng.uniform(0.05, 1.0) / k**0.5 * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
            if rng.random() < 0.3:
                fw = rng.uniform(1000.0, min(7000.0, 0.45 * sr))
                y += rng.uniform(0.05, 0.4) * np.sin(2 * np.pi * fw * t * (1 + 0.002 * np.sin(2 * np.pi * t)))
            y = y / _rms(y) + 0.1 * rng.standard_normal(n)
        elif kind == "fan":
            base = _shaped_noise(rng, n, sr, rng.uniform(0.5, 2.0))
            spec = np.fft.rfft(base)
            f = np.fft.rfftfreq(n, 1.0 / sr)
            fc = math.exp(rng.uniform(math.log(150.0), math.log(3000.0)))
            spec *= np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / fc) / rng.uniform(0.5, 2.0)) ** 2)
            y = np.fft.irfft(spec, n)
            t = np.arange(n) / sr
            y *= 1.0 + rng.uniform(0.0, 0.8) * np.sin(2 * np.pi * rng.uniform(0.3, 8.0) * t + rng.uniform(0, 6.3))
        elif kind == "babble":
            y = np.zeros(n)
            for _ in range(int(rng.integers(1, 6))):
                s = bank[int(rng.integers(len(bank)))]
                start = int(rng.integers(0, max(1, len(s) - n)))
                seg = s[start : start + n]
                y[: len(seg)] += seg * _db(rng.uniform(-6.0, 3.0))
        else:
            y = 0.02 * rng.standard_normal(n)
            for _ in range(int(rng.integers(1, 6))):
                at = int(rng.integers(0, n))
                m = int(sr * rng.uniform(0.003, 0.04))
                burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 5.0))
                end = min(n, at + m)
                y[at:end] += burst[: end - at] * rng.uniform(0.3, 1.0)
        total += y / _rms(y) * _db(rng.uniform(-6.0, 0.0))
    return total, names


def _record(rng: np.random.Generator, speech: np.ndarray, n: int, sample_rate: int, babble: Sequence[np.ndarray],
            params: dict) -> np.ndarray:
    """The recording chain: room, placement in the window, level, background noise, microphone, distortion."""
    if rng.random() < 0.6:
        rt60 = float(rng.uniform(0.1, 0.8))
        speech = _fft_convolve(speech, _room_response(rng, sample_rate, rt60))
        params["rt60"] = round(rt60, 3)
    else:
        params["rt60"] = 0.0

    a, b = _active_region(speech, sample_rate, floor_db=30.0)
    core = b - a
    if core >= n:
        start = a + (core - n) // 2
        placed = speech[start : start + n]
        onset = 0
    else:
        free = n - core
        lo, hi = -int(0.08 * core), free + int(0.08 * core)
        onset = int(lo + (hi - lo) * rng.beta(1.6, 1.6))
        placed = np.zeros(n)
        src_start = a - onset if onset < 0 else a
        dst_start = max(onset, 0)
        length = min(len(speech) - src_start, n - dst_start)
        placed[dst_start : dst_start + length] = speech[src_start : src_start + length]
    params["onset_ms"] = round(1000.0 * onset / sample_rate, 1)

    act_a, act_b = _active_region(placed, sample_rate, floor_db=30.0)
    speech_rms = _rms(placed[act_a:act_b])
    level_db = float(rng.uniform(-34.0, -10.0))
    placed *= _db(level_db) / speech_rms
    params["level_dbfs"] = round(level_db, 1)

    floor = rng.standard_normal(n) * _db(rng.uniform(-90.0, -55.0))
    if rng.random() < 0.2:
        params["noise"] = []
        params["snr_db"] = None
        mix = placed + floor
    else:
        noise, names = _noise(rng, n, sample_rate, babble)
        snr = float(40.0 * rng.beta(2.0, 1.3))
        noise *= _db(level_db - snr) / _rms(noise)
        params["noise"] = names
        params["snr_db"] = round(snr, 1)
        mix = placed + noise + floor

    gain, mic = _mic_response(rng, n, sample_rate)
    mix = np.fft.irfft(np.fft.rfft(mix) * gain, n)
    params["mic"] = mic

    r = rng.random()
    peak = float(np.max(np.abs(mix))) + 1e-12
    if r < 0.04:
        drive = _db(rng.uniform(1.0, 8.0))
        mix = np.clip(mix * drive / peak, -1.0, 1.0) * rng.uniform(0.7, 1.0)
        params["distortion"] = "clip"
    elif r < 0.12:
        bits = int(rng.integers(8, 13))
        q = 2.0 ** (bits - 1)
        if peak > 0.99:
            mix *= 0.99 / peak
        mix = np.round(mix * q) / q
        params["distortion"] = f"{bits}bit"
    else:
        if peak > 0.99:
            mix *= 0.99 / peak
        params["distortion"] = None
    return mix


def render_clip(
    keyword: str,
    index: int,
    *,
    seed: int = 0,
    sample_rate: int = 16000,
    clip_seconds: float = 1.0,
    vocabulary: Sequence[str] | None = None,
    voice: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Clip ``index`` of ``keyword``: float32 ``(round(sample_rate * clip_seconds),)`` and its parameters.

    The clip depends only on the arguments and the recipe version, so ``render_clip(k, i, seed=s,
    vocabulary=keywords)`` is exactly clip ``i`` of class ``k`` in ``synthetic_keywords(keywords, seed=s)``.
    ``vocabulary`` lists every keyword of the dataset (their words never occur in babble noise; default: just
    ``keyword``). ``voice`` replaces the drawn voice, for previews (the drawn one comes from the voice pool of
    the clip's fold).
    """
    n = int(round(sample_rate * clip_seconds))
    fold = _clip_fold(seed, keyword, index)
    rng = _rng("clip", seed, keyword, index)
    pool = _pools()[fold]
    drawn = pool[int(rng.integers(len(pool)))]
    voice = voice or drawn
    babble = _babble_bank(int(seed), _banned_words(vocabulary or [keyword]), int(sample_rate))

    speech, params = _speak(rng, keyword, voice, sample_rate, n)
    params["fold"] = fold

    mix = _record(rng, speech, n, sample_rate, babble, params)
    return mix.astype(np.float32), params


# The dataset ------------------------------------------------------------------------------------------------


NOTHING = "_nothing_"
"""Name of the class of everything that is not a keyword: other words, background noise, silence."""

NOTHING_VERSION = 2


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


# homophones and rhymes that spelling does not reveal
_SOUNDALIKES = {"no": ("know", "though", "so", "go"), "right": ("write", "white", "quite", "bright", "kite"),
                "go": ("so", "no", "though", "slow", "show", "grow"), "yes": ("guess",), "off": ("of",),
                "up": ("cup",), "down": ("town", "brown", "sound", "round"), "on": ("an", "one")}


def _sounds_like(word: str, keyword: str) -> bool:
    """A crude test for words a listener could mistake for ``keyword``: a known homophone or rhyme, one edit apart
    (let/left, yet/yes, now/no), the same first two letters (stay/stop, lift/left), or the same last three
    (light/right, top/stop)."""
    if word == keyword or word in _SOUNDALIKES.get(keyword, ()) or _edit_distance(word, keyword) <= 1:
        return True
    if len(keyword) >= 2 and word[:2] == keyword[:2]:
        return True
    return len(keyword) >= 3 and len(word) >= 3 and word[-3:] == keyword[-3:]


def nothing_words(vocabulary: Sequence[str]) -> tuple[str, ...]:
    """The words ``_nothing_`` clips may say: the babble list minus the keywords' words and their sound-alikes."""
    banned = _banned_words(vocabulary)
    return tuple(w for w in _BABBLE_WORDS if not any(_sounds_like(w, k) for k in banned))


def render_nothing(
    index: int,
    *,
    seed: int = 0,
    sample_rate: int = 16000,
    clip_seconds: float = 1.0,
    vocabulary: Sequence[str] = PAPER_KEYWORDS,
) -> tuple[np.ndarray, dict]:
    """Clip ``index`` of the ``_nothing_`` class: with probability 0.6 one or two other words
    (:func:`nothing_words`: none of the ``vocabulary``'s words or their sound-alikes) spoken by a voice of the clip's
    fold, otherwise background noise or a faint noise floor alone; all through the same recording chain as the
    keywords."""
    n = int(round(sample_rate * clip_seconds))
    fold = _clip_fold(seed, NOTHING, index)
    rng = _rng("nothing", seed, index)
    pool = _pools()[fold]
    voice = pool[int(rng.integers(len(pool)))]
    banned = _banned_words(vocabulary)
    babble = _babble_bank(int(seed), banned, int(sample_rate))
    if rng.random() < 0.6:
        words = nothing_words(vocabulary)
        text = " ".join(rng.choice(words, size=1 + int(rng.random() < 0.3)))
        speech, params = _speak(rng, text, voice, sample_rate, n)
        params["kind"] = "speech"
    else:
        speech, params = np.zeros(n), {"voice": voice, "text": ""}
        params["kind"] = "background"
    params["fold"] = fold
    mix = _record(rng, speech, n, sample_rate, babble, params)
    if params["kind"] == "background" and not params["noise"]:
        params["kind"] = "silence"
    return mix.astype(np.float32), params




def _render_many(jobs: list[tuple[str, int]], recipe: "_Recipe") -> list[tuple[np.ndarray, str]]:
    out = []
    for keyword, index in jobs:
        render = render_nothing if keyword == NOTHING else functools.partial(render_clip, keyword)
        y, params = render(
            index, seed=recipe.seed, sample_rate=recipe.sample_rate, clip_seconds=recipe.clip_seconds,
            vocabulary=recipe.keywords,
        )
        out.append((_to_int16(y), json.dumps(params, sort_keys=True)))
    return out


def _to_int16(y: np.ndarray) -> np.ndarray:
    return np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16)


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _generate(recipe: _Recipe, progress: Callable[[int, int], None] | None, workers: int,
              jobs: list[tuple[str, int]] | None = None):
    jobs = jobs if jobs is not None else [(k, i) for k in recipe.keywords for i in range(recipe.per_class)]
    total = len(jobs)
    n = int(round(recipe.sample_rate * recipe.clip_seconds))
    audio = np.zeros((total, n), dtype=np.int16)
    params: list[str] = [""] * total
    if progress is not None:
        progress(0, total)
    batch_size = 25
    batches = [list(range(s, min(total, s + batch_size))) for s in range(0, total, batch_size)]
    _babble_bank(recipe.seed, _banned_words(recipe.keywords), recipe.sample_rate)
    done = 0

    def collect(batch: list[int], results: list[tuple[np.ndarray, str]]) -> None:
        nonlocal done
        for i, (y, p) in zip(batch, results):
            audio[i], params[i] = y, p
        done += len(batch)
        if progress is not None:
            progress(done, total)

    workers = max(1, min(int(workers), len(batches)))
    if workers == 1:
        for batch in batches:
            collect(batch, _render_many([jobs[i] for i in batch], recipe))
        return audio, params
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [(batch, pool.submit(_render_many, [jobs[i] for i in batch], recipe)) for batch in batches]
        for batch, fut in futures:
            collect(batch, fut.result())
    return audio, params


def _atomic_save(path: Path, **arrays: np.ndarray) -> None:
    """Write a compressed ``.npz`` (fast deflate: the audio is noise-like and barely compresses further) that
    appears under ``path`` only once complete."""
    with atomic_open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)


def _load(path: Path, key: str):
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["recipe"]) != key:
                return None
            return z["audio"], z["labels"], z["groups"], z["folds"], z["params"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _cached_part(path: Path, key: str, recipe: _Recipe, jobs: list[tuple[str, int]],
                 progress: Callable[[int, int], None] | None, workers: int, cache: bool):
    """``(audio, labels, groups, folds, params, from_cache)`` of ``jobs``, from the cache file when its key matches."""
    loaded = _load(path, key) if cache and path.exists() else None
    if loaded is not None:
        return (*loaded, True)
    audio, params_list = _generate(recipe, progress, workers, jobs)
    labels = np.array([recipe.keywords.index(k) if k in recipe.keywords else len(recipe.keywords) for k, _ in jobs],
                      dtype=np.int64)
    decoded = [json.loads(p) for p in params_list]
    groups = np.array([p["voice"] for p in decoded], dtype=str)
    folds = np.array([p["fold"] for p in decoded], dtype=str)
    params = np.array(params_list, dtype=str)
    if cache:
        _atomic_save(path, audio=audio, labels=labels, groups=groups, folds=folds, params=params, recipe=np.array(key))
    return audio, labels, groups, folds, params, False


def synthetic_keywords(
    keywords: Sequence[str] = PAPER_KEYWORDS,
    *,
    per_class: int = 300,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    sample_rate: int = 16000,
    clip_seconds: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    cache: bool = True,
    workers: int | None = None,
    nothing: int = 0,
) -> ClipDataset:
    """Synthetic spoken keywords, ``per_class`` clips of each, as a :class:`ClipDataset`.

    Args:
        keywords: the class names, each a word or phrase spoken as written (``"lights on"`` works).
        per_class: clips per keyword. With at least 3, every keyword has clips in train, val and test.
        seed: changes every clip (voices, prosody, room, noise); the voice -> fold assignment does not change.
        cache_dir: where the generated ``.npz`` lives (default :func:`default_cache_dir`).
        sample_rate, clip_seconds: output format.
        progress: called as ``progress(done, total)`` while clips are generated (not when loaded from cache).
        cache: read and write the cache; ``False`` always generates and writes nothing.
        workers: processes for generation (default: the usable CPU cores, at most 8). The result is the same for
            any number.
        nothing: clips of a last class ``_nothing_`` (:func:`render_nothing`: other words, noise, silence), which a
            detector never reports; 0 leaves it out. The keyword clips are the same either way.

    Returns:
        A dataset whose ``groups`` are voices (``"en-gb-scotland+f3"``) and ``folds`` ``"train"/"val"/"test"``
        (about 80/10/10, by a hash of the voice). ``meta["params"]`` holds each clip's parameters as JSON.
    """
    if isinstance(keywords, str):
        raise TypeError("keywords must be a sequence of strings, e.g. ('yes', 'no'), not one string")
    keywords = tuple(str(k).strip() for k in keywords)
    if not keywords or any(not k for k in keywords):
        raise ValueError("keywords must be non-empty strings")
    if len(set(k.lower() for k in keywords)) != len(keywords):
        raise ValueError(f"duplicate keywords in {keywords}")
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    if sample_rate < 8000:
        raise ValueError("sample_rate must be at least 8000")
    if clip_seconds <= 0.2:
        raise ValueError("clip_seconds must exceed 0.2")
    if nothing < 0:
        raise ValueError("nothing must be >= 0")
    if NOTHING in keywords:
        raise ValueError(f"{NOTHING} is the name of the non-keyword class; it cannot be a keyword")
    from edgekws import tts

    recipe = _Recipe(
        version=RECIPE_VERSION,
        seed=int(seed),
        keywords=keywords,
        per_class=int(per_class),
        sample_rate=int(sample_rate),
        clip_seconds=float(clip_seconds),
        espeak=tts.version(),
        voices=_seed_int(*voice_pool()) % (1 << 32),
    )
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"synthetic-{recipe.digest()}.npz"
    t0 = time.perf_counter()
    workers = workers if workers is not None else _default_workers()
    jobs = [(k, i) for k in keywords for i in range(per_class)]
    audio, labels, groups, folds, params, from_cache = _cached_part(path, recipe.key(), recipe, jobs, progress, workers,
                                                                    cache)
    key = recipe.key()
    if nothing:
        key = f"{key}|{NOTHING}={int(nothing)}|v{NOTHING_VERSION}"
        npath = root / f"synthetic-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
        more = _cached_part(npath, key, recipe, [(NOTHING, i) for i in range(nothing)], progress, workers, cache)
        audio, groups, folds, params = (np.concatenate([a, b]) for a, b in zip((audio, groups, folds, params),
                                                                               (more[0], *more[2:5])))
        labels = np.concatenate([labels, np.full(nothing, len(keywords), np.int64)])
        from_cache = from_cache and more[5]
    elapsed = time.perf_counter() - t0

    scale = np.float32(1.0 / 32767.0)

    def loader(i: int) -> np.ndarray:
        return audio[i].astype(np.float32) * scale

    source_ids = [f"synthetic/v{RECIPE_VERSION}/seed{seed}/{k}/{i:05d}" for k in keywords for i in range(per_class)]
    source_ids += [f"synthetic/v{RECIPE_VERSION}/seed{seed}/{NOTHING}/{i:05d}" for i in range(nothing)]
    return ClipDataset(
        name="synthetic",
        class_names=keywords + ((NOTHING,) if nothing else ()),
        labels=labels,
        groups=groups,
        folds=folds,
        sample_rate=int(sample_rate),
        clip_seconds=float(clip_seconds),
        loader=loader,
        source_ids=source_ids,
        content_key=key,
        meta={
            "recipe": json.loads(recipe.key()),
            "cache_path": str(path) if cache else None,
            "from_cache": from_cache,
            "seconds": round(elapsed, 3),
            "params": params,
            "audio_int16": audio,
            "voices": describe_variants(),
            "split": "by voice (language voice + variant), hashed about 80/10/10 into train/val/test",
        },
    )
