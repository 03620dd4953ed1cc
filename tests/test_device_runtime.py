"""Device runtime: backends, audio sources, streaming detector, `edgekws listen`, and the torch-free guarantee."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the device tests need onnxruntime (pip install -e '.[dev]')")

from conftest import tone, write_wav
from device_support import bundle_public_key, keyword_bundle, sentence
from edgekws.device.backend import BackendError, OnnxBackend, open_backend
from edgekws.device.model import DeviceModel, DeviceModelError, open_bundle
from edgekws.device.runtime import (
    Detector,
    DetectorConfig,
    offline_windows,
    run_detector,
)
from edgekws.device.stream import (
    ArraySource,
    AudioSourceError,
    MicrophoneSource,
    RawPCMSource,
    WavSource,
)

from edgekws.features import FeatureConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return keyword_bundle(tmp_path_factory.getbasetemp().parent)


@pytest.fixture(scope="module")
def test_sentence(tmp_path_factory):
    words = ["yes", "stop", "no", "yes"]
    y, spans = sentence(words, gap_s=1.2, lead_s=1.0, seed=3)
    path = write_wav(tmp_path_factory.mktemp("sent") / "sentence.wav", y)
    return path, y, spans


class _Recorder:
    """A fake model that records its inputs and returns scheduled logits."""

    def __init__(self, classes, schedule=None):
        self.classes = tuple(classes)
        self.inputs: list[np.ndarray] = []
        self.schedule = schedule or []

    def logits(self, x):
        self.inputs.append(x.copy())
        i = len(self.inputs) - 1
        if i < len(self.schedule):
            return np.asarray(self.schedule[i], np.float32)[None]
        z = np.zeros((1, len(self.classes)), np.float32)
        z[0, 0] = 5.0
        return z


def _fitted_cfg() -> FeatureConfig:
    fc = FeatureConfig()
    return fc.replace(mean=tuple(np.linspace(-300, 0, fc.n_mfcc)), std=tuple(np.linspace(50, 5, fc.n_mfcc)))


# Streaming equals offline ---------------------------------------------------------------------------------------


def test_streaming_windows_equal_offline_for_any_block_size():
    fc = _fitted_cfg()
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(16000 * 4) * 0.05).astype(np.float32) + tone(440, 4.0, amp=0.2)
    rec = _Recorder(["_silence_", "a"])
    det = Detector(rec, fc, DetectorConfig(hop_ms=100))
    i = 0
    while i < len(y):  # ragged blocks, including 1-sample and multi-hop blocks
        n = int(rng.choice([1, 37, 320, 1000, 5000]))
        det.feed(y[i : i + n])
        i += n
    ref = offline_windows(y, fc, det.hop)
    got = np.concatenate(rec.inputs)
    assert got.shape == ref.shape == (1 + (198 - 48) // 5, 1, 40, 48)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_streaming_logits_equal_offline_logits(bundle, test_sentence):
    _, y, _ = test_sentence
    info = open_bundle(bundle, bundle_public_key(bundle))
    model = DeviceModel(info)
    det = Detector(model, info.feature_config)
    ups = []
    for i in range(0, len(y), 333):
        ups += det.feed(y[i : i + 333])
    stream_logits = np.stack([u.logits for u in ups])
    offline = model.logits(offline_windows(y, info.feature_config, det.hop))
    assert stream_logits.shape == offline.shape
    np.testing.assert_allclose(stream_logits, offline, atol=1e-4)
    # window end times are spaced by the hop and start one clip in
    times = np.array([u.time for u in ups])
    np.testing.assert_allclose(np.diff(times), 0.1, atol=1e-9)
    assert times[0] == pytest.approx(1.0)


# Decisions ---------------------------------------------------------------------------------------------------


def test_thresholds_smoothing_and_refractory():
    fc = _fitted_cfg()
    hi = [0.0, 6.0, 0.0]  # "a" near 1.0
    mid = [0.0, 0.0, 1.5]  # "b" ~0.69
    sil = [5.0, 0.0, 0.0]
    sched = [hi] * 4 + [sil] * 3 + [hi] * 8 + [sil] * 15 + [mid] * 6
    rec = _Recorder(["_silence_", "a", "b"], sched)
    cfg = DetectorConfig(hop_ms=100, smooth=2, threshold=0.6, thresholds={"b": 0.8}, refractory_s=1.0, gate_db=0)
    det = Detector(rec, fc, cfg)
    y = np.zeros(16000 * 8, np.float32)
    events = list(run_detector(det, ArraySource(y, block_ms=50)))
    # "a" fires at the first window (t=1.0 s); its second run (t=1.7..2.4 s; smoothed over 2 hops it passes 0.6
    # from 1.8 s) is held back by the 1 s refractory period until 2.0 s
    names = [e.keyword for e in events]
    assert names == ["a", "a"]
    np.testing.assert_allclose([e.time for e in events], [1.0, 2.0])
    assert events[0].start == pytest.approx(0.0) and events[0].score > 0.99
    # "b" reaches 0.69 < its own threshold 0.8: never fires
    assert "b" not in names
    # the background class never fires, however confident
    assert all(not e.keyword.startswith("_") for e in events)


def test_level_gate_stops_detections_in_silence():
    fc = _fitted_cfg()
    rec = _Recorder(["a", "b"], [[0.0, 6.0]] * 1000)  # no background class: always confident "b"
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(16000 * 4) * 1e-3).astype(np.float32)
    assert list(run_detector(Detector(rec, fc, DetectorConfig()), ArraySource(quiet))) == []
    loud = quiet.copy()
    loud[int(2.5 * 16000) : int(2.8 * 16000)] += tone(500, 0.3, amp=0.3)
    events = list(run_detector(Detector(rec, fc, DetectorConfig()), ArraySource(loud)))
    assert [e.keyword for e in events] == ["b"]
    assert events[0].start <= 2.5 <= events[0].time
    # without the gate, silence fires (once: a keyword re-arms only after its posterior drops)
    assert len(list(run_detector(Detector(rec, fc, DetectorConfig(gate_db=0)), ArraySource(quiet)))) == 1


def test_detector_config_rejects_bad_values():
    with pytest.raises(ValueError, match="threshold"):
        DetectorConfig(threshold=1.5)
    with pytest.raises(ValueError, match="smooth"):
        DetectorConfig(smooth=0)
    with pytest.raises(ValueError, match="hop_ms"):
        DetectorConfig(hop_ms=0)


# Detections on a generated sentence ------------------------------------------------------------------------


def _check_detections(events, spans):
    assert [e["keyword"] for e in events] == [w for w, _, _ in spans]
    for e, (w, on, off) in zip(events, spans):
        # the window that fired contains the word's onset, and fired within a clip length of the word's end
        assert e["start"] <= on + 0.05 and e["time"] >= on, (e, (w, on, off))
        assert e["time"] <= off + 1.0
        assert 0.6 <= e["score"] <= 1.0


def test_detector_finds_keywords_of_a_sentence_at_the_right_times(bundle, test_sentence):
    _, y, spans = test_sentence
    info = open_bundle(bundle, bundle_public_key(bundle))
    det = Detector(DeviceModel(info), info.feature_config)
    events = [e.to_dict() for e in run_detector(det, ArraySource(y))]
    _check_detections(events, spans)


def test_listen_cli_json_lines(bundle, test_sentence):
    from typer.testing import CliRunner

    from edgekws.cli import app

    path, _, spans = test_sentence
    res = CliRunner().invoke(app, ["listen", "--bundle", str(bundle), "--public-key", str(bundle_public_key(bundle)), "--wav", str(path), "--json",
                                   "--bundle-only"])
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    _check_detections(events, spans)


def test_listen_cli_live_view_and_errors(bundle, test_sentence, tmp_path):
    from typer.testing import CliRunner

    from edgekws.cli import app

    path, _, _ = test_sentence
    r = CliRunner()
    res = r.invoke(app, ["listen", "--bundle", str(bundle), "--public-key", str(bundle_public_key(bundle)), "--wav", str(path), "--bundle-only"])
    assert res.exit_code == 0, res.output
    assert "detections" in res.output and "level" in res.output and "4 detection(s)" in res.output
    assert "threshold 0.6, default" in " ".join(res.output.split())  # the bundle ships no threshold
    res = r.invoke(app, ["listen", "--bundle", str(tmp_path), "--wav", str(path)])
    assert res.exit_code == 2 and "manifest.json is missing" in " ".join(res.output.split())
    res = r.invoke(app, ["listen", "--bundle", str(bundle), "--public-key", str(bundle_public_key(bundle)), "--wav", str(tmp_path / "nope.wav")])
    assert res.exit_code == 2 and "nope.wav" in "".join(res.output.split())
    res = r.invoke(app, ["listen", "--bundle", str(bundle), "--public-key", str(bundle_public_key(bundle)), "--wav", str(path), "--thresholds", "maybe=0.5"])
    assert res.exit_code == 2 and "unknown keywords" in res.output
    res = r.invoke(app, ["listen", "--bundle", str(bundle), "--public-key", str(bundle_public_key(bundle)), "--wav", str(path), "--format", "tflite"])
    assert res.exit_code == 2 and "no classifier graph in tflite fp32" in " ".join(res.output.split())


# Torch-free -----------------------------------------------------------------------------------------------


_BLOCK_TORCH = r"""
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def test_device_runtime_runs_with_torch_unimportable(bundle, test_sentence):
    path, _, spans = test_sentence
    code = _BLOCK_TORCH + f"""
import json
try:
    import torch
    raise SystemExit("torch should be blocked")
except ImportError:
    pass
import edgekws.device, edgekws.device.backend, edgekws.device.stream, edgekws.device.runtime, edgekws.device.model
import edgekws.device.prototypes, edgekws.device.finetune, edgekws.device.store, edgekws.device.labeling
from typer.testing import CliRunner
from edgekws.cli import app
res = CliRunner().invoke(app, ["listen", "--bundle", {str(bundle)!r}, "--public-key", {str(bundle_public_key(bundle))!r}, "--wav", {str(path)!r}, "--json",
                               "--bundle-only"])
assert res.exit_code == 0, res.output
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
print(res.stdout)
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [e["keyword"] for e in events] == [w for w, _, _ in spans]


# Backends ---------------------------------------------------------------------------------------------------


def test_onnx_backend_static_batch_one_and_int8(tmp_path, bundle):
    torch = pytest.importorskip("torch")
    from device_support import build_bundle
    from edgekws.models import create_model

    torch.manual_seed(0)
    fc = _fitted_cfg()
    m = create_model("cnn4", n_classes=3, input_shape=fc.shape, widths=(8, 8, 8, 8)).eval()
    b = build_bundle(m, fc, ["_silence_", "a", "b"], tmp_path / "b", static_batch=True, int8=True)
    be = open_backend(b / "model.onnx")
    assert isinstance(be, OnnxBackend) and be.static_batch and be.input_shape == (1, 1, 40, 48)
    x = np.random.default_rng(0).standard_normal((5, 1, 40, 48)).astype(np.float32)
    got = be.predict(x)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    q = open_backend(b / "model.int8.onnx").predict(x)
    assert q.shape == (5, 3) and np.abs(q - ref).max() < 0.1 * (np.abs(ref).max() + 1)
    with pytest.raises(BackendError, match="does not match"):
        be.predict(np.zeros((1, 1, 40, 47), np.float32))
    with pytest.raises(BackendError, match="NaN"):
        be.predict(np.full((1, 1, 40, 48), np.nan, np.float32))
    with pytest.raises(BackendError, match="does not exist"):
        open_backend(tmp_path / "missing.onnx")
    with pytest.raises(BackendError, match="unknown graph format"):
        open_backend(tmp_path / "x.pb")
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(BackendError, match="cannot load ONNX graph"):
        open_backend(tmp_path / "bad.onnx")
    # the int8 classifier is selectable through the model
    dm = DeviceModel(open_bundle(b, bundle_public_key(b)), precision="int8")
    assert dm.logits(x[:1]).shape == (1, 3)


def test_open_bundle_refuses_bad_or_tampered_bundles(tmp_path, bundle):
    import shutil

    with pytest.raises(DeviceModelError, match="does not exist"):
        open_bundle(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DeviceModelError, match="refused"):
        open_bundle(tmp_path)
    copy = shutil.copytree(bundle, tmp_path / "copy")
    pub = bundle_public_key(bundle)
    assert open_bundle(copy, pub).classes == ("_silence_", "yes", "no", "stop")
    with open(copy / "head.npz", "r+b") as fh:  # one changed byte
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 1]))
    with pytest.raises(DeviceModelError, match="head.npz"):
        open_bundle(copy, pub)
    (copy / "labels.sqlite").write_bytes(b"")  # state never goes into the bundle: unlisted files are refused
    with pytest.raises(DeviceModelError):
        open_bundle(copy, pub)


# Audio sources ----------------------------------------------------------------------------------------------


def test_wav_source_fast_and_realtime(tmp_path):
    y = tone(300, 0.5)
    p = write_wav(tmp_path / "t.wav", y, sr=8000)  # resampled to 16 kHz
    src = WavSource(p)
    got = np.concatenate(list(src))
    assert got.shape == (16000,)
    t0 = time.monotonic()
    n = sum(b.size for b in WavSource(p, realtime=True))
    assert n == 16000 and time.monotonic() - t0 >= 0.9
    with pytest.raises(AudioSourceError, match="missing.wav"):
        WavSource(tmp_path / "missing.wav")


def test_raw_pcm_source_converts_and_resamples():
    rng = np.random.default_rng(1)
    stereo = (rng.uniform(-0.5, 0.5, (8000, 2)) * 32768).astype("<i2")
    src = RawPCMSource(io.BytesIO(stereo.tobytes() + b"\x01"), input_rate=8000, channels=2)  # trailing odd byte
    out = np.concatenate(list(src))
    assert abs(out.size - 16000) <= 2
    same = np.concatenate(list(RawPCMSource(io.BytesIO(stereo[:, 0].copy().tobytes()), input_rate=16000)))
    np.testing.assert_allclose(same, stereo[:, 0] / 32768.0, atol=1e-6)
    with pytest.raises(ValueError, match="PCM format"):
        RawPCMSource(io.BytesIO(b""), fmt="mp3")


def test_microphone_errors_name_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_portaudio(name, *a, **k):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *a, **k)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(AudioSourceError) as ei:
        MicrophoneSource()
    msg = str(ei.value)
    assert "apt-get install libportaudio2" in msg and "--device" in msg and "--wav" in msg


def test_microphone_without_input_device(monkeypatch):
    try:
        import sounddevice  # noqa: F401
    except ImportError:
        pytest.skip("sounddevice is not installed (pip install 'edgekws[device]')")
    except OSError:
        pytest.skip("PortAudio is not installed here (apt-get install libportaudio2)")
    with pytest.raises(AudioSourceError) as ei:
        MicrophoneSource(device=987654)
    assert "--device" in str(ei.value) and "--wav" in str(ei.value)


def test_tflite_backend_matches_torch_and_onnx(tmp_path):
    torch = pytest.importorskip("torch")
    from edgekws.export.tflite import tflite_unavailable_reason

    reason = tflite_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from edgekws.device.backend import TFLiteBackend
    from edgekws.export.tflite import export_tflite
    from edgekws.models import create_model

    torch.manual_seed(1)
    m = create_model("cnn4", n_classes=4, input_shape=(40, 48), widths=(8, 8, 8, 16)).eval()
    x = np.random.default_rng(2).standard_normal((3, 1, 40, 48)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
        ref_emb = m.embed(torch.from_numpy(x)).numpy()
    fp32 = export_tflite(m, tmp_path / "model.tflite")
    be = open_backend(fp32, threads=1)
    assert isinstance(be, TFLiteBackend) and be.model_input_shape[1:] == (1, 40, 48)
    np.testing.assert_allclose(be.predict(x), ref, atol=1e-4)  # a batch of 3 through a batch-1 graph
    emb = open_backend(export_tflite(m, tmp_path / "embedding.tflite", kind="embedding"))
    np.testing.assert_allclose(emb.predict(x), ref_emb, atol=1e-4)
    q = open_backend(export_tflite(m, tmp_path / "model.int8.tflite", int8=True, calibration=x[:, 0]))
    got = q.predict(x)
    assert got.shape == ref.shape and np.abs(got - ref).max() < 0.2 * (np.abs(ref).max() + 1)
    with pytest.raises(BackendError, match="does not match"):
        be.predict(np.zeros((1, 1, 40, 40), np.float32))
    (tmp_path / "bad.tflite").write_bytes(b"nope")
    with pytest.raises(BackendError, match="cannot load TFLite graph"):
        open_backend(tmp_path / "bad.tflite")


def test_temperature_fitted_on_the_coreset_rescues_flat_posteriors(bundle, test_sentence, tmp_path):
    """A model trained with MSE on soft labels has logits of small range: its plain softmax never passes a
    threshold. The temperature fitted on the bundle's coreset makes its posteriors usable again."""
    _, y, spans = test_sentence
    info = open_bundle(bundle, bundle_public_key(bundle))
    m = DeviceModel(info)
    T0 = m.fit_temperature()

    class Shrunk:
        def __init__(self, inner):
            self.inner = inner

        def predict(self, x):
            return 0.05 * self.inner.predict(x)

    m._classifier = Shrunk(m._classifier)
    T = m.fit_temperature()
    assert T < 0.2 * T0
    m.temperature = 1.0
    assert list(run_detector(Detector(m, info.feature_config), ArraySource(y))) == []
    m.temperature = T
    events = [e.to_dict() for e in run_detector(Detector(m, info.feature_config), ArraySource(y))]
    _check_detections(events, spans)
    # listen caches the fitted value per graph in the state directory
    state = tmp_path / "st"
    a = DeviceModel(info, state=state, calibrate=True)
    assert (state / "temperature.json").is_file()
    assert json.loads((state / "temperature.json").read_text()) == {"onnx_fp32": a.temperature}
    assert a.temperature == pytest.approx(T0)


def test_microphone_source_resamples_a_device_stream(monkeypatch):
    """The microphone path with a stand-in PortAudio: a 44.1 kHz stereo device gives 16 kHz mono blocks."""
    import threading
    import types

    sr_in = 44100
    t = np.arange(sr_in) / sr_in
    signal_in = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32) * 0.5

    class FakeStream:
        def __init__(self, device, channels, samplerate, blocksize, dtype, callback):
            assert samplerate == sr_in and channels == 2 and dtype == "float32"
            self.cb, self.bs = callback, blocksize
            self.closed = False

        def start(self):
            def feed():
                for i in range(0, len(signal_in), self.bs):
                    self.cb(signal_in[i : i + self.bs], len(signal_in[i : i + self.bs]), None, None)
            threading.Thread(target=feed, daemon=True).start()

        def stop(self):
            pass

        def close(self):
            self.closed = True

    fake = types.SimpleNamespace(
        PortAudioError=RuntimeError, InputStream=FakeStream,
        query_devices=lambda device=None, kind=None: (
            {"name": "usb mic", "default_samplerate": float(sr_in), "max_input_channels": 2} if kind else
            [{"name": "usb mic", "default_samplerate": float(sr_in), "max_input_channels": 2}]))
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    with MicrophoneSource(device=0, channels=2, max_seconds=0.9) as src:
        assert src.name == "mic:usb mic" and src.input_rate == sr_in
        out = np.concatenate(list(src))
    assert 0.9 * 16000 <= out.size <= 16000
    spec = np.abs(np.fft.rfft(out[2000:12000]))
    assert abs(np.argmax(spec) * 16000 / 10000 - 440) < 5  # still a 440 Hz tone after resampling


def test_listen_follows_a_switched_current_link(bundle, tmp_path):
    """`listen --bundle <root>/current` re-opens the bundle when an update or rollback switches the link, and keeps
    the old one when the new one does not verify."""
    import shutil

    root = tmp_path / "root"
    (root / "versions").mkdir(parents=True)
    for name in ("a", "b", "c"):
        shutil.copytree(bundle, root / "versions" / name)
    with open(root / "versions" / "c" / "head.npz", "r+b") as fh:  # c is damaged
        fh.seek(50)
        b = fh.read(1)
        fh.seek(50)
        fh.write(bytes([b[0] ^ 0xFF]))
    cur = root / "current"
    os.symlink("versions/a", cur)

    def switch(name):
        tmp = root / ".current.tmp"
        os.symlink(f"versions/{name}", tmp)
        os.replace(tmp, cur)

    rng = np.random.default_rng(0)
    seg = (rng.standard_normal(8 * 16000) * 300).astype("<i2").tobytes()  # 8 s of quiet noise, 16-bit PCM
    code = "import sys; from edgekws.cli import app; sys.argv = ['edgekws'] + sys.argv[1:]; app()"
    p = subprocess.Popen([sys.executable, "-c", code, "listen", "--bundle", str(cur), "--public-key",
                          str(bundle_public_key(bundle)), "--stdin", "--json", "--bundle-only"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200"))
    # a pipe holds ~2 s of audio, so each write returns only once all but ~2 s of it were consumed: the switch
    # to b is seen by the check at 10 s at the latest, before the switch to c
    p.stdin.write(seg)
    switch("b")
    p.stdin.write(seg)
    switch("c")
    p.stdin.write(seg)
    p.stdin.close()
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert p.returncode == 0, err
    text = " ".join(err.split())
    assert "switched to bundle versions/b" in text
    assert "bundle switched to versions/c but refused" in text and "keeping the old one" in text
    assert text.index("versions/b") < text.index("versions/c")
