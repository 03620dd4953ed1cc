"""What a coreset is worth: nets trained on it against the same nets on random real clips and on all the data.

For every dataset, net, size (samples per class) and seed it trains the finite net on

* ``coreset_kd``  the RFAD-distilled inputs, every augmented view labelled by the teacher on the fly
                  (``edgekws distill --labels teacher``, the shipped recipe);
* ``random_kd``   random real clips of the same size with exactly the same teacher recipe: the fair baseline
                  for the *inputs* (distilled vs real);
* ``random_ce``   the same random real clips with their hard labels and cross-entropy (a person's labels);
* ``rfad_mse``    the RFAD inputs with their learned KRR labels, regression loss (``--labels rfad``);
* ``tcoreset_kd``  RFAD with the teacher in the loop: the coreset's labels are the teacher's probabilities of its
                  current inputs and KRR must reproduce the teacher's probabilities on the real clips (``distill(...,
                  label_fn=...)``), then the teacher recipe;
* ``kmedoids_kd`` real clips chosen by k-medoids in the teacher's embedding (the most representative clips of
                  each class) with the teacher recipe: selection instead of synthesis;
* ``random_kd_spec`` ``random_kd`` with the spectral augmentation (gain, noise, mel warp, speaking rate done on the
                  log-mel spectrum, ``AugmentConfig.spec_*``) added to the views the teacher labels;
* ``full``        the teacher itself: the same net trained on the whole training split (waveform augmentation).

Every net trains until validation accuracy stops improving ("plateau" schedule: the learning rate is cut when
validation stalls, training stops after ``--patience`` epochs without a better one); the epochs used are reported,
so that "trains faster" and "learns more" are told apart. The teacher of seed ``s`` is the full-data net of seed
``s``; its temperature is fitted on the validation split.

    python benchmarks/coreset_bench.py --dataset gsc --data-dir ../shared/data/gsc-dev --per-class 10,20,50
    python benchmarks/coreset_bench.py --dataset us8k --data-dir ../shared/data/us8k-dev --per-class 10,20

A dataset with a single fold (``us8k-dev`` holds official fold 1 only) is split recording-disjoint by a hash of
the group id (70 / 15 / 15 %). Writes ``benchmarks/results/<name>.json|md|png``; resumable (finished cases in
``<runs>/cases.jsonl``, teachers and coresets cached in ``<runs>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekws.datasets import load_dataset
from edgekws.features import FeatureConfig
from edgekws.server.data import prepare, split_by_group_hash
from edgekws.server.evaluate import mean_std
from edgekws.server.pipeline import run_environment, train_on_dataset, write_json
from edgekws.server.rfad import Coreset, RFADConfig, distill, random_real_coreset
from edgekws.server.teacher import distillation_train_config, fit_temperature, teacher_soft_labels
from edgekws.server.train import TrainConfig, evaluate, load_checkpoint, predict_logits, train_model

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("coreset_kd", "random_kd", "random_ce", "rfad_mse", "tcoreset_kd", "kmedoids_kd", "random_kd_spec")
STYLE = {"coreset_kd": "o-", "random_kd": "s--", "random_ce": "^:", "rfad_mse": "D-.", "tcoreset_kd": "P-", "kmedoids_kd": "v-",
         "random_kd_spec": "x--"}
SPECTRAL = dict(spec_gain_db=6.0, spec_noise_prob=0.5, spec_warp=0.08, spec_stretch=0.12)


def kmedoids_selection(teacher: torch.nn.Module, x: np.ndarray, y: np.ndarray, per_class: int) -> np.ndarray:
    """Row indices: ``per_class`` k-medoids per class in the teacher's (L2-normalised) penultimate space."""
    from edgekws.server.speech_head import _kmedoids

    teacher.eval()
    with torch.no_grad():
        z = torch.cat([teacher.embed(torch.from_numpy(np.ascontiguousarray(x[i:i + 512])))
                       for i in range(0, len(x), 512)]).numpy()
    z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-8)
    return np.concatenate([np.flatnonzero(y == c)[_kmedoids(z[y == c], per_class)] for c in np.unique(y)])


def rfad_config(per_class: int, seed: int, args: argparse.Namespace) -> RFADConfig:
    """``edgekws distill --budget fast`` settings."""
    from edgekws.server.budgets import rfad_settings

    return RFADConfig(**{**rfad_settings(args.budget), "per_class": per_class, "seed": seed,
                         "threads": args.threads})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gsc")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--models", default="cnn4")
    ap.add_argument("--teacher-model", default="", help="net trained on full data as teacher (default: the net)")
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--teacher-seed", type=int, default=None,
                    help="one teacher (this seed) for every seed; default: the teacher of each seed")
    ap.add_argument("--per-class", default="10,20,50")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--max-epochs", type=int, default=80)
    ap.add_argument("--patience", type=int, default=12)
    ap.add_argument("--budget", default="fast", help="distillation budget of the coresets")
    ap.add_argument("--runs", type=Path, default=Path("runs/coreset_bench"))
    ap.add_argument("--name", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--distill-only", action="store_true", help="only make (and cache) the coresets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = args.name or f"coreset_{args.dataset}"

    ds = load_dataset(args.dataset, args.data_dir)
    if len(set(ds.folds.tolist())) == 1:
        ds = split_by_group_hash(ds)
    prep = prepare(ds, FeatureConfig(normalization="global", clip_seconds=ds.clip_seconds))
    _, xtr, ytr = prep.subset("train")
    _, xv, yv = prep.subset("val")
    _, xt, yt = prep.subset("test")
    c = prep.n_classes
    runs = args.runs
    runs.mkdir(parents=True, exist_ok=True)
    cases_file = runs / "cases.jsonl"
    done: dict[tuple, dict] = {}
    if cases_file.is_file():
        for line in cases_file.read_text().splitlines():
            if line.strip():
                case = json.loads(line)
                done[(case["model"], case["per_class"], case["seed"], case["method"])] = case

    def record(case: dict) -> None:
        done[(case["model"], case["per_class"], case["seed"], case["method"])] = case
        with cases_file.open("a") as fh:
            fh.write(json.dumps(case) + "\n")
        print(json.dumps({k: v for k, v in case.items() if k != "history"}), flush=True)

    teachers: dict[tuple[str, int], tuple[torch.nn.Module, float]] = {}

    def teacher(model: str, seed: int) -> tuple[torch.nn.Module, float]:
        key = (model, seed)
        if key not in teachers:
            run = runs / f"teacher_{model}_s{seed}"
            t0 = time.perf_counter()
            if not (run / "model.pt").is_file():
                print(f"training the full-data {model} teacher, seed {seed}", flush=True)
                train_on_dataset(ds, prep.feature_cfg, TrainConfig(model=model, epochs=args.teacher_epochs,
                                                                   seed=seed, threads=args.threads),
                                 run, prepared=prep, resume=True)
            net, fcfg, _, blob = load_checkpoint(run / "model.pt")
            if fcfg != prep.feature_cfg:
                raise SystemExit(f"{run}: teacher was trained with other features or another split")
            temp = fit_temperature(predict_logits(net, xv), yv)
            teachers[key] = (net, temp)
            if ("full:" + model, 0, seed, "full") not in done:
                record({"model": "full:" + model, "per_class": 0, "seed": seed, "method": "full",
                        "test_accuracy": 100 * evaluate(net, xt, yt, c)["accuracy"],
                        "epochs_run": blob["metrics"].get("epochs_run"), "best_epoch": blob["metrics"].get("best_epoch"),
                        "temperature": temp, "train_seconds": blob["metrics"].get("train_seconds", time.perf_counter() - t0)})
        return teachers[key]

    coresets: dict[tuple[int, int], Coreset] = {}

    def coreset(pc: int, seed: int) -> Coreset:
        if (pc, seed) not in coresets:
            path = runs / f"coreset_pc{pc}_s{seed}.npz"
            if not path.is_file():
                t0 = time.perf_counter()
                core = distill(xtr, ytr, xv, yv, prep.class_names, prep.feature_cfg, rfad_config(pc, seed, args),
                               source_fingerprint=ds.fingerprint(), checkpoint_path=runs / f"rfad_pc{pc}_s{seed}.pt",
                               resume=True)
                core.save(path)
                print(f"distilled {pc}/class seed {seed} in {time.perf_counter() - t0:.0f} s: KRR val "
                      f"{100 * core.metrics['init_val_accuracy']:.1f} -> {100 * core.metrics['val_accuracy']:.1f} %",
                      flush=True)
            coresets[(pc, seed)] = Coreset.load(path)
        return coresets[(pc, seed)]

    tcoresets: dict[tuple[int, int], Coreset] = {}

    def tcoreset(pc: int, seed: int, net: torch.nn.Module, temp: float) -> Coreset:
        """RFAD with the teacher labelling the moving coreset (cached like the plain coresets)."""
        if (pc, seed) not in tcoresets:
            path = runs / f"tcoreset_pc{pc}_s{seed}.npz"
            if not path.is_file():
                t0 = time.perf_counter()
                net.eval()
                for prm in net.parameters():
                    prm.requires_grad_(False)

                def label_fn(x: torch.Tensor) -> torch.Tensor:
                    return torch.softmax(net(x) / temp, dim=1)

                core = distill(xtr, ytr, xv, yv, prep.class_names, prep.feature_cfg, rfad_config(pc, seed, args),
                               source_fingerprint=ds.fingerprint(), real_targets=teacher_soft_labels(net, xtr, temp),
                               label_fn=label_fn, checkpoint_path=runs / f"trfad_pc{pc}_s{seed}.pt", resume=True)
                core.labels, core.label_temperature = "teacher", temp
                core.save(path)
                print(f"distilled {pc}/class seed {seed} with the teacher in the loop in "
                      f"{time.perf_counter() - t0:.0f} s: KRR val {100 * core.metrics['init_val_accuracy']:.1f} -> "
                      f"{100 * core.metrics['val_accuracy']:.1f} %", flush=True)
            tcoresets[(pc, seed)] = Coreset.load(path)
        return tcoresets[(pc, seed)]

    methods = [m for m in args.methods.split(",") if m]
    if set(methods) - set(METHODS):
        ap.error(f"unknown methods {sorted(set(methods) - set(METHODS))}; choose from {METHODS}")
    if args.distill_only:
        for seed in (int(s) for s in args.seeds.split(",")):
            for pc in (int(p) for p in args.per_class.split(",")):
                coreset(pc, seed)
        return
    if not args.report_only:
        for model in args.models.split(","):
            tmodel = args.teacher_model or model
            for seed in (int(s) for s in args.seeds.split(",")):
                for pc in (int(p) for p in args.per_class.split(",")):
                    for method in methods:
                        if (model, pc, seed, method) in done:
                            continue
                        kd = "_kd" in method
                        tseed = seed if args.teacher_seed is None else args.teacher_seed
                        net, temp = teacher(tmodel, tseed) if kd else (None, 1.0)
                        xr, yr = random_real_coreset(xtr, ytr, pc, seed=seed, n_classes=c)
                        cfg = distillation_train_config(model, epochs=args.max_epochs, patience=args.patience,
                                                        seed=seed, temperature=temp)
                        if method == "coreset_kd":
                            x, y = coreset(pc, seed).x, teacher_soft_labels(net, coreset(pc, seed).x, temp)
                        elif method in ("random_kd", "random_kd_spec"):
                            x, y = xr, teacher_soft_labels(net, xr, temp)
                            if method == "random_kd_spec":
                                cfg.augment = dataclasses.replace(cfg.augment, **SPECTRAL)
                        elif method == "tcoreset_kd":
                            x = tcoreset(pc, seed, net, temp).x
                            y = teacher_soft_labels(net, x, temp)
                        elif method == "kmedoids_kd":
                            x = xtr[kmedoids_selection(net, xtr, ytr, pc)]
                            y = teacher_soft_labels(net, x, temp)
                        else:  # the small-set recipe with a person's or the kernel's labels: no teacher views
                            cfg.augment = dataclasses.replace(cfg.augment, cutmix=0.0, mixup=0.0)
                            if method == "random_ce":
                                x, y = xr, yr.argmax(1)
                            else:
                                x, y = coreset(pc, seed).x, coreset(pc, seed).y
                                cfg.loss = "mse"
                        cfg.threads = args.threads
                        t0 = time.perf_counter()
                        res = train_model(x, y, xv, yv, prep.feature_cfg, c, cfg, inputs="features",
                                          teacher=net if kd else None, noise=prep.noise)
                        case = {"model": model, "per_class": pc, "seed": seed, "method": method,
                                "teacher": tmodel if kd else None, "teacher_seed": tseed if kd else None,
                                "teacher_temperature": temp if kd else None,
                                "test_accuracy": 100 * evaluate(res.model, xt, yt, c)["accuracy"],
                                "val_accuracy": 100 * res.best_val_accuracy, "epochs_run": len(res.history),
                                "best_epoch": res.best_epoch, "train_seconds": time.perf_counter() - t0}
                        if method in ("coreset_kd", "rfad_mse", "tcoreset_kd"):
                            m = (tcoreset(pc, seed, net, temp) if method == "tcoreset_kd" else coreset(pc, seed)).metrics
                            case.update(krr_val_init=m["init_val_accuracy"], krr_val=m["val_accuracy"],
                                        distill_steps=m["steps"], distill_seconds=m["seconds"])
                        record(case)
    write_report(name, args, ds, prep, list(done.values()))


def _summary(cases: list[dict]) -> list[dict]:
    full = {}
    for case in cases:
        if case["method"] == "full":
            full.setdefault(case["model"].split(":", 1)[1], []).append(case["test_accuracy"])
    rows = []
    for model in sorted({c["model"] for c in cases if c["method"] != "full"}):
        for pc in sorted({c["per_class"] for c in cases if c["model"] == model}):
            row: dict[str, Any] = {"model": model, "per_class": pc}
            for method in METHODS:
                sel = [c for c in cases if c["model"] == model and c["per_class"] == pc and c["method"] == method]
                if sel:
                    row[method] = mean_std([c["test_accuracy"] for c in sel], scale=1.0)
                    row[method]["epochs"] = statistics.mean(c["epochs_run"] for c in sel)
                    row[method]["best_epoch"] = statistics.mean(c["best_epoch"] for c in sel)
            teacher = next((c["teacher"] for c in cases if c["model"] == model and c.get("teacher")), model)
            if teacher in full:
                row["full"] = mean_std(full[teacher], scale=1.0)
                row["full_model"] = teacher
                for method in METHODS:
                    if method in row:
                        row[f"ratio_{method}"] = row[method]["mean"] / row["full"]["mean"]
            if "coreset_kd" in row and "random_kd" in row:
                row["gain_inputs"] = row["coreset_kd"]["mean"] - row["random_kd"]["mean"]
            if "coreset_kd" in row and "random_ce" in row:
                row["gain_over_ce"] = row["coreset_kd"]["mean"] - row["random_ce"]["mean"]
            rows.append(row)
    return rows


def write_report(name: str, args: argparse.Namespace, ds, prep, cases: list[dict]) -> None:
    rows = _summary(cases)
    env = run_environment()
    sp = {k: int(len(getattr(prep.split, k))) for k in ("train", "val", "test")}
    krr = {(c["per_class"], c["seed"]): (c["krr_val_init"], c["krr_val"]) for c in cases
           if "krr_val" in c and c["method"] != "tcoreset_kd"}
    report = {"environment": env, "dataset": ds.name, "split": sp, "budget": args.budget,
              "max_epochs": args.max_epochs, "patience": args.patience, "summary": rows, "cases": cases}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{name}.json", report)

    def cell(r: dict, k: str) -> str:
        if k not in r:
            return "–"
        return f"{r[k]['mean']:.2f} ± {r[k]['std']:.2f} (n={r[k]['n']}, {r[k]['epochs']:.0f} ep)"

    lines = [
        f"# Coresets on {ds.name}: what a net trained on them reaches", "",
        f"Split {sp['train']} / {sp['val']} / {sp['test']} clips (train / val / test), {prep.n_classes} classes, "
        f"global MFCC normalisation fitted on train. Coresets: RFAD, `--budget {args.budget}` settings, initialised "
        f"from random real clips of each class. Teacher: the net trained on the whole training split "
        f"({args.teacher_epochs} epochs, waveform augmentation; the `full` column), temperature fitted on val. Every "
        f"small-set net trains until validation stops improving (plateau schedule, patience {args.patience} epochs "
        f"of 12 batches, at most {args.max_epochs}); `ep` is the mean number of epochs run. Test accuracy %, "
        f"mean ± std over seeds. Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']}.", "",
    ]
    names = {"coreset_kd": "RFAD coreset + teacher", "random_kd": "random real + teacher",
             "random_ce": "random real, hard labels (CE)", "rfad_mse": "RFAD coreset, its labels (MSE)",
             "tcoreset_kd": "RFAD with teacher in the loop + teacher",
             "kmedoids_kd": "k-medoids real + teacher", "random_kd_spec": "random real + teacher, spectral aug."}
    present = [m for m in METHODS if any(m in r for r in rows)]
    lines += ["| net | per class | " + " | ".join(names[m] for m in present)
              + " | full data (teacher) | coreset / full | random + teacher / full | distilled − random inputs |",
              "|---|---|" + "---|" * (len(present) + 4)]
    for r in rows:
        ratio = lambda m: f"{r[f'ratio_{m}']:.3f}" if f"ratio_{m}" in r else "–"  # noqa: E731
        gain = f"{r['gain_inputs']:+.2f}" if "gain_inputs" in r else "–"
        full = f"{r['full']['mean']:.2f} ± {r['full']['std']:.2f} ({r['full_model']})" if "full" in r else "–"
        lines.append(f"| {r['model']} | {r['per_class']} | " + " | ".join(cell(r, m) for m in present)
                     + f" | {full} | {ratio('coreset_kd')} | {ratio('random_kd')} | {gain} |")
    if krr:
        lines += ["", "KRR validation accuracy of the coresets (held-out random nets), initialisation -> distilled: "
                  + ", ".join(f"{pc}/class s{s}: {100 * a:.1f} -> {100 * b:.1f} %" for (pc, s), (a, b)
                              in sorted(krr.items()))]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(rows, RESULTS / f"{name}.png", ds.name)
    print("\n".join(lines))


def plot(rows: list[dict], path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekws.plots import save_figure

    models = sorted({r["model"] for r in rows})
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        sel = sorted((r for r in rows if r["model"] == model), key=lambda r: r["per_class"])
        for k, method in enumerate(METHODS):
            pts = [(r["per_class"], r[method]) for r in sel if method in r]
            if pts:
                ax.errorbar([p * (1 + 0.03 * (k - 1.5)) for p, _ in pts], [m["mean"] for _, m in pts],
                            yerr=[m["std"] for _, m in pts], fmt=STYLE[method], capsize=3,
                            label=method.replace("_", " "))
        if sel and "full" in sel[0]:
            ax.axhline(sel[0]["full"]["mean"], color="k", lw=1, ls=":", label="full data (teacher)")
        ax.set_xscale("log")
        ax.set_xticks([r["per_class"] for r in sel], [str(r["per_class"]) for r in sel])
        ax.set_xlabel("samples per class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model} on {dataset}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
