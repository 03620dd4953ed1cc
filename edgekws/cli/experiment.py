"""``edgekws experiment tables``: the paper's comparison (active learning vs RFAD coresets) as tables and a plot.

A thin shell over :mod:`edgekws.server.experiments`; torch is imported only when the command runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import typer

from .console import console, progress
from .console import fail as _fail

experiment_app = typer.Typer(no_args_is_help=True, help="Experiments: the paper's tables, reproduced.")

_DATASETS = ("gsc", "us8k", "esc50", "esc10", "synthetic")
_MODELS = ("cnn4", "resnet18")


def register(app: typer.Typer) -> None:
    """Add the ``experiment`` group to the main app."""
    app.add_typer(experiment_app, name="experiment")


def _csv(text: Optional[str], kind: type, what: str) -> Optional[tuple]:
    if text is None:
        return None
    try:
        vals = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        _fail(f"{what}: expected comma-separated {kind.__name__} values, got {text!r}")
    if not vals:
        _fail(f"{what} is empty")
    return vals


@experiment_app.command("tables")
def tables(
    dataset: str = typer.Option(
        ...,
        "--dataset",
        help="gsc | us8k | esc50 | esc10 (synthetic: the embedded "
        "keywords); without --data-dir a real dataset is downloaded into the cache",
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="dataset folder"),
    model: str = typer.Option("cnn4", "--model", help="cnn4 | resnet18"),
    folds: Optional[str] = typer.Option(
        None, "--folds", help="test folds of us8k/esc50, e.g. 1,2,3 (default: all 5; --quick: 1,2)"
    ),
    seeds: Optional[str] = typer.Option(
        None, "--seeds", help="seeds, e.g. 0,1,2 (default 0,1,2 for gsc, 0 for cross-validation; --quick: 0,1 / 0)"
    ),
    quick: bool = typer.Option(False, "--quick", help="a small version that runs in minutes on 2 CPU cores"),
    strategies: Optional[str] = typer.Option(
        None, "--strategies", help="subset of random,entropy,variation_ratios,bald"
    ),
    per_class: Optional[str] = typer.Option(
        None, "--per-class", help="coreset sizes / AL budgets per class (default 20,30,50; --quick: 20,50)"
    ),
    fractions: Optional[str] = typer.Option(
        None, "--fractions", help="AL budgets as pool fractions (default 0.1,...,0.6; --quick: none)"
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="epochs of every net (default 30; --quick: 8)"),
    min_steps: Optional[int] = typer.Option(None, "--min-steps", min=1, help="minimum steps per epoch"),
    mc_passes: Optional[int] = typer.Option(None, "--mc-passes", min=1, help="MC-dropout passes (default 20)"),
    seed_per_class: Optional[int] = typer.Option(
        None, "--seed-per-class", min=1, help="AL seed set per class (default 10)"
    ),
    max_batch: Optional[int] = typer.Option(
        None, "--max-batch", min=0, help="most samples acquired per round (0: straight to the next budget)"
    ),
    rfad_steps: Optional[int] = typer.Option(
        None, "--rfad-steps", min=1, help="distillation steps (default 50; --quick: 10)"
    ),
    full_data: Optional[bool] = typer.Option(
        None,
        "--full-data/--no-full-data",
        help="also train on the whole pool with the same recipe (default on; --quick: off)",
    ),
    coresets: Optional[list[Path]] = typer.Option(
        None,
        "--coresets",
        help="folder(s) of finished coresets "
        "coreset[_f<fold>]_pc<P>_s<S>.npz to reuse when their features "
        "and split match",
    ),
    reference: Optional[Path] = typer.Option(
        None,
        "--reference",
        help="a full-data baselines JSON to show beside ours (e.g. benchmarks/results/baselines_gsc_cnn4.json)",
    ),
    keywords: Optional[str] = typer.Option(None, "--keywords", help="speech datasets: keywords"),
    synthetic_per_class: int = typer.Option(300, "--synthetic-per-class", min=4, help="synthetic: clips per keyword"),
    out: Path = typer.Option(Path("benchmarks/results"), "--out", help="folder for <name>.md/.json/.png"),
    name: Optional[str] = typer.Option(None, "--name", help="report name (default al_<dataset>_<model>)"),
    work_dir: Optional[Path] = typer.Option(
        None,
        "--work-dir",
        help="finished cases, AL state and coresets "
        "(default runs/experiments/<name>); a rerun resumes from it, and "
        "calls on different --seeds or --folds may share it side by side",
    ),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
) -> None:
    """Active-learning baselines and RFAD coresets: Table-1/2/3-style markdown, JSON and a plot (log x)."""
    if dataset not in _DATASETS:
        _fail(f"unknown dataset {dataset!r}; choose one of {', '.join(_DATASETS)}")
    if model not in _MODELS:
        _fail(f"unknown model {model!r}; choose one of {', '.join(_MODELS)}")
    if data_dir is not None and not data_dir.is_dir():
        _fail(f"--data-dir {data_dir} is not a folder")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))

    from edgekws.datasets import load_dataset
    from edgekws.server.experiments import ExperimentConfig, load_reference, quick_config, run_experiment, write_report

    cv = dataset in ("us8k", "esc50", "esc10")
    overrides: dict[str, Any] = {"model": model, "threads": threads, "device": device}
    for key, val in (
        ("folds", _csv(folds, str, "--folds")),
        ("seeds", _csv(seeds, int, "--seeds")),
        ("strategies", _csv(strategies, str, "--strategies")),
        ("per_class", _csv(per_class, int, "--per-class")),
        ("fractions", _csv(fractions, float, "--fractions")),
        ("epochs", epochs),
        ("min_steps_per_epoch", min_steps),
        ("mc_passes", mc_passes),
        ("seed_per_class", seed_per_class),
        ("max_batch", max_batch),
        ("full_data", full_data),
    ):
        if val is not None:
            overrides[key] = val
    if coresets:
        overrides["coreset_dirs"] = tuple(str(c) for c in coresets)
    try:
        if quick:
            cfg = quick_config(cross_validated=cv, **overrides)
        else:
            if cv and "seeds" not in overrides:
                overrides["seeds"] = (0,)
            cfg = ExperimentConfig(**overrides)
        if rfad_steps is not None:
            import dataclasses

            cfg.rfad = dataclasses.replace(cfg.rfad, steps=rfad_steps)
        ref = load_reference(reference) if reference else None
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    name = name or f"al_{dataset}_{model}"
    work = work_dir or Path("runs") / "experiments" / name
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {}
    if dataset == "synthetic":
        kwargs = {"per_class": synthetic_per_class}
    kws = tuple(w.strip() for w in keywords.split(",") if w.strip()) if keywords else None
    with progress() as on_event:  # bars on a terminal, a line per stage in a log
        from edgekws.datasets.download import DownloadError

        try:
            ds = load_dataset(dataset, data_dir, keywords=kws, download=True, download_progress=on_event, **kwargs)
            report = run_experiment(ds, cfg, work, reference=ref, progress=on_event)
        except (ValueError, FileNotFoundError, DownloadError) as exc:
            _fail(str(exc))
    extra = time.perf_counter() - t0 - report["wall_seconds"]  # loading the dataset
    report["wall_seconds"] += extra
    report["wall_seconds_all_calls"] += extra
    paths = write_report(report, out, name)
    for row in report["summary"]:
        a = row["accuracy"]
        console().print(
            f"{row['method']:>17} {row['point']:>8}: {row['labelled']:6.0f} samples "
            f"({row['percent']:5.2f} %)  {a['mean']:6.2f} ± {a['std']:5.2f} % (n={a['n']})",
            highlight=False,
        )
    console().print(
        f"wrote {paths['md']}, {paths['json']}, {paths['png']}; this call took "
        f"{report['wall_seconds'] / 60:.1f} min, all calls on {work} "
        f"{report['wall_seconds_all_calls'] / 60:.1f} min",
        highlight=False,
    )
