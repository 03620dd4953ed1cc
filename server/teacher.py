"""Teacher labels: a net trained on the whole training split labels the coreset and every view trained on it.

A coreset of a few hundred inputs holds little on its own; most of what a small set can carry is in its labels
(the same 500 inputs trained with hard labels, learned KRR labels or a teacher's soft labels differ by many points).
The server has the full labelled set, so it trains the target net on it once (the teacher), fits the softmax
temperature that makes its probabilities honest on the validation split, and

* writes ``softmax(teacher(x) / T)`` into the coreset as its labels (the device fine-tunes from them), and
* trains finite nets on the coreset by distillation: every augmented view (frame shift, feature noise, cutmix,
  SpecAugment, mixup between coreset rows) is labelled by the teacher on the fly (``train_model(teacher=...)``).

Shapes: features ``(N, H, W)`` normalised as the FeatureConfig says; logits ``(N, C)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from edgekws.server.train import AugmentConfig, TrainConfig, predict_logits

__all__ = ["fit_temperature", "softmax", "teacher_soft_labels", "distillation_train_config"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64, returned as float32 ``(N, C)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = np.exp(z - z.max(1, keepdims=True))
    return (z / z.sum(1, keepdims=True)).astype(np.float32)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)`` on ``labels``.

    A golden-section search on ``log T`` within ``[lo, hi]`` (the NLL is unimodal in ``log T`` for a fixed set of
    logits). ``logits`` ``(N, C)``, ``labels`` ``(N,)`` integer classes; needs ``N >= 1``.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels).astype(np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (N, C) logits and (N,) labels with N >= 1, got {logits.shape} and {labels.shape}")
    if not 0 < lo < hi:
        raise ValueError("need 0 < lo < hi")
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(logits, labels, math.exp(c)), _nll(logits, labels, math.exp(d))
    for _ in range(60):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(logits, labels, math.exp(d))
    return float(math.exp((a + b) / 2.0))


def teacher_soft_labels(teacher: torch.nn.Module, x: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(teacher(x) / temperature)``: probability rows ``(N, C)`` for features ``x`` ``(N, H, W)``."""
    return softmax(predict_logits(teacher, x), temperature)


def distillation_train_config(model: str, *, epochs: int = 200, patience: int = 24, seed: int = 0,
                              temperature: float = 2.0, model_kwargs: dict | None = None,
                              device: str = "auto") -> TrainConfig:
    """The recipe for training a net on a coreset from a teacher.

    An epoch is 12 batches of 64 views (so small sets repeat). The learning rate stays at its peak until
    validation accuracy stalls, is cut by 0.3 after every ``patience / 3`` epochs without a better one, and
    training stops after ``patience`` such epochs (or ``epochs``), keeping the best epoch: a net trains until it
    has learnt what its set holds, not for a fixed time. Views: up to 4 frames (80 ms) of shift, feature
    noise, cutmix of frame spans between rows (half of the batches), SpecAugment and mixup (Beta(0.4, 0.4)):
    with a teacher labelling each view, mixing rows makes new training points rather than blurred labels.
    """
    return TrainConfig(model=model, model_kwargs=dict(model_kwargs or {}), epochs=epochs, patience=patience,
                       seed=seed, device=device, loss="ce", kd_temperature=temperature, min_steps_per_epoch=12,
                       schedule="plateau",
                       augment=AugmentConfig(time_shift_ms=0.0, gain_db=0.0, noise_prob=0.0, frame_shift=4,
                                             feature_noise=0.1, cutmix=0.5, mixup=0.4))
