"""``edgekws listen``: live keyword spotting through :class:`edgekws.device.Spotter`.

Parses its options with :mod:`argparse` and imports neither typer nor pydantic, nor rich unless it draws the live
view or prints an error, so a device that listens holds only what it needs (the entry point comes here without
building the rest of the command line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .console import console, stdout_line
from .console import fail as _fail
from .console import thresholds as _thresholds

__all__ = ["listen_main", "listen_parser"]

_KEY_HELP = "signer's public key (PEM file or key folder); default $EDGEKWS_HOME/keys/signing.pub"
_EMBEDDED_HELP = "check integrity against the key inside the manifest (does not prove who signed it)"


def _meter(level_db: float, width: int = 30) -> str:
    frac = min(1.0, max(0.0, (level_db + 60.0) / 60.0))
    n = round(frac * width)
    return "█" * n + "░" * (width - n)


def _unit(lo: float | None = None, hi: float | None = None, kind: type = float):
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"{v} is not {rng}")
        return v

    parse.__name__ = kind.__name__
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # the command line's one error path
        _fail(f"edgekws listen: {message} (edgekws listen --help lists the options)")


def listen_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="edgekws listen",
        description="Live keyword spotting from the microphone, a WAV file (--wav) "
        "or stdin, through edgekws.device.Spotter: the bundle's recommended graph, the newest local "
        "fine-tuned version, and a bundle link such as <root>/current followed when an update switches it.",
    )
    a = p.add_argument
    a("--bundle", "-b", type=Path, required=True, help="bundle directory (or a link to one, e.g. <root>/current)")
    a("--wav", type=Path, help="read this audio file (in blocks) instead of the microphone")
    a("--stdin", action="store_true", help="read raw 16-bit PCM from stdin (rate: --rate)")
    a("--device", help="input device index or name (microphone)")
    a("--rate", type=_unit(1, kind=int), help="capture rate in Hz (resampled to the model's)")
    a("--realtime", dest="realtime", action="store_true", default=False, help="--wav: pace the file in real time")
    a("--fast", dest="realtime", action="store_false", help="--wav: as fast as possible (default)")
    a(
        "--json",
        dest="as_json",
        action="store_true",
        help="print detections as JSON lines on stdout (and a line "
        'with "event": "overflow" when microphone audio was lost)',
    )
    a("--format", dest="fmt", help="onnx or tflite (default: the bundle's recommendation)")
    a("--precision", help="fp32 or int8 (default: as recommended)")
    a("--threads", type=_unit(1, kind=int), default=1)
    a(
        "--threshold",
        type=_unit(0.0, 1.0),
        help="default posterior threshold (default: the one the bundle ships, else 0.6)",
    )
    a("--thresholds", help="per keyword, e.g. 'yes=0.7,stop=0.5'")
    a("--hop-ms", type=float, default=100.0, help="inference every this many ms")
    a("--smooth", type=_unit(1, kind=int), default=5, help="average posteriors over this many hops")
    a("--refractory", type=_unit(0.0), default=1.0, help="seconds without a second detection")
    a("--gate-db", type=_unit(0.0), default=10.0, help="fire only this far above the noise floor")
    a(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the softmax temperature the bundle ships (else fit one on its coreset)",
    )
    a("--seconds", type=float, help="stop after this much audio")
    a("--state", type=Path, help="device state directory (local model versions)")
    a("--local", dest="local", action="store_true", default=True, help="use the newest locally fine-tuned version")
    a("--bundle-only", dest="local", action="store_false", help="run the bundle's own head")
    a("--public-key", type=Path, help=_KEY_HELP)
    a("--embedded-key", action="store_true", help=_EMBEDDED_HELP)
    return p


def listen_main(argv: list[str]) -> None:
    """``edgekws listen``: parse ``argv`` and run (the entry point calls this without loading typer)."""
    args = listen_parser().parse_args(argv)
    from edgekws.device.model import DeviceModelError
    from edgekws.device.runtime import DetectorConfig
    from edgekws.device.spotter import Spotter
    from edgekws.device.stream import AudioSourceError, open_source

    try:
        dcfg = DetectorConfig(
            hop_ms=args.hop_ms,
            smooth=args.smooth,
            thresholds=_thresholds(args.thresholds),
            refractory_s=args.refractory,
            gate_db=args.gate_db,
        )
    except ValueError as exc:
        _fail(str(exc))
    notes: list[str] = []

    def on_event(ev: dict[str, Any]) -> None:
        if ev["event"] == "bundle":
            notes.append(f"switched to bundle {ev['bundle']} ({ev['id']})")
        elif ev["event"] == "bundle_refused":
            notes.append(f"bundle switched to {ev['bundle']} but refused ({ev['reason']}); keeping the old one")
        elif ev["event"] == "local_version":
            notes.append(f"switched to local model {ev['version'] or 'of the bundle'}")
        console().print(f"[cyan]{notes[-1]}[/]")

    try:
        spotter = Spotter.open(
            args.bundle,
            public_key=args.public_key,
            trust_embedded_key=args.embedded_key,
            state=args.state,
            local=args.local,
            fmt=args.fmt,
            precision=args.precision,
            threads=args.threads,
            config=dcfg,
            threshold=args.threshold,
            calibrate=args.calibrate,
            isolate_verification=True,  # the long-running listener never loads the signature library
            on_event=on_event,
        )
    except (DeviceModelError, ValueError) as exc:
        _fail(str(exc).replace("thresholds name", "--thresholds names"))
    sr = spotter.sample_rate
    dev: int | str | None = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    try:
        src = open_source(
            wav=args.wav,
            stdin=args.stdin,
            device=dev,
            input_rate=args.rate,
            realtime=args.realtime,
            sample_rate=sr,
            max_seconds=args.seconds,
        )
    except (AudioSourceError, ValueError) as exc:
        _fail(str(exc))
    seen = {"samples": 0, "overflows": 0}
    limit = None if args.seconds is None else int(args.seconds * sr)
    detections: list = []

    def hops():
        with src, spotter:
            for block in src:
                if limit is not None and seen["samples"] >= limit:
                    break
                seen["samples"] += len(block)
                yield from spotter.hops(block)
                if src.overflows != seen["overflows"]:
                    seen["overflows"] = src.overflows
                    _overflow(src, seen["samples"] / sr, args.as_json)

    try:
        if args.as_json:  # nothing is kept: memory stays what the detector needs, however long the input
            for upd in hops():
                if upd.detection is not None:
                    stdout_line(json.dumps(upd.detection.to_dict()))
        else:
            _live_view(hops(), lambda: spotter.classes, detections, src, notes)
    except AudioSourceError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass
    if not args.as_json:
        lost = f"; microphone audio lost {src.overflows} time(s)" if src.overflows else ""
        console().print(
            f"\n{len(detections)} detection(s) in {seen['samples'] / sr:.1f} s of audio (threshold "
            f"{spotter.config.threshold:g}, {_THRESHOLD_FROM[spotter.threshold_source]}){lost}"
        )


_THRESHOLD_FROM = {"given": "--threshold", "bundle": "the bundle's", "config": "default"}


def _overflow(src: Any, t: float, as_json: bool) -> None:
    dropped = round(float(getattr(src, "dropped_seconds", 0.0)), 3)
    if as_json:
        stdout_line(
            json.dumps({"event": "overflow", "time": round(t, 3), "overflows": src.overflows, "dropped_s": dropped})
        )


def _live_view(updates, classes, detections: list, src: Any, notes: list[str]) -> None:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    name = getattr(src, "name", "audio")

    def render(upd):
        top = Table(box=None, show_header=False, pad_edge=False)
        order = sorted(range(len(upd.probs)), key=lambda i: -upd.probs[i])[:3]
        for i in order:
            p = float(upd.probs[i])
            top.add_row(f"{classes()[i]:>12}", "▇" * round(p * 20), f"{p:.2f}")
        recent = Text("\n".join(f"{d.time:8.2f}s  {d.keyword}  {d.score:.2f}" for d in detections[-5:]) or "–")
        head = Text(f"{name}  t={upd.time:7.2f}s  level {upd.level_db:6.1f} dB  {_meter(upd.level_db)}")
        parts = [head]
        if src.overflows:
            parts.append(
                Text(
                    f"audio lost {src.overflows} time(s) ({getattr(src, 'dropped_seconds', 0.0):.2f} s "
                    "known): the device did not keep up",
                    style="bold yellow",
                )
            )
        parts += [Text("top scores", style="bold"), top, Text("detections", style="bold"), recent]
        if notes:
            parts.append(Text(notes[-1], style="cyan"))
        return Group(*parts)

    out = Console()
    with Live(Text("waiting for audio…"), console=out, refresh_per_second=10, transient=False) as live:
        for upd in updates:
            if upd.detection is not None:
                detections.append(upd.detection)
            live.update(render(upd))
