"""Latency, memory and size on the device; speed and scaling of distillation (the script behind `edgekws bench`).

    python benchmarks/bench_edge.py --gsc ../shared/data/gsc-dev --runs ../runs [--quick] [--target rpi]

Every case runs alone in a fresh process (see ``bench.py``). Writes ``benchmarks/results/<name>.json``,
``<name>.md`` and ``<name>_*.png``; ``<name>`` defaults to ``bench[_TARGET][_quick]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import SECTIONS, gsc_plan, run_bench

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gsc", type=Path, required=True, help="Speech Commands folder (real test clips)")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="checkpoints and exported bundles")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--target", default=None)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = ap.parse_args()

    def progress(ev: dict) -> None:
        if ev.get("event") == "case":
            print(f"{ev['section']}: {ev['case']}", flush=True)

    plan = gsc_plan(args.gsc, args.runs, args.out, name=args.name, quick=args.quick, target=args.target,
                    sections=[s for s in args.only.split(",") if s], progress=progress)
    report = run_bench(plan, progress)
    print(json.dumps(report["headline"], indent=1, default=str))


if __name__ == "__main__":
    main()
