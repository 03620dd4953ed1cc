"""Plots (matplotlib, imported lazily; files written atomically)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from edgekws.fileio import atomic_open

__all__ = ["plot_training_curves", "save_figure"]


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
