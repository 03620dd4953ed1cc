"""The command line's one console (stderr), its one error path, and how progress is shown.

- :func:`console`: the rich console every command prints its messages to (stderr; stdout carries only results
  such as JSON lines), made on first use so a command that prints nothing never imports rich.
- :func:`fail`: print ``error: <message>`` and exit with status 2. Every refusal goes through it.
- :func:`progress`: a callback for the library's progress events: rich progress bars on a terminal, one plain line
  per stage (and every tenth of a long stage) when stderr is a file or a pipe, so a log shows the run as it goes.
- :func:`quiet_third_party`: keeps other packages' warnings and log records (torch's exporter, copyreg's
  FutureWarning, onnxscript) out of the console; ``EDGEKWS_VERBOSE=1`` lets them through.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CliError", "console", "fail", "progress", "quiet_third_party", "thresholds"]

_CONSOLE: Any = None


class CliError(SystemExit):
    """Raised by :func:`fail` after the message is printed: the process exits with status ``code``."""


def console() -> Any:
    """The console for messages (stderr)."""
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(stderr=True, highlight=False)
    return _CONSOLE


def fail(msg: object, code: int = 2) -> Any:
    """Print ``error: msg`` to the console and exit with ``code`` (2: the command refused its input)."""
    from rich.markup import escape

    console().print(f"[bold red]error:[/] {escape(str(msg))}")  # escaped: messages hold paths and [extras]
    raise CliError(code)


def thresholds(text: str | None) -> dict[str, float]:
    """``"yes=0.7,stop=0.5"`` -> ``{"yes": 0.7, "stop": 0.5}``; a malformed pair fails with the reason."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, val = part.partition("=")
        if not sep:
            fail(f"--thresholds expects keyword=value pairs, got {part!r}")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            fail(f"--thresholds: {val!r} is not a number")
    return out


_NOISY_ROOTS = {
    "torch",
    "onnxscript",
    "onnx_ir",
    "onnxruntime",
    "litert_torch",
    "ai_edge_litert",
    "jax",
    "absl",
    "tensorflow",
    "numba",
    "urllib3",
    "matplotlib",
    "onnx",
}
_NOISY = (
    "torch",
    "torch.onnx",
    "torch._dynamo",
    "torch._export",
    "onnxscript",
    "onnx_ir",
    "onnxruntime",
    "litert_torch",
    "ai_edge_litert",
    "jax",
    "absl",
    "tensorflow",
    "numba",
    "urllib3",
    "matplotlib",
)


_QUIET: dict[str, Any] = {"on": False, "saved": {}}


def silence_loggers() -> None:
    """Raise every logger of the packages in ``_NOISY_ROOTS`` that exists now to ERROR (their levels before are
    restored when the quiet block ends). Called when the block starts and again at each progress event, because a
    package imported meanwhile (torch) sets its own levels when it loads."""
    if not _QUIET["on"]:
        return
    saved: dict[str, int] = _QUIET["saved"]
    for name in [*list(logging.root.manager.loggerDict), *_NOISY]:
        if name.split(".", 1)[0] in _NOISY_ROOTS:
            logger = logging.getLogger(name)
            if logger.level < logging.ERROR:
                saved.setdefault(name, logger.level)
                logger.setLevel(logging.ERROR)


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Keep warnings and log records of other packages off the console while the block runs (edgekws's own
    warnings still show). ``EDGEKWS_VERBOSE=1`` disables the filter."""
    if os.environ.get("EDGEKWS_VERBOSE") or _QUIET["on"]:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"edgekws(\..*)?$")
        _QUIET["on"], _QUIET["saved"] = True, {}
        silence_loggers()
        try:
            yield
        finally:
            _QUIET["on"] = False
            for name, level in _QUIET["saved"].items():
                logging.getLogger(name).setLevel(level)


def _interactive() -> bool:
    return bool(console().is_terminal) and not os.environ.get("EDGEKWS_PLAIN")


@contextmanager
def progress(enabled: bool = True) -> Iterator[Any]:
    """A callback that shows the library's progress events (see the module doc)."""
    if not enabled:
        yield lambda ev: None
        return
    with quiet_third_party():
        if _interactive():
            with _RichProgress() as on_event:
                yield on_event
        else:
            yield _LineProgress()


def _describe(ev: dict[str, Any]) -> tuple[str, int | None, int | None, str]:
    """``(task, done, total, info)`` of a progress event, or an empty task for events that are not shown."""
    kind = ev.get("event")
    if kind in ("decode", "mfcc", "synthesise", "embed", "training streams", "validation streams", "check", "clip"):
        return kind, ev.get("done"), ev.get("total"), ""
    if kind == "epoch":
        info = f"loss {ev['train_loss']:.3f}"
        if "val_accuracy" in ev:
            info += f"  val {100 * ev['val_accuracy']:.1f}%"
        return "train", ev["epoch"] + 1, ev["epochs"], info
    if kind == "experiment":
        return "cases", ev["done"], ev["total"], str(ev.get("case", ""))
    if kind == "al_round":
        return (
            "active learning",
            ev["round"] + 1,
            ev["rounds"],
            f"{ev['strategy']} seed {ev['seed']}: {ev['labelled']} labelled ({100 * ev['fraction']:.1f} %) -> "
            f"{100 * ev['test_accuracy']:.1f} %",
        )
    if kind == "al_epoch":
        return "train", ev["epoch"] + 1, ev["epochs"], f"{ev['strategy']} round {ev['round']}"
    if kind == "rfad_features":
        return "random features", ev["done"], ev["total"], ""
    if kind == "distill":
        info = f"loss {ev['loss']:.4f}"
        if ev.get("best_val_accuracy") is not None:
            info += f"  KRR val {100 * ev['best_val_accuracy']:.1f}%"
        return "distil", ev["step"], ev["steps"], info
    if kind == "export":
        return "export", ev["done"], ev["total"], str(ev.get("graph", ""))
    if kind in ("download", "verify", "unpack"):
        total = ev.get("total")
        mb = f"{ev['done'] / 1e6:.1f}" + (f" / {total / 1e6:.1f} MB" if total else " MB")
        return f"{kind} {ev.get('name', '')}".strip(), ev["done"], total, mb if kind != "unpack" else ""
    return "", None, None, ""


class _LineProgress:
    """One line per stage and per tenth of a stage, for logs (stderr not a terminal)."""

    def __init__(self) -> None:
        self.stage = "train"
        self.shown: dict[str, int] = {}

    def __call__(self, ev: dict[str, Any]) -> None:
        silence_loggers()
        if ev.get("event") == "stage":
            self.stage = f"train {ev['stage']}"
            console().print(f"{ev['stage']}: {ev.get('detail', '')}", soft_wrap=True)
            return
        task, done, total, info = _describe(ev)
        if not task:
            return
        if task == "train":
            task = self.stage
        tenth = -1 if not total or done is None else int(10 * done / max(total, 1))
        first = task not in self.shown
        if first or tenth > self.shown[task] or (total and done == total and self.shown[task] < 10):
            self.shown[task] = tenth
            where = f"{done}/{total}" if total else (f"{done}" if done is not None else "")
            console().print(f"{task}: {where} {info}".rstrip(), soft_wrap=True)


class _RichProgress:
    """Rich progress bars, one per task."""

    def __enter__(self) -> Any:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.prog = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console(),
            transient=False,
        )
        self.prog.__enter__()
        self.tasks: dict[str, Any] = {}
        self.stage = "train"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prog.__exit__(*exc)

    def __call__(self, ev: dict[str, Any]) -> None:
        silence_loggers()
        if ev.get("event") == "stage":
            self.stage = f"train {ev['stage']}"
            self.prog.console.log(f"{ev['stage']}: {ev.get('detail', '')}")
            return
        task, done, total, info = _describe(ev)
        if not task:
            return
        if task == "train":
            task = self.stage
        if task not in self.tasks:
            self.tasks[task] = self.prog.add_task(task, total=total, info="")
        self.prog.update(self.tasks[task], completed=done, total=total, info=info)


def stdout_line(text: str) -> None:
    """One line of results on stdout (flushed: another program may read it as it comes)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
