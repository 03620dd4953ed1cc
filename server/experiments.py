"""The paper's comparison, reproduced by one call: active-learning baselines against RFAD coresets.

For every test fold (cross-validated datasets) or seed (fixed splits) this runs

* the four pool-based active-learning baselines (:mod:`edgekws.server.active_learning`) from a common
  class-balanced seed set up to the largest budget, testing a net at the coreset sizes (20/30/50 per class, in
  total samples) and at 10-60 % of the training pool;
* RFAD coresets of 20/30/50 samples per class (distilled here, or reused from earlier runs when their features and
  split match) and the same net trained on each with its learned labels;
* optionally the same net trained on the whole pool with the same recipe (the 100 % point);

and writes a Table-1/2/3-style markdown report (method, labelled samples, % of the pool, test accuracy mean ± std
over folds and seeds, the paper's published number beside ours where the paper gives one), the same as JSON, and a
plot of accuracy against the labelled percentage (log x) with the coresets as points.

Every finished case is kept under ``work_dir`` (AL state files, coresets, one JSON per trained case), so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from edgekws.datasets import Dataset
from edgekws.features import FeatureConfig
from edgekws.fileio import atomic_write_bytes, atomic_write_json
from edgekws.server.active_learning import (
    LABELS,
    STRATEGIES,
    ALConfig,
    canonical_strategy,
    run_active_learning,
    small_set_train_config,
)
from edgekws.server.data import Prepared, prepare
from edgekws.server.evaluate import mean_std
from edgekws.server.rfad import Coreset, RFADConfig, distill, random_real_coreset
from edgekws.server.train import evaluate, train_model

__all__ = [
    "PAPER",
    "ExperimentConfig",
    "budget_points",
    "calls_clock",
    "quick_config",
    "run_experiment",
    "write_report",
    "load_reference",
]

Progress = Callable[[dict[str, Any]], None]

# Published test accuracies (%) of Gudur & Thomaz, "Dataset distillation as a data-efficient alternative to active
# learning": ResNet-18 trained on an RFAD coreset of 50 samples per class, and on the full training data.
PAPER: dict[str, dict[str, float]] = {
    "gsc": {"rfad_50": 72.24, "full": 89.92},
    "us8k": {"rfad_50": 61.67, "full": 79.27},
    "esc50": {"rfad_50": 49.65, "full": 69.36},
}
PAPER_MODEL = "resnet18"
PAPER_CITATION = "Gudur & Thomaz, dataset distillation as a data-efficient alternative to active learning (ResNet-18)"


def _default_rfad() -> RFADConfig:
    """The settings ``edgekws distill`` uses by default."""
    return RFADConfig(steps=50, n_models=4, pool_size=16, width=32, lr=3e-2, label_lr=3e-2, patience=4)


@dataclass
class ExperimentConfig:
    """What :func:`run_experiment` runs.

    Attributes:
        model: finite net trained in every case (``cnn4``, ``resnet18``, ...).
        model_kwargs: its constructor arguments (default: the registry's).
        strategies: active-learning baselines.
        folds: test folds of a cross-validated dataset (None: all of them); must be None for fixed splits.
        seeds: seeds per fold (seed set, acquisition ties, dropout masks, training, coreset).
        per_class: coreset sizes in samples per class; also AL budgets (``per_class * n_classes`` samples).
        fractions: AL budgets as fractions of the training pool.
        seed_per_class: initial labelled set of every AL run, per class.
        max_batch: most samples acquired between two retrains (0: straight to the next budget).
        epochs, min_steps_per_epoch, batch_size: the small-set training recipe, the same for every case
            (cross-entropy for real labelled samples, MSE for coresets' learned labels).
        mc_passes: MC-dropout passes of the uncertainty strategies.
        rfad: distillation settings (``per_class`` and ``seed`` are set per case).
        coreset_dirs: folders searched for finished coresets ``coreset[_f<fold>]_pc<P>_s<S>.npz`` before
            distilling; one is used only when its classes and fitted FeatureConfig equal this split's.
        random_mse: also train on class-balanced random real samples of every coreset size with one-hot MSE, the
            coreset's own recipe (the fair baseline for RFAD: the recipe alone is worth points on small sets).
        full_data: also train on the whole pool with the same recipe (the 100 % point).
        normalization: feature normalisation ("global": statistics of the training split).
        device, threads: torch device and CPU threads.
        quick: recorded in the report (set by :func:`quick_config`).
    """

    model: str = "cnn4"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    strategies: tuple[str, ...] = STRATEGIES
    folds: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    per_class: tuple[int, ...] = (20, 30, 50)
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    seed_per_class: int = 10
    max_batch: int = 0
    epochs: int = 30
    min_steps_per_epoch: int = 12
    batch_size: int = 64
    mc_passes: int = 20
    rfad: RFADConfig = field(default_factory=_default_rfad)
    coreset_dirs: tuple[str, ...] = ()
    random_mse: bool = True
    full_data: bool = True
    normalization: str = "global"
    device: str = "auto"
    threads: int | None = 1
    quick: bool = False

    def __post_init__(self) -> None:
        self.strategies = tuple(canonical_strategy(s) for s in self.strategies)
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies repeat: {self.strategies}")
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds:
            raise ValueError("give at least one seed")
        self.per_class = tuple(sorted({int(p) for p in self.per_class}))
        self.fractions = tuple(sorted({float(f) for f in self.fractions}))
        if any(p < 1 for p in self.per_class):
            raise ValueError(f"per-class sizes must be positive, got {self.per_class}")
        if any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must lie in (0, 1], got {self.fractions}")
        if not self.per_class and not self.fractions:
            raise ValueError("nothing to measure: give per-class sizes or fractions")
        if self.folds is not None:
            self.folds = tuple(str(f) for f in self.folds)
            if not self.folds:
                raise ValueError("--folds is empty")
        if self.seed_per_class < 1:
            raise ValueError(f"seed_per_class must be >= 1, got {self.seed_per_class}")
        if self.per_class and self.seed_per_class > min(self.per_class):
            raise ValueError(f"the AL seed set ({self.seed_per_class}/class) must not exceed the smallest coreset "
                             f"size ({min(self.per_class)}/class)")
        for name in ("epochs", "min_steps_per_epoch", "batch_size", "mc_passes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if "bald" in self.strategies and self.mc_passes < 2:
            raise ValueError("BALD needs mc_passes >= 2")
        self.coreset_dirs = tuple(str(d) for d in self.coreset_dirs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rfad"] = self.rfad.to_dict()
        return d

    def train_config(self, seed: int, loss: str):
        cfg = small_set_train_config(self.model, epochs=self.epochs, seed=seed, loss=loss,
                                     min_steps_per_epoch=self.min_steps_per_epoch, device=self.device,
                                     model_kwargs=self.model_kwargs)
        cfg.batch_size = self.batch_size
        cfg.threads = self.threads
        return cfg


def quick_config(model: str = "cnn4", *, cross_validated: bool = False, **overrides: Any) -> ExperimentConfig:
    """A small version that runs in minutes on 2 CPU cores (per dataset of a few thousand clips).

    Two seeds (fixed split) or the first two folds with one seed (cross-validation); coreset sizes and budgets 20
    and 50 per class only (no pool fractions); seed set 10 per class; 8 epochs of at least 12 steps of 32; 10 MC
    passes; RFAD with 10 steps of 2 of 4 random nets on 1,000 real clips; no full-data run. About 25 min for the
    Speech Commands subset (2,509 pool clips) with CNN-4 on one shared CPU thread.
    """
    base: dict[str, Any] = dict(
        model=model, seeds=(0,) if cross_validated else (0, 1), folds=("1", "2") if cross_validated else None,
        per_class=(20, 50), fractions=(), seed_per_class=10, epochs=8, min_steps_per_epoch=12, batch_size=32,
        mc_passes=10, full_data=False, quick=True,
        rfad=RFADConfig(steps=10, n_models=2, pool_size=4, width=32, lr=3e-2, label_lr=3e-2, batch_size=1000,
                        eval_every=5, patience=2),
    )
    base.update(overrides)
    return ExperimentConfig(**base)


# Helpers ---------------------------------------------------------------------------------------------------


def budget_points(per_class: Sequence[int], fractions: Sequence[float], n_classes: int,
                  n_pool: int) -> tuple[dict[int, list[str]], list[int]]:
    """Labelled-set sizes and the table points each stands for (``pc<P>``, ``frac<F>``), and skipped per-class sizes.

    A fraction whose size lies within 1 % of the pool of a per-class size shares that size (20 % of 2,509 clips
    is 502, 50/class of 10 classes is 500: one net, reported with its true percentage), so no net is trained twice
    for nearly the same budget.
    """
    points: dict[int, list[str]] = {}
    skipped = []
    for p in per_class:
        if p * n_classes <= n_pool:
            points.setdefault(p * n_classes, []).append(f"pc{p}")
        else:
            skipped.append(p)
    for f in fractions:
        size = max(1, int(round(f * n_pool)))
        near = [s for s in points if any(k.startswith("pc") for k in points[s]) and abs(s - size) <= 0.01 * n_pool]
        points.setdefault(min(near, key=lambda s: abs(s - size)) if near else size, []).append(f"frac{f:g}")
    return points, skipped


def _is_cross_validated(ds: Dataset) -> bool:
    return not set(np.asarray(ds.folds).tolist()) <= {"train", "val", "test"}


def _fold_names(ds: Dataset) -> list[str]:
    names = sorted(set(np.asarray(ds.folds).tolist()), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else s))
    return names


def _tag(fold: str | None) -> str:
    return f"_f{fold}" if fold is not None else ""


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None  # a torn file cannot exist (atomic writes); anything unreadable is recomputed


def load_reference(path: str | os.PathLike) -> dict[str, Any]:
    """A full-data reference from a baselines JSON (``benchmarks/baselines.py``): mean ± std test accuracy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference not found: {path}")
    try:
        blob = json.loads(path.read_text())
        row = blob["summary"][0]
        test = row["test"]
        return {"mean": float(test["mean"]), "std": float(test["std"]), "n": len(test.get("runs", [])),
                "model": row.get("model"), "epochs": blob.get("epochs"), "source": str(path)}
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: not a baselines result ({exc.__class__.__name__}: {exc})") from None


def _find_coreset(cfg: ExperimentConfig, prep: Prepared, fold: str | None, pc: int, seed: int,
                  own: Path) -> tuple[Coreset | None, str | None, list[str]]:
    """A finished coreset for this case, searched in ``own`` first, then ``cfg.coreset_dirs``."""
    notes = []
    names = [f"coreset{_tag(fold)}_pc{pc}_s{seed}.npz"] + ([f"coreset_pc{pc}_s{seed}.npz"] if fold is None else [])
    for folder in [own, *map(Path, cfg.coreset_dirs)]:
        for name in names:
            path = folder / name
            if not path.is_file():
                continue
            try:
                core = Coreset.load(path)
            except ValueError as exc:
                notes.append(f"skipped {path}: {exc}")
                continue
            counts = np.bincount(core.hard_labels, minlength=core.n_classes)
            if tuple(core.class_names) != prep.class_names:
                notes.append(f"skipped {path}: other classes")
            elif core.feature_config != prep.feature_cfg:
                notes.append(f"skipped {path}: other features or another training split")
            elif len(core.x) != pc * prep.n_classes:
                notes.append(f"skipped {path}: {len(core.x)} samples, not {pc}/class (counts {counts.tolist()})")
            else:
                return core, str(path), notes
    return None, None, notes


# The run ---------------------------------------------------------------------------------------------------


def run_experiment(
    ds: Dataset,
    cfg: ExperimentConfig,
    work_dir: str | os.PathLike,
    *,
    reference: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every case (resuming finished ones from ``work_dir``) and return the report dict.

    ``reference``: an optional full-data result to show beside ours (see :func:`load_reference`).
    Progress events: ``{"event": "experiment", "done", "total", "case"}`` per finished case, plus the AL runs'
    ``al_round`` / ``al_score`` / ``al_epoch`` events and the distillation's ``distill`` events.
    """
    from edgekws.server.pipeline import run_environment

    t_start = time.perf_counter()
    t_wall = time.time()  # this call's start on the clock its end is read from, so consecutive calls never overlap
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    cv = _is_cross_validated(ds)
    if cv:
        available = _fold_names(ds)
        folds: list[str | None] = list(cfg.folds or available)
        unknown = [f for f in folds if f not in available]
        if unknown:
            raise ValueError(f"{ds.name}: no fold {unknown[0]!r}; folds are {available}")
        if len(available) < 3:
            raise ValueError(f"{ds.name}: cross-validation needs at least 3 folds (train, val, test), has {available}")
    else:
        if cfg.folds is not None:
            raise ValueError(f"{ds.name} has a fixed train/val/test split: --folds applies to cross-validated "
                             "datasets (us8k, esc50)")
        folds = [None]
    work = Path(work_dir)
    for sub in ("al", "cases", "coresets"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    feature_cfg = FeatureConfig(normalization=cfg.normalization, clip_seconds=ds.clip_seconds)
    n_cases = len(folds) * len(cfg.seeds) * (len(cfg.strategies) + len(cfg.per_class) * (1 + int(cfg.random_mse))
                                             + int(cfg.full_data))
    done = 0
    notes: list[str] = []
    al_runs, rfad_runs, random_runs, full_runs, splits = [], [], [], [], {}

    # One record per call that worked on this folder, updated after every case: calls on disjoint seeds or folds
    # may run side by side (every case has its own files), and the wall time is the union of their intervals.
    (work / "calls").mkdir(exist_ok=True)
    clock_path = work / "calls" / f"{int(t_wall * 1000)}-{os.getpid()}.json"

    def stamp() -> None:
        atomic_write_json(clock_path, {"start": t_wall, "seconds": time.time() - t_wall})

    def tick(case: str) -> None:
        nonlocal done
        done += 1
        stamp()
        if progress:
            progress({"event": "experiment", "done": done, "total": n_cases, "case": case})

    for fold in folds:
        prep = prepare(ds, feature_cfg, test_fold=fold, cache_dir=cache_dir,
                       progress=(lambda s, d, t: progress({"event": s, "done": d, "total": t})) if progress else None)
        _, xtr, ytr = prep.subset("train")
        _, xv, yv = prep.subset("val")
        _, xt, yt = prep.subset("test")
        c, n_pool = prep.n_classes, len(ytr)
        splits[str(fold)] = {"train": n_pool, "val": int(len(yv)), "test": int(len(yt))}
        if len(yt) == 0:
            raise ValueError(f"{ds.name}: the test split{' of fold ' + fold if fold else ''} is empty")
        points, skipped = budget_points(cfg.per_class, cfg.fractions, c, n_pool)
        notes.extend(f"fold {fold}: {p}/class = {p * c} samples exceeds the pool of {n_pool}; skipped"
                     for p in skipped)
        budgets = tuple(sorted(points))
        seed_size = min(cfg.seed_per_class * c, budgets[0])
        xv_, yv_ = (xv, yv) if len(yv) else (None, None)
        for seed in cfg.seeds:
            shared: dict[str, Any] = {}
            for strategy in cfg.strategies:
                acfg = ALConfig(strategy=strategy, budgets=budgets, seed_size=seed_size, max_batch=cfg.max_batch,
                                mc_passes=cfg.mc_passes, seed=seed, train=cfg.train_config(0, "ce"))
                res = run_active_learning(xtr, ytr, xv_, yv_, xt, yt, prep.feature_cfg, c, acfg,
                                          state_path=work / "al" / f"{strategy}{_tag(fold)}_s{seed}.json",
                                          progress=progress, first_round=shared)
                for rec in res.at_budgets():
                    for key in points[rec["labelled"]]:
                        al_runs.append({"method": strategy, "point": key, "fold": fold, "seed": seed,
                                        "labelled": rec["labelled"], "percent": 100.0 * rec["fraction"],
                                        "test_accuracy": 100.0 * rec["test_accuracy"]})
                tick(f"{LABELS[strategy]} fold {fold} seed {seed}" if cv else f"{LABELS[strategy]} seed {seed}")
            for pc in cfg.per_class:
                if pc * c > n_pool:
                    continue
                case_path = work / "cases" / f"rfad{_tag(fold)}_pc{pc}_s{seed}.json"
                case = _read_json(case_path)
                if case is None:
                    core, source, found_notes = _find_coreset(cfg, prep, fold, pc, seed, work / "coresets")
                    notes.extend(found_notes)
                    t0 = time.perf_counter()
                    if core is None:
                        rcfg = dataclasses.replace(cfg.rfad, per_class=pc, seed=seed, threads=cfg.threads,
                                                   device=cfg.device)
                        core = distill(xtr, ytr, xv, yv, prep.class_names, prep.feature_cfg, rcfg,
                                       source_fingerprint=ds.fingerprint(),
                                       checkpoint_path=work / "coresets" / f"rfad{_tag(fold)}_pc{pc}_s{seed}.pt",
                                       resume=True, progress=progress)
                        path = core.save(work / "coresets" / f"coreset{_tag(fold)}_pc{pc}_s{seed}.npz")
                        source = f"distilled here ({path})"
                    distill_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    res = train_model(core.x, core.y, xv_, yv_, prep.feature_cfg, c, cfg.train_config(seed, "mse"),
                                      inputs="features")
                    acc = evaluate(res.model, xt, yt, c)["accuracy"]
                    m = core.metrics
                    case = {"method": "rfad", "point": f"pc{pc}", "fold": fold, "seed": seed,
                            "labelled": int(len(core.x)), "percent": 100.0 * len(core.x) / n_pool,
                            "test_accuracy": 100.0 * acc, "coreset": source,
                            "distill": {k: m.get(k) for k in ("steps", "seconds", "init_val_accuracy", "val_accuracy")},
                            "distill_seconds_here": distill_s, "train_seconds": time.perf_counter() - t0,
                            "rfad_config": core.config.to_dict()}
                    atomic_write_json(case_path, case)
                rfad_runs.append(case)
                tick(f"RFAD {pc}/class seed {seed}")
            for pc in cfg.per_class if cfg.random_mse else ():
                if pc * c > n_pool:
                    continue
                case_path = work / "cases" / f"random_mse{_tag(fold)}_pc{pc}_s{seed}.json"
                case = _read_json(case_path)
                if case is None:
                    t0 = time.perf_counter()
                    xr, yr = random_real_coreset(xtr, ytr, pc, seed=seed, n_classes=c)
                    res = train_model(xr, yr, xv_, yv_, prep.feature_cfg, c, cfg.train_config(seed, "mse"),
                                      inputs="features")
                    acc = evaluate(res.model, xt, yt, c)["accuracy"]
                    case = {"method": "random_mse", "point": f"pc{pc}", "fold": fold, "seed": seed,
                            "labelled": int(len(xr)), "percent": 100.0 * len(xr) / n_pool,
                            "test_accuracy": 100.0 * acc, "train_seconds": time.perf_counter() - t0}
                    atomic_write_json(case_path, case)
                random_runs.append(case)
                tick(f"random real (MSE) {pc}/class seed {seed}")
            if cfg.full_data:
                case_path = work / "cases" / f"full{_tag(fold)}_s{seed}.json"
                case = _read_json(case_path)
                if case is None:
                    t0 = time.perf_counter()
                    res = train_model(xtr, ytr, xv_, yv_, prep.feature_cfg, c, cfg.train_config(seed, "ce"),
                                      inputs="features")
                    acc = evaluate(res.model, xt, yt, c)["accuracy"]
                    case = {"method": "full", "point": "full", "fold": fold, "seed": seed, "labelled": n_pool,
                            "percent": 100.0, "test_accuracy": 100.0 * acc, "train_seconds": time.perf_counter() - t0}
                    atomic_write_json(case_path, case)
                full_runs.append(case)
                tick(f"full data seed {seed}")

    report = {
        "format": "edgekws-experiment", "version": 1, "dataset": ds.name, "model": cfg.model,
        "cross_validated": cv, "folds": [f for f in folds], "seeds": list(cfg.seeds), "splits": splits,
        "n_classes": len(ds.class_names), "class_names": list(ds.class_names), "config": cfg.to_dict(),
        "environment": run_environment(), "wall_seconds": time.perf_counter() - t_start,
        "paper": {"citation": PAPER_CITATION, "model": PAPER_MODEL, **PAPER.get(ds.name, {})},
        "reference": reference, "notes": notes,
        "runs": {"active_learning": al_runs, "rfad": rfad_runs, "random_mse": random_runs, "full": full_runs},
    }
    stamp()
    report.update(calls_clock(work))
    report["summary"] = summarise(report)
    return report


def calls_clock(work_dir: str | os.PathLike) -> dict[str, Any]:
    """Time spent on a work folder by every call of :func:`run_experiment`, finished or stopped.

    ``wall_seconds_all_calls``: the union of the calls' intervals (calls side by side count once);
    ``call_seconds_all_calls``: their sum; ``calls``: how many; ``calls_overlap``: whether any two overlapped.
    A folder written before per-call records existed keeps its total in ``elapsed.json``, counted as one call
    before all others.
    """
    work = Path(work_dir)
    spans = []
    for path in sorted((work / "calls").glob("*.json")):
        rec = _read_json(path)
        try:
            start, seconds = float(rec["start"]), float(rec["seconds"])
        except (TypeError, KeyError, ValueError):
            continue
        spans.append((start, start + max(seconds, 0.0)))
    legacy = _read_json(work / "elapsed.json")
    legacy_s = float(legacy.get("seconds", 0.0)) if isinstance(legacy, dict) else 0.0
    legacy_n = int(legacy.get("calls", 0)) if isinstance(legacy, dict) else 0
    wall, overlap, end = 0.0, False, float("-inf")
    for a, b in sorted(spans):
        if a < end:
            overlap = True
        wall += max(0.0, b - max(a, end))
        end = max(end, b)
    return {"wall_seconds_all_calls": legacy_s + wall,
            "call_seconds_all_calls": legacy_s + sum(b - a for a, b in spans),
            "calls": legacy_n + len(spans), "calls_overlap": overlap}


def summarise(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, point): labelled samples and % of the pool (means over runs), accuracy mean ± std."""
    runs = [r for kind in ("active_learning", "random_mse", "rfad", "full") for r in report["runs"].get(kind, [])]
    order_m = {m: i for i, m in enumerate((*STRATEGIES, "random_mse", "rfad", "full"))}

    def point_order(p: str) -> tuple[int, float]:
        if p.startswith("pc"):
            return 0, float(p[2:])
        if p.startswith("frac"):
            return 1, float(p[4:])
        return 2, 0.0

    rows = []
    for method, point in sorted({(r["method"], r["point"]) for r in runs},
                                key=lambda mp: (order_m.get(mp[0], 99), point_order(mp[1]))):
        sel = [r for r in runs if r["method"] == method and r["point"] == point]
        acc = mean_std([r["test_accuracy"] for r in sel], scale=1.0)
        rows.append({"method": method, "point": point, "labelled": statistics.mean(r["labelled"] for r in sel),
                     "percent": statistics.mean(r["percent"] for r in sel), "accuracy": acc})
    return rows


# The report ------------------------------------------------------------------------------------------------

_METHOD_NAMES = {**LABELS, "random_mse": "Random real, coreset recipe (MSE)", "rfad": "RFAD coreset",
                 "full": "Full data (same recipe)"}


def _point_name(point: str, n_classes: int) -> str:
    if point.startswith("pc"):
        return f"{point[2:]}/class"
    if point.startswith("frac"):
        return f"{100 * float(point[4:]):g} % of pool"
    return "all"


def _paper_value(report: dict[str, Any], method: str, point: str) -> float | None:
    paper = report.get("paper") or {}
    if method == "rfad" and point.startswith("pc"):
        return paper.get(f"rfad_{point[2:]}")
    if method == "full":
        return paper.get("full")
    return None


def _rfad_sentence(report: dict[str, Any]) -> str:
    """How the coresets in the report were made: from each RFAD case's own config (reused coresets keep theirs)."""

    def describe(r: dict[str, Any]) -> str:
        return (f"{r['steps']} steps max, {r['n_models']} of {r['pool_size']} random ConvNets (width {r['width']}) "
                f"per step, real batch {r['batch_size']}")

    cases = report["runs"].get("rfad", [])
    made = sorted({describe(c["rfad_config"]) for c in cases if c.get("rfad_config")})
    if not made:
        return f"RFAD: {describe(report['config']['rfad'])}."
    reused = sorted({str(Path(c["coreset"]).parent) for c in cases
                     if c.get("coreset") and not str(c["coreset"]).startswith("distilled here")})
    return ("RFAD: " + "; ".join(made) + "."
            + (f" Coresets reused from {', '.join(f'`{d}`' for d in reused)}." if reused else ""))


def _calls_phrase(report: dict[str, Any]) -> str:
    n = int(report.get("calls", 1))
    if n <= 1:
        return ""
    if report.get("calls_overlap"):
        return (f" over {n} calls, some side by side ({report['call_seconds_all_calls'] / 60:.1f} min of call time "
                "in all)")
    return f" over {n} calls (a rerun resumes finished cases)"


def report_markdown(report: dict[str, Any], *, title: str | None = None) -> str:
    cfg = report["config"]
    env = report["environment"]
    paper = report.get("paper") or {}
    runs_over = (f"{len(report['folds'])} test fold(s) {', '.join(map(str, report['folds']))} × seed(s) "
                 f"{', '.join(map(str, report['seeds']))}" if report["cross_validated"]
                 else f"seeds {', '.join(map(str, report['seeds']))}")
    split = "; ".join(f"fold {k}: {v['train']}/{v['val']}/{v['test']}" if report["cross_validated"]
                      else f"{v['train']}/{v['val']}/{v['test']}" for k, v in report["splits"].items())
    wall = report.get("wall_seconds_all_calls") or report.get("wall_seconds")
    lines = [
        f"# {title or 'Active learning vs RFAD coresets'}: {report['dataset']}, {report['model']}", "",
        f"Test accuracy %, mean ± std over {runs_over} (n = runs). Split train (pool)/val/test: {split}. "
        f"Every net: {report['model']}, {cfg['epochs']} epochs of at least {cfg['min_steps_per_epoch']} steps "
        f"(batch {cfg['batch_size']}), SpecAugment, best epoch on the validation split, cross-entropy on real "
        f"labelled samples, MSE on a coreset's learned labels (and, as RFAD's fair baseline, on one-hot labels of "
        f"class-balanced random real samples of the coreset's size). Active learning: class-balanced random seed set of "
        f"{cfg['seed_per_class']}/class, acquisition straight to each budget"
        + (f" in batches of at most {cfg['max_batch']}" if cfg["max_batch"] else "")
        + f", retrained from scratch every round; uncertainty from {cfg['mc_passes']} MC-dropout passes. "
        + _rfad_sentence(report),
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores (shared), torch {env['torch']}, {cfg['threads']} thread(s)."
        + (f" Wall time: {wall / 60:.1f} min" + _calls_phrase(report) + "." if wall else "")
        + (" Quick version (`--quick`): few epochs and budgets, numbers are indicative only." if cfg.get("quick")
           else ""),
        "",
        (f"Paper column: the published numbers of {paper.get('citation', PAPER_CITATION)}; the paper reports "
         f"{PAPER_MODEL} on the full dataset, so the distance to ours is a distance between setups too. "
         "Only the numbers the paper states for RFAD at 50/class and full data are given; its active-learning "
         "numbers are not copied here."),
        "",
        "| method | labelled | labelled samples | % of pool | test accuracy % | paper % |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["summary"]:
        a = row["accuracy"]
        pv = _paper_value(report, row["method"], row["point"])
        lines.append(f"| {_METHOD_NAMES.get(row['method'], row['method'])} | {_point_name(row['point'], 0)} | "
                     f"{row['labelled']:.0f} | {row['percent']:.2f} | {a['mean']:.2f} ± {a['std']:.2f} (n={a['n']}) | "
                     f"{f'{pv:.2f}' if pv is not None else '–'} |")
    ref = report.get("reference")
    if ref:
        pv = f"{paper['full']:.2f}" if "full" in paper else "–"
        lines.append(f"| Full data, reference run ({ref.get('model')}, {ref.get('epochs')} epochs, waveform "
                     f"augmentation; {ref.get('source')}) | all | – | 100 | {ref['mean']:.2f} ± {ref['std']:.2f} "
                     f"(n={ref['n']}) | {pv} |")
    if not any(r["method"] == "full" for r in report["summary"]) and "full" in paper and not ref:
        lines.append(f"| Full data | all | – | 100 | not run | {paper['full']:.2f} |")
    if not any(r["method"] == "rfad" and r["point"] == "pc50" for r in report["summary"]) and "rfad_50" in paper:
        lines.append(f"| RFAD coreset | 50/class | – | – | not run | {paper['rfad_50']:.2f} |")
    # the wide view: methods x budgets
    points = []
    for r in report["summary"]:
        if r["method"] != "full" and r["point"] not in points:
            points.append(r["point"])
    points.sort(key=lambda p: (0, float(p[2:])) if p.startswith("pc") else (1, float(p[4:])))
    if points:
        lines += ["", "Side by side (accuracy %, mean ± std):", "",
                  "| method | " + " | ".join(_point_name(p, 0) for p in points) + " |",
                  "|---|" + "---|" * len(points)]
        for method in (*STRATEGIES, "random_mse", "rfad"):
            cells = []
            for p in points:
                row = next((r for r in report["summary"] if r["method"] == method and r["point"] == p), None)
                cells.append(f"{row['accuracy']['mean']:.2f} ± {row['accuracy']['std']:.2f}" if row else "–")
            if any(c != "–" for c in cells):
                lines.append(f"| {_METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
    if report.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Accuracy vs % labelled samples (log x): AL curves with ± std bands, coresets and full data as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekws.plots import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {"random": "tab:gray", "entropy": "tab:blue", "variation_ratios": "tab:green", "bald": "tab:purple"}
    summary = report["summary"]
    for method in STRATEGIES:
        rows = sorted((r for r in summary if r["method"] == method), key=lambda r: r["percent"])
        if not rows:
            continue
        x = np.array([r["percent"] for r in rows])
        m = np.array([r["accuracy"]["mean"] for r in rows])
        s = np.array([r["accuracy"]["std"] for r in rows])
        ax.plot(x, m, "o-", color=colours[method], label=LABELS[method], ms=4)
        ax.fill_between(x, m - s, m + s, color=colours[method], alpha=0.12)
    rf = sorted((r for r in summary if r["method"] == "rfad"), key=lambda r: r["percent"])
    if rf:
        ax.errorbar([r["percent"] for r in rf], [r["accuracy"]["mean"] for r in rf],
                    yerr=[r["accuracy"]["std"] for r in rf], fmt="*", ms=13, color="tab:red", capsize=3,
                    label="RFAD coreset (ours)")
        for r in rf:
            ax.annotate(_point_name(r["point"], 0), (r["percent"], r["accuracy"]["mean"]), textcoords="offset points",
                        xytext=(6, -12), fontsize=8, color="tab:red")
    rm = sorted((r for r in summary if r["method"] == "random_mse"), key=lambda r: r["percent"])
    if rm:
        ax.errorbar([r["percent"] for r in rm], [r["accuracy"]["mean"] for r in rm],
                    yerr=[r["accuracy"]["std"] for r in rm], fmt="x", ms=8, color="tab:orange", capsize=3,
                    label="random real, coreset recipe (MSE)")
    full = [r for r in summary if r["method"] == "full"]
    if full:
        ax.errorbar([100.0], [full[0]["accuracy"]["mean"]], yerr=[full[0]["accuracy"]["std"]], fmt="s", ms=7,
                    color="black", capsize=3, label="full data (same recipe)")
    ref = report.get("reference")
    if ref:
        ax.errorbar([100.0], [ref["mean"]], yerr=[ref["std"]], fmt="D", ms=6, color="tab:brown", capsize=3,
                    label=f"full data, reference run ({ref.get('model')})")
    paper = report.get("paper") or {}
    pc50 = next((r for r in rf if r["point"] == "pc50"), None)
    if "rfad_50" in paper:
        x50 = pc50["percent"] if pc50 else None
        if x50 is not None:
            ax.plot([x50], [paper["rfad_50"]], marker="*", ms=14, mfc="none", mec="tab:red", ls="none",
                    label="paper: RFAD 50/class (ResNet-18; x = our 50/class)")
    if "full" in paper:
        ax.plot([100.0], [paper["full"]], marker="s", ms=9, mfc="none", mec="black", ls="none",
                label="paper: full data (ResNet-18)")
    ax.set_xscale("log")
    ax.set_xlabel("labelled samples, % of the training pool (log scale)")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"{report['dataset']}, {report['model']}: active learning vs distilled coresets")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def write_report(report: dict[str, Any], out_dir: str | os.PathLike, name: str, *,
                 title: str | None = None) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.png`` under ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}
    atomic_write_json(paths["json"], report)
    atomic_write_bytes(paths["md"], report_markdown(report, title=title).encode())
    plot_report(report, paths["png"])
    return paths

