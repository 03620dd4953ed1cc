"""Export (edgekws.export): ONNX / TFLite graphs, int8 quantization, parity with torch, bundles for targets, CLI."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekws.bundle import load_bundle, verify_bundle
from edgekws.cli import app
from edgekws.export import (
    compare,
    export_bundle,
    export_onnx,
    graph_outputs,
    onnx_session,
    quantize_onnx,
    run_onnx,
    tflite_unavailable_reason,
    torch_outputs,
)
from edgekws.features import FeatureConfig, mfcc
from edgekws.models import create_model
from edgekws.targets import TARGETS, get_target

CLASSES = ["low", "mid", "high"]
FCFG = FeatureConfig(n_mfcc=10, n_mels=40, clip_seconds=0.5, normalization="none")  # input 10 x 23
runner = CliRunner()


def _data(n_per_class, seed):
    """Three separable classes of 10 x 23 "MFCC": a bump in a class-specific band plus noise."""
    rng = np.random.default_rng(seed)
    h, w = FCFG.shape
    xs, ys = [], []
    for c in range(3):
        x = rng.normal(0, 1, size=(n_per_class, h, w)).astype(np.float32)
        x[:, 3 * c : 3 * c + 3, :] += 2.0
        xs.append(x)
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small DS-CNN trained (a few seconds) on separable data, saved as an edgekws checkpoint."""
    from edgekws.server.train import save_checkpoint

    torch.manual_seed(0)
    model = create_model("dscnn", 3, FCFG.shape, seed=0, channels=16, n_blocks=2)
    x, y = _data(64, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    d = tmp_path_factory.mktemp("trained")
    save_checkpoint(d / "model.pt", model, FCFG, CLASSES, {"val_accuracy": 1.0})
    onnx_dir = d / "graphs"
    paths = {"classifier": export_onnx(model, onnx_dir / "model.onnx"),
             "embedding": export_onnx(model, onnx_dir / "embedding.onnx", kind="embedding"),
             "static": export_onnx(model, onnx_dir / "static.onnx", dynamic_batch=False)}
    return model, d / "model.pt", paths


def test_onnx_fp32_matches_torch_with_dynamic_and_static_batch(trained):
    model, _, paths = trained
    x, y = _data(20, seed=2)
    ref = torch_outputs(model, x)
    assert (ref.argmax(1) == y).mean() > 0.9  # the fixture model learned something
    sess = onnx_session(paths["classifier"])
    inp = sess.get_inputs()[0]
    assert inp.name == "mfcc" and inp.shape[1:] == [1, *FCFG.shape] and isinstance(inp.shape[0], str)
    out = sess.run(None, {"mfcc": x[:, None]})[0]  # 60 clips in one call
    assert out.shape == (60, 3)
    p = compare(ref, out, y)
    assert p["max_abs_diff"] < 1e-5 and p["top1_agreement"] == 1.0 and p["accuracy"] == p["reference_accuracy"]
    static = onnx_session(paths["static"])
    assert static.get_inputs()[0].shape == [1, 1, *FCFG.shape]
    np.testing.assert_allclose(run_onnx(static, x), ref, atol=1e-5)  # clip by clip
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        static.run(None, {"mfcc": x[:2, None]})


def test_embedding_graph_composes_with_head_to_the_logits(trained):
    model, _, paths = trained
    x, _ = _data(10, seed=3)
    emb = graph_outputs(paths["embedding"], x)
    assert emb.shape == (30, model.embedding_dim)
    np.testing.assert_allclose(emb, torch_outputs(model, x, "embedding"), atol=1e-5)
    W = model.classifier.weight.detach().numpy()
    b = model.classifier.bias.detach().numpy()
    np.testing.assert_allclose(emb @ W.T + b, torch_outputs(model, x), atol=1e-5)


def test_int8_static_and_dynamic_quantization(trained, tmp_path):
    model, _, paths = trained
    cal, _ = _data(32, seed=4)
    x, y = _data(30, seed=5)
    ref = torch_outputs(model, x)
    fp32_size = paths["classifier"].stat().st_size
    for method in ("static", "dynamic"):
        q = quantize_onnx(paths["classifier"], tmp_path / f"{method}.onnx", method=method,
                          calibration=cal if method == "static" else None)
        p = compare(ref, graph_outputs(q, x), y)
        assert p["top1_agreement"] >= 0.9, (method, p)
        assert 0 < p["max_abs_diff"]  # really quantized, not a copy
        import onnx

        ops = {n.op_type for n in onnx.load(str(q)).graph.node}
        assert ("QuantizeLinear" in ops) if method == "static" else ("ConvInteger" in ops or "MatMulInteger" in ops)
    assert (tmp_path / "static.onnx").stat().st_size < fp32_size
    with pytest.raises(ValueError, match="needs calibration features"):
        quantize_onnx(paths["classifier"], tmp_path / "x.onnx", method="static")
    with pytest.raises(ValueError, match=r"calibration features are \(5, 5\) but the graph expects \(10, 23\)"):
        quantize_onnx(paths["classifier"], tmp_path / "x.onnx", calibration=np.zeros((4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_onnx(paths["classifier"], tmp_path / "x.onnx", method="int4")


@pytest.mark.skipif(tflite_unavailable_reason() is not None, reason=str(tflite_unavailable_reason()))
def test_tflite_fp32_and_int8(trained, tmp_path):
    from edgekws.export import export_tflite, run_tflite, tflite_interpreter

    model, _, _ = trained
    cal, _ = _data(32, seed=4)
    x, y = _data(20, seed=6)
    ref = torch_outputs(model, x)
    fp32 = export_tflite(model, tmp_path / "model.tflite")
    assert compare(ref, run_tflite(fp32, x))["max_abs_diff"] < 1e-5
    q = export_tflite(model, tmp_path / "model.int8.tflite", int8=True, calibration=cal)
    it = tflite_interpreter(q)
    assert it.get_input_details()[0]["dtype"] == np.int8  # a fully-int8 graph
    p = compare(ref, run_tflite(it, x), y)
    assert p["top1_agreement"] >= 0.85 and p["max_abs_diff"] > 0
    assert q.stat().st_size < fp32.stat().st_size
    emb = export_tflite(model, tmp_path / "embedding.tflite", kind="embedding")
    np.testing.assert_allclose(run_tflite(emb, x), torch_outputs(model, x, "embedding"), atol=1e-5)
    with pytest.raises(ValueError, match="int8 TFLite needs calibration features"):
        export_tflite(model, tmp_path / "model.dyn.tflite", int8=True)


def _coreset():
    from edgekws.server.rfad import Coreset, RFADConfig

    x, y = _data(4, seed=7)
    return Coreset(x=x, y=np.eye(3, dtype=np.float32)[y], class_names=tuple(CLASSES), feature_config=FCFG,
                   config=RFADConfig(per_class=4))


def test_export_bundle_onnx_only_says_why_tflite_is_missing(trained, tmp_path, monkeypatch):
    from edgekws.bundle import generate_keypair

    model, ckpt, _ = trained
    priv, pub = generate_keypair(tmp_path / "keys")
    monkeypatch.setattr("edgekws.export.pipeline.tflite_unavailable_reason", lambda: "litert-torch is not installed")
    xe, ye = _data(10, seed=8)
    result = export_bundle(ckpt, "rpi", tmp_path / "bundle", private_key=priv, coreset=_coreset(),
                           evaluation=(xe, ye))
    assert result.tar == tmp_path / "bundle.tar" and verify_bundle(result.tar, pub).trusted
    b = load_bundle(result.bundle, pub)
    m = b.manifest
    assert m["format"] == "edgekws-bundle" and m["format_version"] == 1 and m["target"] == "rpi"
    assert list(b.classes) == CLASSES and b.feature_config == FCFG and m["coreset"] == "coreset.npz"
    assert m["graphs"] == {"classifier": {"onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx"},
                           "embedding": {"onnx_fp32": "embedding.onnx", "onnx_int8": "embedding.int8.onnx"}}
    assert m["skipped"] == {"tflite": "litert-torch is not installed"}
    assert any("TFLite skipped" in n for n in m["notes"]) and any("TFLite skipped" in n for n in result.notes)
    assert any("checkpoint model is dscnn" in n for n in m["notes"])  # rpi suggests cnn4
    assert m["model"]["name"] == "dscnn" and m["model"]["params"] == sum(p.numel() for p in model.parameters())
    assert set(m["files"]) == {"model.onnx", "model.int8.onnx", "embedding.onnx", "embedding.int8.onnx", "head.npz",
                               "coreset.npz"}
    par = m["metrics"]["parity"]
    assert par["model.onnx"]["max_abs_diff"] < 1e-5 and par["model.int8.onnx"]["top1_agreement"] >= 0.9
    assert par["model.int8.onnx"]["calibration"] == "coreset" and par["model.int8.onnx"]["n"] == 30
    assert m["metrics"]["checkpoint"]["val_accuracy"] == 1.0
    # what a device does: numpy MFCC of a clip -> int8 graph -> logits; head on the embedding graph
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(FCFG.clip_samples)).astype(np.float32)
    feats = mfcc(clip, b.feature_config)[None, None].astype(np.float32)
    assert feats.shape == tuple(m["input"]["shape"])
    ref = torch_outputs(model, feats[:, 0])
    np.testing.assert_allclose(graph_outputs(b.graph_path("classifier", "onnx", "fp32"), feats), ref, atol=1e-4)
    W, bias = b.head()
    emb = graph_outputs(b.graph_path("embedding", "onnx", "fp32"), feats)
    np.testing.assert_allclose(emb @ W.T + bias, ref, atol=1e-4)
    assert graph_outputs(b.graph_path(), feats).shape == (1, 3)  # default: classifier, onnx, int8


def test_export_without_calibration_data_uses_dynamic_int8(trained, tmp_path, monkeypatch):
    from edgekws.bundle import generate_keypair

    _, ckpt, _ = trained
    priv, _ = generate_keypair(tmp_path / "keys")
    from edgekws.export import pipeline

    made = []
    monkeypatch.setattr(pipeline, "export_tflite", lambda model, path, **kw: made.append((path.name, kw)) or
                        pipeline.export_onnx(model, path, kind=kw["kind"]))  # no litert-torch needed here
    monkeypatch.setattr(pipeline, "graph_outputs", lambda p, x, threads=1: run_onnx(p, x))
    monkeypatch.setattr(pipeline, "tflite_unavailable_reason", lambda: None)
    result = export_bundle(ckpt, "rpi", tmp_path / "b", private_key=priv, tar=False)
    assert result.tar is None and result.manifest["coreset"] is None
    assert any("dynamic quantization" in n for n in result.notes)
    assert sorted(n for n, _ in made) == ["embedding.tflite", "model.tflite"]  # fp32 only
    assert "int8 TFLite needs calibration" in result.manifest["skipped"]["tflite_int8"]
    p = result.parity["model.int8.onnx"]
    assert p["quantization"] == "dynamic" and p["calibration"] is None and "random" in p["compared_on"]


def test_budget_and_parity_failures_are_refused(trained, tmp_path, monkeypatch):
    from edgekws.bundle import generate_keypair

    _, ckpt, _ = trained
    priv, _ = generate_keypair(tmp_path / "keys")
    tiny = replace(get_target("mcu"), name="tiny", formats=("onnx",), model_budget_kb=1)
    with pytest.raises(ValueError, match=r"model.int8.onnx is .* KB, over target tiny's budget of 1 KB"):
        export_bundle(ckpt, tiny, tmp_path / "b1", private_key=priv)
    assert not (tmp_path / "b1").exists()
    fp32_only = replace(get_target("rpi"), formats=("onnx",), precisions=("fp32",), precision="fp32")
    from edgekws.export import pipeline

    real = pipeline.graph_outputs
    monkeypatch.setattr(pipeline, "graph_outputs", lambda p, x, threads=1: real(p, x, threads) + 0.5)
    with pytest.raises(ValueError, match="model.onnx does not reproduce the torch model"):
        export_bundle(ckpt, fp32_only, tmp_path / "b2", private_key=priv)
    with pytest.raises(ValueError, match="coreset classes"):
        core = _coreset()
        core.class_names = ("a", "b", "c")
        export_bundle(ckpt, fp32_only, tmp_path / "b3", private_key=priv, coreset=core)


def test_targets_are_data():
    assert set(TARGETS) == {"rpi", "phone", "mcu"}
    mcu = get_target("mcu")
    assert mcu.formats[0] == "tflite" and mcu.precision == "int8" and mcu.model == "dscnn"
    assert mcu.model_budget_kb is not None and mcu.model_budget_kb <= 100
    assert json.loads(json.dumps(mcu.to_dict()))["features"]["n_mfcc"] == 10
    with pytest.raises(ValueError, match="formats"):
        replace(mcu, formats=("coreml",))
    with pytest.raises(ValueError, match="precision"):
        replace(mcu, precision="int4")
    with pytest.raises(ValueError, match="unknown target"):
        get_target("toaster")


def test_cli_export_keygen_and_verify(trained, tmp_path, monkeypatch):
    _, ckpt, _ = trained
    monkeypatch.setenv("EDGEKWS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("edgekws.export.pipeline.tflite_unavailable_reason", lambda: "skipped in this test")
    res = runner.invoke(app, ["export", "--checkpoint", str(ckpt), "--target", "phone", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "created a signing key" in res.output and "TFLite skipped" in res.output and "verified" in res.output
    assert "suggests resnet18 width=0.5" in " ".join(res.output.split())
    assert (tmp_path / "home" / "keys" / "signing.pub").is_file() and (tmp_path / "b.tar").is_file()
    res = runner.invoke(app, ["bundle", "verify", str(tmp_path / "b.tar")])
    assert res.exit_code == 0 and "OK:" in res.output and "trusted key" in res.output, res.output
    data = bytearray((tmp_path / "b" / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "b" / "model.int8.onnx").write_bytes(bytes(data))
    res = runner.invoke(app, ["bundle", "verify", str(tmp_path / "b")])
    assert res.exit_code == 1 and "model.int8.onnx is damaged or was modified" in res.output
    res = runner.invoke(app, ["bundle", "keygen"])
    assert res.exit_code == 2 and "already exists" in res.output
    res = runner.invoke(app, ["bundle", "keygen", "--out", str(tmp_path / "k2")])
    assert res.exit_code == 0 and "key id" in res.output
    res = runner.invoke(app, ["bundle", "verify", str(tmp_path / "b.tar"), "--public-key", str(tmp_path / "k2")])
    assert res.exit_code == 1 and "wrong signature" in res.output
    res = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "checkpoint not found" in res.output
