"""Signed bundles (edgekws.bundle): writing, packing, unpacking, and refusing every kind of damage clearly."""

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from edgekws.bundle import (
    BUNDLE_FORMAT_VERSION,
    BundleError,
    generate_keypair,
    load_bundle,
    load_private_key,
    load_public_key,
    pack_bundle,
    unpack_bundle,
    verify_bundle,
    write_bundle,
    write_head,
)
from edgekws.features import FeatureConfig

CLASSES = ["yes", "no", "up"]


@pytest.fixture
def keys(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKWS_HOME", str(tmp_path / "home"))
    priv, pub = generate_keypair(tmp_path / "keys")
    return priv, pub


def make_bundle(tmp_path, priv, name="bundle", with_coreset=True):
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    write_head(tmp_path / "src" / "head.npz", W, b)
    files = {"head.npz": tmp_path / "src" / "head.npz", "model.onnx": b"fake onnx graph" * 40,
             "embedding.onnx": b"fake embedding graph" * 30}
    if with_coreset:
        files["coreset.npz"] = b"coreset bytes" * 10
    out = write_bundle(
        tmp_path / name, files, target="rpi", classes=CLASSES, feature_config=FeatureConfig(n_mfcc=10),
        model={"name": "dscnn", "config": {"n_classes": 3}, "params": 1234},
        graphs={"classifier": {"onnx_fp32": "model.onnx"}, "embedding": {"onnx_fp32": "embedding.onnx"}},
        private_key=priv, metrics={"test_accuracy": 0.9},
    )
    return out, (W, b)


def test_round_trip_directory_and_tar(tmp_path, keys):
    priv, pub = keys
    out, (W, b) = make_bundle(tmp_path, priv)
    m = verify_bundle(out, pub)
    assert m.trusted and m["format"] == "edgekws-bundle" and m.format_version == BUNDLE_FORMAT_VERSION
    assert m.classes == CLASSES and m.feature_config == FeatureConfig(n_mfcc=10) and m.target == "rpi"
    assert set(m.files) == {"head.npz", "model.onnx", "embedding.onnx", "coreset.npz"}
    assert m["coreset"] == "coreset.npz" and m["head"] == "head.npz"
    assert m["created_at"].endswith("Z") and m["public_key"]["key_id"] == m.key_id
    bundle = load_bundle(out, pub)
    assert bundle.graph_path("classifier", "onnx", "fp32") == out / "model.onnx"
    assert bundle.graph_path("embedding", "onnx", "fp32").read_bytes() == b"fake embedding graph" * 30
    W2, b2 = bundle.head()
    np.testing.assert_array_equal(W2, W)
    np.testing.assert_array_equal(b2, b)
    with pytest.raises(BundleError, match="no classifier graph in onnx int8; it has: .*classifier/onnx/fp32"):
        bundle.graph_path("classifier", "onnx", "int8")
    tar = pack_bundle(out)
    assert tar == tmp_path / "bundle.tar"
    assert pack_bundle(out, tmp_path / "again.tar").read_bytes() == tar.read_bytes()  # deterministic archive
    assert verify_bundle(tar, pub).data == m.data
    dest = unpack_bundle(tar, tmp_path / "installed", pub)
    assert load_bundle(dest, pub).manifest == bundle.manifest
    # the default pinned key is $EDGEKWS_HOME/keys/signing.pub
    with pytest.raises(BundleError, match="no pinned public key"):
        verify_bundle(out)
    generate_keypair()  # a different key at the default place
    with pytest.raises(BundleError, match="signed by key"):
        verify_bundle(out)


def test_signature_is_over_exact_manifest_bytes(tmp_path, keys):
    priv, pub = keys
    out, _ = make_bundle(tmp_path, priv)
    sig = (out / "manifest.sig").read_bytes()
    assert len(sig) == 64
    load_public_key(pub).verify(sig, (out / "manifest.json").read_bytes())  # raises if not
    assert load_public_key(priv).public_bytes_raw() == load_private_key(priv).public_key().public_bytes_raw()


def test_flipped_byte_in_a_graph_is_refused(tmp_path, keys):
    priv, pub = keys
    out, _ = make_bundle(tmp_path, priv)
    data = bytearray((out / "model.onnx").read_bytes())
    data[100] ^= 0x01
    (out / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx is damaged or was modified: sha256 .*same size, different bytes"):
        verify_bundle(out, pub)


def test_flipped_byte_in_the_manifest_breaks_the_signature(tmp_path, keys):
    priv, pub = keys
    out, _ = make_bundle(tmp_path, priv)
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text.replace('"yes"', '"yez"'))
    with pytest.raises(BundleError, match="wrong signature: manifest.sig does not match manifest.json"):
        verify_bundle(out, pub)


def test_missing_file_is_named(tmp_path, keys):
    priv, pub = keys
    out, _ = make_bundle(tmp_path, priv)
    (out / "embedding.onnx").unlink()
    with pytest.raises(BundleError, match=r"missing file embedding\.onnx \(listed in the manifest, 600 bytes\)"):
        verify_bundle(out, pub)
    out2, _ = make_bundle(tmp_path, priv, name="b2")
    (out2 / "manifest.sig").unlink()
    with pytest.raises(BundleError, match="manifest.sig is missing: the bundle is unsigned"):
        verify_bundle(out2, pub)
    (out2 / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        verify_bundle(out2, pub)


def test_truncated_or_extra_files_are_refused(tmp_path, keys):
    priv, pub = keys
    out, _ = make_bundle(tmp_path, priv)
    data = (out / "model.onnx").read_bytes()
    (out / "model.onnx").write_bytes(data[:-10])
    with pytest.raises(BundleError, match=r"model\.onnx is 590 bytes but the manifest says 600: .*truncated"):
        verify_bundle(out, pub)
    (out / "model.onnx").write_bytes(data)
    (out / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="unexpected file.*notes.txt"):
        verify_bundle(out, pub)


def test_wrong_signature_from_another_key(tmp_path, keys):
    priv, pub = keys
    other_priv, other_pub = generate_keypair(tmp_path / "other")
    out, _ = make_bundle(tmp_path, other_priv)
    with pytest.raises(BundleError, match="wrong signature: the bundle was signed by key .*, not by the trusted key"):
        verify_bundle(out, pub)
    assert verify_bundle(out, other_pub).trusted
    m = verify_bundle(out, trust_embedded_key=True)  # integrity only
    assert not m.trusted
    # a signature file swapped in from another bundle
    mine, _ = make_bundle(tmp_path, priv, name="mine")
    (mine / "manifest.sig").write_bytes((out / "manifest.sig").read_bytes())
    with pytest.raises(BundleError, match="wrong signature: manifest.sig does not match"):
        verify_bundle(mine, pub)
    (mine / "manifest.sig").write_bytes(b"short")
    with pytest.raises(BundleError, match="manifest.sig is 5 bytes, an ed25519 signature is 64"):
        verify_bundle(mine, pub)


def _resign(out, priv, edit):
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    data = json.dumps(m).encode()
    (out / "manifest.json").write_bytes(data)
    (out / "manifest.sig").write_bytes(load_private_key(priv).sign(data))


def test_newer_format_version_is_refused(tmp_path, keys):
    priv, pub = keys
    out, _ = make_bundle(tmp_path, priv)
    _resign(out, priv, lambda m: m.update(format_version=BUNDLE_FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match=f"format_version {BUNDLE_FORMAT_VERSION + 1} is newer than this edgekws "
                                          f"understands \\(up to {BUNDLE_FORMAT_VERSION}\\); upgrade"):
        verify_bundle(out, pub)
    _resign(out, priv, lambda m: m.update(format="something-else", format_version=1))
    with pytest.raises(BundleError, match="not an edgekws bundle"):
        verify_bundle(out, pub)


def test_signed_but_inconsistent_manifest_is_refused(tmp_path, keys):
    priv, pub = keys
    out, _ = make_bundle(tmp_path, priv)
    _resign(out, priv, lambda m: m["graphs"]["classifier"].update(onnx_int8="model.int8.onnx"))
    with pytest.raises(BundleError, match=r"graphs.classifier.onnx_int8 names 'model.int8.onnx'"):
        verify_bundle(out, pub)
    _resign(out, priv, lambda m: m["files"].update({"../evil": {"sha256": "0" * 64, "size": 1}}))
    with pytest.raises(BundleError, match="unsafe file name"):
        verify_bundle(out, pub)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        verify_bundle(out, pub)


def test_truncated_tar_is_refused(tmp_path, keys):
    priv, pub = keys
    out, _ = make_bundle(tmp_path, priv)
    tar = pack_bundle(out)
    data = tar.read_bytes()
    # cut inside a member's data, and cut exactly at a member boundary (no end-of-archive marker)
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    inside = members[2].offset_data + 7
    boundary = members[3].offset
    last = members[-1]
    half_marker = last.offset_data + -(-last.size // 512) * 512 + 512  # one of the two closing zero blocks
    for n, cut in enumerate((inside, boundary, half_marker)):
        short = tmp_path / f"short{n}.tar"
        short.write_bytes(data[:cut])
        with pytest.raises(BundleError, match="truncated"):
            verify_bundle(short, pub)
        with pytest.raises(BundleError, match="truncated"):
            unpack_bundle(short, tmp_path / f"dest{n}", pub)
        assert not (tmp_path / f"dest{n}").exists()
    (tmp_path / "garbage.tar").write_bytes(b"\x13" * 700)
    with pytest.raises(BundleError, match="not a tar archive"):
        verify_bundle(tmp_path / "garbage.tar", pub)


def _tar_with(path, entries):
    with tarfile.open(path, "w") as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_unpack_refuses_path_traversal_and_links(tmp_path, keys):
    _priv, pub = keys
    evil = tarfile.TarInfo("../outside.txt")
    evil.size = 3
    with pytest.raises(BundleError, match="unsafe file name"):
        unpack_bundle(_tar_with(tmp_path / "a.tar", [(evil, b"abc")]), tmp_path / "d1", pub)
    absolute = tarfile.TarInfo("/etc/passwd")
    absolute.size = 3
    with pytest.raises(BundleError, match="unsafe file name"):
        unpack_bundle(_tar_with(tmp_path / "b.tar", [(absolute, b"abc")]), tmp_path / "d2", pub)
    link = tarfile.TarInfo("model.onnx")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(BundleError, match="is a link"):
        unpack_bundle(_tar_with(tmp_path / "c.tar", [(link, None)]), tmp_path / "d3", pub)
    assert not (tmp_path / "outside.txt").exists()
    assert not any((tmp_path / d).exists() for d in ("d1", "d2", "d3"))


def test_write_refuses_bad_input_and_replaces_bundles_atomically(tmp_path, keys):
    priv, pub = keys
    common = {"target": "rpi", "classes": CLASSES, "feature_config": FeatureConfig(), "model": {"name": "x"},
                  "private_key": priv}
    with pytest.raises(ValueError, match="needs head.npz"):
        write_bundle(tmp_path / "b", {"model.onnx": b"x"}, graphs={}, **common)
    with pytest.raises(ValueError, match="not among the bundle files"):
        write_bundle(tmp_path / "b", {"head.npz": b"x"}, graphs={"classifier": {"onnx_fp32": "model.onnx"}}, **common)
    with pytest.raises(BundleError, match="unsafe file name"):
        write_bundle(tmp_path / "b", {"head.npz": b"x", "../x": b"y"}, graphs={}, **common)
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a bundle"):
        write_bundle(tmp_path / "occupied", {"head.npz": b"x"}, graphs={}, **common)
    assert (tmp_path / "occupied" / "thesis.tex").read_text() == "precious"
    out, _ = make_bundle(tmp_path, priv)
    first = verify_bundle(out, pub)
    out, _ = make_bundle(tmp_path, priv, with_coreset=False)  # rebuilt in place
    second = verify_bundle(out, pub)
    assert first["coreset"] == "coreset.npz" and second["coreset"] is None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left over


def test_keygen_refuses_to_overwrite(tmp_path):
    priv, pub = generate_keypair(tmp_path / "k")
    assert (priv.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError, match="already exists"):
        generate_keypair(tmp_path / "k")
    before = pub.read_bytes()
    generate_keypair(tmp_path / "k", overwrite=True)
    assert pub.read_bytes() != before
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ValueError, match="not a PEM"):
        load_public_key(tmp_path / "junk.pem")
    (tmp_path / "raw32.pub").write_bytes(load_public_key(pub).public_bytes_raw())  # a key file must be PEM
    with pytest.raises(ValueError, match="not a PEM"):
        load_public_key(tmp_path / "raw32.pub")
    assert load_public_key(load_public_key(pub).public_bytes_raw()) is not None  # raw bytes in memory still work


def test_bundle_module_imports_without_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'onnxscript'):\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edgekws.bundle, edgekws.targets\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
