"""Bundle registry: an HTTP service that stores signed bundles and serves them to devices.

Storage under one folder (``root``)::

    registry.sqlite      bundles (id, target, sizes, sha256, manifest), channel releases, device check-ins
    blobs/<id>.tar       verified bundle archives; ``id`` = the first 16 hex digits of sha256(manifest.json),
                         which is also the device's name for the bundle (``BundleInfo.identity``)
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

The client side of publishing (:func:`publish`) uses the standard library only.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import sqlite3
import tarfile
import threading
import time
import urllib.parse
import uuid
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
    load_private_key,
    load_public_key,
    pack_bundle,
    verify_bundle,
)
from edgekws.bundle import bundle_id as _bundle_id
from edgekws.channel import (
    DEFAULT_VALID_DAYS,
    PointerError,
    decode_pointer,
    encode_pointer,
    make_pointer,
    parse_time,
    verify_pointer,
)
from edgekws.fileio import atomic_open, fsync_dir

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
TOKEN_ENV = "EDGEKWS_REGISTRY_TOKEN"

ID_RE, NAME_RE, DEVICE_RE = BUNDLE_ID_RE, NAME_RE, DEVICE_ID_RE  # bundle ids, targets and channels, device names
CHECKIN_STATUSES = ("installed", "up-to-date", "rolled-back", "failed", "running")
_CHUNK = 512 * 1024  # per read of a download; each read is one hop to the thread pool


class RegistryError(RuntimeError):
    """A registry request failed; ``status`` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


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
            "WHERE r.bundle_id = ?", (bundle_id,)).fetchall()
        return sorted(r["channel"] for r in rows)

    def latest(self, con: sqlite3.Connection, target: str, channel: str) -> sqlite3.Row | None:
        return con.execute("SELECT * FROM releases WHERE target = ? AND channel = ? ORDER BY seq DESC LIMIT 1",
                           (target, channel)).fetchone()

    def pointer_version(self, con: sqlite3.Connection, target: str, channel: str) -> int | None:
        """The highest signed-pointer version released on a channel (None: never signed)."""
        row = con.execute("SELECT MAX(pointer_version) AS v FROM releases WHERE target = ? AND channel = ?",
                          (target, channel)).fetchone()
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
        "embedding_sha256": {k: m["files"][v]["sha256"] for k, v in (m.get("graphs") or {}).get("embedding", {}).items()
                             if v in m.get("files", {})},
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
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": raw, "more_body": False})


# The application ---------------------------------------------------------------------------------------------


def create_app(cfg: RegistryConfig) -> Any:
    """The FastAPI application serving ``cfg.root``."""
    from fastapi import Body, FastAPI, HTTPException, Query, Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    store = _Store(cfg.root)
    keys = [load_public_key(k) for k in cfg.trusted_keys]
    app = FastAPI(title="edgekws bundle registry", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = cfg
    app.state.store = store
    app.add_middleware(_BoundedBody, limit=cfg.max_json_bytes)

    def bad(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
        return HTTPException(status_code=status, detail=detail, headers=headers)

    def require_token(request: Request) -> None:
        auth = request.headers.get("authorization")
        if not auth:
            raise bad(401, "missing token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise bad(401, "malformed Authorization header: expected 'Bearer <token>'",
                      {"WWW-Authenticate": "Bearer"})
        if not cfg.tokens:
            raise bad(403, "this registry accepts no writes (it was started without a publish token)")
        given = token.strip().encode()
        if not any(hmac.compare_digest(given, t.encode()) for t in cfg.tokens):
            raise bad(403, "invalid token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def check_name(kind: str, value: str) -> str:
        if not NAME_RE.match(value):
            raise bad(400, f"invalid {kind} {value!r}: lower-case letters, digits, '-' and '_', at most 32")
        return value

    def check_channel(value: str) -> str:
        check_name("channel", value)
        if value not in cfg.channels:
            raise bad(404, f"unknown channel {value!r}; this registry has: {', '.join(cfg.channels)}")
        return value

    def check_id(value: str) -> str:
        if not ID_RE.match(value):
            raise bad(400, f"invalid bundle id {value!r}: 16 lower-case hex digits")
        return value

    def bearer(request: Request) -> str | None:
        auth = request.headers.get("authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise bad(401, "malformed Authorization header: expected 'Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        return token.strip()

    def require_device(request: Request, device_id: str) -> bool:
        """Check a check-in's device token; True for an enrolled device, False for an allowed anonymous one."""
        token = bearer(request)
        with store.connect() as con:
            row = con.execute("SELECT token_sha256 FROM device_tokens WHERE device_id = ?", (device_id,)).fetchone()
        if row is None:
            if token is None and cfg.anonymous_checkins:
                return False
            if token is not None:
                raise bad(403, f"device {device_id} is not enrolled here: its token is not valid")
            raise bad(401, f"device {device_id} is not enrolled: check-ins need a device token (the registry's "
                           f"operator runs `edgekws server enrol {device_id}`)", {"WWW-Authenticate": "Bearer"})
        if token is None:
            raise bad(401, f"device {device_id} is enrolled: send its device token", {"WWW-Authenticate": "Bearer"})
        given = hashlib.sha256(token.encode("utf-8", "backslashreplace")).hexdigest()
        if not hmac.compare_digest(given, row["token_sha256"]):
            raise bad(403, f"invalid device token for {device_id}", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return True

    def check_pointer(con: sqlite3.Connection, target: str, channel: str, bundle_id: str, pointer: str | None,
                      signature: str | None) -> tuple[bytes, bytes, int] | None:
        """Verify a signed channel pointer for a new release; None when none is given (and none is needed)."""
        last = store.pointer_version(con, target, channel)
        if pointer is None and signature is None:
            if last is not None:
                raise bad(409, f"releases of {target}/{channel} carry signed channel pointers (version {last}): "
                               "sign this one too")
            return None
        try:
            data, sig = decode_pointer(pointer, signature)
            doc, why = None, "no trusted key"
            for key in keys:
                try:
                    doc = verify_pointer(data, sig, key)
                    break
                except PointerError as exc:
                    why = str(exc)
                    if "signature" not in why:
                        break
            if doc is None:
                raise PointerError(why)
        except PointerError as exc:
            raise bad(422, f"channel pointer refused: {exc}") from None
        named = (doc["target"], doc["channel"], doc["bundle"])
        if named != (target, channel, bundle_id):
            raise bad(409, f"the signed pointer names {'/'.join(named[:2])} -> {named[2]}, not "
                           f"{target}/{channel} -> {bundle_id}")
        if parse_time(doc["expires_at"]) <= datetime.now(timezone.utc):
            raise bad(422, f"the signed pointer expired at {doc['expires_at']}")
        if last is not None and doc["version"] <= last:
            raise bad(409, f"pointer version {doc['version']} is not newer than version {last} of {target}/{channel}")
        return data, sig, int(doc["version"])

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = _safe_text(exc.detail, 2000) if isinstance(exc.detail, str) else exc.detail
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # where and what, never the input itself (it may be large, or not encodable)
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(_safe_text(str(p), 40) for p in err.get("loc", ()) if p != "body")
            msg = _safe_text(str(err.get("msg", "invalid")), 160)
            parts.append(f"{loc}: {msg}" if loc else msg)
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "channels": list(cfg.channels)}

    @app.get("/v1/bundles")
    def list_bundles(target: str | None = None, channel: str | None = None,
                     limit: int = Query(100, ge=1, le=1000)) -> dict:
        if target is not None:
            check_name("target", target)
        if channel is not None:
            check_channel(channel)
        with store.connect() as con:
            if channel is not None:
                sql = ("SELECT DISTINCT b.* FROM bundles b JOIN releases r ON r.bundle_id = b.id WHERE r.channel = ?"
                       + (" AND b.target = ?" if target else "") + " ORDER BY b.published_at DESC LIMIT ?")
                args: tuple = (channel, target, limit) if target else (channel, limit)
            else:
                sql = "SELECT * FROM bundles" + (" WHERE target = ?" if target else "") + \
                      " ORDER BY published_at DESC LIMIT ?"
                args = (target, limit) if target else (limit,)
            rows = con.execute(sql, args).fetchall()
            return {"bundles": [_describe(store, con, r) for r in rows]}

    @app.get("/v1/bundles/{bundle_id}")
    def show_bundle(bundle_id: str) -> dict:
        check_id(bundle_id)
        with store.connect() as con:
            row = store.bundle_row(con, bundle_id)
            if row is None:
                raise bad(404, f"no bundle {bundle_id}")
            return _describe(store, con, row, with_manifest=True)

    @app.get("/v1/bundles/{bundle_id}/manifest.json")
    def bundle_manifest(bundle_id: str) -> Response:
        check_id(bundle_id)
        with store.connect() as con:
            row = store.bundle_row(con, bundle_id)
        if row is None:
            raise bad(404, f"no bundle {bundle_id}")
        raw = bytes(row["manifest"])
        return Response(raw, media_type="application/json",
                        headers={"ETag": f'"{hashlib.sha256(raw).hexdigest()}"',
                                 "Cache-Control": "public, max-age=31536000, immutable"})

    @app.api_route("/v1/bundles/{bundle_id}/bundle.tar", methods=["GET", "HEAD"])
    def download(bundle_id: str, request: Request) -> Response:
        check_id(bundle_id)
        with store.connect() as con:
            row = store.bundle_row(con, bundle_id)
        if row is None:
            raise bad(404, f"no bundle {bundle_id}")
        path = store.blob(bundle_id)
        size, digest = int(row["size"]), str(row["sha256"])
        etag = f'"{digest}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "X-Content-SHA256": digest,
            "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:",
            "Cache-Control": "public, max-age=31536000, immutable",
            "Content-Disposition": f'attachment; filename="{bundle_id}.tar"',
        }
        inm = request.headers.get("if-none-match")
        if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return Response(status_code=304, headers=headers)
        start, end, status = 0, size - 1, 200
        rng = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if rng is not None and (if_range is None or if_range.strip() == etag):
            try:
                parsed = parse_range(rng, size)
            except ValueError as exc:
                if str(exc) == "unsatisfiable":
                    raise bad(416, f"range {rng!r} is outside the {size}-byte archive",
                              {"Content-Range": f"bytes */{size}", **headers}) from None
                raise bad(400, f"malformed Range header {rng!r}: expected 'bytes=START-[END]' or 'bytes=-N'") \
                    from None
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type="application/x-tar")
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by _file_chunks
        except FileNotFoundError:
            raise bad(410, f"bundle {bundle_id} is registered but its archive is missing on the server") from None
        return StreamingResponse(_file_chunks(fh, start, length), status_code=status, headers=headers,
                                 media_type="application/x-tar")

    @app.post("/v1/bundles", status_code=201)
    async def publish_bundle(request: Request, channel: str = Query(...), target: str | None = None) -> Response:
        require_token(request)
        pointer = (request.headers.get("x-channel-pointer"), request.headers.get("x-channel-pointer-signature"))
        check_channel(channel)
        if target is not None:
            check_name("target", target)
        ctype = (request.headers.get("content-type") or "application/x-tar").split(";")[0].strip().lower()
        if ctype not in ("application/x-tar", "application/octet-stream"):
            raise bad(415, f"upload the bundle .tar as application/x-tar (got {ctype})")
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise bad(400, f"invalid Content-Length {declared!r}")
            if int(declared) > cfg.max_bundle_bytes:
                raise bad(413, f"bundle of {int(declared)} bytes exceeds this registry's limit of "
                               f"{cfg.max_bundle_bytes} bytes")
        tmp = store.incoming / f"{uuid.uuid4().hex}.part"
        h = hashlib.sha256()
        n = 0
        try:
            with open(tmp, "wb") as fh:
                try:
                    async for chunk in request.stream():
                        n += len(chunk)
                        if n > cfg.max_bundle_bytes:
                            raise bad(413, f"bundle exceeds this registry's limit of {cfg.max_bundle_bytes} bytes")
                        h.update(chunk)
                        fh.write(chunk)
                except ClientDisconnect:
                    raise bad(400, f"upload cut short after {n} bytes") from None
                fh.flush()
                os.fsync(fh.fileno())
            if n == 0:
                raise bad(400, "empty upload: send the bundle .tar as the request body")
            if declared is not None and int(declared) != n:
                raise bad(400, f"upload has {n} bytes, Content-Length said {declared}")
            result = await run_in_threadpool(_accept, tmp, h.hexdigest(), n, channel, target, pointer)
        finally:
            tmp.unlink(missing_ok=True)
        status, body = result
        return JSONResponse(body, status_code=status)

    def _accept(tmp: Path, digest: str, size: int, channel: str, target: str | None,
                pointer: tuple[str | None, str | None]) -> tuple[int, dict]:
        try:
            manifest = _verify_upload(tmp, keys)
        except BundleError as exc:
            raise bad(422, f"bundle refused: {exc}") from None
        if target is not None and manifest.target != target:
            raise bad(409, f"the bundle is for target {manifest.target!r}, not {target!r}")
        if not NAME_RE.match(manifest.target):
            raise bad(422, f"bundle target {manifest.target!r} is not a valid target name")
        raw = _manifest_bytes(tmp)
        bundle_id = _bundle_id(raw)
        dest = store.blob(bundle_id)
        now = _now()
        with store.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            signed = check_pointer(con, manifest.target, channel, bundle_id, *pointer)
            row = store.bundle_row(con, bundle_id)
            created = row is None or not dest.is_file()
            if created:
                os.replace(tmp, dest)
                fsync_dir(store.blobs)
                con.execute("INSERT OR REPLACE INTO bundles VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (bundle_id, manifest.target, str(manifest.get("created_at", "")), now, size, digest,
                             manifest.key_id, raw))
            last = store.latest(con, manifest.target, channel)
            if last is None or last["bundle_id"] != bundle_id or signed is not None:
                con.execute("INSERT INTO releases (target, channel, bundle_id, at, how, pointer, pointer_sig, "
                            "pointer_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (manifest.target, channel, bundle_id, now, "publish", *(signed or (None, None, None))))
            body = _describe(store, con, store.bundle_row(con, bundle_id))
        body["created"] = created
        return (201 if created else 200), body

    @app.get("/v1/targets/{target}/channels/{channel}")
    def channel_latest(target: str, channel: str) -> dict:
        check_name("target", target)
        check_channel(channel)
        with store.connect() as con:
            rel = store.latest(con, target, channel)
            if rel is None:
                raise bad(404, f"nothing published for target {target!r} on channel {channel!r}")
            body = _describe(store, con, store.bundle_row(con, rel["bundle_id"]))
        body.update(channel=channel, released_at=rel["at"], release=rel["seq"])
        if rel["pointer"] is not None:
            body.update(encode_pointer(bytes(rel["pointer"]), bytes(rel["pointer_sig"])))
        return body

    class Promote(BaseModel):
        model_config = ConfigDict(extra="forbid")
        bundle: str = Field(pattern=ID_RE.pattern)
        pointer: str | None = Field(default=None, max_length=4096)
        signature: str | None = Field(default=None, max_length=200)

    @app.put("/v1/targets/{target}/channels/{channel}")
    def channel_set(target: str, channel: str, request: Request, body: Promote = Body(...)) -> dict:
        require_token(request)
        check_name("target", target)
        check_channel(channel)
        with store.connect() as con:
            row = store.bundle_row(con, body.bundle)
            if row is None:
                raise bad(404, f"no bundle {body.bundle}")
            if row["target"] != target:
                raise bad(409, f"bundle {body.bundle} is for target {row['target']!r}, not {target!r}")
            signed = check_pointer(con, target, channel, body.bundle, body.pointer, body.signature)
            con.execute("INSERT INTO releases (target, channel, bundle_id, at, how, pointer, pointer_sig, "
                        "pointer_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (target, channel, body.bundle, _now(), "set", *(signed or (None, None, None))))
            out = _describe(store, con, row)
        out["channel"] = channel
        return out

    class Checkin(BaseModel):
        model_config = ConfigDict(extra="forbid")
        target: str = Field(pattern=NAME_RE.pattern)
        channel: str = Field(pattern=NAME_RE.pattern)
        bundle: str | None = Field(default=None, pattern=ID_RE.pattern)
        status: str = Field(pattern="^(" + "|".join(CHECKIN_STATUSES) + ")$")
        detail: str = Field(default="", max_length=1000)

    def check_device_id(device_id: str) -> str:
        if not DEVICE_RE.match(device_id):
            raise bad(400, f"invalid device id {device_id!r}: letters, digits, '.', '_' and '-', at most 64")
        return device_id

    @app.post("/v1/devices/{device_id}/checkin", status_code=201)
    def checkin(device_id: str, request: Request, body: Checkin = Body(...)) -> dict:
        check_device_id(device_id)
        enrolled = require_device(request, device_id)
        try:
            body.detail.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(422, "invalid request: detail: not valid Unicode text (lone surrogate)") from None
        check_channel(body.channel)
        with store.connect() as con:
            if body.bundle is not None and store.bundle_row(con, body.bundle) is None and body.status != "failed":
                raise bad(404, f"no bundle {body.bundle} in this registry")
            at = _now()
            peer = request.client.host if request.client else ""
            con.execute("INSERT INTO checkins (device_id, target, channel, bundle_id, status, detail, at, peer, "
                        "enrolled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (device_id, body.target, body.channel, body.bundle, body.status, body.detail, at, peer,
                         int(enrolled)))
        return {"device_id": device_id, "recorded_at": at, "enrolled": enrolled}

    @app.post("/v1/devices/{device_id}/token", status_code=201)
    def enrol(device_id: str, request: Request) -> dict:
        require_token(request)
        check_device_id(device_id)
        token = secrets.token_urlsafe(32)
        at = _now()
        with store.connect() as con:
            con.execute("INSERT OR REPLACE INTO device_tokens (device_id, token_sha256, enrolled_at) VALUES (?, ?, ?)",
                        (device_id, hashlib.sha256(token.encode()).hexdigest(), at))
        return {"device_id": device_id, "token": token, "enrolled_at": at}

    @app.delete("/v1/devices/{device_id}/token")
    def withdraw(device_id: str, request: Request) -> dict:
        require_token(request)
        check_device_id(device_id)
        with store.connect() as con:
            gone = con.execute("DELETE FROM device_tokens WHERE device_id = ?", (device_id,)).rowcount
        if not gone:
            raise bad(404, f"device {device_id} is not enrolled")
        return {"device_id": device_id, "enrolled": False}

    @app.get("/v1/devices")
    def devices(request: Request) -> dict:
        require_token(request)
        with store.connect() as con:
            rows = con.execute(
                "SELECT c.* FROM checkins c JOIN (SELECT device_id, MAX(seq) AS seq FROM checkins GROUP BY device_id) m "
                "ON c.seq = m.seq ORDER BY c.device_id").fetchall()
        return {"devices": [{"device_id": r["device_id"], "target": r["target"], "channel": r["channel"],
                             "bundle": r["bundle_id"], "status": r["status"], "detail": r["detail"], "at": r["at"],
                             "enrolled": bool(r["enrolled"])}
                            for r in rows]}

    from .webdemo import RegistryBundleSource, add_demo_routes

    add_demo_routes(app, RegistryBundleSource(store, list(cfg.trusted_keys), cfg.root), cfg.demo)
    return app


# Running it ----------------------------------------------------------------------------------------------------


def default_token_path() -> Path:
    from edgekws.bundle import edgekws_home

    return edgekws_home() / "registry.token"


def read_token(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"token file not found: {p}")
    token = p.read_text().strip()
    if not token:
        raise ValueError(f"token file {p} is empty")
    return token


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
    ucfg = uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug",
                          timeout_keep_alive=5, lifespan="off", **ssl)
    return uvicorn.Server(ucfg)


def _uvicorn_server(cfg: RegistryConfig, log_level: str, tls: tuple[str, str] | None = None) -> Any:
    return _uvicorn_server_for(create_app(cfg), log_level, tls)


def serve(cfg: RegistryConfig, host: str = "127.0.0.1", port: int = 8710, *, log_level: str = "warning",
          on_ready: Callable[[str], None] | None = None, tls: tuple[str, str] | None = None) -> None:
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
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="edgekws-registry", daemon=True)
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


# Client: publishing ----------------------------------------------------------------------------------------------


def _check_url(server: str) -> str:
    u = urllib.parse.urlsplit(server)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise RegistryError(f"server URL must look like http://HOST:PORT, got {server!r}")
    return server.rstrip("/")


def _error_detail(status: int, body: bytes, reason: str = "") -> str:
    try:
        detail = json.loads(body).get("detail")
        if isinstance(detail, list):  # FastAPI validation errors
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail)
        return str(detail)
    except Exception:
        return reason or f"HTTP {status}"


def _await_continue(sock: socket.socket, timeout: float) -> bool:
    """After sending headers with ``Expect: 100-continue``: True to send the body (the server said 100 Continue, or
    stayed silent for ``timeout``), False when it already answered (a refusal that must be read, not written over).
    The interim ``100`` response is consumed; a final one is left for :meth:`HTTPConnection.getresponse`."""
    import select

    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        return True
    head = sock.recv(4096, socket.MSG_PEEK)
    if re.match(rb"^HTTP/1\.[01] 100[ \r]", head):
        end = head.find(b"\r\n\r\n")
        if end < 0:  # an interim response split across packets: wait for the rest once
            time.sleep(0.05)
            head = sock.recv(4096, socket.MSG_PEEK)
            end = head.find(b"\r\n\r\n")
        if end >= 0:
            sock.recv(end + 4)
            return True
    return False


def _post_file(url: str, path: Path, headers: dict[str, str], timeout: float) -> tuple[int, bytes, str]:
    """POST a file with ``Expect: 100-continue``, so a refusal sent before the body (bad token, too large, unknown
    channel) is read instead of ending in a broken pipe. Returns (status, body, reason)."""
    import http.client

    u = urllib.parse.urlsplit(url)
    plain = u.scheme == "http"
    cls = http.client.HTTPConnection if plain else http.client.HTTPSConnection
    con = cls(u.hostname, u.port, timeout=timeout)
    try:
        con.putrequest("POST", u.path + (f"?{u.query}" if u.query else ""), skip_accept_encoding=True)
        for k, v in headers.items():
            con.putheader(k, v)
        if plain:
            con.putheader("Expect", "100-continue")
        con.endheaders()
        if not plain or _await_continue(con.sock, 3.0):
            with open(path, "rb") as fh:
                try:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        con.send(block)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server answered early and closed; its answer is read below
        resp = con.getresponse()
        return resp.status, resp.read(), resp.reason
    finally:
        con.close()


def _manifest_of(src: Path) -> bytes:
    """The exact manifest.json bytes of a bundle folder or archive."""
    if src.is_dir():
        return (src / "manifest.json").read_bytes()
    try:
        with tarfile.open(src, mode="r:") as tf:
            f = tf.extractfile("manifest.json")
            if f is None:
                raise KeyError("manifest.json")
            return f.read(1 << 20)
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise BundleError(f"{src}: no readable manifest.json ({exc})") from None


def _signed_pointer(base: str, target: str, channel: str, bundle_id: str, pointer_key: Any, valid_days: float,
                    timeout: float) -> dict[str, str]:
    """A pointer for ``bundle_id`` one version above the channel's current one, signed with ``pointer_key``."""
    try:
        current = _json_request("GET", f"{base}/v1/targets/{target}/channels/{channel}", None, None, timeout)
    except RegistryError as exc:
        if exc.status != 404:
            raise
        current = {}
    version = 0
    if current.get("pointer"):
        try:
            version = int(json.loads(decode_pointer(current["pointer"], current.get("signature", ""))[0])["version"])
        except (PointerError, ValueError, KeyError, TypeError):
            raise RegistryError(f"{base}: the current pointer of {target}/{channel} is unreadable") from None
    try:
        data, sig = make_pointer(load_private_key(pointer_key) if not hasattr(pointer_key, "sign") else pointer_key,
                                 target, channel, bundle_id, version + 1, valid_days=valid_days)
    except (ValueError, TypeError) as exc:
        raise RegistryError(f"cannot sign the channel pointer: {exc}") from None
    return encode_pointer(data, sig)


def publish(bundle: str | os.PathLike, server: str, channel: str = "stable", token: str | None = None, *,
            target: str | None = None, timeout: float = 120.0, pointer_key: Any = None,
            valid_days: float = DEFAULT_VALID_DAYS) -> dict:
    """Upload a bundle (directory or ``.tar``) to a registry's ``channel``; return the registry's description.

    A directory is verified (integrity) and packed into a temporary tar first. ``pointer_key`` (the signing key,
    object or PEM path) also releases it with a signed channel pointer valid for ``valid_days``. Raises
    :class:`RegistryError` with the server's reason on any refusal, :class:`BundleError` for a damaged local bundle.
    """
    import tempfile

    base = _check_url(server)
    if not NAME_RE.match(channel):
        raise RegistryError(f"invalid channel name {channel!r}")
    src = Path(bundle)
    if not src.exists():
        raise FileNotFoundError(f"no bundle at {src}")
    token = _token_or_default(token)
    with tempfile.TemporaryDirectory(prefix="edgekws-publish-") as tmp:
        tar = src if src.is_file() else pack_bundle(src, Path(tmp) / "bundle.tar")
        query = {"channel": channel, **({"target": target} if target else {})}
        url = f"{base}/v1/bundles?{urllib.parse.urlencode(query)}"
        headers = {"Content-Type": "application/x-tar", "Content-Length": str(tar.stat().st_size),
                   "Authorization": f"Bearer {token}"}
        if pointer_key is not None:
            raw = _manifest_of(tar)
            try:
                manifest_target = str(json.loads(raw)["target"])
            except (ValueError, KeyError, TypeError):
                raise BundleError(f"{src}: manifest.json names no target") from None
            signed = _signed_pointer(base, manifest_target, channel, _bundle_id(raw),
                                     pointer_key, valid_days, min(timeout, 30.0))
            headers.update({"X-Channel-Pointer": signed["pointer"], "X-Channel-Pointer-Signature": signed["signature"]})
        try:
            status, body, reason = _post_file(url, tar, headers, timeout)
        except OSError as exc:
            raise RegistryError(f"cannot reach {server}: {exc}") from None
    if status >= 400:
        raise RegistryError(f"{server} refused the bundle ({status}): {_error_detail(status, body, reason)}", status)
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        raise RegistryError(f"{server} answered {status} without JSON: is it an edgekws registry?", status) from None


def _token_or_default(token: str | None) -> str:
    if token is None:
        token = os.environ.get(TOKEN_ENV) or (read_token(default_token_path())
                                              if default_token_path().is_file() else None)
    if not token:
        raise RegistryError(f"no publish token: pass one, set ${TOKEN_ENV} or put it in {default_token_path()}")
    return token


def _json_request(method: str, url: str, token: str | None, body: dict | None, timeout: float) -> dict:
    import http.client

    u = urllib.parse.urlsplit(url)
    cls = http.client.HTTPConnection if u.scheme == "http" else http.client.HTTPSConnection
    con = cls(u.hostname, u.port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Accept": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        con.request(method, u.path + (f"?{u.query}" if u.query else ""), body=data, headers=headers)
        resp = con.getresponse()
        status, raw, reason = resp.status, resp.read(), resp.reason
    except OSError as exc:
        raise RegistryError(f"cannot reach {u.scheme}://{u.netloc}: {exc}") from None
    finally:
        con.close()
    if status >= 400:
        raise RegistryError(f"{method} {u.path} refused ({status}): {_error_detail(status, raw, reason)}", status)
    return json.loads(raw)


def set_channel(server: str, target: str, channel: str, bundle_id: str, token: str | None = None, *,
                timeout: float = 30.0, pointer_key: Any = None, valid_days: float = DEFAULT_VALID_DAYS) -> dict:
    """Point ``target``/``channel`` at a stored bundle (promote beta to stable, or roll a channel back).

    ``pointer_key`` (the signing key) sends a signed channel pointer with it: devices that have seen signed
    pointers follow only signed ones, and only a signed pointer sends them back to an older bundle. Pointing a
    channel again at the bundle it serves re-issues its pointer (a new version and expiry).
    """
    base = _check_url(server)
    for kind, v in (("target", target), ("channel", channel)):
        if not NAME_RE.match(v):
            raise RegistryError(f"invalid {kind} {v!r}")
    if not ID_RE.match(bundle_id):
        raise RegistryError(f"invalid bundle id {bundle_id!r}: 16 lower-case hex digits")
    token = _token_or_default(token)
    body: dict[str, Any] = {"bundle": bundle_id}
    if pointer_key is not None:
        body.update(_signed_pointer(base, target, channel, bundle_id, pointer_key, valid_days, timeout))
    return _json_request("PUT", f"{base}/v1/targets/{target}/channels/{channel}", token, body, timeout)


def enrol_device(server: str, device_id: str, token: str | None = None, *, timeout: float = 30.0) -> dict:
    """Enrol a device (publish token needed): ``{"device_id", "token", "enrolled_at"}``; the token is shown once
    (the registry keeps only its sha256) and replaces any earlier one of that device."""
    if not DEVICE_RE.match(device_id):
        raise RegistryError(f"invalid device id {device_id!r}: letters, digits, '.', '_' and '-', at most 64")
    return _json_request("POST", f"{_check_url(server)}/v1/devices/{device_id}/token", _token_or_default(token),
                         None, timeout)


def list_devices(server: str, token: str | None = None, *, timeout: float = 30.0) -> list[dict]:
    """The last check-in of every device."""
    return _json_request("GET", f"{_check_url(server)}/v1/devices", _token_or_default(token), None,
                         timeout)["devices"]
