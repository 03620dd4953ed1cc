"""Device-side commands: ``edgekws device collect|label|finetune|versions`` (and ``listen``'s place in the app).

Thin shells over :class:`edgekws.device.Spotter` and the rest of :mod:`edgekws.device`; nothing here imports torch,
so they run on a device install. ``listen`` itself lives in :mod:`edgekws.cli.listen`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from .console import console
from .console import fail as _fail

device_app = typer.Typer(no_args_is_help=True, help="On the device: collect audio, ask for labels, fine-tune.")

_KEY_HELP = "signer's public key (PEM file or key folder); default $EDGEKWS_HOME/keys/signing.pub"
_EMBEDDED_HELP = "check integrity against the key inside the manifest (does not prove who signed it)"


def register(app: typer.Typer) -> None:
    """Add ``listen`` and the ``device`` group to the main app."""
    app.command(
        "listen",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        help="Live keyword spotting from the microphone, a WAV file (--wav) or stdin "
        "(edgekws listen --help lists the options).",
        add_help_option=False,
    )(_listen_shell)
    app.add_typer(device_app, name="device")


def _listen_shell(ctx: typer.Context) -> None:
    from .listen import listen_main

    listen_main(list(ctx.args))


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
        spotter = Spotter.open(
            bundle,
            public_key=public_key,
            trust_embedded_key=embedded_key,
            state=state,
            fmt=fmt,
            precision="fp32",
            threads=1,
            check_every_s=None,
        )
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
                    console().print(
                        f"[yellow]microphone audio lost {src.overflows} time(s) "
                        f"({getattr(src, 'dropped_seconds', 0.0):.2f} s known)[/]"
                    )
            recordings.append(dest)
        total: dict[str, Any] = {"segments": 0, "clips": 0, "requested": []}
        with LabelStore(sd / "labels.sqlite") as store:
            for i, path in enumerate(recordings):
                r = collect(
                    model,
                    path,
                    store,
                    sd / "clips",
                    source=str(path),
                    k=k if i == len(recordings) - 1 else 0,
                    method=method,
                    vad=vcfg,
                )
                total["segments"] += r["segments"]
                total["clips"] += r["clips"]
                total["requested"] += r["requested"]
            pending = len(store.pending())
    except AudioSourceError as exc:
        _fail(str(exc))
    finally:
        spotter.close()
    console().print(
        f"{total['segments']} segment(s), {total['clips']} clip(s) stored; "
        f"{len(total['requested'])} new label request(s), {pending} pending. State: {sd}"
    )
    again = (
        f"--bundle {bundle}"
        + (f" --public-key {public_key}" if public_key else "")
        + (f" --state {state}" if state else "")
    )
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
            res = label_terminal(
                store, classes, info.feature_config, ask=lambda q: typer.prompt(q, default="", show_default=False)
            )
        except (KeyboardInterrupt, typer.Abort):
            console().print("\nstopped; every answer so far is saved")
            return
        counts = store.counts()
    console().print(
        f"labelled {res['labeled']}, skipped {res['skipped']}, new classes {res['new_classes']}; "
        f"labels so far: {counts}"
    )


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
                _fail(
                    "no labelled clips yet: run `edgekws device collect` and `edgekws device label` first "
                    "(retraining on the coreset alone made the shipped head worse in our measurements; "
                    "--allow-no-labels does it anyway)"
                )
            rep = finetune(model, store, sd, cfg)
    except (ValueError, DeviceModelError) as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(rep) + "\n")
        return
    console().print(
        f"version {rep['version']}: {len(rep['classes'])} classes"
        + (f" (new: {', '.join(rep['new_classes'])})" if rep["new_classes"] else "")
        + f", {rep['n_coreset']} coreset + {rep['n_labeled']} labelled, train accuracy "
        f"{100 * rep['train_accuracy']:.1f} %, {rep['seconds']:.2f} s. `edgekws listen` uses it now."
    )


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
        sys.stdout.write(
            f"{mark} {v}  classes={len(meta['classes'])}  labeled={meta['n_labeled']}  coreset={meta['n_coreset']}\n"
        )
    if cur is None:
        sys.stdout.write("* bundle head (no local version active)\n")
