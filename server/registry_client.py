"""The registry's client side: publish a bundle, point a channel, enrol devices, list them. Standard library only
(no FastAPI), so ``edgekws deploy`` and the CLI's server commands run on any install.

- :func:`publish`: upload a signed bundle archive to a channel (``Expect: 100-continue``: a refusal arrives before
  the body is sent), optionally with a signed channel pointer.
- :func:`set_channel`: point a channel at a stored bundle (promote, roll back), optionally signed.
- :func:`enrol_device` / :func:`list_devices`: device check-in tokens and the last check-in of every device.
- :func:`default_token_path` / :func:`read_token`: where the publish token lives.

Every failure raises :class:`RegistryError` with the server's reason.
"""

import http.client
import json
import os
import re
import socket
import tarfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from edgekws.bundle import BUNDLE_ID_RE as ID_RE
from edgekws.bundle import DEVICE_ID_RE as DEVICE_RE
from edgekws.bundle import NAME_RE, BundleError, load_private_key, pack_bundle
from edgekws.bundle import bundle_id as _bundle_id
from edgekws.channel import DEFAULT_VALID_DAYS, PointerError, decode_pointer, encode_pointer, make_pointer

__all__ = [
    "RegistryError",
    "default_token_path",
    "enrol_device",
    "list_devices",
    "publish",
    "read_token",
    "set_channel",
]

TOKEN_ENV = "EDGEKWS_REGISTRY_TOKEN"


class RegistryError(RuntimeError):
    """A registry request failed; ``status`` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


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


def _signed_pointer(
    base: str, target: str, channel: str, bundle_id: str, pointer_key: Any, valid_days: float, timeout: float
) -> dict[str, str]:
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
        data, sig = make_pointer(
            load_private_key(pointer_key) if not hasattr(pointer_key, "sign") else pointer_key,
            target,
            channel,
            bundle_id,
            version + 1,
            valid_days=valid_days,
        )
    except (ValueError, TypeError) as exc:
        raise RegistryError(f"cannot sign the channel pointer: {exc}") from None
    return encode_pointer(data, sig)


def publish(
    bundle: str | os.PathLike,
    server: str,
    channel: str = "stable",
    token: str | None = None,
    *,
    target: str | None = None,
    timeout: float = 120.0,
    pointer_key: Any = None,
    valid_days: float = DEFAULT_VALID_DAYS,
) -> dict:
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
        headers = {
            "Content-Type": "application/x-tar",
            "Content-Length": str(tar.stat().st_size),
            "Authorization": f"Bearer {token}",
        }
        if pointer_key is not None:
            raw = _manifest_of(tar)
            try:
                manifest_target = str(json.loads(raw)["target"])
            except (ValueError, KeyError, TypeError):
                raise BundleError(f"{src}: manifest.json names no target") from None
            signed = _signed_pointer(
                base, manifest_target, channel, _bundle_id(raw), pointer_key, valid_days, min(timeout, 30.0)
            )
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
        token = os.environ.get(TOKEN_ENV) or (
            read_token(default_token_path()) if default_token_path().is_file() else None
        )
    if not token:
        raise RegistryError(f"no publish token: pass one, set ${TOKEN_ENV} or put it in {default_token_path()}")
    return token


def _json_request(method: str, url: str, token: str | None, body: dict | None, timeout: float) -> dict:

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


def set_channel(
    server: str,
    target: str,
    channel: str,
    bundle_id: str,
    token: str | None = None,
    *,
    timeout: float = 30.0,
    pointer_key: Any = None,
    valid_days: float = DEFAULT_VALID_DAYS,
) -> dict:
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
    return _json_request(
        "POST", f"{_check_url(server)}/v1/devices/{device_id}/token", _token_or_default(token), None, timeout
    )


def list_devices(server: str, token: str | None = None, *, timeout: float = 30.0) -> list[dict]:
    """The last check-in of every device."""
    return _json_request("GET", f"{_check_url(server)}/v1/devices", _token_or_default(token), None, timeout)["devices"]
