"""MFCC cost: edgekws' numpy MFCC (batch, single clip, streaming per hop) against librosa, in one run.

    python benchmarks/mfcc_speed.py [--clips 256] [--repeats 5]

Writes ``benchmarks/results/mfcc_speed.json`` and ``mfcc_speed.md``. The machine is shared and noisy: compare the
ratios within one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgekws.features import FeatureConfig, StreamingMFCC, mfcc

RESULTS = Path(__file__).resolve().parent / "results"


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def _first_call_seconds(code: str) -> float:
    """Seconds of one call in a fresh interpreter (imports excluded), i.e. what a device pays at start."""
    prog = (
        "import time, numpy as np\n" + code + "\n"
        "y = np.random.default_rng(0).standard_normal(16000).astype(np.float32)\n"
        "t = time.perf_counter(); f(y); print(time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = FeatureConfig(normalization="none")
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal((args.clips, cfg.clip_samples))).astype(np.float32)
    res: dict[str, dict[str, float]] = {}

    best, med = _best(lambda: mfcc(y, cfg), args.repeats)
    res["edgekws batch"] = {"ms_per_clip": 1e3 * best / args.clips, "median_ms_per_clip": 1e3 * med / args.clips}
    best, med = _best(lambda: [mfcc(c, cfg) for c in y[:64]], args.repeats)
    res["edgekws one clip at a time"] = {"ms_per_clip": 1e3 * best / 64, "median_ms_per_clip": 1e3 * med / 64}

    stream = np.concatenate(list(y[:16]))
    hop = cfg.hop_length

    def run_stream() -> None:
        s = StreamingMFCC(cfg)
        for i in range(0, len(stream), hop):
            s.push(stream[i : i + hop])

    best, med = _best(run_stream, args.repeats)
    n_hops = len(stream) // hop
    res["edgekws streaming, per 20 ms hop"] = {"ms_per_hop": 1e3 * best / n_hops, "median_ms_per_hop": 1e3 * med / n_hops,
                                               "ms_per_clip": 1e3 * best / 16, "median_ms_per_clip": 1e3 * med / 16}
    try:
        import librosa

        kw = dict(sr=cfg.sample_rate, n_mfcc=cfg.n_mfcc, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                  win_length=cfg.win_length, center=False, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
        librosa.feature.mfcc(y=y[0], **kw)  # warm-up (numba JIT, filterbank cache)
        best, med = _best(lambda: [librosa.feature.mfcc(y=c, **kw) for c in y[:64]], args.repeats)
        res["librosa one clip at a time (warm)"] = {"ms_per_clip": 1e3 * best / 64, "median_ms_per_clip": 1e3 * med / 64}
        best, med = _best(lambda: librosa.feature.mfcc(y=y, **kw), args.repeats)
        res["librosa batch (warm)"] = {"ms_per_clip": 1e3 * best / args.clips, "median_ms_per_clip": 1e3 * med / args.clips}
        res["librosa first call in a new process"] = {"seconds": _first_call_seconds(
            "import librosa\nf = lambda y: librosa.feature.mfcc(y=y, sr=16000, n_mfcc=40, n_fft=1024, hop_length=320, "
            "win_length=800, center=False, n_mels=40, fmin=20.0, fmax=7600.0)")}
        librosa_version = librosa.__version__
    except ImportError:
        librosa_version = None
    res["edgekws first call in a new process"] = {"seconds": _first_call_seconds(
        "from edgekws.features import FeatureConfig, mfcc\ncfg = FeatureConfig(normalization='none')\nf = lambda y: mfcc(y, cfg)")}

    report = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "numpy": np.__version__, "librosa": librosa_version},
              "feature_config": cfg.to_dict(), "clips": args.clips, "results": res}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mfcc_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# MFCC speed: edgekws (numpy) vs librosa", "",
             f"1 s clips at 16 kHz, 40 MFCC × 48 frames; best of {args.repeats} repeats (median in brackets); "
             f"numpy {np.__version__}, librosa {librosa_version}.", "", "| case | per clip (ms) | other |", "|---|---|---|"]
    for name, r in res.items():
        per = f"{r['ms_per_clip']:.3f} ({r['median_ms_per_clip']:.3f})" if "ms_per_clip" in r else "–"
        other = f"{r['ms_per_hop']:.3f} ms per hop" if "ms_per_hop" in r else (f"{r['seconds'] * 1e3:.1f} ms" if "seconds" in r else "")
        lines.append(f"| {name} | {per} | {other} |")
    (RESULTS / "mfcc_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
