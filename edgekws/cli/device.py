"""Device-side commands: ``edgekws listen`` and ``edgekws device collect|label|finetune|versions``.

Thin shells over :class:`edgekws.device.Spotter` and the rest of :mod:`edgekws.device`; nothing here imports torch,
so they run on a device install. ``listen`` parses its options with :mod:`argparse` and imports neither typer nor
pydantic nor rich (unless it draws the live view), so a device running it holds only what it needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from .console import console, stdout_line
from .console import fail as _fail
from .console import thresholds as _thresholds

device_app = typer.Typer(no_args_is_help=True, help="On the device: collect audio, ask for labels, fine-tune.")

_KEY_HELP = "signer's public key (PEM file or key folder); default $EDGEKWS_HOME/keys/signing.pub"
_EMBEDDED_HELP = "check integrity against the key inside the manifest (does not prove who signed it)"


def register(app: typer.Typer) -> None:
    """Add ``listen`` and the ``device`` group to the main app."""
    app.command("listen", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                            "help_option_names": []},
                help="Live keyword spotting from the microphone, a WAV file (--wav) or stdin "
                     "(edgekws listen --help lists the options).", add_help_option=False)(_listen_shell)
    app.add_typer(device_app, name="device")


def _listen_shell(ctx: typer.Context) -> None:
    listen_main(list(ctx.args))


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
    p = _Parser(prog="edgekws listen", description="Live keyword spotting from the microphone, a WAV file (--wav) "
                "or stdin, through edgekws.device.Spotter: the bundle's recommended graph, the newest local "
                "fine-tuned version, and a bundle link such as <root>/current followed when an update switches it.")
    a = p.add_argument
    a("--bundle", "-b", type=Path, required=True, help="bundle directory (or a link to one, e.g. <root>/current)")
    a("--wav", type=Path, help="read this audio file (in blocks) instead of the microphone")
    a("--stdin", action="store_true", help="read raw 16-bit PCM from stdin (rate: --rate)")
    a("--device", help="input device index or name (microphone)")
    a("--rate", type=_unit(1, kind=int), help="capture rate in Hz (resampled to the model's)")
    a("--realtime", dest="realtime", action="store_true", default=False, help="--wav: pace the file in real time")
    a("--fast", dest="realtime", action="store_false", help="--wav: as fast as possible (default)")
    a("--json", dest="as_json", action="store_true", help="print detections as JSON lines on stdout (and a line "
      'with "event": "overflow" when microphone audio was lost)')
    a("--format", dest="fmt", help="onnx or tflite (default: the bundle's recommendation)")
    a("--precision", help="fp32 or int8 (default: as recommended)")
    a("--threads", type=_unit(1, kind=int), default=1)
    a("--threshold", type=_unit(0.0, 1.0), help="default posterior threshold (default: the one the bundle ships, "
      "else 0.6)")
    a("--thresholds", help="per keyword, e.g. 'yes=0.7,stop=0.5'")
    a("--hop-ms", type=float, default=100.0, help="inference every this many ms")
    a("--smooth", type=_unit(1, kind=int), default=5, help="average posteriors over this many hops")
    a("--refractory", type=_unit(0.0), default=1.0, help="seconds without a second detection")
    a("--gate-db", type=_unit(0.0), default=10.0, help="fire only this far above the noise floor")
    a("--calibrate", action=argparse.BooleanOptionalAction, default=True,
      help="use the softmax temperature the bundle ships (else fit one on its coreset)")
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
        dcfg = DetectorConfig(hop_ms=args.hop_ms, smooth=args.smooth, thresholds=_thresholds(args.thresholds),
                              refractory_s=args.refractory, gate_db=args.gate_db)
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
        spotter = Spotter.open(args.bundle, public_key=args.public_key, trust_embedded_key=args.embedded_key,
                               state=args.state, local=args.local, fmt=args.fmt, precision=args.precision,
                               threads=args.threads, config=dcfg, threshold=args.threshold, calibrate=args.calibrate,
                               on_event=on_event)
    except (DeviceModelError, ValueError) as exc:
        _fail(str(exc).replace("thresholds name", "--thresholds names"))
    sr = spotter.sample_rate
    dev: int | str | None = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    try:
        src = open_source(wav=args.wav, stdin=args.stdin, device=dev, input_rate=args.rate, realtime=args.realtime,
                          sample_rate=sr, max_seconds=args.seconds)
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
        if args.as_json:
            for upd in hops():
                if upd.detection is not None:
                    detections.append(upd.detection)
                    stdout_line(json.dumps(upd.detection.to_dict()))
        else:
            _live_view(hops(), lambda: spotter.classes, detections, src, notes)
    except AudioSourceError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass
    if not args.as_json:
        lost = f"; microphone audio lost {src.overflows} time(s)" if src.overflows else ""
        console().print(f"\n{len(detections)} detection(s) in {seen['samples'] / sr:.1f} s of audio (threshold "
                        f"{spotter.config.threshold:g}, {_THRESHOLD_FROM[spotter.threshold_source]}){lost}")


_THRESHOLD_FROM = {"given": "--threshold", "bundle": "the bundle's", "config": "default"}


def _overflow(src: Any, t: float, as_json: bool) -> None:
    dropped = round(float(getattr(src, "dropped_seconds", 0.0)), 3)
    if as_json:
        stdout_line(json.dumps({"event": "overflow", "time": round(t, 3), "overflows": src.overflows,
                                "dropped_s": dropped}))


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
            parts.append(Text(f"audio lost {src.overflows} time(s) ({getattr(src, 'dropped_seconds', 0.0):.2f} s "
                              "known): the device did not keep up", style="bold yellow"))
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


def _state(bundle: Path, state: Path | None, public_key: Path | None, embedded_key: bool):
    from edgekws.device.model import DeviceModelError, open_bundle, state_dir_for

    try:
        info = open_bundle(bundle, public_key, trust_embedded_key=embedded_key)
    except DeviceModelError as exc:
        _fail(str(exc))
    return info, state_dir_for(info, state)


@device_app.command("collect")
def collect_cmd(
    bundle: Path = typer.Option(..., "--bundle", "-b", help="bundle directory"),
    wav: list[Path] | None = typer.Option(None, "--wav", help="audio file(s) to read instead of recording"),
    seconds: float = typer.Option(30.0, "--seconds", help="microphone: record this long"),
    device: str | None = typer.Option(None, "--device", help="input device index or name"),
    rate: int | None = typer.Option(None, "--rate", min=1, help="capture rate in Hz"),
    k: int = typer.Option(10, "--k", min=0, help="prototypes to request labels for"),
    method: str = typer.Option("kcenter", "--method", help="kcenter | kmedoids | uncertain | hybrid | random"),
    vad: str = typer.Option("energy", "--vad", help="energy or spectral"),
    state: Path | None = typer.Option(None, "--state", help="device state directory"),
    public_key: Path | None = typer.Option(None, "--public-key", help=_KEY_HELP),
    embedded_key: bool = typer.Option(False, "--embedded-key", help=_EMBEDDED_HELP),
    fmt: str = typer.Option("onnx", "--format", help="onnx or tflite"),
) -> None:
    """Record (or read) audio, cut it into speech/event clips, and request labels for the best prototypes.

    Files are read in blocks and a recording is written to disk as it comes, so memory does not grow with the
    length of the audio."""
    from edgekws.device.model import DeviceModelError
    from edgekws.device.prototypes import METHODS, VADConfig, collect
    from edgekws.device.spotter import Spotter
    from edgekws.device.store import LabelStore
    from edgekws.device.stream import AudioSourceError, WavSource, open_source, record

    if method not in METHODS:
        _fail(f"--method must be one of {', '.join(METHODS)}")
    try:
        vcfg = VADConfig(method=vad)
    except ValueError as exc:
        _fail(str(exc))
    try:  # the embedding graph `device finetune` uses too (the stored embeddings train its head)
        spotter = Spotter.open(bundle, public_key=public_key, trust_embedded_key=embedded_key, state=state,
                               fmt=fmt, precision="fp32", threads=1, check_every_s=None)
    except DeviceModelError as exc:
        _fail(str(exc))
    model = spotter.model
    sd = model.state
    assert sd is not None
    fc = spotter.feature_config
    recordings: list[Path] = []
    try:
        if wav:
            for p in wav:
                WavSource(p, fc.sample_rate)  # checked before anything is cut
                recordings.append(p)
        else:
            dev: int | str | None = int(device) if device is not None and device.isdigit() else device
            dest = sd / "recordings" / time.strftime("rec-%Y%m%d-%H%M%S.wav")
            with open_source(device=dev, input_rate=rate, sample_rate=fc.sample_rate, max_seconds=seconds) as src:
                console().print(f"recording {seconds:.0f} s from {src.name}…")
                record(src, dest)
                if src.overflows:
                    console().print(f"[yellow]microphone audio lost {src.overflows} time(s) "
                                    f"({getattr(src, 'dropped_seconds', 0.0):.2f} s known)[/]")
            recordings.append(dest)
        total: dict[str, Any] = {"segments": 0, "clips": 0, "requested": []}
        with LabelStore(sd / "labels.sqlite") as store:
            for i, path in enumerate(recordings):
                r = collect(model, path, store, sd / "clips", source=str(path),
                            k=k if i == len(recordings) - 1 else 0, method=method, vad=vcfg)
                total["segments"] += r["segments"]
                total["clips"] += r["clips"]
                total["requested"] += r["requested"]
            pending = len(store.pending())
    except AudioSourceError as exc:
        _fail(str(exc))
    finally:
        spotter.close()
    console().print(f"{total['segments']} segment(s), {total['clips']} clip(s) stored; "
                    f"{len(total['requested'])} new label request(s), {pending} pending. State: {sd}")
    again = f"--bundle {bundle}" + (f" --public-key {public_key}" if public_key else "") + \
        (f" --state {state}" if state else "")
    console().print(f"next: edgekws device label {again} [--web]")


@device_app.command("label")
def label_cmd(
    bundle: Path = typer.Option(..., "--bundle", "-b", help="bundle directory"),
    web: bool = typer.Option(False, "--web", help="serve a local labelling page instead of the terminal"),
    port: int = typer.Option(8765, "--port", help="--web: port on 127.0.0.1 (0 = any free port)"),
    state: Path | None = typer.Option(None, "--state", help="device state directory"),
    public_key: Path | None = typer.Option(None, "--public-key", help=_KEY_HELP),
    embedded_key: bool = typer.Option(False, "--embedded-key", help=_EMBEDDED_HELP),
) -> None:
    """Answer label requests: class, new class or skip (terminal), or on http://127.0.0.1:PORT/ (--web)."""
    from edgekws.device.labeling import LabelServer, label_terminal
    from edgekws.device.model import current_version, load_version
    from edgekws.device.store import LabelStore

    info, sd = _state(bundle, state, public_key, embedded_key)
    classes = list(info.classes)
    v = current_version(sd)
    if v is not None:
        classes = list(load_version(sd, v)[2])
    db = sd / "labels.sqlite"
    if web:
        try:
            server = LabelServer(db, classes, port=port)
        except OSError as exc:
            _fail(f"cannot serve on 127.0.0.1:{port} ({exc}); choose another --port")
        console().print(f"label page: {server.url}  (loopback only; Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
        return
    with LabelStore(db) as store:
        if not store.pending():
            console().print("no pending label requests; run `edgekws device collect` first")
            return
        try:
            res = label_terminal(store, classes, info.feature_config, ask=lambda q: typer.prompt(q, default="",
                                                                                               show_default=False))
        except (KeyboardInterrupt, typer.Abort):
            console().print("\nstopped; every answer so far is saved")
            return
        counts = store.counts()
    console().print(f"labelled {res['labeled']}, skipped {res['skipped']}, new classes {res['new_classes']}; "
                  f"labels so far: {counts}")


@device_app.command("finetune")
def finetune_cmd(
    bundle: Path = typer.Option(..., "--bundle", "-b", help="bundle directory"),
    state: Path | None = typer.Option(None, "--state", help="device state directory"),
    public_key: Path | None = typer.Option(None, "--public-key", help=_KEY_HELP),
    embedded_key: bool = typer.Option(False, "--embedded-key", help=_EMBEDDED_HELP),
    steps: int = typer.Option(300, "--steps", min=1),
    lr: float = typer.Option(0.01, "--lr"),
    l2: float = typer.Option(1e-3, "--l2"),
    proto_weight: float = typer.Option(3.0, "--proto-weight", help="weight of a labelled clip vs a coreset sample"),
    no_coreset: bool = typer.Option(False, "--no-coreset", help="train on the labelled clips only"),
    fmt: str = typer.Option("onnx", "--format", help="onnx or tflite (embedding graph)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    allow_no_labels: bool = typer.Option(False, "--allow-no-labels", help="retrain on the coreset alone"),
) -> None:
    """Train the classifier head (numpy, frozen embeddings) on coreset + labels; write a new local version."""
    from edgekws.device.finetune import FinetuneConfig, finetune
    from edgekws.device.model import DeviceModel, DeviceModelError
    from edgekws.device.store import LabelStore

    info, sd = _state(bundle, state, public_key, embedded_key)
    try:
        cfg = FinetuneConfig(steps=steps, lr=lr, l2=l2, proto_weight=proto_weight, use_coreset=not no_coreset)
        model = DeviceModel(info, fmt=fmt, precision="fp32", state=None)
        with LabelStore(sd / "labels.sqlite") as store:
            if not store.labeled() and not allow_no_labels:
                _fail("no labelled clips yet: run `edgekws device collect` and `edgekws device label` first "
                      "(retraining on the coreset alone made the shipped head worse in our measurements; "
                      "--allow-no-labels does it anyway)")
            rep = finetune(model, store, sd, cfg)
    except (ValueError, DeviceModelError) as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(rep) + "\n")
        return
    console().print(f"version {rep['version']}: {len(rep['classes'])} classes"
                  + (f" (new: {', '.join(rep['new_classes'])})" if rep["new_classes"] else "")
                  + f", {rep['n_coreset']} coreset + {rep['n_labeled']} labelled, train accuracy "
                  f"{100 * rep['train_accuracy']:.1f} %, {rep['seconds']:.2f} s. `edgekws listen` uses it now.")


@device_app.command("versions")
def versions_cmd(
    bundle: Path = typer.Option(..., "--bundle", "-b", help="bundle directory"),
    state: Path | None = typer.Option(None, "--state", help="device state directory"),
    public_key: Path | None = typer.Option(None, "--public-key", help=_KEY_HELP),
    embedded_key: bool = typer.Option(False, "--embedded-key", help=_EMBEDDED_HELP),
    use: str | None = typer.Option(None, "--use", help="make this version current ('bundle' = none)"),
) -> None:
    """List local model versions; switch with --use vNNNN (or --use bundle for the shipped head)."""
    from edgekws.device.model import current_version, list_versions
    from edgekws.fileio import atomic_write_bytes

    _, sd = _state(bundle, state, public_key, embedded_key)
    vs = list_versions(sd)
    if use is not None:
        if use == "bundle":
            ptr = sd / "models" / "current"
            if ptr.exists():
                ptr.unlink()
        elif use not in vs:
            _fail(f"no local version {use!r}; have: {', '.join(vs) or 'none'}")
        else:
            atomic_write_bytes(sd / "models" / "current", (use + "\n").encode())
    cur = current_version(sd)
    for v in vs:
        meta = json.loads((sd / "models" / v / "meta.json").read_text())
        mark = "*" if v == cur else " "
        sys.stdout.write(f"{mark} {v}  classes={len(meta['classes'])}  labeled={meta['n_labeled']}  "
                         f"coreset={meta['n_coreset']}\n")
    if cur is None:
        sys.stdout.write("* bundle head (no local version active)\n")
