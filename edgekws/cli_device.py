"""Device-side commands: ``edgekws listen`` and ``edgekws device collect|label|finetune|versions``.

Thin shells over :mod:`edgekws.device`; nothing here imports torch, so they run on a device install.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

device_app = typer.Typer(no_args_is_help=True, help="On the device: collect audio, ask for labels, fine-tune.")
console = Console(stderr=True)


def _fail(msg: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(msg))}")
    raise typer.Exit(2)


def _thresholds(text: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if not text:
        return out
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, val = part.partition("=")
        if not sep:
            _fail(f"--thresholds expects keyword=value pairs, got {part!r}")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            _fail(f"--thresholds: {val!r} is not a number")
    return out


_KEY_HELP = "signer's public key (PEM file or key folder); default $EDGEKWS_HOME/keys/signing.pub"
_EMBEDDED_HELP = "check integrity against the key inside the manifest (does not prove who signed it)"


def _load_model(bundle: Path, fmt: str | None, precision: str | None, threads: int, state: Path | None,
                use_local: bool, public_key: Path | None = None, embedded_key: bool = False, calibrate: bool = True):
    """Verify and open a bundle's model (raises DeviceModelError)."""
    from edgekws.device.model import (
        DeviceModel,
        DeviceModelError,
        open_bundle,
        state_dir_for,
    )

    if bundle.is_file():
        import tarfile

        if tarfile.is_tarfile(bundle):
            raise DeviceModelError(f"{bundle} is a bundle archive; --bundle takes the unpacked folder: install it "
                                   "with `edgekws device update`, or unpack it (`mkdir B && tar -xf "
                                   f"{bundle} -C B`, then --bundle B; it is verified when opened)")
        raise DeviceModelError(f"{bundle} is a file, not a bundle folder (one with manifest.json)")
    info = open_bundle(bundle, public_key, trust_embedded_key=embedded_key)
    rec = info.manifest.get("recommended") or {}
    if fmt is None:
        fmt = str(rec.get("format", "onnx"))
    if precision is None:
        precision = str(rec.get("precision", "fp32")) if fmt == rec.get("format", fmt) else "fp32"
    sd = state_dir_for(info, state) if use_local else None
    return DeviceModel(info, fmt=fmt, precision=precision, threads=threads, state=sd, calibrate=calibrate)


def _open_model(*args, **kwargs):
    from edgekws.device.model import DeviceModelError

    try:
        return _load_model(*args, **kwargs)
    except DeviceModelError as exc:
        _fail(str(exc))


def _meter(level_db: float, width: int = 30) -> str:
    frac = min(1.0, max(0.0, (level_db + 60.0) / 60.0))
    n = round(frac * width)
    return "█" * n + "░" * (width - n)


def register(app: typer.Typer) -> None:
    """Add ``listen`` and the ``device`` group to the main app."""
    app.command("listen")(listen)
    app.add_typer(device_app, name="device")


def listen(
    bundle: Path = typer.Option(..., "--bundle", "-b", help="bundle directory"),
    wav: Path | None = typer.Option(None, "--wav", help="read this audio file instead of the microphone"),
    stdin: bool = typer.Option(False, "--stdin", help="read raw 16-bit PCM from stdin (rate: --rate)"),
    device: str | None = typer.Option(None, "--device", help="input device index or name (microphone)"),
    rate: int | None = typer.Option(None, "--rate", min=1, help="capture rate in Hz (resampled to the model's)"),
    realtime: bool = typer.Option(False, "--realtime/--fast", help="--wav: pace the file in real time"),
    as_json: bool = typer.Option(False, "--json", help="print detections as JSON lines on stdout"),
    fmt: str | None = typer.Option(None, "--format", help="onnx or tflite (default: the bundle's recommendation)"),
    precision: str | None = typer.Option(None, "--precision", help="fp32 or int8 (default: as recommended)"),
    threads: int = typer.Option(1, "--threads", min=1),
    threshold: float | None = typer.Option(None, "--threshold", min=0.0, max=1.0,
                                           help="default posterior threshold (default: the one the bundle ships, "
                                                "else 0.6)"),
    thresholds: str | None = typer.Option(None, "--thresholds", help="per keyword, e.g. 'yes=0.7,stop=0.5'"),
    hop_ms: float = typer.Option(100.0, "--hop-ms", help="inference every this many ms"),
    smooth: int = typer.Option(5, "--smooth", min=1, help="average posteriors over this many hops"),
    refractory: float = typer.Option(1.0, "--refractory", min=0.0, help="seconds without a second detection"),
    gate_db: float = typer.Option(10.0, "--gate-db", min=0.0, help="fire only this far above the noise floor"),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="use the softmax temperature the bundle ships (else fit one on its coreset)"),
    seconds: float | None = typer.Option(None, "--seconds", help="stop after this much audio"),
    state: Path | None = typer.Option(None, "--state", help="device state directory (local model versions)"),
    local: bool = typer.Option(True, "--local/--bundle-only", help="use the newest locally fine-tuned version"),
    public_key: Path | None = typer.Option(None, "--public-key", help=_KEY_HELP),
    embedded_key: bool = typer.Option(False, "--embedded-key", help=_EMBEDDED_HELP),
) -> None:
    """Live keyword spotting from the microphone, a WAV file (--wav) or stdin."""
    from edgekws.device.runtime import Detector, DetectorConfig
    from edgekws.device.stream import AudioSourceError, open_source

    model = _open_model(bundle, fmt, precision, threads, state, local, public_key, embedded_key, calibrate)
    threshold_from = "--threshold"
    if threshold is None:
        shipped = model.bundle.detector.get("threshold")
        threshold, threshold_from = ((shipped, "the bundle's") if shipped is not None
                                     else (DetectorConfig.threshold, "default"))
    try:
        dcfg = DetectorConfig(hop_ms=hop_ms, smooth=smooth, threshold=threshold, thresholds=_thresholds(thresholds),
                              refractory_s=refractory, gate_db=gate_db)
    except ValueError as exc:
        _fail(str(exc))
    unknown = set(dcfg.thresholds) - set(model.classes)
    if unknown:
        _fail(f"--thresholds names unknown keywords {sorted(unknown)}; the model knows {list(model.classes)}")
    fc = model.feature_config
    dev: int | str | None = int(device) if device is not None and device.isdigit() else device
    try:
        src = open_source(wav=wav, stdin=stdin, device=dev, input_rate=rate, realtime=realtime,
                          sample_rate=fc.sample_rate, max_seconds=seconds)
    except (AudioSourceError, ValueError) as exc:
        _fail(str(exc))
    detections: list = []
    cur = {"model": model, "det": Detector(model, fc, dcfg)}
    seen = {"samples": 0}
    limit = None if seconds is None else int(seconds * fc.sample_rate)
    # `--bundle <root>/current` (a symlink that `device update` / `rollback` switch): follow the switch
    link = bundle if bundle.is_symlink() else None
    target = os.readlink(link) if link is not None else None
    every = 2 * fc.sample_rate  # look for a new bundle or local version every 2 s of audio
    open_args = (fmt, precision, threads, state, local, public_key, embedded_key, calibrate)

    def check() -> None:
        nonlocal target
        from edgekws.device.model import DeviceModelError

        if link is not None:
            try:
                now = os.readlink(link)
            except OSError:
                now = target
            if now != target:
                target = now
                try:
                    new = _load_model(bundle, *open_args)
                except DeviceModelError as exc:
                    console.print(f"[yellow]bundle switched to {now} but refused ({exc}); keeping the old one[/]")
                    return
                if new.feature_config.sample_rate != fc.sample_rate:
                    console.print(f"[yellow]bundle {now} wants {new.feature_config.sample_rate} Hz audio; restart "
                                  "listen to use it[/]")
                    return
                cur["model"], cur["det"] = new, Detector(new, new.feature_config, dcfg)
                console.print(f"[cyan]switched to bundle {now}[/]")
                return
        m = cur["model"]
        if m.state is not None and m.reload():
            cur["det"].model_changed()
            console.print(f"[cyan]switched to local model {m.version}[/]")

    def updates():
        next_check = every
        with src:
            for block in src:
                if limit is not None and seen["samples"] >= limit:
                    break
                seen["samples"] += len(block)
                yield from cur["det"].feed(block)
                if seen["samples"] >= next_check:
                    next_check = seen["samples"] + every
                    check()

    try:
        if as_json:
            for upd in updates():
                if upd.detection is not None:
                    detections.append(upd.detection)
                    sys.stdout.write(json.dumps(upd.detection.to_dict()) + "\n")
                    sys.stdout.flush()
        else:
            _live_view(updates(), lambda: cur["det"].classes, detections, src_name=getattr(src, "name", "audio"))
    except AudioSourceError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass
    if not as_json:
        Console().print(f"\n{len(detections)} detection(s) in {seen['samples'] / fc.sample_rate:.1f} s of audio "
                        f"(threshold {dcfg.threshold:g}, {threshold_from})")


def _live_view(updates, classes, detections: list, src_name: str) -> None:
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    def render(upd):
        top = Table(box=None, show_header=False, pad_edge=False)
        order = sorted(range(len(upd.probs)), key=lambda i: -upd.probs[i])[:3]
        for i in order:
            p = float(upd.probs[i])
            top.add_row(f"{classes()[i]:>12}", "▇" * round(p * 20), f"{p:.2f}")
        recent = Text("\n".join(f"{d.time:8.2f}s  {d.keyword}  {d.score:.2f}" for d in detections[-5:]) or "–")
        head = Text(f"{src_name}  t={upd.time:7.2f}s  level {upd.level_db:6.1f} dB  {_meter(upd.level_db)}")
        return Group(head, Text("top scores", style="bold"), top, Text("detections", style="bold"), recent)

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
    """Record (or read) audio, cut it into speech/event clips, and request labels for the best prototypes."""
    import numpy as np

    from edgekws.audio import save_wav
    from edgekws.device.model import DeviceModel, DeviceModelError
    from edgekws.device.prototypes import METHODS, VADConfig, collect
    from edgekws.device.store import LabelStore
    from edgekws.device.stream import AudioSourceError, WavSource, open_source

    if method not in METHODS:
        _fail(f"--method must be one of {', '.join(METHODS)}")
    try:
        vcfg = VADConfig(method=vad)
    except ValueError as exc:
        _fail(str(exc))
    info, sd = _state(bundle, state, public_key, embedded_key)
    try:
        model = DeviceModel(info, fmt=fmt, state=sd, calibrate=True)
    except DeviceModelError as exc:
        _fail(str(exc))
    fc = info.feature_config
    recordings: list[tuple[str, np.ndarray]] = []
    try:
        if wav:
            for p in wav:
                recordings.append((str(p), np.concatenate(list(WavSource(p, fc.sample_rate)) or [np.zeros(0)])))
        else:
            dev: int | str | None = int(device) if device is not None and device.isdigit() else device
            with open_source(device=dev, input_rate=rate, sample_rate=fc.sample_rate, max_seconds=seconds) as src:
                console.print(f"recording {seconds:.0f} s from {src.name}…")
                y = np.concatenate(list(src))
            name = time.strftime("rec-%Y%m%d-%H%M%S.wav")
            (sd / "recordings").mkdir(parents=True, exist_ok=True)
            save_wav(sd / "recordings" / name, y, fc.sample_rate)
            recordings.append((str(sd / "recordings" / name), y))
    except AudioSourceError as exc:
        _fail(str(exc))
    total = {"segments": 0, "clips": 0, "requested": []}
    with LabelStore(sd / "labels.sqlite") as store:
        for i, (name, y) in enumerate(recordings):
            r = collect(model, y, store, sd / "clips", source=name, k=k if i == len(recordings) - 1 else 0,
                        method=method, vad=vcfg)
            total["segments"] += r["segments"]
            total["clips"] += r["clips"]
            total["requested"] += r["requested"]
        pending = len(store.pending())
    console.print(f"{total['segments']} segment(s), {total['clips']} clip(s) stored; "
                  f"{len(total['requested'])} new label request(s), {pending} pending. State: {sd}")
    again = f"--bundle {bundle}" + (f" --public-key {public_key}" if public_key else "") + \
        (f" --state {state}" if state else "")
    console.print(f"next: edgekws device label {again} [--web]")


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
        console.print(f"label page: {server.url}  (loopback only; Ctrl-C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
        return
    with LabelStore(db) as store:
        if not store.pending():
            console.print("no pending label requests; run `edgekws device collect` first")
            return
        try:
            res = label_terminal(store, classes, info.feature_config, ask=lambda q: typer.prompt(q, default="",
                                                                                               show_default=False))
        except (KeyboardInterrupt, typer.Abort):
            console.print("\nstopped; every answer so far is saved")
            return
        counts = store.counts()
    console.print(f"labelled {res['labeled']}, skipped {res['skipped']}, new classes {res['new_classes']}; "
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
        model = DeviceModel(info, fmt=fmt, state=None)
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
    console.print(f"version {rep['version']}: {len(rep['classes'])} classes"
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
