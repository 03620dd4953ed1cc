"""`edgekws distill` with the speech-embedding backbone, and the real-speech check of a shipped bundle.

Thin shells over :func:`edgekws.server.speech_head.distill_speech_job` and :func:`edgekws.export.check.check_bundle`;
``edgekws distill`` calls them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.table import Table

__all__ = ["report_check", "resolve_backbone", "run_speech_distill"]


def resolve_backbone(requested: str | None, tgt: Any) -> tuple[str, str]:
    """The backbone ``distill`` trains and why: the one asked for, else the target's; a target whose default front
    end is not installed falls back to the MFCC CNN. Exits with a message for an unknown or unavailable one."""
    from edgekws.speech_embedding import FrontendError, locate_graphs
    from edgekws.targets import BACKBONES

    from .console import fail as _fail

    name = requested or tgt.backbone
    if name not in BACKBONES:
        _fail(f"--backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    if name != "speech-embedding":
        return name, "asked for" if requested else f"target {tgt.name}'s default"
    try:
        locate_graphs(check=True)
    except FrontendError as exc:
        if requested:
            _fail(str(exc))
        return "mfcc-cnn", f"target {tgt.name} prefers speech-embedding, but {exc}"
    why = (
        "asked for"
        if requested
        else f"target {tgt.name}'s default: on real speakers it beats the MFCC CNN "
        "trained on the same synthetic speech (README, benchmarks/results/backbones.md)"
    )
    return name, why


def run_speech_distill(
    tgt: Any,
    *,
    dataset: str,
    data_dir: Path | None,
    keywords: tuple[str, ...] | None,
    per_class: int,
    synthetic_per_class: int,
    seed: int,
    test_fold: str | None,
    out: Path,
    why: str,
    epochs: int | None = None,
    streams: tuple[int, int, float] = (30, 20, 60.0),
) -> dict[str, Any]:
    """Embed, train the head (with ``streams`` = (training streams, validation streams, seconds each) of synthetic
    speech when the dataset is the synthetic one), choose the coreset, write ``out`` (see ``distill_speech_job``);
    print a summary."""
    from edgekws.server.speech_head import SpeechHeadConfig, distill_speech_job
    from edgekws.server.speech_streams import StreamConfig

    from .console import console
    from .console import fail as _fail
    from .console import progress as _progress
    from .train import _load_dataset, _print_metrics

    t0 = time.perf_counter()
    cfg = SpeechHeadConfig(seed=seed, **({"epochs": epochs} if epochs else {}))
    n_train, n_val, seconds = streams
    stream_cfg = (
        StreamConfig(train=n_train, val=n_val, seconds=seconds)
        if dataset == "synthetic" and (n_train or n_val)
        else None
    )
    with _progress() as on_event:
        ds = _load_dataset(dataset, data_dir, keywords, synthetic_per_class, seed, on_event)
        try:
            metrics = distill_speech_job(
                ds,
                tgt.features.replace(clip_seconds=ds.clip_seconds),
                out,
                per_class=per_class,
                head_cfg=cfg,
                test_fold=test_fold,
                progress=on_event,
                shipped_why=why,
                streams=stream_cfg,
            )
        except ValueError as exc:
            _fail(str(exc))
    _print_metrics(metrics)
    c = metrics["coreset"]
    console().print(
        f"coreset: {c['size']} embedding sequences ({c['per_class']}/class), labels from the trained head "
        f"(agree with the true class on {100 * c['teacher_agreement']:.1f}%)"
    )
    d = metrics.get("detector")
    if d and d.get("threshold") is not None:
        ch = d["chosen_on"]
        console().print(
            f"detector: temperature {d['temperature']:g}, threshold {d['threshold']:g} (the lowest with "
            f"at most {ch['max_false_alarms_per_hour']:g} false alarms per hour on {ch['minutes']:g} min "
            "of synthetic validation streams)"
        )
    console().print(
        f"shipped: {metrics['shipped']['net']} on the {metrics['shipped']['backbone']} backbone "
        f"({metrics['shipped']['why']})"
    )
    console().print(
        f"target {tgt.name}: wrote {out}/coreset.npz, model.pt, metrics.json in {time.perf_counter() - t0:.0f} s"
    )
    return metrics


def report_check(bundle: Path, dataset: str, data_dir: Path | None, out: Path | None = None) -> dict[str, Any]:
    """Run :func:`check_bundle` on the freshly written bundle, print the table, write ``out`` (JSON)."""
    from edgekws.export.check import check_bundle
    from edgekws.fileio import atomic_write_json

    from .console import console
    from .console import fail as _fail
    from .console import progress as _progress

    try:
        with _progress() as on_event:
            res = check_bundle(bundle, dataset, data_dir, progress=on_event)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"check on {dataset}: {exc}")
    t = Table(title=f"shipped graph ({res['graph']}) on real {dataset} clips")
    for col in ("clips", "n", "accuracy", "keywords only", "called nothing"):
        t.add_column(col, justify="right")
    for name, s in (("all", res["all"]), ("test split", res["test_split"])):
        if s:
            t.add_row(
                name,
                str(s["n"]),
                f"{100 * s['accuracy']:.2f}%",
                f"{100 * s['accuracy_keywords_only']:.2f}%",
                f"{100 * s['predicted_silent_class']:.1f}%",
            )
    console().print(t)
    if out is not None:
        atomic_write_json(out, res)
        console().print(f"wrote {out}")
    return res
