"""Device target profiles as data: which model, features, formats and budgets each class of device gets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgekws.features import FeatureConfig

__all__ = ["Target", "TARGETS", "get_target"]


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
        ),
        Target(
            name="mcu",
            description="Micro-controller class (Cortex-M4/M7, ~256 KB RAM, int8 TFLite)",
            model="dscnn",
            features=FeatureConfig(n_mfcc=10, n_mels=40),
            formats=("tflite",),
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
