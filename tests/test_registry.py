"""Bundle registry: a real server on a free loopback port, spoken to over HTTP (no mocks)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.parse
from pathlib import Path

import pytest

from edgekws.bundle import generate_keypair, pack_bundle
from edgekws.server.registry import RegistryConfig, RegistryError, RegistryServer, parse_range, publish
from ship_support import tiny_bundle

TOKEN = "t0ken-for-tests-0123456789"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return generate_keypair(d / "trusted"), generate_keypair(d / "other")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("bundles")
    (priv, _), (other_priv, _) = keys
    out = {
        "a": tiny_bundle(d / "a", priv),
        "b": tiny_bundle(d / "b", priv, head_seed=1),
        "phone": tiny_bundle(d / "phone", priv, target="phone"),
        "untrusted": tiny_bundle(d / "untrusted", other_priv),
    }
    out.update({f"{k}_tar": pack_bundle(v, d / f"{k}.tar") for k, v in list(out.items())})
    return out


@pytest.fixture
def server(tmp_path, keys):
    cfg = RegistryConfig(root=tmp_path / "registry", tokens=(TOKEN,), trusted_keys=(keys[0][1],))
    with RegistryServer(cfg) as srv:
        yield srv


def request(srv, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one raw request to a server (or its URL); the path is sent as given."""
    u = urllib.parse.urlsplit(getattr(srv, "url", srv))
    con = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        con.putrequest(method, path, skip_accept_encoding=True)
        hdrs = dict(headers or {})
        if body is not None and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            con.putheader(k, v)
        con.endheaders()
        if body is not None:
            if hdrs.get("Transfer-Encoding") == "chunked":
                for i in range(0, len(body), 8192):
                    part = body[i : i + 8192]
                    con.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                con.send(b"0\r\n\r\n")
            else:
                con.send(body)
        resp = con.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        con.close()


def upload(srv, data: bytes, channel="stable", token=TOKEN, **extra):
    headers = {"Content-Type": "application/x-tar"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    q = urllib.parse.urlencode({"channel": channel, **extra})
    return request(srv, "POST", f"/v1/bundles?{q}", data, headers)


def detail(body: bytes) -> str:
    return json.loads(body)["detail"]


def stored(srv) -> list[str]:
    return sorted(p.name for p in (srv.config.root / "blobs").iterdir())


def test_publish_list_show_and_download_with_checksums(server, bundles):
    data = bundles["a_tar"].read_bytes()
    status, _, body = upload(server, data)
    assert status == 201, body
    info = json.loads(body)
    manifest_raw = (bundles["a"] / "manifest.json").read_bytes()
    assert info["id"] == hashlib.sha256(manifest_raw).hexdigest()[:16]
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["size"] == len(data)
    assert info["channels"] == ["stable"] and info["target"] == "rpi" and info["created"] is True
    assert stored(server) == [f"{info['id']}.tar"]

    status, _, body = request(server, "GET", "/v1/bundles")
    assert status == 200 and [b["id"] for b in json.loads(body)["bundles"]] == [info["id"]]
    status, _, body = request(server, "GET", f"/v1/bundles/{info['id']}")
    shown = json.loads(body)
    assert status == 200 and shown["manifest"]["classes"] == ["_silence_", "yes", "no"]
    status, _, body = request(server, "GET", f"/v1/bundles/{info['id']}/manifest.json")
    assert status == 200 and body == manifest_raw  # the exact signed bytes
    status, _, body = request(server, "GET", "/v1/targets/rpi/channels/stable")
    assert status == 200 and json.loads(body)["id"] == info["id"]

    status, h, body = request(server, "GET", info["url"])
    assert status == 200 and body == data
    assert h["x-content-sha256"] == info["sha256"] and h["etag"] == f'"{info["sha256"]}"'
    assert h["accept-ranges"] == "bytes" and h["content-length"] == str(len(data))
    assert h["repr-digest"].startswith("sha-256=:")
    status, h, body = request(server, "GET", info["url"], headers={"If-None-Match": f'"{info["sha256"]}"'})
    assert status == 304 and body == b""
    status, h, body = request(server, "HEAD", info["url"])
    assert status == 200 and body == b"" and h["content-length"] == str(len(data))

    # publishing the same bundle again stores nothing new and adds no release
    status, _, body = upload(server, data)
    assert status == 200 and json.loads(body)["created"] is False
    assert stored(server) == [f"{info['id']}.tar"]


def test_range_requests(server, bundles):
    data = bundles["a_tar"].read_bytes()
    n = len(data)
    info = json.loads(upload(server, data)[2])
    url, etag = info["url"], f'"{info["sha256"]}"'
    status, h, body = request(server, "GET", url, headers={"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200] and h["content-range"] == f"bytes 100-199/{n}"
    status, h, body = request(server, "GET", url, headers={"Range": f"bytes={n // 2}-"})
    assert status == 206 and body == data[n // 2 :] and h["content-length"] == str(n - n // 2)
    status, h, body = request(server, "GET", url, headers={"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, h, body = request(server, "GET", url, headers={"Range": f"bytes=10-{10 * n}"})
    assert status == 206 and body == data[10:]
    # resume only if the archive is still the one the client has a part of
    status, _, body = request(server, "GET", url, headers={"Range": "bytes=100-", "If-Range": etag})
    assert status == 206 and body == data[100:]
    status, _, body = request(server, "GET", url, headers={"Range": "bytes=100-", "If-Range": '"other"'})
    assert status == 200 and body == data
    status, h, body = request(server, "GET", url, headers={"Range": f"bytes={n}-"})
    assert status == 416 and h["content-range"] == f"bytes */{n}" and "outside" in detail(body)
    status, _, body = request(server, "GET", url, headers={"Range": "pages=1-2"})
    assert status == 400 and "malformed Range" in detail(body)
    status, _, body = request(server, "GET", url, headers={"Range": "bytes=0-1,5-6"})
    assert status == 200 and body == data  # several ranges: the whole archive
    with pytest.raises(ValueError, match="malformed"):
        parse_range("bytes=5-1", 10)
    with pytest.raises(ValueError, match="unsatisfiable"):
        parse_range("bytes=-0", 10)


def test_publish_needs_a_valid_token(server, bundles, tmp_path, keys):
    data = bundles["a_tar"].read_bytes()
    status, h, body = upload(server, data, token=None)
    assert status == 401 and "missing token" in detail(body) and h["www-authenticate"] == "Bearer"
    status, _, body = upload(server, data, token="not-the-token-at-all")
    assert status == 403 and detail(body) == "invalid token"
    status, _, body = request(server, "POST", "/v1/bundles?channel=stable", data,
                              {"Authorization": f"Basic {TOKEN}", "Content-Type": "application/x-tar"})
    assert status == 401 and "Bearer" in detail(body)
    assert stored(server) == []
    status, _, body = request(server, "GET", "/v1/devices")
    assert status == 401
    with pytest.raises(RegistryError, match="403.*invalid token"):
        publish(bundles["a"], server.url, "stable", "wrong-token-wrong-token")
    # a registry started without any publish token accepts no writes
    cfg = RegistryConfig(root=tmp_path / "ro", trusted_keys=(keys[0][1],))
    with RegistryServer(cfg) as ro:
        status, _, body = upload(ro, data)
        assert status == 403 and "accepts no writes" in detail(body)


def _tamper(tar: Path, member: str, edit) -> bytes:
    """The archive with one member's bytes changed (sizes and headers kept valid)."""
    out = io.BytesIO()
    with tarfile.open(tar) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == member:
                data = edit(data)
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    return out.getvalue()


def test_tampered_or_untrusted_uploads_are_refused_and_nothing_is_stored(server, bundles):
    tar = bundles["a_tar"]

    def flip(data: bytes) -> bytes:
        b = bytearray(data)
        b[len(b) // 2] ^= 0x01
        return bytes(b)

    cases = {
        "graph byte flipped": (_tamper(tar, "embedding.onnx", flip), "damaged or was modified"),
        "manifest edited": (_tamper(tar, "manifest.json", lambda d: d.replace(b'"yes"', b'"yep"')),
                            "wrong signature"),
        "signed by another key": (bundles["untrusted_tar"].read_bytes(), "not by the trusted key"),
        "truncated": (tar.read_bytes()[: tar.stat().st_size // 2], "truncated"),
        "not a tar": (b"hello world, not a bundle" * 100, "bundle refused"),
    }
    for name, (data, why) in cases.items():
        status, _, body = upload(server, data)
        assert status == 422, (name, status, body)
        assert "bundle refused" in detail(body) and why in detail(body), (name, detail(body))
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tf:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"pwn"))
    status, _, body = upload(server, evil.getvalue())
    assert status == 422 and "unsafe file name" in detail(body)
    status, _, body = upload(server, b"")
    assert status == 400 and "empty upload" in detail(body)
    status, _, body = request(server, "POST", "/v1/bundles?channel=stable", tar.read_bytes(),
                              {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert status == 415
    assert stored(server) == [] and list((server.config.root / "incoming").iterdir()) == []
    assert not (server.config.root.parent / "outside.txt").exists()
    assert json.loads(request(server, "GET", "/v1/bundles")[2])["bundles"] == []
    assert request(server, "GET", "/v1/targets/rpi/channels/stable")[0] == 404


def test_size_limit(tmp_path, keys, bundles):
    data = bundles["a_tar"].read_bytes()
    cfg = RegistryConfig(root=tmp_path / "small", tokens=(TOKEN,), trusted_keys=(keys[0][1],),
                         max_bundle_bytes=len(data) - 1)
    with RegistryServer(cfg) as srv:
        status, _, body = upload(srv, data)
        assert status == 413 and f"limit of {len(data) - 1} bytes" in detail(body)
        # without a Content-Length the limit is enforced while reading
        status, _, body = request(srv, "POST", "/v1/bundles?channel=stable", data,
                                  {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-tar",
                                   "Transfer-Encoding": "chunked"})
        assert status == 413, body
        assert list((srv.config.root / "blobs").iterdir()) == []
        assert list((srv.config.root / "incoming").iterdir()) == []


def test_path_traversal_and_bad_names_are_refused(server, bundles):
    info = json.loads(upload(server, bundles["a_tar"].read_bytes())[2])
    (server.config.root.parent / "secret.txt").write_text("do not serve")
    bad = [
        "/v1/bundles/..%2F..%2Fsecret.txt/bundle.tar",
        "/v1/bundles/..%2Fregistry.sqlite",
        "/v1/bundles/../registry.sqlite",
        "/v1/bundles/%2e%2e/bundle.tar",
        "/v1/bundles/..%2Fblobs%2F" + info["id"] + "/bundle.tar",
        f"/v1/bundles/{info['id'].upper()}/bundle.tar",
        f"/v1/bundles/{info['id']}0/bundle.tar",
        "/v1/bundles/%00" + info["id"][1:] + "/bundle.tar",
        f"/blobs/{info['id']}.tar",
        "/registry.sqlite",
        "/v1/targets/..%2F..%2Fetc/channels/stable",
        "/v1/targets/rpi/channels/..%2Fstable",
        "/v1/targets/RPI/channels/stable",
        "/v1/bundles?target=../rpi",
        "/v1/devices/..%2Fx/checkin",
    ]
    for path in bad:
        method = "POST" if path.endswith("checkin") else "GET"
        body_in = json.dumps({"target": "rpi", "channel": "stable", "status": "running"}).encode() \
            if method == "POST" else None
        status, _, body = request(server, method, path, body_in, {"Content-Type": "application/json"})
        assert 400 <= status < 500, (path, status)
        assert b"SQLite format" not in body and b"do not serve" not in body and b"ustar" not in body, path
    status, _, body = request(server, "GET", f"/v1/bundles/{info['id'].upper()}/bundle.tar")
    assert status == 400 and "invalid bundle id" in detail(body)
    status, _, body = request(server, "GET", "/v1/targets/RPI/channels/stable")
    assert status == 400 and "invalid target" in detail(body)
    status, _, body = upload(server, bundles["a_tar"].read_bytes(), target="../rpi")
    assert status == 400 and "invalid target" in detail(body)
    status, _, body = upload(server, bundles["a_tar"].read_bytes(), channel="nightly")
    assert status == 404 and "unknown channel" in detail(body)


def test_channels_per_target_and_promotion(server, bundles):
    a = json.loads(upload(server, bundles["a_tar"].read_bytes(), channel="stable")[2])
    b = json.loads(upload(server, bundles["b_tar"].read_bytes(), channel="beta")[2])
    p = json.loads(upload(server, bundles["phone_tar"].read_bytes(), channel="stable")[2])
    latest = lambda t, c: request(server, "GET", f"/v1/targets/{t}/channels/{c}")  # noqa: E731
    assert json.loads(latest("rpi", "stable")[2])["id"] == a["id"]
    assert json.loads(latest("rpi", "beta")[2])["id"] == b["id"]
    assert json.loads(latest("phone", "stable")[2])["id"] == p["id"]
    status, _, body = latest("phone", "beta")
    assert status == 404 and "nothing published" in detail(body)
    status, _, body = upload(server, bundles["b_tar"].read_bytes(), target="phone")
    assert status == 409 and "for target 'rpi'" in detail(body)

    put = lambda t, c, payload, token=TOKEN: request(  # noqa: E731
        server, "PUT", f"/v1/targets/{t}/channels/{c}", json.dumps(payload).encode(),
        {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    assert put("rpi", "stable", {"bundle": b["id"]}, token=None)[0] == 401
    status, _, body = put("rpi", "stable", {"bundle": b["id"]})
    assert status == 200 and json.loads(body)["id"] == b["id"]
    assert json.loads(latest("rpi", "stable")[2])["id"] == b["id"]
    assert put("rpi", "stable", {"bundle": p["id"]})[0] == 409  # a phone bundle on the rpi channel
    assert put("rpi", "stable", {"bundle": "0" * 16})[0] == 404
    assert put("rpi", "stable", {"bundle": "../x"})[0] == 422
    assert put("rpi", "stable", {"bundle": b["id"], "extra": 1})[0] == 422
    # roll the channel back to a
    assert put("rpi", "stable", {"bundle": a["id"]})[0] == 200
    assert json.loads(latest("rpi", "stable")[2])["id"] == a["id"]

    listed = json.loads(request(server, "GET", "/v1/bundles?target=rpi")[2])["bundles"]
    assert sorted(x["id"] for x in listed) == sorted([a["id"], b["id"]])
    on_beta = json.loads(request(server, "GET", "/v1/bundles?channel=beta")[2])["bundles"]
    assert [x["id"] for x in on_beta] == [b["id"]]
    assert request(server, "GET", "/v1/bundles?limit=0")[0] == 422


def enrol(srv, dev) -> str:
    status, _, body = request(srv, "POST", f"/v1/devices/{dev}/token", b"", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 201, body
    return json.loads(body)["token"]


def checkin_as(srv, dev, payload, token=None, raw=None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    return request(srv, "POST", f"/v1/devices/{dev}/checkin", raw if raw is not None else json.dumps(payload).encode(),
                   headers)


def test_device_checkins(server, bundles):
    a = json.loads(upload(server, bundles["a_tar"].read_bytes())[2])
    tokens = {dev: enrol(server, dev) for dev in ("kitchen-pi", "hall.pi_2")}

    def checkin(dev, payload):
        return checkin_as(server, dev, payload, tokens.get(dev))

    ok = {"target": "rpi", "channel": "stable", "bundle": a["id"], "status": "installed"}
    assert checkin("kitchen-pi", {**ok, "status": "running"})[0] == 201
    assert checkin("kitchen-pi", ok)[0] == 201
    assert checkin("hall.pi_2", {**ok, "bundle": None, "status": "failed", "detail": "smoke test failed"})[0] == 201
    status, _, body = checkin("bad%20id!", ok)
    assert status == 400 and "invalid device id" in detail(body)
    status, _, body = checkin("kitchen-pi", {**ok, "status": "exploded"})
    assert status == 422
    status, _, body = checkin("kitchen-pi", {**ok, "bundle": "f" * 16})
    assert status == 404 and "no bundle" in detail(body)
    status, _, body = checkin("kitchen-pi", {**ok, "channel": "nightly"})
    assert status == 404
    status, _, body = checkin_as(server, "kitchen-pi", None, tokens["kitchen-pi"], raw=b"{not json")
    assert status == 422
    status, _, body = request(server, "GET", "/v1/devices", headers={"Authorization": f"Bearer {TOKEN}"})
    devs = {d["device_id"]: d for d in json.loads(body)["devices"]}
    assert status == 200 and set(devs) == {"kitchen-pi", "hall.pi_2"}
    assert devs["kitchen-pi"]["status"] == "installed" and devs["kitchen-pi"]["bundle"] == a["id"]
    assert devs["hall.pi_2"]["status"] == "failed"


def test_serve_and_deploy_commands(tmp_path, keys, bundles):
    """`edgekws server serve` as its own process; `edgekws deploy` publishes to it."""
    from typer.testing import CliRunner

    from edgekws.cli import app

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgekws.cli", "server", "serve", "--root", str(tmp_path / "reg"),
                             "--port", "0", "--token-file", str(token_file), "--trusted-key", str(keys[0][1])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (url, proc.stderr.read() if proc.poll() is not None else "")
        deadline = time.monotonic() + 20
        while True:  # bound but maybe not accepting yet
            try:
                u = urllib.parse.urlsplit(url)
                con = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
                con.request("GET", "/healthz")
                if con.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        runner = CliRunner()
        out = lambda r: " ".join(r.output.split())  # noqa: E731 - rich wraps long lines
        res = runner.invoke(app, ["deploy", "--bundle", str(bundles["a"]), "--server", url, "--channel", "beta",
                                  "--token", TOKEN, "--json"])
        assert res.exit_code == 0, res.output
        info = json.loads(res.stdout.strip().splitlines()[-1])
        assert info["channels"] == ["beta"] and info["created"] is True
        res = runner.invoke(app, ["deploy", "--bundle", str(bundles["b"]), "--server", url, "--token", TOKEN])
        assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["server", "promote", info["id"], "--server", url, "--channel", "stable",
                                  "--token", TOKEN])
        assert res.exit_code == 0 and f"rpi/stable now serves {info['id']}" in out(res)
        res = runner.invoke(app, ["server", "promote", "0" * 16, "--server", url, "--token", TOKEN])
        assert res.exit_code == 2 and "404" in out(res) and "no bundle" in out(res)
        payload = {"target": "rpi", "channel": "stable", "bundle": info["id"], "status": "installed"}
        assert checkin_as(url, "pi-7", payload)[0] == 401  # not enrolled, and anonymous check-ins are off
        res = runner.invoke(app, ["server", "enrol", "pi-7", "--server", url, "--token", TOKEN])
        assert res.exit_code == 0, res.output
        status, _, body = checkin_as(url, "pi-7", payload, res.stdout.strip().splitlines()[0])
        assert status == 201 and json.loads(body)["enrolled"] is True
        res = runner.invoke(app, ["server", "devices", "--server", url, "--token", TOKEN, "--json"])
        assert res.exit_code == 0 and [d["device_id"] for d in json.loads(res.stdout)] == ["pi-7"]
        res = runner.invoke(app, ["server", "devices", "--server", url, "--token", "x" * 20])
        assert res.exit_code == 2 and "403" in out(res)
        res = runner.invoke(app, ["deploy", "--bundle", str(bundles["untrusted"]), "--server", url, "--token", TOKEN])
        assert res.exit_code == 2 and "422" in out(res) and "not by the trusted key" in out(res)
        res = runner.invoke(app, ["deploy", "--bundle", str(bundles["a"]), "--server", url, "--token", "x" * 20])
        assert res.exit_code == 2 and "invalid token" in out(res)
        res = runner.invoke(app, ["deploy", "--bundle", str(tmp_path / "nope"), "--server", url, "--token", TOKEN])
        assert res.exit_code == 2 and "no bundle at" in out(res)
        res = runner.invoke(app, ["deploy", "--bundle", str(bundles["a"]), "--server", "ftp://x", "--token", TOKEN])
        assert res.exit_code == 2 and "http://HOST:PORT" in out(res)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert (tmp_path / "reg" / "blobs" / f"{info['id']}.tar").is_file()


def stream_body(srv, method, path, total, headers=None, declare=None, chunk=64 * 1024):
    """Send up to ``total`` bytes as a request body (chunked, or raw after a declared Content-Length), stopping as
    soon as the server answers. Returns (status or None, body bytes sent, response bytes)."""
    import select
    import socket

    u = urllib.parse.urlsplit(getattr(srv, "url", srv))
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    hdrs = {"Host": f"{u.hostname}:{u.port}", **(headers or {})}
    hdrs.update({"Content-Length": str(declare)} if declare is not None else {"Transfer-Encoding": "chunked"})
    sock.sendall((f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n").encode())
    block = b"x" * chunk
    frame = block if declare is not None else f"{len(block):x}\r\n".encode() + block + b"\r\n"
    sent = 0
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered before the body was complete
            sock.sendall(frame)
            sent += len(block)
        else:
            if declare is None:
                sock.sendall(b"0\r\n\r\n")
    except OSError:  # the server closed the connection after answering
        pass
    data = b""
    try:
        while True:  # the refusal closes the connection
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except OSError:
        pass
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, sent, data


def test_request_bodies_are_bounded_before_they_are_read(server):
    big = 50 << 20
    # a declared Content-Length over the limit is refused before a byte of the body is sent
    status, sent, data = stream_body(server, "POST", "/v1/devices/pi/checkin", 0,
                                     {"Content-Type": "application/json"}, declare=big)
    assert status == 413 and sent == 0 and b"exceeds this registry's limit of 16384 bytes" in data
    # chunked: the server answers once it has read past the limit, long before 50 MB were sent
    for method, path in (("POST", "/v1/devices/pi/checkin"), ("PUT", "/v1/targets/rpi/channels/stable")):
        status, sent, data = stream_body(server, method, path, big, {"Content-Type": "application/json"})
        assert status == 413 and sent < big // 5, (method, status, sent)
    # the server still works
    assert request(server, "GET", "/healthz")[0] == 200


def test_refusals_do_not_echo_input_and_survive_lone_surrogates(server, bundles):
    a = json.loads(upload(server, bundles["a_tar"].read_bytes())[2])
    token = enrol(server, "kitchen-pi")
    ok = {"target": "rpi", "channel": "stable", "bundle": a["id"], "status": "installed"}
    status, _, body = checkin_as(server, "kitchen-pi", {**ok, "status": "x" * 12000}, token)
    assert status == 422 and len(body) < 1000 and b"xxxxxxxx" not in body, body[:200]
    assert "status" in detail(body)
    status, _, body = checkin_as(server, "kitchen-pi", {**ok, "detail": "y" * 12000}, token)
    assert status == 422 and len(body) < 1000 and b"yyyyyyyy" not in body
    status, _, body = checkin_as(server, "kitchen-pi", {**ok, "surprise": "z" * 5000}, token)
    assert status == 422 and len(body) < 1000 and b"zzzzzzzz" not in body
    for field in ("detail", "target", "status"):
        status, _, body = checkin_as(server, "kitchen-pi", {**ok, field: "\ud800"}, token)  # json escapes it
        assert status == 422 and detail(body), (field, status, body)
    status, _, body = checkin_as(server, "kitchen-pi", None, token, raw=b'{"\\ud800": 1}')
    assert status == 422
    status, _, body = request(server, "PUT", "/v1/targets/rpi/channels/stable",
                              json.dumps({"bundle": "\ud800" * 100}).encode(),
                              {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert status == 422 and b"\\\\ud800" not in body and len(body) < 1000


def test_checkins_need_the_devices_own_token(server, bundles):
    a = json.loads(upload(server, bundles["a_tar"].read_bytes())[2])
    ok = {"target": "rpi", "channel": "stable", "bundle": a["id"], "status": "installed"}
    status, headers, body = checkin_as(server, "kitchen-pi", ok)
    assert status == 401 and "not enrolled" in detail(body) and headers.get("www-authenticate") == "Bearer"
    status, _, body = request(server, "POST", "/v1/devices/kitchen-pi/token", b"")
    assert status == 401  # enrolling needs the publish token
    kitchen, hall = enrol(server, "kitchen-pi"), enrol(server, "hall-pi")
    assert kitchen != hall and len(kitchen) >= 32
    assert checkin_as(server, "kitchen-pi", ok)[0] == 401  # enrolled: its token is required
    assert checkin_as(server, "kitchen-pi", ok, hall)[0] == 403  # another device's token
    assert checkin_as(server, "kitchen-pi", ok, TOKEN)[0] == 403  # the publish token is not a device token
    assert checkin_as(server, "ghost", ok, kitchen)[0] == 403
    status, _, body = checkin_as(server, "kitchen-pi", ok, kitchen)
    assert status == 201 and json.loads(body)["enrolled"] is True
    new = enrol(server, "kitchen-pi")  # enrolling again replaces the token
    assert checkin_as(server, "kitchen-pi", ok, kitchen)[0] == 403
    assert checkin_as(server, "kitchen-pi", ok, new)[0] == 201
    # only a hash of each token is stored
    import sqlite3

    con = sqlite3.connect(server.config.root / "registry.sqlite")
    stored = [r[0] for r in con.execute("SELECT token_sha256 FROM device_tokens")]
    con.close()
    assert new not in stored and hashlib.sha256(new.encode()).hexdigest() in stored
    assert request(server, "DELETE", "/v1/devices/kitchen-pi/token", None,
                   {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert checkin_as(server, "kitchen-pi", ok, new)[0] == 403
    devs = json.loads(request(server, "GET", "/v1/devices", headers={"Authorization": f"Bearer {TOKEN}"})[2])
    assert [(d["device_id"], d["enrolled"]) for d in devs["devices"]] == [("kitchen-pi", True)]


def test_anonymous_checkins_are_an_explicit_option(tmp_path, keys, bundles):
    cfg = RegistryConfig(root=tmp_path / "anon", tokens=(TOKEN,), trusted_keys=(keys[0][1],), anonymous_checkins=True)
    with RegistryServer(cfg) as srv:
        a = json.loads(upload(srv, bundles["a_tar"].read_bytes())[2])
        ok = {"target": "rpi", "channel": "stable", "bundle": a["id"], "status": "installed"}
        status, _, body = checkin_as(srv, "anon-pi", ok)
        assert status == 201 and json.loads(body)["enrolled"] is False
        token = enrol(srv, "kitchen-pi")
        assert checkin_as(srv, "kitchen-pi", ok)[0] == 401  # no spoofing an enrolled device
        assert checkin_as(srv, "kitchen-pi", ok, token)[0] == 201
        devs = json.loads(request(srv, "GET", "/v1/devices", headers={"Authorization": f"Bearer {TOKEN}"})[2])
        assert {d["device_id"]: d["enrolled"] for d in devs["devices"]} == {"anon-pi": False, "kitchen-pi": True}


def test_signed_channel_pointers(server, bundles, keys, tmp_path):
    from edgekws.channel import encode_pointer, make_pointer
    from edgekws.server.registry import set_channel

    (priv, _), (other_priv, _) = keys
    a = json.loads(upload(server, bundles["a_tar"].read_bytes())[2])["id"]
    b = json.loads(upload(server, bundles["b_tar"].read_bytes(), channel="beta")[2])["id"]

    def put(bundle, pointer=None):
        body = {"bundle": bundle, **(encode_pointer(*pointer) if pointer else {})}
        status, _, raw = request(server, "PUT", "/v1/targets/rpi/channels/stable", json.dumps(body).encode(),
                                 {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        return status, detail(raw) if status >= 400 else json.loads(raw)

    assert put(b, make_pointer(priv, "rpi", "stable", b, 1))[0] == 200
    rel = json.loads(request(server, "GET", "/v1/targets/rpi/channels/stable")[2])
    assert rel["id"] == b and rel["pointer"] and rel["signature"]
    status, why = put(a, make_pointer(priv, "rpi", "stable", a, 1))  # a replayed version
    assert status == 409 and "not newer than version 1" in why
    status, why = put(a)
    assert status == 409 and "sign this one too" in why
    status, why = put(a, make_pointer(priv, "rpi", "stable", b, 2))
    assert status == 409 and "names rpi/stable" in why
    status, why = put(a, make_pointer(other_priv, "rpi", "stable", a, 2))
    assert status == 422 and "signature" in why
    from datetime import datetime, timedelta, timezone

    old = datetime.now(timezone.utc) - timedelta(days=40)
    status, why = put(a, make_pointer(priv, "rpi", "stable", a, 2, now=old))
    assert status == 422 and "expired" in why
    data, sig = make_pointer(priv, "rpi", "stable", a, 2)
    assert put(a, (data, sig[:-1] + bytes([sig[-1] ^ 1])))[0] == 422
    # the client signs the next version itself; an unsigned publish to a signed channel is refused
    info = set_channel(server.url, "rpi", "stable", a, TOKEN, pointer_key=priv)
    assert info["id"] == a
    rel = json.loads(request(server, "GET", "/v1/targets/rpi/channels/stable")[2])
    from edgekws.channel import decode_pointer, verify_pointer

    assert verify_pointer(*decode_pointer(rel["pointer"], rel["signature"]), keys[0][1])["version"] == 2
    with pytest.raises(RegistryError, match="sign this one too"):
        publish(bundles["b"], server.url, "stable", TOKEN)
    assert publish(bundles["b"], server.url, "stable", TOKEN, pointer_key=priv)["id"] == b
    rel = json.loads(request(server, "GET", "/v1/targets/rpi/channels/stable")[2])
    assert rel["id"] == b and verify_pointer(*decode_pointer(rel["pointer"], rel["signature"]), keys[0][1])["version"] == 3


def test_serve_refuses_a_trusted_key_that_is_not_a_key(tmp_path):
    from typer.testing import CliRunner

    from edgekws.cli import app

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    passwd = "root:x:0:0:root:/root:/bin/bash\n"  # 32 bytes, like a raw ed25519 key
    for name, text in (("passwd", passwd * 20), ("short", passwd), ("empty", "")):
        notakey = tmp_path / name
        notakey.write_text(text)
        res = CliRunner().invoke(app, ["server", "serve", "--root", str(tmp_path / "reg"), "--port", "0",
                                       "--token-file", str(token_file), "--trusted-key", str(notakey)])
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and "error:" in out and "not a PEM" in out and "Traceback" not in out, res.output
        assert isinstance(res.exception, SystemExit), res.exception
