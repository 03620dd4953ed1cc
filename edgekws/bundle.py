"""Signed model bundles: what the server ships and the device installs. Torch-free (the device imports this).

A bundle is a directory (or an uncompressed ``.tar`` of that directory's files, stored at the archive root)::

    manifest.json        format, version, target, classes, FeatureConfig, model, graphs, files (sha256 + size), ...
    manifest.sig         raw 64-byte ed25519 signature of the exact bytes of manifest.json
    head.npz             classifier head: ``W`` (n_classes, emb_dim) float32, ``b`` (n_classes,) float32
    coreset.npz          the distilled coreset (when there is one)
    model.onnx, model.int8.onnx, embedding.onnx, embedding.int8.onnx, model.tflite, model.int8.tflite,
    embedding.tflite, ...   whichever graphs were exported

The signature covers ``manifest.json``; the manifest covers every other file by sha256 and size. So one check of
the signature against a pinned public key plus one hash per file proves that nothing was added, removed or changed.

Graph inputs are normalised MFCC, ``(batch, 1, n_mfcc, frames)`` float32, exactly as
``edgekws.features.mfcc(y, cfg)`` computes them (``cfg = bundle.feature_config``); classifier outputs are logits in
``classes`` order, embedding outputs ``(batch, emb_dim)``, and ``embedding @ W.T + b`` equals the logits.

Keys: :func:`generate_keypair` writes ``signing.key`` (PKCS#8 PEM, mode 0600) and ``signing.pub`` (PEM) into a
folder, by default ``$EDGEKWS_HOME/keys`` (``$EDGEKWS_HOME`` defaults to ``$XDG_CONFIG_HOME/edgekws`` or
``~/.config/edgekws``). A key id is the sha256 hex digest of the 32 raw public-key bytes.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgekws.features import FeatureConfig
from edgekws.fileio import atomic_open, atomic_write_bytes, json_default, sha256, sha256_file

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "BUNDLE_ID_RE",
    "DEVICE_ID_RE",
    "GRAPH_FILES",
    "NAME_RE",
    "Bundle",
    "BundleError",
    "Manifest",
    "bundle_id",
    "default_key_dir",
    "describe",
    "edgekws_home",
    "ensure_signing_key",
    "generate_keypair",
    "key_id",
    "load_bundle",
    "load_private_key",
    "load_public_key",
    "pack_bundle",
    "read_head",
    "unpack_bundle",
    "verify_bundle",
    "verify_in_child",
    "write_bundle",
    "write_head",
]

BUNDLE_FORMAT = "edgekws-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
HEAD = "head.npz"
CORESET = "coreset.npz"
PRIVATE_KEY_NAME = "signing.key"
PUBLIC_KEY_NAME = "signing.pub"

GRAPH_FILES: dict[tuple[str, str, str], str] = {
    ("classifier", "onnx", "fp32"): "model.onnx",
    ("classifier", "onnx", "int8"): "model.int8.onnx",
    ("classifier", "tflite", "fp32"): "model.tflite",
    ("classifier", "tflite", "int8"): "model.int8.tflite",
    ("embedding", "onnx", "fp32"): "embedding.onnx",
    ("embedding", "onnx", "int8"): "embedding.int8.onnx",
    ("embedding", "tflite", "fp32"): "embedding.tflite",
    ("embedding", "tflite", "int8"): "embedding.int8.tflite",
}
"""(graph kind, format, precision) -> file name inside a bundle."""

BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{16}$")
"""A bundle's id: the first 16 hex digits of the sha256 of its ``manifest.json`` (see :func:`bundle_id`). The
registry stores, the updater installs and the device keeps local state under this name."""

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
"""Names of targets and release channels."""

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A device's name in registry check-ins."""

_REQUIRED = (
    "format",
    "format_version",
    "target",
    "created_at",
    "classes",
    "feature_config",
    "model",
    "graphs",
    "head",
    "coreset",
    "files",
    "public_key",
)


class BundleError(ValueError):
    """A bundle that must not be used; the message says exactly what is wrong."""


def bundle_id(manifest: bytes | str | os.PathLike) -> str:
    """The id of a bundle: the first 16 hex digits of the sha256 of its exact ``manifest.json`` bytes.

    ``manifest``: those bytes, or the path of a bundle folder or of its ``manifest.json``. Signing covers the
    manifest and the manifest covers every file, so equal ids mean equal bundles.
    """
    if isinstance(manifest, (bytes, bytearray, memoryview)):
        raw = bytes(manifest)
    else:
        p = Path(manifest)
        raw = (p / MANIFEST if p.is_dir() else p).read_bytes()
    return sha256(raw).hexdigest()[:16]


# Keys ------------------------------------------------------------------------------------------------------


def edgekws_home() -> Path:
    """``$EDGEKWS_HOME``, else ``$XDG_CONFIG_HOME/edgekws``, else ``~/.config/edgekws``."""
    if os.environ.get("EDGEKWS_HOME"):
        return Path(os.environ["EDGEKWS_HOME"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "edgekws"


def default_key_dir() -> Path:
    return edgekws_home() / "keys"


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - cryptography is a dependency of both extras
        raise BundleError("bundle signatures need the 'cryptography' package (pip install cryptography)") from exc
    return ed25519, serialization, InvalidSignature


def _raw_public(public_key: Any) -> bytes:
    _, serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Any) -> str:
    """sha256 hex digest of the 32 raw bytes of an ed25519 public key."""
    return sha256(_raw_public(public_key)).hexdigest()


def generate_keypair(directory: str | os.PathLike | None = None, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Create an ed25519 key pair: ``signing.key`` (private, PKCS#8 PEM, mode 0600) and ``signing.pub`` (PEM).

    Returns ``(private_path, public_path)``. Refuses to replace an existing private key unless ``overwrite``.
    """
    ed25519, serialization, _ = _crypto()
    d = Path(directory) if directory is not None else default_key_dir()
    priv_path, pub_path = d / PRIVATE_KEY_NAME, d / PUBLIC_KEY_NAME
    if priv_path.exists() and not overwrite:
        raise FileExistsError(f"{priv_path} already exists; pass overwrite=True (--force) to replace it")
    d.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with atomic_open(priv_path, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(priv)
    atomic_write_bytes(pub_path, pub)
    return priv_path, pub_path


def ensure_signing_key(directory: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """The private key in ``directory`` (default :func:`default_key_dir`), generated on first use.

    Returns ``(private_key_path, created)``.
    """
    d = Path(directory) if directory is not None else default_key_dir()
    if (d / PRIVATE_KEY_NAME).is_file():
        return d / PRIVATE_KEY_NAME, False
    return generate_keypair(d)[0], True


def load_private_key(path: str | os.PathLike | None = None) -> Any:
    """An ``Ed25519PrivateKey`` from a PEM file (default ``$EDGEKWS_HOME/keys/signing.key``)."""
    ed25519, serialization, _ = _crypto()
    p = Path(path) if path is not None else default_key_dir() / PRIVATE_KEY_NAME
    if p.is_dir():
        p = p / PRIVATE_KEY_NAME
    if not p.is_file():
        raise FileNotFoundError(f"signing key not found: {p} (create one with `edgekws bundle keygen`)")
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{p}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TypeError(f"{p}: not an ed25519 private key ({type(key).__name__})")
    return key


def load_public_key(source: Any = None) -> Any:
    """An ``Ed25519PublicKey`` from a key object, a PEM file, a key folder, raw 32 bytes, or PEM bytes.

    ``None`` reads ``$EDGEKWS_HOME/keys/signing.pub``. A private key (object or PEM file) gives its public half.
    """
    ed25519, serialization, _ = _crypto()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source.public_key()
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "given bytes"
    else:
        p = Path(source) if source is not None else default_key_dir() / PUBLIC_KEY_NAME
        if p.is_dir():
            p = p / PUBLIC_KEY_NAME
        if not p.is_file():
            raise FileNotFoundError(f"public key not found: {p}")
        data, where = p.read_bytes(), str(p)
        if b"-----BEGIN" not in data:  # key files are PEM; 32 bytes of some other file are not a key
            raise ValueError(f"{where}: not a PEM ed25519 public key (no '-----BEGIN' line)")
    if len(data) == 32:
        return ed25519.Ed25519PublicKey.from_public_bytes(data)
    try:
        if b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a PEM or raw 32-byte ed25519 public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise TypeError(f"{where}: not an ed25519 key ({type(key).__name__})")
    return key


def _public_key_info(public_key: Any) -> dict[str, str]:
    raw = _raw_public(public_key)
    return {
        "algorithm": "ed25519",
        "key_id": sha256(raw).hexdigest(),
        "public_key": base64.b64encode(raw).decode("ascii"),
    }


# Head weights ----------------------------------------------------------------------------------------------


def write_head(path: str | os.PathLike, W: np.ndarray, b: np.ndarray) -> Path:
    """Write ``head.npz`` with ``W`` (n_classes, emb_dim) and ``b`` (n_classes,), float32, atomically."""
    W = np.ascontiguousarray(W, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if W.ndim != 2 or b.shape != (W.shape[0],):
        raise ValueError(f"head needs W (C, D) and b (C,), got W {W.shape} and b {b.shape}")
    buf = io.BytesIO()
    np.savez(buf, W=W, b=b)
    return atomic_write_bytes(path, buf.getvalue())


def read_head(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` from ``head.npz`` (see :func:`write_head`)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            W, b = z["W"], z["b"]
    except Exception as exc:
        raise BundleError(f"{path}: not a readable head.npz ({exc.__class__.__name__}: {exc})") from None
    if W.ndim != 2 or b.shape != (W.shape[0],):
        raise BundleError(f"{path}: head arrays have shapes W {W.shape}, b {b.shape}; expected (C, D) and (C,)")
    return W.astype(np.float32, copy=False), b.astype(np.float32, copy=False)


# Writing ---------------------------------------------------------------------------------------------------


def _staging_dir(dest: Path, hint: str = "") -> Path:
    """A fresh temporary folder beside ``dest`` to build a bundle in, once ``dest`` may be replaced by one.

    ``dest`` may be missing, empty or an existing bundle; anything else is refused (``hint`` ends the message).
    """
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MANIFEST).is_file():
        raise FileExistsError(f"{dest} exists, is not empty and is not a bundle{hint}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))


def _check_relpath(name: str) -> str:
    """A safe relative POSIX path inside a bundle, or BundleError."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise BundleError(f"unsafe file name in bundle: {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) or name != str(p):
        raise BundleError(f"unsafe file name in bundle: {name!r} (must be a plain relative path)")
    return name


def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_bundle(
    out_dir: str | os.PathLike,
    files: Mapping[str, str | os.PathLike | bytes],
    *,
    target: str,
    classes: Iterable[str],
    feature_config: FeatureConfig,
    model: Mapping[str, Any],
    graphs: Mapping[str, Mapping[str, str]],
    private_key: Any,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Assemble, hash and sign a bundle directory; it appears at ``out_dir`` only when complete.

    Parameters
    ----------
    out_dir : path
        the bundle directory. An existing bundle there is replaced (atomically swapped); any other existing
        non-empty folder is refused.
    files : {relpath: source path or bytes}
        every payload file (``head.npz`` required; ``coreset.npz`` optional; graphs). ``manifest.json`` and
        ``manifest.sig`` are written here and may not be given.
    graphs : {"classifier": {"onnx_fp32": "model.onnx", ...}, "embedding": {...}}
        each value must be one of ``files``.
    private_key : Ed25519PrivateKey or path to its PEM file
    metrics, extra : JSON-serialisable; ``extra`` adds top-level manifest fields (it may not override the
        required ones).

    Returns
    -------
    Path of the bundle directory.
    """
    out = Path(out_dir)
    key = private_key if not isinstance(private_key, (str, os.PathLike)) else load_private_key(private_key)
    ed25519, _, _ = _crypto()
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TypeError(f"private_key must be an Ed25519PrivateKey or a path, got {type(private_key).__name__}")
    names = {_check_relpath(str(k)): v for k, v in files.items()}
    for reserved in (MANIFEST, SIGNATURE):
        if reserved in names:
            raise ValueError(f"{reserved} is written by write_bundle and cannot be passed as a file")
    if HEAD not in names:
        raise ValueError("a bundle needs head.npz (classifier head weights)")
    for kind, graph_files in graphs.items():
        for fmt, rel in graph_files.items():
            if rel not in names:
                raise ValueError(f"graph {kind}/{fmt} names {rel!r}, which is not among the bundle files")
    classes = [str(c) for c in classes]
    if not classes:
        raise ValueError("a bundle needs at least one class name")
    if extra and set(extra) & set(_REQUIRED):
        raise ValueError(f"extra manifest fields may not override {sorted(set(extra) & set(_REQUIRED))}")
    stage = _staging_dir(out, "; choose another --out")
    os.chmod(stage, 0o755)
    try:
        entries: dict[str, dict[str, Any]] = {}
        for rel, src in sorted(names.items()):
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, (bytes, bytearray)):
                atomic_write_bytes(dest, bytes(src))
            else:
                src = Path(src)
                if not src.is_file():
                    raise FileNotFoundError(f"bundle file {rel}: source {src} not found")
                with open(src, "rb") as fin, atomic_open(dest, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            entries[rel] = {"sha256": sha256_file(dest), "size": dest.stat().st_size}
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "target": str(target),
            "created_at": _utc_now(),
            "classes": classes,
            "feature_config": feature_config.to_dict(),
            "input": {"name": "mfcc", "shape": [1, 1, *feature_config.shape], "dtype": "float32", "batch_axis": 0},
            "model": dict(model),
            "graphs": {k: dict(v) for k, v in graphs.items()},
            "head": HEAD,
            "coreset": CORESET if CORESET in names else None,
            "files": entries,
            "metrics": dict(metrics or {}),
            "public_key": _public_key_info(key.public_key()),
            **dict(extra or {}),
        }
        data = (json.dumps(manifest, indent=2, sort_keys=True, default=json_default) + "\n").encode("utf-8")
        atomic_write_bytes(stage / MANIFEST, data)
        atomic_write_bytes(stage / SIGNATURE, key.sign(data))
        _swap_into_place(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _swap_into_place(stage: Path, out: Path) -> None:
    """Rename a finished staging folder to ``out``; an existing ``out`` is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(out, old)
    try:
        os.replace(stage, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# Archives --------------------------------------------------------------------------------------------------


def pack_bundle(bundle_dir: str | os.PathLike, tar_path: str | os.PathLike | None = None) -> Path:
    """Write the bundle's files into an uncompressed tar (default ``<bundle_dir>.tar``), atomically.

    Members sit at the archive root in sorted order with fixed owner and mode, so the same bundle gives the same
    archive bytes. The bundle is verified for integrity first (its own embedded key; authenticity is the
    receiver's check): a damaged bundle is never packed.
    """
    src = Path(bundle_dir)
    manifest = verify_bundle(src, trust_embedded_key=True)
    out = Path(tar_path) if tar_path is not None else src.with_name(src.name + ".tar")
    names = [MANIFEST, SIGNATURE, *sorted(manifest.files)]
    with atomic_open(out, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel in names:
            data = (src / rel).read_bytes()
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return out


def _read_tar(path: Path, max_bytes: int = 2 << 30) -> dict[str, bytes]:
    """All member files of a bundle tar, in memory, refusing anything unsafe or a truncated archive."""
    size = path.stat().st_size
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the `with fh` below
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc})") from None
    with fh:
        try:
            tf = tarfile.open(fileobj=fh, mode="r:")  # noqa: SIM115 - closed by `with tf` below
        except tarfile.TarError as exc:
            raise BundleError(f"{path}: not a tar archive or damaged at its start ({exc})") from None
        out: dict[str, bytes] = {}
        total = 0
        try:
            with tf:
                for member in tf:
                    name = member.name
                    if member.isdir():
                        continue
                    if not member.isfile():
                        kind = "link" if (member.issym() or member.islnk()) else "special file"
                        raise BundleError(f"{path}: archive member {name!r} is a {kind}; bundles hold plain files only")
                    _check_relpath(name)
                    if name in out:
                        raise BundleError(f"{path}: archive holds {name!r} twice")
                    total += member.size
                    if total > max_bytes:
                        raise BundleError(f"{path}: archive unpacks to more than {max_bytes} bytes")
                    if member.offset_data + member.size > size:
                        raise BundleError(
                            f"{path}: truncated tar: member {name!r} needs bytes up to "
                            f"{member.offset_data + member.size}, the file has {size}"
                        )
                    f = tf.extractfile(member)
                    data = f.read() if f is not None else b""
                    if len(data) != member.size:
                        raise BundleError(
                            f"{path}: truncated tar: member {name!r} has {len(data)} of {member.size} bytes"
                        )
                    out[name] = data
                end = tf.offset
        except tarfile.TarError as exc:
            raise BundleError(f"{path}: damaged or truncated tar ({exc})") from None
        fh.seek(end)
        tail = fh.read(1024)
    if len(tail) < 1024 or tail.strip(b"\x00"):
        raise BundleError(
            f"{path}: truncated tar: the archive stops at byte {size} without its end-of-archive "
            f"marker (after {len(out)} member(s)); the download or copy was cut short"
        )
    return out


def unpack_bundle(
    tar_path: str | os.PathLike, dest: str | os.PathLike, public_key: Any = None, *, trust_embedded_key: bool = False
) -> Path:
    """Verify a bundle tar, then extract it into the directory ``dest`` (created; swapped in atomically).

    Only plain files with safe relative names are accepted (no absolute paths, ``..``, links or devices); the
    archive is verified (signature and every hash) *before* anything is written. An existing bundle at ``dest`` is
    replaced; another non-empty folder is refused.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    members = _read_tar(tar_path) if tar_path.is_file() else None
    if members is None:
        raise BundleError(f"no bundle archive at {tar_path}")
    _verify_members(_MemorySource(members, str(tar_path)), public_key, trust_embedded_key)
    stage = _staging_dir(dest)
    try:
        for name, data in members.items():
            p = stage / name
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(p, data)
        _swap_into_place(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return dest


# Verification ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A verified manifest: ``data`` is the parsed ``manifest.json``; ``trusted`` tells whether the signature was
    checked against a pinned key (False when only the bundle's embedded key was used)."""

    data: dict[str, Any]
    source: str
    key_id: str
    trusted: bool
    id: str = ""  # :func:`bundle_id` of the verified manifest bytes

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def format_version(self) -> int:
        return int(self.data["format_version"])

    @property
    def target(self) -> str:
        return str(self.data["target"])

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.data["feature_config"])

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["files"])

    @property
    def graphs(self) -> dict[str, dict[str, str]]:
        return {k: dict(v) for k, v in self.data["graphs"].items()}


class _DirSource:
    def __init__(self, root: Path):
        self.root = root
        self.name = str(root)

    def names(self) -> set[str]:
        out = set()
        for p in self.root.rglob("*"):
            rel = p.relative_to(self.root).as_posix()
            if p.is_symlink():
                raise BundleError(f"{self.name}: {rel} is a symbolic link; bundles hold plain files only")
            if p.is_file():
                out.add(rel)
        return out

    def size(self, rel: str) -> int:
        return (self.root / rel).stat().st_size

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def sha256(self, rel: str) -> str:
        return sha256_file(self.root / rel)


class _MemorySource:
    def __init__(self, members: dict[str, bytes], name: str):
        self.members = members
        self.name = name

    def names(self) -> set[str]:
        return set(self.members)

    def size(self, rel: str) -> int:
        return len(self.members[rel])

    def read(self, rel: str) -> bytes:
        return self.members[rel]

    def sha256(self, rel: str) -> str:
        return sha256(self.members[rel]).hexdigest()


def _source(path: str | os.PathLike) -> Any:
    p = Path(path)
    if p.is_dir():
        return _DirSource(p)
    if p.is_file():
        return _MemorySource(_read_tar(p), str(p))
    raise BundleError(f"no bundle at {p} (neither a bundle directory nor a .tar archive)")


def verify_bundle(path: str | os.PathLike, public_key: Any = None, *, trust_embedded_key: bool = False) -> Manifest:
    """Check a bundle directory or ``.tar``; return its :class:`Manifest` or raise :class:`BundleError`.

    Checks, in order: the archive is complete and safe; ``manifest.json`` and ``manifest.sig`` exist; the manifest
    is JSON of a known format and a version this code understands; the signature matches the manifest for the
    pinned public key; the manifest's fields are consistent; every listed file exists with its size and sha256 and
    no unlisted file is present.

    Parameters
    ----------
    public_key
        the pinned key: an ``Ed25519PublicKey``, a PEM/raw key file or key folder, or raw bytes. ``None`` reads
        ``$EDGEKWS_HOME/keys/signing.pub``.
    trust_embedded_key
        check the signature against the key written in the manifest itself instead. That proves integrity (no
        byte changed since signing) but not who signed; ``Manifest.trusted`` is then False.
    """
    return _verify_members(_source(path), public_key, trust_embedded_key)


def _parse_manifest(src: Any) -> dict[str, Any]:
    names = src.names()
    if MANIFEST not in names:
        raise BundleError(f"{src.name}: manifest.json is missing, so this is not a bundle (or it is incomplete)")
    raw = src.read(MANIFEST)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(
            f"{src.name}: manifest.json is not UTF-8 text (byte {exc.start}): the file is damaged"
        ) from None
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{src.name}: manifest.json is not valid JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}): the file is damaged or was edited"
        ) from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{src.name}: manifest.json holds a {type(manifest).__name__}, not an object")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{src.name}: manifest.json has format {manifest.get('format')!r}, "
            f"expected {BUNDLE_FORMAT!r}: not an edgekws bundle"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{src.name}: manifest.json has no valid format_version ({version!r})")
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{src.name}: bundle format_version {version} is newer than this edgekws understands "
            f"(up to {BUNDLE_FORMAT_VERSION}); upgrade edgekws on this device to use it"
        )
    return manifest


def _check_signature(src: Any, manifest: dict[str, Any], public_key: Any, trust_embedded_key: bool) -> tuple[str, bool]:
    ed25519, _, InvalidSignature = _crypto()
    if SIGNATURE not in src.names():
        raise BundleError(f"{src.name}: manifest.sig is missing: the bundle is unsigned and cannot be trusted")
    sig = src.read(SIGNATURE)
    if len(sig) != 64:
        raise BundleError(f"{src.name}: manifest.sig is {len(sig)} bytes, an ed25519 signature is 64: damaged")
    info: dict[str, Any] = manifest["public_key"] if isinstance(manifest.get("public_key"), dict) else {}
    declared = str(info.get("key_id", "?"))
    if trust_embedded_key:
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(str(info.get("public_key", ""))))
        except (ValueError, TypeError):
            raise BundleError(f"{src.name}: manifest.json carries no usable public key") from None
        trusted = False
    else:
        try:
            key = load_public_key(public_key)
        except FileNotFoundError as exc:
            raise BundleError(
                f"no pinned public key to check the signature against: {exc}. Pass the signer's "
                "public key (--public-key), or check integrity only (--embedded-key)"
            ) from None
        trusted = True
    kid = key_id(key)
    try:
        key.verify(sig, src.read(MANIFEST))
    except InvalidSignature:
        if declared != kid:
            raise BundleError(
                f"{src.name}: wrong signature: the bundle was signed by key {declared[:16]}…, "
                f"not by the trusted key {kid[:16]}…"
            ) from None
        raise BundleError(
            f"{src.name}: wrong signature: manifest.sig does not match manifest.json for key "
            f"{kid[:16]}… (the manifest was changed after signing, or the signature is damaged)"
        ) from None
    return kid, trusted


def _check_fields(src: Any, m: dict[str, Any]) -> None:
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise BundleError(f"{src.name}: manifest.json lacks required field(s) {missing}")
    if not isinstance(m["classes"], list) or not m["classes"] or not all(isinstance(c, str) for c in m["classes"]):
        raise BundleError(f"{src.name}: manifest 'classes' must be a non-empty list of names")
    try:
        FeatureConfig.from_dict(m["feature_config"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{src.name}: manifest 'feature_config' is invalid ({exc})") from None
    files = m["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{src.name}: manifest 'files' must map names to sha256 and size")
    for rel, entry in files.items():
        _check_relpath(rel)
        if rel in (MANIFEST, SIGNATURE):
            raise BundleError(f"{src.name}: manifest lists {rel} among its files")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("size"), int)
        ):
            raise BundleError(f"{src.name}: manifest entry for {rel} needs 'sha256' and 'size'")
    if not isinstance(m["graphs"], dict):
        raise BundleError(f"{src.name}: manifest 'graphs' must be an object")
    refs = [(f"graphs.{k}.{f}", v) for k, d in m["graphs"].items() for f, v in (d or {}).items()]
    refs.append(("head", m["head"]))
    if m["coreset"] is not None:
        refs.append(("coreset", m["coreset"]))
    for where, rel in refs:
        if rel not in files:
            raise BundleError(f"{src.name}: manifest {where} names {rel!r}, which is not among its listed files")


def _verify_members(src: Any, public_key: Any, trust_embedded_key: bool) -> Manifest:
    manifest = _parse_manifest(src)
    kid, trusted = _check_signature(src, manifest, public_key, trust_embedded_key)
    _check_fields(src, manifest)
    present = src.names() - {MANIFEST, SIGNATURE}
    files: dict[str, dict[str, Any]] = manifest["files"]
    for rel in sorted(files):
        if rel not in present:
            raise BundleError(f"{src.name}: missing file {rel} (listed in the manifest, {files[rel]['size']} bytes)")
    for rel in sorted(files):
        want = files[rel]
        size = src.size(rel)
        if size != want["size"]:
            raise BundleError(
                f"{src.name}: {rel} is {size} bytes but the manifest says {want['size']}: "
                "the file is truncated or was replaced"
            )
        digest = src.sha256(rel)
        if digest != want["sha256"]:
            raise BundleError(
                f"{src.name}: {rel} is damaged or was modified: sha256 {digest[:16]}… does not match "
                f"the manifest's {want['sha256'][:16]}… (same size, different bytes)"
            )
    extra = sorted(present - set(files))
    if extra:
        raise BundleError(f"{src.name}: unexpected file(s) not covered by the signature: {', '.join(extra)}")
    return Manifest(data=manifest, source=src.name, key_id=kid, trusted=trusted, id=bundle_id(src.read(MANIFEST)))


# Loading ---------------------------------------------------------------------------------------------------


@dataclass
class Bundle:
    """A verified bundle directory: what the device, the export checks, the demo and the benchmarks read.

    Made only by :func:`load_bundle`, after the signature and every file's sha256 were checked. ``classes`` are in
    logit order; ``id`` is :func:`bundle_id`; ``trusted`` is False when only the manifest's own key was checked.
    """

    path: Path
    manifest: dict[str, Any]
    classes: tuple[str, ...]
    feature_config: FeatureConfig
    target: str
    key_id: str = ""
    trusted: bool = True
    id: str = ""
    _head: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def identity(self) -> str:
        """Same as :attr:`id` (the name of this bundle's device state folder)."""
        return self.id

    def available(self) -> list[tuple[str, str, str]]:
        """``(kind, format, precision)`` of every graph in the bundle."""
        out = []
        for kind, entries in self.manifest["graphs"].items():
            for key in entries:
                fmt, _, prec = key.partition("_")
                out.append((kind, fmt, prec))
        return sorted(out)

    def has_graph(self, kind: str = "classifier", fmt: str | None = None, precision: str | None = None) -> bool:
        fmt, precision = self.choose_graph(fmt, precision)
        return f"{fmt}_{precision}" in self.manifest["graphs"].get(kind, {})

    @property
    def recommended(self) -> dict[str, Any]:
        """The graph the exporter recommends for the target: ``{"format", "precision", "threads"}`` (ONNX fp32 and
        one thread for a bundle that names none)."""
        rec = self.manifest.get("recommended") or {}
        return {
            "format": str(rec.get("format", "onnx")),
            "precision": str(rec.get("precision", "fp32")),
            "threads": int(rec.get("threads", 1) or 1),
        }

    def choose_graph(self, fmt: str | None = None, precision: str | None = None) -> tuple[str, str]:
        """``(format, precision)`` to run: what is asked, the rest from :attr:`recommended`. Asking for another
        format than the recommended one without a precision gives fp32 of that format."""
        rec = self.recommended
        if fmt is None:
            fmt = rec["format"]
        if precision is None:
            precision = rec["precision"] if fmt == rec["format"] else "fp32"
        if fmt not in ("onnx", "tflite") or precision not in ("fp32", "int8"):
            raise BundleError(f"unknown graph {fmt} {precision} (onnx|tflite, fp32|int8)")
        return fmt, precision

    def graph_path(self, kind: str = "classifier", fmt: str | None = None, precision: str | None = None) -> Path:
        """Path of a graph file; ``kind`` "classifier" | "embedding", ``fmt`` "onnx" | "tflite", ``precision``
        "fp32" | "int8"; a format or precision left out is the bundle's recommendation (:meth:`choose_graph`).
        Raises :class:`BundleError` naming what the bundle has instead."""
        if kind not in ("classifier", "embedding"):
            raise BundleError(f"unknown graph kind {kind!r} (classifier or embedding)")
        fmt, precision = self.choose_graph(fmt, precision)
        rel = self.manifest["graphs"].get(kind, {}).get(f"{fmt}_{precision}")
        if rel is None:
            have = ", ".join("/".join(t) for t in self.available()) or "none"
            raise BundleError(f"bundle {self.path} has no {kind} graph in {fmt} {precision}; it has: {have}")
        return self.path / rel

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)``: ``W`` (n_classes, emb_dim), ``b`` (n_classes,), float32 (copies; safe to train in place)."""
        if self._head is None:
            W, b = read_head(self.path / self.manifest["head"])
            if W.shape[0] != len(self.classes):
                raise BundleError(
                    f"bundle {self.path}: head has {W.shape[0]} rows but the bundle has {len(self.classes)} classes"
                )
            self._head = (W, b)
        return self._head[0].copy(), self._head[1].copy()

    @property
    def coreset_path(self) -> Path | None:
        rel = self.manifest.get("coreset")
        return self.path / rel if rel else None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {})

    @property
    def detector(self) -> dict[str, Any]:
        """The detector settings the bundle ships (``temperature``, ``threshold``: fitted on held-out synthetic
        streams by the server), or ``{}``; values that make no sense are dropped."""
        d = self.manifest.get("detector")
        if not isinstance(d, dict):
            return {}
        out: dict[str, Any] = {}
        T, thr = d.get("temperature"), d.get("threshold")
        if isinstance(T, (int, float)) and math.isfinite(T) and T > 0:
            out["temperature"] = float(T)
        if isinstance(thr, (int, float)) and 0.0 <= thr <= 1.0:
            out["threshold"] = float(thr)
        return out


def verify_in_child(
    path: str | os.PathLike, public_key: Any = None, *, trust_embedded_key: bool = False, timeout: float = 120.0
) -> Manifest:
    """:func:`verify_bundle` in a short-lived child process, so that this process never loads the signature
    library (``cryptography``: about 8 MB resident for good, in a process that listens for weeks).

    The child checks the signature and every file's sha256 and answers with the id of the manifest it verified;
    the manifest read here must have that id, or the bundle changed meanwhile and is refused. ``public_key`` as
    for :func:`verify_bundle`; a key object (``cryptography`` is loaded already) is checked in this process.
    Raises :class:`BundleError` with the child's reason."""
    import subprocess

    if trust_embedded_key:
        key_arg = "embedded"
    elif public_key is None:
        key_arg = "default"
    elif isinstance(public_key, (str, os.PathLike)):
        key_arg = "path:" + os.fspath(public_key)
    elif isinstance(public_key, (bytes, bytearray)):
        key_arg = "b64:" + base64.b64encode(bytes(public_key)).decode()
    else:
        return verify_bundle(path, public_key, trust_embedded_key=trust_embedded_key)
    p = Path(path)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgekws.bundle", "verify", os.fspath(p.resolve()), key_arg],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise BundleError(f"{p}: verification did not finish within {timeout:.0f} s") from None
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise BundleError(f"{p}: verification failed: {why}") from None
    if "error" in answer:
        raise BundleError(answer["error"])
    raw = (p / MANIFEST).read_bytes()
    if bundle_id(raw) != answer["id"]:
        raise BundleError(f"{p}: manifest.json changed while the bundle was verified; open it again")
    return Manifest(
        data=json.loads(raw.decode("utf-8")),
        source=str(p),
        key_id=str(answer["key_id"]),
        trusted=bool(answer["trusted"]),
        id=str(answer["id"]),
    )


def _verify_main(argv: list[str]) -> int:
    """``python -m edgekws.bundle verify PATH KEY``: the child of :func:`verify_in_child` (one JSON line)."""
    if len(argv) != 3 or argv[0] != "verify":
        sys.stderr.write("usage: python -m edgekws.bundle verify BUNDLE embedded|default|path:P|b64:B\n")
        return 2
    _, path, key = argv
    try:
        source: Any = (
            None
            if key in ("embedded", "default")
            else (base64.b64decode(key[4:]) if key.startswith("b64:") else key[5:])
        )
        m = verify_bundle(path, source, trust_embedded_key=key == "embedded")
        out: dict[str, Any] = {"id": m.id, "key_id": m.key_id, "trusted": m.trusted}
    except Exception as exc:  # noqa: BLE001 - any refusal goes back as its message
        out = {"error": str(exc) if isinstance(exc, BundleError) else f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


def load_bundle(
    path: str | os.PathLike, public_key: Any = None, *, trust_embedded_key: bool = False, isolate: bool = False
) -> Bundle:
    """Verify (see :func:`verify_bundle`; in a child process with ``isolate``, see :func:`verify_in_child`) and
    open a bundle directory. A ``.tar`` must be unpacked first (:func:`unpack_bundle`)."""
    p = Path(path)
    if p.is_file():
        raise BundleError(f"{p} is an archive; unpack it into a folder first (unpack_bundle(tar, dest))")
    verify = verify_in_child if isolate else verify_bundle
    m = verify(p, public_key, trust_embedded_key=trust_embedded_key)
    return Bundle(
        path=p,
        manifest=m.data,
        classes=tuple(m.classes),
        feature_config=m.feature_config,
        target=m.target,
        key_id=m.key_id,
        trusted=m.trusted,
        id=m.id,
    )


def describe(manifest: Manifest, on_line: Callable[[str], None]) -> None:
    """Human-readable summary lines of a verified manifest (for the CLI)."""
    d = manifest.data
    on_line(f"target {d['target']}, {len(d['classes'])} classes ({', '.join(d['classes'])}), created {d['created_at']}")
    on_line(
        f"model {d['model'].get('name')} ({d['model'].get('params', '?')} params), "
        f"input {d['feature_config']['n_mfcc']} MFCC x {FeatureConfig.from_dict(d['feature_config']).n_frames} frames"
    )
    for kind, entries in sorted(d["graphs"].items()):
        for key, rel in sorted(entries.items()):
            on_line(f"  {kind:10s} {key:12s} {rel:22s} {d['files'][rel]['size'] / 1024:9.1f} KB")
    signer = "trusted key" if manifest.trusted else "embedded key only (authenticity NOT checked)"
    on_line(f"signature ok: ed25519, key {manifest.key_id[:16]}… ({signer}); {len(d['files'])} files hashed")


if __name__ == "__main__":
    sys.exit(_verify_main(sys.argv[1:]))
