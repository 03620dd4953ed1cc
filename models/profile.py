"""Size, compute and latency of models.

MAC counting convention (:func:`count_macs`): one multiply-accumulate per weight use, counted with
forward hooks on every convolution and ``nn.Linear`` for a single clip (batch 1):

* convolution: ``out_elements * (in_channels / groups) * prod(kernel_size)``, so a depthwise 3x3
  conv costs ``9`` MACs per output element and a pointwise conv ``in_channels``;
* linear: ``out_elements * in_features``.

Bias additions, BatchNorm (folded into the convolution on export), ReLU, pooling and the residual
additions are not counted. A module called several times is counted each time.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["count_params", "count_macs", "layer_macs", "model_summary", "measure_latency"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BN running statistics excluded)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def _input_tensor(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (H, W) or (C, H, W), got {input_shape!r}")
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    return torch.zeros((1, *shape), dtype=dtype, device=device)


def layer_macs(model: nn.Module, input_shape: Sequence[int]) -> list[dict[str, Any]]:
    """Per-call MACs of every convolution / linear layer for one clip.

    Parameters
    ----------
    model : nn.Module
        takes ``(1, C, H, W)`` inputs.
    input_shape : ``(H, W)`` (one channel) or ``(C, H, W)``

    Returns
    -------
    list of ``{"name", "type", "output_shape", "macs"}`` in call order.
    """
    names = {m: n for n, m in model.named_modules()}
    rows: list[dict[str, Any]] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, _ConvNd):
            per_out = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
        else:
            per_out = module.in_features
        rows.append(
            {
                "name": names.get(module, ""),
                "type": type(module).__name__,
                "output_shape": tuple(output.shape[1:]),
                "macs": int(output.numel()) * int(per_out),
            }
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (_ConvNd, nn.Linear))]
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(_input_tensor(model, input_shape))
    finally:
        for h in handles:
            h.remove()
        for m, flag in saved:
            m.training = flag
    return rows


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass for one clip of shape ``input_shape`` (``(H, W)``
    or ``(C, H, W)``); see the module docstring for what is counted."""
    return int(sum(r["macs"] for r in layer_macs(model, input_shape)))


def _int8_bytes(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        if isinstance(m, (_ConvNd, nn.Linear)):
            out = m.out_channels if isinstance(m, _ConvNd) else m.out_features
            total += m.weight.numel() + 4 * out + 4 * out
    return total


def model_summary(name: str, n_classes: int, input_shape: Sequence[int], **kwargs: Any) -> dict[str, Any]:
    """Size and compute of a registered model.

    Returns
    -------
    dict
        ``name``, ``n_classes``, ``input_shape``, ``embedding_dim``, ``params``, ``macs`` (one
        clip), ``fp32_kb`` (``4 * params / 1024``) and ``int8_kb``: an estimate for a
        post-training-quantised export with BatchNorm folded into the convolutions, one byte per
        conv/linear weight plus an int32 bias and a float32 scale per output channel.
    """
    from . import create_model

    model = create_model(name, n_classes, input_shape, **kwargs)
    params = count_params(model)
    return {
        "name": name,
        "n_classes": int(n_classes),
        "input_shape": tuple(int(v) for v in input_shape),
        "embedding_dim": model.embedding_dim,
        "params": params,
        "macs": count_macs(model, input_shape),
        "fp32_kb": 4 * params / 1024,
        "int8_kb": _int8_bytes(model) / 1024,
    }


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = 1,
) -> dict[str, float]:
    """Single-clip eval-mode forward latency in milliseconds.

    ``threads`` sets ``torch.set_num_threads`` for the measurement (restored afterwards); ``None``
    keeps the current setting. Returns ``{"median_ms", "mean_ms", "min_ms", "p90_ms", "threads"}``.
    """
    x = _input_tensor(model, input_shape)
    saved_threads = torch.get_num_threads()
    saved = [(m, m.training) for m in model.modules()]
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        model.eval()
        with torch.inference_mode():
            for _ in range(int(warmup)):
                model(x)
            for _ in range(int(runs)):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(saved_threads)
        for m, flag in saved:
            m.training = flag
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "min_ms": times[0],
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "threads": float(torch.get_num_threads() if threads is None else threads),
    }
