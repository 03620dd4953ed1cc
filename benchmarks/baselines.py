"""Full-data baselines: the denominator of every distillation ratio.

Trains each model on the full training split of each dataset over several seeds and reports test accuracy
(mean ± std). Models trained on the embedded synthetic keywords are also tested on real Speech Commands clips
(every clip of the shared subset: none of them was seen in training), which is what makes the embedded default
worth shipping.

    python benchmarks/baselines.py --gsc ../shared/data/gsc-dev --models cnn4,resnet18 --seeds 0,1,2

Writes ``benchmarks/results/baselines.json`` and ``baselines.md`` (+ one run folder per case under --runs).
Every case is resumable: a finished case is read back from its metrics.json instead of re-run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekws.datasets import load_dataset, split_indices
from edgekws.datasets.cache import load_features
from edgekws.features import FeatureConfig, normalize
from edgekws.server.data import prepare
from edgekws.server.evaluate import mean_std
from edgekws.server.pipeline import run_environment, train_on_dataset, write_json
from edgekws.server.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"


def _real_eval_set(gsc_dir: Path, class_names: tuple[str, ...], cfg: FeatureConfig, part: str) -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("gsc", gsc_dir, keywords=class_names)
    raw = load_features(ds, cfg.replace(normalization="none", mean=None, std=None))
    idx = np.arange(len(ds)) if part == "all" else getattr(split_indices(ds), part)
    return normalize(raw[idx], cfg), ds.labels[idx]


def _epoch_printer(tag: str):
    def show(ev: dict[str, Any]) -> None:
        if ev.get("event") == "epoch":
            print(f"{tag} epoch {ev['epoch'] + 1}/{ev['epochs']} loss {ev['train_loss']:.3f} "
                  f"val {100 * ev.get('val_accuracy', float('nan')):.1f}% ({ev['seconds']:.0f} s)", flush=True)
    return show


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsc", type=Path, help="Speech Commands folder (real data)")
    ap.add_argument("--datasets", default="gsc,synthetic")
    ap.add_argument("--models", default="cnn4,resnet18")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--synthetic-per-class", type=int, default=300)
    ap.add_argument("--normalization", default="global")
    ap.add_argument("--runs", type=Path, default=Path("runs/baselines"))
    ap.add_argument("--name", default="baselines")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    cases: list[dict[str, Any]] = []
    for dname in args.datasets.split(","):
        ds = load_dataset(dname, args.gsc if dname == "gsc" else None,
                          **({"per_class": args.synthetic_per_class} if dname == "synthetic" else {}))
        cfg = FeatureConfig(clip_seconds=ds.clip_seconds, normalization=args.normalization)
        prep = prepare(ds, cfg)
        extra = {}
        if dname == "synthetic" and args.gsc:
            extra = {"real_gsc_all": _real_eval_set(args.gsc, ds.class_names, prep.feature_cfg, "all"),
                     "real_gsc_test": _real_eval_set(args.gsc, ds.class_names, prep.feature_cfg, "test")}
        for model in args.models.split(","):
            for seed in seeds:
                out = args.runs / f"{dname}-{model}-{args.normalization}-s{seed}"
                mfile = out / "metrics.json"
                if mfile.is_file():
                    m = json.loads(mfile.read_text())
                else:
                    t0 = time.perf_counter()
                    tc = TrainConfig(model=model, epochs=args.epochs, seed=seed, threads=args.threads)
                    m = train_on_dataset(ds, cfg, tc, out, prepared=prep, extra_tests=extra, resume=True,
                                         progress=_epoch_printer(f"{dname} {model} s{seed}"))
                    print(f"{dname} {model} seed {seed}: test {100 * m['test']['accuracy']:.2f}% "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
                cases.append({"dataset": dname, "model": model, "seed": seed, "test": m["test"]["accuracy"],
                              "val": m["val_accuracy"], "seconds": m["train_seconds"], "split": m["split"],
                              **{k: v["accuracy"] for k, v in m.items() if k.startswith("test_real")}})

    summary = []
    for dname in args.datasets.split(","):
        for model in args.models.split(","):
            rows = [c for c in cases if c["dataset"] == dname and c["model"] == model]
            if not rows:
                continue
            entry = {"dataset": dname, "model": model, "seeds": [r["seed"] for r in rows],
                     "split": rows[0]["split"], "seconds_per_run": statistics.mean(r["seconds"] for r in rows)}
            for key in ("test", "test_real_gsc_all", "test_real_gsc_test"):
                vals = [r[key] for r in rows if key in r]
                if vals:
                    entry[key] = mean_std(vals)
            summary.append(entry)
    report = {"environment": run_environment(), "epochs": args.epochs, "normalization": args.normalization,
              "summary": summary, "cases": cases}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{args.name}.json", report)
    lines = [f"# Full-data baselines ({args.normalization} feature normalisation, {args.epochs} epochs)", "",
             f"Machine: {report['environment']['cpu']}, {report['environment']['cores']} cores, torch "
             f"{report['environment']['torch']}. Mean ± std over seeds.", "",
             "| dataset | model | split (train/val/test) | test acc % | on real GSC, all clips % | on real GSC test split % | s/run |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda e, k: f"{e[k]['mean']:.2f} ± {e[k]['std']:.2f} (n={len(e[k]['runs'])})" if k in e else "–"
    for e in summary:
        sp = e["split"]
        lines.append(f"| {e['dataset']} | {e['model']} | {sp['train']}/{sp['val']}/{sp['test']} | {fmt(e, 'test')} | "
                     f"{fmt(e, 'test_real_gsc_all')} | {fmt(e, 'test_real_gsc_test')} | {e['seconds_per_run']:.0f} |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
