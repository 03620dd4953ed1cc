"""A waveform-in ONNX graph with the MFCC inside: audio -> the model input, with no DSP code on the device.

``frontend_mfcc.onnx`` computes exactly what :func:`edgekws.features.mfcc` computes for a bundle's
:class:`~edgekws.features.FeatureConfig`:

``audio``     float32 ``(batch, samples)`` in [-1, 1] at ``sample_rate``; any length of at least one window
``mfcc``      float32 ``(batch, 1, n_mfcc, frames)``, normalised as the config says: the classifier's input
``mfcc_raw``  float32 ``(batch, 1, n_mfcc, frames)`` before normalisation (a stream appends its frames and
              normalises each window itself, as the device runtime does)

with ``frames = 1 + (samples - win_length) // hop_length`` (frames start at the first sample, no centre padding).
Inside: ONNX ``STFT`` (opset 17) on the signal with a periodic Hann window of ``win_length`` samples placed at the
start of an ``n_fft``-point frame (the signal gets ``n_fft - win_length`` zeros at its end so the last frame
exists; those samples meet a zero window), power ``re^2 + im^2``, the Slaney mel filterbank and orthonormal DCT as
constant matrices (float32, as numpy uses them), ``10 log10(max(mel, amin))`` and the normalisation with the
config's mean and std. The graph is built with ``onnx.helper`` (no torch) and is a few kilobytes more than its
filterbank. ``phone`` bundles of the MFCC backbone carry it (``Target.waveform_graph``), listed in the manifest
under ``mfcc_graph``; :func:`mfcc_graph_parity` measures it against numpy and the export refuses a graph that
does not reproduce it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgekws.features import FeatureConfig, _hann, dct_matrix, mel_filterbank, mfcc

__all__ = ["MFCC_GRAPH_FILE", "MFCC_GRAPH_OPSET", "build_mfcc_graph", "mfcc_graph_entry", "mfcc_graph_parity",
           "parity_signals"]

MFCC_GRAPH_FILE = "frontend_mfcc.onnx"
MFCC_GRAPH_OPSET = 17
PARITY_TOLERANCE = 1e-2
"""Largest |difference| of normalised MFCC (units of the per-coefficient std) the export accepts."""
RAW_TOLERANCE = 1e-4
"""... and of the MFCC before normalisation, relative to their largest magnitude (float32 FFTs differ by this)."""


def build_mfcc_graph(cfg: FeatureConfig) -> bytes:
    """The serialised ONNX model for ``cfg`` (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if cfg.normalization == "global" and not cfg.is_fitted:
        raise ValueError("the feature configuration uses global normalisation but has no fitted mean/std")
    win, hop, n_fft = cfg.win_length, cfg.hop_length, cfg.n_fft
    n_bins = n_fft // 2 + 1
    inits = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    window = np.zeros(n_fft, np.float32)
    window[:win] = _hann(win)
    const("window", window)
    const("frame_step", np.array(hop, np.int64))
    const("pad", np.array([0, 0, 0, n_fft - win], np.int64))  # (begin, end) per axis of (batch, samples)
    const("axes1", np.array([1], np.int64))
    const("axes_last", np.array([-1], np.int64))
    const("mel", mel_filterbank(cfg.sample_rate, n_fft, cfg.n_mels, cfg.fmin, cfg.fmax).astype(np.float32))
    const("dct", dct_matrix(cfg.n_mels, cfg.n_mfcc).astype(np.float32))
    const("amin", np.array(cfg.amin, np.float32))
    const("db", np.array(10.0 / math.log(10.0), np.float32))
    nodes = [
        helper.make_node("Pad", ["audio", "pad"], ["padded"], mode="constant"),
        helper.make_node("Unsqueeze", ["padded", "axes_last"], ["signal"]),  # (B, S + pad, 1)
        helper.make_node("STFT", ["signal", "frame_step", "window"], ["spec"], onesided=1),  # (B, F, bins, 2)
        helper.make_node("Mul", ["spec", "spec"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes_last"], ["power_ft"], keepdims=0),  # (B, F, bins)
        helper.make_node("Transpose", ["power_ft"], ["power"], perm=[0, 2, 1]),  # (B, bins, F)
        helper.make_node("MatMul", ["mel", "power"], ["melspec"]),  # (B, n_mels, F)
        helper.make_node("Max", ["melspec", "amin"], ["clamped"]),
        helper.make_node("Log", ["clamped"], ["ln"]),
        helper.make_node("Mul", ["ln", "db"], ["logmel"]),
        helper.make_node("MatMul", ["dct", "logmel"], ["raw"]),  # (B, n_mfcc, F)
        helper.make_node("Unsqueeze", ["raw", "axes1"], ["mfcc_raw"]),
    ]
    if cfg.normalization == "global":
        const("mean", np.asarray(cfg.mean, np.float32)[:, None])
        const("std", np.asarray(cfg.std, np.float32)[:, None])
        nodes += [helper.make_node("Sub", ["raw", "mean"], ["centred"]),
                  helper.make_node("Div", ["centred", "std"], ["normed"])]
    elif cfg.normalization == "utterance":
        const("eps", np.array(1e-5, np.float32))
        nodes += [helper.make_node("ReduceMean", ["raw"], ["m"], axes=[2], keepdims=1),
                  helper.make_node("Sub", ["raw", "m"], ["centred"]),
                  helper.make_node("Mul", ["centred", "centred"], ["dev2"]),
                  helper.make_node("ReduceMean", ["dev2"], ["var"], axes=[2], keepdims=1),
                  helper.make_node("Sqrt", ["var"], ["sd"]),
                  helper.make_node("Add", ["sd", "eps"], ["sde"]),
                  helper.make_node("Div", ["centred", "sde"], ["normed"])]
    else:
        nodes.append(helper.make_node("Identity", ["raw"], ["normed"]))
    nodes.append(helper.make_node("Unsqueeze", ["normed", "axes1"], ["mfcc"]))
    used = {i for n in nodes for i in n.input}
    inits = [t for t in inits if t.name in used]  # e.g. no mean/std without global normalisation
    graph = helper.make_graph(
        nodes, "edgekws_mfcc",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("mfcc", TensorProto.FLOAT, ["batch", 1, cfg.n_mfcc, "frames"]),
         helper.make_tensor_value_info("mfcc_raw", TensorProto.FLOAT, ["batch", 1, cfg.n_mfcc, "frames"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", MFCC_GRAPH_OPSET)],
                              producer_name="edgekws", doc_string=f"MFCC of edgekws.features for {cfg.to_json()}")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def parity_signals(cfg: FeatureConfig, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Test audio ``(6, samples)``: silence, a faint noise floor, white noise, tones with noise, a chirp, a loud
    clipped mixture; levels from about -90 to 0 dBFS."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * cfg.sample_rate))
    t = np.arange(n) / cfg.sample_rate
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + (cfg.fmax - 100) / (2 * seconds) * t**2))
    tones = 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 3150 * t) + 1e-3 * rng.standard_normal(n)
    loud = np.clip(0.9 * np.sin(2 * np.pi * 200 * t) + 0.5 * rng.standard_normal(n), -1, 1)
    return np.stack([np.zeros(n), 3e-5 * rng.standard_normal(n), 0.05 * rng.standard_normal(n), tones, chirp,
                     loud]).astype(np.float32)


def mfcc_graph_parity(path: str | os.PathLike, cfg: FeatureConfig, audio: np.ndarray | None = None) -> dict[str, Any]:
    """Run the graph (ONNX Runtime) and numpy on the same audio: the largest differences of the normalised and the
    raw MFCC (dB-like units), on which signals, and ``ok`` (within :data:`PARITY_TOLERANCE` and
    :data:`RAW_TOLERANCE`)."""
    import onnxruntime as ort

    y = parity_signals(cfg) if audio is None else np.asarray(audio, np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    got, got_raw = sess.run(["mfcc", "mfcc_raw"], {"audio": y})
    ref_raw = mfcc(y, cfg, normalize_output=False)
    ref = mfcc(y, cfg)
    diff = np.abs(got[:, 0] - ref)
    if cfg.normalization == "utterance":
        # a coefficient that is constant over the clip (digital silence) is divided by ~1e-5: both sides then
        # show float rounding magnified 1e5 times, which says nothing about the graph; such rows are left out
        diff = diff[ref_raw.std(axis=-1) > 1e-2]
    out = {"max_abs_diff": float(diff.max()) if diff.size else 0.0,
           "max_abs_diff_raw": float(np.abs(got_raw[:, 0] - ref_raw).max()),
           "raw_range": float(np.abs(ref_raw).max())}
    out["ok"] = bool(out["max_abs_diff_raw"] <= RAW_TOLERANCE * max(1.0, out["raw_range"])
                     and (cfg.normalization == "none" or out["max_abs_diff"] <= PARITY_TOLERANCE))
    return {**out,
            "shape": list(got.shape),
            "compared_on": "silence, noise at -90/-26 dBFS, tones, a chirp and a clipped mixture (1 s each)"
                           if audio is None else f"{len(y)} given clips"}


def mfcc_graph_entry(parity: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``mfcc_graph`` entry."""
    return {"file": MFCC_GRAPH_FILE, "opset": MFCC_GRAPH_OPSET,
            "input": {"name": "audio", "shape": ["batch", "samples"], "dtype": "float32",
                      "meaning": "audio in [-1, 1] at feature_config.sample_rate"},
            "outputs": {"mfcc": "(batch, 1, n_mfcc, frames): the classifier's input, normalised",
                        "mfcc_raw": "(batch, 1, n_mfcc, frames) before normalisation"},
            "frames": "1 + (samples - win_length) // hop_length",
            "parity": parity}


def write_mfcc_graph(cfg: FeatureConfig, path: str | os.PathLike) -> Path:
    """Build the graph for ``cfg`` and write it (atomically)."""
    from edgekws.fileio import atomic_write_bytes

    return atomic_write_bytes(path, build_mfcc_graph(cfg))
