"""Fine-tune the classifier head on the device, in numpy, on frozen embeddings. No torch.

Training data: the bundle's coreset (its learned soft labels) and the prototypes a person labelled. Both go through
the bundle's embedding graph once (coreset embeddings are cached in the state directory); then a linear softmax head
``logits = z @ W.T + b`` is trained by full-batch Adam on soft-target cross-entropy, started from the bundle's head
and pulled towards it by an L2 term (new classes start from zero). Labels naming a class the bundle does not know add
that class. The result is written as a new local model version, which :class:`DeviceModel` (and so ``listen``)
picks up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekws.fileio import atomic_open

from .model import DeviceModel, DeviceModelError, read_coreset, write_version
from .runtime import softmax
from .store import LabelStore

__all__ = ["FinetuneConfig", "coreset_embeddings", "coreset_targets", "finetune", "match_temperature", "train_head"]


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 300
    lr: float = 0.01
    l2: float = 1e-3  # pull towards the starting head
    proto_weight: float = 3.0  # one labelled prototype counts as this many coreset samples
    balance: bool = True  # equalise the total weight of every class (a new class may have many labels, old few)
    use_coreset: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.l2 < 0 or self.proto_weight <= 0:
            raise ValueError("steps >= 1, lr > 0, l2 >= 0 and proto_weight > 0 are required")


def coreset_targets(y: np.ndarray) -> np.ndarray:
    """Class distributions from a coreset's learned labels (regression targets, may be negative)."""
    y = np.asarray(y, dtype=np.float64)
    t = np.clip(y, 0.0, None)
    s = t.sum(axis=1, keepdims=True)
    onehot = np.eye(y.shape[1])[np.argmax(y, axis=1)]
    return np.where(s > 1e-6, t / np.maximum(s, 1e-12), onehot).astype(np.float32)


def train_head(Z: np.ndarray, T: np.ndarray, weights: np.ndarray, W0: np.ndarray, b0: np.ndarray,
               cfg: FinetuneConfig = FinetuneConfig()) -> tuple[np.ndarray, np.ndarray, dict]:
    """Full-batch Adam on weighted soft-target cross-entropy + ``l2 * ||W - W0||^2``.

    Args:
        Z: ``(N, D)`` embeddings. T: ``(N, C)`` target distributions. weights: ``(N,)`` sample weights.
        W0, b0: ``(C, D)``, ``(C,)`` starting head (also the L2 anchor).
    Returns: ``W``, ``b`` and ``{"loss", "train_accuracy"}``.
    """
    Z = np.asarray(Z, dtype=np.float32)
    T = np.asarray(T, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    n, d = Z.shape
    c = T.shape[1]
    if T.shape[0] != n or w.shape != (n,) or W0.shape != (c, d) or b0.shape != (c,):
        raise ValueError(f"shape mismatch: Z {Z.shape}, T {T.shape}, weights {w.shape}, W0 {W0.shape}, b0 {b0.shape}")
    if n == 0:
        raise ValueError("nothing to train on: no coreset samples and no labelled clips")
    w = w / w.sum()
    W, b = W0.astype(np.float32).copy(), b0.astype(np.float32).copy()
    params = [W, b]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    loss = 0.0
    for step in range(1, cfg.steps + 1):
        P = softmax(Z @ W.T + b)
        G = (P - T) * w[:, None]
        grads = [G.T @ Z + 2 * cfg.l2 * (W - W0), G.sum(axis=0)]
        for i, (p, g) in enumerate(zip(params, grads)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            p -= cfg.lr * (m[i] / (1 - b1**step)) / (np.sqrt(v[i] / (1 - b2**step)) + eps)
        if step == cfg.steps:
            loss = float(-(w * (T * np.log(P + 1e-12)).sum(1)).sum())
    acc = float(np.mean(np.argmax(Z @ W.T + b, 1) == np.argmax(T, 1)))
    return W, b, {"loss": loss, "train_accuracy": acc}


def match_temperature(Z: np.ndarray, W: np.ndarray, b: np.ndarray, W0: np.ndarray, b0: np.ndarray,
                      shipped_temperature: float, n_base: int | None = None) -> float:
    """The temperature at which the head ``W, b`` is as confident on ``Z`` (mean top posterior) as the bundle's head
    ``W0, b0`` at the temperature it ships with.

    A bundle's detector threshold was chosen for its own head at its own temperature; a fine-tuned head learns from
    soft targets and comes out less sure of itself, so at temperature 1 the shipped threshold would silence it.
    Matching the mean confidence on the fine-tuning data keeps the threshold's meaning. ``n_base``: the bundle's
    classes are the first ``n_base`` of the new head's.
    """
    Z = np.asarray(Z, np.float64)
    n = int(n_base or W0.shape[0])
    target = float(softmax((Z @ W0.T + b0) / shipped_temperature).max(axis=1).mean())
    z = Z @ np.asarray(W, np.float64)[:n].T + np.asarray(b, np.float64)[:n]
    grid = np.exp(np.linspace(np.log(0.02), np.log(5.0), 161))
    conf = np.array([float(softmax(z / T).max(axis=1).mean()) for T in grid])
    return round(float(grid[int(np.argmin(np.abs(conf - target)))]), 4)


def coreset_embeddings(model: DeviceModel, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Embeddings and soft targets of the bundle's coreset (cached per bundle and graph in ``cache_dir``)."""
    path = model.bundle.coreset_path
    if path is None:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), ()
    x, y, classes, fc = read_coreset(path)
    if tuple(fc.shape) != tuple(model.feature_config.shape):
        raise DeviceModelError(f"coreset features {fc.shape} do not fit the model input {model.feature_config.shape}")
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"coreset_emb_{model.fmt}_{model.precision}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                if z["Z"].shape[0] == len(x):
                    return z["Z"], coreset_targets(y), classes
    Z = model.embed(x[:, None])
    if cache is not None:
        with atomic_open(cache, "wb") as fh:
            np.savez(fh, Z=Z)
    return Z, coreset_targets(y), classes


def _assemble(base_classes: Sequence[str], core_classes: Sequence[str], Zc: np.ndarray, Tc: np.ndarray,
              Zp: np.ndarray, labels: Sequence[str], cfg: FinetuneConfig):
    classes = list(base_classes)
    for lab in labels:
        if lab not in classes:
            classes.append(lab)
    C = len(classes)
    parts_Z, parts_T, parts_w = [], [], []
    if cfg.use_coreset and len(Zc):
        T = np.zeros((len(Zc), C), np.float32)
        for j, name in enumerate(core_classes):
            if name in classes:
                T[:, classes.index(name)] = Tc[:, j]
        T /= np.maximum(T.sum(1, keepdims=True), 1e-12)
        parts_Z.append(Zc)
        parts_T.append(T)
        parts_w.append(np.ones(len(Zc), np.float32))
    if len(labels):
        T = np.zeros((len(labels), C), np.float32)
        T[np.arange(len(labels)), [classes.index(lab) for lab in labels]] = 1.0
        parts_Z.append(Zp)
        parts_T.append(T)
        parts_w.append(np.full(len(labels), cfg.proto_weight, np.float32))
    if not parts_Z:
        raise ValueError("nothing to train on: the bundle has no coreset and no clip is labelled")
    Z, T, w = np.concatenate(parts_Z), np.concatenate(parts_T), np.concatenate(parts_w)
    if cfg.balance:
        mass = (w[:, None] * T).sum(0)
        scale = np.where(mass > 0, mass[mass > 0].mean() / np.maximum(mass, 1e-12), 0.0)
        w = w * (T @ scale)
    return classes, Z, T, w


def finetune(model: DeviceModel, store: LabelStore | None, state: Path, cfg: FinetuneConfig = FinetuneConfig(),
             *, extra: tuple[np.ndarray, Sequence[str]] | None = None,
             on_event: Callable[[dict], None] | None = None) -> dict:
    """Train a new head from the coreset + labelled clips, write it as the next local version, return a report.

    ``extra`` adds labelled embeddings ``(Z, labels)`` directly (benchmarks); the store's labelled clips are used
    otherwise.
    """
    t0 = time.perf_counter()
    W0, b0 = model.bundle.head()
    base = list(model.bundle.classes)
    Zc, Tc, core_classes = coreset_embeddings(model, state)
    t_core = time.perf_counter() - t0
    Zp_list, labels = [], []
    if store is not None:
        for clip in store.labeled():
            if clip.embedding is None:
                continue
            Zp_list.append(clip.embedding)
            labels.append(clip.label)
    if extra is not None:
        Zp_list += list(np.asarray(extra[0], np.float32))
        labels += list(extra[1])
    D = W0.shape[1]
    Zp = np.stack(Zp_list).astype(np.float32) if Zp_list else np.zeros((0, D), np.float32)
    if Zp.shape[1] != D:
        raise DeviceModelError(f"labelled clips have {Zp.shape[1]}-d embeddings, the head expects {D}")
    classes, Z, T, w = _assemble(base, core_classes or base, Zc, Tc, Zp, labels, cfg)
    Wi = np.zeros((len(classes), D), np.float32)
    bi = np.zeros(len(classes), np.float32)
    Wi[: len(base)], bi[: len(base)] = W0, b0
    if len(classes) > len(base):  # new classes start below the old ones
        bi[len(base):] = float(b0.min()) - 1.0
    t1 = time.perf_counter()
    W, b, stats = train_head(Z, T, w, Wi, bi, cfg)
    t_train = time.perf_counter() - t1
    shipped_T = model.bundle.detector.get("temperature")
    if shipped_T is not None:  # the shipped threshold keeps its meaning for the new head (see match_temperature)
        stats["temperature"] = match_temperature(Z, W, b, W0, b0, shipped_T, n_base=len(base))
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    meta = {"base_bundle": str(model.bundle.path), "n_coreset": int(len(Zc) if cfg.use_coreset else 0),
            "n_labeled": len(labels), "labels_per_class": counts,
            "new_classes": [c for c in classes if c not in base], "config": asdict(cfg), **stats,
            "seconds_coreset_embed": round(t_core, 4), "seconds_train": round(t_train, 4)}
    version = write_version(state, W, b, classes, meta)
    meta.update(version=version, classes=classes, seconds=round(time.perf_counter() - t0, 4))
    if on_event:
        on_event({"event": "finetune", **meta})
    return meta
