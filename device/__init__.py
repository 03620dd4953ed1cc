"""Torch-free device runtime (edgekws.device). Nothing in this package may import torch (tested).

The front door is :class:`Spotter`::

    from edgekws.device import Spotter

    with Spotter.open("bundle/", public_key="signing.pub") as spotter:
        for block in blocks:                      # float32 mono at spotter.sample_rate
            for d in spotter.feed(block):
                print(d.time, d.keyword, d.score)

Modules:

- ``spotter``: :class:`Spotter`, a verified bundle's recommended graph, local fine-tuned heads and updates, fed audio.
- ``backend``: one ``predict(batch)`` over ONNX Runtime and TFLite graphs (export parity runs it too).
- ``stream``: audio sources (microphone, sound file read in blocks, raw PCM on stdin), 16 kHz mono float32 blocks.
- ``model``: a verified bundle's graphs and head, local fine-tuned versions in the device state folder.
- ``frontend``: MFCC or the speech-embedding graphs: audio to model inputs, whole clips or streamed.
- ``runtime``: the streaming keyword detector (windows, smoothing, thresholds, level gate, events).
- ``prototypes``: VAD segmentation, embeddings, which clips to ask a person about (bounded memory on any length).
- ``store`` / ``labeling``: SQLite label store, terminal and loopback web labelling.
- ``finetune``: numpy head training on frozen embeddings (coreset soft labels + labelled clips).
- ``update``: pull, verify, smoke-test (through a Spotter), install and roll back bundles.

Submodules are imported when first used, so ``import edgekws.device`` costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import DeviceModelError
    from .runtime import Detection, DetectorConfig
    from .spotter import Spotter

__all__ = ["Detection", "DetectorConfig", "DeviceModelError", "Spotter"]

_WHERE = {"Spotter": "spotter", "Detection": "runtime", "DetectorConfig": "runtime", "DeviceModelError": "model"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
