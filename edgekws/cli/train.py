"""Server-side commands: ``train``, ``distill``, ``export``, ``evaluate``, ``bundle``, ``coreset``, ``models``,
``data``. Thin shells over the library (torch is imported only when a command runs)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from ._app import app
from .console import console
from .console import fail as _fail
from .console import progress as _progress

data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthesise the default keywords, inspect splits.")
app.add_typer(data_app, name="data")
bundle_app = typer.Typer(no_args_is_help=True, help="Signed bundles: signing keys, verification.")
app.add_typer(bundle_app, name="bundle")


def _table(*args: Any, **kwargs: Any) -> Any:
    from rich.table import Table

    return Table(*args, **kwargs)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _keywords(text: Optional[str]) -> Optional[tuple[str, ...]]:
    if text is None:
        return None
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if not words:
        _fail("--keywords is empty")
    return words


_DATASET_HELP = (
    "synthetic (embedded default) | gsc | us8k | esc50 | esc10; without --data-dir a real dataset is "
    "downloaded into the cache on first use"
)


def _load_dataset(
    dataset: str,
    data_dir: Optional[Path],
    keywords: Optional[tuple[str, ...]],
    per_class: int,
    seed: int,
    on_event: Any,
) -> Any:
    from edgekws.datasets import load_dataset

    kwargs: dict[str, Any] = {}
    if dataset == "synthetic":  # with a "_nothing_" class: other words, noise and silence, never a detection
        kwargs = {
            "per_class": per_class,
            "seed": seed,
            "nothing": per_class,
            "progress": lambda d, t: on_event({"event": "synthesise", "done": d, "total": t}),
        }
    from edgekws.datasets.download import DownloadError

    try:  # a real dataset without --data-dir comes from the cache, downloaded there on first use
        return load_dataset(dataset, data_dir, keywords=keywords, download=True, download_progress=on_event, **kwargs)
    except (FileNotFoundError, ValueError, DownloadError) as exc:
        _fail(str(exc))


def _print_metrics(m: dict[str, Any]) -> None:
    t = _table(title=f"{m['model']} on {m['dataset']}")
    t.add_column("split")
    t.add_column("accuracy", justify="right")
    t.add_row("validation (best epoch)", f"{100 * m['val_accuracy']:.2f}%")
    if m.get("test"):
        t.add_row(f"test ({m['test']['n']} clips)", f"{100 * m['test']['accuracy']:.2f}%")
    for k, v in m.items():
        if k.startswith("test_") and isinstance(v, dict):
            t.add_row(f"{k[5:]} ({v['n']} clips)", f"{100 * v['accuracy']:.2f}%")
    console().print(t)


@app.command()
def train(
    dataset: str = typer.Option("synthetic", help=_DATASET_HELP),
    data_dir: Optional[Path] = typer.Option(None, help="dataset folder (real datasets)"),
    model: str = typer.Option("cnn4", help="model name (see `edgekws models`)"),
    keywords: Optional[str] = typer.Option(None, help="comma-separated keywords (speech datasets)"),
    per_class: int = typer.Option(300, help="synthetic clips per keyword"),
    epochs: int = typer.Option(60, min=1),
    batch_size: int = typer.Option(64, min=1),
    lr: float = typer.Option(3e-3, min=0.0),
    loss: str = typer.Option("ce", help="ce | mse"),
    patience: int = typer.Option(0, min=0, help="early-stop patience in epochs (0: run all epochs, keep best)"),
    test_fold: Optional[str] = typer.Option(None, help="test fold for cross-validated datasets"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    out: Path = typer.Option(Path("runs/train"), help="output folder"),
    resume: bool = typer.Option(False, help="continue from out/checkpoints/last.pt"),
) -> None:
    """Train a model on a dataset's train split; writes model.pt, metrics.json and curves.png."""
    from edgekws.features import FeatureConfig
    from edgekws.server.pipeline import train_on_dataset
    from edgekws.server.train import TrainConfig

    cfg = TrainConfig(
        model=model, epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, patience=patience, seed=seed, device=device
    )
    with _progress() as on_event:
        ds = _load_dataset(dataset, data_dir, _keywords(keywords), per_class, seed, on_event)
        try:
            metrics = train_on_dataset(
                ds,
                FeatureConfig(clip_seconds=ds.clip_seconds),
                cfg,
                out,
                test_fold=test_fold,
                resume=resume,
                progress=on_event,
            )
        except ValueError as exc:
            _fail(str(exc))
    _print_metrics(metrics)
    console().print(f"wrote {out}/model.pt, metrics.json, curves.png")


@app.command()
def distill(
    target: str = typer.Option("rpi", help="rpi | phone | mcu: picks the model and feature profile"),
    dataset: str = typer.Option("synthetic", help=_DATASET_HELP),
    data_dir: Optional[Path] = typer.Option(None, help="dataset folder (real datasets)"),
    keywords: Optional[str] = typer.Option(None, help='custom keywords, e.g. "lights on,lights off"'),
    per_class: int = typer.Option(50, min=1, help="coreset samples per class"),
    budget: str = typer.Option(
        "fast",
        help="fast (<= 10 min on 2 CPU cores) | standard (CPU server) | best (GPU "
        "server): sets the options below unless given",
    ),
    labels: str = typer.Option(
        "teacher",
        help="teacher: a net trained on all training clips labels the coreset "
        "and every view trained on it | rfad: RFAD's learned KRR labels",
    ),
    steps: Optional[int] = typer.Option(
        None, min=0, help="distillation steps (upper bound; early stopping may end sooner)"
    ),
    n_models: Optional[int] = typer.Option(None, min=1, help="random nets per step"),
    pool_size: Optional[int] = typer.Option(None, min=1, help="random nets whose real-side features are computed once"),
    width: Optional[int] = typer.Option(None, min=1, help="channels of the random ConvNets"),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Adam learning rate of the coreset (inputs have unit std)"),
    synthetic_per_class: int = typer.Option(300, min=4, help="synthetic clips generated per keyword"),
    epochs: Optional[int] = typer.Option(
        None, min=1, help="most epochs of the target model on the coreset (it stops when validation stalls)"
    ),
    teacher_epochs: Optional[int] = typer.Option(None, min=1, help="epochs of the teacher on all training clips"),
    test_fold: Optional[str] = typer.Option(None, help="test fold for cross-validated datasets"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    out: Optional[Path] = typer.Option(None, help="output folder (default runs/<target>)"),
    resume: bool = typer.Option(False, help="continue an interrupted run in --out"),
    publish: Optional[str] = typer.Option(None, "--publish", help="then publish the bundle to this registry URL"),
    channel: str = typer.Option("stable", "--channel", help="--publish: release channel"),
    backbone: Optional[str] = typer.Option(
        None,
        help="mfcc-cnn (MFCC CNN, RFAD coreset) | speech-embedding (frozen "
        "pretrained speech front end + small head); default: the target's",
    ),
    check_dataset: Optional[str] = typer.Option(
        None, help="then report the shipped graph's accuracy on this real labelled dataset (e.g. gsc)"
    ),
    check_dir: Optional[Path] = typer.Option(None, help="folder of --check-dataset"),
    streams: str = typer.Option(
        "30,20",
        help="speech-embedding backbone, synthetic keywords: how many synthetic "
        "streams train the head and how many (other voices) set its "
        "temperature and detector threshold, e.g. 30,20; 0,0 for none",
    ),
    stream_seconds: float = typer.Option(60.0, min=5.0, help="length of each synthetic stream"),
) -> None:
    """Distil a dataset (the embedded synthetic keywords by default) into a coreset and train the target's model on it."""
    from edgekws.targets import get_target

    from .speech import resolve_backbone, run_speech_distill

    try:
        tgt = get_target(target)
    except ValueError as exc:
        _fail(str(exc))
    rcfg, tcfg, teacher_epochs = _mfcc_distill_configs(  # checks --budget and --labels whatever the backbone
        tgt, budget, labels, per_class, seed, device, steps, n_models, pool_size, width, lr, epochs, teacher_epochs
    )
    n_train, n_val = _stream_counts(streams)
    out = out or Path("runs") / target
    chosen, why = resolve_backbone(backbone, tgt)
    if chosen == "speech-embedding":  # 1. the model: a head on the frozen speech front end ...
        run_speech_distill(
            tgt,
            dataset=dataset,
            data_dir=data_dir,
            keywords=_keywords(keywords),
            per_class=per_class,
            synthetic_per_class=synthetic_per_class,
            seed=seed,
            test_fold=test_fold,
            out=out,
            why=why,
            epochs=epochs,
            streams=(n_train, n_val, stream_seconds),
        )
    elif not _run_mfcc_distill(  # ... or the MFCC CNN on an RFAD coreset
        tgt,
        dataset,
        data_dir,
        keywords,
        synthetic_per_class,
        seed,
        test_fold,
        out,
        resume,
        rcfg,
        tcfg,
        labels,
        teacher_epochs,
        budget,
    ):
        return  # another rank under torchrun: rank 0 ships
    _ship(tgt.name, out, check_dataset, check_dir, publish, channel)  # 2. bundle, check, publish


def _stream_counts(text: str) -> tuple[int, int]:
    """``--streams``: how many synthetic streams train the speech head and how many choose its detector settings."""
    try:
        n_train, n_val = (int(v) for v in text.split(","))
        if n_train < 0 or n_val < 0:
            raise ValueError
    except ValueError:
        _fail(f"--streams takes two counts, training and validation streams, e.g. 30,20; got {text!r}")
    return n_train, n_val


def _mfcc_distill_configs(
    tgt: Any,
    budget: str,
    labels: str,
    per_class: int,
    seed: int,
    device: str,
    steps: Optional[int],
    n_models: Optional[int],
    pool_size: Optional[int],
    width: Optional[int],
    lr: Optional[float],
    epochs: Optional[int],
    teacher_epochs: Optional[int],
) -> tuple[Any, Any, int]:
    """RFAD and training configurations from the budget, with the options given on the command line on top."""
    from edgekws.server.budgets import get_budget
    from edgekws.server.evaluate import coreset_train_config
    from edgekws.server.rfad import LABEL_KINDS, RFADConfig
    from edgekws.server.teacher import distillation_train_config

    try:
        b = get_budget(budget)
        if labels not in LABEL_KINDS:
            raise ValueError(f"--labels must be one of {', '.join(LABEL_KINDS)}, got {labels!r}")
        options = {
            "steps": steps,
            "n_models": n_models,
            "pool_size": pool_size,
            "width": width,
            "lr": lr,
            "label_lr": lr,
        }
        r = {**b.rfad, **{k: v for k, v in options.items() if v is not None}}
        r["pool_size"] = max(r["pool_size"], r["n_models"])
        rcfg = RFADConfig(per_class=per_class, seed=seed, device=device, **r)
    except ValueError as exc:
        _fail(str(exc))
    if labels == "teacher":
        tcfg = distillation_train_config(
            tgt.model,
            epochs=epochs or b.student_max_epochs,
            patience=b.student_patience,
            seed=seed,
            model_kwargs=dict(tgt.model_kwargs),
            device=device,
        )
    else:
        tcfg = coreset_train_config(
            tgt.model, loss="mse", epochs=epochs or 30, seed=seed, model_kwargs=dict(tgt.model_kwargs), device=device
        )
    return rcfg, tcfg, teacher_epochs or b.teacher_epochs


def _run_mfcc_distill(
    tgt: Any,
    dataset: str,
    data_dir: Optional[Path],
    keywords: Optional[str],
    synthetic_per_class: int,
    seed: int,
    test_fold: Optional[str],
    out: Path,
    resume: bool,
    rcfg: Any,
    tcfg: Any,
    labels: str,
    teacher_epochs: int,
    budget: str,
) -> bool:
    """Dataset -> RFAD coreset -> the target's net (``distill_job``), with a summary; False on a rank that is not
    the main one (under torchrun every rank distils, rank 0 trains and writes)."""
    from edgekws.server.distributed import init_from_env
    from edgekws.server.pipeline import distill_job

    comm = init_from_env()
    t0 = time.perf_counter()
    with _progress(enabled=comm.is_main) as on_event:
        ds = _load_dataset(dataset, data_dir, _keywords(keywords), synthetic_per_class, seed, on_event)
        try:
            metrics = distill_job(
                ds,
                tgt.features.replace(clip_seconds=ds.clip_seconds),
                rcfg,
                tcfg,
                out,
                labels=labels,
                teacher_epochs=teacher_epochs,
                test_fold=test_fold,
                resume=resume,
                progress=on_event,
            )
        except ValueError as exc:
            _fail(str(exc))
    if not comm.is_main:
        return False
    _print_metrics(metrics)
    c = metrics["coreset"]
    console().print(
        f"coreset: {c['size']} samples ({c['per_class']}/class, {c['labels']} labels), KRR val accuracy "
        f"{100 * (c['krr_val_accuracy_init'] or 0):.1f}% -> {100 * (c['krr_val_accuracy'] or 0):.1f}%"
    )
    if c.get("net_test"):
        console().print(
            f"net trained on the coreset alone: {100 * c['net_test']['accuracy']:.2f}% on the test "
            f"split ({c['net_epochs_run']} epochs)"
        )
    console().print(f"shipped: the {metrics['shipped']['net']} net ({metrics['shipped']['why']}); budget {budget}")
    console().print(
        f"target {tgt.name}: {tgt.model}; wrote {out}/coreset.npz, model.pt, metrics.json in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return True


def _ship(
    target: str,
    out: Path,
    check_dataset: Optional[str],
    check_dir: Optional[Path],
    publish: Optional[str],
    channel: str,
) -> None:
    """The end of ``distill``: a signed bundle, its accuracy on a real set when asked, publishing when asked."""
    from .speech import report_check

    _export_and_sign(out / "model.pt", target, out / "bundle", coreset=out / "coreset.npz", key=None)
    if check_dataset:
        report_check(out / "bundle", check_dataset, check_dir, out / "check.json")
    if publish:
        from .ship import publish_bundle

        publish_bundle(out / "bundle", publish, channel, target=target)


def _export_and_sign(
    checkpoint: Path,
    target: str,
    out: Path,
    *,
    coreset: Optional[Path],
    key: Optional[Path],
    calibration: Any = None,
    evaluation: Any = None,
) -> None:
    """Export a checkpoint into a signed, verified bundle (+ .tar); the signing key is created on first use."""
    from edgekws.bundle import ensure_signing_key
    from edgekws.export import export_bundle

    if key is None:
        key, created = ensure_signing_key()
        if created:
            console().print(
                f"created a signing key: {key} (public half: {key.with_name('signing.pub')}); "
                "pin that public key on devices"
            )
    try:
        with _progress() as on_event:
            result = export_bundle(
                checkpoint,
                target,
                out,
                private_key=key,
                coreset=coreset,
                calibration=calibration,
                evaluation=evaluation,
                progress=on_event,
            )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    for note in result.notes:
        console().print(f"[yellow]note:[/] {_escape(note)}")
    t = _table(title=f"bundle {out} (target {target})")
    for col in ("graph", "KB", "max |diff| vs torch", "top-1 agreement", "accuracy"):
        t.add_column(col, justify="right")
    for name, p in result.parity.items():
        agree = f"{100 * p['top1_agreement']:.1f}%" if "top1_agreement" in p else f"cos {p.get('cosine', 1):.4f}"
        acc = f"{100 * p['accuracy']:.1f}%" if "accuracy" in p else "–"
        t.add_row(name, f"{p['size_bytes'] / 1024:.1f}", f"{p['max_abs_diff']:.2g}", agree, acc)
    console().print(t)
    console().print(
        f"verified: signature (key {result.manifest.key_id[:16]}…) and {len(result.manifest.files)} file "
        f"hashes; wrote {result.bundle}/ and {result.tar}"
    )


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., help="model.pt written by `edgekws train` or `edgekws distill`"),
    target: str = typer.Option("rpi", help="rpi | phone | mcu: formats, precisions, quantization, budgets"),
    out: Path = typer.Option(..., help="bundle folder to write (a .tar of it is written next to it)"),
    coreset: Optional[Path] = typer.Option(None, help="coreset.npz to ship; also calibrates int8 graphs"),
    dataset: Optional[str] = typer.Option(
        None, help="real dataset for int8 calibration (train split) and parity (test split), e.g. gsc"
    ),
    data_dir: Optional[Path] = typer.Option(None, help="folder of --dataset"),
    key: Optional[Path] = typer.Option(
        None, help="ed25519 private key (default: $EDGEKWS_HOME/keys/signing.key, created on first use)"
    ),
) -> None:
    """Export a trained checkpoint to ONNX/TFLite graphs (fp32 + int8) and a signed, verified bundle."""
    from edgekws.export.pipeline import real_features
    from edgekws.server.train import load_checkpoint

    calibration = evaluation = None
    if dataset:
        try:
            _, fcfg, classes, _ = load_checkpoint(checkpoint)
            calibration = real_features(dataset, data_dir, classes, fcfg, "train")[0]
            evaluation = real_features(dataset, data_dir, classes, fcfg, "test")
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
    _export_and_sign(checkpoint, target, out, coreset=coreset, key=key, calibration=calibration, evaluation=evaluation)


@bundle_app.command("keygen")
def bundle_keygen(
    out: Optional[Path] = typer.Option(None, help="key folder (default $EDGEKWS_HOME/keys)"),
    force: bool = typer.Option(False, help="replace an existing key"),
) -> None:
    """Create an ed25519 signing key pair: signing.key (private, mode 0600) and signing.pub (pin it on devices)."""
    from edgekws.bundle import generate_keypair, key_id, load_public_key

    try:
        priv, pub = generate_keypair(out, overwrite=force)
    except FileExistsError as exc:
        _fail(str(exc))
    console().print(f"private key: {priv}\npublic key:  {pub}\nkey id: {key_id(load_public_key(pub))}")


@bundle_app.command("verify")
def bundle_verify(
    path: Path = typer.Argument(..., help="bundle folder or .tar"),
    public_key: Optional[Path] = typer.Option(None, help="trusted public key (default $EDGEKWS_HOME/keys/signing.pub)"),
    embedded_key: bool = typer.Option(
        False, help="check integrity against the key inside the manifest only (does not prove who signed)"
    ),
) -> None:
    """Check a bundle's signature, format version and every file's size and sha256; say exactly what is wrong."""
    from edgekws.bundle import BundleError, describe, verify_bundle

    try:
        manifest = verify_bundle(path, public_key, trust_embedded_key=embedded_key)
    except BundleError as exc:
        console().print(f"[bold red]INVALID:[/] {_escape(str(exc))}")
        raise typer.Exit(1) from None
    describe(manifest, lambda line: typer.echo(line))
    typer.echo(f"OK: {path} is a valid bundle")


@app.command()
def evaluate(
    coreset: Path = typer.Option(..., help="coreset.npz written by `edgekws distill`"),
    model: str = typer.Option("cnn4", help="finite net to train on it"),
    dataset: str = typer.Option("synthetic", help="the dataset the coreset was distilled from"),
    data_dir: Optional[Path] = typer.Option(None, help="dataset folder (real datasets)"),
    keywords: Optional[str] = typer.Option(None),
    synthetic_per_class: int = typer.Option(300, min=4),
    test_fold: Optional[str] = typer.Option(None),
    seeds: str = typer.Option("0,1,2", help="comma-separated training seeds"),
    epochs: int = typer.Option(60, min=1),
    full_data_epochs: int = typer.Option(30, min=0, help="also train on the full training split (0: skip)"),
    seed: int = typer.Option(0, help="seed of the synthetic dataset (as given to distill)"),
    device: str = typer.Option("auto"),
    out: Optional[Path] = typer.Option(None, help="write the result as JSON here"),
) -> None:
    """Train a net on the coreset and on random real clips of the same size (MSE and CE); test accuracy, mean ± std."""
    from edgekws.fileio import atomic_write_json
    from edgekws.server.data import prepare
    from edgekws.server.evaluate import evaluate_coreset
    from edgekws.server.rfad import Coreset

    try:
        core = Coreset.load(coreset)
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    with _progress() as on_event:
        speech = dataset in ("synthetic", "gsc")
        kws = (_keywords(keywords) or tuple(core.class_names)) if speech else None
        ds = _load_dataset(dataset, data_dir, kws, synthetic_per_class, seed, on_event)
        if core.source_fingerprint and ds.fingerprint() != core.source_fingerprint:
            _fail(
                f"{coreset} was distilled from another dataset (fingerprint {core.source_fingerprint}, "
                f"this one is {ds.fingerprint()}); pass the same --dataset/--data-dir/--keywords/--seed"
            )
        try:
            prep = prepare(ds, core.feature_config.replace(mean=None, std=None), test_fold=test_fold)
            result = evaluate_coreset(
                core,
                prep,
                model=model,
                seeds=seed_list,
                epochs=epochs,
                full_data_epochs=full_data_epochs,
                device=device,
            )
        except ValueError as exc:
            _fail(str(exc))
    t = _table(title=f"{model} trained on {result['per_class']}/class, tested on {result['test_n']} clips")
    t.add_column("training set")
    t.add_column("test accuracy %", justify="right")
    for k in ("coreset", "random_real_mse", "random_real_ce", "full_data"):
        if k in result:
            r = result[k]
            t.add_row(k.replace("_", " "), f"{r['mean']:.2f} ± {r['std']:.2f}")
    console().print(t)
    console().print(
        f"gain over the stronger random baseline ({result['stronger_random_baseline']}): "
        f"{result['gain_over_random_points']:+.2f} points"
    )
    if "ratio_to_full_data" in result:
        console().print(f"coreset / full data: {result['ratio_to_full_data']:.3f}")
    if out:
        atomic_write_json(out, result)


coreset_app = typer.Typer(no_args_is_help=True, help="Look at and listen to a coreset.")
app.add_typer(coreset_app, name="coreset")


@coreset_app.command("show")
def coreset_show(
    path: Path = typer.Argument(..., help="coreset.npz"),
    png: Optional[Path] = typer.Option(None, help="write a picture of the distilled MFCC here"),
    per_class: int = typer.Option(4, min=1, help="samples per class in the picture"),
) -> None:
    """Summarise a coreset (classes, size, label entropy, distillation metrics); optionally draw it."""
    from edgekws.server.rfad import Coreset

    try:
        core = Coreset.load(path)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    import numpy as np

    counts = np.bincount(core.hard_labels, minlength=core.n_classes)
    t = _table(title=f"{path}: {len(core.x)} samples, features {core.x.shape[1]}x{core.x.shape[2]}")
    for col in ("class", "samples", "mean top label", "changed class"):
        t.add_column(col, justify="right" if col != "class" else "left")
    for c, name in enumerate(core.class_names):
        rows = core.hard_labels == c
        top = float(core.y[rows].max(1).mean()) if rows.any() else float("nan")
        moved = int(np.sum(core.init_labels[rows] != c)) if core.init_labels is not None else 0
        t.add_row(name, str(counts[c]), f"{top:.2f}", str(moved))
    console().print(t)
    m = core.metrics
    if m.get("val_accuracy") is not None:
        console().print(
            f"KRR validation accuracy {100 * (m.get('init_val_accuracy') or 0):.1f}% -> "
            f"{100 * m['val_accuracy']:.1f}% after {m.get('steps')} steps (best at {m.get('best_step')})"
        )
    if png:
        from edgekws.plots import plot_coreset

        plot_coreset(
            core.x,
            core.hard_labels,
            core.class_names,
            png,
            classes=range(core.n_classes),
            per_class=per_class,
            title=f"distilled MFCC: {path.name}",
        )
        console().print(f"wrote {png}")


@coreset_app.command("listen")
def coreset_listen(
    path: Path = typer.Argument(..., help="coreset.npz"),
    out: Path = typer.Option(..., help="folder for the WAV files"),
    classes: Optional[str] = typer.Option(None, help="comma-separated class names (default: all)"),
    per_class: int = typer.Option(2, min=1, help="samples per class"),
    iterations: int = typer.Option(48, min=1, help="Griffin-Lim iterations"),
) -> None:
    """Turn coreset samples back into audio (MFCC inversion + Griffin-Lim) to hear what was distilled."""
    from edgekws.audio import save_wav
    from edgekws.invert import mfcc_to_audio
    from edgekws.server.rfad import Coreset

    try:
        core = Coreset.load(path)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    names = [c.strip() for c in classes.split(",")] if classes else list(core.class_names)
    unknown = [n for n in names if n not in core.class_names]
    if unknown:
        _fail(f"unknown classes {unknown}; the coreset has {list(core.class_names)}")
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name in names:
        c = core.class_names.index(name)
        for k, i in enumerate(np.flatnonzero(core.hard_labels == c)[:per_class]):
            y = mfcc_to_audio(core.x[i], core.feature_config, n_iter=iterations, seed=int(i))
            fname = "".join(ch if ch.isalnum() else "_" for ch in name)
            save_wav(out / f"{fname}_{k}.wav", y, core.feature_config.sample_rate)
            written += 1
    console().print(f"wrote {written} WAV files to {out}")


@app.command()
def models(n_classes: int = typer.Option(10), n_mfcc: int = typer.Option(40), frames: int = typer.Option(48)) -> None:
    """Parameter counts, MACs and sizes of the registered models for an input shape."""
    from edgekws.models import MODELS
    from edgekws.models.profile import model_summary

    t = _table(title=f"models for {n_mfcc}x{frames} MFCC, {n_classes} classes")
    for col in ("model", "params", "MACs", "fp32 KB", "int8 KB"):
        t.add_column(col, justify="right")
    for name in MODELS:
        s = model_summary(name, n_classes, (n_mfcc, frames))
        t.add_row(name, f"{s['params']:,}", f"{s['macs']:,}", f"{s['fp32_kb']:.0f}", f"{s['int8_kb']:.0f}")
    console().print(t)


@data_app.command("synth")
def data_synth(
    keywords: Optional[str] = typer.Option(None, help="comma-separated keywords (default: the 10 paper keywords)"),
    per_class: int = typer.Option(300, min=4),
    seed: int = typer.Option(0),
) -> None:
    """Synthesise (and cache) the spoken-keyword dataset; prints its size and voice variety."""
    from edgekws.datasets.synthetic import PAPER_KEYWORDS, describe_variants, synthetic_keywords

    t0 = time.perf_counter()
    with _progress() as on_event:
        ds = synthetic_keywords(
            _keywords(keywords) or PAPER_KEYWORDS,
            per_class=per_class,
            seed=seed,
            progress=lambda d, t: on_event({"event": "synthesise", "done": d, "total": t}),
        )
    info = {
        "clips": len(ds),
        "classes": list(ds.class_names),
        "voices": len(set(ds.groups.tolist())),
        "variants": describe_variants(),
        "seconds": round(time.perf_counter() - t0, 2),
        "fingerprint": ds.fingerprint(),
    }
    typer.echo(json.dumps(info, indent=2, default=str))


@data_app.command("info")
def data_info(
    dataset: str = typer.Option(..., help=_DATASET_HELP),
    data_dir: Optional[Path] = typer.Option(None),
    keywords: Optional[str] = typer.Option(None),
    per_class: int = typer.Option(300),
    seed: int = typer.Option(0),
) -> None:
    """Classes, clip counts per fold and groups of a dataset."""
    import numpy as np

    with _progress() as on_event:
        ds = _load_dataset(dataset, data_dir, _keywords(keywords), per_class, seed, on_event)
    folds = sorted(set(ds.folds.tolist()))
    t = _table(
        title=f"{ds.name}: {len(ds)} clips, {len(set(ds.groups.tolist()))} groups, {ds.sample_rate} Hz, {ds.clip_seconds} s"
    )
    t.add_column("class")
    for f in folds:
        t.add_column(f, justify="right")
    for c, name in enumerate(ds.class_names):
        t.add_row(name, *[str(int(np.sum((ds.labels == c) & (ds.folds == f)))) for f in folds])
    console().print(t)


@data_app.command("download")
def data_download(
    dataset: str = typer.Option(..., help="gsc | esc50 | esc10 | us8k"),
    keep_archive: bool = typer.Option(False, "--keep-archive", help="keep the downloaded archive after unpacking"),
) -> None:
    """Download a public dataset into the cache (resumable; checked against its published checksum)."""
    from edgekws.datasets.download import DownloadError, describe, fetch_dataset

    try:
        info = describe(dataset)
    except KeyError:
        _fail(f"no download for {dataset!r}; choose gsc, esc50, esc10 or us8k")
    console().print(f"{info['title']} from {info['url']}\nlicence: {info['licence']} ({info['homepage']})")
    try:
        with _progress() as on_event:
            root = fetch_dataset(dataset, progress=on_event, keep_archive=keep_archive)
    except DownloadError as exc:
        _fail(str(exc))
    console().print(f"[green]ready:[/] {root}")
