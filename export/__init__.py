"""Model export (edgekws.export): ONNX / TFLite graphs, int8 quantization, parity checks and signed bundles.

>>> result = export_bundle("runs/rpi/model.pt", "rpi", "runs/rpi/bundle", private_key=key, coreset="runs/rpi/coreset.npz")

Needs torch (server side). The device reads bundles with the torch-free :mod:`edgekws.bundle`.
"""

from .onnx import GRAPH_KINDS, export_onnx, onnx_session, run_onnx
from .parity import compare, graph_outputs, torch_outputs
from .pipeline import ExportResult, export_bundle, real_features
from .quantize import quantize_onnx
from .tflite import (
    export_tflite,
    run_tflite,
    tflite_interpreter,
    tflite_unavailable_reason,
)

__all__ = [
    "GRAPH_KINDS",
    "ExportResult",
    "compare",
    "export_bundle",
    "export_onnx",
    "export_tflite",
    "graph_outputs",
    "onnx_session",
    "quantize_onnx",
    "real_features",
    "run_onnx",
    "run_tflite",
    "tflite_interpreter",
    "tflite_unavailable_reason",
    "torch_outputs",
]
