"""RFAD coresets on real Speech Commands: accuracy of finite nets trained on them, against fair baselines.

For every coreset size (samples per class), seed and model it trains the finite net on

* ``rfad``            the RFAD coreset with its learned soft labels (MSE, as distilled);
* ``random_mse``      random real clips of the same size, one-hot targets, MSE (the same recipe);
* ``random_ce``       the same random clips with cross-entropy;
* ``rfad_teacher``    the RFAD coreset inputs labelled by a teacher trained on the full training split
                      (soft targets, cross-entropy) - the coreset still holds only ``per_class`` labelled inputs;
* ``random_teacher``  random real clips labelled by the same teacher (the fair baseline for ``rfad_teacher``),

and tests on the speaker-disjoint test split. Ratios are to the same net trained on all training clips
(``benchmarks/results/baselines_gsc_<model>.json``), gains are over the stronger random baseline with the same
kind of labels. It also times distillation steps against coreset size and real-batch size.

    python benchmarks/rfad_gsc.py --gsc ../shared/data/gsc-dev --models cnn4 --per-class 50,30,20 --seeds 0,1,2

Writes ``benchmarks/results/<name>.json``, ``<name>.md`` and ``<name>.png``. Resumable: finished cases are kept in
``<runs>/cases.jsonl`` and coresets in ``<runs>/coreset_pc<P>_s<S>.npz``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekws.datasets import load_dataset
from edgekws.features import FeatureConfig
from edgekws.server.data import prepare
from edgekws.server.evaluate import coreset_train_config, mean_std
from edgekws.server.pipeline import run_environment, train_on_dataset, write_json
from edgekws.server.rfad import Coreset, RFADConfig, distill, random_real_coreset
from edgekws.server.train import TrainConfig, evaluate, load_checkpoint, predict_logits, train_model

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("rfad", "random_mse", "random_ce", "rfad_teacher", "random_teacher")
PAPER = {"gsc_resnet18_50": 72.24, "gsc_full_resnet18": 89.92}


def rfad_config(per_class: int, seed: int, args: argparse.Namespace) -> RFADConfig:
    """The settings ``edgekws distill`` uses by default."""
    return RFADConfig(per_class=per_class, steps=args.steps, n_models=4, pool_size=16, width=32, lr=3e-2,
                      label_lr=3e-2, seed=seed, patience=4, threads=args.threads)


def model_label(model: str, kwargs: dict[str, Any]) -> str:
    """``model`` itself, or ``model:k=v,...`` for non-default constructor arguments."""
    return model if not kwargs else model + ":" + ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))


def soft_labels(model: torch.nn.Module, x: np.ndarray, temperature: float) -> np.ndarray:
    z = predict_logits(model, x).astype(np.float64) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return (z / z.sum(1, keepdims=True)).astype(np.float32)


def step_timing(xtr: np.ndarray, ytr: np.ndarray, xv: np.ndarray, yv: np.ndarray, prep, args) -> list[dict]:
    """Seconds per distillation step vs coreset size and real-batch size (a few steps each, one process)."""
    rows = []
    grid = [(pc, 2000) for pc in (10, 20, 50, 100)] + [(50, b) for b in (250, 500, 1000)]
    for pc, batch in grid:
        cfg = RFADConfig(per_class=pc, steps=4, n_models=4, pool_size=4, width=32, lr=3e-2, label_lr=3e-2, seed=0,
                         patience=0, eval_every=100, batch_size=batch, threads=args.threads)
        core = distill(xtr, ytr, xv, yv, prep.class_names, prep.feature_cfg, cfg)
        times = core.metrics
        rows.append({"per_class": pc, "batch_size": min(batch, len(ytr)), "coreset": pc * prep.n_classes,
                     "seconds_per_step": times["seconds_per_step"],
                     "feature_seconds_per_net": times["feature_seconds"] / cfg.pool_size})
        print(f"timing: {pc}/class, batch {batch}: {times['seconds_per_step']:.2f} s/step", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsc", type=Path, required=True, help="Speech Commands folder (real data)")
    ap.add_argument("--models", default="cnn4,resnet18")
    ap.add_argument("--per-class", default="50,30,20")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=60, help="epochs of the finite nets on the small sets")
    ap.add_argument("--steps", type=int, default=50, help="distillation steps (edgekws distill's default)")
    ap.add_argument("--temperature", type=float, default=2.0, help="teacher softmax temperature")
    ap.add_argument("--teacher-runs", type=Path, default=Path("runs/baselines"),
                    help="full-data CNN-4 runs (gsc-cnn4-global-s<seed>); trained here when missing")
    ap.add_argument("--runs", type=Path, default=Path("runs/rfad_gsc"))
    ap.add_argument("--name", default="rfad_gsc")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing", action="store_true", help="also time distillation steps")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from finished cases")
    ap.add_argument("--model-kwargs", default="{}",
                    help='JSON constructor arguments for the finite nets, e.g. \'{"width": 0.25, "stem_stride": 1, '
                         '"stem_pool": false}\'; such runs are reported as model:key=value,...')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_kwargs = json.loads(args.model_kwargs)
    if not isinstance(model_kwargs, dict):
        ap.error("--model-kwargs must be a JSON object")

    ds = load_dataset("gsc", args.gsc)
    prep = prepare(ds, FeatureConfig(normalization="global", clip_seconds=ds.clip_seconds))
    _, xtr, ytr = prep.subset("train")
    _, xv, yv = prep.subset("val")
    _, xt, yt = prep.subset("test")
    n_classes = prep.n_classes
    args.runs.mkdir(parents=True, exist_ok=True)
    cases_file = args.runs / "cases.jsonl"
    done: dict[tuple, dict] = {}
    if cases_file.is_file():
        for line in cases_file.read_text().splitlines():
            if line.strip():
                c = json.loads(line)
                done[(c["model"], c["per_class"], c["seed"], c["method"])] = c
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    teachers: dict[int, torch.nn.Module] = {}

    def teacher(seed: int) -> torch.nn.Module:
        if seed not in teachers:
            run = args.teacher_runs / f"gsc-cnn4-global-s{seed}"
            if not (run / "model.pt").is_file():
                print(f"training the full-data CNN-4 teacher for seed {seed} in {run}", flush=True)
                train_on_dataset(ds, prep.feature_cfg, TrainConfig(model="cnn4", epochs=30, seed=seed,
                                                                   threads=args.threads), run, prepared=prep,
                                 resume=True)
            model, fcfg, _, _ = load_checkpoint(run / "model.pt")
            if fcfg != prep.feature_cfg:
                raise SystemExit(f"{run}: teacher was trained with other features or another split")
            teachers[seed] = model
        return teachers[seed]

    coresets: dict[tuple[int, int], Coreset] = {}

    def coreset(pc: int, seed: int) -> Coreset:
        if (pc, seed) not in coresets:
            path = args.runs / f"coreset_pc{pc}_s{seed}.npz"
            if path.is_file():
                coresets[(pc, seed)] = Coreset.load(path)
            else:
                t0 = time.perf_counter()
                core = distill(xtr, ytr, xv, yv, prep.class_names, prep.feature_cfg, rfad_config(pc, seed, args),
                               source_fingerprint=ds.fingerprint(),
                               checkpoint_path=args.runs / f"rfad_pc{pc}_s{seed}.pt", resume=True)
                core.save(path)
                print(f"distilled {pc}/class seed {seed} in {time.perf_counter() - t0:.0f} s: KRR val "
                      f"{100 * core.metrics['init_val_accuracy']:.1f} -> {100 * core.metrics['val_accuracy']:.1f}%",
                      flush=True)
                coresets[(pc, seed)] = core
        return coresets[(pc, seed)]

    if not args.report_only:
        for model in args.models.split(","):
            label = model_label(model, model_kwargs)
            for pc in (int(p) for p in args.per_class.split(",")):
                for seed in (int(s) for s in args.seeds.split(",")):
                    for method in methods:
                        key = (label, pc, seed, method)
                        if key in done:
                            continue
                        xr, yr = random_real_coreset(xtr, ytr, pc, seed=seed, n_classes=n_classes)
                        if method == "rfad":
                            core = coreset(pc, seed)
                            x, y, loss = core.x, core.y, "mse"
                        elif method == "random_mse":
                            x, y, loss = xr, yr, "mse"
                        elif method == "random_ce":
                            x, y, loss = xr, yr.argmax(1), "ce"
                        elif method == "rfad_teacher":
                            x = coreset(pc, seed).x
                            y, loss = soft_labels(teacher(seed), x, args.temperature), "ce"
                        else:
                            x, y, loss = xr, soft_labels(teacher(seed), xr, args.temperature), "ce"
                        t0 = time.perf_counter()
                        tcfg = coreset_train_config(model, loss=loss, epochs=args.epochs, seed=seed,
                                                    model_kwargs=model_kwargs)
                        tcfg.threads = args.threads
                        res = train_model(x, y, xv, yv, prep.feature_cfg, n_classes, tcfg, inputs="features")
                        acc = evaluate(res.model, xt, yt, n_classes)["accuracy"]
                        case = {"model": label, "per_class": pc, "seed": seed, "method": method,
                                "test_accuracy": 100 * acc, "val_accuracy": 100 * res.best_val_accuracy,
                                "train_seconds": time.perf_counter() - t0}
                        if method.startswith("rfad"):
                            m = coreset(pc, seed).metrics
                            case.update(krr_val_init=m["init_val_accuracy"], krr_val=m["val_accuracy"],
                                        distill_steps=m["steps"], seconds_per_step=m["seconds_per_step"],
                                        distill_seconds=m["seconds"])
                        done[key] = case
                        with cases_file.open("a") as fh:
                            fh.write(json.dumps(case) + "\n")
                        print(json.dumps(case), flush=True)

    timing_file = args.runs / "timing.json"
    if args.timing and not timing_file.is_file():
        write_json(timing_file, step_timing(xtr, ytr, xv, yv, prep, args))
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else []
    write_report(args, list(done.values()), timing, prep)


def write_report(args: argparse.Namespace, cases: list[dict], timing: list[dict], prep) -> None:
    full: dict[str, dict] = {}
    for model in ("cnn4", "resnet18"):
        f = RESULTS / f"baselines_gsc_{model}.json"
        if f.is_file():
            s = json.loads(f.read_text())["summary"][0]["test"]
            full[model] = {"mean": s["mean"], "std": s["std"], "n": len(s["runs"])}
    summary = []
    for model in sorted({c["model"] for c in cases}):
        for pc in sorted({c["per_class"] for c in cases if c["model"] == model}, reverse=True):
            row: dict[str, Any] = {"model": model, "per_class": pc}
            for method in METHODS:
                vals = [c["test_accuracy"] for c in cases
                        if c["model"] == model and c["per_class"] == pc and c["method"] == method]
                if vals:
                    row[method] = mean_std(vals, scale=1.0)
            if "rfad" in row and ("random_mse" in row or "random_ce" in row):
                stronger = max((k for k in ("random_mse", "random_ce") if k in row), key=lambda k: row[k]["mean"])
                row["stronger_random"] = stronger
                row["gain_rfad"] = row["rfad"]["mean"] - row[stronger]["mean"]
            if "rfad_teacher" in row and "random_teacher" in row:
                row["gain_rfad_teacher"] = row["rfad_teacher"]["mean"] - row["random_teacher"]["mean"]
            if model in full:
                best = max((row[k]["mean"] for k in METHODS if k in row), default=None)
                row["full_data"] = full[model]
                for k in ("rfad", "rfad_teacher"):
                    if k in row:
                        row[f"ratio_{k}"] = row[k]["mean"] / full[model]["mean"]
                row["best_method_ratio"] = best / full[model]["mean"] if best is not None else None
            summary.append(row)
    krr = list({(c["per_class"], c["seed"]): (c["krr_val_init"], c["krr_val"])  # one entry per coreset
                for c in cases if c["method"] == "rfad" and "krr_val" in c}.values())
    report = {"environment": run_environment(), "dataset": "gsc-dev", "split": {k: int(len(getattr(prep.split, k)))
              for k in ("train", "val", "test")}, "epochs": args.epochs, "distill_steps": args.steps,
              "teacher_temperature": args.temperature, "paper": PAPER, "summary": summary, "timing": timing,
              "cases": cases}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{args.name}.json", report)

    env = report["environment"]
    sp = report["split"]
    fmt = lambda r, k: f"{r[k]['mean']:.2f} ± {r[k]['std']:.2f} (n={r[k]['n']})" if k in r else "–"
    lines = [
        "# RFAD coresets on real Speech Commands (gsc-dev subset)", "",
        f"Speaker-disjoint split {sp['train']}/{sp['val']}/{sp['test']} clips (train/val/test), 10 keywords, "
        f"global MFCC normalisation fitted on train. Finite nets trained {args.epochs} epochs on each small set "
        f"(SpecAugment, best epoch on val), tested on the test split. Coresets: `edgekws distill` defaults "
        f"({args.steps} steps max, 4 of 16 random ConvNets of width 32 per step, Adam lr 3e-2). Teacher: CNN-4 "
        f"trained on the full training split with the same seed, soft labels at T={args.temperature}. "
        f"Mean ± std over seeds. Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']}, 1 thread.", "",
        "| model | per class | RFAD | random real MSE | random real CE | gain over stronger | RFAD / full | "
        "RFAD + teacher labels | random + teacher labels | gain (teacher) | best / full | full data |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        gain = f"{r['gain_rfad']:+.2f}" if "gain_rfad" in r else "–"
        gain_t = f"{r['gain_rfad_teacher']:+.2f}" if "gain_rfad_teacher" in r else "–"
        ratio = f"{r['ratio_rfad']:.3f}" if "ratio_rfad" in r else "–"
        best = f"{r['best_method_ratio']:.3f}" if r.get("best_method_ratio") else "–"
        lines.append(f"| {r['model']} | {r['per_class']} | {fmt(r, 'rfad')} | {fmt(r, 'random_mse')} | "
                     f"{fmt(r, 'random_ce')} | {gain} | {ratio} | {fmt(r, 'rfad_teacher')} | "
                     f"{fmt(r, 'random_teacher')} | {gain_t} | {best} | {fmt(r, 'full_data')} |")
    if any(":" in r["model"] for r in summary):
        lines += ["", "Rows named `model:key=value,...` are nets built with those constructor arguments (`--model-kwargs`); "
                      "their full-data reference was not trained, so they have no ratio. Why the default ResNet-18 "
                      "does poorly on small sets: `resnet18_small_set.md`."]
    if krr:
        lines += ["", f"KRR validation accuracy of the coresets (held-out random nets): "
                      f"{100 * statistics.mean(a for a, _ in krr):.1f}% at initialisation (random real) -> "
                      f"{100 * statistics.mean(b for _, b in krr):.1f}% distilled (mean of {len(krr)} coresets)."]
    lines += ["", f"The paper (Gudur & Thomaz, ResNet-18, full Speech Commands): {PAPER['gsc_resnet18_50']}% at "
                  f"50/class, {PAPER['gsc_full_resnet18']}% on full data (ratio "
                  f"{PAPER['gsc_resnet18_50'] / PAPER['gsc_full_resnet18']:.3f})."]
    if timing:
        lines += ["", "## Seconds per distillation step (4 random nets of width 32, 1 thread)", "",
                  "| per class | coreset | real batch | s/step |", "|---|---|---|---|"]
        lines += [f"| {t['per_class']} | {t['coreset']} | {t['batch_size']} | {t['seconds_per_step']:.2f} |"
                  for t in timing]
        lines += ["", f"Real-side features: {timing[0]['feature_seconds_per_net']:.2f} s per random net for "
                      f"{sp['train']} clips (computed once per pool net, reused every step)."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot(summary, RESULTS / f"{args.name}.png")
    print("\n".join(lines))


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekws.plots import save_figure

    models = sorted({r["model"] for r in summary})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = sorted((r for r in summary if r["model"] == model), key=lambda r: r["per_class"])
        for k, (method, style) in enumerate(zip(METHODS, ("o-", "s--", "^--", "D-", "v:"))):
            pts = [(r["per_class"], r[method]) for r in rows if method in r]
            if pts:
                ax.errorbar([p + 0.4 * (k - 2) for p, _ in pts], [m["mean"] for _, m in pts],
                            yerr=[m["std"] for _, m in pts], fmt=style, capsize=3, label=method.replace("_", " "))
        if rows and "full_data" in rows[0]:
            ax.axhline(rows[0]["full_data"]["mean"], color="k", lw=1, ls=":", label="full data")
        sizes = sorted({r["per_class"] for r in rows})
        if sizes:
            ax.set_xticks(sizes)
            ax.set_xlim(min(sizes) - 5, max(sizes) + 5)
        ax.set_xlabel("samples per class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model.replace(':', chr(10))} on gsc-dev", fontsize=9 if ":" in model else None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
