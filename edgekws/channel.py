"""Signed channel pointers: which bundle a target's release channel serves, signed by the release signer.

A registry answers "what is the newest release of rpi/stable?" with a row of its database. A bundle's signature
proves who built the bundle, not that the registry still points at it, so a registry (or whoever answers in its
name) could serve an older signed bundle (a rollback) or keep serving the same answer forever (a freeze). A signed
pointer closes both gaps. It is a small JSON document signed (ed25519) with the key that signs bundles::

    {"format": "edgekws-channel", "format_version": 1, "target": "rpi", "channel": "stable",
     "bundle": "<16 hex digits>", "version": 7, "issued_at": "2026-12-02T17:00:00Z",
     "expires_at": "2027-01-01T17:00:00Z"}

``version`` grows with every pointer issued for a target/channel; a device remembers the highest it has seen and
refuses a lower one (metadata rolled back or replayed). ``expires_at`` bounds how long a pointer may be served: a
device refuses an expired one (a frozen registry), so the signer re-issues the pointer before it expires. A
pointer is also how a person sends devices back to an older bundle on purpose.

Torch-free: devices verify pointers with ``cryptography`` alone.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from edgekws.bundle import BUNDLE_ID_RE, NAME_RE, load_private_key, load_public_key

__all__ = [
    "DEFAULT_VALID_DAYS",
    "POINTER_FORMAT",
    "PointerError",
    "decode_pointer",
    "encode_pointer",
    "make_pointer",
    "parse_time",
    "verify_pointer",
]

POINTER_FORMAT = "edgekws-channel"
POINTER_FORMAT_VERSION = 1
DEFAULT_VALID_DAYS = 30.0
MAX_POINTER_BYTES = 2048
_ID_RE = BUNDLE_ID_RE
_NAME_RE = NAME_RE


class PointerError(ValueError):
    """A channel pointer that is malformed, or whose signature does not verify."""


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: Any) -> datetime:
    """A UTC ``datetime`` from an ISO 8601 time (``...Z`` or with an offset); ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def make_pointer(
    private_key: Any,
    target: str,
    channel: str,
    bundle_id: str,
    version: int,
    *,
    valid_days: float = DEFAULT_VALID_DAYS,
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    """The pointer document's exact bytes and their ed25519 signature. ``private_key``: key object or PEM path."""
    if not _NAME_RE.match(target) or not _NAME_RE.match(channel):
        raise ValueError(f"invalid target or channel name: {target!r}, {channel!r}")
    if not _ID_RE.match(bundle_id):
        raise ValueError(f"invalid bundle id {bundle_id!r}: 16 lower-case hex digits")
    if not isinstance(version, int) or version < 1:
        raise ValueError("a pointer version is a whole number from 1")
    if not 0 < valid_days <= 3660:
        raise ValueError("a pointer is valid for more than 0 and at most 3660 days")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = private_key if isinstance(private_key, ed25519.Ed25519PrivateKey) else load_private_key(private_key)
    t = now or datetime.now(timezone.utc)
    doc = {
        "format": POINTER_FORMAT,
        "format_version": POINTER_FORMAT_VERSION,
        "target": target,
        "channel": channel,
        "bundle": bundle_id,
        "version": version,
        "issued_at": _iso(t),
        "expires_at": _iso(t + timedelta(days=valid_days)),
    }
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return data, key.sign(data)


def verify_pointer(data: bytes, signature: bytes, public_key: Any) -> dict[str, Any]:
    """The pointer's fields once its signature verifies against ``public_key``; :class:`PointerError` otherwise."""
    from cryptography.exceptions import InvalidSignature

    if len(data) > MAX_POINTER_BYTES:
        raise PointerError(f"channel pointer of {len(data)} bytes is larger than any this edgekws writes")
    try:
        load_public_key(public_key).verify(signature, data)
    except InvalidSignature:
        raise PointerError("the channel pointer's signature does not verify against the pinned key") from None
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PointerError("the channel pointer is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != POINTER_FORMAT:
        raise PointerError("not an edgekws channel pointer")
    if doc.get("format_version") != POINTER_FORMAT_VERSION:
        raise PointerError(
            f"channel pointer format version {doc.get('format_version')!r} is not one this edgekws "
            f"reads ({POINTER_FORMAT_VERSION}); upgrade edgekws"
        )
    ok = (
        isinstance(doc.get("target"), str)
        and _NAME_RE.match(doc["target"])
        and isinstance(doc.get("channel"), str)
        and _NAME_RE.match(doc["channel"])
        and isinstance(doc.get("bundle"), str)
        and _ID_RE.match(doc["bundle"])
        and isinstance(doc.get("version"), int)
        and not isinstance(doc["version"], bool)
        and doc["version"] >= 1
    )
    if not ok:
        raise PointerError("the channel pointer lacks a valid target, channel, bundle or version")
    try:
        issued, expires = parse_time(doc.get("issued_at")), parse_time(doc.get("expires_at"))
    except ValueError:
        raise PointerError("the channel pointer has no valid issued_at / expires_at times") from None
    if expires <= issued:
        raise PointerError("the channel pointer expires before it was issued")
    return doc


def encode_pointer(data: bytes, signature: bytes) -> dict[str, str]:
    """The pointer as it travels in JSON (and in HTTP headers): base64 of the document and of its signature."""
    return {"pointer": base64.b64encode(data).decode("ascii"), "signature": base64.b64encode(signature).decode("ascii")}


def decode_pointer(pointer: Any, signature: Any) -> tuple[bytes, bytes]:
    """Inverse of :func:`encode_pointer`; :class:`PointerError` for anything that is not base64 of a sane size."""
    if not isinstance(pointer, str) or not isinstance(signature, str):
        raise PointerError("the channel pointer and its signature must be base64 text")
    if len(pointer) > 2 * MAX_POINTER_BYTES or len(signature) > 200:
        raise PointerError("the channel pointer or its signature is too long")
    try:
        return base64.b64decode(pointer, validate=True), base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise PointerError("the channel pointer or its signature is not valid base64") from None
