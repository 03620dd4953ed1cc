"""`edgekws bench`: the smallest plan on a tiny generated model, bundle and data; structure and sanity of the report
(no timing assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

CLASSES = ("_silence_", "yes", "no")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained CNN-4: checkpoint, signed ONNX bundle (fp32 + int8), random test / train / distill data."""
    from device_support import build_bundle
    from edgekws.models import create_model
    from edgekws.server.train import save_checkpoint

    from edgekws.features import FeatureConfig, fit_normalization, mfcc

    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    fc = FeatureConfig()
    raw = mfcc((0.05 * rng.standard_normal((8, fc.clip_samples))).astype(np.float32), fc, normalize_output=False)
    fc = fit_normalization(raw, fc)
    model = create_model("cnn4", n_classes=len(CLASSES), input_shape=fc.shape, widths=(4, 4, 4, 4), seed=0).eval()
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, model, fc, CLASSES)
    bundle = build_bundle(model, fc, CLASSES, root / "bundle", int8=True, key_root=root)
    x = rng.standard_normal((12, 1, *fc.shape)).astype(np.float32)
    y = np.arange(12) % len(CLASSES)
    np.savez(root / "test.npz", x=x, y=y)
    xtr = rng.standard_normal((30, *fc.shape)).astype(np.float32)
    np.savez(root / "distill.npz", xtr=xtr, ytr=np.arange(30) % 3, xv=xtr[:6], yv=np.arange(6) % 3,
             classes=np.array(CLASSES), feature_config=json.dumps(fc.to_dict()))
    return {"root": root, "ckpt": ckpt, "bundle": Path(bundle), "test": root / "test.npz",
            "distill": root / "distill.npz"}


def test_quick_plan_writes_a_sane_report(tiny):
    from bench import BenchPlan, ModelCase, run_bench

    out = tiny["root"] / "results"
    events = []
    plan = BenchPlan(
        name="bench_test", out_dir=out, work_dir=tiny["root"] / "work",
        models=[ModelCase("tiny", "rpi", tiny["bundle"], tiny["test"], tiny["ckpt"], repeats=40)],
        threads=(1,), warmup=2, case_seconds=0.0, quick=True, stream_bundle=tiny["bundle"], stream_graphs=(("onnx", "fp32"),),
        stream_seconds=3.0, finetune_bundle=tiny["bundle"], finetune_data=tiny["test"], finetune_sizes=(6, 12, 99),
        finetune_graph=("onnx", "fp32"), finetune_steps=5, distill_data=tiny["distill"],
        distill_base={"per_class": 2, "batch_size": 12, "n_models": 1, "width": 4},
        distill_sweeps={"per_class": (2, 3)}, distill_steps=2, distill_n_train=30, distill_n_val=6)
    report = run_bench(plan, events.append)
    assert any(e["event"] == "case" for e in events)

    saved = json.loads((out / "bench_test.json").read_text())
    assert saved["name"] == "bench_test"
    m = saved["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["versions"]["numpy"] == np.__version__
    assert len(m["load_average_start"]) == 3 and len(m["load_average_end"]) == 3

    dev = saved["device"]
    measured = [r for r in dev if "latency" in r]
    skipped = [r for r in dev if "skipped" in r]
    assert not [r for r in dev if "error" in r], dev
    # torch, ONNX fp32 and ONNX int8 ran; the bundle has no TFLite graphs, which the report says
    assert {(r["format"], r["precision"]) for r in measured} == {("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")}
    assert {(r["format"], r["precision"]) for r in skipped} == {("tflite", "fp32"), ("tflite", "int8")}
    for r in measured:
        lat = r["latency"]
        assert lat["n"] == 30  # a zero time budget still takes the minimum of 30 runs, not all 40
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert r["cold_start_s"] > 0 and r["file_bytes"] > 0
        assert r["peak_rss_mb"] > 0 and r["peak_rss_mb"] >= r["rss_after_load_mb"] * 0.99
        assert r["accuracy_clips"] == 12 and 0.0 <= r["accuracy"] <= 1.0
    # the same untrained model behind every graph: fp32 graphs agree with torch on these clips
    acc = {r["format"] + r["precision"]: r["accuracy"] for r in measured}
    assert acc["onnxfp32"] == pytest.approx(acc["torchfp32"])
    torch_rss = next(r["peak_rss_mb"] for r in measured if r["format"] == "torch")
    onnx_rss = next(r["peak_rss_mb"] for r in measured if r["format"] == "onnx")
    assert torch_rss > onnx_rss  # separate processes: importing torch shows in its own case only

    (row,) = saved["stream"]["rows"]
    rt = row["runtime"]
    assert rt["audio_s"] == pytest.approx(3.0) and rt["inferences"] > 5
    assert 0 < rt["real_time_factor"] and rt["process_s"] >= rt["inference_s"] > 0 and rt["mfcc_s"] > 0
    assert rt["peak_rss_mb"] > 0
    cli = row["cli"]
    assert "error" not in cli, cli
    assert cli["wall_s"] > 0 and cli["cpu_s"] > 0 and cli["peak_rss_mb"] > 0

    ft = saved["finetune"]["rows"]
    assert [r["n"] for r in ft] == [6, 12, 99]
    assert "skipped" in ft[2]
    for r in ft[:2]:
        assert r["embed_s"] > 0 and r["train_s"] > 0 and r["peak_rss_mb"] > 0 and r["embedding_dim"] > 0

    di = saved["distill"]["rows"]
    assert [r["config"]["per_class"] for r in di] == [2, 3]
    for r in di:
        assert "error" not in r, r
        assert r["steps"] == 2 and r["seconds_per_step"] > 0 and r["peak_rss_mb"] > 0 and r["n_train"] == 30

    md = (out / "bench_test.md").read_text()
    for heading in ("## Device inference", "## Streaming", "## On-device fine-tune", "## Distillation"):
        assert heading in md
    assert "9.5 ms" in md and "20 KB" in md  # reference points
    assert "skipped: the bundle has no tflite fp32 classifier" in md
    assert report["charts"] and all((out / c).is_file() and (out / c).stat().st_size > 1000 for c in report["charts"])
    assert "goal: int8 CNN-4 <= 1 ms per clip, one core" not in saved["headline"]  # no model called cnn4 here
    assert "goal: listen peak RSS <= 80 MB" in saved["headline"]


def test_failed_case_is_reported_not_raised(tiny, tmp_path):
    from bench import BenchPlan, ModelCase, bench_device

    from edgekws.bundle import generate_keypair, load_bundle, write_bundle

    good = load_bundle(tiny["bundle"], trust_embedded_key=True)
    priv, _ = generate_keypair(tmp_path / "keys")
    bad = write_bundle(tmp_path / "bundle", {"model.onnx": b"not an onnx graph", "head.npz": good.path / "head.npz"},
                       target="rpi", classes=good.classes, feature_config=good.feature_config,
                       model=good.manifest["model"], graphs={"classifier": {"onnx_fp32": "model.onnx"}},
                       private_key=priv)  # signed and hashed, but not a graph that loads
    plan = BenchPlan(name="x", out_dir=tmp_path, work_dir=tmp_path, threads=(1,), warmup=0,
                     models=[ModelCase("bad", "rpi", bad, tiny["test"], None, repeats=2)])
    rows = bench_device(plan)
    onnx = next(r for r in rows if r["format"] == "onnx" and r["precision"] == "fp32")
    assert "error" in onnx and "model.onnx" in onnx["error"]
    assert next(r for r in rows if r["format"] == "torch")["skipped"] == "no torch checkpoint"


def test_plan_and_cli_errors(tmp_path):
    from typer.testing import CliRunner

    from bench import BenchError, BenchPlan, gsc_plan
    from edgekws.cli import app

    with pytest.raises(BenchError, match="unknown sections"):
        BenchPlan(name="x", out_dir=tmp_path, work_dir=tmp_path, sections=("device", "gpu"))
    with pytest.raises(BenchError, match="does not exist"):
        gsc_plan(tmp_path / "nowhere", tmp_path, tmp_path)
    with pytest.raises(BenchError, match="edgekws train"):
        (tmp_path / "gsc").mkdir()
        gsc_plan(tmp_path / "gsc", tmp_path / "runs", tmp_path)
    r = CliRunner().invoke(app, ["bench", "--only", "device,gpu", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown sections" in r.output
    r = CliRunner().invoke(app, ["bench", "--target", "toaster", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown target" in r.output
