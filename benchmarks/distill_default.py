"""Wall time, peak memory and accuracy of the headline command on the embedded default.

    python benchmarks/distill_default.py [--target rpi] [--cold]

Runs ``edgekws distill --target <target>`` in a subprocess (``--cold``: with an empty cache, so the synthetic
keywords and streams are generated and embedded too), and writes ``benchmarks/results/distill_default.json`` and
``.md`` with the wall time, the machine's load average around the run, the stages' times and what was shipped.
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
        load_start = os.getloadavg()
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
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "metrics": {k: m.get(k) for k in ("backbone", "model", "split", "coreset", "val_accuracy", "embed_seconds",
                                          "stream_seconds", "distill_seconds", "train_seconds", "total_seconds",
                                          "streams", "prior_correction")},
        "detector": {k: v for k, v in (m.get("detector") or {}).items() if k != "chosen_on"},
        "test_accuracy": (m.get("test") or {}).get("accuracy"),
        "environment": run_environment(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "distill_default.json", report)
    env = report["environment"]
    md = [
        f"# `{report['command']}` on the embedded default", "",
        f"Machine: {env['cpu']}, {env['cores']} cores, load average {load_start[0]:.1f} at the start and "
        f"{report['load_average']['end'][0]:.1f} at the end (other jobs share the machine); "
        f"{'empty cache (synthesis included)' if args.cold else 'warm cache (synthetic clips already generated)'}.",
        "",
        "| wall time | of which: embedding clips | synthetic streams | head training | peak RSS | coreset | "
        "synthetic val / test acc | shipped temperature / threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mm, d = report["metrics"], report["detector"]
    core = mm.get("coreset") or {}
    md.append(f"| {wall:.0f} s | {mm.get('embed_seconds') or 0:.0f} s | {mm.get('stream_seconds') or 0:.0f} s | "
              f"{mm.get('train_seconds') or 0:.0f} s | {peak_mb:.0f} MB | {core.get('size', '–')} "
              f"({core.get('per_class', '–')}/class) | {100 * (mm.get('val_accuracy') or 0):.1f} / "
              f"{100 * (report['test_accuracy'] or 0):.1f} % | {d.get('temperature', '–')} / {d.get('threshold', '–')} |")
    (RESULTS / "distill_default.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
