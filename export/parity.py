"""Parity of exported graphs with the torch model: output differences and top-1 agreement.

Exported graphs are run by the device's own backend (:mod:`edgekws.device.backend`: ONNX Runtime or LiteRT, its
int8 input quantisation ``round(x / scale + zero_point)`` and output dequantisation), so the parity a bundle
records is measured on the code the device runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["compare", "graph_outputs", "torch_outputs"]


@torch.no_grad()
def torch_outputs(model: torch.nn.Module, x: np.ndarray, kind: str = "classifier", batch_size: int = 256) -> np.ndarray:
    """Logits (``kind="classifier"``) or embeddings of the torch model, eval mode, float32."""
    model.eval()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    fn = model if kind == "classifier" else model.embed
    outs = [fn(torch.from_numpy(x[s : s + batch_size])).numpy() for s in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def graph_outputs(path: str | os.PathLike, x: np.ndarray, threads: int = 1, batch_size: int = 256) -> np.ndarray:
    """Outputs of an exported ``.onnx`` or ``.tflite`` graph for inputs ``x`` ``(N, H, W)`` or ``(N, 1, H, W)``,
    run by :func:`edgekws.device.backend.open_backend` (the device's backend) ``batch_size`` rows at a time."""
    from edgekws.device.backend import BackendError, open_backend

    p = Path(path)
    if p.suffix not in (".onnx", ".tflite"):
        raise ValueError(f"unknown graph format {p.suffix!r} ({p}); expected .onnx or .tflite")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    try:
        backend = open_backend(p, threads=threads)
        outs = [backend.predict(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]
    except BackendError as exc:
        raise ValueError(str(exc)) from None
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def compare(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None, *, logits: bool = True
) -> dict[str, Any]:
    """``max_abs_diff``, ``mean_abs_diff``, ``rel_max_diff`` (max diff / max |reference|); for logits (2-D, more
    than one column) also ``top1_agreement`` (argmax equal) and, with ``labels``, both accuracies. For embeddings
    (``logits=False``) ``cosine`` is the mean cosine similarity of matching rows instead."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"outputs differ in shape: {ref.shape} vs {cand.shape}")
    diff = np.abs(ref - cand)
    out: dict[str, Any] = {
        "n": len(ref),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "rel_max_diff": float(diff.max() / max(np.abs(ref).max(), 1e-12)) if diff.size else 0.0,
    }
    if not logits and ref.ndim == 2 and len(ref):
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
        out["cosine"] = float(np.mean(np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-12)))
    elif ref.ndim == 2 and ref.shape[1] > 1 and len(ref):
        out["top1_agreement"] = float(np.mean(ref.argmax(1) == cand.argmax(1)))
        if labels is not None:
            y = np.asarray(labels)
            out["reference_accuracy"] = float(np.mean(ref.argmax(1) == y))
            out["accuracy"] = float(np.mean(cand.argmax(1) == y))
    return out
