"""The bundle registry's HTTP routes (see :mod:`edgekws.server.registry` for the API and the storage).

:class:`Checks` holds what every route needs (configuration, storage, trusted keys) and the request checks
(publish token, names, ids, device tokens, signed channel pointers); ``add_*_routes`` register one group of routes
each on a FastAPI application: bundles (list, show, manifest, download with ranges, publish), channels (newest
release, point), devices (check-in, enrol, withdraw, list).
"""

import base64
import hashlib
import hmac
import os
import secrets
import sqlite3
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Body, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from edgekws.bundle import BundleError
from edgekws.bundle import bundle_id as _bundle_id
from edgekws.channel import PointerError, decode_pointer, encode_pointer, parse_time, verify_pointer
from edgekws.fileio import fsync_dir

from .registry import (
    CHECKIN_STATUSES,
    DEVICE_RE,
    ID_RE,
    NAME_RE,
    RegistryConfig,
    _describe,
    _file_chunks,
    _manifest_bytes,
    _now,
    _safe_text,
    _Store,
    _verify_upload,
    parse_range,
)

__all__ = ["Checks", "add_bundle_routes", "add_channel_routes", "add_device_routes", "add_error_handlers"]


class Checks:
    """Configuration, storage and trusted keys, and the checks requests pass before a route acts."""

    def __init__(self, cfg: RegistryConfig, store: _Store, keys: list[Any]) -> None:
        self.cfg, self.store, self.keys = cfg, store, keys

    def bad(self, status: int, detail: str, headers: dict[str, str] | None = None) -> Any:
        return HTTPException(status_code=status, detail=detail, headers=headers)

    def require_token(self, request: Request) -> None:
        auth = request.headers.get("authorization")
        if not auth:
            raise self.bad(401, "missing token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self.bad(
                401, "malformed Authorization header: expected 'Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
        if not self.cfg.tokens:
            raise self.bad(403, "this registry accepts no writes (it was started without a publish token)")
        given = token.strip().encode()
        if not any(hmac.compare_digest(given, t.encode()) for t in self.cfg.tokens):
            raise self.bad(403, "invalid token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def check_name(self, kind: str, value: str) -> str:
        if not NAME_RE.match(value):
            raise self.bad(400, f"invalid {kind} {value!r}: lower-case letters, digits, '-' and '_', at most 32")
        return value

    def check_channel(self, value: str) -> str:
        self.check_name("channel", value)
        if value not in self.cfg.channels:
            raise self.bad(404, f"unknown channel {value!r}; this registry has: {', '.join(self.cfg.channels)}")
        return value

    def check_id(self, value: str) -> str:
        if not ID_RE.match(value):
            raise self.bad(400, f"invalid bundle id {value!r}: 16 lower-case hex digits")
        return value

    def bearer(self, request: Request) -> str | None:
        auth = request.headers.get("authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self.bad(
                401, "malformed Authorization header: expected 'Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
        return token.strip()

    def require_device(self, request: Request, device_id: str) -> bool:
        """Check a check-in's device token; True for an enrolled device, False for an allowed anonymous one."""
        token = self.bearer(request)
        with self.store.connect() as con:
            row = con.execute("SELECT token_sha256 FROM device_tokens WHERE device_id = ?", (device_id,)).fetchone()
        if row is None:
            if token is None and self.cfg.anonymous_checkins:
                return False
            if token is not None:
                raise self.bad(403, f"device {device_id} is not enrolled here: its token is not valid")
            raise self.bad(
                401,
                f"device {device_id} is not enrolled: check-ins need a device token (the registry's "
                f"operator runs `edgekws server enrol {device_id}`)",
                {"WWW-Authenticate": "Bearer"},
            )
        if token is None:
            raise self.bad(
                401, f"device {device_id} is enrolled: send its device token", {"WWW-Authenticate": "Bearer"}
            )
        given = hashlib.sha256(token.encode("utf-8", "backslashreplace")).hexdigest()
        if not hmac.compare_digest(given, row["token_sha256"]):
            raise self.bad(
                403, f"invalid device token for {device_id}", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        return True

    def check_pointer(
        self,
        con: sqlite3.Connection,
        target: str,
        channel: str,
        bundle_id: str,
        pointer: str | None,
        signature: str | None,
    ) -> tuple[bytes, bytes, int] | None:
        """Verify a signed channel pointer for a new release; None when none is given (and none is needed)."""
        last = self.store.pointer_version(con, target, channel)
        if pointer is None and signature is None:
            if last is not None:
                raise self.bad(
                    409,
                    f"releases of {target}/{channel} carry signed channel pointers (version {last}): sign this one too",
                )
            return None
        try:
            data, sig = decode_pointer(pointer, signature)
            doc, why = None, "no trusted key"
            for key in self.keys:
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
            raise self.bad(422, f"channel pointer refused: {exc}") from None
        named = (doc["target"], doc["channel"], doc["bundle"])
        if named != (target, channel, bundle_id):
            raise self.bad(
                409,
                f"the signed pointer names {'/'.join(named[:2])} -> {named[2]}, not {target}/{channel} -> {bundle_id}",
            )
        if parse_time(doc["expires_at"]) <= datetime.now(timezone.utc):
            raise self.bad(422, f"the signed pointer expired at {doc['expires_at']}")
        if last is not None and doc["version"] <= last:
            raise self.bad(
                409, f"pointer version {doc['version']} is not newer than version {last} of {target}/{channel}"
            )
        return data, sig, int(doc["version"])

    def check_device_id(self, device_id: str) -> str:
        if not DEVICE_RE.match(device_id):
            raise self.bad(400, f"invalid device id {device_id!r}: letters, digits, '.', '_' and '-', at most 64")
        return device_id


def add_error_handlers(app: Any) -> None:
    """Refusals as ``{"detail": ...}``, never echoing the request."""

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


def add_bundle_routes(app: Any, c: Checks) -> None:
    """``/healthz`` and ``/v1/bundles``: list, show, manifest, download (ETag, Range), publish."""

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "channels": list(c.cfg.channels)}

    @app.get("/v1/bundles")
    def list_bundles(
        target: str | None = None, channel: str | None = None, limit: int = Query(100, ge=1, le=1000)
    ) -> dict:
        if target is not None:
            c.check_name("target", target)
        if channel is not None:
            c.check_channel(channel)
        with c.store.connect() as con:
            if channel is not None:
                sql = (
                    "SELECT DISTINCT b.* FROM bundles b JOIN releases r ON r.bundle_id = b.id WHERE r.channel = ?"
                    + (" AND b.target = ?" if target else "")
                    + " ORDER BY b.published_at DESC LIMIT ?"
                )
                args: tuple = (channel, target, limit) if target else (channel, limit)
            else:
                sql = (
                    "SELECT * FROM bundles"
                    + (" WHERE target = ?" if target else "")
                    + " ORDER BY published_at DESC LIMIT ?"
                )
                args = (target, limit) if target else (limit,)
            rows = con.execute(sql, args).fetchall()
            return {"bundles": [_describe(c.store, con, r) for r in rows]}

    @app.get("/v1/bundles/{bundle_id}")
    def show_bundle(bundle_id: str) -> dict:
        c.check_id(bundle_id)
        with c.store.connect() as con:
            row = c.store.bundle_row(con, bundle_id)
            if row is None:
                raise c.bad(404, f"no bundle {bundle_id}")
            return _describe(c.store, con, row, with_manifest=True)

    @app.get("/v1/bundles/{bundle_id}/manifest.json")
    def bundle_manifest(bundle_id: str) -> Response:
        c.check_id(bundle_id)
        with c.store.connect() as con:
            row = c.store.bundle_row(con, bundle_id)
        if row is None:
            raise c.bad(404, f"no bundle {bundle_id}")
        raw = bytes(row["manifest"])
        return Response(
            raw,
            media_type="application/json",
            headers={
                "ETag": f'"{hashlib.sha256(raw).hexdigest()}"',
                "Cache-Control": "public, max-age=31536000, immutable",
            },
        )

    @app.api_route("/v1/bundles/{bundle_id}/bundle.tar", methods=["GET", "HEAD"])
    def download(bundle_id: str, request: Request) -> Response:
        c.check_id(bundle_id)
        with c.store.connect() as con:
            row = c.store.bundle_row(con, bundle_id)
        if row is None:
            raise c.bad(404, f"no bundle {bundle_id}")
        path = c.store.blob(bundle_id)
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
                    raise c.bad(
                        416,
                        f"range {rng!r} is outside the {size}-byte archive",
                        {"Content-Range": f"bytes */{size}", **headers},
                    ) from None
                raise c.bad(
                    400, f"malformed Range header {rng!r}: expected 'bytes=START-[END]' or 'bytes=-N'"
                ) from None
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
            raise c.bad(410, f"bundle {bundle_id} is registered but its archive is missing on the server") from None
        return StreamingResponse(
            _file_chunks(fh, start, length), status_code=status, headers=headers, media_type="application/x-tar"
        )

    @app.post("/v1/bundles", status_code=201)
    async def publish_bundle(request: Request, channel: str = Query(...), target: str | None = None) -> Response:
        c.require_token(request)
        pointer = (request.headers.get("x-channel-pointer"), request.headers.get("x-channel-pointer-signature"))
        c.check_channel(channel)
        if target is not None:
            c.check_name("target", target)
        ctype = (request.headers.get("content-type") or "application/x-tar").split(";")[0].strip().lower()
        if ctype not in ("application/x-tar", "application/octet-stream"):
            raise c.bad(415, f"upload the bundle .tar as application/x-tar (got {ctype})")
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise c.bad(400, f"invalid Content-Length {declared!r}")
            if int(declared) > c.cfg.max_bundle_bytes:
                raise c.bad(
                    413,
                    f"bundle of {int(declared)} bytes exceeds this registry's limit of {c.cfg.max_bundle_bytes} bytes",
                )
        tmp = c.store.incoming / f"{uuid.uuid4().hex}.part"
        h = hashlib.sha256()
        n = 0
        try:
            with open(tmp, "wb") as fh:
                try:
                    async for chunk in request.stream():
                        n += len(chunk)
                        if n > c.cfg.max_bundle_bytes:
                            raise c.bad(413, f"bundle exceeds this registry's limit of {c.cfg.max_bundle_bytes} bytes")
                        h.update(chunk)
                        fh.write(chunk)
                except ClientDisconnect:
                    raise c.bad(400, f"upload cut short after {n} bytes") from None
                fh.flush()
                os.fsync(fh.fileno())
            if n == 0:
                raise c.bad(400, "empty upload: send the bundle .tar as the request body")
            if declared is not None and int(declared) != n:
                raise c.bad(400, f"upload has {n} bytes, Content-Length said {declared}")
            result = await run_in_threadpool(_accept, tmp, h.hexdigest(), n, channel, target, pointer)
        finally:
            tmp.unlink(missing_ok=True)
        status, body = result
        return JSONResponse(body, status_code=status)

    def _accept(
        tmp: Path, digest: str, size: int, channel: str, target: str | None, pointer: tuple[str | None, str | None]
    ) -> tuple[int, dict]:
        try:
            manifest = _verify_upload(tmp, c.keys)
        except BundleError as exc:
            raise c.bad(422, f"bundle refused: {exc}") from None
        if target is not None and manifest.target != target:
            raise c.bad(409, f"the bundle is for target {manifest.target!r}, not {target!r}")
        if not NAME_RE.match(manifest.target):
            raise c.bad(422, f"bundle target {manifest.target!r} is not a valid target name")
        raw = _manifest_bytes(tmp)
        bundle_id = _bundle_id(raw)
        dest = c.store.blob(bundle_id)
        now = _now()
        with c.store.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            signed = c.check_pointer(con, manifest.target, channel, bundle_id, *pointer)
            row = c.store.bundle_row(con, bundle_id)
            created = row is None or not dest.is_file()
            if created:
                os.replace(tmp, dest)
                fsync_dir(c.store.blobs)
                con.execute(
                    "INSERT OR REPLACE INTO bundles VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        bundle_id,
                        manifest.target,
                        str(manifest.get("created_at", "")),
                        now,
                        size,
                        digest,
                        manifest.key_id,
                        raw,
                    ),
                )
            last = c.store.latest(con, manifest.target, channel)
            if last is None or last["bundle_id"] != bundle_id or signed is not None:
                con.execute(
                    "INSERT INTO releases (target, channel, bundle_id, at, how, pointer, pointer_sig, "
                    "pointer_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (manifest.target, channel, bundle_id, now, "publish", *(signed or (None, None, None))),
                )
            body = _describe(c.store, con, c.store.bundle_row(con, bundle_id))
        body["created"] = created
        return (201 if created else 200), body


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(pattern=ID_RE.pattern)
    pointer: str | None = Field(default=None, max_length=4096)
    signature: str | None = Field(default=None, max_length=200)


def add_channel_routes(app: Any, c: Checks) -> None:
    """``/v1/targets/{target}/channels/{channel}``: the newest release (what devices poll), point a channel."""

    @app.get("/v1/targets/{target}/channels/{channel}")
    def channel_latest(target: str, channel: str) -> dict:
        c.check_name("target", target)
        c.check_channel(channel)
        with c.store.connect() as con:
            rel = c.store.latest(con, target, channel)
            if rel is None:
                raise c.bad(404, f"nothing published for target {target!r} on channel {channel!r}")
            body = _describe(c.store, con, c.store.bundle_row(con, rel["bundle_id"]))
        body.update(channel=channel, released_at=rel["at"], release=rel["seq"])
        if rel["pointer"] is not None:
            body.update(encode_pointer(bytes(rel["pointer"]), bytes(rel["pointer_sig"])))
        return body

    @app.put("/v1/targets/{target}/channels/{channel}")
    def channel_set(target: str, channel: str, request: Request, body: Promote = Body(...)) -> dict:
        c.require_token(request)
        c.check_name("target", target)
        c.check_channel(channel)
        with c.store.connect() as con:
            row = c.store.bundle_row(con, body.bundle)
            if row is None:
                raise c.bad(404, f"no bundle {body.bundle}")
            if row["target"] != target:
                raise c.bad(409, f"bundle {body.bundle} is for target {row['target']!r}, not {target!r}")
            signed = c.check_pointer(con, target, channel, body.bundle, body.pointer, body.signature)
            con.execute(
                "INSERT INTO releases (target, channel, bundle_id, at, how, pointer, pointer_sig, "
                "pointer_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (target, channel, body.bundle, _now(), "set", *(signed or (None, None, None))),
            )
            out = _describe(c.store, con, row)
        out["channel"] = channel
        return out


class Checkin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(pattern=NAME_RE.pattern)
    channel: str = Field(pattern=NAME_RE.pattern)
    bundle: str | None = Field(default=None, pattern=ID_RE.pattern)
    status: str = Field(pattern="^(" + "|".join(CHECKIN_STATUSES) + ")$")
    detail: str = Field(default="", max_length=1000)


def add_device_routes(app: Any, c: Checks) -> None:
    """``/v1/devices``: check-ins, enrolment and withdrawal of device tokens, the list of devices."""

    @app.post("/v1/devices/{device_id}/checkin", status_code=201)
    def checkin(device_id: str, request: Request, body: Checkin = Body(...)) -> dict:
        c.check_device_id(device_id)
        enrolled = c.require_device(request, device_id)
        try:
            body.detail.encode("utf-8")
        except UnicodeEncodeError:
            raise c.bad(422, "invalid request: detail: not valid Unicode text (lone surrogate)") from None
        c.check_channel(body.channel)
        with c.store.connect() as con:
            if body.bundle is not None and c.store.bundle_row(con, body.bundle) is None and body.status != "failed":
                raise c.bad(404, f"no bundle {body.bundle} in this registry")
            at = _now()
            peer = request.client.host if request.client else ""
            con.execute(
                "INSERT INTO checkins (device_id, target, channel, bundle_id, status, detail, at, peer, "
                "enrolled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (device_id, body.target, body.channel, body.bundle, body.status, body.detail, at, peer, int(enrolled)),
            )
        return {"device_id": device_id, "recorded_at": at, "enrolled": enrolled}

    @app.post("/v1/devices/{device_id}/token", status_code=201)
    def enrol(device_id: str, request: Request) -> dict:
        c.require_token(request)
        c.check_device_id(device_id)
        token = secrets.token_urlsafe(32)
        at = _now()
        with c.store.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO device_tokens (device_id, token_sha256, enrolled_at) VALUES (?, ?, ?)",
                (device_id, hashlib.sha256(token.encode()).hexdigest(), at),
            )
        return {"device_id": device_id, "token": token, "enrolled_at": at}

    @app.delete("/v1/devices/{device_id}/token")
    def withdraw(device_id: str, request: Request) -> dict:
        c.require_token(request)
        c.check_device_id(device_id)
        with c.store.connect() as con:
            gone = con.execute("DELETE FROM device_tokens WHERE device_id = ?", (device_id,)).rowcount
        if not gone:
            raise c.bad(404, f"device {device_id} is not enrolled")
        return {"device_id": device_id, "enrolled": False}

    @app.get("/v1/devices")
    def devices(request: Request) -> dict:
        c.require_token(request)
        with c.store.connect() as con:
            rows = con.execute(
                "SELECT c.* FROM checkins c JOIN (SELECT device_id, MAX(seq) AS seq FROM checkins GROUP BY device_id) m "
                "ON c.seq = m.seq ORDER BY c.device_id"
            ).fetchall()
        return {
            "devices": [
                {
                    "device_id": r["device_id"],
                    "target": r["target"],
                    "channel": r["channel"],
                    "bundle": r["bundle_id"],
                    "status": r["status"],
                    "detail": r["detail"],
                    "at": r["at"],
                    "enrolled": bool(r["enrolled"]),
                }
                for r in rows
            ]
        }
