"""Checkpoints are data: a hostile pickle runs nothing, damage and mismatched resumes get one-line refusals."""

from __future__ import annotations

import os
import shlex
import zipfile

import numpy as np
import pytest
import torch
from edgekws.models import create_model
from edgekws.server.checkpoint import (
    CheckpointError,
    content_digest,
    read_checkpoint,
    write_checkpoint,
)
from edgekws.server.train import (
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    train_model,
)
from test_datasets import make_gsc
from test_train import SMALL, _prepared
from typer.testing import CliRunner

from edgekws.cli import app
from edgekws.features import FeatureConfig

runner = CliRunner()


class _Hostile:
    """Pickles into a call of os.system: whoever unpickles it with a full unpickler runs the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _flip_weight_bit(path, entry_name=None):
    """Flip one bit in the middle of the largest tensor record of a torch zip checkpoint (not its header)."""
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if "/data/" in i.filename]
        info = max(infos, key=lambda i: i.file_size) if entry_name is None else zf.getinfo(entry_name)
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x04
    path.write_bytes(bytes(raw))


def _one_line(msg: str) -> str:
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def test_hostile_pickle_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKWS_HOME", str(tmp_path / "home"))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "edgekws-model", "version": 1, "x": _Hostile(marker)}, evil)
    with pytest.raises(ValueError, match="refused") as err:
        load_checkpoint(evil)
    _one_line(str(err.value))
    with pytest.raises(ValueError, match="refused"):
        read_checkpoint(evil)
    res = runner.invoke(app, ["export", "--checkpoint", str(evil), "--target", "rpi", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "refused" in res.output and "Traceback" not in res.output, res.output
    # a hostile file in place of the resume checkpoint
    w, y, xv, yv, cfg = _prepared()
    (tmp_path / "run").mkdir()
    torch.save({"model": _Hostile(marker)}, tmp_path / "run" / "last.pt")
    with pytest.raises(ValueError, match="refused"):
        train_model(w, y, xv, yv, cfg, 3, TrainConfig(**{**SMALL, "epochs": 2}), checkpoint_dir=tmp_path / "run",
                    resume=True)
    assert not marker.exists()
    # the file really is hostile: a full unpickler runs the command
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run of 3 epochs stopped after its first epoch was checkpointed; returns (data, run folder, last.pt bytes)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    data = _prepared()
    w, y, xv, yv, cfg = data

    class Stop(Exception):
        pass

    def stop(ev):
        if ev["event"] == "epoch":
            raise Stop

    with pytest.raises(Stop):
        train_model(w, y, xv, yv, cfg, 3, TrainConfig(**{**SMALL, "epochs": 3}), checkpoint_dir=tmp / "run",
                    progress=stop)
    return data, tmp / "run", (tmp / "run" / "last.pt").read_bytes()


def _resume(interrupted, tmp_path, content, **changes):
    (w, y, xv, yv, cfg), _, _ = interrupted
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "last.pt").write_bytes(content)
    return train_model(w, y, xv, yv, cfg, 3, TrainConfig(**{**SMALL, "epochs": 3, **changes}), checkpoint_dir=run,
                       resume=True)


def test_damaged_resume_checkpoints_are_refused_in_one_line(interrupted, tmp_path):
    _, _, good = interrupted
    assert len(_resume(interrupted, tmp_path, good).history) == 3  # the intact file resumes
    cases = {
        "truncated": (good[: len(good) // 2], "damaged, truncated"),
        "text": (b"this is a text file, not weights\n", "damaged, truncated"),
        "empty": (b"", "empty file (0 bytes)"),
    }
    for name, (content, phrase) in cases.items():
        with pytest.raises(ValueError) as err:
            _resume(interrupted, tmp_path, content)
        assert phrase in _one_line(str(err.value)) and "last.pt" in str(err.value), (name, str(err.value))
    (tmp_path / "flip.pt").write_bytes(good)
    _flip_weight_bit(tmp_path / "flip.pt")
    with pytest.raises(ValueError) as err:
        _resume(interrupted, tmp_path, (tmp_path / "flip.pt").read_bytes())
    assert "damaged" in _one_line(str(err.value)) and "checksum" in str(err.value)
    # a file written without a checksum (older edgekws) cannot be checked, so it is not resumed
    (tmp_path / "good.pt").write_bytes(good)
    blob = torch.load(tmp_path / "good.pt", weights_only=True)
    blob.pop("content_sha256")
    torch.save(blob, tmp_path / "nosum.pt")
    with pytest.raises(ValueError, match="has no checksum"):
        _resume(interrupted, tmp_path, (tmp_path / "nosum.pt").read_bytes())


def test_resume_with_other_settings_names_them(interrupted, tmp_path):
    _, _, good = interrupted
    with pytest.raises(ValueError) as err:
        _resume(interrupted, tmp_path, good, epochs=5)
    assert "--epochs 3 (now 5)" in _one_line(str(err.value))
    with pytest.raises(ValueError) as err:
        _resume(interrupted, tmp_path, good, model="dscnn", model_kwargs={})
    msg = _one_line(str(err.value))
    assert "--model 'cnn4' (now 'dscnn')" in msg and "model_kwargs.widths" in msg
    with pytest.raises(ValueError, match=r"training clips 72 \(now 71\)"):
        (w, y, xv, yv, cfg), _, _ = interrupted
        (tmp_path / "r2").mkdir()
        (tmp_path / "r2" / "last.pt").write_bytes(good)
        train_model(w[:-1], y[:-1], xv, yv, cfg, 3, TrainConfig(**{**SMALL, "epochs": 3}),
                    checkpoint_dir=tmp_path / "r2", resume=True)
    # the hardware may change between the run and its resumption
    assert len(_resume(interrupted, tmp_path, good, threads=2, device="cpu").history) == 3


def test_cli_train_resume_from_a_damaged_checkpoint_says_why(tmp_path):
    root = make_gsc(tmp_path / "gsc", words=("yes", "no"), speakers=10, per_speaker=1)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"")
    res = runner.invoke(app, ["train", "--dataset", "gsc", "--data-dir", str(root), "--keywords", "yes,no",
                              "--model", "dscnn", "--epochs", "2", "--batch-size", "8", "--out", str(out), "--resume"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "error:" in text and "empty file (0 bytes)" in text, res.output
    assert "Aborted" not in text


def test_model_checkpoint_checksum_and_older_files(tmp_path):
    model = create_model("cnn4", 3, (10, 48), widths=(4, 4, 4, 4))
    fc = FeatureConfig(n_mfcc=10)
    metrics = {"acc": np.float32(0.5), "n": np.int64(3), "torch": torch.__version__, "where": tmp_path, "ok": True}
    save_checkpoint(tmp_path / "m.pt", model, fc, ["a", "b", "c"], metrics)
    m2, _, classes, blob = load_checkpoint(tmp_path / "m.pt")
    assert classes == ["a", "b", "c"] and blob["version"] == 2
    assert blob["metrics"] == {"acc": 0.5, "n": 3, "torch": str(torch.__version__), "where": str(tmp_path), "ok": True}
    assert type(blob["metrics"]["torch"]) is str and blob["metrics"]["ok"] is True
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # one flipped bit in the weights
    (tmp_path / "f.pt").write_bytes((tmp_path / "m.pt").read_bytes())
    _flip_weight_bit(tmp_path / "f.pt")
    with pytest.raises(ValueError, match="damaged") as err:
        load_checkpoint(tmp_path / "f.pt")
    _one_line(str(err.value))
    # version 1 (written before checkpoints carried a checksum) still loads; version 2 without one does not
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    blob.pop("content_sha256")
    torch.save({**blob, "version": 1}, tmp_path / "v1.pt")
    assert load_checkpoint(tmp_path / "v1.pt")[2] == ["a", "b", "c"]
    torch.save(blob, tmp_path / "v2.pt")
    with pytest.raises(ValueError, match="has no checksum"):
        load_checkpoint(tmp_path / "v2.pt")
    # weights that do not fit the architecture the file names
    blob["model_config"] = {**blob["model_config"], "n_classes": 5}
    write_checkpoint(blob, tmp_path / "misfit.pt")
    with pytest.raises(ValueError, match="invalid model checkpoint") as err:
        load_checkpoint(tmp_path / "misfit.pt")
    _one_line(str(err.value))


def test_content_digest_sees_types_and_values():
    t = torch.arange(4, dtype=torch.float32)
    assert content_digest({"a": t}) == content_digest({"a": t.clone()})
    assert content_digest({"a": t}) != content_digest({"a": t.double()})
    assert content_digest({"a": 1}) != content_digest({"a": 1.0}) != content_digest({"a": True})
    assert content_digest({"a": [1, 2]}) != content_digest({"a": [2, 1]})
    with pytest.raises(TypeError):
        content_digest({"a": object()})
    assert issubclass(CheckpointError, ValueError)  # callers that catch ValueError see every refusal


def test_rfad_resume_checkpoint_is_checked_too(tmp_path):
    from edgekws.server.rfad import RFADConfig, distill

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    x = (rng.standard_normal((30, 8, 12)) + y[:, None, None] * 0.5).astype(np.float32)
    fc = FeatureConfig(normalization="none", clip_seconds=12 * 0.02 + 0.03, n_mfcc=8)
    cfg = RFADConfig(per_class=2, steps=2, n_models=1, pool_size=2, width=4, depth=2, batch_size=30, eval_every=1,
                     patience=0, seed=0, device="cpu", checkpoint_every=1)
    ckpt = tmp_path / "rfad.pt"
    distill(x, y, x, y, ["a", "b", "c"], fc, cfg, checkpoint_path=ckpt)
    assert "content_sha256" in torch.load(ckpt, weights_only=True)
    _flip_weight_bit(ckpt)
    with pytest.raises(ValueError, match="damaged") as err:
        distill(x, y, x, y, ["a", "b", "c"], fc, cfg, checkpoint_path=ckpt, resume=True)
    _one_line(str(err.value))
