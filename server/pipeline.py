"""End-to-end jobs behind the CLI: train a model on a dataset and write its artefacts."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from edgekws.machine import cpu_model
from edgekws.datasets import Dataset
from edgekws.features import FeatureConfig
from edgekws.fileio import atomic_write_json as write_json
from edgekws.server.data import Prepared, prepare
from edgekws.server.train import TrainConfig, TrainResult, evaluate, save_checkpoint, train_model

if TYPE_CHECKING:
    from edgekws.server.rfad import RFADConfig

__all__ = ["train_on_dataset", "distill_job", "write_json", "run_environment"]


def run_environment() -> dict[str, Any]:
    """Machine and versions, recorded next to every measured number."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that a data-only checkpoint reader refuses
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _run_metrics(ds: Dataset, p: Prepared, train_cfg: TrainConfig) -> dict[str, Any]:
    """The identity of a run: data, split, classes, model."""
    return {
        "dataset": ds.name,
        "fingerprint": ds.fingerprint(),
        "split": {**p.split.sizes(), "how": getattr(ds, "meta", {}).get("split", "")},
        "class_names": list(p.class_names),
        "model": train_cfg.model,
    }


def _write_run(out: Path, result: TrainResult, p: Prepared, metrics: dict[str, Any], train_cfg: TrainConfig,
               title: str) -> None:
    """model.pt (self-contained checkpoint), metrics.json, history.json and curves.png."""
    from edgekws.plots import plot_training_curves

    save_checkpoint(out / "model.pt", result.model, p.feature_cfg, p.class_names, metrics, train_cfg)
    write_json(out / "metrics.json", metrics)
    write_json(out / "history.json", result.history)
    plot_training_curves(result.history, out / "curves.png", title=title)


def train_on_dataset(
    ds: Dataset,
    feature_cfg: FeatureConfig,
    train_cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    test_fold: str | None = None,
    resume: bool = False,
    prepared: Prepared | None = None,
    extra_tests: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``train_cfg.model`` on the dataset's train split, early-stop on val, test on test.

    Writes ``model.pt`` (self-contained checkpoint), ``metrics.json`` and ``curves.png`` into ``out_dir``;
    ``out_dir/checkpoints/last.pt`` makes the run resumable. ``extra_tests`` maps a name to extra normalised
    (features, labels) test sets (e.g. real clips for a model trained on synthetic speech).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if prepared is None:
        prepared = prepare(
            ds, feature_cfg, test_fold=test_fold,
            progress=(lambda stage, d, t: progress({"event": stage, "done": d, "total": t})) if progress else None,
        )
    p = prepared
    xw, _, yw = p.subset("train")
    _, xv, yv = p.subset("val")
    _, xt, yt = p.subset("test")
    result = train_model(
        xw, yw, xv if len(xv) else None, yv if len(yv) else None, p.feature_cfg, p.n_classes, train_cfg,
        inputs="waveform", noise=p.noise, checkpoint_dir=out / "checkpoints", resume=resume, progress=progress,
    )
    metrics: dict[str, Any] = {
        **_run_metrics(ds, p, train_cfg),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "val_accuracy": result.best_val_accuracy,
        "test": evaluate(result.model, xt, yt, p.n_classes) if len(xt) else None,
        "train_seconds": result.seconds,
        "total_seconds": time.perf_counter() - t0,
        "train_config": train_cfg.to_dict(),
        "environment": run_environment(),
    }
    for name, (xf, yl) in (extra_tests or {}).items():
        metrics[f"test_{name}"] = evaluate(result.model, xf, yl, p.n_classes)
    _write_run(out, result, p, metrics, train_cfg, f"{train_cfg.model} on {ds.name}")
    return metrics


def distill_job(
    ds: Dataset,
    feature_cfg: FeatureConfig,
    rfad_cfg: "RFADConfig",
    train_cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    labels: str = "teacher",
    teacher_epochs: int = 30,
    test_fold: str | None = None,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Distil the dataset's train split into a coreset and train ``train_cfg.model`` on it; ship the better net.

    Steps:
      1. ``labels="teacher"``: train the target net on the whole training split (the teacher, ``teacher/``) and fit
         its softmax temperature on the validation split.
      2. RFAD distils the coreset inputs (``checkpoints/rfad.pt`` makes it resumable).
      3. Labels: the teacher's probabilities at the fitted temperature, or RFAD's learned KRR labels.
      4. The target net is trained on the coreset alone: from the teacher, which labels every augmented view on
         the fly (``train_cfg`` should be :func:`~edgekws.server.teacher.distillation_train_config`), or by
         regression on the RFAD labels.
      5. ``model.pt`` is the net to ship: the one with the better validation accuracy (the teacher, trained on all
         the data, unless the coreset net matches it); ``coreset_model.pt`` is the net trained on the coreset.

    Writes ``coreset.npz`` (the artefact the device fine-tunes from), ``coreset.png``, ``distill_curves.png``,
    ``model.pt``, ``metrics.json`` (``shipped`` says which net and why) and ``curves.png`` into ``out_dir``.
    """
    from edgekws.plots import plot_coreset, plot_distill_curves
    from edgekws.server.distributed import current_comm
    from edgekws.server.rfad import LABEL_KINDS, distill
    from edgekws.server.teacher import fit_temperature, teacher_soft_labels
    from edgekws.server.train import load_checkpoint, predict_logits

    if labels not in LABEL_KINDS:
        raise ValueError(f"labels must be one of {', '.join(LABEL_KINDS)}, got {labels!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    p = prepare(
        ds, feature_cfg, test_fold=test_fold,
        progress=(lambda stage, d, t: progress({"event": stage, "done": d, "total": t})) if progress else None,
    )
    _, xtr, ytr = p.subset("train")
    _, xv, yv = p.subset("val")
    _, xt, yt = p.subset("test")
    if labels == "teacher" and not len(yv):
        raise ValueError(f"{ds.name}: teacher labels need a validation split to fit the temperature on")
    is_main = current_comm().is_main

    teacher, temperature, teacher_metrics = None, None, None
    if labels == "teacher":  # every process trains the same teacher (same seed): no rank waits on another's file
        tdir = out / "teacher"
        tcfg = TrainConfig(model=train_cfg.model, model_kwargs=dict(train_cfg.model_kwargs), epochs=teacher_epochs,
                           seed=train_cfg.seed, device=train_cfg.device, threads=train_cfg.threads)
        if not (resume and (tdir / "model.pt").is_file()):
            if progress:
                progress({"event": "stage", "stage": "teacher", "detail": f"{tcfg.model}, {teacher_epochs} epochs"})
            train_on_dataset(ds, p.feature_cfg, tcfg, tdir, prepared=p, resume=resume, progress=progress)
        teacher, _, _, blob = load_checkpoint(tdir / "model.pt")
        temperature = fit_temperature(predict_logits(teacher, xv), yv)
        teacher_metrics = {"val_accuracy": blob["metrics"].get("val_accuracy"),
                           "test": blob["metrics"].get("test"), "epochs": teacher_epochs,
                           "temperature": temperature}
    t_teacher = time.perf_counter() - t0

    coreset = distill(
        xtr, ytr, xv, yv, p.class_names, p.feature_cfg, rfad_cfg, source_fingerprint=ds.fingerprint(),
        checkpoint_path=out / "checkpoints" / "rfad.pt", resume=resume, progress=progress,
    )
    if not is_main:  # the other processes of a torchrun launch helped distil; rank 0 carries on
        return {"coreset": {"size": int(len(coreset.x))}, "rank": current_comm().rank}
    if teacher is not None:
        coreset.y = teacher_soft_labels(teacher, coreset.x, temperature)
        coreset.labels, coreset.label_temperature = "teacher", temperature
    coreset.save(out / "coreset.npz")
    plot_distill_curves(coreset.metrics["history"], out / "distill_curves.png",
                        title=f"RFAD on {ds.name}: {rfad_cfg.per_class}/class")
    plot_coreset(coreset.x, coreset.hard_labels, coreset.class_names, out / "coreset.png", real_x=xtr,
                 real_labels=ytr, title=f"distilled vs real MFCC ({ds.name})")
    t_distill = time.perf_counter() - t0 - t_teacher

    if teacher is None and train_cfg.loss != "mse":
        train_cfg = dataclasses.replace(train_cfg, loss="mse")  # learned KRR labels are regression targets
    if progress:
        progress({"event": "stage", "stage": "coreset net", "detail": f"{train_cfg.model} on {len(coreset.x)} samples"})
    result = train_model(
        coreset.x, coreset.y, xv if len(xv) else None, yv if len(yv) else None, p.feature_cfg, p.n_classes,
        train_cfg, inputs="features", checkpoint_dir=out / "checkpoints" / "train", resume=resume, teacher=teacher,
        progress=progress,
    )
    coreset_test = evaluate(result.model, xt, yt, p.n_classes) if len(xt) else None
    shipped = {"net": "coreset", "why": "no teacher (--labels rfad): the net trained on the coreset"}
    ship_model, ship_val, ship_test, ship_cfg = result.model, result.best_val_accuracy, coreset_test, train_cfg
    if teacher is not None:
        t_val = float(teacher_metrics["val_accuracy"])
        if t_val >= result.best_val_accuracy:
            shipped = {"net": "teacher", "why": f"validation accuracy {100 * t_val:.2f} % (all training clips) >= "
                                                f"{100 * result.best_val_accuracy:.2f} % (coreset)"}
            ship_model, ship_val, ship_cfg = teacher, t_val, tcfg
            ship_test = evaluate(teacher, xt, yt, p.n_classes) if len(xt) else None
        else:
            shipped = {"net": "coreset", "why": f"validation accuracy {100 * result.best_val_accuracy:.2f} % "
                                                f"(coreset) > {100 * t_val:.2f} % (all training clips)"}
    metrics: dict[str, Any] = {
        **_run_metrics(ds, p, train_cfg),
        "coreset": {"per_class": rfad_cfg.per_class, "size": int(len(coreset.x)), "labels": coreset.labels,
                    "label_temperature": temperature,
                    "krr_val_accuracy_init": coreset.metrics.get("init_val_accuracy"),
                    "krr_val_accuracy": coreset.metrics.get("val_accuracy"),
                    "steps": coreset.metrics.get("steps"),
                    "seconds_per_step": coreset.metrics.get("seconds_per_step"),
                    "net_val_accuracy": result.best_val_accuracy, "net_test": coreset_test,
                    "net_epochs_run": len(result.history), "net_best_epoch": result.best_epoch},
        "teacher": teacher_metrics,
        "shipped": shipped,
        "best_epoch": result.best_epoch,
        "val_accuracy": ship_val,
        "test": ship_test,
        "teacher_seconds": t_teacher,
        "distill_seconds": t_distill,
        "train_seconds": result.seconds,
        "total_seconds": time.perf_counter() - t0,
        "rfad_config": rfad_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "environment": run_environment(),
    }
    save_checkpoint(out / "coreset_model.pt", result.model, p.feature_cfg, p.class_names,
                    {**metrics, "val_accuracy": result.best_val_accuracy, "test": coreset_test}, train_cfg)
    _write_run(out, TrainResult(ship_model, result.history, result.best_epoch, ship_val, result.seconds), p, metrics,
               ship_cfg, f"{train_cfg.model} on a {ds.name} coreset")
    return metrics
