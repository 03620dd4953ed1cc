"""The browser demo: the page's JavaScript against the Python it mirrors (MFCC, resampler, detection rule,
bundle checks), the /demo routes of `edgekws demo` and the registry, TLS, and the page itself in headless
Chromium: on a fake microphone playing a WAV it reports the detections `edgekws listen --wav` reports, it refuses
a tampered bundle and runs nothing, and it works offline after one visit."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import tone, write_wav
from device_support import bundle_public_key, keyword_bundle, sentence
from web_support import (
    browser,
    listen_json,
    match_detections,
    needs_chromium,
    needs_node,
    needs_runtime,
    read_f32,
    run_node,
    se_keyword_bundle,
    settled,
    state,
    wait_for,
    web_module,
    write_f32,
)

pytest.importorskip("onnxruntime", reason="the demo's server side needs onnxruntime (pip install -e '.[dev]')")

from edgekws.features import FeatureConfig, mfcc, normalize  # noqa: E402


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """A keyword clip between noise and tones at several levels (no silence-only frames)."""
    from edgekws.datasets.synthetic import render_clip

    rng = np.random.default_rng(seed)
    word = render_clip("stop", seed, seed=0, vocabulary=("yes", "no", "stop"))[0]
    n = int(seconds * 16000)
    y = 1e-3 * rng.standard_normal(n).astype(np.float32)
    y[: len(tone(300, 0.5))] += tone(300, 0.5, amp=0.2)
    y[8000: 8000 + len(word)] += word
    y[-4000:] += 0.05 * rng.standard_normal(4000).astype(np.float32)
    return y.astype(np.float32)


# The page's modules under node ------------------------------------------------------------------------------------


@needs_node
@pytest.mark.parametrize("normalization", ["global", "utterance", "none"])
def test_js_mfcc_equals_numpy_frames_streams_and_windows(tmp_path, normalization):
    y = _speechy(2.0)
    raw = mfcc(y, FeatureConfig(), normalize_output=False)
    fc = FeatureConfig(normalization=normalization)
    if normalization == "global":
        fc = fc.replace(mean=tuple(raw.mean(axis=1).tolist()), std=tuple((raw.std(axis=1) + 1).tolist()))
    write_f32(tmp_path / "y.f32", y)
    out = run_node(f"""
import {{ FeatureConfig, StreamingMfcc, mfccFrames, normalizeWindow }} from "{web_module('mfcc.js')}";
import {{ readFileSync, writeFileSync }} from "node:fs";
const b = readFileSync("{tmp_path / 'y.f32'}");
const y = new Float32Array(b.buffer, b.byteOffset, b.length / 4);
const cfg = new FeatureConfig({json.dumps(fc.to_dict())});
const whole = mfccFrames(y, cfg);
const s = new StreamingMfcc(cfg);
const streamed = [];
let pos = 0, k = 1;
while (pos < y.length) {{ const n = 1 + (k * 7919) % 997; streamed.push(...s.push(y.subarray(pos, pos + n))); pos += n; k++; }}
const same = streamed.length === whole.length && streamed.every((f, i) => f.every((v, c) => v === whole[i][c]));
const win = normalizeWindow(whole.slice(10, 10 + cfg.nFrames), cfg);
const flat = new Float32Array(whole.length * cfg.n_mfcc);
whole.forEach((f, i) => flat.set(f, i * cfg.n_mfcc));
writeFileSync("{tmp_path / 'frames.f32'}", Buffer.from(flat.buffer));
writeFileSync("{tmp_path / 'win.f32'}", Buffer.from(win.buffer));
console.log(JSON.stringify({{ same, n: whole.length, nFrames: cfg.nFrames }}));
""")
    info = json.loads(out)
    assert info["same"], "streaming frames must equal the whole recording's, bit for bit"
    frames = read_f32(tmp_path / "frames.f32").reshape(-1, fc.n_mfcc).T
    assert frames.shape == raw.shape and info["nFrames"] == fc.n_frames == 48
    np.testing.assert_allclose(frames, raw, atol=1e-3)  # dB-like units up to ~300: float32 rounding of numpy
    win = read_f32(tmp_path / "win.f32").reshape(fc.n_mfcc, fc.n_frames)
    np.testing.assert_allclose(win, normalize(raw[None, :, 10: 10 + fc.n_frames], fc)[0], atol=1e-4)


@needs_node
@pytest.mark.parametrize("rate", [48000, 44100, 22050])
def test_js_resampler_matches_soxr_in_band_keeps_time_and_ignores_block_sizes(tmp_path, rate):
    import soxr

    y16 = _speechy(1.5, seed=1)
    y16[12000] += 0.8  # a click: must come out at the same time
    up = soxr.resample(y16, 16000, rate, quality="VHQ").astype(np.float32)
    write_f32(tmp_path / "up.f32", up)
    out = run_node(f"""
import {{ Resampler }} from "{web_module('resample.js')}";
import {{ readFileSync, writeFileSync }} from "node:fs";
const b = readFileSync("{tmp_path / 'up.f32'}");
const y = new Float32Array(b.buffer, b.byteOffset, b.length / 4);
const whole = new Resampler({rate}, 16000).push(y);
const r = new Resampler({rate}, 16000);
const parts = []; let pos = 0, k = 1;
while (pos < y.length) {{ const n = 1 + (k * 7919) % 2999; parts.push(r.push(y.subarray(pos, pos + n))); pos += n; k++; }}
const tot = parts.reduce((a, p) => a + p.length, 0);
const joined = new Float32Array(tot); let o = 0; for (const p of parts) {{ joined.set(p, o); o += p.length; }}
const same = joined.length === whole.length && joined.every((v, i) => v === whole[i]);
writeFileSync("{tmp_path / 'down.f32'}", Buffer.from(whole.buffer));
console.log(JSON.stringify({{ same }}));
""")
    assert json.loads(out)["same"]
    down = read_f32(tmp_path / "down.f32")
    ref = soxr.resample(up, rate, 16000, quality="VHQ")
    assert abs(len(down) - len(ref)) < 40  # the resampler holds back its kernel's half-width until more input
    n = min(len(down), len(y16))
    assert int(np.argmax(np.abs(down[11000:13000]))) + 11000 == 12000
    err = np.fft.rfft(down[:n] - y16[:n])
    sig = np.fft.rfft(y16[:n])
    f = np.fft.rfftfreq(n, 1 / 16000)
    band = f < 6000
    assert 10 * np.log10(np.sum(np.abs(err[band]) ** 2) / np.sum(np.abs(sig[band]) ** 2)) < -60


class _ScriptedFrontEnd:
    """A front end whose stream returns scripted windows and levels (to run runtime.Detector on given inputs)."""

    def __init__(self, steps, hop, window_frames, level_ms):
        self.steps, self.hop_level_frames, self.window_level_frames = steps, hop, window_frames
        self.level_frame_ms, self.window_seconds = level_ms, 1.0

    def stream(self):
        from edgekws.device.frontend import Window

        fe = self

        class S:
            levels: list = []
            i = 0

            def push(self, block):
                step = fe.steps[self.i]
                self.i += 1
                self.levels = step["levels"]
                return [Window(x=np.asarray(w["logits"], np.float32)[None], start=w["start"], end=w["end"],
                               level_count=w["level_count"]) for w in step["windows"]]

        return S()


@needs_node
@pytest.mark.parametrize("temperature,gate_db", [(0.5, 10.0), (0.04, 0.0), (1.0, 6.0)])
def test_js_detector_rule_decides_exactly_like_the_device_runtime(temperature, gate_db):
    from edgekws.device.runtime import Detector, DetectorConfig

    rng = np.random.default_rng(int(temperature * 100) + int(gate_db))
    classes = ["_nothing_", "yes", "no", "stop"]
    steps, t, level = [], 0.0, -60.0
    for _ in range(400):
        levels = []
        for _ in range(int(rng.integers(0, 9))):
            level = float(np.clip(level + rng.normal(0, 4) + (15 if rng.random() < 0.05 else 0), -90, 0))
            levels.append(level)
        windows = []
        for j in sorted(rng.integers(0, len(levels) + 1, size=int(rng.integers(0, 3)))):
            t += 0.1
            z = rng.normal(0, 1, len(classes))
            if rng.random() < 0.3:
                z[int(rng.integers(0, len(classes)))] += rng.uniform(1, 6)
            windows.append({"logits": z.astype(np.float32).tolist(), "start": t - 1.0, "end": round(t, 3),
                            "level_count": int(j)})
        steps.append({"levels": levels, "windows": windows})
    # a first window must see a full window of levels, as a real front end guarantees
    steps.insert(0, {"levels": [-70.0] * 48, "windows": []})
    cfg = DetectorConfig(threshold=0.5, thresholds={"stop": 0.7}, gate_db=gate_db, smooth=4, refractory_s=0.5)

    class Model:
        def __init__(self):
            self.classes = tuple(classes)
            self.temperature = temperature

        def logits(self, x):
            return x

    fe = _ScriptedFrontEnd(steps, hop=5, window_frames=48, level_ms=20.0)
    det = Detector(Model(), FeatureConfig(), cfg, frontend=fe)
    py = []
    for _ in steps:
        for u in det.feed(np.zeros(1, np.float32)):
            py.append({"probs": u.probs.tolist(), "level": u.level_db,
                       "det": None if u.detection is None else [u.detection.keyword, u.detection.time]})
    out = run_node(f"""
import {{ DetectorRule }} from "{web_module('detector.js')}";
const steps = {json.dumps(steps)};
const cfg = {json.dumps({"threshold": 0.5, "thresholds": {"stop": 0.7}, "gate_db": gate_db, "smooth": 4,
                         "refractory_s": 0.5, "floor_s": 5.0})};
const rule = new DetectorRule({{ classes: {json.dumps(classes)}, config: cfg, temperature: {temperature},
  windowLevelFrames: 48, hopLevelFrames: 5, levelFrameMs: 20 }});
const out = [];
for (const s of steps) {{
  let used = 0;
  for (const w of s.windows) {{
    for (const l of s.levels.slice(used, w.level_count)) rule.addLevel(l);
    used = Math.max(used, w.level_count);
    const u = rule.decide(w.logits, w.start, w.end);
    out.push({{ probs: Array.from(u.probs), level: u.levelDb, det: u.detection ? [u.detection.keyword, u.detection.time] : null }});
  }}
  for (const l of s.levels.slice(used)) rule.addLevel(l);
}}
console.log(JSON.stringify(out));
""")
    js = json.loads(out)
    assert len(js) == len(py) > 300
    assert sum(u["det"] is not None for u in py) >= 5  # the script exercises firing, re-arming and the gate
    for a, b in zip(js, py):
        assert np.array_equal(np.float32(a["probs"]), np.float32(b["probs"])), (a, b)
        assert a["level"] == pytest.approx(b["level"], abs=1e-9)
        assert a["det"] == b["det"], (a, b)


def _signed_bundle(tmp_path):
    """A tiny signed bundle (real ONNX graphs, no torch) and its public key."""
    from ship_support import tiny_bundle

    from edgekws.bundle import generate_keypair

    priv, pub = generate_keypair(tmp_path / "keys")
    return tiny_bundle(tmp_path / "b", priv), pub


@needs_node
def test_js_bundle_checks_signature_files_and_ids(tmp_path):
    from edgekws.bundle import generate_keypair
    from edgekws.server.webdemo import _key_entries

    b, pub = _signed_bundle(tmp_path)
    _, other = generate_keypair(tmp_path / "other")
    raw = (b / "manifest.json").read_bytes()
    import hashlib

    bid = hashlib.sha256(raw).hexdigest()[:16]
    edited = raw.replace(b'"yes"', b'"yez"')
    assert edited != raw
    flipped = bytearray((b / "model.onnx").read_bytes())
    flipped[len(flipped) // 2] ^= 1
    cases = {
        "good": (raw, "model.onnx", bytes((b / "model.onnx").read_bytes()), _key_entries([pub]), bid),
        "edited": (edited, None, None, _key_entries([pub]), bid),
        "other_key": (raw, None, None, _key_entries([other]), bid),
        "flipped": (raw, "model.onnx", bytes(flipped), _key_entries([pub]), bid),
        "unlisted": (raw, "extra.onnx", b"x", _key_entries([pub]), bid),
        "embedded": (raw, None, None, [], bid),
        "wrong_id": (raw, None, None, _key_entries([pub]), "0" * 16),
    }
    (tmp_path / "sig").write_bytes((b / "manifest.sig").read_bytes())
    for name, (m, fname, fbytes, keys, i) in cases.items():
        (tmp_path / f"{name}.json").write_bytes(m)
        if fbytes is not None:
            (tmp_path / f"{name}.file").write_bytes(fbytes)
    script = f"""
import {{ verifyManifest, verifyFile }} from "{web_module('verify.js')}";
import {{ readFileSync, existsSync }} from "node:fs";
const cases = {json.dumps({k: {"file": v[1], "keys": v[3], "id": v[4]} for k, v in cases.items()})};
const sig = new Uint8Array(readFileSync("{tmp_path / 'sig'}"));
const NO_ED25519 = process.argv.includes("--no-ed25519") || globalThis.NO_ED25519;
if (NO_ED25519) {{
  const orig = crypto.subtle.importKey.bind(crypto.subtle);
  crypto.subtle.importKey = (f, k, alg, ...rest) => alg && alg.name === "Ed25519" ? Promise.reject(new Error("no")) : orig(f, k, alg, ...rest);
}}
const out = {{}};
for (const [name, c] of Object.entries(cases)) {{
  try {{
    const m = new Uint8Array(readFileSync(`{tmp_path}/${{name}}.json`));
    const v = await verifyManifest(m, sig, {{ keys: c.keys, bundleId: c.id, target: "rpi" }});
    if (c.file) await verifyFile(v.manifest, c.file, new Uint8Array(readFileSync(`{tmp_path}/${{name}}.file`)));
    out[name] = "ok " + v.signature.status;
  }} catch (e) {{ out[name] = e.name + ": " + e.message; }}
}}
console.log(JSON.stringify(out));
"""
    res = json.loads(run_node(script))
    assert res["good"] == "ok verified" and res["embedded"] == "ok embedded-key"
    assert res["edited"].startswith("BundleRefused: manifest signature does not verify")
    assert res["other_key"].startswith("BundleRefused: manifest signature does not verify")
    assert res["flipped"].startswith("BundleRefused: model.onnx differs from the signed manifest")
    assert res["unlisted"] == "BundleRefused: extra.onnx is not listed in the manifest"
    assert res["wrong_id"].startswith("BundleRefused: manifest.json is not bundle 0000000000000000")
    # a browser without Ed25519 in WebCrypto: integrity only, and an edited manifest is still caught by its id
    res = json.loads(run_node("globalThis.NO_ED25519 = true;\n" + script))
    assert res["good"] == "ok integrity-only" and res["embedded"] == "ok integrity-only"
    assert res["edited"].startswith("BundleRefused: manifest.json is not bundle")
    assert res["flipped"].startswith("BundleRefused: model.onnx differs")


# The waveform-in MFCC graph ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    FeatureConfig(normalization="utterance"),
    FeatureConfig(n_mfcc=10, n_mels=40, normalization="none"),
    FeatureConfig(window_ms=30, hop_ms=10, n_fft=512, n_mels=32, n_mfcc=13, fmax=8000, normalization="utterance"),
], ids=["default-utterance", "mcu-none", "short-window"])
def test_mfcc_graph_reproduces_numpy_on_clips_and_streams(tmp_path, cfg):
    import onnxruntime as ort

    from edgekws.export.mfcc_graph import mfcc_graph_parity, parity_signals, write_mfcc_graph

    path = write_mfcc_graph(cfg, tmp_path / "f.onnx")
    p = mfcc_graph_parity(path, cfg)
    assert p["ok"] and p["max_abs_diff_raw"] < 0.05 and p["shape"][1:] == [1, cfg.n_mfcc, cfg.n_frames]
    assert p["max_abs_diff"] < (1e-2 if cfg.normalization != "none" else 0.05)
    y = np.stack([_speechy(1.7, s) for s in range(2)])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, raw = sess.run(["mfcc", "mfcc_raw"], {"audio": y})
    np.testing.assert_allclose(got[:, 0], mfcc(y, cfg), atol=1e-3)
    # a stream: any span of whole frames gives those frames (what an app feeding audio hop by hop relies on)
    whole = mfcc(y[0], cfg, normalize_output=False)
    a = 7 * cfg.hop_length
    span = sess.run(["mfcc_raw"], {"audio": y[:1, a: a + 4 * cfg.hop_length + cfg.win_length]})[0][0, 0]
    np.testing.assert_allclose(span, whole[:, 7:12], atol=1e-2)
    assert parity_signals(cfg).shape[0] == 6


def test_global_normalisation_graph_and_a_phone_bundle_carry_it(tmp_path, monkeypatch):
    """`export_bundle` for phone ships frontend_mfcc.onnx (signed, listed under mfcc_graph); graph -> classifier
    gives the logits of numpy MFCC -> classifier."""
    import torch

    from edgekws.bundle import generate_keypair, load_bundle
    from edgekws.export import export_bundle, run_onnx
    from edgekws.features import fit_normalization
    from edgekws.models import create_model
    from edgekws.server.train import save_checkpoint

    fc = FeatureConfig(n_mfcc=10, clip_seconds=0.5)
    y = np.stack([_speechy(1.5, s)[7000:15000] for s in range(6)])
    fc = fit_normalization(mfcc(y, fc, normalize_output=False), fc)
    torch.manual_seed(0)
    model = create_model("dscnn", 3, fc.shape, seed=0, channels=8, n_blocks=1).eval()
    save_checkpoint(tmp_path / "model.pt", model, fc, ["a", "b", "c"], {})
    priv, pub = generate_keypair(tmp_path / "keys")
    monkeypatch.setattr("edgekws.export.pipeline.tflite_unavailable_reason", lambda: "not installed here")
    res = export_bundle(tmp_path / "model.pt", "phone", tmp_path / "bundle", private_key=priv, tar=False)
    b = load_bundle(res.bundle, pub)
    entry = b.manifest["mfcc_graph"]
    assert entry["file"] == "frontend_mfcc.onnx" and entry["file"] in b.manifest["files"]
    assert entry["parity"]["ok"] and entry["parity"]["max_abs_diff"] < 1e-2 and any("frontend_mfcc.onnx" in n for n in res.notes)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.bundle / entry["file"]), providers=["CPUExecutionProvider"])
    x = sess.run(["mfcc"], {"audio": y})[0]
    np.testing.assert_allclose(run_onnx(b.graph_path("classifier", "onnx", "fp32"), x),
                               run_onnx(b.graph_path("classifier", "onnx", "fp32"), mfcc(y, fc)[:, None]), atol=1e-3)
    # other targets do not carry it
    res = export_bundle(tmp_path / "model.pt", "rpi", tmp_path / "rpi", private_key=priv, tar=False)
    assert "mfcc_graph" not in res.manifest.data and "frontend_mfcc.onnx" not in res.manifest.files


# The server side ------------------------------------------------------------------------------------------------


def _get(url: str, headers: dict | None = None, context=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@needs_runtime
def test_demo_routes_plan_files_assets_and_headers(tmp_path):
    from edgekws.device.model import DeviceModel, open_bundle
    from edgekws.server.webdemo import DemoConfig, DemoServer, LocalBundleSource, create_demo_app

    bundle = keyword_bundle()
    pub = bundle_public_key(bundle)
    src = LocalBundleSource(bundle, pub)
    with DemoServer(create_demo_app(src, DemoConfig())) as srv:
        st, h, body = _get(f"{srv.url}/demo/rpi/config.json")
        assert st == 200
        cfg = json.loads(body)
        want = DeviceModel(open_bundle(bundle, pub), fmt="onnx", precision="fp32", calibrate=True).temperature
        assert cfg["plan"]["temperature"] == pytest.approx(want) and cfg["plan"]["classifier"] == "model.onnx"
        assert cfg["plan"]["detector"]["threshold"] == 0.6 and cfg["plan"]["detector"]["smooth"] == 5
        assert cfg["bundle"]["id"] == src.id and cfg["keys"][0]["key_id"] == src.keys[0]["key_id"]
        st, h, body = _get(f"{srv.url}{cfg['bundle']['url']}model.onnx")
        assert st == 200 and body == (bundle / "model.onnx").read_bytes() and "immutable" in h["Cache-Control"]
        for bad in ("keys", "..%2Fmanifest.json", "model.onnx.bak"):
            assert _get(f"{srv.url}{cfg['bundle']['url']}{bad}")[0] == 404
        st, h, page = _get(f"{srv.url}/demo/rpi")
        assert st == 200 and b'"target": "rpi"' in page and "wasm-unsafe-eval" in h["Content-Security-Policy"]
        assert h["Cross-Origin-Opener-Policy"] == "same-origin" and h["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert _get(f"{srv.url}/demo/mcu")[0] == 200 and _get(f"{srv.url}/demo/mcu/config.json")[0] == 404
        boot = json.loads(page.split(b'id="boot" type="application/json">')[1].split(b"</script>")[0])
        wasm = next(u for u in boot["precache"] if u.endswith(".wasm"))
        st, h, br = _get(f"{srv.url}{wasm}", {"Accept-Encoding": "gzip, br"})
        assert st == 200 and h["Content-Encoding"] == "br" and h["Content-Type"] == "application/wasm"
        st, h, raw = _get(f"{srv.url}{wasm}")
        assert "Content-Encoding" not in h and len(raw) > 4 * len(br)
        st, h, js = _get(f"{srv.url}/demo/assets/detector.js", {"Accept-Encoding": "gzip"})
        assert st == 200 and h["Content-Encoding"] == "gzip"
        assert _get(f"{srv.url}/demo/assets/build.mjs")[0] == 404 and _get(f"{srv.url}/demo/sw.js")[0] == 200
        assert _get(f"{srv.url}/demo/ca.crt")[0] == 404  # plain HTTP on loopback: no certificate of ours
        st, h, _ = _get(f"{srv.url}/demo/assets/detector.js", {"If-None-Match": h["ETag"], "Accept-Encoding": "gzip"})
        assert st == 304


def test_demo_refuses_a_bundle_that_does_not_verify_and_says_how_to_install_the_runtime(tmp_path, monkeypatch):
    from edgekws.server.webdemo import DemoError, LocalBundleSource, find_web_dir, runtime_assets

    b, pub = _signed_bundle(tmp_path)
    (b / "model.onnx").write_bytes(b"changed")
    with pytest.raises(DemoError, match="bundle refused: .*model.onnx is 7 bytes"):
        LocalBundleSource(b, pub)
    web = tmp_path / "web"
    web.mkdir()
    shutil.copy(find_web_dir() / "index.html", web / "index.html")
    with pytest.raises(DemoError, match="npm ci --prefix"):
        runtime_assets(find_web_dir(web))


@needs_runtime
def test_registry_serves_the_demo_of_a_channel_and_refuses_a_damaged_blob(tmp_path):
    from ship_support import tiny_bundle

    from edgekws.bundle import generate_keypair, pack_bundle
    from edgekws.server.registry import RegistryConfig, RegistryServer, publish

    priv, pub = generate_keypair(tmp_path / "keys")
    b = tiny_bundle(tmp_path / "b", priv)
    token = "t" * 32
    cfg = RegistryConfig(root=tmp_path / "reg", tokens=(token,), trusted_keys=(pub,))
    with RegistryServer(cfg) as srv:
        info = publish(pack_bundle(b), srv.url, "beta", token)
        st, _, body = _get(f"{srv.url}/demo/rpi/config.json?channel=beta")
        assert st == 200, body
        c = json.loads(body)
        assert c["bundle"]["id"] == info["id"] and c["bundle"]["channel"] == "beta"
        assert c["plan"]["temperature"] == 1.0  # no coreset: nothing to fit, as on the device
        st, _, body = _get(f"{srv.url}/demo/rpi/config.json?channel=stable")
        assert st == 404 and b"nothing is released" in body
        st, _, man = _get(f"{srv.url}/demo/b/{info['id']}/manifest.json")
        assert man == (b / "manifest.json").read_bytes()
        st, _, idx = _get(f"{srv.url}/demo")
        assert st == 200 and b"rpi / beta" in idx
        # a bundle damaged in storage after its upload: the server will not plan it
        info2 = publish(pack_bundle(tiny_bundle(tmp_path / "b2", priv, head_seed=1)), srv.url, "stable", token)
        blob2 = cfg.root / "blobs" / f"{info2['id']}.tar"
        d2 = bytearray(blob2.read_bytes())
        d2[len(d2) // 2] ^= 0xFF
        blob2.write_bytes(bytes(d2))
        st, _, body = _get(f"{srv.url}/demo/rpi/config.json?channel=stable")
        assert st == 409 and b"no longer verifies" in body


def test_self_signed_tls_covers_the_hosts_renews_for_new_ones_and_serves_https(tmp_path):
    import os

    from cryptography import x509

    from edgekws.server.tls import ensure_local_tls
    from edgekws.server.webdemo import DemoServer

    t = ensure_local_tls(["192.168.7.9", "kws.local"], tmp_path / "tls")
    assert t.created and oct(os.stat(t.key).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "tls" / "ca.key").st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(t.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kws.local" in san.get_values_for_type(x509.DNSName)
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "192.168.7.9"}
    assert not ensure_local_tls(["192.168.7.9"], tmp_path / "tls").created  # covered: reused
    again = ensure_local_tls(["10.1.2.3"], tmp_path / "tls")
    assert again.created and again.ca_sha256 == t.ca_sha256  # a new certificate, the same CA

    from edgekws.server.webdemo import DemoConfig, LocalBundleSource, create_demo_app

    b, pub = _signed_bundle(tmp_path)
    app = create_demo_app(LocalBundleSource(b, pub), DemoConfig(ca_cert=again.ca))
    with DemoServer(app, tls=(str(again.cert), str(again.key))) as srv:
        assert srv.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(again.ca))
        st, h, body = _get(srv.url.replace("127.0.0.1", "localhost") + "/demo/ca.crt", context=ctx)
        assert st == 200 and body == again.ca.read_bytes() and h["Content-Type"] == "application/x-x509-ca-cert"
        with pytest.raises(urllib.error.URLError):  # a client that does not trust the CA refuses the server
            urllib.request.urlopen(srv.url + "/demo/ca.crt", timeout=10, context=ssl.create_default_context())


@needs_runtime
def test_cli_demo_serves_the_page_for_a_bundle(tmp_path):
    bundle = keyword_bundle()
    proc = subprocess.Popen([sys.executable, "-m", "edgekws.cli", "demo", "--bundle", str(bundle), "--port", "0",
                             "--public-key", str(bundle_public_key(bundle))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/demo/rpi"), proc.stderr.read()
        st, _, page = _get(url)
        assert st == 200 and b"edgekws" in page
        st, _, body = _get(url + "/config.json")
        assert json.loads(body)["plan"]["classifier"] == "model.onnx"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    res = subprocess.run([sys.executable, "-m", "edgekws.cli", "demo", "--bundle", str(bundle), "--features", "graph",
                          "--public-key", str(bundle_public_key(bundle))], capture_output=True, text=True)
    assert res.returncode == 2 and "no waveform-in MFCC graph" in res.stderr


# The page in headless Chromium ------------------------------------------------------------------------------------


def _words_wav(tmp_path: Path) -> tuple[Path, float]:
    y, _ = sentence(["yes", "no", "stop", "yes", "stop", "no"], gap_s=1.2)
    y = np.concatenate([y, np.zeros(24000, np.float32)])
    return write_wav(tmp_path / "words.wav", y), len(y) / 16000


def _page_run_on_microphone(bundle: Path, wav: Path, seconds: float) -> dict:
    from playwright.sync_api import sync_playwright

    from edgekws.server.webdemo import DemoConfig, DemoServer, LocalBundleSource, create_demo_app

    src = LocalBundleSource(bundle, bundle_public_key(bundle))
    with DemoServer(create_demo_app(src, DemoConfig())) as srv, sync_playwright() as p:
        b = browser(p, wav)
        page = b.new_page()
        page.goto(f"{srv.url}/demo/{src.ref.target}?autostart=1&threads=1")
        st = wait_for(page, lambda s: s["phase"] in ("listening", "refused", "error"), 90, "the microphone")
        assert st["phase"] == "listening", st
        st = wait_for(page, lambda s: s["processedSeconds"] >= seconds - 0.5, seconds + 90, "the whole file")
        time.sleep(0.5)
        st = state(page)
        b.close()
    return st


@needs_chromium
@needs_runtime
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mfcc", "speech-embedding"])
def test_page_on_a_fake_microphone_detects_what_listen_detects(tmp_path, kind):
    pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
    bundle = keyword_bundle() if kind == "mfcc" else se_keyword_bundle()
    wav, seconds = _words_wav(tmp_path)
    m = json.loads((bundle / "manifest.json").read_text())
    precision = (m.get("recommended") or {}).get("precision", "fp32")
    ref = listen_json(bundle, wav, bundle_public_key(bundle), precision)
    assert len(ref) >= 4, ref  # the fixture bundle hears most of the six words
    st = _page_run_on_microphone(bundle, wav, seconds)
    assert st["signature"]["status"] == "verified" and st["source"]["kind"] == "microphone"
    assert st["features"] == ("js" if kind == "mfcc" else "speech-embedding")
    page_dets = [d for d in st["detections"] if d["time"] <= seconds]
    match_detections(page_dets, ref, tolerance=0.3)
    assert len(st["hopMs"]) > 50


@needs_chromium
@needs_runtime
@pytest.mark.slow
def test_page_runs_a_wav_file_with_the_waveform_graph_exactly_like_listen(tmp_path):
    """A 16 kHz WAV reaches the page sample for sample: the waveform-in graph front end gives listen's
    detections at the same times with the same scores."""
    pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
    from playwright.sync_api import sync_playwright

    from edgekws.bundle import load_private_key, write_bundle
    from edgekws.export.mfcc_graph import MFCC_GRAPH_FILE, mfcc_graph_entry, mfcc_graph_parity, write_mfcc_graph
    from edgekws.server.webdemo import DemoConfig, DemoServer, LocalBundleSource, create_demo_app

    src_b = keyword_bundle()
    m = json.loads((src_b / "manifest.json").read_text())
    fc = FeatureConfig.from_dict(m["feature_config"])
    g = write_mfcc_graph(fc, tmp_path / MFCC_GRAPH_FILE)
    files = {k: src_b / k for k in m["files"]} | {MFCC_GRAPH_FILE: g}
    key = src_b.parent / "keys" / "signing.key"
    bundle = write_bundle(tmp_path / "phone", files, target="phone", classes=m["classes"], feature_config=fc,
                          model=m["model"], graphs=m["graphs"], private_key=load_private_key(key),
                          extra={"mfcc_graph": mfcc_graph_entry(mfcc_graph_parity(g, fc))})
    wav, seconds = _words_wav(tmp_path)
    ref = listen_json(bundle, wav, bundle_public_key(src_b), "fp32")
    src = LocalBundleSource(bundle, bundle_public_key(src_b))
    with DemoServer(create_demo_app(src, DemoConfig(features="graph"))) as srv, sync_playwright() as p:
        b = browser(p)
        page = b.new_page()
        page.goto(f"{srv.url}/demo/phone?threads=1")
        st = wait_for(page, settled, 90, "the page")
        assert st["phase"] == "ready" and st["features"] == "graph", st
        assert [f["name"] for f in st["files"]] == ["model.onnx", MFCC_GRAPH_FILE]
        page.set_input_files("#wav", str(wav))
        st = wait_for(page, lambda s: s.get("fileDone"), 120, "the file")
        b.close()
    assert len(ref) >= 4
    assert [d["keyword"] for d in st["detections"]] == [d["keyword"] for d in ref]
    for a, r in zip(st["detections"], ref):
        assert a["time"] == pytest.approx(r["time"], abs=1e-3) and a["score"] == pytest.approx(r["score"], abs=1e-3)


@needs_chromium
@needs_runtime
def test_page_refuses_a_tampered_graph_or_manifest_and_runs_nothing(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
    from playwright.sync_api import sync_playwright

    from edgekws.server.webdemo import DemoConfig, DemoServer, LocalBundleSource, create_demo_app

    bundle = shutil.copytree(keyword_bundle(), tmp_path / "bundle")
    pub = bundle_public_key(keyword_bundle())
    src = LocalBundleSource(bundle, pub)
    good_graph, good_manifest = (bundle / "model.onnx").read_bytes(), (bundle / "manifest.json").read_bytes()
    with DemoServer(create_demo_app(src, DemoConfig())) as srv, sync_playwright() as p:
        b = browser(p)

        def visit():
            ctx = b.new_context()  # no cache from an earlier visit
            page = ctx.new_page()
            page.goto(f"{srv.url}/demo/rpi?autostart=1")
            st = wait_for(page, settled, 60, "the page")
            text = page.inner_text("#refused")
            started = page.is_enabled("#start")
            ctx.close()
            return st, text, started

        st, text, started = visit()
        assert st["phase"] in ("ready", "listening") and st["sessions"] == 1 and text == ""
        flipped = bytearray(good_graph)
        flipped[len(flipped) // 2] ^= 1
        (bundle / "model.onnx").write_bytes(bytes(flipped))
        st, text, started = visit()
        assert st["phase"] == "refused" and st["sessions"] == 0 and not started
        assert "Refused: model.onnx differs from the signed manifest" in text
        (bundle / "model.onnx").write_bytes(good_graph)
        (bundle / "manifest.json").write_bytes(good_manifest.replace(b'"stop"', b'"stoq"'))
        st, text, started = visit()
        assert st["phase"] == "refused" and st["sessions"] == 0 and not started and st["updates"] == 0
        assert "Refused: manifest signature does not verify against the pinned key" in text
        b.close()


@needs_chromium
@needs_runtime
def test_page_works_offline_after_the_first_visit(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[dev]')")
    from playwright.sync_api import sync_playwright

    from edgekws.server.webdemo import DemoConfig, DemoServer, LocalBundleSource, create_demo_app

    bundle = se_keyword_bundle()
    src = LocalBundleSource(bundle, bundle_public_key(bundle))
    wav, _ = _words_wav(tmp_path)
    srv = DemoServer(create_demo_app(src, DemoConfig())).start()
    with sync_playwright() as p:
        b = browser(p)
        ctx = b.new_context()
        page = ctx.new_page()
        url = f"{srv.url}/demo/rpi?threads=1"
        page.goto(url)
        wait_for(page, lambda s: s["phase"] == "ready" and s.get("cached"), 90, "the first visit")
        wait_for(page, lambda s: page.evaluate("() => !!navigator.serviceWorker.controller"), 30, "the service worker")
        srv.stop()  # the server is gone
        with pytest.raises(Exception):  # noqa: B017 - any network error
            urllib.request.urlopen(url, timeout=5)
        page.reload()
        st = wait_for(page, settled, 90, "the offline visit")
        assert st["phase"] == "ready" and st["signature"]["status"] == "verified", st
        page.set_input_files("#wav", str(wav))
        st = wait_for(page, lambda s: s.get("fileDone"), 120, "the file")
        assert [d["keyword"] for d in st["detections"]][:3] == ["yes", "no", "stop"]
        b.close()
