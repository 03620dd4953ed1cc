import json

import numpy as np
import pytest
import torch

from edgekws.features import FeatureConfig
from edgekws.server import rfad
from edgekws.server.distributed import Comm
from edgekws.server.rfad import (
    CORESET_VERSION,
    Coreset,
    RandomConvNets,
    RFADConfig,
    distill,
    kernel_ridge,
    krr_predict,
    random_real_coreset,
)

CLASSES = ("up", "down", "side")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def feature_cfg(h: int, w: int) -> FeatureConfig:
    """A FeatureConfig whose model input shape is (h, w): default 50 ms windows every 20 ms."""
    return FeatureConfig(n_mfcc=h, clip_seconds=(800 + (w - 1) * 320) / 16000, normalization="none")


def toy(n_per: int, seed: int, h: int = 8, w: int = 12, amp: float = 0.6, noise: float = 1.0):
    """Three classes with structured means (top rows, bottom rows, middle columns) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    means = np.zeros((3, h, w), np.float32)
    band_h, band_w = max(1, h // 3), max(1, w // 3)
    means[0, :band_h] = amp
    means[1, -band_h:] = amp
    means[2, :, band_w : 2 * band_w] = amp
    y = np.repeat(np.arange(3), n_per)
    x = means[y] + noise * rng.standard_normal((len(y), h, w)).astype(np.float32)
    order = rng.permutation(len(y))
    return x[order], y[order]


def small_cfg(**kw) -> RFADConfig:
    base = dict(per_class=1, steps=40, n_models=2, pool_size=6, width=16, depth=2, lr=0.03, label_lr=0.03,
                batch_size=120, eval_every=5, patience=0, checkpoint_every=2, seed=0, device="cpu")
    base.update(kw)
    return RFADConfig(**base)


def run(cfg: RFADConfig, seed: int = 0, h: int = 8, w: int = 12, **kw) -> Coreset:
    xt, yt = toy(40, 10 + seed, h, w)
    xv, yv = toy(20, 100 + seed, h, w)
    return distill(xt, yt, xv, yv, CLASSES, feature_cfg(h, w), cfg, **kw)


def test_krr_separates_a_toy_problem():
    cfg = small_cfg()
    xs, ys = toy(4, 1, amp=2.0, noise=0.3)
    xq, yq = toy(30, 2, amp=2.0, noise=0.3)
    pred = krr_predict(xs, ys, xq, cfg)
    assert pred.shape == (90, 3) and pred.dtype == np.float64
    assert (pred.argmax(1) == yq).all()
    # soft targets give the same as integer labels; with a tiny ridge the support set is interpolated
    assert np.allclose(krr_predict(xs, np.eye(3, dtype=np.float32)[ys], xq, cfg), pred)
    own = krr_predict(xs, ys, xs, RFADConfig(**{**cfg.to_dict(), "reg": 1e-8}))
    assert np.allclose(own, np.eye(3)[ys], atol=1e-3)


def test_kernel_is_the_mean_over_nets_and_matches_the_nets_it_was_given():
    cfg = small_cfg()
    nets = RandomConvNets.pool(cfg)
    x = torch.from_numpy(toy(2, 3)[0])
    f = nets.features(x)
    assert f.shape == (6, cfg.pool_size, nets.feature_dim((8, 12)))
    # any subset of nets equals the same nets computed alone (grouped convolution is exact)
    sub = nets.features(x, [4, 1])
    assert torch.allclose(sub[:, 0], nets.features(x, [4])[:, 0], atol=1e-5)
    assert torch.allclose(sub[:, 1], f[:, 1], atol=1e-5)
    # a net does not depend on the size of the set it was drawn with
    bigger = RandomConvNets(cfg.pool_size + 3, cfg.width, cfg.depth, cfg.seed)
    assert torch.equal(bigger.weights[1][:cfg.pool_size], nets.weights[1])
    # evaluation nets are distinct from the pool
    assert not torch.equal(RandomConvNets.evaluation(cfg).weights[0][0], nets.weights[0][0])


def _step_grads(cfg, monkeypatch=None, tiny_chunks=False):
    xt, yt = toy(30, 5)
    pool = RandomConvNets.pool(cfg)
    real = pool.features(torch.from_numpy(xt)).transpose(0, 1).contiguous()
    targets = torch.from_numpy(np.eye(3)[yt])
    obj = rfad._Objective(cfg, pool, real, {j: j for j in range(cfg.pool_size)}, targets, torch.from_numpy(yt), Comm())
    xc0, yc0 = random_real_coreset(xt, yt, 2, seed=0)
    x_c = torch.from_numpy(xc0).requires_grad_(True)
    y_c = torch.from_numpy(yc0).requires_grad_(True)
    log_tau = torch.tensor(np.log(0.1), dtype=torch.float32, requires_grad=True)
    if tiny_chunks:
        monkeypatch.setattr(rfad, "_GRAD_CHUNK_BYTES", 1)
    loss = obj.backward(x_c, y_c, log_tau, torch.tensor([0, 3]), torch.arange(len(yt)))
    return loss, x_c.grad, y_c.grad, log_tau.grad


@pytest.mark.parametrize("loss", ["mse", "platt"])
def test_gradients_reach_the_coreset_and_its_labels(loss, monkeypatch):
    cfg = small_cfg(loss=loss)
    value, gx, gy, gt = _step_grads(cfg)
    assert np.isfinite(value) and value > 0
    for g in (gx, gy):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    if loss == "platt":
        assert gt is not None and torch.isfinite(gt) and gt != 0
    # recomputing the coreset in chunks (large coresets) gives the same gradients as one pass
    value2, gx2, gy2, _ = _step_grads(cfg, monkeypatch, tiny_chunks=True)
    assert value2 == pytest.approx(value, rel=1e-6)
    assert torch.allclose(gx2, gx, rtol=1e-4, atol=1e-7)
    assert torch.allclose(gy2, gy, rtol=1e-4, atol=1e-7)


def test_kernel_ridge_is_differentiable_in_float64():
    k_cc = torch.eye(3, requires_grad=True)
    k_qc = torch.ones(2, 3, requires_grad=True)
    y = torch.eye(3, requires_grad=True)
    pred = kernel_ridge(k_cc, k_qc, y, 1e-3)
    assert pred.dtype == torch.float64
    pred.sum().backward()
    assert k_cc.grad is not None and k_qc.grad is not None and y.grad is not None


def test_distillation_lowers_the_krr_loss_and_beats_random_real_clips():
    init_acc, final_acc = [], []
    for seed in range(3):
        cfg = small_cfg(seed=seed)
        xt, yt = toy(40, 10 + seed)
        xv, yv = toy(20, 100 + seed)
        xs, ys = toy(100, 200 + seed)
        core = distill(xt, yt, xv, yv, CLASSES, feature_cfg(8, 12), cfg)
        x0, y0 = random_real_coreset(xt, yt, cfg.per_class, seed=cfg.seed)
        assert np.array_equal(core.init_labels, y0.argmax(1))
        pool = RandomConvNets.pool(cfg)
        target = np.eye(3)[yt]
        loss0 = ((krr_predict(x0, y0, xt, cfg, nets=pool) - target) ** 2).sum(1).mean()
        loss1 = ((krr_predict(core.x, core.y, xt, cfg, nets=pool) - target) ** 2).sum(1).mean()
        assert loss1 < 0.9 * loss0
        init_acc.append((krr_predict(x0, y0, xs, cfg).argmax(1) == ys).mean())
        final_acc.append((krr_predict(core.x, core.y, xs, cfg).argmax(1) == ys).mean())
        m = core.metrics
        assert m["val_accuracy"] >= m["init_val_accuracy"] and m["seconds_per_step"] > 0
        assert m["history"][0]["step"] == 0 and m["history"][-1]["step"] == cfg.steps
    assert np.mean(final_acc) > np.mean(init_acc) + 0.03


def test_same_seed_same_coreset_and_progress_events():
    events = []
    a = run(small_cfg(steps=6), progress=events.append)
    b = run(small_cfg(steps=6))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    c = run(small_cfg(steps=6, seed=1))
    assert not np.array_equal(a.x, c.x)
    steps = [e for e in events if e["event"] == "distill"]
    assert [e["step"] for e in steps] == list(range(1, 7))
    assert all(e["steps"] == 6 and np.isfinite(e["loss"]) and "val_accuracy" in e for e in steps)
    assert any(e["event"] == "rfad_features" for e in events)


@pytest.mark.parametrize("shape", [(10, 48), (5, 3), (1, 7)])
def test_non_square_inputs(shape):
    h, w = shape
    core = run(small_cfg(steps=3, eval_every=3, loss="platt"), h=h, w=w)
    assert core.x.shape == (3, h, w) and core.y.shape == (3, 3)
    assert krr_predict(core.x, core.y, toy(3, 9, h, w)[0], core.config).shape == (9, 3)


def test_feature_grid_is_bounded():
    nets = RandomConvNets(1, width=128, depth=3)
    assert nets.output_grid((40, 48)) == (5, 6) and nets.feature_dim((40, 48)) == 3840
    assert nets.output_grid((10, 48)) == (2, 6)
    assert nets.feature_dim((40, 98)) <= 4096
    x = torch.zeros(1, 40, 98)
    assert nets.features(x).shape == (1, 1, nets.feature_dim((40, 98)))


def test_frozen_and_centred_labels():
    frozen = run(small_cfg(steps=4, learn_labels=False, eval_every=1))
    assert np.array_equal(frozen.y, np.eye(3, dtype=np.float32)[frozen.init_labels])
    centred = run(small_cfg(steps=4, label_init="centered", eval_every=1))
    assert np.allclose(centred.y.sum(1), 0.0, atol=0.2)


def test_save_load_round_trip_and_refusals(tmp_path):
    core = run(small_cfg(steps=4, loss="platt"), source_fingerprint="toy:1")
    path = core.save(tmp_path / "core.npz")
    back = Coreset.load(path)
    assert np.array_equal(back.x, core.x) and np.array_equal(back.y, core.y)
    assert np.array_equal(back.init_labels, core.init_labels)
    assert back.class_names == CLASSES and back.config == core.config
    assert back.feature_config == core.feature_config and back.source_fingerprint == "toy:1"
    assert back.metrics["val_accuracy"] == core.metrics["val_accuracy"]
    assert back.metrics["temperature"] > 0

    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable"):
        Coreset.load(tmp_path / "cut.npz")
    (tmp_path / "foreign.npz").write_bytes(b"hello, not a coreset")
    with pytest.raises(ValueError):
        Coreset.load(tmp_path / "foreign.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError):
        Coreset.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        Coreset.load(tmp_path / "missing.npz")

    def rewrite(name, **changes):
        with np.load(path) as z:
            meta = {**json.loads(str(z["meta"])), **changes}
            arrays = {k: z[k] for k in z.files}
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    with pytest.raises(ValueError, match="newer"):
        Coreset.load(rewrite("newer.npz", version=CORESET_VERSION + 1))
    with pytest.raises(ValueError, match="not an edgekws coreset"):
        Coreset.load(rewrite("format.npz", format="something-else"))
    with pytest.raises(ValueError):
        Coreset.load(rewrite("classes.npz", class_names=["a", "b"]))


def test_resume_after_interrupt_equals_an_uninterrupted_run(tmp_path):
    cfg = small_cfg(steps=9, eval_every=3, checkpoint_every=2, patience=5)
    whole = run(cfg)

    ckpt = tmp_path / "rfad.ckpt"

    def interrupt(ev):
        if ev["event"] == "distill" and ev["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, checkpoint_path=ckpt, progress=interrupt)
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    resumed = run(cfg, checkpoint_path=ckpt, resume=True)
    assert np.array_equal(resumed.x, whole.x) and np.array_equal(resumed.y, whole.y)
    strip = lambda m: {k: v for k, v in m.items() if "seconds" not in k}  # noqa: E731
    assert strip(resumed.metrics) == strip(whole.metrics)

    # a finished run resumes to the same coreset without further steps
    again = run(cfg, checkpoint_path=ckpt, resume=True)
    assert np.array_equal(again.x, whole.x)
    with pytest.raises(ValueError, match="different settings"):
        run(small_cfg(steps=9, eval_every=3, lr=0.5), checkpoint_path=ckpt, resume=True)


def test_random_real_coreset_is_class_balanced_and_seeded():
    x, y = toy(10, 0)
    xs, ys = random_real_coreset(x, y, 4, seed=3)
    assert xs.shape == (12, 8, 12) and ys.shape == (12, 3)
    assert (ys.sum(0) == 4).all()
    xs2, _ = random_real_coreset(x, y, 4, seed=3)
    assert np.array_equal(xs, xs2)


def test_config_round_trip_and_validation():
    cfg = RFADConfig(per_class=10, loss="platt")
    assert RFADConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        RFADConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    for bad in (dict(loss="hinge"), dict(pool_size=3, n_models=7), dict(per_class=0), dict(label_init="x")):
        with pytest.raises(ValueError):
            RFADConfig(**bad)
    xt, yt = toy(5, 0)
    with pytest.raises(ValueError, match="FeatureConfig"):
        distill(xt, yt, xt, yt, CLASSES, feature_cfg(8, 13), small_cfg())


def test_labels_from_a_function_follow_the_inputs_and_the_loss_reaches_through_them():
    """With ``label_fn`` (a teacher's probabilities) the coreset carries the labels the function gives its final
    inputs, and the KRR loss against the teacher's targets on the real clips falls."""
    torch.manual_seed(0)
    xt, yt = toy(40, 10)
    xv, yv = toy(20, 100)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 12, 3))
    with torch.no_grad():  # a linear teacher that knows the three class templates
        means = np.stack([xt[yt == c].mean(0).ravel() for c in range(3)])
        teacher[1].weight.copy_(torch.from_numpy(4 * means))
        teacher[1].bias.zero_()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def label_fn(x):
        return torch.softmax(teacher(x), dim=1)

    cfg = small_cfg(per_class=2, steps=30)
    targets = label_fn(torch.from_numpy(xt)).numpy()
    core = distill(xt, yt, xv, yv, CLASSES, feature_cfg(8, 12), cfg, real_targets=targets, label_fn=label_fn)
    np.testing.assert_allclose(core.y, label_fn(torch.from_numpy(core.x)).numpy(), atol=1e-6)
    x0, _ = random_real_coreset(xt, yt, cfg.per_class, seed=cfg.seed)
    pool = RandomConvNets.pool(cfg)
    loss = lambda x: ((krr_predict(x, label_fn(torch.from_numpy(x)).numpy(), xt, cfg, nets=pool)  # noqa: E731
                       - targets) ** 2).sum(1).mean()
    assert loss(core.x) < 0.9 * loss(x0)
    # the gradient through the labels is taken: a label function that ignores its input gives another coreset
    frozen = distill(xt, yt, xv, yv, CLASSES, feature_cfg(8, 12), cfg, real_targets=targets,
                     label_fn=lambda x: label_fn(x.detach()))
    assert not np.allclose(frozen.x, core.x)
