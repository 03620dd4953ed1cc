"""Console messages keep what they say: rich markup does not eat [extras], and mistaken inputs get a clear line."""

from __future__ import annotations

import pytest
from edgekws.models import create_model
from edgekws.server.train import save_checkpoint
from ship_support import tiny_bundle
from typer.testing import CliRunner

from edgekws.bundle import generate_keypair, pack_bundle
from edgekws.cli import app
from edgekws.features import FeatureConfig

runner = CliRunner()


def _flat(res) -> str:
    return " ".join(res.output.split())  # rich wraps long lines


def test_advice_with_brackets_is_printed_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKWS_HOME", str(tmp_path / "home"))
    reason = "litert-torch is not installed; install the 'tflite' extra (pip install 'edgekws[tflite]')"
    monkeypatch.setattr("edgekws.export.pipeline.tflite_unavailable_reason", lambda: reason)
    fc = FeatureConfig(n_mfcc=10, clip_seconds=0.5)
    model = create_model("cnn4", 3, fc.shape, widths=(4, 4, 4, 4))
    save_checkpoint(tmp_path / "m.pt", model, fc, ["a", "b", "c"])
    res = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "m.pt"), "--target", "rpi",
                              "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "pip install 'edgekws[tflite]'" in _flat(res)
    res = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "run[3]" / "m.pt"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "run[3]" in _flat(res)


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("listen")
    priv, pub = generate_keypair(d / "keys")
    b = tiny_bundle(d / "bundle", priv)
    return b, pack_bundle(b, d / "bundle.tar"), pub


def test_listen_on_an_archive_says_to_unpack_it(signed, tmp_path):
    _, tar, pub = signed
    res = runner.invoke(app, ["listen", "--bundle", str(tar), "--public-key", str(pub), "--wav", str(tmp_path / "x")])
    out = _flat(res)
    assert res.exit_code == 2 and "is a bundle archive" in out and "unpack" in out and "does not exist" not in out
    (tmp_path / "notes.txt").write_text("hello")
    res = runner.invoke(app, ["listen", "--bundle", str(tmp_path / "notes.txt"), "--public-key", str(pub)])
    assert res.exit_code == 2 and "not a bundle folder" in _flat(res)


def test_a_capture_rate_of_zero_is_refused(signed):
    from edgekws.device.stream import open_source

    bundle, _, pub = signed
    res = runner.invoke(app, ["listen", "--bundle", str(bundle), "--public-key", str(pub), "--stdin", "--rate", "0"])
    assert res.exit_code == 2 and "--rate" in _flat(res), res.output
    with pytest.raises(ValueError, match="positive number of Hz"):
        open_source(stdin=True, input_rate=0)
    with pytest.raises(ValueError, match="positive number of Hz"):
        open_source(device=0, input_rate=0)
