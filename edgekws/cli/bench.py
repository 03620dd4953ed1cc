"""``edgekws bench``: latency, memory and size on the device; speed and scaling of distillation.

A thin shell over ``benchmarks/bench.py`` of a source checkout (benchmark code does not ship in the package that
goes to devices): builds the default plan on the real Speech Commands subset and the bundles exported from the
baseline checkpoints, runs every case in a fresh process, writes JSON + markdown + PNG.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from .console import console
from .console import fail as _fail

_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_bench() -> Any:
    """``benchmarks/bench.py`` of the checkout this package runs from (an editable install or a source tree)."""
    import importlib.util

    path = _BENCHMARKS / "bench.py"
    if not path.is_file():
        _fail(
            f"edgekws bench runs the benchmarks of a source checkout ({path} not found): clone the repository "
            "and install it with pip install -e ."
        )
    sys.path.insert(0, str(_BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench", mod)
    spec.loader.exec_module(mod)
    return mod


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the main app."""
    app.command("bench")(bench)


def bench(
    quick: bool = typer.Option(False, "--quick", help="a small subset: CNN-4 and DS-CNN, one thread, short runs"),
    target: str | None = typer.Option(
        None, "--target", help="limit threads and CPU affinity to a target profile (rpi: one thread pinned to one core)"
    ),
    gsc: Path | None = typer.Option(
        None,
        "--gsc",
        help="Speech Commands folder (real test clips; default "
        "$EDGEKWS_GSC_DIR, else ../shared/data/gsc-dev beside the checkout)",
    ),
    runs: Path = typer.Option(Path("runs"), "--runs", help="folder of checkpoints and exported bundles"),
    out: Path = typer.Option(Path("benchmarks/results"), "--out", help="where the report goes"),
    name: str | None = typer.Option(None, "--name", help="report name (default bench[_TARGET][_quick])"),
    only: str | None = typer.Option(None, "--only", help="comma-separated sections: device,stream,finetune,distill"),
    as_json: bool = typer.Option(False, "--json", help="print the headline figures as JSON on stdout"),
) -> None:
    """Benchmark device inference, streaming, on-device fine-tune and distillation; write a report."""
    b = load_bench()
    SECTIONS, BenchError, gsc_plan = b.SECTIONS, b.BenchError, b.gsc_plan
    if gsc is None:
        gsc = Path(os.environ.get("EDGEKWS_GSC_DIR") or _BENCHMARKS.parents[1] / "shared" / "data" / "gsc-dev")

    sections = tuple(s.strip() for s in only.split(",") if s.strip()) if only else SECTIONS
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        _fail(f"--only: unknown sections {bad}; choose from {', '.join(SECTIONS)}")
    if target is not None:
        from edgekws.targets import TARGETS

        if target not in TARGETS:
            _fail(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")

    def progress(ev: dict[str, Any]) -> None:
        if ev.get("event") == "case":
            console().print(f"[dim]{ev['section']}[/]: {ev['case']}", highlight=False)
        elif ev.get("event") == "result" and "error" in ev.get("row", {}):
            console().print(f"[yellow]  failed:[/] {ev['row']['error']}", highlight=False)

    try:
        plan = gsc_plan(gsc, runs, out, name=name, quick=quick, target=target, sections=sections, progress=progress)
        report = b.run_bench(plan, progress)
    except BenchError as exc:
        _fail(str(exc))
    files = [f"{report['name']}.json", f"{report['name']}.md", *report.get("charts", [])]
    console().print(
        f"wrote {', '.join(str(out / f) for f in files)} in {report['wall_s'] / 60:.1f} min", highlight=False
    )
    if as_json:
        print(json.dumps(report["headline"], default=str))
    else:
        for k, v in report["headline"].items():
            console().print(f"[bold]{k}[/]: {v}", highlight=False)
