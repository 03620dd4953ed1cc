"""The device's front door (`edgekws.device.Spotter`), files read in blocks, `collect` in bounded memory, lost
microphone audio, the one bundle reader, and what `listen` imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the device tests need onnxruntime (pip install -e '.[dev]')")

from conftest import write_wav
from device_support import bundle_public_key, keyword_bundle, sentence

from edgekws.device import Spotter
from edgekws.device.model import DeviceModelError, open_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return keyword_bundle(tmp_path_factory.getbasetemp().parent)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    words = ["yes", "stop", "no", "yes"]
    y, spans = sentence(words, gap_s=1.2, lead_s=1.0, seed=3)
    return write_wav(tmp_path_factory.mktemp("spoken") / "sentence.wav", y), y, spans


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgekws.cli", *args],
        capture_output=True,
        input=stdin,
        env=dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200"),
        timeout=300,
    )


def test_spotter_runs_the_recommended_graph_and_finds_the_words(bundle, spoken, tmp_path):
    from edgekws.audio import load_audio

    wav, _, spans = spoken
    y = load_audio(wav)  # the samples listen reads from the file
    pub = bundle_public_key(bundle)
    with Spotter.open(bundle, public_key=pub, state=tmp_path / "state") as spotter:
        rec = json.loads((bundle / "manifest.json").read_text()).get("recommended") or {}
        assert spotter.graph == f"{rec.get('format', 'onnx')} {rec.get('precision', 'fp32')}"
        assert spotter.classes == tuple(open_bundle(bundle, pub).classes) and spotter.sample_rate == 16000
        found = []
        for i in range(0, len(y), 1234):  # any block size
            found += spotter.feed(y[i : i + 1234])
    assert [d.keyword for d in found] == [w for w, _, _ in spans]
    with pytest.raises(RuntimeError, match="closed"):
        spotter.feed(y[:100])
    # the same detections as `edgekws listen --wav --json`, which runs the same object
    res = _cli(
        "listen",
        "--bundle",
        str(bundle),
        "--public-key",
        str(pub),
        "--wav",
        str(wav),
        "--json",
        "--state",
        str(tmp_path / "state"),
    )
    assert res.returncode == 0, res.stderr.decode()
    lines = [json.loads(ln) for ln in res.stdout.decode().splitlines()]
    assert lines == [d.to_dict() for d in found]


def test_spotter_refuses_bad_input_with_reasons(bundle, tmp_path):
    pub = bundle_public_key(bundle)
    with pytest.raises(ValueError, match="unknown keywords"):
        Spotter.open(bundle, public_key=pub, thresholds={"banana": 0.5}, local=False)
    with pytest.raises(DeviceModelError, match="no classifier graph in tflite"):
        Spotter.open(bundle, public_key=pub, fmt="tflite", precision="int8", local=False)
    other = tmp_path / "keys"
    from edgekws.bundle import generate_keypair

    generate_keypair(other)
    with pytest.raises(DeviceModelError, match="wrong signature|signed by key"):
        Spotter.open(bundle, public_key=other / "signing.pub")


def test_spotter_switches_to_a_new_local_version_while_fed(bundle, spoken, tmp_path):
    from edgekws.device.model import state_dir_for, write_version

    _, y, _ = spoken
    pub = bundle_public_key(bundle)
    b = open_bundle(bundle, pub)
    events: list[dict] = []
    spotter = Spotter.open(bundle, public_key=pub, state=tmp_path, check_every_s=1.0, on_event=events.append)
    assert spotter.version is None
    W, bias = b.head()
    classes = (*b.classes, "whistle")
    write_version(state_dir_for(b, tmp_path), np.vstack([W, W[:1]]), np.append(bias, -5.0), classes, {"n": 0})
    spotter.feed(y[:32000])
    assert spotter.version == "v0001" and spotter.classes == classes
    assert events == [{"event": "local_version", "version": "v0001"}]


def test_one_bundle_reader_and_one_id(bundle):
    from edgekws.bundle import BUNDLE_ID_RE, bundle_id, load_bundle
    from edgekws.device.update import _identity

    b = load_bundle(bundle, bundle_public_key(bundle))
    assert b is not None and open_bundle(bundle, bundle_public_key(bundle)).id == b.id
    assert BUNDLE_ID_RE.match(b.id) and b.id == bundle_id(bundle) == bundle_id((bundle / "manifest.json").read_bytes())
    assert _identity(bundle) == b.id
    rec = b.recommended
    assert b.graph_path() == b.graph_path("classifier", rec["format"], rec["precision"])
    assert b.choose_graph("onnx", None) == ("onnx", rec["precision"] if rec["format"] == "onnx" else "fp32")


def test_wav_source_reads_in_blocks_what_load_audio_reads(tmp_path):
    from edgekws.audio import load_audio, save_wav
    from edgekws.device.stream import AudioSourceError, WavSource

    rng = np.random.default_rng(1)
    y = (0.1 * rng.standard_normal(40000)).astype(np.float32)
    p = tmp_path / "a.wav"
    save_wav(p, y, 16000)
    src = WavSource(p, block_ms=20.0)
    blocks = list(src)
    assert max(len(b) for b in blocks) == 320 and src.seconds == pytest.approx(2.5)
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(p))
    stereo = tmp_path / "stereo.wav"
    save_wav(stereo, np.stack([y, -0.5 * y]), 16000)
    np.testing.assert_array_equal(np.concatenate(list(WavSource(stereo))), load_audio(stereo))
    at44 = tmp_path / "at44.wav"
    save_wav(at44, y[:22050], 44100)
    got = np.concatenate(list(WavSource(at44, 16000)))
    assert abs(len(got) - 8000) <= 1
    data = bytearray(p.read_bytes())
    (tmp_path / "cut.wav").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(AudioSourceError, match="truncated"):
        WavSource(tmp_path / "cut.wav")


def test_collect_reads_a_file_in_blocks_and_cuts_the_clips_of_the_whole_recording(bundle, spoken, tmp_path):
    from edgekws.device.model import DeviceModel
    from edgekws.device.prototypes import VADConfig, clip_windows, collect, segment
    from edgekws.device.store import LabelStore

    from edgekws.audio import load_audio

    wav, _, spans = spoken
    y = load_audio(wav)
    model = DeviceModel(open_bundle(bundle, bundle_public_key(bundle)), fmt="onnx", precision="fp32")
    blocks = lambda: (y[i : i + 777] for i in range(0, len(y), 777))  # noqa: E731
    with LabelStore(tmp_path / "a.sqlite") as a, LabelStore(tmp_path / "b.sqlite") as b:
        ra = collect(model, wav, a, tmp_path / "ca", k=2)
        rb = collect(model, blocks, b, tmp_path / "cb", k=2)
        segs = segment(y, 16000, VADConfig())
        wins = clip_windows(y, segs, 16000)
        assert ra["segments"] == rb["segments"] == len(segs) == len(spans)
        assert ra["clips"] == rb["clips"] == len(wins)
        assert [(c.start_s, c.end_s) for c in a.clips()] == [(s / 16000, e / 16000) for s, e in wins]
        for ca, cb in zip(a.clips(), b.clips()):
            np.testing.assert_allclose(ca.embedding, cb.embedding, rtol=1e-5, atol=1e-6)
        assert len(ra["requested"]) == len(rb["requested"]) == 2


def test_streaming_segmenter_equals_the_offline_one_for_any_block_size():
    from edgekws.device.prototypes import NoiseFloor, Segmenter, VADConfig, clip_windows, noise_floor, segment

    rng = np.random.default_rng(0)
    y = (rng.standard_normal(16000 * 40) * 0.003).astype(np.float32)
    pos = 0
    while pos < len(y) - 40000:  # bursts from 60 ms to 2.5 s: single windows and tiled long segments
        pos += int(rng.integers(4000, 40000))
        n = int(rng.integers(1000, 40000))
        y[pos : pos + n] += (rng.standard_normal(min(n, len(y) - pos)) * 0.2).astype(np.float32)
        pos += n
    for cfg in (VADConfig(), VADConfig("spectral")):
        segs = segment(y, 16000, cfg)
        wins = clip_windows(y, segs, 16000)
        assert len(segs) > 5 and len(wins) > len(segs) // 2
        for step in (320, 4321, 99991):
            floor = noise_floor((y[i : i + step] for i in range(0, len(y), step)), 16000, cfg)
            cut = Segmenter(floor, 16000, 16000, cfg)
            got = [w for i in range(0, len(y), step) for w in cut.push(y[i : i + step])] + cut.finish()
            assert cut.segments == segs
            assert [(a, b) for a, b, _ in got] == wins
            for a, b, clip in got:
                want = np.zeros(16000, np.float32)
                want[: min(b, len(y)) - a] = y[a : min(b, len(y))]
                np.testing.assert_array_equal(clip, want)
            assert len(cut._buf) < 4 * 16000  # a few seconds kept, not the recording
    levels = rng.normal(-40, 10, 10001)
    h = NoiseFloor()
    h.add(levels[:5000])
    h.add(levels[5000:])
    assert h.value() == pytest.approx(float(np.percentile(np.round(levels, 2), 10)), abs=1e-9)


def test_listen_reports_lost_microphone_audio(bundle, monkeypatch, capsys):
    import edgekws.device.stream as stream
    from edgekws.cli.listen import listen_main

    class Lossy(stream.AudioSource):
        name, sample_rate, overflows, dropped_seconds = "mic:test", 16000, 0, 0.0

        def blocks(self):
            for i in range(60):
                if i == 30:
                    self.overflows, self.dropped_seconds = 1, 0.02
                yield np.zeros(1600, np.float32)

    monkeypatch.setattr(stream, "open_source", lambda **kw: Lossy())
    listen_main(["--bundle", str(bundle), "--public-key", str(bundle_public_key(bundle)), "--json", "--bundle-only"])
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert lines == [{"event": "overflow", "time": pytest.approx(3.1), "overflows": 1, "dropped_s": 0.02}]


def test_listen_path_imports_only_what_it_needs(bundle, spoken):
    wav, _, _ = spoken
    code = (
        "import sys\nfrom edgekws.cli import main\nmain(sys.argv[1:])\n"
        "print(sorted(m for m in ('typer', 'click', 'pydantic', 'rich', 'torch', 'ai_edge_litert', 'cryptography', "
        "'_hashlib') "
        "if m in sys.modules), file=sys.stderr)"
    )
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "listen",
            "--bundle",
            str(bundle),
            "--public-key",
            str(bundle_public_key(bundle)),
            "--wav",
            str(wav),
            "--json",
            "--bundle-only",
            "--no-calibrate",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines()[-1] == "[]"


def test_verification_in_a_child_process_refuses_what_verify_bundle_refuses(bundle, tmp_path):
    import shutil

    from edgekws.bundle import BundleError, verify_bundle, verify_in_child

    pub = bundle_public_key(bundle)
    assert verify_in_child(bundle, pub).id == verify_bundle(bundle, pub).id
    assert verify_in_child(bundle, trust_embedded_key=True).trusted is False
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    graph = copy / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[100] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx is damaged or was modified"):
        verify_in_child(copy, pub)
    with pytest.raises(BundleError, match="public key not found"):
        verify_in_child(bundle, tmp_path / "missing.pub")


def test_update_smoke_test_runs_the_recommended_graph_through_a_spotter(bundle):
    from edgekws.device.update import smoke_test

    out = smoke_test(bundle, bundle_public_key(bundle))
    rec = open_bundle(bundle, bundle_public_key(bundle)).recommended
    assert out["graph"] == f"{rec['format']} {rec['precision']}" and out["bundle"]["classes"] == out["classes"]
    assert smoke_test(bundle, bundle_public_key(bundle), precision="fp32")["graph"] == "onnx fp32"


def test_export_parity_runs_the_device_backend(monkeypatch, tmp_path):
    import edgekws.device.backend as backend
    from edgekws.export.parity import graph_outputs

    calls = []

    class Fake:
        def predict(self, x):
            calls.append(x.shape)
            return np.ones((len(x), 2), np.float32)

    monkeypatch.setattr(backend, "open_backend", lambda path, threads=1: Fake())
    out = graph_outputs(tmp_path / "g.onnx", np.zeros((300, 4, 5), np.float32), batch_size=256)
    assert out.shape == (300, 2) and calls == [(256, 1, 4, 5), (44, 1, 4, 5)]
