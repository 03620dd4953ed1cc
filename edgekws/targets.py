"""Device target profiles as data: which model, features, formats and budgets each class of device gets.

A :class:`Target` says what the server builds for a class of device: the model and its feature configuration,
which graph formats (``onnx``, ``tflite``) and precisions (``fp32``, ``int8``) go into its bundle, which precision
the device should run (``precision``), how int8 ONNX graphs are quantized (``quantization``: ``static`` calibrates
activations on coreset or real features, ``dynamic`` needs no data), how many features to calibrate on, the
threads the device gives inference, and its memory budgets. ``model_budget_kb`` bounds the size of the primary
graph (first format at ``precision``); an export that does not fit is refused.

``waveform_graph``: an MFCC bundle also carries ``frontend_mfcc.onnx``, a graph from audio samples to the
classifier's input (:mod:`edgekws.export.mfcc_graph`), so an app (or the browser demo) can run the bundle with no
DSP code of its own; ``phone`` bundles carry it.

``backbone`` picks what the server trains: ``mfcc-cnn`` (``model`` on MFCC, distilled into an RFAD coreset) or
``speech-embedding`` (a frozen pretrained speech front end, :mod:`edgekws.speech_embedding`, with the small
trainable ``embedding_model`` on top and a coreset in the embedding space). ``edgekws distill --backbone`` overrides
it; a target without the front end's graphs installed falls back to ``mfcc-cnn`` and says so.

Torch-free: the device reads targets too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edgekws.features import FeatureConfig

__all__ = ["BACKBONES", "FORMATS", "PRECISIONS", "TARGETS", "Target", "get_target"]

FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "int8")
BACKBONES = ("mfcc-cnn", "speech-embedding")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    formats: tuple[str, ...] = ("onnx",)
    precision: str = "fp32"  # "fp32" | "int8"
    threads: int = 1
    memory_budget_kb: int = 80 * 1024
    model_budget_kb: int | None = None
    precisions: tuple[str, ...] = ("fp32", "int8")
    quantization: str = "static"  # "static" | "dynamic" (ONNX Runtime int8)
    calibration_clips: int = 256
    graphs: tuple[str, ...] = ("classifier", "embedding")
    backbone: str = "mfcc-cnn"
    embedding_model: str = "se-head"
    embedding_model_kwargs: dict[str, Any] = field(default_factory=dict)
    waveform_graph: bool = False

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"target {self.name}: backbone {self.backbone!r} must be one of {BACKBONES}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"target {self.name}: formats {self.formats} must be among {FORMATS}")
        if self.precision not in PRECISIONS or any(p not in PRECISIONS for p in self.precisions):
            raise ValueError(f"target {self.name}: precisions must be among {PRECISIONS}")
        if self.precision not in self.precisions:
            raise ValueError(f"target {self.name}: its precision {self.precision} is not among {self.precisions}")
        if self.quantization not in ("static", "dynamic"):
            raise ValueError(f"target {self.name}: quantization must be 'static' or 'dynamic'")
        if not set(self.graphs) <= {"classifier", "embedding"} or "classifier" not in self.graphs:
            raise ValueError(f"target {self.name}: graphs {self.graphs} must include 'classifier'")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["features"] = self.features.to_dict()
        for k in ("formats", "precisions", "graphs"):
            d[k] = list(d[k])
        return d


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="rpi",
            description="Raspberry Pi class board (Cortex-A53/A72, 1 core for KWS)",
            model="cnn4",
            features=FeatureConfig(),
            formats=("onnx", "tflite"),
            precision="int8",
            threads=1,
            memory_budget_kb=80 * 1024,
            backbone="speech-embedding",
        ),
        Target(
            name="phone",
            description="Phone-class CPU (big cores, 2 threads)",
            model="resnet18",
            model_kwargs={"width": 0.5},
            features=FeatureConfig(),
            formats=("onnx", "tflite"),
            precision="fp32",
            threads=2,
            memory_budget_kb=200 * 1024,
            backbone="speech-embedding",
            waveform_graph=True,
        ),
        Target(
            name="mcu",
            description="Micro-controller class (Cortex-M4/M7, ~256 KB RAM, int8 TFLite; ONNX for host-side checks)",
            model="dscnn",
            features=FeatureConfig(n_mfcc=10, n_mels=40),
            formats=("tflite", "onnx"),
            precision="int8",
            threads=1,
            memory_budget_kb=256,
            model_budget_kb=64,
        ),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None
