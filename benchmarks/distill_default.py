"""Wall time, peak memory and accuracy of the headline command on the embedded default.

    python benchmarks/distill_default.py [--target rpi] [--cold]

Runs ``edgekws distill --target <target>`` in a subprocess (``--cold``: with an empty cache, so the synthetic
keywords are generated too), and writes ``benchmarks/results/distill_default.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgekws.fileio import atomic_write_json
from edgekws.server.pipeline import run_environment

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="rpi")
    ap.add_argument("--cold", action="store_true", help="start from an empty cache")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more arguments for edgekws distill")
    args = ap.parse_args()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cold:
            env["EDGEKWS_CACHE"] = str(Path(tmp) / "cache")
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "edgekws.cli", "distill", "--target", args.target, "--out", str(out), *args.extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"distill failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        m = json.loads((out / "metrics.json").read_text())
    report = {
        "command": "edgekws distill --target " + args.target + (" " + " ".join(args.extra) if args.extra else ""),
        "cold_cache": args.cold,
        "wall_seconds": wall,
        "peak_rss_mb": peak_mb,
        "distill_seconds": m["distill_seconds"],
        "train_seconds": m["train_seconds"],
        "coreset": m["coreset"],
        "test_accuracy": m["test"]["accuracy"],
        "val_accuracy": m["val_accuracy"],
        "split": m["split"],
        "model": m["model"],
        "environment": run_environment(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "distill_default.json", report)
    c = m["coreset"]
    md = [
        f"# `{report['command']}` on the embedded default", "",
        f"Machine: {report['environment']['cpu']}, {report['environment']['cores']} cores; "
        f"{'empty cache (synthesis included)' if args.cold else 'warm cache (synthetic clips already generated)'}.", "",
        "| wall time | distillation | training on coreset | peak RSS | coreset | KRR val acc (init → best) | test acc (synthetic test split) |",
        "|---|---|---|---|---|---|---|",
        f"| {wall:.0f} s | {m['distill_seconds']:.0f} s ({c['steps']} steps, {c['seconds_per_step']:.1f} s/step) | "
        f"{m['train_seconds']:.0f} s | {peak_mb:.0f} MB | {c['size']} ({c['per_class']}/class) | "
        f"{100 * c['krr_val_accuracy_init']:.1f} → {100 * c['krr_val_accuracy']:.1f} % | {100 * m['test']['accuracy']:.2f} % |",
    ]
    (RESULTS / "distill_default.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
