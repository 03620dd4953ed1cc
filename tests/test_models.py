"""Tests for edgekws.models: shapes, embed/head composition, MC-dropout, registry, profiling."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgekws.models import (  # noqa: E402
    MODELS,
    KWSModel,
    create_model,
    mc_predict,
    model_from_config,
)
from edgekws.models.profile import (  # noqa: E402
    count_macs,
    count_params,
    layer_macs,
    measure_latency,
    model_summary,
)

SHAPES = [(40, 48), (10, 48), (40, 248), (13, 21)]
NAMES = sorted(MODELS)


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    """Seed every test; one intra-op thread keeps these small convolutions fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def _warm_bn(model: KWSModel, shape: tuple[int, int]) -> None:
    """Give BN non-trivial running statistics so eval-mode tests are not degenerate."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, *shape))
    model.eval()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_forward_shapes(name, shape):
    model = create_model(name, n_classes=7, input_shape=shape).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        logits = model(x)
        logits3 = model(x[:, 0])
        z = model.embed(x)
    assert logits.shape == (2, 7)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, logits3)
    assert z.shape == (2, model.embedding_dim)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.embedding_dim
    assert model.classifier.out_features == 7


@pytest.mark.parametrize("name", NAMES)
def test_tiny_input(name):
    model = create_model(name, n_classes=3, input_shape=(8, 8)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 8, 8)).shape == (1, 3)


def test_bad_input_rank_and_channels():
    model = create_model("cnn4", 4, (10, 48)).eval()
    with pytest.raises(ValueError):
        model(torch.randn(10, 48))
    with pytest.raises(ValueError):
        model(torch.randn(1, 2, 10, 48))


@pytest.mark.parametrize("name", NAMES)
def test_embed_then_classifier_equals_forward(name):
    shape = (10, 48)
    model = create_model(name, n_classes=5, input_shape=shape)
    _warm_bn(model, shape)
    x = torch.randn(3, 1, *shape)
    with torch.no_grad():
        full = model(x)
        z = model.embed(x)
        composed = model.classifier(z)
        manual = z @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(composed, full, rtol=0, atol=0)
    torch.testing.assert_close(manual, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_mc_dropout_mode(name):
    shape = (10, 48)
    model = create_model(name, n_classes=6, input_shape=shape, dropout=0.5)
    _warm_bn(model, shape)
    x = torch.randn(4, 1, *shape)
    before = _bn_state(model)
    assert before

    with torch.no_grad():
        e1, e2 = model(x), model(x)
    assert torch.equal(e1, e2)

    model.train()
    with torch.no_grad(), model.mc_dropout():
        assert not model.training
        assert model.dropout.training
        assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        a, b = model(x), model(x)
        za, zb = model.embed(x), model.embed(x)
    assert not torch.equal(a, b)
    assert torch.equal(za, zb)
    after = _bn_state(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert model.training and all(m.training for m in model.modules())

    model.eval()
    model.mc_dropout(True)
    assert model.dropout.training
    model.mc_dropout(False)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name", ["cnn4", "dscnn"])
def test_mc_predict(name):
    shape = (13, 21)
    model = create_model(name, n_classes=4, input_shape=shape, dropout=0.3)
    _warm_bn(model, shape)
    model.train()
    before = _bn_state(model)
    x = torch.randn(5, shape[0], shape[1])
    probs = mc_predict(model, x, T=16)
    assert probs.shape == (16, 5, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(16, 5))
    assert (probs >= 0).all()
    assert probs.std(0).max() > 0
    assert model.training
    for k, v in _bn_state(model).items():
        assert torch.equal(before[k], v), k

    again = mc_predict(model, x, T=16, seed=3)
    torch.testing.assert_close(mc_predict(model, x, T=16, seed=3), again, rtol=0, atol=0)

    model.eval()
    with torch.no_grad():
        eval_probs = torch.softmax(model(x), -1)
    torch.testing.assert_close(probs.mean(0), eval_probs, rtol=0, atol=0.25)


def test_mc_predict_without_dropout_is_deterministic():
    model = create_model("cnn4", 3, (10, 48), dropout=0.0).eval()
    x = torch.randn(2, 1, 10, 48)
    probs = mc_predict(model, x, T=4)
    with torch.no_grad():
        ref = torch.softmax(model(x), -1)
    for t in range(4):
        torch.testing.assert_close(probs[t], ref)


def test_mc_predict_full_passes_when_dropout_is_in_backbone():
    model = create_model("cnn4", 3, (10, 48), dropout=0.0)
    model.body[1].append(nn.Dropout(0.5))
    assert not model.dropout_in_head_only
    probs = mc_predict(model, torch.randn(2, 1, 10, 48), T=6, seed=0)
    assert probs.shape == (6, 2, 3)
    assert probs.std(0).max() > 0


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("cnn4", 100_000, 300_000),
        ("resnet18", 10_500_000, 11_800_000),
        ("resnet18-w0.5", 2_000_000, 3_500_000),
        ("resnet18-w0.25", 400_000, 1_000_000),
        ("dscnn", 20_000, 40_000),
        ("se-head", 200, 1_000),  # linear over pooled frozen embeddings: (2 x 10 + 1) x classes + 2 x 10
    ],
)
def test_param_counts(name, low, high):
    for n_classes in (10, 35):
        n = count_params(create_model(name, n_classes, (10, 48)))
        assert low <= n <= high, (name, n_classes, n)


def test_param_count_dscnn_fits_mcu():
    summary = model_summary("dscnn", 12, (10, 48))
    assert summary["int8_kb"] < 40
    assert summary["macs"] < 5_000_000


def test_small_set_resnet_keeps_the_full_input_resolution_into_its_first_stage():
    h, w = 40, 48
    small, default = create_model("resnet18-small", 10, (h, w)), create_model("resnet18", 10, (h, w))
    x = torch.zeros(2, 1, h, w)
    assert small.body[0](x).shape[2:] == (h, w)  # stem: no stride, no max-pool
    assert default.body[0](x).shape[2:] == (11, 13)  # ImageNet stem: stride 2, then a 3x3/2 max-pool (ceil)
    assert small.body[1](small.body[0](x)).shape[1] == 16  # a quarter of ResNet-18's 64 channels


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)
        self.grouped = nn.Conv2d(4, 6, (1, 3), groups=2, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.grouped(self.dw(torch.relu(self.conv(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_count_macs_by_hand():
    model = _Tiny()
    H, W = 5, 6
    conv = (H * W * 4) * (1 * 3 * 3)
    dw_out = (3, 3)  # ceil(5/2), ceil(6/2)
    dw = (dw_out[0] * dw_out[1] * 4) * (1 * 3 * 3)
    gr_out = (3, 1)  # (1, 3) kernel, no padding: width 3 -> 1
    grouped = (gr_out[0] * gr_out[1] * 6) * (2 * 1 * 3)
    fc = 3 * 6
    assert count_macs(model, (H, W)) == conv + dw + grouped + fc
    assert count_macs(model, (1, H, W)) == conv + dw + grouped + fc
    assert [r["name"] for r in layer_macs(model, (H, W))] == ["conv", "dw", "grouped", "fc"]
    assert count_params(model) == (4 * 9 + 4) + 4 * 9 + 6 * 2 * 3 + (6 * 3 + 3)


def test_count_macs_dscnn_by_hand():
    model = create_model("dscnn", 12, (10, 48))
    positions = 5 * 24
    stem = positions * 64 * 5 * 9
    block = positions * 64 * 9 + positions * 64 * 64
    assert count_macs(model, (10, 48)) == stem + 4 * block + 64 * 12


def test_count_macs_keeps_mode():
    model = create_model("cnn4", 3, (10, 48)).train()
    before = _bn_state(model)
    count_macs(model, (10, 48))
    assert model.training
    for k, v in _bn_state(model).items():
        assert torch.equal(before[k], v)


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    shape = (13, 21)
    model = create_model(name, 9, shape, dropout=0.1)
    _warm_bn(model, shape)
    cfg = json.loads(json.dumps(model.config))
    assert cfg["name"] == name
    assert cfg["n_classes"] == 9
    assert tuple(cfg["input_shape"]) == shape
    assert cfg["kwargs"]["dropout"] == 0.1
    rebuilt = model_from_config(cfg)
    assert type(rebuilt) is type(model)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    assert rebuilt.config == model.config


def test_config_keeps_custom_kwargs():
    model = create_model("cnn4", 4, (10, 48), widths=(16, 32, 32, 48), pool_blocks=1)
    rebuilt = model_from_config(model.config)
    assert rebuilt.embedding_dim == 48
    assert count_params(rebuilt) == count_params(model)
    w = create_model("resnet18", 4, (10, 48), width=0.25)
    assert count_params(model_from_config(w.config)) == count_params(create_model("resnet18-w0.25", 4, (10, 48)))


def test_create_model_seed():
    a = create_model("dscnn", 4, (10, 48), seed=1)
    b = create_model("dscnn", 4, (10, 48), seed=1)
    c = create_model("dscnn", 4, (10, 48), seed=2)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not all(torch.equal(va, vc) for va, vc in zip(a.parameters(), c.parameters()))


def test_unknown_name():
    with pytest.raises(ValueError) as err:
        create_model("transformer", 10, (40, 48))
    for name in MODELS:
        assert name in str(err.value)


def test_bad_arguments():
    with pytest.raises(ValueError):
        create_model("cnn4", 0, (40, 48))
    with pytest.raises(ValueError):
        create_model("cnn4", 3, (40,))
    with pytest.raises(ValueError):
        create_model("cnn4", 3, (40, 48), dropout=1.0)


@pytest.mark.parametrize("name", NAMES)
def test_training_step_reduces_loss(name):
    shape = (13, 21)
    model = create_model(name, 5, shape, dropout=0.0).train()
    x = torch.randn(16, 1, *shape)
    y = torch.randint(0, 5, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.0)
    loss0 = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss0.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert model.classifier.weight.grad.abs().sum() > 0
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)))  # se-head: its input norm
    assert first.weight.grad.abs().sum() > 0
    opt.step()
    loss1 = nn.functional.cross_entropy(model(x), y)
    assert loss1.item() < loss0.item()


def test_summary_and_latency():
    s = model_summary("cnn4", 10, (40, 48))
    assert s["params"] == count_params(create_model("cnn4", 10, (40, 48)))
    assert s["fp32_kb"] == pytest.approx(4 * s["params"] / 1024)
    assert 0 < s["int8_kb"] < s["fp32_kb"]
    assert s["macs"] > 0 and s["embedding_dim"] == 64
    threads = torch.get_num_threads()
    lat = measure_latency(create_model("dscnn", 10, (10, 48)), (10, 48), runs=3, warmup=1)
    assert lat["median_ms"] > 0
    assert torch.get_num_threads() == threads
