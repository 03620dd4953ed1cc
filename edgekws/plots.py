"""Plots (matplotlib, imported lazily; files written atomically)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from edgekws.fileio import atomic_open

__all__ = ["plot_coreset", "plot_distill_curves", "plot_training_curves", "save_figure"]


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_training_curves(history: Sequence[dict[str, float]], path: str | os.PathLike, title: str = "") -> Path:
    """Training loss and validation accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, ax1 = plt.subplots(figsize=(6.4, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    if any("val_accuracy" in h for h in history):
        ax2 = ax1.twinx()
        ax2.plot(epochs, [100 * h.get("val_accuracy", float("nan")) for h in history], color="tab:orange")
        ax2.set_ylabel("validation accuracy (%)", color="tab:orange")
    ax1.set_title(title)
    ax1.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_distill_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Distillation loss (mean over the steps since the last validation) and KRR validation accuracy per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(6.4, 3.6))
    pts = [h for h in history if h.get("loss") is not None]
    ax1.plot([h["step"] for h in pts], [h["loss"] for h in pts], "o-", color="tab:blue", ms=3)
    ax1.set_xlabel("step")
    ax1.set_ylabel("KRR loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot([h["step"] for h in history], [100 * h["val_accuracy"] for h in history], "s-", color="tab:orange",
             ms=3)
    ax2.set_ylabel("KRR validation accuracy (%)", color="tab:orange")
    ax1.set_title(title or "distillation")
    ax1.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_coreset(x: Any, labels: Any, class_names: Sequence[str], path: str | os.PathLike, *,
                 real_x: Any = None, real_labels: Any = None, classes: Sequence[int] | None = None,
                 per_class: int = 3, title: str = "") -> Path:
    """A grid of MFCC images: for a few classes, distilled samples (and real clips of the class beside them).

    ``x`` ``(M, n_mfcc, T)`` coreset features with integer ``labels`` ``(M,)``; ``real_x``/``real_labels`` optional
    real features of the same normalisation. One row per class, ``per_class`` distilled then ``per_class`` real.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x, labels = np.asarray(x), np.asarray(labels)
    if classes is None:
        classes = list(range(min(4, len(class_names))))
    with_real = real_x is not None and real_labels is not None
    cols = per_class * (2 if with_real else 1)
    fig, axes = plt.subplots(len(classes), cols, figsize=(1.6 * cols, 1.5 * len(classes)), squeeze=False)
    lim = float(np.percentile(np.abs(x), 99)) or 1.0
    for r, c in enumerate(classes):
        rows = [("distilled", x[i]) for i in np.flatnonzero(labels == c)[:per_class]]
        if with_real:
            rows += [("real", real_x[i]) for i in np.flatnonzero(np.asarray(real_labels) == c)[:per_class]]
        for k in range(cols):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k < len(rows):
                kind, img = rows[k]
                ax.imshow(img, origin="lower", aspect="auto", cmap="magma", vmin=-lim, vmax=lim)
                ax.set_title(f"{class_names[c]} ({kind})", fontsize=7)
            else:
                ax.axis("off")
    fig.suptitle(title or "coreset MFCC (rows: classes; y: coefficient, x: frame)", fontsize=9)
    return save_figure(fig, path)
