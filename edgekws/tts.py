"""Speech synthesis with eSpeak NG through ctypes, for generating spoken keywords without a download.

The shared library and its voice data come from the ``espeakng-loader`` wheel (or explicit paths). eSpeak NG keeps
one synthesiser per process, so every call goes through one lock and the library is initialised lazily, once, in
synchronous retrieval mode: samples are handed to a callback and collected, nothing is played.

Voices are named the way eSpeak names them: a language voice (``"en-us"``, ``"en-gb-scotland"``) optionally
followed by ``+variant`` (``"en-us+klatt3"``, ``"en-gb+f2"``); see :func:`list_voices` and :func:`list_variants`.

Example::

    audio, sr = Speaker().synth("stop", voice="en-gb+m3", rate=160, pitch=40)   # float32 (n,), 22050
"""

from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "TTSError",
    "VoiceInfo",
    "Speaker",
    "synth",
    "list_voices",
    "list_variants",
    "english_voices",
    "is_available",
    "reset",
    "version",
]

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_FLAG_SSML = 0x10
_FLAG_PHONEMES = 0x100
_PHONEMES_IPA = 0x02

_P_RATE = 1
_P_VOLUME = 2
_P_PITCH = 3
_P_RANGE = 4
_P_WORDGAP = 7

_EE_OK = 0
_EE_NOT_FOUND = 2

RATE_MIN = 80
RATE_MAX = 450


def _libc_srand(seed: int) -> None:
    """Seed the C library's ``rand()`` (no-op where it cannot be reached)."""
    global _SRAND
    if _SRAND is None:
        try:
            _SRAND = ctypes.CDLL(None).srand
            _SRAND.argtypes = [ctypes.c_uint]
        except (OSError, AttributeError):
            _SRAND = False
    if _SRAND:
        _SRAND(seed)


_SRAND = None


class TTSError(RuntimeError):
    """The speech synthesiser is unavailable or refused a request."""


class _IdUnion(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _IdUnion),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class VoiceInfo:
    """One language voice: ``name`` is what :meth:`Speaker.synth` accepts (e.g. ``"en-gb-scotland"``)."""

    name: str
    title: str
    identifier: str
    languages: tuple[str, ...]
    gender: str


def _default_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as exc:
        raise TTSError(
            "speech synthesis needs the espeak-ng library: pip install espeakng-loader (in edgekws[server])"
        ) from exc
    try:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except Exception as exc:
        raise TTSError(f"espeakng-loader could not locate espeak-ng: {exc}") from exc


def _parse_languages(ptr: int | None) -> tuple[str, ...]:
    """Decode eSpeak's ``languages`` field: repeated (priority byte, NUL-terminated name), ended by a 0 byte."""
    if not ptr:
        return ()
    out = []
    offset = 0
    while True:
        priority = ctypes.c_ubyte.from_address(ptr + offset).value
        if priority == 0:
            break
        name = ctypes.string_at(ptr + offset + 1)
        out.append(name.decode("utf-8", "replace"))
        offset += 2 + len(name)
    return tuple(out)


@lru_cache(maxsize=4)
def _variants(data_path: str) -> frozenset[str]:
    folder = Path(data_path) / "voices" / "!v"
    return frozenset(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else frozenset()


@lru_cache(maxsize=4)
def _voice_links(data_path: str) -> dict[str, str] | None:
    """Short links to the language voice files (lower-case name -> link path), or ``None`` if they cannot be made.

    ``espeak_SetVoiceByFile`` loads a voice from a path without scanning every voice file the way
    ``espeak_SetVoiceByName`` does, which makes loading a voice several times faster; it lower-cases the path and
    keeps at most 40 bytes of it (with the ``+variant``), hence short links in a private folder.
    """
    try:
        if not hasattr(os, "symlink") or not hasattr(os, "getuid"):
            return None
        targets: dict[str, str] = {}
        for f in sorted((Path(data_path) / "lang").rglob("*")):
            if f.is_file():
                targets.setdefault(f.name.lower(), str(f.resolve()))
        if not targets:
            return None
        tmp = tempfile.gettempdir()
        if tmp != tmp.lower() or len(tmp) > 8:
            tmp = "/tmp"
        names = {name: np.base_repr(i, 36).lower() for i, name in enumerate(sorted(targets))}
        key = hashlib.sha1(json.dumps([data_path, os.getuid(), targets]).encode()).hexdigest()[:8]
        folder = Path(tmp) / f"ekws{key}"
        if not folder.exists():
            staging = Path(tempfile.mkdtemp(prefix=f"ekws{key}-", dir=tmp))
            for name, target in targets.items():
                os.symlink(target, staging / names[name])
            try:
                os.rename(staging, folder)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
        st = folder.lstat()
        if folder.is_symlink() or not folder.is_dir() or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None
        links = {}
        for name, target in targets.items():
            link = folder / names[name]
            if not link.is_symlink() or os.readlink(link) != target:
                return None
            links[name] = str(link)
        return links
    except OSError:
        return None


_ALIASES: dict[str, dict[str, str]] = {}


class _Engine:
    """The one eSpeak NG instance of this process."""

    def __init__(self, library_path: str, data_path: str) -> None:
        self.library_path = library_path
        self.data_path = data_path
        if not Path(library_path).exists():
            raise TTSError(f"espeak-ng library not found at {library_path}")
        if not Path(data_path, "phontab").exists():
            raise TTSError(f"espeak-ng data not found at {data_path} (no phontab)")
        try:
            lib = ctypes.CDLL(library_path)
        except OSError as exc:
            raise TTSError(f"cannot load espeak-ng library {library_path}: {exc}") from exc
        self.lib = lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByFile.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByFile.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Terminate.argtypes = []
        lib.espeak_Terminate.restype = ctypes.c_int
        self._set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._set_seed is not None:
            self._set_seed.argtypes = [ctypes.c_long]
            self._set_seed.restype = ctypes.c_int

        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INIT_DONT_EXIT)
        if rate <= 0:
            raise TTSError(f"espeak_Initialize failed (returned {rate}) with data at {data_path}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def close(self) -> None:
        """Terminate the synthesiser and unload the library, so that loading it again starts afresh."""
        lib, self.lib = self.lib, None
        if lib is None:
            return
        lib.espeak_Terminate()
        handle = lib._handle
        del lib
        unload = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
        if unload is not None:
            unload(handle)

    def version(self) -> str:
        return (self.lib.espeak_Info(None) or b"").decode("utf-8", "replace")

    def _on_audio(self, wav, n, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.frombuffer(ctypes.string_at(wav, 2 * n), dtype=np.int16).copy())
        return 0

    def set_voice(self, voice: str) -> None:
        if voice == self._voice:
            return
        if not voice or len(voice.encode()) >= 40:
            raise TTSError(f"invalid espeak-ng voice name {voice!r}")
        base, plus, variant = voice.partition("+")
        if plus and variant not in _variants(self.data_path):
            self._voice = None
            raise TTSError(f"unknown espeak-ng voice variant {variant!r} in {voice!r}; see list_variants()")
        status = _EE_NOT_FOUND
        links = _voice_links(self.data_path)
        key = base.lower()
        if links is not None and key not in links:
            key = _ALIASES.get(self.data_path, {}).get(key, key)
        if links is not None and key in links:
            path = f"{links[key]}{plus}{variant}".encode()
            if len(path) < 40:
                status = self.lib.espeak_SetVoiceByFile(path)
        if status != _EE_OK:
            status = self.lib.espeak_SetVoiceByName(voice.encode())
        if status == _EE_NOT_FOUND:
            alias = self._aliases().get(base.lower())
            if alias is not None:
                status = self.lib.espeak_SetVoiceByName((alias + plus + variant).encode())
        if status != _EE_OK:
            self._voice = None
            raise TTSError(f"unknown espeak-ng voice {voice!r} (status {status}); see list_voices()/list_variants()")
        self._voice = voice

    def _aliases(self) -> dict[str, str]:
        """Language code -> voice name, for codes such as ``en-gb`` that are no voice file's name."""
        aliases = _ALIASES.get(self.data_path)
        if aliases is None:
            aliases = {}
            for v in self.voices():
                for lang in v.languages[:1]:
                    aliases.setdefault(lang.lower(), v.name)
            _ALIASES[self.data_path] = aliases
        return aliases

    def set_param(self, which: int, value: int) -> None:
        status = self.lib.espeak_SetParameter(which, int(value), 0)
        if status != _EE_OK:
            raise TTSError(f"espeak_SetParameter({which}, {value}) failed with status {status}")

    def synth(self, text: str, flags: int, seed: int | None) -> np.ndarray:
        if seed is not None:
            if self._set_seed is not None:
                self._set_seed(int(seed) & 0x7FFFFFFF)
            # Some voice variants (breathy ones) draw noise from the C library's rand(), whose state is
            # process-wide and survives reloading espeak-ng: seed it too, or the output depends on history.
            _libc_srand(int(seed) & 0x7FFFFFFF)
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data, len(data))
        self._chunks = []
        status = self.lib.espeak_Synth(buf, len(data), 0, 1, 0, _CHARS_UTF8 | flags, None, None)
        if status != _EE_OK:
            raise TTSError(f"espeak_Synth failed with status {status}")
        self.lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def text_to_phonemes(self, text: str, ipa: bool) -> str:
        data = ctypes.create_string_buffer(text.encode("utf-8") + b"\0")
        ptr = ctypes.c_void_p(ctypes.addressof(data))
        parts = []
        while ptr.value:
            out = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA if ipa else 0)
            if out:
                parts.append(out.decode("utf-8", "replace").strip())
        return " ".join(p for p in parts if p)

    def voices(self) -> list[VoiceInfo]:
        arr = self.lib.espeak_ListVoices(None)
        out = []
        i = 0
        while arr and arr[i]:
            v = arr[i].contents
            identifier = (v.identifier or b"").decode("utf-8", "replace")
            langs = _parse_languages(v.languages)
            gender = {1: "male", 2: "female"}.get(v.gender, "")
            name = identifier.rsplit("/", 1)[-1].lower()
            out.append(VoiceInfo(name, (v.name or b"").decode("utf-8", "replace"), identifier, langs, gender))
            i += 1
        return out


_LOCK = threading.RLock()
_ENGINE: _Engine | None = None


def _reset_lock_after_fork() -> None:
    global _LOCK
    _LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_after_fork)


def reset() -> None:
    """Unload the synthesiser; the next call loads it again in its initial state.

    eSpeak NG carries hidden state from one utterance to the next (pitch flutter phase, filter memories), so the
    same request gives slightly different samples depending on what was spoken before. After a reset the output
    depends only on the request. Costs a few milliseconds (mostly reloading the voice's dictionary).
    """
    global _ENGINE
    with _LOCK:
        if _ENGINE is not None:
            engine, _ENGINE = _ENGINE, None
            engine.close()


def _engine(library_path: str | None = None, data_path: str | None = None) -> _Engine:
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            if library_path is None or data_path is None:
                lib_default, data_default = _default_paths()
                library_path = library_path or lib_default
                data_path = data_path or data_default
            _ENGINE = _Engine(str(library_path), str(data_path))
        else:
            for want, have, what in (
                (library_path, _ENGINE.library_path, "library"),
                (data_path, _ENGINE.data_path, "data"),
            ):
                if want is not None and str(want) != have:
                    raise TTSError(f"espeak-ng is already initialised in this process with {what} {have}")
        return _ENGINE


class Speaker:
    """Text to float32 audio with eSpeak NG.

    All instances share the process's single synthesiser (eSpeak keeps global state); calls are serialised.
    ``library_path``/``data_path`` default to the ``espeakng-loader`` wheel's copies.
    """

    def __init__(self, library_path: str | os.PathLike | None = None, data_path: str | os.PathLike | None = None):
        self._library_path = None if library_path is None else str(library_path)
        self._data_path = None if data_path is None else str(data_path)

    def _eng(self) -> _Engine:
        return _engine(self._library_path, self._data_path)

    @property
    def sample_rate(self) -> int:
        """The synthesiser's native rate in Hz (22050 for eSpeak NG)."""
        return self._eng().sample_rate

    @property
    def data_path(self) -> str:
        return self._eng().data_path

    def synth(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        gap: int = 0,
        volume: int = 100,
        *,
        ssml: bool = False,
        phonemes: bool = False,
        seed: int | None = 0,
        fresh: bool = False,
    ) -> tuple[np.ndarray, int]:
        """Speak ``text``.

        Args:
            text: UTF-8 text; with ``phonemes=True`` parts inside ``[[ ]]`` are eSpeak phoneme mnemonics, with
                ``ssml=True`` the text may be an SSML document.
            voice: ``"language"`` or ``"language+variant"``, e.g. ``"en-gb-scotland+f3"``.
            rate: words per minute, clamped to 80..450.
            pitch: base pitch 0..100 (50 normal).
            pitch_range: intonation range 0..100 (0 monotone, 50 normal).
            gap: extra pause between words in units of 10 ms.
            volume: amplitude 0..200 (100 normal).
            seed: seed of the synthesiser's internal noise source (breath, frication), for repeatable output;
                ``None`` leaves it as it is.
            fresh: :func:`reset` the synthesiser first, so the samples depend only on these arguments and not on
                what this process synthesised before (a few milliseconds more per call).

        Returns:
            ``(audio, sample_rate)``: float32 ``(n,)`` in [-1, 1] and the native sample rate.
        """
        if not isinstance(text, str):
            raise TypeError("text must be a str")
        flags = (_FLAG_SSML if ssml else 0) | (_FLAG_PHONEMES if phonemes else 0)
        with _LOCK:
            if fresh:
                reset()
            eng = self._eng()
            eng.set_voice(voice)
            eng.set_param(_P_RATE, int(np.clip(rate, RATE_MIN, RATE_MAX)))
            eng.set_param(_P_PITCH, int(np.clip(pitch, 0, 100)))
            eng.set_param(_P_RANGE, int(np.clip(pitch_range, 0, 100)))
            eng.set_param(_P_WORDGAP, max(0, int(gap)))
            eng.set_param(_P_VOLUME, int(np.clip(volume, 0, 200)))
            pcm = eng.synth(text, flags, seed)
            sr = eng.sample_rate
        return pcm.astype(np.float32) / 32768.0, sr

    def version(self) -> str:
        """The eSpeak NG version string."""
        with _LOCK:
            return self._eng().version()

    def text_to_phonemes(self, text: str, voice: str = "en-us", *, ipa: bool = False) -> str:
        """Phonemes eSpeak would speak for ``text`` (its mnemonics, or IPA with ``ipa=True``)."""
        with _LOCK:
            eng = self._eng()
            eng.set_voice(voice)
            return eng.text_to_phonemes(text, ipa)

    def list_voices(self, language: str | None = None) -> list[VoiceInfo]:
        """Language voices, optionally only those whose name starts with ``language`` (e.g. ``"en"``)."""
        with _LOCK:
            voices = self._eng().voices()
        if language is not None:
            lang = language.lower()
            voices = [v for v in voices if v.name == lang or v.name.startswith(lang + "-")]
        return sorted(voices, key=lambda v: v.name)

    def list_variants(self) -> list[str]:
        """Names of the voice variants (``"m3"``, ``"klatt3"``, ``"f2"`` ...) usable as ``voice+variant``."""
        return sorted(_variants(self.data_path))


def synth(text: str, voice: str = "en-us", **kwargs) -> tuple[np.ndarray, int]:
    """:meth:`Speaker.synth` on the default synthesiser."""
    return Speaker().synth(text, voice, **kwargs)


def list_voices(language: str | None = None) -> list[VoiceInfo]:
    """:meth:`Speaker.list_voices` on the default synthesiser."""
    return Speaker().list_voices(language)


def list_variants() -> list[str]:
    """:meth:`Speaker.list_variants` on the default synthesiser."""
    return Speaker().list_variants()


def version() -> str:
    """Version of the loaded eSpeak NG library."""
    return Speaker().version()


def english_voices() -> list[str]:
    """Names of the English language voices that speak ordinary English text (Shavian script excluded)."""
    return [v.name for v in list_voices("en") if "shaw" not in v.name]


def is_available() -> bool:
    """Whether the synthesiser can be loaded in this environment."""
    try:
        _engine()
    except TTSError:
        return False
    return True
