"""Device updater against a real registry on a loopback port: install, resume, refuse, survive kill -9, roll back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_wav
from edgekws.bundle import generate_keypair
from edgekws.device.model import DeviceModel, current_version, list_versions, open_bundle, write_version
from edgekws.device.update import (
    CurrentWatcher,
    UpdateConfig,
    UpdateError,
    current_bundle,
    rollback,
    status,
    update,
)
from edgekws.server.registry import RegistryConfig, RegistryServer, enrol_device, publish
from ship_support import tiny_bundle

TOKEN = "t0ken-for-tests-0123456789"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return generate_keypair(d / "trusted"), generate_keypair(d / "other")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("bundles")
    (priv, _), (other, _) = keys
    return {
        "a": tiny_bundle(d / "a", priv),
        "b": tiny_bundle(d / "b", priv, head_seed=1),  # same embedding graph as a
        "c": tiny_bundle(d / "c", priv, emb_seed=1, head_seed=2),  # another embedding graph
        "broken": tiny_bundle(d / "broken", priv, head_seed=3, broken_classifier=True),
        "other_key": tiny_bundle(d / "other_key", other, head_seed=4),
        "big": tiny_bundle(d / "big", priv, head_seed=5, padding_bytes=600_000),
    }


@pytest.fixture
def server(tmp_path, keys):
    cfg = RegistryConfig(root=tmp_path / "registry", tokens=(TOKEN,), trusted_keys=(keys[0][1], keys[1][1]))
    with RegistryServer(cfg) as srv:
        yield srv


@pytest.fixture
def device(tmp_path, server, keys):
    token = enrol_device(server.url, "test-pi", TOKEN)["token"]
    return UpdateConfig(server=server.url, target="rpi", root=tmp_path / "dev" / "bundles", public_key=keys[0][1],
                        state_root=tmp_path / "dev", chunk_bytes=16 * 1024, device_id="test-pi", device_token=token)


def _id(bundle: Path) -> str:
    import hashlib

    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:16]


def _infer(root: Path, pub, state_root: Path | None = None) -> np.ndarray:
    """Open <root>/current as `listen` would and run one inference."""
    info = open_bundle(root / "current", pub)
    sd = state_root / info.identity if state_root is not None else None
    model = DeviceModel(info, state=sd)
    x = np.random.default_rng(0).standard_normal((1, 1, *info.feature_config.shape)).astype(np.float32)
    out = model.logits(x)
    assert out.shape == (1, len(model.classes)) and np.all(np.isfinite(out))
    return out


def test_install_update_carry_heads_set_aside_and_rollback(server, device, bundles, keys):
    pub = keys[0][1]
    root, state = device.root, device.state_root
    a, b, c = (_id(bundles[k]) for k in "abc")
    with pytest.raises(UpdateError, match="nothing published"):
        update(device)
    publish(bundles["a"], server.url, "stable", TOKEN)
    watcher = CurrentWatcher(root)
    assert watcher.bundle is None and not watcher.changed()
    events = []
    res = update(device, events.append)
    assert watcher.changed() and watcher.bundle == a and not watcher.changed()
    assert res.status == "installed" and res.bundle == a and res.previous is None
    assert res.bytes_downloaded == res.size > 0 and res.resumed_from == 0 and res.checkin == "ok"
    assert res.smoke["bundle"]["classes"] == 3
    assert os.readlink(root / "current") == f"versions/{a}" and current_bundle(root) == root / "current"
    kinds = [e["event"] for e in events]
    assert kinds.index("verified") < kinds.index("smoke") < kinds.index("switch") < kinds.index("switched")
    _infer(root, pub)
    assert update(device).status == "up-to-date"

    # the device fine-tunes a head (with a new class) on bundle a
    info = open_bundle(root / "current", pub)
    W = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    write_version(state / a, W, np.zeros(4, np.float32), ["_silence_", "yes", "no", "lamp"],
                  {"n_labeled": 5, "n_coreset": 0})
    assert info.identity == a
    from edgekws.device.store import LabelStore

    store_a = LabelStore(state / a / "labels.sqlite")  # kept open, as by a running `device label --web`
    clip = store_a.add_clips([{"path": "clips/1.wav", "embedding": np.ones(8, np.float32)}])[0]
    store_a.set_label(clip, "lamp")
    (state / a / "clips").mkdir()
    (state / a / "clips" / "1.wav").write_bytes(b"RIFF")
    (state / a / "temperature.json").write_text('{"onnx_fp32": 2.5}')  # caches of bundle a's graphs
    (state / a / "coreset_emb_onnx_fp32.npz").write_bytes(b"x")

    # b keeps a's embedding graph: the local head comes along and is the one in use
    publish(bundles["b"], server.url, "stable", TOKEN)
    res = update(device)
    assert res.status == "installed" and res.bundle == b and res.previous == a and res.local_state == "carried"
    assert watcher.changed() and watcher.bundle == b
    assert res.smoke["local"]["classes"] == 4  # the smoke test ran the carried head on b's embedding graph
    assert list_versions(state / b) == ["v0001"] and current_version(state / b) == "v0001"
    assert _infer(root, pub, state).shape == (1, 4)
    assert list_versions(state / a) == ["v0001"]  # a's own copy stays for a rollback
    store_a.close()
    with LabelStore(state / b / "labels.sqlite") as store:
        assert store.counts() == {"lamp": 1} and store.labeled()[0].embedding.tolist() == [1.0] * 8
    assert (state / b / "clips" / "1.wav").read_bytes() == b"RIFF"
    assert not (state / b / "temperature.json").exists() and not list((state / b).glob("coreset_emb_*"))

    # c changes the embedding graph: heads are set aside (kept with a/b), not applied to c
    publish(bundles["c"], server.url, "stable", TOKEN)
    res = update(device)
    assert res.bundle == c and res.local_state == "set-aside" and "local" not in res.smoke
    assert list_versions(state / c) == [] and list_versions(state / b) == ["v0001"]
    assert _infer(root, pub, state).shape == (1, 3)
    hist = status(root)["history"]
    assert hist[-1]["local_state"] == "set-aside" and hist[-1]["old_state"] == str(state / b)

    # rollback: b again, with its fine-tuned head
    res = rollback(root, pub, state_root=state)
    assert res.status == "rolled-back" and res.bundle == b and res.previous == c and res.local_state == "kept"
    assert os.readlink(root / "current") == f"versions/{b}" and _infer(root, pub, state).shape == (1, 4)
    st = status(root)
    assert st["current"] == b and st["previous"] == c and {v["id"] for v in st["versions"]} == {a, b, c}
    # rolling back again goes forward to c; an unknown id is a clear error
    assert rollback(root, pub, state_root=state).bundle == c
    with pytest.raises(UpdateError, match="not installed"):
        rollback(root, pub, to="0" * 16, state_root=state)
    with pytest.raises(UpdateError, match="invalid bundle id"):
        rollback(root, pub, to="../../etc", state_root=state)

    # the registry knows what this device runs
    import urllib.request

    req = urllib.request.Request(f"{server.url}/v1/devices", headers={"Authorization": f"Bearer {TOKEN}"})
    devs = json.loads(urllib.request.urlopen(req).read())["devices"]
    assert devs == [dict(devs[0], device_id="test-pi", bundle=c, status="installed")]


def test_damaged_download_is_refused(server, device, bundles, keys):
    import dataclasses

    publish(bundles["a"], server.url, "stable", TOKEN)
    with pytest.raises(UpdateError, match="more than this device accepts"):
        update(dataclasses.replace(device, max_bundle_bytes=4096))
    a = update(device).bundle
    info = publish(bundles["b"], server.url, "stable", TOKEN)
    blob = server.config.root / "blobs" / f"{info['id']}.tar"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # storage corruption on the server after publishing
    blob.write_bytes(bytes(data))
    with pytest.raises(UpdateError, match="sha256"):
        update(device)
    assert os.readlink(device.root / "current") == f"versions/{a}"
    assert not (device.root / "versions" / info["id"]).exists()
    assert list((device.root / "downloads").glob("*.part")) == []  # the damaged download is discarded
    _infer(device.root, keys[0][1])


def test_bundle_from_an_unpinned_signer_is_refused(server, device, bundles, keys):
    publish(bundles["a"], server.url, "stable", TOKEN)
    a = update(device).bundle
    publish(bundles["other_key"], server.url, "stable", TOKEN)  # the registry trusts both keys, the device one
    with pytest.raises(UpdateError, match="wrong signature"):
        update(device)
    assert os.readlink(device.root / "current") == f"versions/{a}"
    assert sorted(p.name for p in (device.root / "versions").iterdir()) == [a]
    assert status(device.root)["history"][-1]["event"] == "refused"
    assert list((device.root / "downloads").iterdir()) == []  # no <id>.json, .tar or .part left behind
    with pytest.raises(UpdateError, match="was refused here on .* not fetched again"):
        update(device)  # the next poll does not download it again
    import dataclasses

    with pytest.raises(UpdateError, match="wrong signature"):
        update(dataclasses.replace(device, retry_refused=True))


def test_failed_smoke_test_keeps_the_old_bundle(server, device, bundles, keys):
    publish(bundles["a"], server.url, "stable", TOKEN)
    a = update(device).bundle
    publish(bundles["broken"], server.url, "stable", TOKEN)  # signed and hashed, but its graph does not load
    with pytest.raises(UpdateError, match="smoke test .* failed"):
        update(device)
    assert os.readlink(device.root / "current") == f"versions/{a}"
    assert sorted(p.name for p in (device.root / "versions").iterdir()) == [a]
    _infer(device.root, keys[0][1])
    with pytest.raises(UpdateError, match="was refused here"):
        update(device)
    # a fixed bundle on the channel installs
    b = publish(bundles["b"], server.url, "stable", TOKEN)["id"]
    assert update(device).bundle == b


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stale_part", [False, True])
def test_interrupted_download_resumes_with_a_range_request(server, device, bundles, keys, stale_part):
    info = publish(bundles["big"], server.url, "stable", TOKEN)
    size = info["size"]

    def cut(ev):
        if ev["event"] == "download" and ev["done"] >= size // 2:
            raise _Stop

    with pytest.raises(_Stop):
        update(device, cut)
    part = device.root / "downloads" / f"{info['id']}.tar.part"
    have = part.stat().st_size
    assert size // 2 <= have < size
    assert current_bundle(device.root) is None
    assert status(device.root)["partial_downloads"] == [part.name]
    if stale_part:  # the part was cut from another copy of the archive: If-Range makes the server send it whole
        meta = part.with_name(f"{info['id']}.json")
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "etag": '"stale"'}))
        res = update(device)
        assert res.status == "installed" and res.resumed_from == 0 and res.bytes_downloaded == size
    else:
        res = update(device)
        assert res.status == "installed" and res.resumed_from == have and res.bytes_downloaded == size - have
    assert not part.exists()
    _infer(device.root, keys[0][1])


_DRIVER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from edgekws.device.update import UpdateConfig, update
    server, root, state, pub, phase, marker = sys.argv[1:7]
    cfg = UpdateConfig(server=server, target="rpi", root=Path(root), public_key=Path(pub), state_root=Path(state),
                       chunk_bytes=16 * 1024, checkin=False)

    def pause(ev):
        hit = ev["event"] == phase
        if phase == "download":
            hit = hit and ev["done"] >= ev["total"] // 2
        if hit:
            Path(marker).write_text(json.dumps(ev))
            time.sleep(600)

    update(cfg, None if phase == "none" else pause)
""")


def _spawn(device, pub, phase, marker):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _DRIVER, device.server, str(device.root), str(device.state_root),
                             str(pub), phase, str(marker)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.mark.parametrize("phase", ["download", "verified", "state", "smoke", "switch"])
def test_kill_9_during_an_update_leaves_a_working_bundle(server, device, bundles, keys, tmp_path, phase):
    pub = keys[0][1]
    publish(bundles["a"], server.url, "stable", TOKEN)
    a = update(device).bundle
    write_version(device.state_root / a, np.ones((3, 8), np.float32), np.zeros(3, np.float32),
                  ["_silence_", "yes", "no"], {"n_labeled": 1, "n_coreset": 0})
    info = publish(bundles["big"], server.url, "stable", TOKEN)
    marker = tmp_path / "marker.json"
    proc = _spawn(device, pub, phase, marker)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the updater never reached " + phase
            time.sleep(0.02)
        if phase == "smoke":  # a second updater meanwhile is refused, not run alongside
            with pytest.raises(UpdateError, match="another update"):
                update(device)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the old bundle is in use, verifies and runs, with its local head
    assert os.readlink(device.root / "current") == f"versions/{a}"
    assert _infer(device.root, pub, device.state_root).shape == (1, 3)
    # the next update finishes the job (resuming the half download)
    res = update(device)
    assert res.status == "installed" and res.bundle == info["id"] and res.previous == a
    if phase == "download":
        assert res.resumed_from >= info["size"] // 2
    if phase in ("smoke", "switch"):
        assert res.bytes_downloaded == 0  # already unpacked and verified: nothing fetched again
    assert res.local_state in ("carried", "kept")
    assert current_version(device.state_root / info["id"]) == "v0001"
    leftovers = [p.name for p in device.root.rglob(".*.tmp")] + \
        [p.name for p in device.state_root.glob(".*.tmp")]
    assert leftovers == []
    _infer(device.root, pub, device.state_root)


def test_kill_9_at_random_moments(server, device, bundles, keys, tmp_path):
    """Kill the updater at arbitrary times; every time, `current` is a complete bundle that runs."""
    pub = keys[0][1]
    publish(bundles["a"], server.url, "stable", TOKEN)
    a = update(device).bundle
    b = publish(bundles["big"], server.url, "stable", TOKEN)["id"]
    for delay in (0.3, 0.8, 1.3, 1.9):
        proc = _spawn(device, pub, "none", tmp_path / "unused")
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        cur = os.readlink(device.root / "current").split("/")[-1]
        assert cur in (a, b)
        _infer(device.root, pub)
        if cur == b:
            break
    res = update(device)
    assert res.bundle == b and os.readlink(device.root / "current") == f"versions/{b}"


def test_cli_update_installed_rollback_and_errors(server, device, bundles, keys, tmp_path):
    from typer.testing import CliRunner

    from edgekws.cli import app

    runner = CliRunner()
    out = lambda r: " ".join(r.output.split())  # noqa: E731 - rich wraps long lines
    base = ["--root", str(device.root), "--public-key", str(keys[0][1]), "--state", str(device.state_root)]
    res = runner.invoke(app, ["device", "rollback", *base])
    assert res.exit_code == 2 and "nothing to roll back to" in out(res)
    publish(bundles["a"], server.url, "stable", TOKEN)
    publish(bundles["b"], server.url, "beta", TOKEN)
    res = runner.invoke(app, ["device", "update", "--server", server.url, "--target", "rpi", *base, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["bundle"] == _id(bundles["a"])
    res = runner.invoke(app, ["device", "update", "--server", server.url, "--channel", "beta", *base])
    assert res.exit_code == 0 and f"installed {_id(bundles['b'])}" in out(res)
    res = runner.invoke(app, ["device", "installed", "--root", str(device.root)])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert any(ln.startswith(f"* {_id(bundles['b'])}") for ln in lines)
    assert any(ln.startswith(f"< {_id(bundles['a'])}") for ln in lines)
    res = runner.invoke(app, ["device", "rollback", *base, "--server", server.url])
    assert res.exit_code == 0 and f"rolled back to {_id(bundles['a'])}" in out(res)
    res = runner.invoke(app, ["device", "update", "--server", server.url, "--channel", "nightly", *base])
    assert res.exit_code == 2 and "unknown channel" in out(res) and "stays in use" in out(res)
    res = runner.invoke(app, ["device", "update", "--server", "http://127.0.0.1:9", *base])
    assert res.exit_code == 2 and "cannot reach" in out(res)
    res = runner.invoke(app, ["device", "update", "--server", server.url, "--public-key", str(tmp_path / "no.pub"),
                              "--root", str(device.root)])
    assert res.exit_code == 2 and "public key not found" in out(res)
    assert os.readlink(device.root / "current") == f"versions/{_id(bundles['a'])}"


def test_publish_update_listen_end_to_end(server, tmp_path, tmp_path_factory):
    """A trained keyword bundle: deploy -> registry -> device update -> `edgekws listen` hears the words."""
    from typer.testing import CliRunner

    from device_support import bundle_public_key, keyword_bundle, sentence
    from edgekws.cli import app

    bundle = keyword_bundle(tmp_path_factory.getbasetemp().parent)
    pub = bundle_public_key(bundle)
    cfg = RegistryConfig(root=tmp_path / "reg2", tokens=(TOKEN,), trusted_keys=(pub,))
    runner = CliRunner()
    with RegistryServer(cfg) as srv:
        res = runner.invoke(app, ["deploy", "--bundle", str(bundle), "--server", srv.url, "--token", TOKEN])
        assert res.exit_code == 0, res.output
        root = tmp_path / "pi" / "bundles"
        res = runner.invoke(app, ["device", "update", "--server", srv.url, "--target", "rpi", "--root", str(root),
                                  "--public-key", str(pub), "--state", str(tmp_path / "pi"), "--json"])
        assert res.exit_code == 0, res.output
    words = ["yes", "stop", "no"]
    y, spans = sentence(words, gap_s=1.2, lead_s=1.0, seed=5)
    wav = write_wav(tmp_path / "sentence.wav", y)
    res = runner.invoke(app, ["listen", "--bundle", str(root / "current"), "--public-key", str(pub), "--wav",
                              str(wav), "--json", "--state", str(tmp_path / "pi")])
    assert res.exit_code == 0, res.output
    events = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert [e["keyword"] for e in events] == words
    for e, (_, on, off) in zip(events, spans):
        assert on - 0.05 <= e["time"] <= off + 1.0


def test_updater_imports_without_torch():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name == "fastapi":
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import edgekws.device.update, edgekws.cli.ship
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.fixture(scope="module")
def dated(tmp_path_factory, keys):
    """Bundles with chosen (signed) creation times: ``old`` from January, ``new`` from June."""
    import edgekws.bundle as bundle_mod

    d = tmp_path_factory.mktemp("dated")
    out = {}
    saved = bundle_mod._utc_now
    try:
        for name, when, seed in (("old", "2026-01-05T10:00:00Z", 11), ("new", "2026-06-05T10:00:00Z", 12)):
            bundle_mod._utc_now = lambda when=when: when
            out[name] = tiny_bundle(d / name, keys[0][0], head_seed=seed)
    finally:
        bundle_mod._utc_now = saved
    return out


def _registry_sql(server, sql, args=()):
    import sqlite3

    con = sqlite3.connect(server.config.root / "registry.sqlite")
    try:
        with con:
            return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_a_release_older_than_the_one_in_use_needs_a_person(server, device, dated, keys):
    import dataclasses

    from edgekws.server.registry import set_channel

    old, new = _id(dated["old"]), _id(dated["new"])
    publish(dated["old"], server.url, "beta", TOKEN)
    publish(dated["new"], server.url, "stable", TOKEN)
    assert update(device).bundle == new
    set_channel(server.url, "rpi", "stable", old, TOKEN)  # the registry points the channel back (unsigned)
    with pytest.raises(UpdateError, match="older than the one in use.*refusing a downgrade"):
        update(device)
    assert os.readlink(device.root / "current") == f"versions/{new}"
    assert sorted(p.name for p in (device.root / "versions").iterdir()) == [new]  # not even downloaded
    # a registry that lies about the creation time: the signed manifest decides, and nothing is kept
    _registry_sql(server, "UPDATE bundles SET created_at = ? WHERE id = ?", ("2027-01-01T00:00:00Z", old))
    with pytest.raises(UpdateError, match="signed manifest"):
        update(device)
    assert os.readlink(device.root / "current") == f"versions/{new}"
    assert sorted(p.name for p in (device.root / "versions").iterdir()) == [new]
    assert not [p for p in (device.root / "downloads").iterdir() if p.suffix in (".json", ".part")]
    # a person asks for it
    res = update(dataclasses.replace(device, allow_downgrade=True))
    assert res.status == "installed" and res.bundle == old


def test_signed_pointers_roll_back_on_purpose_and_stale_metadata_is_noticed(server, device, dated, keys):
    from datetime import datetime, timedelta, timezone

    from edgekws.channel import encode_pointer, make_pointer
    from edgekws.server.registry import set_channel

    priv, other = keys[0][0], keys[1][0]
    old, new = _id(dated["old"]), _id(dated["new"])
    publish(dated["old"], server.url, "beta", TOKEN)
    publish(dated["new"], server.url, "stable", TOKEN, pointer_key=priv)
    assert update(device).bundle == new
    seen = json.loads((device.root / "channels.json").read_text())["rpi/stable"]
    assert seen["version"] == 1 and seen["bundle"] == new
    # a pointer signed for the older bundle is a person's decision: devices follow it
    set_channel(server.url, "rpi", "stable", old, TOKEN, pointer_key=priv)
    res = update(device)
    assert res.status == "installed" and res.bundle == old
    assert json.loads((device.root / "channels.json").read_text())["rpi/stable"]["version"] == 2

    def serve_release(bundle, pointer=None):
        """What a compromised or restored-from-backup registry could serve (bypassing the server's own checks)."""
        enc = encode_pointer(*pointer) if pointer else {"pointer": None, "signature": None}
        _registry_sql(server, "INSERT INTO releases (target, channel, bundle_id, at, how, pointer, pointer_sig, "
                              "pointer_version) VALUES ('rpi', 'stable', ?, 'x', 'set', ?, ?, ?)",
                      (bundle, pointer[0] if pointer else None, pointer[1] if pointer else None,
                       json.loads(pointer[0])["version"] if pointer else None))
        return enc

    # replayed: the version-1 pointer (to the newer bundle) again
    serve_release(new, make_pointer(priv, "rpi", "stable", new, 1))
    with pytest.raises(UpdateError, match="pointer version 1 .* older than version 2 seen before"):
        update(device)
    # unsigned metadata after signed
    serve_release(new)
    with pytest.raises(UpdateError, match="not signed, but this device has seen signed"):
        update(device)
    # frozen: a pointer that has expired
    serve_release(new, make_pointer(priv, "rpi", "stable", new, 3, valid_days=30,
                                    now=datetime.now(timezone.utc) - timedelta(days=31)))
    with pytest.raises(UpdateError, match="expired at .* stale metadata"):
        update(device)
    # signed by a key the registry trusts but the device does not pin
    serve_release(new, make_pointer(other, "rpi", "stable", new, 4))
    with pytest.raises(UpdateError, match="does not verify against the pinned key"):
        update(device)
    # a pointer for another bundle than the one the registry names
    serve_release(new, make_pointer(priv, "rpi", "stable", old, 5))
    with pytest.raises(UpdateError, match="names rpi/stable -> "):
        update(device)
    assert os.readlink(device.root / "current") == f"versions/{old}"
    assert json.loads((device.root / "channels.json").read_text())["rpi/stable"]["version"] == 2
    # a fresh pointer moves the device forward again
    serve_release(new, make_pointer(priv, "rpi", "stable", new, 6))
    assert update(device).bundle == new


def test_an_over_long_download_leaves_nothing_behind(device, bundles, tmp_path):
    """A server that sends more bytes than the release announced: refused, and no .part or .json kept."""
    import dataclasses
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from edgekws.bundle import pack_bundle

    data = pack_bundle(bundles["a"], tmp_path / "a.tar").read_bytes()
    bid = _id(bundles["a"])
    release = {"id": bid, "target": "rpi", "size": len(data) - 100, "sha256": hashlib.sha256(data).hexdigest(),
               "url": f"/v1/bundles/{bid}/bundle.tar", "created_at": "2026-01-01T00:00:00Z"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = json.dumps(release).encode() if "/channels/" in self.path else data
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        cfg = dataclasses.replace(device, server=f"http://127.0.0.1:{httpd.server_address[1]}", checkin=False)
        with pytest.raises(UpdateError, match="more than the .* bytes"):
            update(cfg)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert list((device.root / "downloads").iterdir()) == []
