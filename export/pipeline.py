"""Checkpoint -> signed bundle for a target: graphs (classifier + embedding, ONNX and TFLite, fp32 and int8), head
weights, coreset, parity and budget checks, manifest, signature, tar.

The library never prints: progress goes through ``progress({"event": "export", "done", "total", "graph"})`` and
every decision worth telling a person (a skipped format, a checkpoint that differs from the target profile) is
returned in :attr:`ExportResult.notes` and written into the manifest.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekws.bundle import (
    CORESET,
    GRAPH_FILES,
    HEAD,
    Manifest,
    load_public_key,
    pack_bundle,
    verify_bundle,
    write_bundle,
    write_head,
)
from edgekws.features import FeatureConfig
from edgekws.targets import Target, get_target

from .mfcc_graph import MFCC_GRAPH_FILE, mfcc_graph_entry, mfcc_graph_parity, write_mfcc_graph
from .onnx import DEFAULT_OPSET, export_onnx
from .parity import compare, graph_outputs, torch_outputs
from .quantize import quantize_onnx
from .tflite import export_tflite, tflite_unavailable_reason

__all__ = ["FP32_TOLERANCE", "FRONTEND_FILES", "ExportResult", "export_bundle", "real_features"]

FP32_TOLERANCE = 1e-4
"""Largest |logit difference| an fp32 graph may show against torch, relative to the largest |logit|."""

Progress = Callable[[dict[str, Any]], None]


@dataclass
class ExportResult:
    bundle: Path
    tar: Path | None
    manifest: Manifest
    parity: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def real_features(dataset: str, data_dir: str | os.PathLike | None, classes: list[str], cfg: FeatureConfig,
                  part: str = "test", test_fold: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised features ``(N, n_mfcc, frames)`` and labels of one split (``train|val|test|all``) of a dataset,
    computed with the checkpoint's FeatureConfig and labelled in ``classes`` order."""
    from edgekws.datasets import load_dataset, split_indices
    from edgekws.datasets.cache import load_features
    from edgekws.features import normalize

    ds = load_dataset(dataset, data_dir, keywords=tuple(classes))
    if list(ds.class_names) != list(classes):
        raise ValueError(f"{dataset} has classes {list(ds.class_names)}, the model {list(classes)}")
    raw = load_features(ds, cfg.replace(normalization="none", mean=None, std=None, clip_seconds=ds.clip_seconds))
    idx = np.arange(len(ds)) if part == "all" else getattr(split_indices(ds, test_fold=test_fold), part)
    return normalize(raw[idx], cfg), np.asarray(ds.labels)[idx]


def _load_coreset(coreset: Any, embedding: bool = False) -> tuple[Any, Path | None]:
    if coreset is None:
        return None, None
    from edgekws.server.rfad import Coreset

    if isinstance(coreset, Coreset):
        return coreset, None  # saved into the bundle's staging folder
    if embedding:
        from edgekws.server.speech_head import EmbeddingCoreset

        return EmbeddingCoreset.load(coreset), Path(coreset)
    return Coreset.load(coreset), Path(coreset)


FRONTEND_FILES = {"melspectrogram": "frontend_melspectrogram.onnx", "embedding": "frontend_embedding.onnx"}
"""Front-end role -> file name inside a bundle (speech-embedding bundles only)."""


def _frontend_files(frontend: dict[str, Any]) -> tuple[dict[str, Path], dict[str, Any]]:
    """The frozen front-end graphs a speech-embedding bundle carries, and its manifest entry."""
    from edgekws.speech_embedding import DISTRIBUTION, DISTRIBUTION_VERSION, FrontendConfig, FrontendError, locate_graphs

    try:
        cfg = FrontendConfig.from_dict(frontend)
        paths = locate_graphs(check=True)
    except (FrontendError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot bundle the speech-embedding front end: {exc}") from None
    files = {FRONTEND_FILES[role]: p for role, p in paths.items()}
    entry = {"kind": cfg.kind, "config": cfg.to_dict(), "files": dict(FRONTEND_FILES),
             "source": f"{DISTRIBUTION} {DISTRIBUTION_VERSION} (Apache-2.0): openWakeWord's ONNX conversion of "
                       "Google's speech_embedding and its mel-spectrogram front end"}
    return files, entry


def _waveform_graph(fcfg: FeatureConfig, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """The waveform-in MFCC graph and its manifest entry; refused when it does not reproduce numpy's MFCC."""
    path = write_mfcc_graph(fcfg, tmp / MFCC_GRAPH_FILE)
    parity = mfcc_graph_parity(path, fcfg)
    if not parity["ok"]:
        raise ValueError(f"{MFCC_GRAPH_FILE} does not reproduce edgekws.features.mfcc: max |difference| "
                         f"{parity['max_abs_diff']:.3g} normalised, {parity['max_abs_diff_raw']:.3g} before "
                         "normalisation")
    parity["size_bytes"] = path.stat().st_size
    return path, mfcc_graph_entry(parity)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "litert_torch", "ai_edge_litert"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001, S112 - optional packages, any import failure just leaves them out
            continue
    return out


def export_bundle(
    checkpoint: str | os.PathLike,
    target: str | Target,
    out_dir: str | os.PathLike,
    *,
    private_key: Any,
    coreset: Any = None,
    calibration: np.ndarray | None = None,
    evaluation: tuple[np.ndarray, np.ndarray] | None = None,
    formats: tuple[str, ...] | None = None,
    tar: bool = True,
    threads: int | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a trained checkpoint (``model.pt``) for ``target`` into a signed bundle at ``out_dir``.

    Parameters
    ----------
    private_key : Ed25519PrivateKey or path of its PEM file
    coreset : Coreset or path of ``coreset.npz``, optional
        shipped in the bundle and, unless ``calibration`` is given, the int8 calibration set.
    calibration : (N, H, W) normalised features, optional
        real clips to calibrate int8 activations on (preferred over the coreset when both are given).
    evaluation : (features, labels), optional
        a labelled set for parity (top-1 agreement) and accuracy of every graph; else the calibration features.
    formats : subset of the target's formats, optional
    tar : also write ``<out_dir>.tar``.

    Returns
    -------
    ExportResult with the verified manifest, per-graph parity and notes.

    Raises
    ------
    ValueError: a bad checkpoint/coreset/calibration, an fp32 graph that does not reproduce the torch model, or a
    primary graph over the target's size budget.
    """
    from edgekws.server.train import load_checkpoint

    tgt = get_target(target) if isinstance(target, str) else target
    model, fcfg, classes, blob = load_checkpoint(checkpoint)
    model = model.cpu().eval()
    notes: list[str] = []
    frontend = (blob.get("metrics") or {}).get("frontend")
    core, core_path = _load_coreset(coreset, embedding=bool(frontend))
    shape = tuple(model.input_shape) if frontend else tuple(fcfg.shape)
    if core is not None and not frontend:
        from edgekws.server.rfad import coreset_mismatch

        why = coreset_mismatch(core, classes, fcfg)
        if why:
            raise ValueError(f"{why}: the coreset does not belong to this checkpoint")
    if core is not None:
        if list(core.class_names) != list(classes):
            raise ValueError(f"coreset classes {list(core.class_names)} differ from the model's {classes}")
        if tuple(core.x.shape[1:]) != shape:
            raise ValueError(f"coreset features are {core.x.shape[1:]}, the model takes {shape}")
    kwargs = model.config.get("kwargs") or {}
    want_model, want_kwargs = ((tgt.embedding_model, tgt.embedding_model_kwargs) if frontend
                               else (tgt.model, tgt.model_kwargs))
    if model.config.get("name") != want_model or any(kwargs.get(k) != v for k, v in want_kwargs.items()):
        suggested = want_model + "".join(f" {k}={v}" for k, v in want_kwargs.items())
        notes.append(f"checkpoint model is {model.config.get('name')}, target {tgt.name} suggests {suggested}; "
                     "exporting the checkpoint's model")
    if not frontend and fcfg.shape != tgt.features.shape:
        notes.append(f"checkpoint features are {fcfg.shape[0]} MFCC x {fcfg.shape[1]} frames (target profile: "
                     f"{tgt.features.shape[0]} x {tgt.features.shape[1]}); the bundle carries the checkpoint's")

    # calibration and parity sets -------------------------------------------------------------------------------
    if calibration is not None:
        cal = np.asarray(calibration, dtype=np.float32)
        cal_source = "real"
    elif core is not None:
        cal, cal_source = core.x, "coreset"
    else:
        cal, cal_source = None, None
    if cal is not None:
        cal = cal.reshape(len(cal), *cal.shape[-2:]) if cal.ndim == 4 else cal
        if cal.ndim != 3 or tuple(cal.shape[1:]) != shape:
            raise ValueError(f"calibration features must be (N, {shape[0]}, {shape[1]}), got {cal.shape}")
        if len(cal) > tgt.calibration_clips:
            pick = np.random.default_rng(0).choice(len(cal), tgt.calibration_clips, replace=False)
            cal = cal[np.sort(pick)]
    quant = tgt.quantization if cal is not None else "dynamic"
    if cal is None and "int8" in tgt.precisions:
        notes.append("no calibration features (no coreset, no real clips): int8 graphs use dynamic quantization")
    if evaluation is not None:
        ex, ey = np.asarray(evaluation[0], dtype=np.float32), np.asarray(evaluation[1])
        eval_source = "evaluation set"
    elif cal is not None:
        ex, ey, eval_source = cal, None, f"{cal_source} calibration features"
    else:
        ex = np.random.default_rng(0).standard_normal((64, *shape)).astype(np.float32)
        ey, eval_source = None, "64 random N(0, 1) inputs"

    wanted = tuple(f for f in (formats or tgt.formats))
    unknown = [f for f in wanted if f not in tgt.formats]
    if unknown:
        raise ValueError(f"target {tgt.name} does not ship {unknown}; its formats are {list(tgt.formats)}")
    skipped: dict[str, str] = {}
    if "tflite" in wanted:
        reason = tflite_unavailable_reason()
        if reason:
            skipped["tflite"] = reason
            notes.append(f"TFLite skipped: {reason}")
            wanted = tuple(f for f in wanted if f != "tflite")
    if "onnx" not in wanted:
        notes.append("ONNX graphs are always included (host-side checks and the onnxruntime device runtime)")
        wanted = ("onnx", *wanted)

    jobs = [(kind, fmt, prec) for fmt in ("onnx", "tflite") if fmt in wanted
            for kind in tgt.graphs for prec in tgt.precisions
            if (kind, fmt, prec) in GRAPH_FILES]
    if cal is None and any(j[1:] == ("tflite", "int8") for j in jobs):
        jobs = [j for j in jobs if j[1:] != ("tflite", "int8")]
        skipped["tflite_int8"] = "int8 TFLite needs calibration features (give a coreset or real clips)"
        notes.append(f"int8 TFLite skipped: {skipped['tflite_int8']}")
    ref = {kind: torch_outputs(model, ex, kind) for kind in tgt.graphs}
    parity: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    graphs: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="edgekws-export-") as tmpdir:
        tmp = Path(tmpdir)
        for i, (kind, fmt, prec) in enumerate(jobs):
            name = GRAPH_FILES[(kind, fmt, prec)]
            if progress:
                progress({"event": "export", "done": i, "total": len(jobs), "graph": name})
            path = tmp / name
            if fmt == "onnx" and prec == "fp32":
                export_onnx(model, path, kind=kind, dynamic_batch=True)
            elif fmt == "onnx":
                quantize_onnx(tmp / GRAPH_FILES[(kind, "onnx", "fp32")], path, method=quant, calibration=cal)
            else:
                export_tflite(model, path, kind=kind, int8=prec == "int8", calibration=cal)
            p = compare(ref[kind], graph_outputs(path, ex, threads=threads or tgt.threads),
                        ey if kind == "classifier" else None, logits=kind == "classifier")
            p.update(size_bytes=path.stat().st_size, compared_on=eval_source)
            if prec == "int8":
                p["quantization"] = "static" if fmt == "tflite" else quant
                p["calibration"] = cal_source
            if prec == "fp32" and p["rel_max_diff"] > FP32_TOLERANCE:
                raise ValueError(f"{name} does not reproduce the torch model: max |difference| {p['max_abs_diff']:.3g} "
                                 f"({p['rel_max_diff']:.3g} of the largest output; tolerance {FP32_TOLERANCE})")
            parity[name] = p
            files[name] = path
            graphs.setdefault(kind, {})[f"{fmt}_{prec}"] = name
        if progress:
            progress({"event": "export", "done": len(jobs), "total": len(jobs), "graph": "done"})

        primary_fmt = tgt.formats[0]
        primary = GRAPH_FILES[("classifier", primary_fmt, tgt.precision)]
        budget: dict[str, Any] = {"model_budget_kb": tgt.model_budget_kb, "primary_graph": primary,
                                  "primary_graph_kb": None, "fits": None}
        if primary not in files:
            if tgt.model_budget_kb is not None:
                notes.append(f"size budget of {tgt.model_budget_kb} KB not checked: it applies to {primary}, "
                             "which was not exported")
        else:
            budget["primary_graph_kb"] = round(files[primary].stat().st_size / 1024, 1)
        if budget["primary_graph_kb"] is not None and tgt.model_budget_kb is not None:
            budget["fits"] = budget["primary_graph_kb"] <= tgt.model_budget_kb
            if not budget["fits"]:
                raise ValueError(f"{primary} is {budget['primary_graph_kb']} KB, over target {tgt.name}'s budget of "
                                 f"{tgt.model_budget_kb} KB; train a smaller model (target model: {tgt.model})")

        W = model.classifier.weight.detach().cpu().numpy()
        b = model.classifier.bias.detach().cpu().numpy()
        write_head(tmp / HEAD, W, b)
        files[HEAD] = tmp / HEAD
        extra_manifest: dict[str, Any] = {}
        if frontend:
            fe_files, extra_manifest["frontend"] = _frontend_files(frontend)
            files.update(fe_files)
        elif tgt.waveform_graph:
            files[MFCC_GRAPH_FILE], extra_manifest["mfcc_graph"] = _waveform_graph(fcfg, tmp)
            gp = extra_manifest["mfcc_graph"]["parity"]
            notes.append(f"{MFCC_GRAPH_FILE}: audio in, the classifier's MFCC out ({gp['size_bytes'] / 1024:.0f} KB; "
                         f"max |difference| from edgekws.features {gp['max_abs_diff']:.2g} of a normalised "
                         "coefficient)")
        detector = (blob.get("metrics") or {}).get("detector")
        if detector:  # temperature and threshold fitted on held-out synthetic streams (edgekws.server.speech_streams)
            extra_manifest["detector"] = detector
        if core is not None:
            if core_path is None:
                core_path = core.save(tmp / CORESET)
            files[CORESET] = core_path
        ck_metrics = dict(blob.get("metrics") or {})
        metrics = {
            "checkpoint": {k: ck_metrics.get(k) for k in ("dataset", "fingerprint", "val_accuracy", "test", "coreset",
                                                         "best_epoch", "backbone", "shipped") if k in ck_metrics},
            "parity": parity,
            "budget": budget,
        }
        if metrics["checkpoint"].get("test"):
            metrics["checkpoint"]["test"] = {k: v for k, v in metrics["checkpoint"]["test"].items() if k != "confusion"}
        n_params = int(sum(p.numel() for p in model.parameters()))
        out = write_bundle(
            out_dir, files, target=tgt.name, classes=classes, feature_config=fcfg,
            model={"name": model.config.get("name"), "config": model.config, "params": n_params,
                   "embedding_dim": int(model.embedding_dim)},
            graphs=graphs, private_key=private_key, metrics=metrics,
            extra={"target_profile": tgt.to_dict(), "skipped": skipped, "notes": notes,
                   "recommended": {"format": primary_fmt if primary in files else "onnx", "precision": tgt.precision,
                                   "threads": tgt.threads},
                   "exporter": {"onnx_opset": DEFAULT_OPSET, "versions": _versions()},
                   "graph_io": {"input": "speech-embedding sequence (96 x windows)" if frontend else "mfcc",
                                "classifier_output": "logits", "embedding_output": "embedding",
                                "tflite_int8_io": "int8 input/output; scale and zero point in the graph"},
                   **extra_manifest},
        )
    public = load_public_key(Path(private_key) if isinstance(private_key, (str, os.PathLike)) else private_key)
    manifest = verify_bundle(out, public)
    tar_path = pack_bundle(out) if tar else None
    if tar_path is not None:
        verify_bundle(tar_path, public)
    return ExportResult(bundle=out, tar=tar_path, manifest=manifest, parity=parity, notes=notes)
