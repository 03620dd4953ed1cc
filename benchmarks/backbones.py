"""MFCC CNN vs the speech-embedding backbone on real speakers, both trained on synthetic speech alone.

    python benchmarks/backbones.py --gsc ../shared/data/gsc-dev [--seeds 0,1,2] [--mfcc-bundle runs/rpi-mfcc/bundle]
        [--se-bundle runs/rpi/bundle] [--noise-dir ../shared/data/gsc-dev/_background_noise_]

Speech-embedding backbone: for each seed, ``distill_speech_job`` on the embedded synthetic keywords with the
``_nothing_`` class (exactly what ``edgekws distill --target rpi`` trains), then the head is scored on every real
gsc-dev clip and on its speaker-disjoint test split. No real clip is used for training. A prediction of
``_nothing_`` for a keyword clip counts as wrong ("accuracy"); "keywords only" leaves that class out of the argmax.
Given bundles (``--se-bundle``, ``--mfcc-bundle``) are scored the way the device runs them
(:func:`edgekws.export.check.check_bundle`: the bundle's front end and its recommended graph), and, with
``--noise-dir``, played as one stream of background noise through the detector ``edgekws listen`` uses, counting
detections (every one is a false alarm). Writes ``benchmarks/results/backbones.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekws.fileio import atomic_write_bytes, atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"


def _score_head(model: Any, x: np.ndarray, truth: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    from edgekws.export.check import score
    from edgekws.server.speech_head import head_logits

    return score(head_logits(model, x), truth, classes)


def speech_embedding_runs(gsc: Path, seeds: list[int], work: Path, streams: bool = True) -> list[dict[str, Any]]:
    import torch
    from edgekws.server.speech_head import (
        SpeechHeadConfig,
        dataset_embeddings,
        distill_speech_job,
    )
    from edgekws.server.speech_streams import StreamConfig
    from edgekws.server.train import load_checkpoint

    from edgekws.datasets import load_dataset, split_indices
    from edgekws.datasets.gsc import load_gsc
    from edgekws.features import FeatureConfig
    from edgekws.speech_embedding import FrontendConfig

    torch.set_num_threads(1)
    syn = load_dataset("synthetic", per_class=300, seed=0, nothing=300)
    real = load_gsc(gsc)
    xr, _ = dataset_embeddings(real, FrontendConfig())
    classes = tuple(syn.class_names)
    truth = np.array([classes.index(real.class_names[int(i)]) for i in real.labels])
    test = split_indices(real).test
    rows = []
    for seed in seeds:
        out = work / f"se-seed{seed}"
        t0 = time.perf_counter()
        m = distill_speech_job(syn, FeatureConfig(), out, head_cfg=SpeechHeadConfig(seed=seed, threads=1),
                               streams=StreamConfig() if streams else None)
        model = load_checkpoint(out / "model.pt")[0]
        rows.append({"backbone": "speech-embedding", "net": m["model"], "seed": seed,
                     "synthetic_test": m["test"]["accuracy"], "val_accuracy": m["val_accuracy"],
                     "gsc_all": _score_head(model, xr, truth, classes),
                     "gsc_test_split": _score_head(model, xr[test], truth[test], classes),
                     "params": m["shipped"]["params"], "seconds": time.perf_counter() - t0,
                     "streams": m.get("streams"), "prior_correction": m.get("prior_correction"),
                     "detector": {k: v for k, v in (m.get("detector") or {}).items() if k != "chosen_on"}})
    return rows


def noise_stream(noise_dir: Path) -> tuple[np.ndarray, float]:
    from edgekws.audio import load_audio

    parts = [load_audio(p, sample_rate=16000) for p in sorted(noise_dir.glob("*.wav"))]
    y = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    return y, len(y) / 16000.0


def bundle_rows(bundles: dict[str, Path], gsc: Path, noise_dir: Path | None) -> list[dict[str, Any]]:
    from edgekws.device.model import DeviceModel, open_bundle
    from edgekws.device.runtime import Detector, run_detector
    from edgekws.export.check import check_bundle
    from edgekws.server.speech_head import dataset_embeddings

    from edgekws.datasets.gsc import load_gsc
    from edgekws.speech_embedding import FrontendConfig

    rows = []
    noise = noise_stream(noise_dir) if noise_dir else None
    real = load_gsc(gsc)
    for name, path in bundles.items():
        info = open_bundle(path, trust_embedded_key=True)
        fe = info.manifest.get("frontend")
        inputs, same = None, None
        if fe:  # embeddings cached on the server side; the device computes the same (checked on 16 clips here)
            xr, waves = dataset_embeddings(real, FrontendConfig.from_dict(fe["config"]))
            inputs = xr[:, None]
            same = float(np.abs(DeviceModel(info).clip_inputs(waves[:16]) - inputs[:16]).max())
        res = check_bundle(path, "gsc", gsc, trust_embedded_key=True, inputs=inputs)
        row = {"bundle": name, "path": str(path), **res, "cached_inputs_max_diff": same}
        if noise is not None and len(noise[0]):
            rec = info.manifest.get("recommended") or {}
            model = DeviceModel(info, fmt=rec.get("format", "onnx"), precision=rec.get("precision", "fp32"),
                                calibrate=True)
            det = Detector(model, info.feature_config)
            y, seconds = noise
            blocks = (y[i: i + 1600] for i in range(0, len(y), 1600))
            events = [e.to_dict() for e in run_detector(det, blocks)]
            row["noise"] = {"seconds": seconds, "detections": len(events),
                            "per_hour": len(events) * 3600.0 / seconds, "keywords": sorted({e["keyword"] for e in events})}
        rows.append(row)
    return rows


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _ms(vals: list[float]) -> str:
    a = np.asarray(vals, float) * 100
    return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.2f}"


def markdown(report: dict[str, Any]) -> str:
    L = ["# Backbones on real speakers: trained on synthetic speech only", "",
         (f"Real set: gsc-dev ({report['gsc_clips']} clips, 10 keywords, 197 speakers; speaker-disjoint test split "
         f"{report['gsc_test_clips']} clips). Training: the embedded synthetic keywords (10 x 300 clips, espeak-ng) "
         "plus 300 `_nothing_` clips (other words, noise, silence)"
         f"{', plus the windows of 30 synthetic streams (edgekws distill default)' if report.get('streams') else ''}"
         "; no real clip. Machine: "
         f"{report['environment']['cpu']} ({report['environment']['cores']} cores, shared), one thread."), ""]
    se = report["speech_embedding"]
    if se:
        L += ["## Speech-embedding backbone, head trained by `distill_speech_job` (torch, before export)", "",
              ("| seed | synthetic test | gsc-dev all: accuracy | keywords only | called `_nothing_` | gsc test split | "
               "params |"), "|---|---|---|---|---|---|---|"]
        for r in se:
            L.append(f"| {r['seed']} | {_pct(r['synthetic_test'])} | {_pct(r['gsc_all']['accuracy'])} | "
                     f"{_pct(r['gsc_all']['accuracy_keywords_only'])} | {_pct(r['gsc_all']['predicted_silent_class'])}"
                     f" | {_pct(r['gsc_test_split']['accuracy'])} | {r['params']} |")
        L.append(f"| mean ± std | {_ms([r['synthetic_test'] for r in se])} | "
                 f"{_ms([r['gsc_all']['accuracy'] for r in se])} | "
                 f"{_ms([r['gsc_all']['accuracy_keywords_only'] for r in se])} | | "
                 f"{_ms([r['gsc_test_split']['accuracy'] for r in se])} | |")
        L.append("")
    if report["bundles"]:
        L += ["## Shipped bundles, scored as the device runs them", "",
              ("| bundle | graph | gsc-dev all | keywords only | called a `_` class | test split | noise: detections "
               "(per hour) |"), "|---|---|---|---|---|---|---|"]
        for r in report["bundles"]:
            nz = r.get("noise")
            noise = f"{nz['detections']} in {nz['seconds']:.0f} s ({nz['per_hour']:.0f}/h)" if nz else "–"
            ts = r.get("test_split") or {}
            L.append(f"| {r['bundle']} | {r['graph']} | {_pct(r['all']['accuracy'])} | "
                     f"{_pct(r['all']['accuracy_keywords_only'])} | {_pct(r['all']['predicted_silent_class'])} | "
                     f"{_pct(ts.get('accuracy', float('nan')))} | {noise} |")
        L.append("")
    L += [f"Total time {report['seconds'] / 60:.1f} min."]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gsc", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--se-bundle", type=Path, action="append", default=[], help="name=path or path")
    ap.add_argument("--mfcc-bundle", type=Path, action="append", default=[], help="name=path or path")
    ap.add_argument("--noise-dir", type=Path, default=None)
    ap.add_argument("--name", default="backbones")
    ap.add_argument("--no-streams", action="store_true", help="train the head on the synthetic clips alone (as "
                    "before synthetic streams joined the recipe)")
    args = ap.parse_args()
    from edgekws.server.pipeline import run_environment

    from edgekws.datasets import split_indices
    from edgekws.datasets.gsc import load_gsc

    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="edgekws-backbones-") as tmp:
        se = speech_embedding_runs(args.gsc, seeds, Path(tmp), streams=not args.no_streams) if seeds else []
    bundles = {}
    for kind, paths in (("speech-embedding", args.se_bundle), ("mfcc-cnn", args.mfcc_bundle)):
        for p in paths:
            name, _, path = str(p).rpartition("=")
            bundles[name or f"{kind}: {path}"] = Path(path)
    real = load_gsc(args.gsc)
    report = {"gsc_clips": len(real), "gsc_test_clips": len(split_indices(real).test), "seeds": seeds,
              "streams": not args.no_streams,
              "speech_embedding": se, "bundles": bundle_rows(bundles, args.gsc, args.noise_dir),
              "environment": run_environment(), "seconds": time.perf_counter() - t0}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{args.name}.json", report)
    atomic_write_bytes(RESULTS / f"{args.name}.md", markdown(report).encode())
    print(markdown(report))


if __name__ == "__main__":
    main()
