"""One inference interface over ONNX Runtime and TFLite (LiteRT), torch-free.

Both backends take a float32 batch ``(B, 1, n_mfcc, frames)`` of normalised MFCC and return float32 outputs
``(B, K)`` (logits for a classifier graph, embeddings for an embedding graph). Graphs exported with a static batch
of one are run one row at a time; a TFLite graph that accepts a resized batch is resized once per batch size.
Quantised (int8/uint8) TFLite inputs and outputs are (de)quantised with the tensor's scale and zero point, so a
caller never sees the difference.

Example::

    be = open_backend("bundle/model.onnx", threads=1)
    logits = be.predict(x)            # x: (B, 1, 40, 48) float32 -> (B, n_classes)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["Backend", "BackendError", "OnnxBackend", "TFLiteBackend", "load_tflite_interpreter", "open_backend"]


class BackendError(RuntimeError):
    """A graph cannot be loaded or run; the message names the file and the fix."""


class Backend(Protocol):
    path: Path
    input_shape: tuple[int | None, ...]

    def predict(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - protocol
        ...


def _check_batch(batch: np.ndarray, expect: Sequence[int | None], path: Path) -> np.ndarray:
    x = np.ascontiguousarray(batch, dtype=np.float32)
    if x.ndim == len(expect) - 1:
        x = x[None]
    if x.ndim != len(expect):
        raise BackendError(f"{path.name}: expected input of rank {len(expect)} {tuple(expect)}, got {x.shape}")
    for got, want in zip(x.shape[1:], expect[1:]):
        if want is not None and got != want:
            raise BackendError(f"{path.name}: input shape {x.shape} does not match the graph's {tuple(expect)}")
    if not np.all(np.isfinite(x)):
        raise BackendError(f"{path.name}: input contains NaN or infinity")
    return x


def _dim(d: object) -> int | None:
    return int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None


class OnnxBackend:
    """ONNX Runtime on the CPU with a fixed number of threads."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"ONNX graph {self.path} does not exist")
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("onnxruntime is not installed: pip install 'edgekws[device]'") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        # ORT's own arena stays on: without it, glibc's adaptive mmap threshold fragments the heap when batches of
        # windows go through (RSS measured 127 MB instead of 88 MB embedding 512 windows in chunks of 16)
        try:
            self._sess = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendError(f"cannot load ONNX graph {self.path}: {exc}") from exc
        inp = self._sess.get_inputs()
        if len(inp) != 1:
            raise BackendError(f"{self.path.name}: expected one input, the graph has {len(inp)}")
        self._input = inp[0].name
        self.input_shape = tuple(_dim(d) for d in inp[0].shape)
        self._output = self._sess.get_outputs()[0].name
        self.static_batch = self.input_shape[0] == 1

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = _check_batch(batch, self.input_shape, self.path)
        if self.static_batch and len(x) != 1:
            return np.concatenate([self._run(x[i : i + 1]) for i in range(len(x))]) if len(x) else self._empty()
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self._sess.run([self._output], {self._input: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, 0), dtype=np.float32)


def load_tflite_interpreter():
    """The TFLite ``Interpreter`` class: ``ai_edge_litert`` first, then ``tflite_runtime``."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter
    except ImportError as exc:
        raise BackendError(
            "no TFLite interpreter: pip install ai-edge-litert (or tflite-runtime), or use the ONNX graph"
        ) from exc


class TFLiteBackend:
    """TFLite / LiteRT interpreter with a fixed number of threads; handles int8 inputs and static batch 1."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"TFLite graph {self.path} does not exist")
        Interpreter = load_tflite_interpreter()
        try:
            self._interp = Interpreter(model_path=str(self.path), num_threads=max(1, int(threads)))
            self._interp.allocate_tensors()
        except Exception as exc:
            raise BackendError(f"cannot load TFLite graph {self.path}: {exc}") from exc
        inputs = self._interp.get_input_details()
        if len(inputs) != 1:
            raise BackendError(f"{self.path.name}: expected one input, the graph has {len(inputs)}")
        self._in = inputs[0]
        self._out = self._interp.get_output_details()[0]
        shape = tuple(int(d) for d in self._in["shape"])
        sig = self._in.get("shape_signature")
        dyn = sig is not None and len(sig) and int(sig[0]) == -1
        self.input_shape = (None if dyn else shape[0],) + shape[1:]
        self._batch = shape[0]
        self.resizable = bool(dyn)
        self.static_batch = not dyn and shape[0] == 1
        # A graph converted channels-last takes (B, H, W, 1); ours are (B, 1, H, W).
        self._nhwc = len(shape) == 4 and shape[-1] == 1 and shape[1] != 1

    @property
    def model_input_shape(self) -> tuple[int | None, ...]:
        """Input shape in this package's layout ``(B, 1, H, W)``."""
        if self._nhwc:
            b, h, w, c = self.input_shape
            return (b, c, h, w)
        return self.input_shape

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = _check_batch(batch, self.model_input_shape, self.path)
        if self._nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if len(x) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        if self.resizable and len(x) != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [len(x), *x.shape[1:]])
            self._interp.allocate_tensors()
            self._in = self._interp.get_input_details()[0]
            self._out = self._interp.get_output_details()[0]
            self._batch = len(x)
        if not self.resizable and len(x) != self._batch:
            if self._batch != 1:
                raise BackendError(f"{self.path.name}: graph has a fixed batch of {self._batch}, got {len(x)}")
            return np.concatenate([self._run(x[i : i + 1]) for i in range(len(x))])
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind in "iu":
            scale, zero = self._in["quantization"]
            if not scale:
                raise BackendError(f"{self.path.name}: integer input without quantisation parameters")
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        else:
            x = x.astype(dtype, copy=False)
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        out = self._interp.get_tensor(self._out["index"])
        if np.dtype(self._out["dtype"]).kind in "iu":
            scale, zero = self._out["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return np.asarray(out, dtype=np.float32).reshape(len(x), -1)


def open_backend(path: str | os.PathLike, threads: int = 1) -> OnnxBackend | TFLiteBackend:
    """Open a graph by its suffix: ``.onnx`` -> ONNX Runtime, ``.tflite`` -> LiteRT."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return OnnxBackend(p, threads=threads)
    if suffix == ".tflite":
        return TFLiteBackend(p, threads=threads)
    raise BackendError(f"{p}: unknown graph format {suffix!r} (expected .onnx or .tflite)")
