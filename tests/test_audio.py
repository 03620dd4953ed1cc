"""Tests for edgekws.audio: loading, decoding, resampling, length fitting and every refusal."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from edgekws.audio import (
    SUPPORTED_RATE_RANGE,
    AudioError,
    check_waveform,
    decode_audio,
    fit_length,
    load_audio,
    resample,
    rms_db,
    save_wav,
)

SINE_DB = 20 * math.log10(0.5 / math.sqrt(2))  # level of a sine of amplitude 0.5


def sine(freq: float, sr: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spectrum)])


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(AudioError) as info:
        call(*args, **kwargs)
    return str(info.value)


# --- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, subtype, tol_db",
    [("WAV", "PCM_16", 0.01), ("WAV", "FLOAT", 1e-4), ("FLAC", "PCM_16", 0.01), ("OGG", "VORBIS", 0.5)],
)
def test_round_trip_preserves_level_and_frequency(tmp_path, fmt, subtype, tol_db):
    y = sine(440, 16000)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, y, 16000, format=fmt, subtype=subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.shape == (16000,)
    assert abs(rms_db(out) - SINE_DB) < tol_db
    assert abs(peak_hz(out, 16000) - 440) <= 1
    if fmt != "OGG":
        np.testing.assert_allclose(out, y, atol=1.0 / 32768 + 1e-7)


def test_integer_pcm_is_scaled_to_unit_range(tmp_path):
    pcm = np.array([-32768, -16384, 0, 16384, 32767], dtype=np.int16)
    path = tmp_path / "pcm.wav"
    sf.write(path, np.tile(pcm, 100), 16000, subtype="PCM_16")
    out = load_audio(path)[:5]
    np.testing.assert_array_equal(out, pcm.astype(np.float32) / 32768)
    assert out.min() == -1.0 and out.max() < 1.0


def test_save_wav_is_exact_16_bit_and_atomic(tmp_path):
    y = (np.arange(-400, 400, dtype=np.float32) * 40) / 32768
    path = tmp_path / "out.wav"
    path.write_bytes(b"old contents")
    save_wav(path, y, 16000)
    assert sf.info(path).subtype == "PCM_16" and sf.info(path).samplerate == 16000
    np.testing.assert_array_equal(load_audio(path), y)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]


def test_save_wav_saturates_out_of_range_and_writes_channels_first(tmp_path):
    path = tmp_path / "loud.wav"
    save_wav(path, np.array([[2.0, -2.0, 0.5] * 10, [0.0] * 30], dtype=np.float32), 8000)
    data, sr = sf.read(path, dtype="int16")
    assert sr == 8000 and data.shape == (30, 2)
    assert list(data[:3, 0]) == [32767, -32768, 16384]
    bad = tmp_path / "bad.wav"
    msg = error_of(save_wav, bad, np.array([0.0, np.nan]), 16000)
    assert str(bad) in msg and "NaN" in msg
    assert not (tmp_path / "bad.wav").exists()


def test_decode_audio_matches_load_audio(tmp_path):
    path = tmp_path / "tone.flac"
    sf.write(path, sine(300, 22050), 22050)
    np.testing.assert_array_equal(decode_audio(path.read_bytes()), load_audio(path))


def test_stereo_is_mixed_to_mono_by_mean(tmp_path):
    left, right = sine(440, 16000), sine(1000, 16000, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("src_sr", [44100, 8000])
def test_load_resamples_to_16k_keeping_frequency_and_length(tmp_path, src_sr):
    path = tmp_path / f"tone_{src_sr}.wav"
    sf.write(path, sine(1000, src_sr), src_sr, subtype="FLOAT")
    out = load_audio(path, sample_rate=16000)
    assert out.shape == (16000,) and out.dtype == np.float32
    assert abs(peak_hz(out, 16000) - 1000) <= 1
    assert abs(rms_db(out[1000:-1000]) - SINE_DB) < 0.05


def test_clip_seconds_pads_centred(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, np.full(8000, 0.5, dtype=np.float32), 16000, subtype="FLOAT")
    out = load_audio(path, clip_seconds=1.0)
    assert out.shape == (16000,)
    nonzero = np.flatnonzero(out)
    assert nonzero[0] == 4000 and nonzero[-1] == 11999
    start = load_audio(path, clip_seconds=0.25, offset="start")
    assert start.shape == (4000,) and np.all(start == 0.5)


def test_streaming_wav_with_unknown_data_size_is_read(tmp_path):
    path = tmp_path / "stream.wav"
    sf.write(path, sine(440, 16000), 16000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    data_at = raw.index(b"data")
    raw[data_at + 4 : data_at + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    assert load_audio(path).shape == (16000,)


# --- resample, fit_length, rms_db, check_waveform ----------------------------------------------------------------


def test_resample_identity_batch_and_length():
    y = sine(440, 16000)
    assert resample(y, 16000, 16000) is y
    batch = np.stack([y, 0.5 * y, np.zeros_like(y)])
    out = resample(batch, 16000, 8000)
    assert out.shape == (3, 8000) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], resample(batch[1], 16000, 8000), atol=1e-7)
    assert resample(np.zeros(44100), 44100, 16000).shape == (16000,)
    assert resample(np.zeros((2, 3, 100)), 8000, 16000).shape == (2, 3, 200)


def test_resample_does_not_clip():
    square = np.where(np.arange(1600) % 40 < 20, 1.0, -1.0).astype(np.float32)
    assert np.abs(resample(square, 16000, 44100)).max() > 1.0


def test_fit_length_pad_trim_center_semantics():
    y = np.arange(1, 6, dtype=np.float32)  # [1 2 3 4 5]
    np.testing.assert_array_equal(fit_length(y, 3), [2, 3, 4])
    np.testing.assert_array_equal(fit_length(y, 4), [1, 2, 3, 4])  # odd excess drops the end
    np.testing.assert_array_equal(fit_length(y, 8), [0, 1, 2, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(fit_length(y, 7), [0, 1, 2, 3, 4, 5, 0])
    np.testing.assert_array_equal(fit_length(y, 3, offset="start"), [1, 2, 3])
    np.testing.assert_array_equal(fit_length(y, 7, offset="start"), [1, 2, 3, 4, 5, 0, 0])
    same = fit_length(y, 5)
    np.testing.assert_array_equal(same, y)
    assert not np.shares_memory(same, y)
    assert fit_length(y.astype(np.float64), 2).dtype == np.float64
    batch = fit_length(np.ones((2, 3), dtype=np.float32), 5)
    np.testing.assert_array_equal(batch, [[0, 1, 1, 1, 0]] * 2)


def test_fit_length_random_is_seeded_and_keeps_contiguous_window():
    y = np.arange(100, dtype=np.float32)
    a = fit_length(y, 10, offset="random", rng=np.random.default_rng(3))
    b = fit_length(y, 10, offset="random", rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.diff(a), np.ones(9))
    padded = fit_length(y[:4] + 1, 10, offset="random", rng=np.random.default_rng(0))
    nz = np.flatnonzero(padded)
    np.testing.assert_array_equal(padded[nz[0] : nz[0] + 4], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="offset"):
        fit_length(y, 10, offset="middle")
    with pytest.raises(ValueError, match="n_samples"):
        fit_length(y, -1)


def test_rms_db():
    assert rms_db(np.ones(10)) == 0.0
    assert rms_db(np.zeros(10)) == -math.inf
    assert rms_db(np.array([])) == -math.inf
    assert abs(rms_db(sine(100, 16000, amp=1.0)) + 3.0103) < 1e-3


def test_check_waveform_coerces_and_refuses():
    out = check_waveform(np.array([0, 16384, -32768], dtype=np.int16))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 0.5, -1.0])
    assert check_waveform([0.1, 0.2]).dtype == np.float32
    assert "shape" in error_of(check_waveform, np.zeros((2, 2, 2)), name="clip7")
    assert "clip7" in error_of(check_waveform, np.zeros((2, 2, 2)), name="clip7")
    assert "empty" in error_of(check_waveform, np.zeros(0))
    assert "NaN" in error_of(check_waveform, np.array([0.0, np.nan]))
    assert "Inf" in error_of(check_waveform, np.array([0.0, -np.inf]))
    assert "dtype" in error_of(check_waveform, np.zeros(4, dtype=np.complex64))
    assert "dtype" in error_of(check_waveform, np.zeros(4, dtype=np.int64))
    assert "quiet" in error_of(check_waveform, np.full(100, 1e-5), require_level=True)
    check_waveform(np.full(100, 1e-5), require_level=True, min_rms_db=-120)


# --- refusals ----------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    msg = error_of(load_audio, path)
    assert str(path) in msg and "no such file" in msg


def test_directory(tmp_path):
    assert "directory" in error_of(load_audio, tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    msg = error_of(load_audio, path)
    assert str(path) in msg and "empty file (0 bytes)" in msg
    assert "empty file" in error_of(decode_audio, b"", name="upload.wav")


@pytest.mark.parametrize(
    "content",
    [np.random.default_rng(0).bytes(4096), b"this is a text file, not audio\n" * 40],
    ids=["random-bytes", "text"],
)
def test_not_audio(tmp_path, content):
    path = tmp_path / "fake.wav"
    path.write_bytes(content)
    msg = error_of(load_audio, path)
    assert str(path) in msg and "not a recognised audio file" in msg


def test_truncated_wav_is_refused(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, sine(440, 16000), 16000, subtype="PCM_16")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    msg = error_of(load_audio, path)
    assert str(path) in msg and "truncated" in msg and "32000 bytes" in msg
    path.write_bytes(whole[:30])  # cut inside the fmt chunk
    assert "truncated" in error_of(load_audio, path)
    assert "truncated" in error_of(decode_audio, whole[:10])


def test_truncated_flac_is_refused(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, sine(440, 16000), 16000)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    msg = error_of(load_audio, path)
    assert str(path) in msg and ("damaged" in msg or "truncated" in msg)


def test_zero_length_audio(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    msg = error_of(load_audio, path)
    assert str(path) in msg and "no audio" in msg and "0 frames" in msg


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_samples(tmp_path, bad, word):
    y = sine(440, 16000, seconds=0.1)
    y[17] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, y, 16000, subtype="FLOAT")
    msg = error_of(load_audio, path)
    assert str(path) in msg and word in msg and "sample 17" in msg


@pytest.mark.parametrize("rate", [1000, SUPPORTED_RATE_RANGE[1] * 2])
def test_unsupported_sample_rate(tmp_path, rate):
    path = tmp_path / "odd_rate.wav"
    sf.write(path, np.full(1000, 0.1, dtype=np.float32), rate)
    msg = error_of(load_audio, path)
    assert str(path) in msg and f"unsupported sample rate {rate} Hz" in msg


def test_silent_clip_only_refused_when_level_required(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    assert load_audio(path).shape == (16000,)
    msg = error_of(load_audio, path, require_level=True)
    assert str(path) in msg and "silent" in msg and "-inf dBFS" in msg
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, sine(440, 16000, amp=1e-4), 16000, subtype="FLOAT")  # about -83 dBFS
    assert "below min_rms_db=-70" in error_of(load_audio, quiet, require_level=True)
    assert load_audio(quiet, require_level=True, min_rms_db=-90.0).shape == (16000,)


def test_bad_arguments_are_value_or_type_errors(tmp_path):
    path = tmp_path / "tone.wav"
    save_wav(path, sine(440, 16000, seconds=0.1), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(path, sample_rate=100)
    with pytest.raises(ValueError, match="offset"):
        load_audio(path, offset="middle")
    with pytest.raises(TypeError):
        decode_audio(str(path))


# --- import weight -----------------------------------------------------------------------------------------------


def test_import_does_not_pull_torch_or_librosa():
    code = (
        "import sys, edgekws.audio; "
        "heavy = [m for m in ('torch', 'librosa', 'numba') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr
