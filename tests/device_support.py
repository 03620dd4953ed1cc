"""Fixture bundles for the device tests and benchmarks (uses torch; the device code under test does not).

``build_bundle`` writes a directory following the bundle contract (manifest.json, model.onnx, embedding.onnx,
head.npz, optional coreset.npz) from a trained :class:`edgekws.models.KWSModel`. ``keyword_bundle`` trains a small
CNN-4 on synthetic spoken keywords plus a ``_silence_`` class and caches the bundle on disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgekws.features import FeatureConfig, fit_normalization, mfcc, normalize

FIXTURE_VERSION = 5
KEYWORDS = ("yes", "no", "stop")


def export_onnx(module, example, path: Path) -> None:
    import torch

    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but quick for a fixture
        torch.onnx.export(module, (example,), str(path), input_names=["mfcc"], output_names=["out"],
                          dynamic_axes={"mfcc": {0: "batch"}, "out": {0: "batch"}}, dynamo=False)


def fixture_key(root: Path):
    """``(private_key_path, public_key_path)`` of a signing key kept in ``root/keys`` (created once)."""
    from edgekws.bundle import generate_keypair

    d = Path(root) / "keys"
    if not (d / "signing.key").is_file():
        try:
            generate_keypair(d)
        except FileExistsError:  # made by a parallel worker
            pass
    return d / "signing.key", d / "signing.pub"


def build_bundle(model, fc: FeatureConfig, classes, out: Path, *, coreset: Path | None = None,
                 static_batch: bool = False, int8: bool = False, key_root: Path | None = None) -> Path:
    """Export ``model`` (a KWSModel) into a signed bundle directory ``out``; key in ``key_root/keys``."""
    import torch

    from edgekws.bundle import write_bundle

    out = Path(out)
    model = model.eval()
    stage = Path(tempfile.mkdtemp(prefix="bundle-src-"))

    class Embed(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.embed(x)

    ex = torch.zeros((1, 1, *fc.shape))
    try:
        if static_batch:
            for mod, name in ((model, "model.onnx"), (Embed(model).eval(), "embedding.onnx")):
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(mod, (ex,), str(stage / name), input_names=["mfcc"], output_names=["out"],
                                      dynamo=False)
        else:
            export_onnx(model, ex, stage / "model.onnx")
            export_onnx(Embed(model).eval(), ex, stage / "embedding.onnx")
        model.eval()
        graphs = {"classifier": {"onnx_fp32": "model.onnx"}, "embedding": {"onnx_fp32": "embedding.onnx"}}
        files = {"model.onnx": stage / "model.onnx", "embedding.onnx": stage / "embedding.onnx",
                 "head.npz": stage / "head.npz"}
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(stage / "model.onnx"), str(stage / "model.int8.onnx"), weight_type=QuantType.QInt8)
            graphs["classifier"]["onnx_int8"] = "model.int8.onnx"
            files["model.int8.onnx"] = stage / "model.int8.onnx"
        W = model.classifier.weight.detach().numpy().astype(np.float32)
        b = model.classifier.bias.detach().numpy().astype(np.float32)
        np.savez(stage / "head.npz", W=W, b=b)
        if coreset is not None:
            files["coreset.npz"] = Path(coreset)
        priv, _ = fixture_key(key_root if key_root is not None else out.parent)
        return write_bundle(out, files, target="rpi", classes=list(classes), feature_config=fc,
                            model={"name": model.config["name"], "config": model.config}, graphs=graphs,
                            private_key=priv)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _silence(rng: np.random.Generator, n: int) -> np.ndarray:
    level = 10 ** (rng.uniform(-80, -45) / 20)
    y = rng.standard_normal(n) * level
    if rng.random() < 0.5:  # brown-ish noise
        y = np.cumsum(y) * 0.05
        y -= y.mean()
    return y.astype(np.float32)


def keyword_data(per_class: int = 60, seed: int = 0, keywords=KEYWORDS):
    """Waveforms ``(N, 16000)`` and labels for ``_silence_`` + ``keywords`` (synthetic speech)."""
    from edgekws.datasets.synthetic import render_clip

    rng = np.random.default_rng(seed)
    classes = ("_silence_",) + tuple(keywords)
    xs, ys = [], []
    for i in range(per_class):
        xs.append(_silence(rng, 16000))
        ys.append(0)
        for k, kw in enumerate(keywords, start=1):
            y, _ = render_clip(kw, i, seed=seed, vocabulary=keywords)
            xs.append(y)
            ys.append(k)
    return np.stack(xs), np.array(ys), classes


def train_keyword_model(per_class: int = 60, epochs: int = 25, seed: int = 0):
    import torch
    from edgekws.models import create_model

    torch.manual_seed(seed)
    wav, y, classes = keyword_data(per_class, seed)
    fc = FeatureConfig()
    raw = mfcc(wav, fc, normalize_output=False)
    fc = fit_normalization(raw, fc)
    x = torch.from_numpy(normalize(raw, fc))[:, None]
    t = torch.from_numpy(y)
    model = create_model("cnn4", n_classes=len(classes), input_shape=fc.shape, widths=(16, 16, 24, 32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            xb = x[idx]
            shift = int(torch.randint(-6, 7, (1,), generator=g))
            xb = torch.roll(xb, shift, dims=-1)
            loss = torch.nn.functional.cross_entropy(model(xb), t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, fc, classes, (x.numpy()[:, 0], y)


def write_coreset(x: np.ndarray, y: np.ndarray, classes, fc: FeatureConfig, path: Path, per_class: int = 15,
                  seed: int = 0) -> Path:
    """A small coreset artefact of real samples with one-hot labels (the format server/rfad.py writes)."""
    from edgekws.server.rfad import Coreset, RFADConfig

    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == k), per_class, replace=False) for k in range(len(classes))])
    onehot = np.eye(len(classes), dtype=np.float32)[y[idx]]
    Coreset(x=x[idx], y=onehot, class_names=tuple(classes), feature_config=fc, config=RFADConfig()).save(path)
    return path


def keyword_bundle(root: Path | None = None) -> Path:
    """A cached signed bundle of the small keyword model (trained once per cache directory).

    Its public key is ``bundle_public_key(bundle)``."""
    root = Path(root or os.environ.get("EDGEKWS_CACHE", Path.home() / ".cache" / "edgekws")) / "test-bundles"
    final = root / f"keywords-v{FIXTURE_VERSION}"
    if (final / "manifest.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one trainer at a time; the others wait and reuse its bundle
        if (final / "manifest.json").is_file():
            return final
        return _build_keyword_bundle(root, final)


def _build_keyword_bundle(root: Path, final: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        model, fc, classes, (x, y) = train_keyword_model()
        core = write_coreset(x, y, classes, fc, tmp / "coreset.npz")
        build_bundle(model, fc, classes, tmp / "bundle", key_root=root, coreset=core)
        try:
            os.rename(tmp / "bundle", final)
        except OSError:  # another worker won the race
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def speak(word: str, voice: str = "en-us", rate: int = 150) -> np.ndarray:
    """Clean espeak-ng speech of ``word`` at 16 kHz, trimmed, peak -6 dBFS."""
    from edgekws.audio import resample
    from edgekws.tts import Speaker

    y, sr = Speaker().synth(word, voice=voice, rate=rate)
    y = resample(np.asarray(y, np.float32), sr, 16000)
    a = np.abs(y)
    on = np.flatnonzero(a > a.max() * 0.02)
    y = y[on[0] : on[-1] + 1]
    return (0.5 * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


def sentence(words, gap_s: float = 1.2, lead_s: float = 1.0, seed: int = 0, noise_db: float = -60.0):
    """Keywords separated by silence: waveform and the onset/offset (seconds) of each word."""
    rng = np.random.default_rng(seed)
    parts = [np.zeros(int(lead_s * 16000), np.float32)]
    spans = []
    t = lead_s
    for w in words:
        y = speak(w)
        spans.append((w, t, t + len(y) / 16000))
        parts += [y, np.zeros(int(gap_s * 16000), np.float32)]
        t += len(y) / 16000 + gap_s
    out = np.concatenate(parts)
    out += (rng.standard_normal(out.size) * 10 ** (noise_db / 20)).astype(np.float32)
    return out, spans


def bundle_public_key(bundle: Path) -> Path:
    """The public key that signed a fixture bundle (kept beside it)."""
    return Path(bundle).parent / "keys" / "signing.pub"
