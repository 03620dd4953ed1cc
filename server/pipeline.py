"""End-to-end jobs behind the CLI: train a model on a dataset and write its artefacts."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from edgekws.bench import cpu_model
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
        "torch": torch.__version__,
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
    test_fold: str | None = None,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Distil the dataset's train split into a coreset, then train ``train_cfg.model`` on the coreset alone.

    Writes ``coreset.npz`` (the artefact), ``coreset.png`` (distilled vs real MFCC), ``distill_curves.png``,
    ``model.pt``, ``metrics.json``, ``curves.png`` (finite-net training)
    into ``out_dir``; ``out_dir/checkpoints/rfad.pt`` makes the distillation resumable.
    """
    from edgekws.plots import plot_coreset, plot_distill_curves
    from edgekws.server.distributed import current_comm
    from edgekws.server.rfad import distill

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
    coreset = distill(
        xtr, ytr, xv, yv, p.class_names, p.feature_cfg, rfad_cfg, source_fingerprint=ds.fingerprint(),
        checkpoint_path=out / "checkpoints" / "rfad.pt", resume=resume, progress=progress,
    )
    if not current_comm().is_main:  # the other processes of a torchrun launch helped distil; rank 0 carries on
        return {"coreset": {"size": int(len(coreset.x))}, "rank": current_comm().rank}
    coreset.save(out / "coreset.npz")
    plot_distill_curves(coreset.metrics["history"], out / "distill_curves.png",
                        title=f"RFAD on {ds.name}: {rfad_cfg.per_class}/class")
    plot_coreset(coreset.x, coreset.hard_labels, coreset.class_names, out / "coreset.png", real_x=xtr,
                 real_labels=ytr, title=f"distilled vs real MFCC ({ds.name})")
    t_distill = time.perf_counter() - t0
    result = train_model(
        coreset.x, coreset.y, xv if len(xv) else None, yv if len(yv) else None, p.feature_cfg, p.n_classes,
        train_cfg, inputs="features", checkpoint_dir=out / "checkpoints" / "train", resume=resume, progress=progress,
    )
    metrics: dict[str, Any] = {
        **_run_metrics(ds, p, train_cfg),
        "coreset": {"per_class": rfad_cfg.per_class, "size": int(len(coreset.x)),
                    "krr_val_accuracy_init": coreset.metrics.get("init_val_accuracy"),
                    "krr_val_accuracy": coreset.metrics.get("val_accuracy"),
                    "steps": coreset.metrics.get("steps"),
                    "seconds_per_step": coreset.metrics.get("seconds_per_step")},
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_val_accuracy,
        "test": evaluate(result.model, xt, yt, p.n_classes) if len(xt) else None,
        "distill_seconds": t_distill,
        "train_seconds": result.seconds,
        "total_seconds": time.perf_counter() - t0,
        "rfad_config": rfad_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "environment": run_environment(),
    }
    _write_run(out, result, p, metrics, train_cfg, f"{train_cfg.model} on a {ds.name} coreset")
    return metrics
