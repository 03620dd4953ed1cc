"""Export table: model x format x precision -> file size, parity with torch, accuracy on real Speech Commands,
single-clip latency.

For each case a trained checkpoint (trained here with few epochs when its ``model.pt`` is missing) is exported for
its target into a signed bundle (`edgekws.export.export_bundle`): int8 graphs are calibrated on 256 clips of the
real training split, parity and accuracy are measured on the real test split (speaker-disjoint, 335 clips of the
shared subset), latency is the median of single-clip runs with one thread after warm-up. ONNX int8 with *dynamic*
quantization (no calibration data) is measured as an extra row for CNN-4.

    python benchmarks/export_bench.py --gsc ../shared/data/gsc-dev

Writes ``benchmarks/results/export.json`` and ``export.md``; bundles go under ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekws.bundle import generate_keypair
from edgekws.datasets import load_dataset
from edgekws.device.backend import open_backend
from edgekws.export import (
    compare,
    export_bundle,
    graph_outputs,
    quantize_onnx,
    real_features,
    torch_outputs,
)
from edgekws.export.tflite import tflite_unavailable_reason
from edgekws.fileio import atomic_write_bytes, atomic_write_json
from edgekws.server.pipeline import run_environment, train_on_dataset
from edgekws.server.train import TrainConfig, load_checkpoint
from edgekws.targets import get_target

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(RESULTS.parent))

from harness import describe_machine, latency_ms  # noqa: E402

# name, target, model, default checkpoint (relative to --runs), epochs when it has to be trained here
CASES = [
    ("cnn4", "rpi", "cnn4", "baselines/gsc-cnn4-global-s0/model.pt", 10),
    ("resnet18", "phone", "resnet18", "baselines20/gsc-resnet18-global-s0/model.pt", 6),
    ("dscnn-mcu", "mcu", "dscnn", "export-bench/gsc-dscnn-mcu/model.pt", 20),
]


def _latency_ms(run, x1: np.ndarray, repeats: int) -> dict[str, float]:
    """Median and p90 of single-clip runs after warm-up (the shared harness)."""
    t = latency_ms(run, x1, repeats, warmup=5)
    return {"median_ms": t["p50_ms"], "p90_ms": t["p90_ms"]}


def _runner(path: Path):
    """The graph as the device runs it (its backend, its int8 input quantisation)."""
    return open_backend(path, threads=1).predict


def _ensure_checkpoint(path: Path, target: str, model: str, epochs: int, gsc: Path) -> None:
    if path.is_file():
        return
    tgt = get_target(target)
    ds = load_dataset("gsc", gsc)
    print(f"training {model} for {target} ({epochs} epochs) -> {path}", flush=True)
    train_on_dataset(ds, tgt.features.replace(clip_seconds=ds.clip_seconds),
                     TrainConfig(model=model, model_kwargs={}, epochs=epochs, seed=0, threads=1, device="cpu"),
                     path.parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsc", type=Path, required=True, help="Speech Commands folder (real data)")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="folder of checkpoints and bundles")
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES))
    ap.add_argument("--repeats", type=int, default=200, help="latency runs per graph")
    args = ap.parse_args()
    torch.set_num_threads(1)

    key_dir = Path(tempfile.mkdtemp(prefix="edgekws-bench-keys-"))
    priv, _ = generate_keypair(key_dir)
    rows: list[dict[str, Any]] = []
    cases_out = []
    for name, target, model_name, rel, epochs in CASES:
        if name not in args.cases.split(","):
            continue
        ckpt = args.runs / rel
        _ensure_checkpoint(ckpt, target, model_name, epochs, args.gsc)
        model, fcfg, classes, blob = load_checkpoint(ckpt)
        cal, _ = real_features("gsc", args.gsc, classes, fcfg, "train")
        xt, yt = real_features("gsc", args.gsc, classes, fcfg, "test")
        t0 = time.perf_counter()
        res = export_bundle(ckpt, target, args.runs / "export-bench" / f"{name}-bundle", private_key=priv,
                            calibration=cal, evaluation=(xt, yt))
        export_s = time.perf_counter() - t0
        print(f"{name}: exported in {export_s:.0f} s; notes: {res.notes}", flush=True)
        x1 = xt[:1, None].astype(np.float32)
        torch_acc = float(np.mean(res.parity["model.onnx"]["reference_accuracy"]))
        with torch.no_grad():
            tl = _latency_ms(lambda x, m=model: m(torch.from_numpy(x)), x1, args.repeats)
        n_params = res.manifest["model"]["params"]
        rows.append({"model": name, "target": target, "format": "torch", "precision": "fp32", "graph": "model.pt",
                     "size_kb": round(n_params * 4 / 1024, 1), "max_abs_diff": 0.0, "top1_agreement": 1.0,
                     "accuracy": torch_acc, **tl})
        extra_graphs = {}
        if name == "cnn4":  # dynamic quantization: no calibration data, ConvInteger kernels
            dyn = res.bundle.parent / f"{name}-model.dynamic-int8.onnx"
            quantize_onnx(res.bundle / "model.onnx", dyn, method="dynamic")
            p = compare(torch_outputs(model, xt), graph_outputs(dyn, xt), yt)
            p.update(size_bytes=dyn.stat().st_size, quantization="dynamic")
            extra_graphs[dyn.name] = (dyn, p)
        graphs = {g: (res.bundle / g, p) for g, p in res.parity.items() if g.startswith("model.")}
        for g, (path, p) in {**graphs, **extra_graphs}.items():
            fmt = "onnx" if path.suffix == ".onnx" else "tflite"
            prec = "int8" if "int8" in g else "fp32"
            q = p.get("quantization")
            rows.append({"model": name, "target": target, "format": fmt,
                         "precision": f"{prec} ({q})" if q else prec, "graph": g,
                         "size_kb": round(p["size_bytes"] / 1024, 1), "max_abs_diff": p["max_abs_diff"],
                         "top1_agreement": p["top1_agreement"], "accuracy": p["accuracy"],
                         **_latency_ms(_runner(path), x1, args.repeats)})
            print(f"  {g}: {rows[-1]}", flush=True)
        emb = {g: {k: p[k] for k in ("size_bytes", "max_abs_diff", "cosine")} for g, p in res.parity.items()
               if g.startswith("embedding.")}
        cases_out.append({"name": name, "target": target, "checkpoint": str(ckpt), "model": res.manifest["model"],
                          "checkpoint_test_accuracy": (blob.get("metrics") or {}).get("test", {}).get("accuracy"),
                          "calibration_clips": int(min(len(cal), get_target(target).calibration_clips)),
                          "test_clips": len(xt), "export_seconds": export_s, "notes": res.notes,
                          "budget": res.manifest["metrics"]["budget"], "embedding_parity": emb,
                          "bundle_files": {k: v["size"] for k, v in res.manifest["files"].items()}})

    env = {**run_environment(), "machine": describe_machine()}
    env["tflite"] = tflite_unavailable_reason() or "available"
    report = {"environment": env, "cases": cases_out, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "export.json", report)
    lines = [
        "# Export: model × format × precision",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores (shared with other jobs), one inference thread; torch "
        f"{env['torch']}. Accuracy and parity on the real Speech Commands test split ({cases_out[0]['test_clips'] if cases_out else 0} "
        "clips, speaker-disjoint); int8 calibrated on 256 real training clips (static) or on nothing (dynamic). "
        "Latency: median (p90) of single-clip runs after warm-up. Top-1 agreement is with the torch model.",
        "",
        "| model (target) | format | precision | file KB | max abs logit diff | top-1 agreement % | accuracy % | "
        "latency ms median (p90) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} ({r['target']}) | {r['format']} | {r['precision']} | {r['size_kb']:.1f} | "
                     f"{r['max_abs_diff']:.2g} | {100 * r['top1_agreement']:.1f} | {100 * r['accuracy']:.1f} | "
                     f"{r['median_ms']:.2f} ({r['p90_ms']:.2f}) |")
    lines += ["", "Embedding graphs (for on-device head training): size and parity of the embeddings", "",
              "| model | graph | KB | max abs diff | mean cosine |", "|---|---|---|---|---|"]
    for c in cases_out:
        for g, p in c["embedding_parity"].items():
            lines.append(f"| {c['name']} | {g} | {p['size_bytes'] / 1024:.1f} | {p['max_abs_diff']:.2g} | "
                         f"{p['cosine']:.5f} |")
    lines += ["", "Budgets and notes:", ""]
    for c in cases_out:
        b = c["budget"]
        fit = "" if b["fits"] is None else f", budget {b['model_budget_kb']} KB: {'fits' if b['fits'] else 'OVER'}"
        lines.append(f"- {c['name']} → {c['target']}: primary graph {b['primary_graph']} "
                     f"{b['primary_graph_kb'] if b['primary_graph_kb'] is not None else '?'} KB{fit}; "
                     f"{c['model']['params']:,} params; export {c['export_seconds']:.0f} s"
                     + (f"; {'; '.join(c['notes'])}" if c["notes"] else ""))
    atomic_write_bytes(RESULTS / "export.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    print(json.dumps({"wrote": [str(RESULTS / "export.json"), str(RESULTS / "export.md")]}))


if __name__ == "__main__":
    main()
