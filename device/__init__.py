"""Torch-free device runtime (edgekws.device). Nothing in this package may import torch (tested).

Modules:

- ``backend``: one ``predict(batch)`` over ONNX Runtime and TFLite graphs.
- ``stream``: audio sources (microphone, WAV file, raw PCM on stdin), 16 kHz mono float32 blocks.
- ``model``: a verified bundle, its graphs and head, local fine-tuned versions in the device state folder.
- ``runtime``: the streaming keyword detector (ring buffer of MFCC frames, smoothing, thresholds, events).
- ``prototypes``: VAD segmentation, embeddings, which clips to ask a person about.
- ``store`` / ``labeling``: SQLite label store, terminal and loopback web labelling.
- ``finetune``: numpy head training on frozen embeddings (coreset soft labels + labelled clips).
- ``update``: pull, verify, install and roll back bundles.

Typical use::

    from edgekws.device.model import DeviceModel, open_bundle
    from edgekws.device.runtime import Detector, run_detector
    from edgekws.device.stream import WavSource

    info = open_bundle("bundle/", public_key="signing.pub")
    det = Detector(DeviceModel(info, calibrate=True), info.feature_config)
    for event in run_detector(det, WavSource("speech.wav")):
        print(event.time, event.keyword, event.score)
"""
