"""How good is a coreset? Train finite nets on it and compare with random real samples of the same size.

The fair baseline trains the random real clips with the *same* recipe as the coreset (MSE on one-hot targets,
features only), and also reports cross-entropy training of the same clips; the gain is counted over the stronger
of the two. Every number is a mean ± std over seeds, on the real test split.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Sequence

import numpy as np

from edgekws.server.data import Prepared
from edgekws.server.rfad import Coreset, coreset_mismatch, random_real_coreset
from edgekws.server.train import AugmentConfig, TrainConfig, evaluate, train_model

__all__ = ["coreset_train_config", "evaluate_coreset", "mean_std"]


def coreset_train_config(model: str, *, loss: str = "mse", epochs: int = 60, seed: int = 0,
                         model_kwargs: dict | None = None, device: str = "auto") -> TrainConfig:
    """The recipe for small feature sets: SpecAugment only (no waveforms to shift or mix), >= 12 steps an epoch."""
    return TrainConfig(model=model, model_kwargs=dict(model_kwargs or {}), epochs=epochs, loss=loss, seed=seed,
                       min_steps_per_epoch=12, device=device,
                       augment=AugmentConfig(time_shift_ms=0.0, gain_db=0.0, noise_prob=0.0))


def mean_std(values: Sequence[float], *, scale: float = 100.0) -> dict[str, Any]:
    """Mean, sample std (0 for one value), count and the runs of ``values * scale``.

    The default turns accuracies in [0, 1] into percent; pass ``scale=1`` for values already in percent.
    """
    vals = [scale * float(v) for v in values]
    if not vals:
        raise ValueError("mean_std needs at least one value")
    return {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals),
            "runs": vals}


def evaluate_coreset(
    coreset: Coreset,
    prepared: Prepared,
    *,
    model: str = "cnn4",
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 60,
    full_data_epochs: int = 0,
    device: str = "auto",
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Test accuracy of ``model`` trained on the coreset vs on random real clips (MSE and CE), per seed.

    ``prepared`` must be the dataset the coreset was distilled from (same classes and feature statistics).
    With ``full_data_epochs > 0`` the same net is also trained on the whole training split (waveform augmentation,
    cross-entropy: the full-data recipe) and ``ratio_to_full_data`` is reported.
    """
    why = coreset_mismatch(coreset, prepared.class_names, prepared.feature_cfg)
    if why:
        raise ValueError(f"{why}; evaluate on the dataset and split the coreset was distilled from")
    # the class each row was drawn for (a teacher's soft labels may put a row's argmax elsewhere)
    per_class = int(np.bincount(coreset.init_labels, minlength=coreset.n_classes).max())
    _, xtr, ytr = prepared.subset("train")
    _, xv, yv = prepared.subset("val")
    _, xt, yt = prepared.subset("test")
    c = prepared.n_classes
    runs: dict[str, list[float]] = {"coreset": [], "random_real_mse": [], "random_real_ce": []}
    if full_data_epochs > 0:
        runs["full_data"] = []
    for seed in seeds:
        xr, yr = random_real_coreset(xtr, ytr, per_class, seed=seed, n_classes=c)
        cases = {
            "coreset": (coreset.x, coreset.y, "mse" if coreset.labels == "rfad" else "ce"),
            "random_real_mse": (xr, yr, "mse"),
            "random_real_ce": (xr, yr.argmax(1), "ce"),
        }
        for name, (x, y, loss) in cases.items():
            res = train_model(x, y, xv if len(xv) else None, yv if len(yv) else None, prepared.feature_cfg, c,
                              coreset_train_config(model, loss=loss, epochs=epochs, seed=seed, device=device),
                              inputs="features")
            acc = evaluate(res.model, xt, yt, c)["accuracy"]
            runs[name].append(acc)
            if progress:
                progress({"event": "evaluate", "case": name, "seed": seed, "test_accuracy": acc})
        if full_data_epochs > 0:
            xw, _, yw = prepared.subset("train")
            cfg = TrainConfig(model=model, epochs=full_data_epochs, seed=seed, device=device)
            res = train_model(xw, yw, xv if len(xv) else None, yv if len(yv) else None, prepared.feature_cfg, c,
                              cfg, inputs="waveform", noise=prepared.noise)
            acc = evaluate(res.model, xt, yt, c)["accuracy"]
            runs["full_data"].append(acc)
            if progress:
                progress({"event": "evaluate", "case": "full_data", "seed": seed, "test_accuracy": acc})
    out: dict[str, Any] = {"model": model, "per_class": per_class, "seeds": list(seeds), "epochs": epochs,
                           "test_n": int(len(yt))}
    out.update({k: mean_std(v) for k, v in runs.items()})
    stronger = max(("random_real_mse", "random_real_ce"), key=lambda k: out[k]["mean"])
    out["stronger_random_baseline"] = stronger
    out["gain_over_random_points"] = out["coreset"]["mean"] - out[stronger]["mean"]
    if "full_data" in out and out["full_data"]["mean"] > 0:
        out["ratio_to_full_data"] = out["coreset"]["mean"] / out["full_data"]["mean"]
    return out
