"""How well a shipped bundle recognises a real labelled set: the device's own code path, end to end.

:func:`check_bundle` opens a bundle as the device does (signature, graphs, front end), turns every clip of a
dataset into the model's input with the bundle's front end (MFCC or speech embeddings), runs the graph the bundle
recommends (or the one asked for) and compares the top class with the clip's label. A prediction of a class whose
name starts with ``_`` (``_nothing_``) counts as wrong for a keyword clip; ``accuracy_keywords_only`` is the same
with those classes left out of the argmax. Torch-free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["check_bundle", "score"]


def score(logits: np.ndarray, truth: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Accuracy of ``logits (N, C)`` against class indices ``truth (N,)`` in ``classes`` order; see module doc."""
    logits = np.asarray(logits, np.float64)
    truth = np.asarray(truth)
    pred = logits.argmax(1)
    silent = np.array([c.startswith("_") for c in classes])
    masked = np.where(silent[None], -np.inf, logits).argmax(1) if silent.any() and not silent.all() else pred
    per_class = {}
    for c in np.unique(truth):
        m = truth == c
        per_class[str(classes[int(c)])] = {"n": int(m.sum()), "accuracy": float((pred[m] == c).mean())}
    return {
        "n": len(truth),
        "accuracy": float((pred == truth).mean()) if len(truth) else float("nan"),
        "accuracy_keywords_only": float((masked == truth).mean()) if len(truth) else float("nan"),
        "predicted_silent_class": float(silent[pred].mean()) if len(truth) else float("nan"),
        "per_class": per_class,
    }


def check_bundle(bundle: str | os.PathLike, dataset: str, data_dir: str | os.PathLike | None, *,
                 public_key: Any = None, trust_embedded_key: bool = False, fmt: str | None = None,
                 precision: str | None = None, threads: int = 1, inputs: np.ndarray | None = None, batch: int = 64, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Accuracy of a bundle's graph on every clip of a real labelled dataset, and on its test split.

    The dataset is opened with the bundle's keyword classes (classes starting with ``_`` are not asked for).
    ``inputs``: the model inputs of every clip, ``(N, 1, H, W)``, when already computed with the bundle's front end
    (a benchmark scoring several bundles that share one); otherwise the clips go through it here.

    Returns ``{"dataset", "graph", "all": score, "test_split": score, "seconds"}`` (see :func:`score`).

    Raises:
        ValueError: the dataset lacks a keyword of the bundle, or the bundle cannot be used (message says why).
        FileNotFoundError: no dataset at ``data_dir``.
    """
    from edgekws.datasets import load_dataset, split_indices
    from edgekws.datasets.cache import load_waveforms
    from edgekws.device.model import DeviceModel, DeviceModelError, open_bundle

    t0 = time.perf_counter()
    try:
        info = open_bundle(bundle, public_key, trust_embedded_key=trust_embedded_key)
        model = DeviceModel(info, fmt=fmt, precision=precision, threads=threads)  # recommended unless asked
        fmt, precision = model.fmt, model.precision
    except DeviceModelError as exc:
        raise ValueError(str(exc)) from None
    keywords = tuple(c for c in info.classes if not c.startswith("_"))
    ds = load_dataset(dataset, data_dir, keywords=keywords)
    names = [str(ds.class_names[int(i)]) for i in np.asarray(ds.labels)]
    missing = sorted(set(names) - set(info.classes))
    if missing:
        raise ValueError(f"{dataset} has classes the bundle does not know: {missing}")
    truth = np.array([info.classes.index(n) for n in names])
    waves = load_waveforms(ds) if inputs is None else None
    n = len(ds)
    if inputs is not None and (len(inputs) != n or tuple(inputs.shape[2:]) != tuple(model.frontend.input_shape)):
        raise ValueError(f"inputs {inputs.shape} do not fit {n} clips of {model.frontend.input_shape}")
    logits = []
    for s in range(0, n, batch):
        x = inputs[s: s + batch] if inputs is not None else model.clip_inputs(waves[s: s + batch])
        logits.append(model.logits(x))
        if progress:
            progress({"event": "check", "done": min(n, s + batch), "total": n})
    z = np.concatenate(logits) if logits else np.zeros((0, len(info.classes)), np.float32)
    test = split_indices(ds).test
    return {
        "dataset": dataset,
        "graph": f"{fmt} {precision}",
        "all": score(z, truth, info.classes),
        "test_split": score(z[test], truth[test], info.classes) if len(test) else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
