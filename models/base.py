"""Common base class for the 1-channel MFCC classifiers, and MC-dropout helpers.

Every model in :mod:`edgekws.models` is a :class:`KWSModel`. Its computation is split in two:

``embed(x)``
    backbone -> global average pool -> flatten; shape ``(B, embedding_dim)``.
``head(z)``
    ``classifier(dropout(z))``; shape ``(B, n_classes)``.

``forward(x) == head(embed(x))``. Dropout sits only in the head, so with dropout off
(eval mode) ``classifier(embed(x))`` reproduces ``forward(x)`` exactly; a device can fine-tune the
final ``nn.Linear`` (``model.classifier``) on stored embeddings without the backbone.

Inputs are float tensors of shape ``(B, 1, H, W)`` or ``(B, H, W)`` with ``H = n_mfcc`` and
``W = frames``. The backbones end in adaptive pooling, so one model accepts any ``H x W`` at or above
the minimum its downsampling needs (8 x 8 always works).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["KWSModel", "as_batch_images", "mc_predict"]


def as_batch_images(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as a ``(B, 1, H, W)`` tensor.

    Parameters
    ----------
    x : torch.Tensor, shape ``(B, H, W)`` or ``(B, 1, H, W)``

    Raises
    ------
    ValueError
        if ``x`` has another rank or more than one channel.
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected 1 input channel, got input of shape {tuple(x.shape)}")
        return x
    raise ValueError(f"expected input of shape (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")


def _check_shape(input_shape: Sequence[int]) -> tuple[int, int]:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"input_shape must be (n_mfcc, frames) with positive sizes, got {input_shape!r}")
    return shape  # type: ignore[return-value]


class _ModeGuard:
    """Restores the ``training`` flags of every submodule on ``__exit__``."""

    def __init__(self, model: nn.Module, saved: list[tuple[nn.Module, bool]]):
        self._model = model
        self._saved = saved

    def __enter__(self) -> nn.Module:
        return self._model

    def __exit__(self, *exc: object) -> bool:
        for module, flag in self._saved:
            module.training = flag
        return False


class KWSModel(nn.Module):
    """Base class: ``forward(x) = classifier(dropout(embed(x)))``.

    Subclasses call ``super().__init__(n_classes, input_shape)``, assign ``self.body`` (an
    ``nn.Module`` mapping ``(B, 1, H, W)`` to a feature map ``(B, D, h, w)``) and then call
    ``self._finish(embedding_dim=D, dropout=p, kwargs=...)``, which adds the pooling, dropout and
    classifier, initialises the weights and records ``config``.

    Attributes
    ----------
    n_classes : int
    input_shape : tuple[int, int]
        ``(n_mfcc, frames)`` the model was built for (used for export and profiling; other
        shapes are accepted too).
    embedding_dim : int
        size ``D`` of :meth:`embed` outputs.
    dropout : nn.Dropout
        the only dropout layer, applied to the embedding before the classifier.
    classifier : nn.Linear
        ``D -> n_classes`` head.
    config : dict
        ``{"name", "n_classes", "input_shape", "kwargs"}``, JSON-serialisable; rebuild with
        :func:`edgekws.models.model_from_config`.
    """

    arch: str = ""

    def __init__(self, n_classes: int, input_shape: Sequence[int]):
        super().__init__()
        if int(n_classes) < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.n_classes = int(n_classes)
        self.input_shape = _check_shape(input_shape)

    def _finish(self, *, embedding_dim: int, dropout: float, kwargs: dict[str, Any]) -> None:
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding_dim = int(embedding_dim)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(float(dropout))
        self.classifier = nn.Linear(self.embedding_dim, self.n_classes)
        self._init_weights()
        self.config: dict[str, Any] = {
            "name": self.arch,
            "n_classes": self.n_classes,
            "input_shape": list(self.input_shape),
            "kwargs": dict(kwargs),
        }

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map, ``(B, embedding_dim, h, w)``."""
        return self.body(as_batch_images(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features after global pooling, before dropout and classifier.

        Parameters
        ----------
        x : torch.Tensor, shape ``(B, 1, H, W)`` or ``(B, H, W)``

        Returns
        -------
        torch.Tensor, shape ``(B, embedding_dim)``
        """
        return torch.flatten(self.pool(self.forward_features(x)), 1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from embeddings: ``classifier(dropout(z))``; ``(B, D) -> (B, n_classes)``."""
        return self.classifier(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, ``(B, n_classes)``, for ``x`` of shape ``(B, 1, H, W)`` or ``(B, H, W)``."""
        return self.head(self.embed(x))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Zeros of shape ``(batch, 1, *input_shape)`` on the model's device (for export/tracing)."""
        p = next(self.parameters())
        return torch.zeros((batch, 1, *self.input_shape), dtype=p.dtype, device=p.device)

    @property
    def dropout_in_head_only(self) -> bool:
        """True when ``self.dropout`` is the only dropout layer, so :meth:`embed` is deterministic
        in MC-dropout mode and :func:`mc_predict` may reuse one embedding for all samples."""
        return all(m is self.dropout for m in self.modules() if isinstance(m, _DropoutNd))

    def mc_dropout(self, enabled: bool = True) -> _ModeGuard:
        """Switch to MC-dropout mode (or plain eval mode with ``enabled=False``).

        In MC-dropout mode every dropout layer samples a fresh mask on each call while all other
        modules (BatchNorm in particular) are in eval mode: running statistics are used and never
        updated. The change takes effect immediately; the returned object is a context manager that
        restores the previous ``training`` flag of every submodule on exit::

            with model.mc_dropout():
                a, b = model(x), model(x)   # differ
            # previous train/eval state is back

        ``model.mc_dropout(True)`` without ``with`` leaves the model in MC-dropout mode
        (``model.eval()`` or ``model.train()`` leave it).
        """
        saved = [(m, m.training) for m in self.modules()]
        self.eval()
        if enabled:
            for m in self.modules():
                if isinstance(m, _DropoutNd):
                    m.train(True)
        return _ModeGuard(self, saved)


@torch.no_grad()
def mc_predict(model: KWSModel, x: torch.Tensor, T: int, *, seed: int | None = None) -> torch.Tensor:
    """Monte-Carlo dropout class probabilities.

    When dropout is only applied before the classifier (all models here), the backbone is
    deterministic in MC-dropout mode: ``x`` is embedded once, the ``(B, D)`` embedding is tiled to
    ``(T * B, D)`` and only ``dropout + classifier`` run, in one batched call. The cost is one
    forward pass plus ``T`` tiny matrix products. A model with dropout elsewhere gets ``T`` full
    forward passes in MC-dropout mode. BatchNorm stays in eval mode; the model's train/eval state
    is restored afterwards.

    Parameters
    ----------
    model : KWSModel
    x : torch.Tensor, shape ``(B, 1, H, W)`` or ``(B, H, W)``
    T : int
        number of stochastic passes, ``>= 1``.
    seed : int, optional
        seed for the dropout masks; the global RNG state is left untouched when given.

    Returns
    -------
    torch.Tensor, shape ``(T, B, n_classes)``
        softmax probabilities; each ``[t, b]`` row sums to 1.
    """
    if int(T) < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    T = int(T)
    x = as_batch_images(x)
    if seed is None:
        return _mc_predict(model, x, T)
    if x.device.type == "cpu":
        fork = torch.random.fork_rng(devices=[])
    else:
        index = x.device.index if x.device.index is not None else 0
        fork = torch.random.fork_rng(devices=[index], device_type=x.device.type)
    with fork:
        torch.manual_seed(int(seed))
        return _mc_predict(model, x, T)


def _mc_predict(model: KWSModel, x: torch.Tensor, T: int) -> torch.Tensor:
    with model.mc_dropout(True):
        if model.dropout_in_head_only:
            z = model.embed(x)
            b, d = z.shape
            tiled = z.unsqueeze(0).expand(T, b, d).reshape(T * b, d)
            logits = model.head(tiled).reshape(T, b, -1)
        else:
            logits = torch.stack([model(x) for _ in range(T)])
    return torch.softmax(logits, dim=-1)
