"""Shipping commands: ``edgekws server serve``, ``edgekws deploy`` and ``edgekws device update|rollback|installed``.

Thin shells over :mod:`edgekws.server.registry` (server side) and :mod:`edgekws.device.update` (device side,
torch-free). Imports are lazy so a device install never loads the server's dependencies.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .console import console
from .console import fail as _fail

server_app = typer.Typer(no_args_is_help=True, help="Server side: the bundle registry devices update from.")

_KEY_HELP = "pinned signer public key (PEM file or key folder); default $EDGEKWS_HOME/keys/signing.pub"
_ROOT_HELP = "install root (versions/, current, previous); default $EDGEKWS_DEVICE_HOME/bundles"
_STATE_HELP = "device state root (local fine-tuned heads); default $EDGEKWS_DEVICE_HOME"
_POINTER_KEY_HELP = (
    "signing key (the bundles' private key, PEM): release with a signed channel pointer, which devices "
    "check for rollback, replay and expiry"
)
_VALID_DAYS_HELP = "days the signed pointer stays valid; re-issue it (promote the same id again) before then"


def register(app: typer.Typer) -> None:
    """Add ``server``, ``deploy`` and the updater's commands (``device update|rollback|installed``)."""
    from .device import device_app

    app.add_typer(server_app, name="server")
    app.command("deploy")(deploy)
    device_app.command("update")(device_update)
    device_app.command("rollback")(device_rollback)
    device_app.command("installed")(device_installed)


# Server side -------------------------------------------------------------------------------------------------


@server_app.command("serve")
def serve_cmd(
    root: Path = typer.Option(Path("registry"), "--root", help="storage folder (bundles, SQLite index)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8710, "--port", min=0, max=65535, help="port (0: any free port)"),
    token_file: Optional[Path] = typer.Option(
        None,
        "--token-file",
        help="publish token file (default: "
        "$EDGEKWS_REGISTRY_TOKEN, else $EDGEKWS_HOME/registry.token, "
        "created on first use)",
    ),
    trusted_key: Optional[list[Path]] = typer.Option(
        None, "--trusted-key", help="public key(s) uploads must be signed by; default $EDGEKWS_HOME/keys/signing.pub"
    ),
    channels: str = typer.Option("stable,beta", "--channels", help="comma-separated channel names"),
    max_mb: float = typer.Option(128.0, "--max-mb", min=0.01, help="largest accepted bundle archive, MiB"),
    anonymous_checkins: bool = typer.Option(
        False,
        "--allow-anonymous-checkins",
        help="accept check-ins from devices that were not enrolled (anyone who "
        "reaches the server can then report any unenrolled device)",
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level (info logs every request)"),
    tls: bool = typer.Option(
        False,
        "--tls",
        help="HTTPS with a self-signed certificate made on first run (a phone needs HTTPS for the microphone on /demo)",
    ),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="certificate chain (PEM) to serve HTTPS with"),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="its private key (PEM)"),
) -> None:
    """Serve the bundle registry: publish (token), list, show, download (ETag/Range), channels, device check-ins,
    and /demo/<target>: a channel's bundle running in the browser."""
    from edgekws.bundle import default_key_dir
    from edgekws.server.registry import RegistryConfig, resolve_server_token, serve

    keys = list(trusted_key or [default_key_dir() / "signing.pub"])
    for k in keys:
        if not Path(k).exists():
            _fail(f"trusted key {k} not found; pass --trusted-key or create one with `edgekws bundle keygen`")
    try:
        token, source = resolve_server_token(token_file)
        cfg = RegistryConfig(
            root=root,
            tokens=(token,),
            trusted_keys=tuple(keys),
            channels=tuple(c.strip() for c in channels.split(",") if c.strip()),
            max_bundle_bytes=int(max_mb * (1 << 20)),
            anonymous_checkins=anonymous_checkins,
        )
    except (OSError, ValueError) as exc:
        _fail(str(exc))

    from edgekws.server.webdemo import DemoConfig

    from .demo import print_tls_help, resolve_tls

    served_tls, tls_files = resolve_tls(host, tls, tls_cert, tls_key)
    if tls_files is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, demo=DemoConfig(ca_cert=tls_files.ca))

    def ready(url: str) -> None:
        console().print(
            f"bundle registry on {url}  (root {root}, publish token from {source}; Ctrl-C stops); "
            f"try a release in a browser: {url}/demo/<target>?channel=stable"
        )
        if tls_files is not None:
            print_tls_help(tls_files, "/demo/<target>", int(url.rsplit(":", 1)[1]), host)
        sys.stdout.write(f"{url}\n")
        sys.stdout.flush()

    try:
        serve(cfg, host=host, port=port, log_level=log_level, on_ready=ready, tls=served_tls)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port} ({exc})")


@server_app.command("promote")
def promote_cmd(
    bundle_id: str = typer.Argument(..., help="id of a stored bundle (see `deploy --json` or GET /v1/bundles)"),
    server: str = typer.Option(..., "--server", help="registry URL"),
    target: str = typer.Option("rpi", "--target"),
    channel: str = typer.Option("stable", "--channel"),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="EDGEKWS_REGISTRY_TOKEN", help="publish token (default $EDGEKWS_HOME/registry.token)"
    ),
    key: Optional[Path] = typer.Option(None, "--key", help=_POINTER_KEY_HELP),
    valid_days: float = typer.Option(30.0, "--valid-days", min=0.001, max=3660, help=_VALID_DAYS_HELP),
) -> None:
    """Point a channel at a stored bundle: promote beta to stable, or roll a channel back.

    Devices follow a newer bundle; they go back to an older one only when the pointer is signed (--key)."""
    from edgekws.server.registry import RegistryError, set_channel

    try:
        info = set_channel(server, target, channel, bundle_id, token, pointer_key=key, valid_days=valid_days)
    except (RegistryError, FileNotFoundError, ValueError, TypeError) as exc:
        _fail(str(exc))
    signed = f"; signed pointer valid {valid_days:g} days" if key else ""
    console().print(f"{target}/{channel} now serves {info['id']} (created {info['created_at']}{signed})")


@server_app.command("enrol")
def enrol_cmd(
    device_id: str = typer.Argument(..., help="the device's name in check-ins (its --device-id)"),
    server: str = typer.Option(..., "--server", help="registry URL"),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="EDGEKWS_REGISTRY_TOKEN", help="publish token (default $EDGEKWS_HOME/registry.token)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Give a device its own check-in token (shown once; enrolling again replaces it)."""
    from edgekws.server.registry import RegistryError, enrol_device

    try:
        info = enrol_device(server, device_id, token)
    except RegistryError as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    sys.stdout.write(info["token"] + "\n")
    console().print(
        f"enrolled {device_id}: on the device, write the token above to <root>/device_token (mode 600) "
        f"or pass it with --device-token-file, and update with --device-id {device_id}"
    )


@server_app.command("devices")
def devices_cmd(
    server: str = typer.Option(..., "--server", help="registry URL"),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="EDGEKWS_REGISTRY_TOKEN", help="publish token (default $EDGEKWS_HOME/registry.token)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Which device runs which bundle: the last check-in of every device."""
    from edgekws.server.registry import RegistryError, list_devices

    try:
        devs = list_devices(server, token)
    except RegistryError as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(devs) + "\n")
        return
    for d in devs:
        sys.stdout.write(
            f"{d['device_id']:24s} {d['target']}/{d['channel']:8s} {d['bundle'] or '-':16s} "
            f"{d['status']:12s} {d['at']}  {d['detail']}\n"
        )
    if not devs:
        sys.stdout.write("no device has checked in\n")


def publish_bundle(
    bundle: Path,
    server: str,
    channel: str = "stable",
    token: Optional[str] = None,
    target: Optional[str] = None,
    key: Optional[Path] = None,
    valid_days: float = 30.0,
) -> dict:
    """Publish and print one line; exits with a clear message on refusal (shared by ``deploy`` and ``distill``)."""
    from edgekws.bundle import BundleError
    from edgekws.server.registry import RegistryError, publish

    try:
        info = publish(bundle, server, channel, token, target=target, pointer_key=key, valid_days=valid_days)
    except (RegistryError, BundleError, FileNotFoundError, ValueError, TypeError) as exc:
        _fail(str(exc))
    verb = "published" if info.get("created") else "already stored; released"
    console().print(
        f"{verb} bundle {info['id']} (target {info['target']}, {info['size'] / 1024:.1f} KB, sha256 "
        f"{info['sha256'][:16]}…) on {server} channel {channel}"
    )
    return info


def deploy(
    bundle: Path = typer.Option(..., "--bundle", "-b", help="bundle folder or .tar"),
    server: str = typer.Option(..., "--server", help="registry URL, e.g. http://127.0.0.1:8710"),
    channel: str = typer.Option("stable", "--channel", help="release channel (stable, beta, …)"),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="EDGEKWS_REGISTRY_TOKEN", help="publish token (default $EDGEKWS_HOME/registry.token)"
    ),
    target: Optional[str] = typer.Option(None, "--target", help="refuse unless the bundle is for this target"),
    key: Optional[Path] = typer.Option(None, "--key", help=_POINTER_KEY_HELP),
    valid_days: float = typer.Option(30.0, "--valid-days", min=0.001, max=3660, help=_VALID_DAYS_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the registry's answer as JSON"),
) -> None:
    """Publish a signed bundle to a registry channel; devices on that target and channel pick it up."""
    info = publish_bundle(bundle, server, channel, token, target, key, valid_days)
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")


# Device side -------------------------------------------------------------------------------------------------


def _progress_printer(quiet: bool):
    state = {"last": -1}

    def on_event(ev: dict) -> None:
        if quiet:
            return
        kind = ev.get("event")
        if kind == "check":
            cur = ev.get("current") or "nothing"
            console().print(f"newest release {ev['bundle']} ({ev['size'] / 1024:.1f} KB); installed: {cur}")
        elif kind == "download":
            pct = int(100 * ev["done"] / max(1, ev["total"]))
            if pct // 25 != state["last"]:
                state["last"] = pct // 25
                extra = f" (resumed at byte {ev['resumed_from']})" if ev.get("resumed_from") else ""
                console().print(f"  download {pct:3d} %{extra}")
        elif kind in ("verified", "smoke", "switched"):
            console().print(f"  {kind}")
        elif kind == "state":
            console().print(f"  local fine-tuned state: {ev['local_state']}")

    return on_event


def device_update(
    server: str = typer.Option(..., "--server", help="registry URL"),
    target: str = typer.Option("rpi", "--target", help="this device's target"),
    channel: str = typer.Option("stable", "--channel"),
    root: Optional[Path] = typer.Option(None, "--root", help=_ROOT_HELP),
    public_key: Optional[Path] = typer.Option(None, "--public-key", help=_KEY_HELP),
    state: Optional[Path] = typer.Option(None, "--state", help=_STATE_HELP),
    device_id: Optional[str] = typer.Option(None, "--device-id", help="name in check-ins (default: made once)"),
    fmt: Optional[str] = typer.Option(
        None,
        "--format",
        help="graph the smoke test runs, onnx or tflite (default: the bundle's recommendation, as listen runs it)",
    ),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 or int8 (default: as recommended)"),
    no_checkin: bool = typer.Option(False, "--no-checkin", help="do not report to the registry"),
    device_token_file: Optional[Path] = typer.Option(
        None,
        "--device-token-file",
        help="this device's check-in token (from `edgekws server enrol`); default <root>/device_token",
    ),
    retry: bool = typer.Option(False, "--retry", help="try again a bundle that was refused here before"),
    allow_downgrade: bool = typer.Option(
        False,
        "--allow-downgrade",
        help="install the channel's bundle even when it is older than the one in "
        "use (a person's decision; otherwise refused)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Install the newest bundle for this target and channel: resume, verify, smoke-test, switch atomically."""
    from edgekws.device.update import UpdateConfig, UpdateError, update

    try:
        dev_token = None
        if device_token_file is not None:
            if not device_token_file.is_file():
                raise FileNotFoundError(f"device token file not found: {device_token_file}")
            dev_token = device_token_file.read_text().strip() or None
        cfg = UpdateConfig(
            server=server,
            target=target,
            channel=channel,
            root=root,
            public_key=public_key,
            state_root=state,
            device_id=device_id,
            fmt=fmt,
            precision=precision,
            checkin=not no_checkin,
            retry_refused=retry,
            device_token=dev_token,
            allow_downgrade=allow_downgrade,
        )
        res = update(cfg, _progress_printer(as_json))
    except (UpdateError, ValueError, FileNotFoundError, TypeError) as exc:
        _fail(f"{exc} (the installed bundle stays in use)")
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
        return
    if res.status == "up-to-date":
        console().print(f"up to date: {res.bundle}")
        return
    got = f"{res.bytes_downloaded / 1024:.1f} KB downloaded" + (
        f", resumed at byte {res.resumed_from}" if res.resumed_from else ""
    )
    console().print(
        f"installed {res.bundle} (was {res.previous or 'nothing'}); {got}; smoke test "
        f"{res.smoke.get('seconds', 0) * 1000:.0f} ms; local state {res.local_state}; check-in "
        f"{res.checkin}; {res.seconds:.2f} s"
    )


def device_rollback(
    root: Optional[Path] = typer.Option(None, "--root", help=_ROOT_HELP),
    to: Optional[str] = typer.Option(None, "--to", help="installed bundle id (default: the previous one)"),
    public_key: Optional[Path] = typer.Option(None, "--public-key", help=_KEY_HELP),
    state: Optional[Path] = typer.Option(None, "--state", help=_STATE_HELP),
    server: Optional[str] = typer.Option(None, "--server", help="registry to report the rollback to"),
    target: str = typer.Option("rpi", "--target", help="(with --server) this device's target"),
    channel: str = typer.Option("stable", "--channel", help="(with --server) this device's channel"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Switch back to the previous installed bundle (verified and smoke-tested first)."""
    from edgekws.device.update import UpdateConfig, UpdateError, rollback

    try:
        report = UpdateConfig(server=server, target=target, channel=channel, root=root) if server else None
        res = rollback(root, public_key, to=to, state_root=state, checkin=report)
    except (UpdateError, ValueError, FileNotFoundError, TypeError) as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict()) + "\n")
        return
    console().print(f"rolled back to {res.bundle} (from {res.previous}); local state {res.local_state}")


def device_installed(
    root: Optional[Path] = typer.Option(None, "--root", help=_ROOT_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Installed bundles, the one in use (*) and the previous one (rollback target)."""
    from edgekws.device.update import status

    st = status(root)
    if as_json:
        sys.stdout.write(json.dumps(st) + "\n")
        return
    if not st["versions"]:
        sys.stdout.write(f"no bundle installed in {st['root']}\n")
        return
    for v in st["versions"]:
        mark = "*" if v["id"] == st["current"] else ("<" if v["id"] == st["previous"] else " ")
        sys.stdout.write(
            f"{mark} {v['id']}  target={v['target']}  model={v['model']}  "
            f"classes={len(v['classes'] or [])}  created={v['created_at']}\n"
        )
    if st["partial_downloads"]:
        sys.stdout.write(f"partial downloads (resumed by the next update): {', '.join(st['partial_downloads'])}\n")
