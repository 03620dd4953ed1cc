"""Over-the-air updates on the device: pull, verify, smoke-test, switch, roll back. Torch-free, stdlib HTTP.

Install root layout (``root``, default ``$EDGEKWS_DEVICE_HOME/bundles``)::

    versions/<id>/            verified bundle directories (id = first 16 hex of sha256(manifest.json))
    current -> versions/<id>  the bundle in use (a relative symlink, swapped atomically with os.replace)
    previous -> versions/<id> what ``rollback`` returns to
    downloads/<id>.tar.part   a download in progress (resumed with a Range request); <id>.json its ETag/sha256
    history.json              what happened, newest last (written atomically)
    refused.json              bundles that failed verification or the smoke test here: not fetched again
    channels.json             per target/channel, the highest signed channel pointer seen (version, expiry)
    device_id                 this device's name in check-ins (random, made once)
    device_token              this device's check-in token, from ``edgekws server enrol`` (optional)
    .lock                     held (flock) while an update or rollback runs

Every step before the switch works beside the bundle in use, and the switch is one ``rename`` of a symlink, so a
kill at any moment leaves ``current`` pointing at a complete, verified bundle: the old one or the new one.

An update: ask the registry for the newest release of ``target``/``channel`` -> download (resuming a partial file
with ``Range`` + ``If-Range``) -> check the archive's sha256 against the registry's -> verify signature and every
file's sha256 against the pinned public key while unpacking into ``versions/<id>`` (nothing is written before the
check passes) -> carry local fine-tuned heads over when the embedding graph is unchanged -> smoke test (a separate
process loads the new bundle's graphs and runs one inference, with a timeout) -> switch -> check in.

What the update path protects against: a bundle that was not signed by the pinned key or was altered after
signing (refused before anything is written); a damaged or truncated download; a bundle for another target; a
bundle whose graphs do not load (smoke test); a kill at any moment. Rollback: a bundle whose signed ``created_at``
is older than the bundle in use is not installed unless a person asks (``rollback``, ``allow_downgrade``) or the
channel's pointer is signed for it. Freeze and replay, once the signer releases with signed channel pointers
(:mod:`edgekws.channel`): a pointer version lower than one seen before, an expired pointer, and an unsigned answer
on a channel that was signed before are refused, so a registry that keeps serving stale metadata is noticed.

Local state (labels, clips, fine-tuned heads) lives where :func:`edgekws.device.model.state_dir_for` puts it:
``<state_root>/<bundle id>/``. When the new bundle's embedding graph has the same sha256 as the current one's, the
current bundle's heads, labels, clips and recordings are copied to the new bundle's state folder (caches derived
from the old bundle, such as coreset embeddings or a fitted temperature, are not); otherwise nothing is copied and the old state stays where it is, set aside for the old
bundle (a rollback brings it back into use). The history records which.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgekws.bundle import (
    BUNDLE_ID_RE,
    DEVICE_ID_RE,
    NAME_RE,
    BundleError,
    bundle_id,
    load_public_key,
    unpack_bundle,
    verify_bundle,
)
from edgekws.channel import PointerError, decode_pointer, parse_time, verify_pointer
from edgekws.fileio import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    sha256_file,
)

__all__ = [
    "CurrentWatcher",
    "UpdateConfig",
    "UpdateError",
    "UpdateResult",
    "current_bundle",
    "default_root",
    "embedding_fingerprint",
    "rollback",
    "smoke_test",
    "status",
    "update",
]

ID_RE = BUNDLE_ID_RE
_CHUNK = 64 * 1024
Progress = Callable[[dict], None]


class UpdateError(RuntimeError):
    """An update or rollback did not happen; the device keeps the bundle it had. The message says why."""


def default_state_root() -> Path:
    """The device state root, as ``listen`` and the ``device`` commands use it
    (:func:`edgekws.device.model.default_state_root`)."""
    from .model import default_state_root as root

    return root()


def default_root() -> Path:
    """``<device state root>/bundles``: ``$EDGEKWS_DEVICE_HOME/bundles`` (else ``$EDGEKWS_HOME/device/bundles``, else
    ``~/.local/share/edgekws/device/bundles``)."""
    return default_state_root() / "bundles"


@dataclass(frozen=True)
class UpdateConfig:
    """How to update: which registry, target and channel, where to install, whom to trust.

    public_key: the pinned signer key (object, PEM file or key folder; None: ``$EDGEKWS_HOME/keys/signing.pub``).
    state_root: device state root (local heads); None: ``$EDGEKWS_DEVICE_HOME`` as the device commands use.
    fmt, precision: the graph the smoke test runs; None (default): the bundle's recommendation, which is what
    ``listen`` and :class:`~edgekws.device.Spotter` run.
    """

    server: str
    target: str
    channel: str = "stable"
    root: Path | None = None
    public_key: Any = None
    state_root: Path | None = None
    device_id: str | None = None
    fmt: str | None = None
    precision: str | None = None
    smoke_timeout: float = 120.0
    http_timeout: float = 30.0
    keep: int = 3
    checkin: bool = True
    chunk_bytes: int = _CHUNK
    max_bundle_bytes: int = 512 << 20
    retry_refused: bool = False  # try again a bundle that failed verification or its smoke test here before
    device_token: str | None = None  # check-in token (None: <root>/device_token when present)
    allow_downgrade: bool = False  # install the channel's bundle even when it was created before the one in use
    require_signed_channel: bool = False  # refuse channel answers without a signed pointer (freeze detection)

    def __post_init__(self) -> None:
        u = urllib.parse.urlsplit(self.server)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError(f"server URL must look like http://HOST:PORT, got {self.server!r}")
        for name in ("target", "channel"):
            if not NAME_RE.match(getattr(self, name)):
                raise ValueError(f"invalid {name} {getattr(self, name)!r}")
        if self.keep < 2:
            raise ValueError("keep must be at least 2 (the bundle in use and the previous one)")
        if self.chunk_bytes < 1024:
            raise ValueError("chunk_bytes must be at least 1024")


@dataclass
class UpdateResult:
    status: str  # "installed" | "up-to-date" | "rolled-back"
    bundle: str
    previous: str | None = None
    bytes_downloaded: int = 0
    resumed_from: int = 0
    size: int = 0
    local_state: str = "none"  # "carried" | "set-aside" | "kept" | "none"
    smoke: dict = field(default_factory=dict)
    checkin: str = "skipped"
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# Paths and pointers -------------------------------------------------------------------------------------------


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else default_root()


def _read_pointer(root: Path, name: str) -> str | None:
    link = root / name
    try:
        target = os.readlink(link)
    except (FileNotFoundError, OSError):
        return None
    bid = Path(target).name
    return bid if ID_RE.match(bid) and (root / "versions" / bid / "manifest.json").is_file() else None


def _set_pointer(root: Path, name: str, bundle_id: str) -> None:
    """Point ``root/name`` at ``versions/<bundle_id>`` with one atomic rename of a fresh symlink."""
    tmp = root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    os.symlink(f"versions/{bundle_id}", tmp)
    try:
        os.replace(tmp, root / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(root)


def current_bundle(root: str | os.PathLike | None = None) -> Path | None:
    """The installed bundle in use (``<root>/current``), or None before the first install."""
    r = _root(root)
    return r / "current" if _read_pointer(r, "current") else None


class CurrentWatcher:
    """Tells a running detector when an update or rollback switched ``<root>/current``.

    ``watcher.changed()`` is cheap (one ``readlink``): True once per switch, after which the caller re-opens
    ``watcher.path`` (the switch happens only after the new bundle passed its smoke test)::

        w = CurrentWatcher(root)
        for block in source:
            if w.changed():
                spotter = Spotter.open(w.path, public_key=key)

    (:class:`~edgekws.device.Spotter` opened on ``<root>/current`` does this by itself.)
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = _root(root)
        self.path = self.root / "current"
        self.bundle = _read_pointer(self.root, "current")

    def changed(self) -> bool:
        now = _read_pointer(self.root, "current")
        if now is None or now == self.bundle:
            return False
        self.bundle = now
        return True


@contextlib.contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    fh = open(root / ".lock", "a+")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise UpdateError(f"another update or rollback is running on {root}") from None
            raise
        yield
    finally:
        fh.close()


def _cleanup(root: Path, state_root: Path) -> None:
    """Remove what a killed update left half-made (only names this module creates)."""
    for d, pattern in (
        (root, re.compile(r"^\.(current|previous)\.[0-9a-f]{8}\.tmp$")),
        (root / "versions", re.compile(r"^\.[0-9a-f]{16}\..*\.tmp$")),
        (state_root, re.compile(r"^\.[0-9a-f]{16}\.carry-[0-9a-f]{8}\.tmp$")),
    ):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if pattern.match(p.name):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def _history(root: Path, entry: dict) -> None:
    p = root / "history.json"
    try:
        items = json.loads(p.read_text()) if p.is_file() else []
    except (OSError, json.JSONDecodeError):
        items = []
    items.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry})
    atomic_write_json(p, items[-200:])


def _refused(root: Path) -> dict:
    p = root / "refused.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _refuse(root: Path, bundle_id: str, reason: str) -> None:
    """Remember a bundle that failed verification or its smoke test, so polling does not fetch it again."""
    items = _refused(root)
    items[bundle_id] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": reason[:500]}
    atomic_write_json(root / "refused.json", items)
    _history(root, {"event": "refused", "bundle": bundle_id, "reason": reason})


def device_id(root: Path) -> str:
    p = root / "device_id"
    if p.is_file():
        v = p.read_text().strip()
        if DEVICE_ID_RE.match(v):
            return v
    v = f"dev-{uuid.uuid4().hex[:12]}"
    atomic_write_bytes(p, (v + "\n").encode())
    return v


def _manifest(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / "manifest.json").read_bytes())


def _created(manifest_or_release: dict) -> datetime | None:
    try:
        return parse_time(manifest_or_release.get("created_at"))
    except ValueError:
        return None


def _downgrade(new: dict, current_dir: Path | None) -> str | None:
    """Why installing ``new`` (a manifest or the registry's release) would go back in time, or None."""
    if current_dir is None:
        return None
    cur = _manifest(current_dir)
    t_new, t_cur = _created(new), _created(cur)
    if t_cur is None:  # nothing to compare with
        return None
    if t_new is None:
        return f"it has no valid created_at, and the bundle in use {current_dir.name} was created {cur['created_at']}"
    if t_new < t_cur:
        return f"it was created {new['created_at']}, before the bundle in use {current_dir.name} ({cur['created_at']})"
    return None


def _channel_key(cfg: UpdateConfig) -> str:
    return f"{cfg.target}/{cfg.channel}"


def _seen_pointers(root: Path) -> dict:
    p = root / "channels.json"
    try:
        items = json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, json.JSONDecodeError):
        raise UpdateError(f"{p} is unreadable: it records the channel pointers seen; fix or remove it") from None
    return items if isinstance(items, dict) else {}


def _check_pointer(release: dict, cfg: UpdateConfig, root: Path, key: Any) -> dict | None:
    """Verify the release's signed channel pointer against the pinned key and what this device saw before.

    Returns the pointer (None for an unsigned answer that may be used). Raises :class:`UpdateError` for a
    pointer that does not verify or names another bundle or channel, a version lower than one seen before
    (rolled-back or replayed metadata), an expired pointer (a frozen registry), or an unsigned answer where a
    signed one is expected."""
    name = _channel_key(cfg)
    seen = _seen_pointers(root).get(name)
    if not release.get("pointer"):
        if seen:
            raise UpdateError(
                f"the registry's answer for {name} is not signed, but this device has seen signed "
                f"channel pointers for it (version {seen.get('version')}): refusing unsigned metadata"
            )
        if cfg.require_signed_channel:
            raise UpdateError(f"the registry's answer for {name} has no signed channel pointer (required here)")
        return None
    try:
        doc = verify_pointer(*decode_pointer(release.get("pointer"), release.get("signature")), key)
    except PointerError as exc:
        raise UpdateError(f"the registry's channel pointer for {name} is refused: {exc}") from None
    if (doc["target"], doc["channel"], doc["bundle"]) != (cfg.target, cfg.channel, release.get("id")):
        raise UpdateError(
            f"the signed pointer names {doc['target']}/{doc['channel']} -> {doc['bundle']}, but the "
            f"registry answered {name} -> {release.get('id')}: refusing it"
        )
    if seen and doc["version"] < int(seen.get("version", 0)):
        raise UpdateError(
            f"the registry serves pointer version {doc['version']} for {name}, older than version "
            f"{seen['version']} seen before: its metadata was rolled back or is being replayed"
        )
    if parse_time(doc["expires_at"]) <= datetime.now(timezone.utc):
        raise UpdateError(
            f"the signed pointer for {name} (version {doc['version']}) expired at {doc['expires_at']}: "
            "the registry keeps serving stale metadata (frozen, or the pointer was not re-issued)"
        )
    if not seen or doc["version"] > int(seen.get("version", 0)):
        items = _seen_pointers(root)
        items[name] = {
            "version": doc["version"],
            "bundle": doc["bundle"],
            "expires_at": doc["expires_at"],
            "issued_at": doc["issued_at"],
        }
        atomic_write_json(root / "channels.json", items)
    return doc


def _identity(bundle_dir: Path) -> str:
    return bundle_id(bundle_dir)


def embedding_fingerprint(manifest: dict) -> dict[str, str]:
    """``{"onnx_fp32": sha256, ...}`` of a bundle's embedding graphs."""
    files = manifest.get("files", {})
    return {k: files[v]["sha256"] for k, v in (manifest.get("graphs") or {}).get("embedding", {}).items() if v in files}


def same_embedding(a: dict, b: dict) -> bool:
    """True when two manifests share at least one embedding graph format and every shared one is byte-equal."""
    fa, fb = embedding_fingerprint(a), embedding_fingerprint(b)
    shared = set(fa) & set(fb)
    return bool(shared) and all(fa[k] == fb[k] for k in shared)


# HTTP ---------------------------------------------------------------------------------------------------------


def _get_json(url: str, timeout: float) -> dict:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read(1 << 20))
    except urllib.error.HTTPError as exc:
        raise UpdateError(f"{url}: {exc.code} {_detail(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UpdateError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    except json.JSONDecodeError:
        raise UpdateError(f"{url}: the server did not answer with JSON") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read(4096)).get("detail"))
    except Exception:
        return str(exc.reason)


def _download(url: str, dl: Path, release: dict, cfg: UpdateConfig, emit: Progress) -> tuple[Path, int, int]:
    """Fetch the archive into ``dl/<id>.tar``, resuming ``<id>.tar.part``; return (path, bytes fetched, resumed from).

    The partial file is only appended to when the server's ETag is the one recorded with it (``If-Range``), so a
    part of another archive is never combined with this one. The finished file's sha256 must equal the release's.
    """
    bid, size, digest = release["id"], int(release["size"]), str(release["sha256"])
    dl.mkdir(parents=True, exist_ok=True)
    part, meta, done = dl / f"{bid}.tar.part", dl / f"{bid}.json", dl / f"{bid}.tar"
    if done.is_file() and done.stat().st_size == size and sha256_file(done) == digest:
        return done, 0, size
    have = 0
    etag = None
    if part.is_file() and meta.is_file():
        try:
            m = json.loads(meta.read_text())
            if m.get("sha256") == digest and m.get("size") == size:
                have, etag = part.stat().st_size, m.get("etag")
        except (OSError, json.JSONDecodeError):
            have = 0
    if have > size:
        have = 0
    headers = {}
    if 0 < have < size and etag:
        headers = {"Range": f"bytes={have}-", "If-Range": etag}
    elif have != size:
        have = 0
    resumed_from = have
    fetched = 0
    if have < size:
        req = urllib.request.Request(url, headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=cfg.http_timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # the part does not fit the server's archive: start over next time
                part.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
            raise UpdateError(f"download of {bid} failed: {exc.code} {_detail(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise UpdateError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
        with resp:
            served = resp.headers.get("X-Content-SHA256")
            if served and served != digest:
                raise UpdateError(
                    f"the server's archive of {bid} has sha256 {served[:16]}…, its release said "
                    f"{digest[:16]}…; refusing it"
                )
            if resp.status == 206:
                cr = resp.headers.get("Content-Range", "")
                if not cr.startswith(f"bytes {have}-"):
                    raise UpdateError(f"the server answered a resume from byte {have} with {cr!r}")
                mode = "ab"
            else:  # 200: the whole archive (no partial file, or the server's copy changed)
                have, resumed_from, mode = 0, 0, "wb"
            atomic_write_json(meta, {"sha256": digest, "size": size, "etag": resp.headers.get("ETag")})
            with open(part, mode) as fh:
                emit({"event": "download", "bundle": bid, "done": have, "total": size, "resumed_from": resumed_from})
                while True:
                    block = resp.read(cfg.chunk_bytes)
                    if not block:
                        break
                    if have + len(block) > size:
                        fh.close()
                        part.unlink(missing_ok=True)
                        meta.unlink(missing_ok=True)
                        raise UpdateError(f"the server sent more than the {size} bytes of {bid}; discarded")
                    fh.write(block)
                    fh.flush()
                    have += len(block)
                    fetched += len(block)
                    emit(
                        {"event": "download", "bundle": bid, "done": have, "total": size, "resumed_from": resumed_from}
                    )
                os.fsync(fh.fileno())
        if have != size:
            raise UpdateError(f"download of {bid} stopped at {have} of {size} bytes; run the update again to resume")
    got = sha256_file(part)
    if got != digest:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise UpdateError(
            f"downloaded archive of {bid} has sha256 {got[:16]}…, expected {digest[:16]}…: "
            "damaged in transit or on the server; discarded"
        )
    os.replace(part, done)
    return done, fetched, resumed_from


def _checkin(cfg: UpdateConfig, root: Path, bundle: str | None, status: str, detail: str = "") -> str:
    if not cfg.checkin:
        return "skipped"
    dev = cfg.device_id or device_id(root)
    url = f"{cfg.server.rstrip('/')}/v1/devices/{urllib.parse.quote(dev, safe='')}/checkin"
    body = json.dumps(
        {"target": cfg.target, "channel": cfg.channel, "bundle": bundle, "status": status, "detail": detail[:1000]}
    ).encode()
    headers = {"Content-Type": "application/json"}
    token = cfg.device_token
    if token is None and (root / "device_token").is_file():
        token = (root / "device_token").read_text().strip() or None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=cfg.http_timeout) as resp:
            resp.read()
        return "ok"
    except urllib.error.HTTPError as exc:
        return f"refused ({exc.code}: {_detail(exc)})"
    except (urllib.error.URLError, OSError) as exc:
        return f"failed ({getattr(exc, 'reason', exc)})"


# Smoke test ---------------------------------------------------------------------------------------------------


def _raw_key_b64(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    key = load_public_key(public_key)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _smoke_child(bundle: str, key_b64: str, state_root: str | None, fmt: str | None, precision: str | None) -> dict:
    """Runs in the smoke-test process: open the bundle as ``listen`` does (:class:`~edgekws.device.Spotter`:
    the recommended graph unless asked, the bundle's front end, the local head) and feed it audio until it
    has classified at least one window."""
    import numpy as np

    from edgekws.device.spotter import Spotter

    t0 = time.perf_counter()
    key = base64.b64decode(key_b64)
    out: dict[str, Any] = {}
    runs = [("bundle", None)] + ([("local", state_root)] if state_root else [])
    for name, root in runs:
        spotter = Spotter.open(
            bundle,
            public_key=key,
            state=root,
            local=root is not None,
            fmt=fmt,
            precision=precision,
            threads=1,
            calibrate=False,
            check_every_s=None,
        )
        with spotter:
            if name == "local" and spotter.version is None:
                continue
            fc = spotter.feature_config
            n = int(fc.sample_rate * (spotter.window_seconds + 0.25))
            y = (np.random.default_rng(0).standard_normal(n) * 1e-3).astype(np.float32)
            hops = spotter.hops(y)
            if not hops:
                raise RuntimeError(f"{name} model: {n / fc.sample_rate:.2f} s of audio gave no inference")
            logits = np.stack([h.logits for h in hops])
            if logits.shape[1] != len(spotter.classes) or not np.all(np.isfinite(logits)):
                raise RuntimeError(
                    f"{name} model gave logits of shape {logits.shape} (finite: "
                    f"{bool(np.all(np.isfinite(logits)))}) for {len(spotter.classes)} classes"
                )
            out.setdefault("classes", len(spotter.bundle.classes))
            out["graph"] = spotter.graph
            out[name] = {
                "version": spotter.version,
                "classes": len(spotter.classes),
                "top": int(np.argmax(logits[-1])),
                "graph": spotter.graph,
            }
    out["seconds"] = round(time.perf_counter() - t0, 4)
    return out


def smoke_test(
    bundle_dir: str | os.PathLike,
    public_key: Any = None,
    *,
    state_dir: str | os.PathLike | None = None,
    fmt: str | None = None,
    precision: str | None = None,
    timeout: float = 120.0,
) -> dict:
    """Run a bundle in a separate process as the detector will (:class:`~edgekws.device.Spotter`, the bundle's
    recommended graph unless ``fmt``/``precision`` say otherwise), and once more with the local head in
    ``state_dir`` (``<state root>/<bundle id>``) when there is one. A crash, hang (``timeout``) or bad output
    raises :class:`UpdateError`."""
    root = ""
    if state_dir is not None:
        sd = Path(state_dir)
        if sd.name != _identity(Path(bundle_dir)):
            raise UpdateError(f"smoke test: {sd} is not the state folder of bundle {_identity(Path(bundle_dir))}")
        root = str(sd.parent)
    cmd = [
        sys.executable,
        "-m",
        "edgekws.device.update",
        "smoke",
        str(bundle_dir),
        _raw_key_b64(public_key),
        root,
        fmt or "",
        precision or "",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise UpdateError(f"smoke test of {bundle_dir} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise UpdateError(f"smoke test of {bundle_dir} failed: {why}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise UpdateError(f"smoke test of {bundle_dir} printed no result") from None


# Local state ----------------------------------------------------------------------------------------------------


CARRIED = ("models", "labels.sqlite", "clips", "recordings")
"""What of a bundle's state folder moves to the next bundle with the same embedding graph: fine-tuned heads, labels
(with their embeddings), labelled clips and recordings. Everything else there (coreset embeddings, the fitted
temperature, ...) is a cache of the old bundle's graphs or coreset and is rebuilt by the new one."""


def _copy_tree(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_symlink():
            continue
        if p.is_dir():
            _copy_tree(p, dest / p.name)
        else:
            with open(p, "rb") as fin, atomic_open(dest / p.name, "wb") as fout:
                shutil.copyfileobj(fin, fout)


def _copy_state(src: Path, dest: Path) -> None:
    """Copy the :data:`CARRIED` parts of a device state folder; SQLite through its backup API (consistent even
    while another process writes it)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in CARRIED:
        p = src / name
        if p.is_symlink() or not p.exists():
            continue
        if p.is_dir():
            _copy_tree(p, dest / name)
        else:
            s = sqlite3.connect(p)
            d = sqlite3.connect(dest / name)
            try:
                s.backup(d)
            finally:
                s.close()
                d.close()


def _has_local_heads(state: Path) -> bool:
    models = state / "models"
    return models.is_dir() and any((d / "head.npz").is_file() for d in models.iterdir() if d.is_dir())


def _carry_state(old_dir: Path | None, new_dir: Path, state_root: Path) -> tuple[str, Path | None]:
    """Bring the current bundle's local state to the new bundle. Returns (what happened, staged folder to drop on
    failure or None)."""
    if old_dir is None:
        return "none", None
    old_state, new_state = state_root / _identity(old_dir), state_root / _identity(new_dir)
    if not old_state.is_dir() or not any(old_state.iterdir()):
        return "none", None
    if not same_embedding(_manifest(old_dir), _manifest(new_dir)):
        return "set-aside", None
    if new_state.is_dir() and _has_local_heads(new_state):
        return "kept", None  # this bundle ran here before: its own heads stay
    stage = state_root / f".{_identity(new_dir)}.carry-{uuid.uuid4().hex[:8]}.tmp"
    try:
        _copy_state(old_state, stage)
        if new_state.exists():  # an empty or head-less folder (e.g. made by an earlier smoke test)
            shutil.rmtree(new_state)
        os.replace(stage, new_state)
        fsync_dir(state_root)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return "carried", new_state


# Update / rollback ----------------------------------------------------------------------------------------------


def _prune(root: Path, keep: int) -> None:
    """Delete installed versions beyond the ``keep`` newest; ``current`` and ``previous`` always stay."""
    versions = root / "versions"
    protect = {p for p in (_read_pointer(root, "current"), _read_pointer(root, "previous")) if p}
    others = [d for d in versions.iterdir() if d.is_dir() and ID_RE.match(d.name) and d.name not in protect]
    others.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    for d in others[max(0, keep - len(protect)) :]:
        doomed = versions / f".{d.name}.prune.tmp"  # renamed first: a kill never leaves a half-deleted version
        os.replace(d, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def update(cfg: UpdateConfig, progress: Progress | None = None) -> UpdateResult:
    """Install the newest bundle of ``cfg.target``/``cfg.channel`` if it is not the one in use.

    Raises :class:`UpdateError` (the installed bundle stays in use) when the registry cannot be reached, the
    download is damaged, the signature or a checksum does not verify, the bundle is for another target, or the
    smoke test fails. Progress events: ``check``, ``download`` (done/total), ``downloaded``, ``verified``,
    ``state``, ``smoke``, ``switch``, ``switched``.
    """
    emit = progress or (lambda ev: None)
    root = _root(cfg.root)
    state_root = Path(cfg.state_root) if cfg.state_root is not None else default_state_root()
    t0 = time.perf_counter()
    key = load_public_key(cfg.public_key)  # fail early without a pinned key
    with _locked(root):
        _cleanup(root, state_root)
        base = cfg.server.rstrip("/")
        release = _get_json(
            f"{base}/v1/targets/{urllib.parse.quote(cfg.target)}/channels/{urllib.parse.quote(cfg.channel)}",
            cfg.http_timeout,
        )
        bid = str(release.get("id", ""))
        if (
            not ID_RE.match(bid)
            or not isinstance(release.get("size"), int)
            or not re.match(r"^[0-9a-f]{64}$", str(release.get("sha256", "")))
        ):
            raise UpdateError(
                f"the registry's answer for {cfg.target}/{cfg.channel} is not a release: {release!r}"[:300]
            )
        if release["size"] > cfg.max_bundle_bytes:
            raise UpdateError(
                f"bundle {bid} is {release['size']} bytes, more than this device accepts ({cfg.max_bundle_bytes})"
            )
        if release.get("target") != cfg.target:
            raise UpdateError(f"the registry offered a bundle for target {release.get('target')!r}, not {cfg.target!r}")
        pointer = _check_pointer(release, cfg, root, key)
        current = _read_pointer(root, "current")
        emit({"event": "check", "bundle": bid, "current": current, "size": release["size"]})
        # a bundle older than the one in use is installed only when a person asked: --allow-downgrade, or a channel
        # pointer signed for it (the registry's unsigned word is checked here, the signed manifest after the download)
        downgrade_ok = cfg.allow_downgrade or (pointer is not None and pointer["bundle"] == bid)
        why = (
            None
            if downgrade_ok or current == bid
            else _downgrade(release, root / "versions" / current if current else None)
        )
        if why:
            raise UpdateError(
                f"bundle {bid} is older than the one in use: {why}; refusing a downgrade (to go back "
                f"on purpose: `edgekws device rollback --to {bid}` if installed, `device update "
                "--allow-downgrade`, or a signed channel pointer: `edgekws server promote ID --key K`)"
            )
        if current == bid:
            res = UpdateResult(
                status="up-to-date", bundle=bid, previous=_read_pointer(root, "previous"), size=release["size"]
            )
            res.checkin = _checkin(cfg, root, bid, "up-to-date")
            res.seconds = round(time.perf_counter() - t0, 3)
            return res

        earlier = _refused(root).get(bid)
        if earlier and not cfg.retry_refused:
            raise UpdateError(
                f"bundle {bid} was refused here on {earlier['at']} ({earlier['reason']}); not fetched "
                "again: publish a fixed bundle, or retry it explicitly (--retry)"
            )
        versions = root / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        new_dir = versions / bid
        fetched = resumed = 0
        if new_dir.is_dir():  # unpacked by an earlier, interrupted run: keep it only if it still verifies
            try:
                verify_bundle(new_dir, key)
            except BundleError:
                shutil.rmtree(new_dir)
        if not new_dir.is_dir():
            url = urllib.parse.urljoin(base + "/", str(release.get("url") or f"v1/bundles/{bid}/bundle.tar"))
            if urllib.parse.urlsplit(url).netloc != urllib.parse.urlsplit(base).netloc:
                raise UpdateError(f"the registry pointed the download at another host: {url}")
            tar, fetched, resumed = _download(url, root / "downloads", release, cfg, emit)
            emit({"event": "downloaded", "bundle": bid, "bytes": fetched, "resumed_from": resumed})
            try:
                unpack_bundle(tar, new_dir, key)  # verifies signature + every sha256 before writing anything
            except BundleError as exc:
                tar.unlink(missing_ok=True)
                (root / "downloads" / f"{bid}.json").unlink(missing_ok=True)
                _refuse(root, bid, f"verification: {exc}")
                _checkin(cfg, root, bid, "failed", f"verification: {exc}")
                raise UpdateError(f"bundle {bid} refused: {exc}") from None
            tar.unlink(missing_ok=True)
            (root / "downloads" / f"{bid}.json").unlink(missing_ok=True)
        emit({"event": "verified", "bundle": bid})
        m = _manifest(new_dir)
        if _identity(new_dir) != bid or m.get("target") != cfg.target:
            shutil.rmtree(new_dir, ignore_errors=True)
            raise UpdateError(
                f"bundle {bid} is not what the registry announced (id {_identity(new_dir)}, target {m.get('target')!r})"
            )
        why = None if downgrade_ok else _downgrade(m, root / "versions" / current if current else None)
        if why:  # the registry's release said otherwise: the signed manifest decides
            shutil.rmtree(new_dir, ignore_errors=True)
            raise UpdateError(
                f"bundle {bid} is older than the one in use: {why} (signed manifest); refusing a downgrade"
            )

        old_dir = versions / current if current else None
        local, staged = _carry_state(old_dir, new_dir, state_root)
        emit({"event": "state", "bundle": bid, "local_state": local})
        emit({"event": "smoke", "bundle": bid})
        try:
            smoke = smoke_test(
                new_dir,
                key,
                state_dir=state_root / bid if local in ("carried", "kept") else None,
                fmt=cfg.fmt,
                precision=cfg.precision,
                timeout=cfg.smoke_timeout,
            )
        except UpdateError as exc:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            shutil.rmtree(new_dir, ignore_errors=True)
            _refuse(root, bid, str(exc))
            _checkin(cfg, root, bid, "failed", str(exc))
            raise
        emit({"event": "switch", "bundle": bid})
        if current:
            _set_pointer(root, "previous", current)
        _set_pointer(root, "current", bid)
        emit({"event": "switched", "bundle": bid, "previous": current})
        _history(
            root,
            {
                "event": "installed",
                "bundle": bid,
                "previous": current,
                "local_state": local,
                "old_state": str(state_root / current) if current and local == "set-aside" else None,
            },
        )
        _prune(root, cfg.keep)
        res = UpdateResult(
            status="installed",
            bundle=bid,
            previous=current,
            bytes_downloaded=fetched,
            resumed_from=resumed,
            size=release["size"],
            local_state=local,
            smoke=smoke,
        )
        res.checkin = _checkin(cfg, root, bid, "installed", f"local state {local}")
        res.seconds = round(time.perf_counter() - t0, 3)
        return res


def rollback(
    root: str | os.PathLike | None = None,
    public_key: Any = None,
    *,
    to: str | None = None,
    state_root: str | os.PathLike | None = None,
    fmt: str | None = None,
    precision: str | None = None,
    smoke_timeout: float = 120.0,
    checkin: UpdateConfig | None = None,
) -> UpdateResult:
    """Go back to the previous bundle (or ``to``, an installed id): verify it, smoke-test it, switch.

    Its local state (left in place when it was replaced) is in use again. ``checkin`` (a config naming the server)
    reports the rollback to the registry.
    """
    r = _root(root)
    sr = Path(state_root) if state_root is not None else default_state_root()
    t0 = time.perf_counter()
    key = load_public_key(public_key)
    with _locked(r):
        _cleanup(r, sr)
        current = _read_pointer(r, "current")
        if to is not None and not ID_RE.match(to):
            raise UpdateError(f"invalid bundle id {to!r}: 16 lower-case hex digits")
        goal = to or _read_pointer(r, "previous")
        installed = (
            sorted(d.name for d in (r / "versions").iterdir() if ID_RE.match(d.name))
            if (r / "versions").is_dir()
            else []
        )
        if goal is None:
            raise UpdateError(
                f"nothing to roll back to: no previous bundle in {r} (installed: {', '.join(installed) or 'none'})"
            )
        if goal not in installed:
            raise UpdateError(f"bundle {goal} is not installed in {r} (installed: {', '.join(installed) or 'none'})")
        if goal == current:
            raise UpdateError(f"bundle {goal} is already in use")
        goal_dir = r / "versions" / goal
        try:
            verify_bundle(goal_dir, key)
        except BundleError as exc:
            raise UpdateError(f"cannot roll back to {goal}: {exc}") from None
        state = sr / goal
        smoke = smoke_test(
            goal_dir,
            key,
            state_dir=state if _has_local_heads(state) else None,
            fmt=fmt,
            precision=precision,
            timeout=smoke_timeout,
        )
        if current:
            _set_pointer(r, "previous", current)
        _set_pointer(r, "current", goal)
        _history(r, {"event": "rolled-back", "bundle": goal, "previous": current})
        res = UpdateResult(
            status="rolled-back",
            bundle=goal,
            previous=current,
            smoke=smoke,
            local_state="kept" if _has_local_heads(state) else "none",
        )
        if checkin is not None:
            res.checkin = _checkin(checkin, r, goal, "rolled-back", f"from {current}")
        res.seconds = round(time.perf_counter() - t0, 3)
        return res


def status(root: str | os.PathLike | None = None) -> dict:
    """Installed versions, the one in use, the previous one and the last history entries."""
    r = _root(root)
    versions = []
    if (r / "versions").is_dir():
        for d in sorted((r / "versions").iterdir()):
            if ID_RE.match(d.name) and (d / "manifest.json").is_file():
                m = _manifest(d)
                versions.append(
                    {
                        "id": d.name,
                        "target": m.get("target"),
                        "created_at": m.get("created_at"),
                        "classes": m.get("classes"),
                        "model": (m.get("model") or {}).get("name"),
                    }
                )
    hist = []
    if (r / "history.json").is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            hist = json.loads((r / "history.json").read_text())[-10:]
    partial = sorted(p.name for p in (r / "downloads").glob("*.tar.part")) if (r / "downloads").is_dir() else []
    return {
        "root": str(r),
        "current": _read_pointer(r, "current"),
        "previous": _read_pointer(r, "previous"),
        "versions": versions,
        "partial_downloads": partial,
        "history": hist,
    }


def _main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "smoke":
        try:
            out = _smoke_child(argv[1], argv[2], argv[3] or None, argv[4] or None, argv[5] or None)
        except Exception as exc:
            sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
            return 1
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    sys.stderr.write("usage: python -m edgekws.device.update smoke BUNDLE KEY_B64 STATE FMT PRECISION\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
