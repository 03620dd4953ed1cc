"""TFLite graphs through litert-torch (the ``tflite`` extra), run with ai-edge-litert (or tflite_runtime).

fp32: a direct conversion. int8: PT2E static quantization (per-channel symmetric int8 weights, int8 activations
calibrated on real or coreset features) converted to a fully-int8 graph whose input and output are int8 too; the
scale and zero point of each are in the graph (:func:`run_tflite` applies them). int8 needs calibration data:
litert-torch 0.10's dynamic-range path (PT2E ``is_dynamic=True``) produced graphs whose output did not depend on the
input for our DS-CNN, so it is not offered.

The graphs have a static single-clip input ``(1, 1, n_mfcc, frames)``: TFLite interpreters on boards resize
poorly, and a keyword spotter runs one window at a time.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekws.fileio import atomic_write_bytes

from .onnx import example_input, graph_module

__all__ = ["export_tflite", "run_tflite", "tflite_interpreter", "tflite_unavailable_reason"]


def tflite_unavailable_reason() -> str | None:
    """None when litert-torch can convert here, else why not (for manifests and console messages)."""
    try:
        import litert_torch  # noqa: F401
    except ImportError as exc:
        return (f"litert-torch is not installed ({exc.msg}); install the 'tflite' extra "
                "(pip install 'edgekws[tflite]') to add TFLite graphs")
    except Exception as exc:
        return f"litert-torch failed to import ({exc.__class__.__name__}: {exc})"
    return None


@contextlib.contextmanager
def _quiet():
    """litert-torch prints a progress tree to the console; the library reports through callbacks instead."""
    import litert_torch

    before = litert_torch.config.show_progress
    litert_torch.config.show_progress = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        litert_torch.config.show_progress = before


def export_tflite(model: torch.nn.Module, path: str | os.PathLike, *, kind: str = "classifier", int8: bool = False,
                  calibration: np.ndarray | None = None) -> Path:
    """Convert ``model`` (classifier or embedding graph) to a ``.tflite`` file, written atomically."""
    reason = tflite_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    import litert_torch

    module = graph_module(model.cpu(), kind)
    x = example_input(model)
    with _quiet(), torch.no_grad():
        if not int8:
            edge = litert_torch.convert(module, (x,))
        else:
            from litert_torch.quantize import pt2e_quantizer, quant_config
            from torchao.quantization.pt2e import (
                move_exported_model_to_eval,
                quantize_pt2e,
            )

            if calibration is None or len(calibration) == 0:
                raise ValueError("int8 TFLite needs calibration features (a coreset or real clips)")
            cal = np.asarray(calibration, dtype=np.float32)
            cal = cal[:, None] if cal.ndim == 3 else cal
            if tuple(cal.shape[1:]) != tuple(x.shape[1:]):
                raise ValueError(f"calibration features are {cal.shape[1:]}, the model takes {tuple(x.shape[1:])}")
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
            prepared = quantize_pt2e.prepare_pt2e(torch.export.export(module, (x,)).module(), quantizer)
            for c in cal:
                prepared(torch.from_numpy(c[None]))
            converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
            move_exported_model_to_eval(converted)  # quantized ops in eval form; the flag itself is not touched
            for sub in converted.modules():
                sub.training = False
            edge = litert_torch.convert(converted, (x,),
                                        quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
        content = edge.model_content()
    return atomic_write_bytes(path, content)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise RuntimeError("running TFLite graphs needs ai-edge-litert (pip install ai-edge-litert) "
                               "or tflite_runtime") from None
    return Interpreter


def tflite_interpreter(path: str | os.PathLike, threads: int = 1) -> Any:
    """An allocated TFLite interpreter for ``path``."""
    it = _interpreter_class()(model_path=str(path), num_threads=int(threads))
    it.allocate_tensors()
    return it


def run_tflite(graph: Any, x: np.ndarray) -> np.ndarray:
    """Float outputs of a TFLite graph (path or interpreter) for inputs ``(N, 1, H, W)``, clip by clip.

    int8 inputs/outputs are quantized/dequantized with the scale and zero point stored in the graph.
    """
    it = graph if hasattr(graph, "invoke") else tflite_interpreter(graph)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    if tuple(inp["shape"][1:]) != tuple(x.shape[1:]):
        raise ValueError(f"inputs are {x.shape[1:]} but the TFLite graph takes {tuple(inp['shape'][1:])}")
    results = []
    for clip in x:
        v = clip[None]
        if inp["dtype"] in (np.int8, np.uint8):
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            v = np.clip(np.round(v / scale + zero), info.min, info.max).astype(inp["dtype"])  # as the device
        it.set_tensor(inp["index"], v)
        it.invoke()
        y = it.get_tensor(out["index"])
        if out["dtype"] in (np.int8, np.uint8):
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        results.append(np.asarray(y, dtype=np.float32).copy())
    return np.concatenate(results) if results else np.zeros((0,), np.float32)
