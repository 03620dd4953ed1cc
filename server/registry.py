"""Bundle registry: an HTTP service that stores signed bundles and serves them to devices.

Storage under one folder (``root``)::

    registry.sqlite      bundles (id, target, sizes, sha256, manifest), channel releases, device check-ins
    blobs/<id>.tar       verified bundle archives; ``id`` = the first 16 hex digits of sha256(manifest.json),
                         which is also the device's name for the bundle (``Bundle.id``)
    incoming/            uploads being received; a file is renamed into blobs/ only after the archive's
                         signature (against a trusted key) and every file's sha256 have been checked

HTTP API (JSON unless stated; every refusal is a 4xx with ``{"detail": "<what is wrong>"}``)::

    GET  /healthz
    GET  /v1/bundles[?target=&channel=&limit=]        stored bundles, newest first
    POST /v1/bundles?channel=stable[&target=rpi]      publish; ``Authorization: Bearer <token>``; body: bundle .tar
    GET  /v1/bundles/{id}                             metadata and the manifest
    GET  /v1/bundles/{id}/manifest.json               the exact signed manifest bytes
    GET  /v1/bundles/{id}/bundle.tar                  the archive: ETag (its sha256), Range / If-Range (206, 416),
                                                      If-None-Match (304), X-Content-SHA256, Repr-Digest
    GET  /v1/targets/{target}/channels/{channel}      the newest release of a channel (what devices poll)
    PUT  /v1/targets/{target}/channels/{channel}      point a channel at a stored bundle (token); body {"bundle": id}
    POST /v1/devices/{device_id}/checkin              a device reports what it runs: {target, channel, bundle, status}
                                                      (``Authorization: Bearer <device token>``)
    POST /v1/devices/{device_id}/token                enrol a device: a new device token (token; replaces the old one)
    DELETE /v1/devices/{device_id}/token              withdraw a device's token (token)
    GET  /v1/devices                                  the last check-in of every device (token)
    GET  /demo/{target}[?channel=stable]              the channel's bundle running in the browser (web demo:
                                                      :mod:`edgekws.server.webdemo`)

Channels are per target: publishing bundle B (target ``rpi``) to ``stable`` makes B the newest ``rpi``/``stable``
release; promoting or rolling a channel back is a ``PUT`` of another stored id. Reads need no token (bundles are
signed; devices check the signature against their pinned key); writes and the device list do. A release may carry
a signed channel pointer (:mod:`edgekws.channel`: signed by a trusted key, a growing version, an expiry), sent
with ``PUT`` as ``{"bundle", "pointer", "signature"}`` or with a publish as the headers ``X-Channel-Pointer`` and
``X-Channel-Pointer-Signature``; once a channel has one, every later release of it needs a newer one.

Check-ins come from enrolled devices, each with its own token (only its sha256 is stored); unenrolled devices may
check in only when the registry allows anonymous check-ins (``RegistryConfig.anonymous_checkins``), and never
under the name of an enrolled device. Every request body except a bundle upload is read into memory only up to
``max_json_bytes`` (413 beyond, before reading the rest, with or without Content-Length); bundle uploads stream to
disk up to ``max_bundle_bytes``. Refusals never echo the request's content back.

Modules: this one holds the configuration, the storage, the application (:func:`create_app`) and serving it;
:mod:`edgekws.server.registry_routes` the HTTP routes; :mod:`edgekws.server.registry_client` the client side
(:func:`publish`, :func:`set_channel`, :func:`enrol_device`, :func:`list_devices`; standard library only), whose
names this module re-exports.
"""

import contextlib
import json
import os
import re
import secrets
import socket
import sqlite3
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgekws.bundle import (
    BUNDLE_ID_RE,
    DEVICE_ID_RE,
    NAME_RE,
    BundleError,
    load_public_key,
    verify_bundle,
)
from edgekws.fileio import atomic_open

from .registry_client import (
    TOKEN_ENV,
    RegistryError,
    default_token_path,
    enrol_device,
    list_devices,
    publish,
    read_token,
    set_channel,
)

__all__ = [
    "DEFAULT_CHANNELS",
    "RegistryConfig",
    "RegistryError",
    "RegistryServer",
    "create_app",
    "default_token_path",
    "enrol_device",
    "list_devices",
    "publish",
    "read_token",
    "resolve_server_token",
    "serve",
    "set_channel",
]

DEFAULT_CHANNELS = ("stable", "beta")
DEFAULT_MAX_BUNDLE_BYTES = 128 << 20

ID_RE, NAME_RE, DEVICE_RE = BUNDLE_ID_RE, NAME_RE, DEVICE_ID_RE  # bundle ids, targets and channels, device names
CHECKIN_STATUSES = ("installed", "up-to-date", "rolled-back", "failed", "running")
_CHUNK = 512 * 1024  # per read of a download; each read is one hop to the thread pool


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Configuration and storage ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryConfig:
    """What a registry serves and whom it trusts.

    root: storage folder (created). tokens: bearer tokens allowed to publish, promote and list devices (none:
    those requests are refused with 403). trusted_keys: ed25519 public keys (objects, PEM files, key folders); an
    upload (and a channel pointer) must be signed by one of them. max_bundle_bytes: largest accepted archive (413
    above); max_json_bytes: largest body of any other request. anonymous_checkins: accept check-ins from devices
    that were not enrolled (an enrolled device always needs its token).
    """

    root: Path
    tokens: tuple[str, ...] = ()
    trusted_keys: tuple[Any, ...] = ()
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
    max_json_bytes: int = 16 * 1024
    anonymous_checkins: bool = False
    demo: Any = None  # webdemo.DemoConfig for /demo (None: defaults)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if not self.trusted_keys:
            raise ValueError("a registry needs at least one trusted public key (uploads must be signed by it)")
        for k in self.trusted_keys:
            try:
                load_public_key(k)
            except (OSError, ValueError, TypeError) as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                raise ValueError(f"trusted key {k}: {first}") from None
        if self.max_json_bytes < 256:
            raise ValueError("max_json_bytes must be at least 256")
        for ch in self.channels:
            if not NAME_RE.match(ch):
                raise ValueError(f"channel name {ch!r} must match {NAME_RE.pattern}")
        if not self.channels:
            raise ValueError("a registry needs at least one channel")
        if self.max_bundle_bytes < 1024:
            raise ValueError("max_bundle_bytes must be at least 1024")
        for t in self.tokens:
            if len(t) < 16:
                raise ValueError("publish tokens must be at least 16 characters long")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    created_at TEXT NOT NULL,
    published_at TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    key_id TEXT NOT NULL,
    manifest BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    channel TEXT NOT NULL,
    bundle_id TEXT NOT NULL REFERENCES bundles(id),
    at TEXT NOT NULL,
    how TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_tc ON releases(target, channel, seq);
CREATE TABLE IF NOT EXISTS checkins (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    target TEXT NOT NULL,
    channel TEXT NOT NULL,
    bundle_id TEXT,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    at TEXT NOT NULL,
    peer TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkins_dev ON checkins(device_id, seq);
CREATE TABLE IF NOT EXISTS device_tokens (
    device_id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    enrolled_at TEXT NOT NULL
);
"""
# columns added after the first release of the schema: (table, column, declaration)
_ADDED_COLUMNS = (
    ("releases", "pointer", "BLOB"),
    ("releases", "pointer_sig", "BLOB"),
    ("releases", "pointer_version", "INTEGER"),
    ("checkins", "enrolled", "INTEGER NOT NULL DEFAULT 0"),
)


class _Store:
    """SQLite + blob files. Every method opens its own connection (endpoints run in a thread pool)."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs"
        self.incoming = root / "incoming"
        self.db = root / "registry.sqlite"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        for stale in self.incoming.iterdir():  # uploads cut short by a crash or kill
            if stale.is_file() and stale.name.endswith(".part"):
                stale.unlink(missing_ok=True)
        with self.connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            for table, column, decl in _ADDED_COLUMNS:
                if column not in {r["name"] for r in con.execute(f"PRAGMA table_info({table})")}:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.db, timeout=30.0)
        con.row_factory = sqlite3.Row
        try:
            with con:
                yield con
        finally:
            con.close()

    def blob(self, bundle_id: str) -> Path:
        if not ID_RE.match(bundle_id):  # never build a path from an unchecked name
            raise ValueError(f"invalid bundle id {bundle_id!r}")
        return self.blobs / f"{bundle_id}.tar"

    def bundle_row(self, con: sqlite3.Connection, bundle_id: str) -> sqlite3.Row | None:
        return con.execute("SELECT * FROM bundles WHERE id = ?", (bundle_id,)).fetchone()

    def channels_of(self, con: sqlite3.Connection, bundle_id: str) -> list[str]:
        rows = con.execute(
            "SELECT r.target, r.channel, r.bundle_id FROM releases r JOIN "
            "(SELECT target, channel, MAX(seq) AS seq FROM releases GROUP BY target, channel) m ON r.seq = m.seq "
            "WHERE r.bundle_id = ?",
            (bundle_id,),
        ).fetchall()
        return sorted(r["channel"] for r in rows)

    def latest(self, con: sqlite3.Connection, target: str, channel: str) -> sqlite3.Row | None:
        return con.execute(
            "SELECT * FROM releases WHERE target = ? AND channel = ? ORDER BY seq DESC LIMIT 1", (target, channel)
        ).fetchone()

    def pointer_version(self, con: sqlite3.Connection, target: str, channel: str) -> int | None:
        """The highest signed-pointer version released on a channel (None: never signed)."""
        row = con.execute(
            "SELECT MAX(pointer_version) AS v FROM releases WHERE target = ? AND channel = ?", (target, channel)
        ).fetchone()
        return None if row is None or row["v"] is None else int(row["v"])


def _describe(store: _Store, con: sqlite3.Connection, row: sqlite3.Row, *, with_manifest: bool = False) -> dict:
    m = json.loads(row["manifest"])
    out = {
        "id": row["id"],
        "target": row["target"],
        "created_at": row["created_at"],
        "published_at": row["published_at"],
        "size": row["size"],
        "sha256": row["sha256"],
        "key_id": row["key_id"],
        "classes": m.get("classes", []),
        "model": (m.get("model") or {}).get("name"),
        "embedding_sha256": {
            k: m["files"][v]["sha256"]
            for k, v in (m.get("graphs") or {}).get("embedding", {}).items()
            if v in m.get("files", {})
        },
        "channels": store.channels_of(con, row["id"]),
        "url": f"/v1/bundles/{row['id']}/bundle.tar",
    }
    if with_manifest:
        out["manifest"] = m
    return out


def _manifest_bytes(tar_path: Path) -> bytes:
    """The exact ``manifest.json`` bytes of an archive that :func:`verify_bundle` has accepted."""
    with tarfile.open(tar_path, mode="r:") as tf:
        f = tf.extractfile("manifest.json")
        if f is None:  # verified archives always hold it; keep the check for a clear message
            raise BundleError(f"{tar_path}: manifest.json is not a regular file")
        return f.read()


def _verify_upload(path: Path, keys: Sequence[Any]) -> Any:
    """Verify an uploaded archive against each trusted key; the first that matches wins."""
    errors = []
    for key in keys:
        try:
            return verify_bundle(path, key)
        except BundleError as exc:
            errors.append(str(exc))
            if "wrong signature" not in str(exc):  # damaged or inconsistent: another key will not help
                break
    msg = errors[-1] if errors else "no trusted key"
    raise BundleError(msg.replace(str(path), "upload"))


# Range requests ---------------------------------------------------------------------------------------------


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` of a single ``bytes=`` range, None for several ranges (served whole).

    Raises ValueError("malformed") for a header that is not a byte range, and ValueError("unsatisfiable") when the
    range lies outside ``size`` bytes.
    """
    h = header.strip()
    if "," in h:
        return None
    m = _RANGE_RE.match(h)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise ValueError("malformed")
    a, b = m.group(1), m.group(2)
    if a == "":  # suffix range: the last b bytes
        n = int(b)
        if n == 0 or size == 0:
            raise ValueError("unsatisfiable")
        return max(0, size - n), size - 1
    start = int(a)
    if b != "" and int(b) < start:
        raise ValueError("malformed")
    if start >= size:
        raise ValueError("unsatisfiable")
    end = int(b) if b != "" else size - 1
    return start, min(end, size - 1)


def _file_chunks(fh: Any, start: int, length: int) -> Iterator[bytes]:
    try:
        fh.seek(start)
        left = length
        while left > 0:
            block = fh.read(min(_CHUNK, left))
            if not block:
                break
            left -= len(block)
            yield block
    finally:
        fh.close()


# Bounded request bodies ------------------------------------------------------------------------------------------


def _safe_text(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters and encodable as UTF-8 (lone surrogates become escapes)."""
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _BoundedBody:
    """ASGI wrapper: every request body except a bundle upload is read into memory up to ``limit`` bytes before the
    application sees it, whether or not it declares a Content-Length; a larger one gets a 413 at once, so the server
    never holds more than ``limit`` bytes of it (the rest is never read). Bundle uploads (``POST /v1/bundles``)
    stream to disk under their own limit."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/bundles"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send, 400 if not declared.isdigit() else 413, declared)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse(send, 413, None)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any, status: int, declared: bytes | None) -> None:
        if status == 400:
            detail = "invalid Content-Length header"
        else:
            size = f"of {int(declared)} bytes " if declared is not None else ""
            detail = f"request body {size}exceeds this registry's limit of {self.limit} bytes"
        raw = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw, "more_body": False})


# The application ---------------------------------------------------------------------------------------------


def create_app(cfg: RegistryConfig) -> Any:
    """The FastAPI application serving ``cfg.root``: the routes of :mod:`edgekws.server.registry_routes` and the
    web demo's (:mod:`edgekws.server.webdemo`)."""
    from fastapi import FastAPI

    from . import registry_routes as routes
    from .webdemo import RegistryBundleSource, add_demo_routes

    store = _Store(cfg.root)
    app = FastAPI(title="edgekws bundle registry", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = cfg
    app.state.store = store
    app.add_middleware(_BoundedBody, limit=cfg.max_json_bytes)
    checks = routes.Checks(cfg, store, [load_public_key(k) for k in cfg.trusted_keys])
    routes.add_error_handlers(app)
    routes.add_bundle_routes(app, checks)
    routes.add_channel_routes(app, checks)
    routes.add_device_routes(app, checks)
    add_demo_routes(app, RegistryBundleSource(store, list(cfg.trusted_keys), cfg.root), cfg.demo)
    return app


# Running it ----------------------------------------------------------------------------------------------------


def resolve_server_token(token_file: str | os.PathLike | None = None, *, create: bool = True) -> tuple[str, str]:
    """The publish token a server uses, and where it came from.

    Order: ``token_file``; ``$EDGEKWS_REGISTRY_TOKEN``; ``$EDGEKWS_HOME/registry.token``, created (mode 0600, 32
    random bytes) when ``create`` and absent, so ``edgekws deploy`` on the same machine finds it.
    """
    if token_file is not None:
        return read_token(token_file), str(token_file)
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    p = default_token_path()
    if p.is_file():
        return read_token(p), str(p)
    if not create:
        raise FileNotFoundError(f"no publish token: pass --token-file, set ${TOKEN_ENV} or create {p}")
    token = secrets.token_urlsafe(32)
    with atomic_open(p, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write((token + "\n").encode())
    return token, f"{p} (new)"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _uvicorn_server_for(app: Any, log_level: str, tls: tuple[str, str] | None = None) -> Any:
    import uvicorn

    ssl = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    ucfg = uvicorn.Config(
        app, log_level=log_level, access_log=log_level == "debug", timeout_keep_alive=5, lifespan="off", **ssl
    )
    return uvicorn.Server(ucfg)


def _uvicorn_server(cfg: RegistryConfig, log_level: str, tls: tuple[str, str] | None = None) -> Any:
    return _uvicorn_server_for(create_app(cfg), log_level, tls)


def serve(
    cfg: RegistryConfig,
    host: str = "127.0.0.1",
    port: int = 8710,
    *,
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
    tls: tuple[str, str] | None = None,
) -> None:
    """Run the registry until interrupted. ``port=0`` picks a free port; ``on_ready(url)`` is called once bound.
    ``tls``: ``(certfile, keyfile)`` serves HTTPS (a phone's browser needs it for the microphone on /demo)."""
    sock = _bind(host, port)
    server = _uvicorn_server(cfg, log_level, tls)
    if on_ready is not None:
        on_ready(_url(sock, tls=tls is not None))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@dataclass
class RegistryServer:
    """A registry in a background thread (tests, benchmarks): ``with RegistryServer(cfg) as srv: srv.url``."""

    config: RegistryConfig
    host: str = "127.0.0.1"
    port: int = 0
    log_level: str = "warning"
    url: str = ""
    tls: tuple[str, str] | None = None
    _server: Any = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _sock: socket.socket | None = field(default=None, repr=False)

    def start(self, timeout: float = 20.0) -> "RegistryServer":
        self._sock = _bind(self.host, self.port)
        self.url = _url(self._sock, tls=self.tls is not None)
        self._server = _uvicorn_server(self.config, self.log_level, self.tls)
        self._server.install_signal_handlers = lambda: None  # not the main thread
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="edgekws-registry", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the registry server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> "RegistryServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
