"""Models for 1-channel MFCC inputs (edgekws.models).

Every model is a :class:`KWSModel` taking ``(B, 1, n_mfcc, frames)`` (or ``(B, n_mfcc, frames)``)
float tensors and returning ``(B, n_classes)`` logits; see :mod:`edgekws.models.base` for
``embed`` / ``classifier`` / MC-dropout.

>>> model = create_model("cnn4", n_classes=12, input_shape=(40, 48))
>>> rebuilt = model_from_config(model.config)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import torch

from .base import KWSModel, as_batch_images, mc_predict
from .cnn4 import CNN4
from .dscnn import DSCNN
from .resnet import ResNet, ResNet18
from .sehead import SpeechEmbeddingHead

__all__ = [
    "CNN4",
    "DSCNN",
    "KWSModel",
    "MODELS",
    "ResNet",
    "ResNet18",
    "SpeechEmbeddingHead",
    "as_batch_images",
    "create_model",
    "mc_predict",
    "model_from_config",
]

ModelFactory = Callable[..., KWSModel]

MODELS: dict[str, ModelFactory] = {
    "cnn4": CNN4,
    "resnet18": ResNet18,
    "resnet18-w0.5": functools.partial(ResNet18, width=0.5),
    "resnet18-w0.25": functools.partial(ResNet18, width=0.25),
    # the small-set configuration: full-resolution stem (no stride, no max-pool) at a quarter of the width
    "resnet18-small": functools.partial(ResNet18, width=0.25, stem_stride=1, stem_pool=False),
    "dscnn": DSCNN,
    "se-head": SpeechEmbeddingHead,  # over frozen speech-embedding sequences (1, 96, 9), not MFCC
}
"""Registered names -> constructors ``f(n_classes, input_shape, **kwargs) -> KWSModel``."""

_REBUILD_ONLY: dict[str, ModelFactory] = {"resnet": ResNet}


def create_model(
    name: str,
    n_classes: int,
    input_shape: Sequence[int],
    *,
    seed: int | None = None,
    **kwargs: Any,
) -> KWSModel:
    """Build a registered model.

    Parameters
    ----------
    name : str
        a key of :data:`MODELS`.
    n_classes : int
    input_shape : tuple[int, int]
        ``(n_mfcc, frames)``.
    seed : int, optional
        seed for the weight initialisation (the global RNG state is left untouched when given).
    **kwargs
        model-specific options (e.g. ``widths``, ``width``, ``dropout``).

    Returns
    -------
    KWSModel
        with ``config["name"] == name`` and ``config["kwargs"]`` holding every resolved option.

    Raises
    ------
    ValueError
        for an unknown name (the message lists the known ones).
    """
    factory = MODELS.get(name) or _REBUILD_ONLY.get(name)
    if factory is None:
        known = ", ".join(sorted(MODELS))
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    if seed is None:
        model = factory(n_classes, tuple(input_shape), **kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = factory(n_classes, tuple(input_shape), **kwargs)
    model.config["name"] = name
    return model


def model_from_config(cfg: Mapping[str, Any]) -> KWSModel:
    """Rebuild an (untrained) model from ``model.config``; then load its ``state_dict``.

    ``cfg`` is ``{"name": str, "n_classes": int, "input_shape": [H, W], "kwargs": dict}``, as
    stored in ``model.config`` (JSON round-trips are fine).
    """
    missing = [k for k in ("name", "n_classes", "input_shape") if k not in cfg]
    if missing:
        raise ValueError(f"model config lacks {missing}")
    return create_model(
        str(cfg["name"]),
        int(cfg["n_classes"]),
        tuple(int(v) for v in cfg["input_shape"]),
        **dict(cfg.get("kwargs") or {}),
    )
