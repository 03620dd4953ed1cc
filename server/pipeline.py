"""End-to-end jobs behind the CLI: train a model on a dataset and write its artefacts."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgekws.datasets import Dataset
from edgekws.features import FeatureConfig
from edgekws.server.data import Prepared, prepare
from edgekws.server.train import TrainConfig, evaluate, save_checkpoint, train_model

__all__ = ["train_on_dataset", "write_json", "run_environment"]


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def run_environment() -> dict[str, Any]:
    """Machine and versions, recorded next to every measured number."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


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
        "dataset": ds.name,
        "fingerprint": ds.fingerprint(),
        "split": {**p.split.sizes(), "how": getattr(ds, "meta", {}).get("split", "")},
        "class_names": list(p.class_names),
        "model": train_cfg.model,
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
    save_checkpoint(out / "model.pt", result.model, p.feature_cfg, p.class_names, metrics, train_cfg)
    write_json(out / "metrics.json", metrics)
    from edgekws.plots import plot_training_curves

    plot_training_curves(result.history, out / "curves.png", title=f"{train_cfg.model} on {ds.name}")
    write_json(out / "history.json", result.history)
    return metrics
