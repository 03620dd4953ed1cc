"""Benchmarks of the edge pipeline: device inference, streaming detection, on-device fine-tune, distillation.

Every measured case runs alone in a fresh Python process (``python benchmarks/bench.py --child KIND SPEC``), one
after the other, so memory and warm caches never leak from one case into the next:

- ``infer``: one graph (torch eager, ONNX or TFLite, fp32 or int8) with a fixed thread count. Cold start is the
  wall time from just before the process is launched to the first result; latency is measured per single clip
  (batch 1) over the real test clips after warm-up; accuracy comes from the same runs (every test clip is seen once
  when ``repeats >= len(test set)``); peak RSS is the process's own high-water mark (``VmHWM``).
- ``stream``: the device runtime (:class:`edgekws.device.runtime.Detector`) on a long WAV as fast as possible, with
  the time spent in MFCC and in inference counted apart. ``edgekws listen`` itself is also run in a process of its
  own for its wall time, CPU time and peak RSS.
- ``finetune``: the bundle's embedding graph on N clips, then :func:`edgekws.device.finetune.train_head`.
- ``distill``: :func:`edgekws.server.rfad.distill` for a few steps (seconds per step, real-side feature time).

:func:`run_bench` runs a :class:`BenchPlan` and writes ``<out>/<name>.json``, ``<name>.md`` and PNG charts;
:func:`gsc_plan` builds the default plan on the real Speech Commands subset and the exported bundles. The library
never prints: progress goes to a callback.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness.py beside this file

import json
import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from harness import MEASURE_WRAPPER as _WRAP
from harness import cpu_model, describe_machine
from harness import percentiles as _percentiles
from harness import status_mb as _status_mb

__all__ = [
    "BenchError",
    "BenchPlan",
    "ModelCase",
    "cpu_model",
    "describe_machine",
    "gsc_plan",
    "make_keyword_wav",
    "render_markdown",
    "run_bench",
]

RESULT_TAG = "EDGEKWS-BENCH-RESULT "
GRAPHS = (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"))
SECTIONS = ("device", "stream", "finetune", "distill")
REFERENCES = {
    "kws_streaming DS-CNN on a Pixel 4 (ms per 1 s clip)": 9.5,
    "TF Lite Micro micro_speech model (KB)": 20,
}
GOALS = {"int8 CNN-4 latency, one core (ms per 1 s clip)": 1.0, "listen peak RSS (MB)": 80.0}


class BenchError(RuntimeError):
    """A benchmark cannot run (missing checkpoint, bundle or data); the message says what to do."""


Progress = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------------------------------------------------------
# Plan


@dataclass
class ModelCase:
    """One model for the inference table: its torch checkpoint (reference, optional), exported bundle and test set.

    ``test_data`` is an ``.npz`` with ``x`` ``(N, 1, n_mfcc, frames)`` float32 normalised MFCC and ``y`` ``(N,)``
    labels in the bundle's class order.
    """

    name: str
    target: str
    bundle: Path
    test_data: Path
    checkpoint: Path | None = None
    repeats: int = 500

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class BenchPlan:
    """What to measure and where to write it. Paths are files that exist; sections whose inputs are ``None`` are
    skipped with a note."""

    name: str
    out_dir: Path
    work_dir: Path
    models: list[ModelCase] = field(default_factory=list)
    sections: tuple[str, ...] = SECTIONS
    threads: tuple[int, ...] = (1, 2)
    warmup: int = 20
    case_seconds: float | None = 25.0  # stop a latency loop after this long (at least 30 runs); None: no limit
    cpus: tuple[int, ...] | None = None  # CPU affinity of every measured process (None: leave it)
    target: str | None = None
    quick: bool = False
    # streaming
    stream_bundle: Path | None = None
    stream_graphs: tuple[tuple[str, str], ...] = (
        ("onnx", "fp32"),
        ("onnx", "int8"),
        ("tflite", "fp32"),
        ("tflite", "int8"),
    )
    stream_seconds: float = 60.0
    stream_cli: bool = True  # also run `edgekws listen` for its own wall time, CPU time and peak RSS
    public_key: Path | None = None  # None: trust the key embedded in the bundle (integrity only)
    # fine-tune
    finetune_bundle: Path | None = None
    finetune_data: Path | None = None  # npz x (N, 1, H, W), y (N,)
    finetune_sizes: tuple[int, ...] = (50, 200, 500, 1000, 2000)
    finetune_graph: tuple[str, str] = ("tflite", "int8")
    finetune_steps: int = 300
    # distillation
    distill_data: Path | None = None  # npz xtr, ytr, xv, yv, classes, feature_config (json)
    distill_base: dict[str, Any] = field(
        default_factory=lambda: {"per_class": 20, "batch_size": 500, "n_models": 2, "width": 32}
    )
    distill_sweeps: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {
            "per_class": (10, 20, 50, 100),
            "batch_size": (250, 500, 1000, 2000),
            "n_models": (1, 2, 4),
            "width": (16, 32, 64),
        }
    )
    distill_steps: int = 3
    distill_n_train: int = 1000
    distill_n_val: int = 100
    timeout_s: float = 600.0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise BenchError(f"unknown sections {bad}; choose from {', '.join(SECTIONS)}")
        if not self.threads or min(self.threads) < 1:
            raise BenchError(f"threads must be positive, got {self.threads}")
        if self.warmup < 0 or self.distill_steps < 1 or self.finetune_steps < 1:
            raise BenchError("warmup >= 0, distill_steps >= 1 and finetune_steps >= 1 are required")


# ------------------------------------------------------------------------------------------------------------------
# Machine description


# ------------------------------------------------------------------------------------------------------------------
# Child side (runs in a fresh process)


def _graph_file(bundle: Path, kind: str, fmt: str, precision: str) -> Path:
    from edgekws.bundle import BundleError, load_bundle

    try:  # the one bundle reader: integrity of every file (the bundle's own key) before a graph is timed
        return load_bundle(bundle, trust_embedded_key=True).graph_path(kind, fmt, precision)
    except BundleError as exc:
        raise BenchError(str(exc)) from None


def _child_infer(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    with np.load(spec["data"]) as z:
        x = np.ascontiguousarray(z["x"], dtype=np.float32)
        y = np.asarray(z["y"])
    threads = int(spec["threads"])
    if spec["format"] == "torch":
        import torch

        torch.set_num_threads(threads)
        from edgekws.server.train import load_checkpoint

        model, _, _, _ = load_checkpoint(spec["path"])
        t_import = time.perf_counter()

        def run(x1: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x1)).numpy()
    else:
        from edgekws.device.backend import open_backend

        t_import = time.perf_counter()
        run = open_backend(spec["path"], threads=threads).predict
    t_load = time.perf_counter()
    rss_loaded = _status_mb("VmRSS")
    n = len(x)
    run(x[:1])
    first_unix = time.time()
    t_first = time.perf_counter()
    for i in range(int(spec["warmup"])):
        run(x[i % n : i % n + 1])
    times: list[float] = []
    preds = np.full(n, -1, dtype=np.int64)
    cpu0 = time.process_time()
    w0 = time.perf_counter()
    budget = spec.get("max_seconds")
    for i in range(int(spec["repeats"])):
        if budget is not None and i >= 30 and time.perf_counter() - w0 > budget:
            break  # enough runs for the percentiles; a slow case on a busy machine must not eat the whole run
        j = i % n
        x1 = x[j : j + 1]
        t = time.perf_counter()
        out = run(x1)
        times.append(1e3 * (time.perf_counter() - t))
        if preds[j] < 0:
            preds[j] = int(np.argmax(out))
    wall = time.perf_counter() - w0
    cpu = time.process_time() - cpu0
    seen = preds >= 0
    return {
        "first_result_unix": first_unix,
        "import_s": t_import - t0,
        "load_s": t_load - t_import,
        "first_inference_s": t_first - t_load,
        "latency": _percentiles(times),
        "accuracy": float(np.mean(preds[seen] == y[seen])) if seen.any() else None,
        "accuracy_clips": int(seen.sum()),
        "cpu_per_wall": cpu / wall if wall > 0 else None,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": _status_mb("VmHWM"),
    }


class _Timed:
    """Wraps a model's ``logits`` and keeps the time spent in it."""

    def __init__(self, model: Any) -> None:
        self._m = model
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def logits(self, x: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self._m.logits(x)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def _child_stream(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    from edgekws.device import Spotter
    from edgekws.device.stream import WavSource

    key = spec.get("public_key")
    spotter = Spotter.open(
        spec["bundle"],
        public_key=key,
        trust_embedded_key=key is None,
        fmt=spec["format"],
        precision=spec["precision"],
        threads=1,
        local=False,
        calibrate=False,
        check_every_s=None,
    )
    info = spotter.bundle
    det = spotter.detector
    model = det.model = _Timed(spotter.model)  # inference timed apart from the MFCC
    push = det._mfcc.push
    mfcc_s = [0.0]

    def timed_push(block: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = push(block)
        mfcc_s[0] += time.perf_counter() - t
        return out

    det._mfcc.push = timed_push  # type: ignore[method-assign]
    blocks = list(WavSource(spec["wav"]))  # read before timing: the file is not what is measured
    start_s = time.perf_counter() - t0
    samples = sum(len(b) for b in blocks)
    detections = 0
    cpu0 = time.process_time()
    t1 = time.perf_counter()
    for b in blocks:
        detections += sum(1 for u in det.feed(b) if u.detection is not None)
    process_s = time.perf_counter() - t1
    cpu = time.process_time() - cpu0
    audio_s = samples / info.feature_config.sample_rate
    return {
        "audio_s": audio_s,
        "start_s": start_s,
        "process_s": process_s,
        "cpu_s": cpu,
        "mfcc_s": mfcc_s[0],
        "inference_s": model.seconds,
        "inferences": model.calls,
        "real_time_factor": process_s / audio_s,
        "cpu_percent_of_one_core": 100 * cpu / audio_s,
        "detections": detections,
        "peak_rss_mb": _status_mb("VmHWM"),
    }


def _child_finetune(spec: dict[str, Any]) -> dict[str, Any]:
    from edgekws.device.backend import open_backend
    from edgekws.device.finetune import FinetuneConfig, train_head

    n = int(spec["n"])
    with np.load(spec["data"]) as z:
        x = np.ascontiguousarray(z["x"][:n], dtype=np.float32)
        y = np.asarray(z["y"][:n])
    with np.load(Path(spec["bundle"]) / "head.npz") as z:
        W0, b0 = np.asarray(z["W"], np.float32), np.asarray(z["b"], np.float32)
    be = open_backend(spec["graph"], threads=1)
    rss0 = _status_mb("VmRSS")
    t = time.perf_counter()
    Z = np.concatenate([be.predict(x[i : i + 16]) for i in range(0, len(x), 16)])
    embed_s = time.perf_counter() - t
    rss1 = _status_mb("VmRSS")
    T = np.eye(W0.shape[0], dtype=np.float32)[y]
    t = time.perf_counter()
    _, _, stats = train_head(Z, T, np.ones(len(Z), np.float32), W0, b0, FinetuneConfig(steps=int(spec["steps"])))
    train_s = time.perf_counter() - t
    return {
        "n": len(x),
        "embedding_dim": int(Z.shape[1]),
        "embed_s": embed_s,
        "train_s": train_s,
        "total_s": embed_s + train_s,
        "train_accuracy": stats["train_accuracy"],
        "rss_before_mb": rss0,
        "rss_after_embed_mb": rss1,
        "peak_rss_mb": _status_mb("VmHWM"),
    }


def _child_distill(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from edgekws.features import FeatureConfig
    from edgekws.server.rfad import RandomConvNets, RFADConfig, distill

    with np.load(spec["data"]) as z:
        xtr, ytr, xv, yv = (np.asarray(z[k]) for k in ("xtr", "ytr", "xv", "yv"))
        classes = [str(c) for c in z["classes"]]
        fc = FeatureConfig.from_dict(json.loads(str(z["feature_config"])))
    ntr, nv = int(spec["n_train"]), int(spec["n_val"])
    xtr, ytr, xv, yv = xtr[:ntr], ytr[:ntr], xv[:nv], yv[:nv]
    c = dict(spec["config"])
    cfg = RFADConfig(
        steps=int(spec["steps"]),
        pool_size=int(c["n_models"]),
        eval_every=int(spec["steps"]),
        patience=0,
        device="cpu",
        threads=1,
        **c,
    )
    steps: list[float] = []

    def on(ev: dict[str, Any]) -> None:
        if ev.get("event") == "distill":
            steps.append(float(ev["seconds"]))

    rss0 = _status_mb("VmRSS")
    t = time.perf_counter()
    core = distill(xtr, ytr, xv, yv, classes, fc, cfg, progress=on)
    total = time.perf_counter() - t
    d = RandomConvNets(1, width=cfg.width, depth=cfg.depth, max_features=cfg.max_features).feature_dim(xtr.shape[1:])
    return {
        "config": c,
        "n_train": len(xtr),
        "n_val": len(xv),
        "steps": len(steps),
        "seconds_per_step": statistics.median(steps) if steps else None,
        "seconds_per_step_mean": float(np.mean(steps)) if steps else None,
        "step_seconds": steps,
        "feature_seconds": core.metrics["feature_seconds"],
        "total_s": total,
        "features_per_net": d,
        "rss_before_mb": rss0,
        "peak_rss_mb": _status_mb("VmHWM"),
    }


_CHILDREN = {"infer": _child_infer, "stream": _child_stream, "finetune": _child_finetune, "distill": _child_distill}


def _child_main(argv: Sequence[str]) -> int:
    if len(argv) != 3 or argv[0] != "--child" or argv[1] not in _CHILDREN:
        print(f"usage: python benchmarks/bench.py --child {{{','.join(_CHILDREN)}}} SPEC_JSON", file=sys.stderr)
        return 2
    res = _CHILDREN[argv[1]](json.loads(argv[2]))
    res["affinity"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(RESULT_TAG + json.dumps(res), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------------------------
# Parent side


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _spawn(kind: str, spec: dict[str, Any], plan: BenchPlan, threads: int = 1) -> dict[str, Any]:
    """Run one case in a fresh process; its result, or ``{"error": ...}`` when it failed."""
    cpus = set(plan.cpus) if plan.cpus else None
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    launched = time.time()
    try:
        r = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            env=_child_env(threads),
            timeout=plan.timeout_s,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {plan.timeout_s:.0f} s"}
    wall = time.time() - launched
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith(RESULT_TAG)), None)
    if r.returncode != 0 or line is None:
        tail = (r.stderr or r.stdout).strip().splitlines()[-6:]
        return {"error": f"exit {r.returncode}: " + " | ".join(tail)}
    res = json.loads(line[len(RESULT_TAG) :])
    res["process_wall_s"] = wall
    if "first_result_unix" in res:
        res["cold_start_s"] = res.pop("first_result_unix") - launched
    return res


def _run_cli(args: list[str], plan: BenchPlan) -> dict[str, Any]:
    """Run an ``edgekws`` command under a small wrapper process that reports its wall time, CPU time and peak RSS
    (``ru_maxrss`` of the wrapper's children: the command's own high-water mark, the ~10 MB wrapper at most)."""
    cpus = set(plan.cpus) if plan.cpus else None
    cmd = [sys.executable, "-c", _WRAP, sys.executable, "-m", "edgekws.cli", *args]
    try:
        r = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            env=_child_env(1),
            timeout=plan.timeout_s,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {plan.timeout_s:.0f} s"}
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-500:]}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        return {"error": f"edgekws {' '.join(args[:1])} exit {res['rc']}: {res['stderr'].strip()[-500:]}"}
    return res


def _has_graph(bundle: Path, kind: str, fmt: str, precision: str) -> bool:
    try:
        return _graph_file(bundle, kind, fmt, precision).is_file()
    except (BenchError, OSError, ValueError):
        return False


def _emit(progress: Progress | None, **ev: Any) -> None:
    if progress is not None:
        progress(ev)


def bench_device(plan: BenchPlan, progress: Progress | None = None) -> list[dict[str, Any]]:
    rows = []
    for m in plan.models:
        with np.load(m.test_data) as z:
            n_test = len(z["y"])
        for fmt, prec in GRAPHS:
            if fmt == "torch":
                path = m.checkpoint
                if path is None or not Path(path).is_file():
                    rows.append(
                        {
                            "model": m.name,
                            "target": m.target,
                            "format": fmt,
                            "precision": prec,
                            "skipped": "no torch checkpoint",
                        }
                    )
                    continue
            else:
                if not _has_graph(m.bundle, "classifier", fmt, prec):
                    rows.append(
                        {
                            "model": m.name,
                            "target": m.target,
                            "format": fmt,
                            "precision": prec,
                            "skipped": f"the bundle has no {fmt} {prec} classifier",
                        }
                    )
                    continue
                path = _graph_file(m.bundle, "classifier", fmt, prec)
            for t in plan.threads:
                _emit(progress, event="case", section="device", case=f"{m.name} {fmt} {prec} {t} thread(s)")
                spec = {
                    "format": fmt,
                    "path": str(path),
                    "data": str(m.test_data),
                    "threads": t,
                    "warmup": plan.warmup,
                    "repeats": m.repeats,
                    "max_seconds": plan.case_seconds,
                }
                res = _spawn("infer", spec, plan, threads=t)
                rows.append(
                    {
                        "model": m.name,
                        "target": m.target,
                        "format": fmt,
                        "precision": prec,
                        "threads": t,
                        "file_bytes": Path(path).stat().st_size,
                        "test_clips": n_test,
                        **res,
                    }
                )
                _emit(progress, event="result", section="device", row=rows[-1])
    return rows


def make_keyword_wav(
    path: Path,
    seconds: float,
    keywords: Sequence[str] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"),
    gap_s: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """A long WAV of synthetic spoken keywords (:func:`edgekws.datasets.synthetic.render_clip`) with ``gap_s`` of
    faint noise between them; returns the words and their start times."""
    from edgekws.audio import save_wav
    from edgekws.datasets.synthetic import render_clip

    sr = 16000
    total = int(round(seconds * sr))
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal(total) * 10 ** (-60 / 20)).astype(np.float32)
    pos, i, words = int(gap_s * sr), 0, []
    while pos + sr <= total:
        kw = keywords[i % len(keywords)]
        clip, _ = render_clip(kw, i // len(keywords), seed=seed, vocabulary=tuple(keywords))
        y[pos : pos + len(clip)] += clip[: total - pos]
        words.append({"word": kw, "start_s": pos / sr})
        pos += len(clip) + int(gap_s * sr)
        i += 1
    np.clip(y, -1.0, 1.0, out=y)
    save_wav(path, y, sr)
    return {"path": str(path), "seconds": total / sr, "words": words}


def bench_stream(plan: BenchPlan, progress: Progress | None = None) -> dict[str, Any]:
    from edgekws.bundle import load_bundle

    bundle = Path(plan.stream_bundle)  # type: ignore[arg-type]
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    wav = plan.work_dir / f"keywords_{int(plan.stream_seconds)}s.wav"
    _emit(progress, event="case", section="stream", case=f"synthesising {plan.stream_seconds:.0f} s of keywords")
    audio = make_keyword_wav(wav, plan.stream_seconds)
    key_args = ["--public-key", str(plan.public_key)] if plan.public_key else ["--embedded-key"]
    rows = []
    for fmt, prec in plan.stream_graphs:
        if not _has_graph(bundle, "classifier", fmt, prec):
            rows.append({"format": fmt, "precision": prec, "skipped": f"the bundle has no {fmt} {prec} classifier"})
            continue
        _emit(progress, event="case", section="stream", case=f"listen {fmt} {prec}")
        spec = {
            "bundle": str(bundle),
            "wav": str(wav),
            "format": fmt,
            "precision": prec,
            "public_key": str(plan.public_key) if plan.public_key else None,
        }
        row: dict[str, Any] = {"format": fmt, "precision": prec, "runtime": _spawn("stream", spec, plan)}
        if plan.stream_cli:
            state = plan.work_dir / "listen-state"
            args = [
                "listen",
                "--bundle",
                str(bundle),
                "--wav",
                str(wav),
                "--fast",
                "--json",
                "--threads",
                "1",
                "--format",
                fmt,
                "--precision",
                prec,
                "--state",
                str(state),
                *key_args,
            ]
            if load_bundle(bundle, trust_embedded_key=True).coreset_path is not None:
                _run_cli(args, plan)  # fits and caches the softmax temperature, as a device does once per bundle
            cli = _run_cli(args, plan)
            if "error" not in cli:
                cli["detections"] = sum(1 for ln in cli.pop("stdout").splitlines() if ln.startswith("{"))
                cli.pop("stderr", None)
                cli["wall_over_audio"] = cli["wall_s"] / audio["seconds"]
                cli["cpu_percent_of_one_core"] = 100 * cli["cpu_s"] / audio["seconds"]
            row["cli"] = cli
        rows.append(row)
        _emit(progress, event="result", section="stream", row=row)
    return {"bundle": str(bundle), "audio": {"seconds": audio["seconds"], "words": len(audio["words"])}, "rows": rows}


def bench_finetune(plan: BenchPlan, progress: Progress | None = None) -> dict[str, Any]:
    bundle = Path(plan.finetune_bundle)  # type: ignore[arg-type]
    fmt, prec = plan.finetune_graph
    if not _has_graph(bundle, "embedding", fmt, prec):
        fmt, prec = "onnx", "fp32"
    graph = _graph_file(bundle, "embedding", fmt, prec)
    with np.load(plan.finetune_data) as z:  # type: ignore[arg-type]
        available = len(z["y"])
    rows = []
    for n in plan.finetune_sizes:
        if n > available:
            rows.append({"n": n, "skipped": f"only {available} clips available"})
            continue
        _emit(progress, event="case", section="finetune", case=f"{n} samples")
        spec = {
            "bundle": str(bundle),
            "graph": str(graph),
            "data": str(plan.finetune_data),
            "n": n,
            "steps": plan.finetune_steps,
        }
        rows.append({"n": n, **_spawn("finetune", spec, plan)})
        _emit(progress, event="result", section="finetune", row=rows[-1])
    return {"bundle": str(bundle), "graph": graph.name, "steps": plan.finetune_steps, "rows": rows}


def _distill_cases(plan: BenchPlan) -> list[tuple[str, dict[str, Any]]]:
    cases, seen = [], set()
    for param, values in plan.distill_sweeps.items():
        for v in values:
            cfg = {**plan.distill_base, param: v}
            key = tuple(sorted(cfg.items()))
            if key not in seen:
                seen.add(key)
                cases.append((param, cfg))
    return cases


def bench_distill(plan: BenchPlan, progress: Progress | None = None) -> dict[str, Any]:
    with np.load(plan.distill_data) as z:  # type: ignore[arg-type]
        n_train = len(z["ytr"])
    rows = []
    for param, cfg in _distill_cases(plan):
        need = int(cfg["batch_size"])
        ntr = min(n_train, max(plan.distill_n_train, need))
        _emit(progress, event="case", section="distill", case=", ".join(f"{k}={v}" for k, v in cfg.items()))
        spec = {
            "data": str(plan.distill_data),
            "config": cfg,
            "steps": plan.distill_steps,
            "n_train": ntr,
            "n_val": plan.distill_n_val,
        }
        rows.append({"varied": param, **_spawn("distill", spec, plan)})
        rows[-1].setdefault("config", cfg)
        _emit(progress, event="result", section="distill", row=rows[-1])
    return {"base": plan.distill_base, "steps": plan.distill_steps, "device": "cpu", "rows": rows}


def _mfcc_reference(out_dir: Path) -> dict[str, Any] | None:
    p = out_dir / "mfcc_speed.json"
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except ValueError:
        return None
    return {"source": p.name, "results": d.get("results", {})}


def run_bench(plan: BenchPlan, progress: Progress | None = None) -> dict[str, Any]:
    """Run the plan's sections one case at a time and write ``<out>/<name>.json``, ``.md`` and charts."""
    machine = describe_machine()
    t0 = time.perf_counter()
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "name": plan.name,
        "quick": plan.quick,
        "target": plan.target,
        "machine": machine,
        "settings": {
            "threads": list(plan.threads),
            "warmup": plan.warmup,
            "case_seconds": plan.case_seconds,
            "cpus": list(plan.cpus) if plan.cpus else None,
            "models": [m.to_dict() for m in plan.models],
            "sections": list(plan.sections),
        },
        "references": REFERENCES,
        "goals": GOALS,
        "notes": list(plan.notes),
        "skipped": {},
    }
    if "device" in plan.sections:
        report["device"] = bench_device(plan, progress) if plan.models else []
        if not plan.models:
            report["skipped"]["device"] = "no model cases"
    if "stream" in plan.sections:
        if plan.stream_bundle is None:
            report["skipped"]["stream"] = "no bundle for the streaming run"
        else:
            report["stream"] = bench_stream(plan, progress)
    report["mfcc"] = _mfcc_reference(plan.out_dir)
    if "finetune" in plan.sections:
        if plan.finetune_bundle is None or plan.finetune_data is None:
            report["skipped"]["finetune"] = "no bundle or clips for the fine-tune run"
        else:
            report["finetune"] = bench_finetune(plan, progress)
    if "distill" in plan.sections:
        if plan.distill_data is None:
            report["skipped"]["distill"] = "no training features for distillation"
        else:
            report["distill"] = bench_distill(plan, progress)
    machine["load_average_end"] = list(os.getloadavg())
    machine["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    report["wall_s"] = time.perf_counter() - t0
    report["headline"] = headline(report)
    write_report(report, plan.out_dir, plan.name)
    return report


# ------------------------------------------------------------------------------------------------------------------
# Report


def _ok(r: dict[str, Any]) -> bool:
    return "error" not in r and "skipped" not in r


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the closing note quotes: fastest int8 CNN-4 p50 on one thread, listen peak RSS, etc."""
    h: dict[str, Any] = {}
    dev = [r for r in report.get("device", []) if _ok(r)]
    for model in dict.fromkeys(r["model"] for r in dev):
        one = [r for r in dev if r["model"] == model and r["threads"] == 1]
        if one:
            best = min(one, key=lambda r: r["latency"]["p50_ms"])
            h[f"{model}: fastest graph, 1 thread"] = {
                "graph": f"{best['format']} {best['precision']}",
                "p50_ms": best["latency"]["p50_ms"],
                "p99_ms": best["latency"]["p99_ms"],
                "file_kb": best["file_bytes"] / 1024,
                "accuracy": best["accuracy"],
                "peak_rss_mb": best["peak_rss_mb"],
            }
    cnn_int8 = [r for r in dev if r["model"] == "cnn4" and r["precision"] == "int8" and r["threads"] == 1]
    if cnn_int8:
        b = min(cnn_int8, key=lambda r: r["latency"]["p50_ms"])
        h["goal: int8 CNN-4 <= 1 ms per clip, one core"] = {
            "graph": b["format"],
            "p50_ms": b["latency"]["p50_ms"],
            "met": b["latency"]["p50_ms"] <= 1.0,
        }
    ds = [r for r in dev if r["model"].startswith("dscnn") and r["threads"] == 1]
    if ds:
        fast = min(ds, key=lambda r: r["latency"]["p50_ms"])
        small = min(ds, key=lambda r: r["file_bytes"])
        h["reference: kws_streaming DS-CNN 9.5 ms per clip (Pixel 4)"] = {
            "ours": f"{fast['model']} {fast['format']} {fast['precision']}",
            "p50_ms": fast["latency"]["p50_ms"],
        }
        h["reference: micro_speech model 20 KB"] = {
            "ours": f"{small['model']} {small['format']} {small['precision']}",
            "file_kb": small["file_bytes"] / 1024,
        }
    cli = [r["cli"] for r in report.get("stream", {}).get("rows", []) if "cli" in r and "error" not in r["cli"]]
    if cli:
        lo = min(cli, key=lambda c: c["peak_rss_mb"])
        h["goal: listen peak RSS <= 80 MB"] = {
            "lowest_mb": lo["peak_rss_mb"],
            "met": lo["peak_rss_mb"] <= 80.0,
            "all_mb": [round(c["peak_rss_mb"], 1) for c in cli],
        }
    return h


def _f(v: Any, fmt: str = ".2f", none: str = "–") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, fmt)


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = m["versions"]
    s = report["settings"]
    L = [f"# Edge benchmark `{report['name']}`" + (" (quick)" if report["quick"] else ""), ""]
    L.append(
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{_f(m['memory_mb'] and m['memory_mb'] / 1024, '.0f')} GB RAM, {m['system']}; Python {v['python']}, "
        f"numpy {v['numpy']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, ai-edge-litert "
        f"{v['ai-edge-litert']}; commit {m['git_commit']}. Run {m['started_utc']} → {m.get('finished_utc')} "
        f"UTC ({report['wall_s'] / 60:.1f} min). Load average (1/5/15 min) at start "
        f"{' / '.join(f'{x:.1f}' for x in m['load_average_start'])}, at end "
        f"{' / '.join(f'{x:.1f}' for x in m.get('load_average_end', []))}."
    )
    L.append("")
    tgt = f"target profile `{report['target']}`: " if report["target"] else ""
    L.append(
        f"{tgt}threads {s['threads']}, CPU affinity {s['cpus'] or 'not restricted'}. Every case ran alone in a "
        "fresh process, one after another. On a shared machine absolute times move with the load: compare "
        "ratios within this run."
    )
    for note in report.get("notes", []):
        L += ["", f"Note: {note}"]
    h = report.get("headline", {})
    if h:
        L += ["", "## Headline", ""]
        for k, val in h.items():
            L.append(
                f"- **{k}**: " + ", ".join(f"{a} {_f(b, '.3g') if isinstance(b, float) else b}" for a, b in val.items())
            )
    L += [
        "",
        "Reference points (published, other hardware): kws_streaming DS-CNN ≈ 9.5 ms per 1 s clip on a "
        "Pixel 4; TF Lite Micro micro_speech model ≈ 20 KB. Goals: int8 CNN ≤ 1 ms per 1 s clip on one core "
        "here; `listen` peak RSS ≤ 80 MB.",
    ]

    dev = report.get("device")
    if dev is not None:
        L += [
            "",
            "## Device inference (batch 1, one 1 s clip per call)",
            "",
            "Cold start: process launch → first result (interpreter start, imports, graph load, first run). "
            "Latency over single real test clips after warm-up (torch: `inference_mode`; ONNX / TFLite: "
            "`edgekws.device.backend`, input checks and int8 (de)quantisation included). Peak RSS: the case's own "
            "process (`VmHWM`). A latency loop stops after its time budget once it has 30 runs (runs column). "
            "Accuracy on the test clips the timed runs covered. torch file size is the checkpoint.",
            "",
            "| model | graph | threads | file KB | cold start s | p50 ms | p90 ms | p99 ms | runs | "
            "peak RSS MB | accuracy % (clips) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in dev:
            g = f"{r['format']} {r['precision']}"
            if "skipped" in r:
                L.append(f"| {r['model']} | {g} | – | – | – | – | – | – | – | – | skipped: {r['skipped']} |")
            elif "error" in r:
                L.append(
                    f"| {r['model']} | {g} | {r['threads']} | – | – | – | – | – | – | – | error: {r['error'][:120]} |"
                )
            else:
                lat = r["latency"]
                acc = f"{100 * r['accuracy']:.1f} ({r['accuracy_clips']})" if r["accuracy"] is not None else "–"
                L.append(
                    f"| {r['model']} | {g} | {r['threads']} | {r['file_bytes'] / 1024:.1f} | "
                    f"{r['cold_start_s']:.2f} | {lat['p50_ms']:.3f} | {lat['p90_ms']:.3f} | {lat['p99_ms']:.3f} "
                    f"| {lat['n']} | {r['peak_rss_mb']:.0f} | {acc} |"
                )
        ratios = _ratios(dev)
        if ratios:
            L += ["", "Speed-up of p50 over torch eager (same model, same threads): " + "; ".join(ratios)]

    st = report.get("stream")
    if st is not None:
        L += [
            "",
            "## Streaming (`listen` on a long WAV)",
            "",
            f"{st['audio']['seconds']:.0f} s of synthetic spoken keywords ({st['audio']['words']} words, 1 s "
            "gaps), fed as fast as possible, one thread, hop 100 ms (one inference per hop on a 1 s window). "
            "Runtime: the detector driven from Python, processing time only (after start-up); real-time factor = "
            "processing / audio time; CPU % of one core = CPU time / audio time (what the detector costs when fed "
            "in real time). CLI: the whole `edgekws listen --wav --fast --json` process (start-up, bundle "
            "verification, typer/rich included). Detections: keyword events the runtime reported (the model was "
            "trained on real speech, the audio is synthetic; words in the file are counted in the first line).",
            "",
            "| graph | RTF | CPU % of one core | MFCC ms / hop | inference ms / hop | runtime peak RSS MB | CLI wall "
            "s | CLI CPU % of one core | CLI peak RSS MB | detections |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in st["rows"]:
            g = f"{r['format']} {r['precision']}"
            if "skipped" in r:
                L.append(f"| {g} | skipped: {r['skipped']} | | | | | | | | |")
                continue
            rt, cli = r["runtime"], r.get("cli") or {}
            if "error" in rt:
                L.append(f"| {g} | error: {rt['error'][:120]} | | | | | | | | |")
                continue
            hops = max(1, rt["inferences"])
            c_wall = _f(cli.get("wall_s"), ".2f") if "error" not in cli else "error"
            L.append(
                f"| {g} | {rt['real_time_factor']:.4f} | {rt['cpu_percent_of_one_core']:.2f} | "
                f"{1e3 * rt['mfcc_s'] / hops:.3f} | {1e3 * rt['inference_s'] / hops:.3f} | "
                f"{rt['peak_rss_mb']:.0f} | {c_wall} | {_f(cli.get('cpu_percent_of_one_core'), '.2f')} | "
                f"{_f(cli.get('peak_rss_mb'), '.0f')} | {rt['detections']} |"
            )
        errs = [
            f"{r['format']} {r['precision']}: {r['cli']['error'][:200]}"
            for r in st["rows"]
            if "error" in (r.get("cli") or {})
        ]
        if errs:
            L += ["", "CLI errors: " + "; ".join(errs)]
    mf = report.get("mfcc")
    if mf:
        L += [
            "",
            f"MFCC alone, numpy vs librosa (from `{mf['source']}`, `benchmarks/mfcc_speed.py`, an earlier run "
            "on this machine):",
            "",
            "| case | ms per clip | other |",
            "|---|---|---|",
        ]
        for name, r in mf["results"].items():
            other = (
                f"{r['ms_per_hop']:.3f} ms per hop"
                if "ms_per_hop" in r
                else (f"{1e3 * r['seconds']:.1f} ms" if "seconds" in r else "")
            )
            L.append(f"| {name} | {_f(r.get('ms_per_clip'), '.3f')} | {other} |")

    ft = report.get("finetune")
    if ft is not None:
        L += [
            "",
            "## On-device fine-tune (numpy head on the frozen embedding graph)",
            "",
            f"Graph `{ft['graph']}` (one thread) embeds N clips (coreset + labelled samples; real clips stand in for "
            f"both), then `train_head` runs {ft['steps']} full-batch Adam steps. Fresh process per N.",
            "",
            "| N samples | embed s | head training s | total s | RSS before MB | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for r in ft["rows"]:
            if not _ok(r):
                L.append(f"| {r['n']} | {r.get('skipped') or r.get('error', '')[:120]} | | | | |")
                continue
            L.append(
                f"| {r['n']} | {r['embed_s']:.3f} | {r['train_s']:.3f} | {r['total_s']:.3f} | "
                f"{r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
            )

    di = report.get("distill")
    if di is not None:
        L += [
            "",
            "## Distillation (RFAD, CPU, one thread)",
            "",
            f"Base: {', '.join(f'{k}={v}' for k, v in di['base'].items())}; one parameter varied at a time; "
            f"{di['steps']} steps each (seconds per step: median), pool = the sampled nets (their real-side "
            "features are computed once, 'features s'), validation on a small held-out set at start and end. "
            "Real data: the normalised MFCC of the training split.",
            "",
            "| varied | per class | real batch | nets | width | s / step | features s | total s | RSS before MB | "
            "peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in di["rows"]:
            c = r["config"]
            head = f"| {r['varied']} | {c['per_class']} | {c['batch_size']} | {c['n_models']} | {c['width']} |"
            if "error" in r:
                L.append(f"{head} error: {r['error'][:120]} | | | | |")
                continue
            L.append(
                f"{head} {_f(r['seconds_per_step'], '.3f')} | {r['feature_seconds']:.2f} | {r['total_s']:.1f} | "
                f"{r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
            )
        L += [
            "",
            "Not measured here: distillation on a GPU (none on this machine; the engine runs there unchanged "
            "with `--device cuda`).",
        ]
    if report.get("skipped"):
        L += ["", "Skipped sections: " + "; ".join(f"{k}: {v}" for k, v in report["skipped"].items())]
    return "\n".join(L) + "\n"


def _ratios(dev: list[dict[str, Any]]) -> list[str]:
    out = []
    ok = [r for r in dev if _ok(r)]
    for model in dict.fromkeys(r["model"] for r in ok):
        for t in dict.fromkeys(r["threads"] for r in ok):
            rows = [r for r in ok if r["model"] == model and r["threads"] == t]
            ref = next((r for r in rows if r["format"] == "torch"), None)
            if ref is None:
                continue
            parts = [
                f"{r['format']} {r['precision']} ×{ref['latency']['p50_ms'] / r['latency']['p50_ms']:.1f}"
                for r in rows
                if r is not ref
            ]
            if parts:
                out.append(f"{model} ({t} thr): " + ", ".join(parts))
    return out


def write_charts(report: dict[str, Any], out_dir: Path, name: str) -> list[str]:
    """PNG charts next to the report; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekws.plots import save_figure

    files = []
    dev = [r for r in report.get("device", []) if _ok(r)]
    if dev:
        models = list(dict.fromkeys(r["model"] for r in dev))
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
        for ax, model in zip(axes[0], models):
            rows = [r for r in dev if r["model"] == model]
            threads = sorted(dict.fromkeys(r["threads"] for r in rows))
            graphs = list(dict.fromkeys(f"{r['format']}\n{r['precision']}" for r in rows))
            w = 0.8 / len(threads)
            for k, t in enumerate(threads):
                xs, p50, err = [], [], []
                for i, g in enumerate(graphs):
                    r = next((r for r in rows if f"{r['format']}\n{r['precision']}" == g and r["threads"] == t), None)
                    if r is None:
                        continue
                    xs.append(i + (k - (len(threads) - 1) / 2) * w)
                    p50.append(r["latency"]["p50_ms"])
                    err.append(max(0.0, r["latency"]["p99_ms"] - r["latency"]["p50_ms"]))
                ax.bar(xs, p50, width=w, yerr=[np.zeros(len(err)), err], capsize=2, label=f"{t} thread(s)")
            ax.set_xticks(range(len(graphs)), graphs, fontsize=7)
            ax.set_yscale("log")
            ax.set_title(model)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("ms per clip (p50, whisker p99)")
        fig.tight_layout()
        files.append(save_figure(fig, out_dir / f"{name}_latency.png").name)
    ft = [r for r in (report.get("finetune") or {}).get("rows", []) if _ok(r)]
    if ft:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
        n = [r["n"] for r in ft]
        a1.plot(n, [r["embed_s"] for r in ft], "o-", label="embedding graph")
        a1.plot(n, [r["train_s"] for r in ft], "s-", label="head training")
        a1.set_xlabel("coreset + labelled samples")
        a1.set_ylabel("seconds")
        a1.legend(fontsize=7)
        a2.plot(n, [r["peak_rss_mb"] for r in ft], "o-")
        a2.set_xlabel("coreset + labelled samples")
        a2.set_ylabel("peak RSS MB")
        fig.suptitle("on-device fine-tune")
        files.append(save_figure(fig, out_dir / f"{name}_finetune.png").name)
    di = [r for r in (report.get("distill") or {}).get("rows", []) if _ok(r)]
    if di:
        base = report["distill"]["base"]
        params = list(dict.fromkeys(r["varied"] for r in di))
        fig, axes = plt.subplots(1, len(params), figsize=(3.3 * len(params), 3.2), squeeze=False)
        for ax, p in zip(axes[0], params):
            # the sweep of p: every row equal to the base in all other settings (the base row included)
            rows = sorted(
                (r for r in di if all(r["config"].get(k) == v for k, v in base.items() if k != p)),
                key=lambda r: r["config"][p],
            )
            xs = [r["config"][p] for r in rows]
            ax.plot(xs, [r["seconds_per_step"] for r in rows], "o-", color="C0")
            ax.set_xlabel(p)
            ax.set_ylabel("s / step", color="C0")
            ax2 = ax.twinx()
            ax2.plot(xs, [r["peak_rss_mb"] for r in rows], "s--", color="C1")
            ax2.set_ylabel("peak RSS MB", color="C1")
        fig.suptitle("RFAD distillation, CPU, one thread")
        fig.tight_layout()
        files.append(save_figure(fig, out_dir / f"{name}_distill.png").name)
    return files


def write_report(report: dict[str, Any], out_dir: Path, name: str) -> None:
    from edgekws.fileio import atomic_write_bytes, atomic_write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        report["charts"] = write_charts(report, out_dir, name)
    except ImportError as exc:  # matplotlib is a server extra
        report["charts"] = []
        report["notes"].append(f"no charts: {exc}")
    atomic_write_json(out_dir / f"{name}.json", report)
    md = render_markdown(report)
    if report["charts"]:
        md += "\n" + "\n".join(f"![{c}]({c})" for c in report["charts"]) + "\n"
    atomic_write_bytes(out_dir / f"{name}.md", md.encode())


# ------------------------------------------------------------------------------------------------------------------
# The default plan: the real Speech Commands subset and the exported bundles


DEFAULT_MODELS = (  # name, target, checkpoint and bundle relative to the runs folder, latency runs
    ("cnn4", "rpi", "baselines/gsc-cnn4-global-s0/model.pt", "export-bench/cnn4-bundle", 600),
    ("resnet18", "phone", "baselines20/gsc-resnet18-global-s0/model.pt", "export-bench/resnet18-bundle", 335),
    ("dscnn-mcu", "mcu", "export-bench/gsc-dscnn-mcu/model.pt", "export-bench/dscnn-mcu-bundle", 600),
)


def _ensure_bundle(ckpt: Path, target: str, bundle: Path, gsc: Path, progress: Progress | None) -> None:
    if (bundle / "manifest.json").is_file():
        return
    import tempfile

    from edgekws.bundle import generate_keypair
    from edgekws.export import export_bundle, real_features
    from edgekws.server.train import load_checkpoint

    _emit(progress, event="case", section="prepare", case=f"exporting {ckpt} for {target} -> {bundle}")
    _, fc, classes, _ = load_checkpoint(ckpt)
    cal, _ = real_features("gsc", gsc, classes, fc, "train")
    priv, _ = generate_keypair(Path(tempfile.mkdtemp(prefix="edgekws-bench-keys-")))
    export_bundle(ckpt, target, bundle, private_key=priv, calibration=cal)


def gsc_plan(
    gsc: Path,
    runs: Path,
    out_dir: Path,
    *,
    name: str | None = None,
    quick: bool = False,
    target: str | None = None,
    sections: Sequence[str] = SECTIONS,
    progress: Progress | None = None,
) -> BenchPlan:
    """The default plan: CNN-4, ResNet-18 and the mcu DS-CNN (checkpoints under ``runs``; bundles exported there
    when missing) on the speaker-disjoint test split of the Speech Commands subset in ``gsc``."""
    from edgekws.bundle import load_bundle
    from edgekws.export import real_features
    from edgekws.targets import get_target

    gsc, runs = Path(gsc), Path(runs)
    if not gsc.is_dir():
        raise BenchError(f"Speech Commands folder {gsc} does not exist (--gsc)")
    cpus = None
    threads: tuple[int, ...] = (1,) if quick else (1, 2)
    notes = []
    if target is not None:
        tgt = get_target(target)
        threads = (tgt.threads,)
        avail = sorted(os.sched_getaffinity(0))
        cpus = tuple(avail[: tgt.threads])
        notes.append(
            f"--target {target}: {tgt.threads} inference thread(s), every measured process pinned to CPU "
            f"{list(cpus)} (sched_setaffinity); the board's memory budget is "
            f"{tgt.memory_budget_kb / 1024:.0f} MB (reported, not enforced). This approximates the core "
            "count, not an ARM core's speed."
        )
    name = name or ("bench" + (f"_{target}" if target else "") + ("_quick" if quick else ""))
    work = runs / "bench" / name
    work.mkdir(parents=True, exist_ok=True)
    models: list[ModelCase] = []
    chosen = DEFAULT_MODELS[:1] + DEFAULT_MODELS[2:] if quick else DEFAULT_MODELS
    for mname, tname, rel_ckpt, rel_bundle, repeats in chosen:
        ckpt, bundle = runs / rel_ckpt, runs / rel_bundle
        if not ckpt.is_file():
            raise BenchError(
                f"checkpoint {ckpt} is missing: train it with `edgekws train --dataset gsc --data-dir "
                f"{gsc} --model {get_target(tname).model} --out {ckpt.parent}` (or pass --runs)"
            )
        _ensure_bundle(ckpt, tname, bundle, gsc, progress)
        b = load_bundle(bundle, trust_embedded_key=True)  # integrity of every file before timing it
        data = work / f"test_{mname}.npz"
        if not data.is_file():
            x, y = real_features("gsc", gsc, list(b.classes), b.feature_config, "test")
            np.savez(data, x=x[:, None].astype(np.float32), y=y)
        models.append(ModelCase(mname, tname, bundle, data, ckpt, repeats=100 if quick else repeats))
    cnn = next(m for m in models if m.name == "cnn4")
    b = load_bundle(cnn.bundle, trust_embedded_key=True)
    ft_data = work / "train_cnn4.npz"
    dist_data = work / "distill_cnn4.npz"
    if not ft_data.is_file() or not dist_data.is_file():
        xtr, ytr = real_features("gsc", gsc, list(b.classes), b.feature_config, "train")
        xv, yv = real_features("gsc", gsc, list(b.classes), b.feature_config, "val")
        perm = np.random.default_rng(0).permutation(len(xtr))  # class-mixed prefixes
        np.savez(ft_data, x=xtr[perm][:, None].astype(np.float32), y=ytr[perm])
        np.savez(
            dist_data,
            xtr=xtr[perm].astype(np.float32),
            ytr=ytr[perm],
            xv=xv.astype(np.float32),
            yv=yv,
            classes=np.array(b.classes),
            feature_config=json.dumps(b.feature_config.to_dict()),
        )
    plan = BenchPlan(
        name=name,
        out_dir=Path(out_dir),
        work_dir=work,
        models=models,
        sections=tuple(sections),
        threads=threads,
        cpus=cpus,
        target=target,
        quick=quick,
        stream_bundle=cnn.bundle,
        finetune_bundle=cnn.bundle,
        finetune_data=ft_data,
        distill_data=dist_data,
        notes=notes,
    )
    if quick:
        plan.warmup = 5
        plan.stream_seconds = 10.0
        plan.stream_graphs = (("tflite", "int8"), ("onnx", "int8"))
        plan.finetune_sizes = (100, 500)
        plan.distill_base = {"per_class": 10, "batch_size": 200, "n_models": 1, "width": 16}
        plan.distill_sweeps = {"per_class": (10, 20)}
        plan.distill_steps = 2
        plan.distill_n_train = 400
    return plan


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
