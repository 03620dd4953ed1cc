"""int8 ONNX graphs through ONNX Runtime quantization.

``static``: weights and activations int8 (QDQ format, per-channel weights), activation ranges calibrated on real or
coreset features; the fast path on CPUs. ``dynamic``: int8 weights, activation scales computed at run time; needs
no calibration data but runs convolutions through ConvInteger, which is slower than fp32 on many CPUs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from edgekws.fileio import atomic_write_bytes

__all__ = ["QUANT_METHODS", "quantize_onnx"]

QUANT_METHODS = ("static", "dynamic")


def _reader(name: str, x: np.ndarray, batch: int):
    """A ``CalibrationDataReader`` yielding ``{name: x[i:i+batch]}``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            self.i += batch
            return {name: x[self.i - batch : self.i]}

        def rewind(self) -> None:
            self.i = 0

    return Reader()


def quantize_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike, *, method: str = "static",
                  calibration: np.ndarray | None = None, per_channel: bool = True, batch: int = 32) -> Path:
    """Quantize an fp32 ONNX graph to int8; the result is written atomically to ``out_path``.

    Parameters
    ----------
    method : "static" | "dynamic"
    calibration : (N, 1, H, W) or (N, H, W) float32, required for "static"
        normalised features (a coreset or real clips); a few hundred are plenty.
    """
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in QUANT_METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {', '.join(QUANT_METHODS)}")
    src = Path(fp32_path)
    if not src.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {src}")
    with tempfile.TemporaryDirectory(prefix="edgekws-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        q = Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if method == "dynamic":
            quantize_dynamic(str(pre), str(q), weight_type=QuantType.QInt8, per_channel=per_channel)
        else:
            if calibration is None or len(calibration) == 0:
                raise ValueError("static quantization needs calibration features (a coreset or real clips)")
            x = np.asarray(calibration, dtype=np.float32)
            if x.ndim == 3:
                x = x[:, None]
            if x.ndim != 4 or x.shape[1] != 1:
                raise ValueError(f"calibration features must be (N, 1, H, W) or (N, H, W), got {x.shape}")
            if not np.all(np.isfinite(x)):
                raise ValueError("calibration features contain non-finite values")
            import onnx

            model = onnx.load(str(pre))
            name = model.graph.input[0].name
            dims = [d.dim_value if d.HasField("dim_value") else None
                    for d in model.graph.input[0].type.tensor_type.shape.dim]
            if dims[2:] and tuple(dims[2:]) != tuple(x.shape[2:]):
                raise ValueError(f"calibration features are {x.shape[2:]} but the graph expects {tuple(dims[2:])}")
            step = 1 if dims and dims[0] == 1 else int(batch)
            quantize_static(str(pre), str(q), _reader(name, x, step), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return atomic_write_bytes(out_path, q.read_bytes())
