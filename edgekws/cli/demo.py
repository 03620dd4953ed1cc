"""``edgekws demo``: serve one local bundle as a page that runs it in a browser (a phone's included).

A thin shell over :mod:`edgekws.server.webdemo` (the page, its routes) and :mod:`edgekws.server.tls` (HTTPS for
a phone on the same network). The registry serves the same page for its channels (``edgekws server serve``,
``/demo/<target>?channel=stable``).
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Optional

import typer

from .console import console
from .console import fail as _fail
from .console import thresholds as _thresholds


def escape(text: str) -> str:
    from rich.markup import escape as esc

    return esc(text)


_KEY_HELP = "signer's public key (PEM file or key folder); default $EDGEKWS_HOME/keys/signing.pub"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_tls(host: str, tls: Optional[bool], cert: Optional[Path], key: Optional[Path]):
    """``(certfile, keyfile)`` or None, and the local TLS files when a self-signed certificate is used.

    Given files win; ``--tls`` makes (or reuses) the local CA's certificate; with neither, HTTPS is switched on
    by itself when the server listens beyond this machine, since a phone's browser needs it for the microphone."""
    if (cert is None) != (key is None):
        _fail("--tls-cert and --tls-key go together")
    if cert is not None and key is not None:
        for p in (cert, key):
            if not p.is_file():
                _fail(f"{p} not found")
        return (str(cert), str(key)), None
    if tls is False or (tls is None and _loopback(host)):
        return None, None
    from edgekws.server.tls import ensure_local_tls

    try:
        files = ensure_local_tls([host])
    except (OSError, ValueError) as exc:
        _fail(f"cannot make a self-signed certificate: {exc}")
    return (str(files.cert), str(files.key)), files


def print_tls_help(files, url_path: str, port: int, host: str) -> None:
    """How to open the page on a phone (printed by ``demo`` and ``server serve`` with a self-signed certificate)."""
    from edgekws.server.tls import lan_addresses

    made = "made" if files.created else "reused"
    console().print(
        f"HTTPS with a self-signed certificate ({made}: {files.cert}); its certificate authority is "
        f"{files.ca} (SHA-256 {files.ca_sha256[:32]}…; Python clients such as deploy trust it with "
        f"SSL_CERT_FILE={files.ca})",
        highlight=False,
    )
    if _loopback(host):
        console().print(f"  listening on {host} only: a phone cannot reach it (use --host 0.0.0.0)", highlight=False)
        return
    for a in lan_addresses() or ["<this machine's address>"]:
        host = f"[{a}]" if ":" in a else a
        console().print(escape(f"  on a phone on the same network: https://{host}:{port}{url_path}"), highlight=False)
    console().print(
        escape(
            "  the browser warns about the certificate until the phone trusts the CA: install "
            f"https://<address>:{port}/demo/ca.crt (see the README, 'Try it on a phone')"
        ),
        highlight=False,
    )


def demo(
    bundle: Path = typer.Option(..., "--bundle", "-b", help="bundle folder or .tar"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: reachable from a phone)"),
    port: int = typer.Option(8720, "--port", min=0, max=65535, help="port (0: any free port)"),
    public_key: Optional[Path] = typer.Option(None, "--public-key", help=_KEY_HELP),
    embedded_key: bool = typer.Option(
        False,
        "--embedded-key",
        help="the page checks the signature against the key inside the manifest (integrity, not who signed it)",
    ),
    tls: Optional[bool] = typer.Option(
        None,
        "--tls/--no-tls",
        help="HTTPS with a self-signed certificate made on "
        "first run (default: on when --host is not a loopback address)",
    ),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="certificate chain (PEM) to serve HTTPS with"),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="its private key (PEM)"),
    threshold: float = typer.Option(0.6, "--threshold", min=0.0, max=1.0, help="default posterior threshold"),
    thresholds: Optional[str] = typer.Option(None, "--thresholds", help="per keyword, e.g. 'yes=0.7,stop=0.5'"),
    features: str = typer.Option(
        "js",
        "--features",
        help="MFCC bundles: js (MFCC in JavaScript) or graph (the "
        "bundle's waveform-in ONNX graph, where it carries one)",
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="onnxruntime-web threads in the page (default: the bundle's recommendation)"
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level (info logs every request)"),
) -> None:
    """Serve a page that runs BUNDLE in the browser: microphone, level, top scores, detections (like `listen`)."""
    from edgekws.device.runtime import DetectorConfig
    from edgekws.server.registry import _bind, _url, _uvicorn_server_for
    from edgekws.server.webdemo import (
        DemoConfig,
        DemoError,
        LocalBundleSource,
        create_demo_app,
        demo_config,
        find_web_dir,
        runtime_assets,
    )

    try:
        det = DetectorConfig(threshold=threshold, thresholds=_thresholds(thresholds))
        source = LocalBundleSource(bundle, public_key, trust_embedded_key=embedded_key)
    except DemoError as exc:
        _fail(f"{exc}")
    except (OSError, ValueError) as exc:
        _fail(f"bundle refused: {exc}")
    unknown = set(det.thresholds) - set(source.info.classes)
    if unknown:
        _fail(f"--thresholds names unknown keywords {sorted(unknown)}; the bundle knows {list(source.info.classes)}")
    if features == "graph" and not source.manifest.get("mfcc_graph"):
        _fail(
            "--features graph: this bundle carries no waveform-in MFCC graph (phone bundles of the MFCC backbone "
            "do); use --features js"
        )
    served_tls, files = resolve_tls(host, tls, tls_cert, tls_key)
    try:
        web = find_web_dir()
        runtime_assets(web)
        cfg = DemoConfig(
            detector=det, features=features, threads=threads, ca_cert=files.ca if files is not None else None
        )
        app = create_demo_app(source, cfg)
        config = demo_config(app, source.ref.target)
    except DemoError as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    plan = config["plan"]
    target = source.ref.target
    try:
        sock = _bind(host, port)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port} ({exc})")
    url = _url(sock, tls=served_tls is not None)
    if host in ("0.0.0.0", "::"):  # the wildcard address is not a place to browse to
        url = url.replace("[::]", "localhost").replace("0.0.0.0", "localhost")
    signer = (
        "the key inside the manifest (integrity only)"
        if embedded_key
        else f"pinned key {source.keys[0]['key_id'][:16]}…"
    )
    console().print(
        f"bundle {source.id} (target {target}, {', '.join(source.info.classes)}); the page checks it "
        f"against {signer}; classifier {plan['classifier']}, temperature {plan['temperature']:.3g}",
        highlight=False,
    )
    if files is not None:
        print_tls_help(files, f"/demo/{target}", sock.getsockname()[1], host)
    elif not _loopback(host):
        console().print(
            "[yellow]plain HTTP beyond this machine: a phone's browser will not give the page the "
            "microphone; use --tls or --tls-cert/--tls-key[/]"
        )
    console().print(escape(f"open {url}/demo/{target}  (Ctrl-C stops)"), highlight=False)
    sys.stdout.write(f"{url}/demo/{target}\n")
    sys.stdout.flush()
    server = _uvicorn_server_for(app, log_level, served_tls)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
