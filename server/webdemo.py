"""The live demo: a bundle running in a phone's (or any) browser, served by the registry or by ``edgekws demo``.

The page (``web/``: HTML, CSS and JavaScript modules, no build step) downloads the bundle's signed manifest and the
graphs it runs, checks them (ed25519 signature where the browser supports it, every file's sha256 always), runs
the front end and the classifier with onnxruntime-web (WebAssembly) and applies the detection rule of
``edgekws listen`` (``web/detector.js`` mirrors :mod:`edgekws.device.runtime`). onnxruntime-web comes from npm
(``web/package.json`` and its lock file): ``npm ci`` in ``web/`` copies the three runtime files into
``web/dist/ort/`` with brotli and gzip copies (``web/build.mjs``).

HTTP routes (all under ``/demo``)::

    GET /demo                          the targets and channels there is something to try (registry), or a
                                       redirect to the one bundle (``edgekws demo``)
    GET /demo/{target}[?channel=stable]   the page
    GET /demo/{target}/config.json[?channel=]   which bundle, the pinned keys, the plan (classifier graph,
                                       softmax temperature, detector settings); 404 when nothing is released,
                                       409 when the stored bundle no longer verifies
    GET /demo/b/{id}/{file}            a bundle file (manifest.json, manifest.sig, or a file the manifest lists)
    GET /demo/assets/{file}            the page's own files
    GET /demo/ort/{version}/{file}     onnxruntime-web (brotli or gzip when the browser accepts it)
    GET /demo/sw.js                    the service worker (offline use after the first visit)
    GET /demo/ca.crt                   the certificate authority to install on a phone (self-signed TLS only)

The plan's temperature is the one ``listen`` uses: the bundle's shipped temperature, else
:meth:`DeviceModel.fit_temperature` on the bundle's coreset, for the same graph (ONNX at the precision ``listen --format onnx`` picks). The server computes it once per bundle.
Responses carry cross-origin isolation headers (so onnxruntime-web may use threads) and a content security policy.
"""

import dataclasses
import gzip
import hashlib
import html
import json
import os
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgekws.bundle import BUNDLE_ID_RE, NAME_RE, bundle_id, load_public_key, unpack_bundle
from edgekws.fileio import atomic_write_json

__all__ = [
    "DemoConfig",
    "DemoError",
    "DemoServer",
    "LocalBundleSource",
    "RegistryBundleSource",
    "add_demo_routes",
    "create_demo_app",
    "demo_config",
    "find_web_dir",
    "page_assets",
    "runtime_assets",
]

ID_RE = BUNDLE_ID_RE
WEB_ENV = "EDGEKWS_WEB_DIR"
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".wasm": "application/wasm",
          ".json": "application/json", ".html": "text/html; charset=utf-8", ".pem": "application/x-pem-file"}
_SECURITY = {
    # cross-origin isolation: SharedArrayBuffer, hence onnxruntime-web threads; every resource here is same-origin
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'")
_IMMUTABLE = "public, max-age=31536000, immutable"


class DemoError(RuntimeError):
    """A demo request that cannot be answered; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DemoConfig:
    """How the page detects: the detector settings of ``listen`` (:class:`DetectorConfig`), the MFCC front end the
    page uses by default (``js``: mfcc.js; ``graph``: the bundle's waveform-in graph, where it carries one),
    onnxruntime-web threads (None: the bundle's recommendation), and the CA certificate a phone should install."""

    detector: Any = None  # DetectorConfig; None = its defaults
    features: str = "js"
    threads: int | None = None
    ca_cert: Path | None = None
    web_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.features not in ("js", "graph"):
            raise ValueError(f"features must be 'js' or 'graph', got {self.features!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")

    def detector_dict(self) -> dict[str, Any]:
        from edgekws.device.runtime import DetectorConfig

        d = dataclasses.asdict(self.detector or DetectorConfig())
        d["thresholds"] = dict(d.get("thresholds") or {})
        return d


# The page's files and its runtime ------------------------------------------------------------------------------


def find_web_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The folder holding the page (``index.html``): ``explicit``, ``$EDGEKWS_WEB_DIR``, the package's ``web``
    folder (installed) or the source checkout's ``web/``."""
    import edgekws

    pkg = Path(edgekws.__file__).resolve().parent
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get(WEB_ENV):
        candidates.append(Path(os.environ[WEB_ENV]))
    candidates += [pkg / "web", pkg.parent / "web"]
    for c in candidates:
        if (c / "index.html").is_file():
            return c
    raise DemoError(f"the demo page's files are not installed (looked in {', '.join(str(c) for c in candidates)}); "
                    f"run from a source checkout or set ${WEB_ENV}", 503)


def runtime_assets(web: Path) -> dict[str, Any]:
    """``web/dist/ort/assets.json``: onnxruntime-web's version and its files (sizes, sha256, compressed sizes)."""
    index = web / "dist" / "ort" / "assets.json"
    if not index.is_file():
        raise DemoError(f"onnxruntime-web is not installed for the demo page: run `npm ci --prefix {web}` "
                        "(Node.js 18 or newer; it fetches the version pinned in web/package-lock.json)", 503)
    data = json.loads(index.read_text())
    for name in data.get("files", {}):
        if not (index.parent / name).is_file():
            raise DemoError(f"{index.parent / name} is missing: run `npm ci --prefix {web}` again", 503)
    return data


def page_assets(web: Path) -> list[str]:
    """The page's own files served under /demo/assets/ (its scripts and style sheet)."""
    return sorted(p.name for p in web.iterdir() if p.suffix in (".js", ".css") and p.name != "sw.js" and p.is_file())


# Where bundles come from ---------------------------------------------------------------------------------------


@dataclass
class BundleRef:
    id: str
    target: str
    channel: str
    created_at: str
    source: str
    files: frozenset[str]


class BundleSource(Protocol):
    keys: list[dict[str, str]]

    def resolve(self, target: str, channel: str) -> BundleRef: ...

    def read(self, bundle_id: str, name: str) -> bytes: ...

    def opened(self, bundle_id: str) -> Any: ...  # a verified edgekws.bundle.Bundle

    def listing(self) -> list[dict[str, Any]]: ...

    def plan_cache(self) -> Path | None: ...


def _key_entries(keys: list[Any]) -> list[dict[str, str]]:
    import base64

    from cryptography.hazmat.primitives import serialization

    out = []
    for k in keys:
        raw = load_public_key(k).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        out.append({"algorithm": "ed25519", "key_id": hashlib.sha256(raw).hexdigest(),
                    "public_key": base64.b64encode(raw).decode("ascii")})
    return out


class LocalBundleSource:
    """One bundle folder or ``.tar`` on this machine (``edgekws demo --bundle``), verified when opened.

    ``public_key``: the signer's pinned key (default ``$EDGEKWS_HOME/keys/signing.pub``); the page checks the
    signature against it. ``trust_embedded_key``: check against the key inside the manifest (integrity only).
    Files are read from disk on every request, so the page sees the bundle as it is now."""

    def __init__(self, path: str | os.PathLike, public_key: Any = None, *, trust_embedded_key: bool = False) -> None:
        from edgekws.device.model import DeviceModelError, open_bundle

        self.path = Path(path)
        self._tmp = None
        if self.path.is_file():
            self._tmp = tempfile.TemporaryDirectory(prefix="edgekws-demo-")
            unpacked = unpack_bundle(self.path, Path(self._tmp.name) / "bundle", public_key,
                                     trust_embedded_key=trust_embedded_key)
        else:
            unpacked = self.path
        try:
            self.info = open_bundle(unpacked, public_key, trust_embedded_key=trust_embedded_key)
        except DeviceModelError as exc:
            raise DemoError(str(exc), 409) from None
        self.dir = unpacked
        raw = (unpacked / "manifest.json").read_bytes()
        self.id = bundle_id(raw)
        self.manifest = self.info.manifest
        self.keys = [] if trust_embedded_key else _key_entries([public_key])
        self.ref = BundleRef(id=self.id, target=self.info.target, channel="", created_at=self.manifest["created_at"],
                             source=f"local bundle {self.path.name}",
                             files=frozenset(self.manifest["files"]) | {"manifest.json", "manifest.sig"})

    def resolve(self, target: str, channel: str) -> BundleRef:  # noqa: ARG002 - one bundle, no channels
        if target != self.ref.target:
            raise DemoError(f"this server shows one bundle, for target {self.ref.target!r}: open "
                            f"/demo/{self.ref.target}")
        return self.ref

    def read(self, bundle_id: str, name: str) -> bytes:
        if bundle_id != self.id or name not in self.ref.files:
            raise DemoError(f"no file {name!r} in bundle {bundle_id}")
        if self._tmp is not None:  # an archive: read the member from the archive as it is now
            return _TarReader.shared().read(self.path, name)
        return (self.dir / name).read_bytes()

    def opened(self, bundle_id: str) -> Any:
        if bundle_id != self.id:
            raise DemoError(f"no bundle {bundle_id}")
        return self.info

    def listing(self) -> list[dict[str, Any]]:
        return [{"target": self.ref.target, "channel": "", "bundle": self.id}]

    def plan_cache(self) -> Path | None:
        return None


class RegistryBundleSource:
    """The bundles a registry stores (``blobs/<id>.tar``) and the releases of its channels. The page pins the
    registry's trusted keys. A bundle is unpacked and verified once, under ``<root>/demo/<id>/``, to fit its
    softmax temperature."""

    def __init__(self, store: Any, trusted_keys: list[Any], root: Path) -> None:
        self.store = store
        self.trusted = list(trusted_keys)
        self.keys = _key_entries(self.trusted)
        self.root = Path(root) / "demo"
        self._lock = threading.Lock()

    def resolve(self, target: str, channel: str) -> BundleRef:
        with self.store.connect() as con:
            rel = self.store.latest(con, target, channel)
            if rel is None:
                raise DemoError(f"nothing is released for target {target!r} on channel {channel!r}")
            row = self.store.bundle_row(con, rel["bundle_id"])
        manifest = json.loads(row["manifest"])
        return BundleRef(id=row["id"], target=row["target"], channel=channel, created_at=row["created_at"],
                         source=f"registry, channel {channel}",
                         files=frozenset(manifest.get("files", {})) | {"manifest.json", "manifest.sig"})

    def _row(self, bundle_id: str) -> Any:
        if not ID_RE.match(bundle_id):
            raise DemoError(f"invalid bundle id {bundle_id!r}")
        with self.store.connect() as con:
            row = self.store.bundle_row(con, bundle_id)
        if row is None:
            raise DemoError(f"no bundle {bundle_id}")
        return row

    def read(self, bundle_id: str, name: str) -> bytes:
        row = self._row(bundle_id)
        if name not in set(json.loads(row["manifest"]).get("files", {})) | {"manifest.json", "manifest.sig"}:
            raise DemoError(f"no file {name!r} in bundle {bundle_id}")
        return _TarReader.shared().read(self.store.blob(bundle_id), name)

    def opened(self, bundle_id: str) -> Any:
        from edgekws.device.model import open_bundle

        self._row(bundle_id)
        dest = self.root / bundle_id
        with self._lock:
            errors = []
            for key in self.trusted:
                try:
                    if not (dest / "manifest.json").is_file():
                        unpack_bundle(self.store.blob(bundle_id), dest, key)
                    return open_bundle(dest, key)
                except Exception as exc:  # noqa: BLE001 - BundleError or DeviceModelError: try the next key
                    errors.append(str(exc))
            raise DemoError(f"bundle {bundle_id} in this registry no longer verifies: {errors[-1]}", 409)

    def listing(self) -> list[dict[str, Any]]:
        with self.store.connect() as con:
            rows = con.execute(
                "SELECT r.target, r.channel, r.bundle_id FROM releases r JOIN (SELECT target, channel, MAX(seq) AS "
                "seq FROM releases GROUP BY target, channel) m ON r.seq = m.seq ORDER BY r.target, r.channel")
            return [{"target": r["target"], "channel": r["channel"], "bundle": r["bundle_id"]} for r in rows]

    def plan_cache(self) -> Path | None:
        return self.root


class _TarReader:
    """Reads single members of bundle archives; the member index of each archive is kept while the file is
    unchanged (same size and modification time)."""

    _shared: "_TarReader | None" = None

    def __init__(self) -> None:
        self._index: dict[Path, tuple[tuple[int, int], dict[str, tuple[int, int]]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> "_TarReader":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def read(self, path: Path, name: str) -> bytes:
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._index.get(path)
            if cached is None or cached[0] != stamp:
                try:
                    with tarfile.open(path, mode="r:") as tf:
                        members = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
                except tarfile.TarError as exc:
                    raise DemoError(f"bundle archive {path.name} is damaged ({exc})", 409) from None
                cached = (stamp, members)
                self._index[path] = cached
        where = cached[1].get(name)
        if where is None:
            raise DemoError(f"{name} is not in the archive {path.name}")
        with open(path, "rb") as fh:
            fh.seek(where[0])
            return fh.read(where[1])


# The plan: which graph, which temperature, which rule -------------------------------------------------------


class _Planner:
    def __init__(self, source: BundleSource, cfg: DemoConfig) -> None:
        self.source = source
        self.cfg = cfg
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def model_plan(self, bundle_id: str) -> dict[str, Any]:
        """Classifier graph and softmax temperature, as ``listen --format onnx`` would use them."""
        with self._lock:
            if bundle_id in self._cache:
                return self._cache[bundle_id]
            disk = self.source.plan_cache()
            path = disk / f"{bundle_id}.plan.json" if disk is not None else None
            if path is not None and path.is_file():
                try:
                    plan = json.loads(path.read_text())
                    self._cache[bundle_id] = plan
                    return plan
                except (OSError, ValueError):
                    pass  # computed again below
            plan = self._compute(bundle_id)
            if path is not None:
                atomic_write_json(path, plan)
            self._cache[bundle_id] = plan
            return plan

    def _compute(self, bundle_id: str) -> dict[str, Any]:
        from edgekws.device.model import DeviceModel, DeviceModelError

        info = self.source.opened(bundle_id)
        try:  # what `edgekws listen --format onnx` runs (the page has no TFLite runtime)
            model = DeviceModel(info, fmt="onnx", threads=1, calibrate=True)
        except DeviceModelError as exc:
            raise DemoError(f"bundle {bundle_id}: {exc}", 409) from None
        classifier = info.graph_path("classifier", "onnx", model.precision).name
        return {"classifier": classifier, "precision": model.precision, "temperature": float(model.temperature),
                "threads": info.recommended["threads"]}

    def plan(self, ref: BundleRef) -> dict[str, Any]:
        mp = self.model_plan(ref.id)
        det = self.cfg.detector_dict()
        return {**mp, "threads": self.cfg.threads or mp["threads"], "features": self.cfg.features, "detector": det,
                "listen": (f"edgekws listen --bundle <bundle> --format onnx --precision {mp['precision']} "
                           f"--bundle-only --threshold {det['threshold']}")}


# Routes ---------------------------------------------------------------------------------------------------------


def _accepts(request: Any, coding: str) -> bool:
    header = request.headers.get("accept-encoding", "")
    return any(part.split(";")[0].strip() == coding for part in header.split(","))


def add_demo_routes(app: Any, source: BundleSource, cfg: DemoConfig | None = None) -> None:
    """Add the ``/demo`` routes to a FastAPI application (the registry's, or :func:`create_demo_app`'s)."""
    from fastapi import Request, Response
    from fastapi.responses import JSONResponse, RedirectResponse

    cfg = cfg or DemoConfig()
    planner = _Planner(source, cfg)
    app.state.demo = (source, planner)
    gz_cache: dict[tuple[str, int], bytes] = {}

    def web() -> Path:
        return find_web_dir(cfg.web_dir)

    def error(exc: DemoError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=dict(_SECURITY))

    def send(data: bytes, media: str, request: Request, *, cache: str = "no-cache", encoding: str | None = None,
             etag: str | None = None, extra: dict[str, str] | None = None) -> Response:
        headers = {**_SECURITY, "Cache-Control": cache, "Vary": "Accept-Encoding", **(extra or {})}
        if etag is not None:
            headers["ETag"] = f'"{etag}"'
            if request.headers.get("if-none-match") == headers["ETag"]:
                return Response(status_code=304, headers=headers)
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        return Response(data, media_type=media, headers=headers)

    def send_file(path: Path, request: Request, *, cache: str = "no-cache", extra: dict[str, str] | None = None,
                  compressed: bool = False) -> Response:
        media = _TYPES.get(path.suffix, "application/octet-stream")
        raw = path.read_bytes()
        etag = hashlib.sha256(raw).hexdigest()[:32]
        if compressed:  # onnxruntime-web: brotli and gzip copies made at install time
            for coding, suffix in (("br", ".br"), ("gzip", ".gz")):
                alt = path.with_name(path.name + suffix)
                if _accepts(request, coding) and alt.is_file():
                    return send(alt.read_bytes(), media, request, cache=cache, encoding=coding, etag=etag + coding,
                                extra=extra)
            return send(raw, media, request, cache=cache, etag=etag, extra=extra)
        if len(raw) > 1024 and _accepts(request, "gzip"):
            key = (str(path), hash(raw))
            if key not in gz_cache:
                gz_cache[key] = gzip.compress(raw, 9, mtime=0)
            return send(gz_cache[key], media, request, cache=cache, encoding="gzip", etag=etag + "gz", extra=extra)
        return send(raw, media, request, cache=cache, etag=etag, extra=extra)

    def boot(target: str, channel: str) -> dict[str, Any]:
        w = web()
        ort = runtime_assets(w)
        ort_base = f"/demo/ort/{ort['version']}/"
        assets = page_assets(w)
        stamp = hashlib.sha256("".join(f"{n}:{(w / n).stat().st_mtime_ns}" for n in assets).encode()).hexdigest()[:8]
        return {"target": target, "channel": channel, "base": "/demo", "assets": "/demo/assets/", "ort": ort_base,
                "sw": f"/demo/sw.js?cache=edgekws-demo-{stamp}", "scope": "/demo/", "cache": f"edgekws-demo-{stamp}",
                "precache": ["/demo/assets/" + n for n in assets] + [ort_base + n for n in ort["files"]]}

    @app.get("/demo", include_in_schema=False)
    def demo_index(request: Request) -> Response:
        items = source.listing()
        if isinstance(source, LocalBundleSource):
            return RedirectResponse(f"/demo/{items[0]['target']}", headers=dict(_SECURITY))
        rows = "".join(
            f'<li><a href="/demo/{html.escape(i["target"])}?channel={html.escape(i["channel"])}">'
            f'{html.escape(i["target"])} / {html.escape(i["channel"])}</a> <code>{html.escape(i["bundle"])}</code></li>'
            for i in items) or "<li>nothing is released yet</li>"
        body = (f"<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
                f"<title>edgekws demo</title><h1>edgekws: try a bundle</h1><ul>{rows}</ul>").encode()
        return send(body, _TYPES[".html"], request, extra={"Content-Security-Policy": _CSP})

    @app.get("/demo/sw.js", include_in_schema=False)
    def demo_sw(request: Request) -> Response:
        try:
            return send_file(web() / "sw.js", request, extra={"Service-Worker-Allowed": "/demo/"})
        except DemoError as exc:
            return error(exc)

    @app.get("/demo/ca.crt", include_in_schema=False)
    def demo_ca(request: Request) -> Response:
        if cfg.ca_cert is None or not Path(cfg.ca_cert).is_file():
            return error(DemoError("this server does not use a self-signed certificate"))
        # the type and name phones offer to install as a certificate (PEM content, as Android and iOS accept)
        return send(Path(cfg.ca_cert).read_bytes(), "application/x-x509-ca-cert", request, extra={
            "Content-Disposition": 'attachment; filename="edgekws-local-ca.crt"'})

    @app.get("/demo/assets/{name}", include_in_schema=False)
    def demo_asset(name: str, request: Request) -> Response:
        try:
            w = web()
            if name not in page_assets(w):
                raise DemoError(f"no asset {name!r}")
            return send_file(w / name, request)
        except DemoError as exc:
            return error(exc)

    @app.get("/demo/ort/{version}/{name}", include_in_schema=False)
    def demo_ort(version: str, name: str, request: Request) -> Response:
        try:
            w = web()
            ort = runtime_assets(w)
            if version != ort["version"] or name not in ort["files"]:
                raise DemoError(f"no onnxruntime-web file {version}/{name} (installed: {ort['version']})")
            return send_file(w / "dist" / "ort" / name, request, cache=_IMMUTABLE, compressed=True)
        except DemoError as exc:
            return error(exc)

    @app.get("/demo/b/{bundle_id}/{name}", include_in_schema=False)
    def demo_file(bundle_id: str, name: str, request: Request) -> Response:
        try:
            if not ID_RE.match(bundle_id):
                raise DemoError(f"invalid bundle id {bundle_id!r}")
            data = source.read(bundle_id, name)
        except DemoError as exc:
            return error(exc)
        except OSError as exc:
            return error(DemoError(f"cannot read {name} of bundle {bundle_id} ({exc.strerror})"))
        media = "application/json" if name.endswith(".json") else "application/octet-stream"
        return send(data, media, request, cache=_IMMUTABLE)

    @app.get("/demo/{target}/config.json", include_in_schema=False)
    def demo_config_json(target: str, request: Request, channel: str = "stable") -> Response:
        try:
            if not NAME_RE.match(target) or (channel and not NAME_RE.match(channel)):
                raise DemoError(f"invalid target or channel {target!r}/{channel!r}", 400)
            body = demo_config(app, target, channel or "stable")
        except DemoError as exc:
            return error(exc)
        return send(json.dumps(body).encode(), "application/json", request)

    @app.get("/demo/{target}", include_in_schema=False)
    def demo_page(target: str, request: Request, channel: str = "stable") -> Response:
        try:
            if not NAME_RE.match(target) or (channel and not NAME_RE.match(channel)):
                raise DemoError(f"invalid target or channel {target!r}/{channel!r}", 400)
            w = web()
            data = json.dumps(boot(target, channel)).replace("</", "<\\/")
            page = (w / "index.html").read_text().replace("{{ASSETS}}", "/demo/assets/").replace("{{BOOT}}", data)
        except DemoError as exc:
            return error(exc)
        return send(page.encode(), _TYPES[".html"], request, extra={
            "Content-Security-Policy": _CSP, "Permissions-Policy": "microphone=(self)"})


def demo_config(app: Any, target: str, channel: str = "stable") -> dict[str, Any]:
    """What ``GET /demo/{target}/config.json`` answers, computed now (the CLI calls it before serving, so the
    temperature is fitted and any problem shows before a browser asks). Raises :class:`DemoError`."""
    source, planner = app.state.demo
    ref = source.resolve(target, channel)
    return {"bundle": {"id": ref.id, "target": ref.target, "channel": ref.channel, "created_at": ref.created_at,
                       "source": ref.source, "url": f"/demo/b/{ref.id}/"},
            "keys": source.keys, "plan": planner.plan(ref)}


def create_demo_app(source: BundleSource, cfg: DemoConfig | None = None) -> Any:
    """A FastAPI application serving only the demo (``edgekws demo``); ``/`` leads to the page."""
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    app = FastAPI(title="edgekws demo", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", include_in_schema=False)
    def root() -> Any:
        return RedirectResponse("/demo")

    add_demo_routes(app, source, cfg)
    return app


# Running it ----------------------------------------------------------------------------------------------------


@dataclass
class DemoServer:
    """The demo app in a background thread (tests, benchmarks): ``with DemoServer(app) as srv: srv.url``.

    ``tls``: ``(certfile, keyfile)`` to serve HTTPS."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 0
    tls: tuple[str, str] | None = None
    log_level: str = "warning"
    url: str = ""
    _server: Any = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _sock: Any = field(default=None, repr=False)

    def start(self, timeout: float = 20.0) -> "DemoServer":
        import time

        from .registry import _bind, _uvicorn_server_for, _url

        self._sock = _bind(self.host, self.port)
        self.url = _url(self._sock, tls=self.tls is not None)
        self._server = _uvicorn_server_for(self.app, self.log_level, self.tls)
        self._server.install_signal_handlers = lambda: None  # not the main thread
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="edgekws-demo", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> "DemoServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
