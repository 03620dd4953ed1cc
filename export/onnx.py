"""ONNX graphs of a trained model: the classifier (logits) and the embedding (penultimate features).

Both take normalised MFCC ``(batch, 1, n_mfcc, frames)`` float32 named ``mfcc``; the classifier returns ``logits``
``(batch, n_classes)``, the embedding graph ``embedding`` ``(batch, emb_dim)``. The batch axis is dynamic by
default (one clip on the device, a batch of coreset samples for head fine-tuning); ``dynamic_batch=False`` fixes it
to one clip. Exported with ``torch.onnx.export(dynamo=True)`` into a single self-contained file (no external data).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekws.fileio import atomic_write_bytes

__all__ = ["GRAPH_KINDS", "INPUT_NAME", "OUTPUT_NAMES", "export_onnx", "graph_module", "onnx_session", "run_onnx"]

GRAPH_KINDS = ("classifier", "embedding")
INPUT_NAME = "mfcc"
OUTPUT_NAMES = {"classifier": "logits", "embedding": "embedding"}
DEFAULT_OPSET = 18


class _Embedding(nn.Module):
    """``model.embed`` as a module's ``forward`` (the net up to its penultimate layer)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


def graph_module(model: nn.Module, kind: str = "classifier") -> nn.Module:
    """The module exported for ``kind`` ("classifier": the whole net, "embedding": up to the penultimate layer),
    in eval mode."""
    if kind not in GRAPH_KINDS:
        raise ValueError(f"unknown graph kind {kind!r}; choose one of {', '.join(GRAPH_KINDS)}")
    model.eval()
    return (model if kind == "classifier" else _Embedding(model)).eval()


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    h, w = model.input_shape
    return torch.zeros((batch, 1, h, w), dtype=torch.float32)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, kind: str = "classifier", dynamic_batch: bool = True,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` (a :class:`edgekws.models.KWSModel`) to one ONNX file, written atomically.

    Parameters
    ----------
    kind : "classifier" | "embedding"
    dynamic_batch : bool
        symbolic batch axis (``"batch"``); False gives a static single-clip graph ``(1, 1, n_mfcc, frames)``.
    opset : int
        ONNX opset (18 by default).
    """
    module = graph_module(model.cpu(), kind)
    x = example_input(model)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            module, (x,), dynamo=True, external_data=False, opset_version=int(opset), dynamic_shapes=dynamic,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAMES[kind]], verbose=False,
        )
    proto = program.model_proto
    proto.doc_string = f"edgekws {kind} graph of {model.config.get('name', type(model).__name__)}"
    return atomic_write_bytes(path, proto.SerializeToString())


def onnx_session(path: str | os.PathLike, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (1: what a keyword spotter gets on a board)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(graph: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of an ONNX graph (path or session) for inputs ``(N, 1, H, W)`` or ``(N, H, W)``.

    A static single-clip graph is run clip by clip; a dynamic one in batches of ``batch_size``.
    """
    sess = graph if hasattr(graph, "run") else onnx_session(graph)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    inp = sess.get_inputs()[0]
    step = 1 if isinstance(inp.shape[0], int) and inp.shape[0] == 1 else max(1, int(batch_size))
    outs = [sess.run(None, {inp.name: x[s : s + step]})[0] for s in range(0, len(x), step)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
