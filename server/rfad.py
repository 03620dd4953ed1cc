"""RFAD: dataset distillation with a random-feature NNGP kernel (Loo et al. 2022).

A labelled set of normalised MFCC "images" ``(N, H, W)`` is distilled into a coreset of ``per_class`` synthetic
images per class with learned soft labels, such that kernel ridge regression (KRR) on the coreset predicts the
real data well.

The kernel is a random-feature approximation of the NNGP kernel of a ConvNet: ``depth`` blocks of
``conv 3x3 ('same') -> ReLU -> 2x2 average pool`` with weights ``N(0, 2 / fan_in)`` and no normalisation layers.
Features of one net are its flattened output divided by ``sqrt(D)``; with ``m`` nets
``K(a, b) = (1 / m) * sum_j <phi_j(a), phi_j(b)>``.
KRR predicts ``y_hat_B = K_BC (K_CC + lambda I)^-1 y_C`` with ``lambda = reg * trace(K_CC) / |C|``, solved in
float64.

Cost on a CPU: the nets are drawn once into a fixed *pool* of ``pool_size`` nets, and every pool net's features of
every real training clip are computed once and kept in memory. A step samples ``n_models`` pool nets and a
class-balanced real batch, reads the batch's features by indexing, and pushes only the coreset through the sampled
nets (all of them as one grouped convolution) with autograd. Validation uses ``eval_models`` further nets that the
optimisation never sees, so the validation accuracy measures the coreset, not its fit to particular nets.

Shapes: inputs ``(N, H, W)`` float32 for any ``H, W >= 1``; pooling rounds odd sizes up (a last partial window
averages what it covers). When ``width * h * w`` of the last block exceeds ``max_features`` an adaptive average
pool shrinks the spatial grid until it fits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgekws.features import FeatureConfig
from edgekws.fileio import atomic_write_bytes, json_default
from edgekws.server.checkpoint import read_checkpoint, write_checkpoint
from edgekws.server.distributed import Comm, current_comm
from edgekws.server.runtime import pick_device

__all__ = [
    "RFADConfig",
    "Coreset",
    "RandomConvNets",
    "distill",
    "krr_predict",
    "kernel_ridge",
    "random_real_coreset",
    "coreset_mismatch",
    "CORESET_FORMAT",
    "LABEL_KINDS",
    "CORESET_VERSION",
]

Progress = Callable[[dict[str, Any]], None]

CORESET_FORMAT = "edgekws-coreset"
LABEL_KINDS = ("rfad", "teacher")
READOUTS = ("flatten", "time-mean", "global-mean")
CORESET_VERSION = 1
CHECKPOINT_FORMAT = "edgekws-rfad-checkpoint"
CHECKPOINT_VERSION = 2  # 2: with a content checksum (edgekws.server.checkpoint)
_NET_TAG = 0x52464144  # distinguishes net seeds from every other seeded stream
_EVAL_OFFSET = 1_000_000  # evaluation nets are indexed from here, disjoint from any pool
_CHUNK_BYTES = 256 * 2**20  # activation memory of one forward chunk without autograd


def _grad_budget() -> int:
    """Activation memory one autograd forward may keep for backward: a sixth of the machine's RAM, 1-4 GiB.

    Below the budget the coreset goes through the nets once with autograd (cost linear in its size); above it,
    chunks are recomputed for backward, which costs one more forward pass.
    """
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 6 * 2**30
    return int(min(4 * 2**30, max(2**30, ram // 6)))


_GRAD_CHUNK_BYTES = _grad_budget()  # activation memory of one forward chunk kept for backward


# Configuration ---------------------------------------------------------------------------------------------


@dataclass
class RFADConfig:
    """Distillation settings.

    Attributes:
        per_class: coreset images per class.
        steps: optimisation steps (upper bound; early stopping may end sooner).
        n_models: random nets sampled from the pool per step (the kernel averages over them).
        pool_size: nets in the fixed pool whose real-side features are precomputed; ``>= n_models``.
        eval_models: held-out nets for validation and :func:`krr_predict`; 0 means ``n_models``.
        width: channels of every conv layer.
        depth: conv -> ReLU -> avg-pool blocks.
        max_features: cap on features per net (``width * h * w``); larger grids are adaptively pooled.
        readout: how the last block becomes features: ``"flatten"`` (every position, the reference's choice),
            ``"time-mean"`` (averaged over frames: a kernel that does not care *when* in the clip a sound is,
            but keeps its spectral layout) or ``"global-mean"`` (averaged over both axes); ``"auto"`` picks, per
            dataset, the readout under which KRR on the initial (random real) coreset predicts the validation split
            best (``metrics["readout"]``; ties go to the earlier of flatten, time-mean, global-mean).
        bias_std: standard deviation of the conv biases (0: no bias).
        reg: KRR ridge, relative to the mean diagonal of ``K_CC``.
        loss: "mse" (squared error of KRR predictions against one-hot targets) or "platt" (cross-entropy of
            KRR predictions divided by a learned temperature).
        temperature: initial temperature of the "platt" loss.
        label_init: "onehot" or "centered" (one-hot minus 1/C; targets of the real batch are centred alike).
        lr: Adam learning rate of the coreset images (inputs have unit standard deviation).
        label_lr: Adam learning rate of the soft labels and the temperature.
        learn_labels: learn the coreset labels (False: they stay at their initial value).
        batch_size: real clips per step, class-balanced (the whole training set if it is smaller).
        eval_every: steps between validations (KRR accuracy on the validation set).
        patience: validations without improvement before stopping (0: never stop early).
        checkpoint_every: steps between checkpoints when a checkpoint path is given.
        seed: seeds the nets, the initial coreset and the batch sampling.
        device: "auto" (cuda when available), "cpu", "cuda", ...
        threads: torch CPU threads (None: leave torch's setting).
    """

    per_class: int = 50
    steps: int = 500
    n_models: int = 7
    pool_size: int = 28
    eval_models: int = 0
    width: int = 128
    depth: int = 3
    max_features: int = 4096
    readout: str = "flatten"
    bias_std: float = 0.0
    reg: float = 1e-3
    loss: str = "mse"
    temperature: float = 0.1
    label_init: str = "onehot"
    lr: float = 1e-2
    label_lr: float = 1e-2
    learn_labels: bool = True
    batch_size: int = 2000
    eval_every: int = 10
    patience: int = 10
    checkpoint_every: int = 20
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_class", "steps", "n_models", "pool_size", "width", "depth", "max_features", "batch_size",
                     "eval_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pool_size < self.n_models:
            raise ValueError(f"pool_size={self.pool_size} must be at least n_models={self.n_models}")
        if self.eval_models < 0 or self.patience < 0:
            raise ValueError("eval_models and patience must be >= 0")
        if self.readout not in (*READOUTS, "auto"):
            raise ValueError(f"unknown readout {self.readout!r}; use one of {', '.join(READOUTS)} or auto")
        if self.loss not in ("mse", "platt"):
            raise ValueError(f"unknown loss {self.loss!r}; use 'mse' or 'platt'")
        if self.label_init not in ("onehot", "centered"):
            raise ValueError(f"unknown label_init {self.label_init!r}; use 'onehot' or 'centered'")
        if not self.reg > 0 or not self.temperature > 0:
            raise ValueError("reg and temperature must be positive")
        if self.lr < 0 or self.label_lr < 0 or self.bias_std < 0:
            raise ValueError("lr, label_lr and bias_std must be >= 0")

    @property
    def n_eval_models(self) -> int:
        return self.eval_models or self.n_models

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RFADConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RFADConfig fields: {sorted(unknown)}")
        return cls(**d)


# Fields that may change when a run is resumed; every other field must match the checkpoint.
_RESUMABLE_CHANGES = ("steps", "patience", "checkpoint_every", "device", "threads")


# Random ConvNets -------------------------------------------------------------------------------------------


def _net_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _NET_TAG, int(index)]).generate_state(1)[0])


def _pool_kernel(h: int, w: int) -> tuple[int, int]:
    return (2 if h > 1 else 1, 2 if w > 1 else 1)


class RandomConvNets:
    """A seeded set of random ConvNets used as a random-feature kernel.

    Net ``i`` of the set is drawn from its own generator seeded by ``(seed, first_index + i)``, so a net does not
    depend on how many nets are drawn with it.

    Args:
        n_nets: how many nets.
        width: channels of each conv layer.
        depth: conv -> ReLU -> 2x2 average pool blocks.
        seed: base seed.
        first_index: global index of the first net (pools start at 0, evaluation nets far above).
        bias_std: conv bias standard deviation (0: no bias).
        max_features: cap on the flattened output per net.
        readout: "flatten", "time-mean" or "global-mean" (see :class:`RFADConfig`).
        device: where the weights live.
    """

    def __init__(self, n_nets: int, width: int = 128, depth: int = 3, seed: int = 0, first_index: int = 0,
                 bias_std: float = 0.0, max_features: int = 4096, device: str | torch.device = "cpu",
                 readout: str = "flatten"):
        if n_nets < 1 or width < 1 or depth < 1:
            raise ValueError("n_nets, width and depth must be >= 1")
        self.n_nets, self.width, self.depth = int(n_nets), int(width), int(depth)
        self.seed, self.first_index = int(seed), int(first_index)
        self.bias_std, self.max_features = float(bias_std), int(max_features)
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; use one of {', '.join(READOUTS)}")
        self.readout = readout
        weights: list[list[torch.Tensor]] = [[] for _ in range(depth)]
        biases: list[list[torch.Tensor]] = [[] for _ in range(depth)]
        for i in range(self.n_nets):
            gen = torch.Generator().manual_seed(_net_seed(self.seed, self.first_index + i))
            c_in = 1
            for layer in range(depth):
                std = math.sqrt(2.0 / (c_in * 9))
                weights[layer].append(torch.randn(width, c_in, 3, 3, generator=gen) * std)
                biases[layer].append(torch.randn(width, generator=gen) * self.bias_std)
                c_in = width
        dev = torch.device(device)
        self.weights = [torch.stack(w).to(dev) for w in weights]  # (n_nets, width, c_in, 3, 3)
        self.biases = [torch.stack(b).to(dev) for b in biases] if self.bias_std > 0 else None

    @classmethod
    def pool(cls, cfg: RFADConfig, device: str | torch.device = "cpu") -> "RandomConvNets":
        """The ``cfg.pool_size`` nets distillation samples from."""
        return cls(cfg.pool_size, cfg.width, cfg.depth, cfg.seed, 0, cfg.bias_std, cfg.max_features, device,
                   cfg.readout)

    @classmethod
    def evaluation(cls, cfg: RFADConfig, device: str | torch.device = "cpu") -> "RandomConvNets":
        """The ``cfg.n_eval_models`` held-out nets used for validation and by :func:`krr_predict`."""
        return cls(cfg.n_eval_models, cfg.width, cfg.depth, cfg.seed, _EVAL_OFFSET, cfg.bias_std,
                   cfg.max_features, device, cfg.readout)

    def __len__(self) -> int:
        return self.n_nets

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def output_grid(self, shape: Sequence[int]) -> tuple[int, int]:
        """Spatial size ``(h, w)`` of the features for inputs of ``shape == (H, W)``."""
        h, w = int(shape[0]), int(shape[1])
        if h < 1 or w < 1:
            raise ValueError(f"input shape must be positive, got {tuple(shape)}")
        for _ in range(self.depth):
            h, w = -(-h // _pool_kernel(h, w)[0]), -(-w // _pool_kernel(h, w)[1])
        if self.readout == "time-mean":
            w = 1
        elif self.readout == "global-mean":
            h, w = 1, 1
        while self.width * h * w > self.max_features and (h > 1 or w > 1):
            if h >= w:
                h = -(-h // 2)
            else:
                w = -(-w // 2)
        return h, w

    def feature_dim(self, shape: Sequence[int]) -> int:
        """Features per net for inputs of ``shape == (H, W)``."""
        h, w = self.output_grid(shape)
        return self.width * h * w

    def features(self, x: torch.Tensor, ids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Random features of ``x`` ``(N, H, W)`` under the nets ``ids`` (default: all), shape ``(N, m, D)``.

        All selected nets run together as one grouped convolution. Differentiable w.r.t. ``x``.
        """
        if x.dim() != 3:
            raise ValueError(f"expected (N, H, W) inputs, got shape {tuple(x.shape)}")
        if ids is None:
            ids = torch.arange(self.n_nets)
        ids = torch.as_tensor(ids, dtype=torch.long).to(self.device)
        m = int(ids.numel())
        target = self.output_grid(x.shape[1:])
        h = x.unsqueeze(1)
        for layer in range(self.depth):
            w = self.weights[layer].index_select(0, ids)
            w = w.reshape(m * self.width, w.shape[2], 3, 3)
            b = self.biases[layer].index_select(0, ids).reshape(-1) if self.biases is not None else None
            h = F.conv2d(h, w, b, padding=1, groups=1 if layer == 0 else m)
            h = F.relu(h, inplace=True)
            h = F.avg_pool2d(h, _pool_kernel(h.shape[2], h.shape[3]), ceil_mode=True)
        if self.readout == "time-mean":
            h = h.mean(dim=3, keepdim=True)
        elif self.readout == "global-mean":
            h = h.mean(dim=(2, 3), keepdim=True)
        if tuple(h.shape[2:]) != target:
            h = F.adaptive_avg_pool2d(h, target)
        d = self.width * target[0] * target[1]
        return h.reshape(h.shape[0], m, d) * (1.0 / math.sqrt(d))

    def chunk_rows(self, shape: Sequence[int], m: int, grad: bool = False) -> int:
        """Rows per forward chunk so that activations of ``m`` nets stay near a fixed memory budget."""
        per_row = 4 * m * self.width * int(shape[0]) * int(shape[1]) * (3 if grad else 1)
        return max(1, (_GRAD_CHUNK_BYTES if grad else _CHUNK_BYTES) // max(per_row, 1))

    @torch.no_grad()
    def features_chunked(self, x: torch.Tensor, ids: Sequence[int] | torch.Tensor | None = None,
                         out: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`features` without autograd, computed in memory-bounded chunks of rows."""
        m = self.n_nets if ids is None else len(ids)
        rows = self.chunk_rows(x.shape[1:], m)
        parts = []
        for s in range(0, x.shape[0], rows):
            f = self.features(x[s : s + rows], ids)
            if out is not None:
                out[s : s + rows] = f
            else:
                parts.append(f)
        if out is not None:
            return out
        if not parts:
            return torch.zeros((0, m, self.feature_dim(x.shape[1:])), dtype=x.dtype, device=x.device)
        return torch.cat(parts)


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``K(a, b)`` from per-net features ``(Na, m, D)`` and ``(Nb, m, D)``: the mean over nets of inner products."""
    m = a.shape[1]
    return a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T / m


# Kernel ridge regression -----------------------------------------------------------------------------------


def kernel_ridge(k_cc: torch.Tensor, k_qc: torch.Tensor, y_c: torch.Tensor, reg: float) -> torch.Tensor:
    """KRR predictions ``K_QC (K_CC + lambda I)^-1 y_C`` in float64, ``lambda = reg * trace(K_CC) / |C|``.

    Args:
        k_cc: ``(M, M)`` support kernel.
        k_qc: ``(Q, M)`` query-support kernel.
        y_c: ``(M, C)`` support targets.
        reg: relative ridge.

    Returns:
        ``(Q, C)`` float64 predictions, differentiable w.r.t. all three inputs.
    """
    k = k_cc.double()
    n = k.shape[0]
    lam = reg * torch.diagonal(k).sum() / n
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    alpha = torch.linalg.solve(k + lam * eye, y_c.double())
    return k_qc.double() @ alpha


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)


def _onehot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), n_classes), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def krr_predict(x_support: np.ndarray, y_support: np.ndarray, x_query: np.ndarray, cfg: RFADConfig,
                nets: RandomConvNets | None = None, n_classes: int | None = None) -> np.ndarray:
    """KRR predictions for ``x_query`` from a support set under the random-feature kernel.

    Args:
        x_support: ``(M, H, W)`` support inputs (e.g. a coreset).
        y_support: ``(M, C)`` targets (soft labels), or ``(M,)`` integer labels (one-hot encoded).
        x_query: ``(Q, H, W)`` inputs to predict.
        cfg: gives ``reg`` and, when ``nets`` is None, the held-out evaluation nets
            (:meth:`RandomConvNets.evaluation`), the ones distillation validates with.
        nets: the kernel's nets (all of them are used).
        n_classes: classes for integer labels (default ``max + 1``).

    Returns:
        ``(Q, C)`` float64 predictions; ``argmax(1)`` is the predicted class.
    """
    nets = nets or RandomConvNets.evaluation(cfg)
    dev = nets.device
    y = np.asarray(y_support)
    if y.ndim == 1:
        y = _onehot(y.astype(np.int64), n_classes or int(y.max()) + 1)
    if len(y) != len(x_support):
        raise ValueError(f"{len(x_support)} support inputs but {len(y)} targets")
    xs, xq = _as_tensor(x_support, dev), _as_tensor(x_query, dev)
    if xs.shape[1:] != xq.shape[1:]:
        raise ValueError(f"support inputs {tuple(xs.shape[1:])} and queries {tuple(xq.shape[1:])} differ in shape")
    with torch.no_grad():
        fs = nets.features_chunked(xs)
        fq = nets.features_chunked(xq)
        pred = kernel_ridge(_gram(fs, fs), _gram(fq, fs), torch.from_numpy(y).to(dev), cfg.reg)
    return pred.cpu().numpy()


# Baseline and initialisation -------------------------------------------------------------------------------


def _balanced_indices(y: np.ndarray, per_class: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in range(n_classes):
        members = np.flatnonzero(y == c)
        if len(members) == 0:
            raise ValueError(f"class {c} has no examples")
        idx.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.concatenate(idx)


def random_real_coreset(x: np.ndarray, y: np.ndarray, per_class: int, seed: int = 0,
                        n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced random sample of real examples: the baseline a coreset must beat, and RFAD's start.

    Args:
        x: ``(N, H, W)`` inputs.
        y: ``(N,)`` integer labels.
        per_class: examples per class (all of a class if it has fewer).
        seed: sampling seed.
        n_classes: number of classes (default ``max(y) + 1``).

    Returns:
        ``(x_sub (M, H, W) float32, y_onehot (M, C) float32)``, grouped by class in class order.
    """
    y = np.asarray(y).astype(np.int64)
    c = n_classes or int(y.max()) + 1
    idx = _balanced_indices(y, per_class, c, np.random.default_rng([int(seed), 1]))
    return np.ascontiguousarray(x[idx], dtype=np.float32), _onehot(y[idx], c)


# The coreset artefact --------------------------------------------------------------------------------------


@dataclass
class Coreset:
    """A distilled coreset, the artefact the server ships.

    Attributes:
        x: ``(M, H, W)`` float32 synthetic normalised MFCC.
        y: ``(M, C)`` float32 learned labels (KRR regression targets; train a finite net with ``loss="mse"``).
        class_names: the ``C`` class names, in label order.
        feature_config: how the features were computed (its ``shape`` equals ``(H, W)``).
        config: the distillation settings.
        source_fingerprint: identity of the source dataset.
        metrics: validation accuracies, timings and history.
        init_labels: ``(M,)`` class each row was initialised from.
        labels: what ``y`` holds: ``"rfad"`` (learned KRR regression targets; train with ``loss="mse"``) or
            ``"teacher"`` (probability rows ``softmax(teacher(x) / label_temperature)`` from a net trained on the
            whole training split; train by distillation).
        label_temperature: the teacher's fitted temperature (``"teacher"`` labels only).
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    feature_config: FeatureConfig
    config: RFADConfig
    source_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    init_labels: np.ndarray | None = None
    labels: str = "rfad"
    label_temperature: float | None = None

    def __post_init__(self) -> None:
        if self.labels not in LABEL_KINDS:
            raise ValueError(f"coreset labels must be one of {LABEL_KINDS}, got {self.labels!r}")
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        self.y = np.ascontiguousarray(self.y, dtype=np.float32)
        self.class_names = tuple(str(c) for c in self.class_names)
        if self.init_labels is None:
            self.init_labels = self.y.argmax(1) if self.y.ndim == 2 else np.zeros(0, np.int64)
        self.init_labels = np.asarray(self.init_labels).astype(np.int64)
        if self.x.ndim != 3:
            raise ValueError(f"coreset inputs must be (M, H, W), got {self.x.shape}")
        m, c = len(self.x), len(self.class_names)
        if self.y.shape != (m, c):
            raise ValueError(f"coreset labels must be ({m}, {c}), got {self.y.shape}")
        if self.init_labels.shape != (m,) or (m and (self.init_labels.min() < 0 or self.init_labels.max() >= c)):
            raise ValueError(f"init_labels must be ({m},) class indices below {c}")
        if tuple(self.x.shape[1:]) != tuple(self.feature_config.shape):
            raise ValueError(f"coreset inputs are {self.x.shape[1:]} but the FeatureConfig gives "
                             f"{self.feature_config.shape}")
        if not np.all(np.isfinite(self.x)) or not np.all(np.isfinite(self.y)):
            raise ValueError("coreset contains non-finite values")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def hard_labels(self) -> np.ndarray:
        """``(M,)`` argmax of the learned labels."""
        return self.y.argmax(1)

    def _meta(self) -> dict[str, Any]:
        return {
            "format": CORESET_FORMAT,
            "version": CORESET_VERSION,
            "class_names": list(self.class_names),
            "feature_config": self.feature_config.to_dict(),
            "config": self.config.to_dict(),
            "source_fingerprint": self.source_fingerprint,
            "metrics": self.metrics,
            "labels": self.labels,
            "label_temperature": self.label_temperature,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` (arrays ``x``, ``y``, ``init_labels`` and a JSON ``meta`` string) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps(self._meta(), sort_keys=True, default=json_default)
        buf = io.BytesIO()
        np.savez(buf, x=self.x, y=self.y, init_labels=self.init_labels, meta=np.array(meta))
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Coreset":
        """Read and validate a coreset written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: damaged or truncated file, not a coreset, a newer format version, or inconsistent content.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"coreset not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = {"x", "y", "init_labels", "meta"} - set(z.files)
                if missing:
                    raise ValueError(f"missing arrays {sorted(missing)}")
                arrays = {k: z[k] for k in ("x", "y", "init_labels", "meta")}
            meta = json.loads(str(arrays["meta"]))
        except Exception as exc:  # zipfile, numpy and json each raise their own types for damaged input
            raise ValueError(f"{path}: not a readable edgekws coreset ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != CORESET_FORMAT:
            raise ValueError(f"{path}: not an edgekws coreset")
        version = meta.get("version")
        if not isinstance(version, int):
            raise ValueError(f"{path}: coreset has no valid format version")
        if version > CORESET_VERSION:
            raise ValueError(f"{path}: coreset format version {version} is newer than this edgekws understands "
                             f"({CORESET_VERSION}); upgrade edgekws")
        if "frontend" in meta:
            raise ValueError(f"{path}: an embedding-space coreset (speech-embedding backbone), not an MFCC coreset; "
                             "this step needs one made with `edgekws distill --backbone mfcc-cnn`")
        try:
            return cls(
                x=arrays["x"], y=arrays["y"], init_labels=arrays["init_labels"],
                class_names=tuple(meta["class_names"]),
                feature_config=FeatureConfig.from_dict(meta["feature_config"]),
                config=RFADConfig.from_dict(meta["config"]),
                source_fingerprint=str(meta.get("source_fingerprint", "")),
                metrics=dict(meta.get("metrics") or {}),
                labels=str(meta.get("labels", "rfad")),
                label_temperature=meta.get("label_temperature"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid coreset content ({exc.__class__.__name__}: {exc})") from None


def coreset_mismatch(coreset: Coreset, class_names: Sequence[str], feature_config: FeatureConfig) -> str | None:
    """Why ``coreset`` cannot stand in for a dataset or target with these classes and features (None: it can).

    The message names the mismatch: the input shape, the classes (missing, extra or reordered) or the
    FeatureConfig fields that differ (normalisation statistics count as one field).
    """
    want = tuple(str(c) for c in class_names)
    have = tuple(coreset.class_names)
    if have != want:
        missing, extra = [c for c in want if c not in have], [c for c in have if c not in want]
        if missing or extra:
            return (f"coreset classes differ: missing {missing or 'none'}, extra {extra or 'none'} "
                    f"(coreset {list(have)}, expected {list(want)})")
        return f"coreset classes are in another order: {list(have)}, expected {list(want)}"
    shape = tuple(coreset.x.shape[1:])
    if shape != tuple(feature_config.shape):
        return f"coreset inputs are {shape} (n_mfcc x frames) but the features give {tuple(feature_config.shape)}"
    a, b = coreset.feature_config.to_dict(), feature_config.to_dict()
    stats = ("mean", "std")
    diff = sorted(k for k in set(a) | set(b) if k not in stats and a.get(k) != b.get(k))
    if diff:
        return "coreset feature config differs in " + ", ".join(f"{k} ({a.get(k)!r} vs {b.get(k)!r})" for k in diff)
    if any(not np.array_equal(np.asarray(a.get(k)), np.asarray(b.get(k))) for k in stats):
        return ("coreset features were normalised with other statistics (another dataset or split): use the "
                "dataset and split it was distilled from")
    return None


# Distillation ----------------------------------------------------------------------------------------------


def _data_fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _best_readout(scores: dict[str, float]) -> str:
    return max((r for r in READOUTS if r in scores), key=lambda r: scores[r])


def _krr_accuracy(cfg: RFADConfig, x_c: torch.Tensor, y_c: torch.Tensor, x_val: np.ndarray, y_val: np.ndarray,
                  device: torch.device) -> float:
    """Validation accuracy of KRR on the support ``(x_c, y_c)`` under ``cfg``'s held-out evaluation nets."""
    nets = RandomConvNets.evaluation(cfg, device)
    with torch.no_grad():
        fc = nets.features_chunked(x_c)
        fv = nets.features_chunked(_as_tensor(x_val, device))
        pred = kernel_ridge(_gram(fc, fc), _gram(fv, fc), y_c.double(), cfg.reg)
    return float((pred.argmax(1).cpu().numpy() == y_val).mean())


def _batch_indices(y: np.ndarray, by_class: list[np.ndarray], batch_size: int,
                   rng: np.random.Generator) -> np.ndarray:
    """A class-balanced sample of ``batch_size`` rows (every row when the set is no larger)."""
    if batch_size >= len(y):
        return np.arange(len(y))
    n_classes = len(by_class)
    quota = np.full(n_classes, batch_size // n_classes)
    quota[rng.choice(n_classes, size=batch_size % n_classes, replace=False)] += 1
    parts = [rng.choice(members, size=min(q, len(members)), replace=False) for members, q in zip(by_class, quota)]
    return np.sort(np.concatenate(parts))


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    write_checkpoint(state, path)  # atomic, with a checksum of the content


def _load_checkpoint(path: Path, cfg: RFADConfig, fingerprint: str) -> dict[str, Any]:
    # data only, checksum verified (version-1 files were written without one)
    st = read_checkpoint(path, what="RFAD checkpoint", require_checksum=lambda b: b.get("version", 0) != 1)
    if st.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an RFAD checkpoint")
    if st.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {st.get('version')} is newer than this edgekws understands")
    saved = dict(st["config"])
    now = cfg.to_dict()
    diff = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        raise ValueError(f"{path}: checkpoint was made with different settings ({', '.join(diff)}); "
                         "resume with the same RFADConfig or start afresh")
    if st["data"] != fingerprint:
        raise ValueError(f"{path}: checkpoint was made from different data or class names")
    return st


class _Objective:
    """The distillation loss of one step, and its gradients w.r.t. the coreset, its labels and the temperature.

    ``real`` holds the real-side features of the pool nets this process owns (``slots`` maps a pool index to its
    row). Each sampled net's kernels and coreset gradient are computed on their own (one net at a time, in the
    same row chunks whatever the number of processes) into the net's slot of a stacked tensor, and the slots are
    summed in the order the nets were sampled. With several processes (``comm``) each one fills the slots of the
    nets it owns and leaves zeros elsewhere; the all-reduce of the stacks adds only zeros to each value, which is
    exact, so every process evaluates the same loss, and one process and several take bit-for-bit the same step
    (same machine, same thread count).
    """

    def __init__(self, cfg: RFADConfig, pool: RandomConvNets, real: torch.Tensor, slots: dict[int, int],
                 targets: torch.Tensor, labels: torch.Tensor, comm: Comm):
        self.cfg, self.pool, self.real, self.slots, self.comm = cfg, pool, real, slots, comm
        self.targets, self.labels = targets, labels  # (N, C) float64 regression targets, (N,) int64

    def loss_from_kernels(self, k_cc: torch.Tensor, k_bc: torch.Tensor, y_c: torch.Tensor, log_tau: torch.Tensor,
                          bidx: torch.Tensor) -> torch.Tensor:
        pred = kernel_ridge(k_cc, k_bc, y_c, self.cfg.reg)
        if self.cfg.loss == "mse":
            return ((pred - self.targets.index_select(0, bidx)) ** 2).sum(1).mean()
        return F.cross_entropy(pred / torch.exp(log_tau.double()), self.labels.index_select(0, bidx))

    def backward(self, x_c: torch.Tensor, y_c: torch.Tensor, log_tau: torch.Tensor, ids: torch.Tensor,
                 bidx: torch.Tensor) -> float:
        """Accumulate gradients into ``x_c``, ``y_c`` and ``log_tau``; return the loss.

        A net's coreset features keep their autograd graph when the activations of all this process's nets fit
        the memory budget together; otherwise each chunk of coreset rows is recomputed with autograd and
        back-propagated with its share of the features' gradient. Both give the same numbers: the rows are cut
        into the same chunks either way.
        """
        m = len(ids)
        own = [(k, int(j)) for k, j in enumerate(ids.tolist()) if self.comm.owns(int(j))]  # (slot, pool index)
        n_c, shape = x_c.shape[0], x_c.shape[1:]
        rows = self.pool.chunk_rows(shape, 1, grad=True)  # per net: the same chunks in every process
        keep = rows >= n_c and bool(own) and self.pool.chunk_rows(shape, len(own), grad=True) >= n_c
        kcc = torch.zeros((m, n_c, n_c), dtype=x_c.dtype, device=x_c.device)
        kbc = torch.zeros((m, len(bidx), n_c), dtype=x_c.dtype, device=x_c.device)
        held: dict[int, tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]] = {}
        for k, j in own:
            real = self.real[self.slots[j]].index_select(0, bidx)
            if keep:
                leaf = x_c.detach().requires_grad_(True)
                phi = self.pool.features(leaf, [j])[:, 0]
            else:
                leaf = None
                with torch.no_grad():
                    phi = torch.cat([self.pool.features(x_c[s : s + rows].detach(), [j])[:, 0]
                                     for s in range(0, n_c, rows)])
            with torch.no_grad():
                kcc[k] = phi @ phi.T
                kbc[k] = real @ phi.T
            held[k] = (leaf, phi, real)
        if self.comm.world > 1:
            self.comm.all_reduce_(kcc)
            self.comm.all_reduce_(kbc)
        k_cc = (kcc.double().sum(0) / m).requires_grad_(True)
        k_bc = (kbc.double().sum(0) / m).requires_grad_(True)
        loss = self.loss_from_kernels(k_cc, k_bc, y_c, log_tau, bidx)
        loss.backward()
        g_cc, g_bc = (k_cc.grad / m).to(x_c.dtype), (k_bc.grad / m).to(x_c.dtype)
        grads = torch.zeros((m, *x_c.shape), dtype=x_c.dtype, device=x_c.device)
        for k, j in own:
            leaf, phi, real = held.pop(k)
            with torch.no_grad():  # d loss / d phi of K_CC = phi phi^T and K_BC = real phi^T, in a fixed order
                g_phi = (g_cc + g_cc.T) @ phi.detach() + g_bc.T @ real
            if leaf is not None:
                torch.autograd.backward(phi, g_phi)
                grads[k] = leaf.grad
            else:
                for s in range(0, n_c, rows):
                    part = x_c[s : s + rows].detach().requires_grad_(True)
                    torch.autograd.backward(self.pool.features(part, [j])[:, 0], g_phi[s : s + rows])
                    grads[k, s : s + rows] = part.grad
        if self.comm.world > 1:
            self.comm.all_reduce_(grads)
        g = grads.sum(0)
        x_c.grad = g if x_c.grad is None else x_c.grad + g
        return float(loss.detach())


def _validate_inputs(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     class_names: Sequence[str], feature_config: FeatureConfig) -> None:
    if x_train.ndim != 3:
        raise ValueError(f"x_train must be (N, H, W), got {x_train.shape}")
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise ValueError("inputs and labels differ in length")
    if len(x_val) == 0:
        raise ValueError("the validation set is empty")
    if x_val.ndim != 3 or x_val.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"x_val must be (N, {x_train.shape[1]}, {x_train.shape[2]}), got {x_val.shape}")
    if tuple(x_train.shape[1:]) != tuple(feature_config.shape):
        raise ValueError(f"inputs are {x_train.shape[1:]} but the FeatureConfig gives {feature_config.shape}")
    c = len(class_names)
    for name, y in (("y_train", y_train), ("y_val", y_val)):
        if y.ndim != 1 or (len(y) and (y.min() < 0 or y.max() >= c)):
            raise ValueError(f"{name} must be (N,) integer labels in 0..{c - 1}")
    if not np.all(np.isfinite(x_train)) or not np.all(np.isfinite(x_val)):
        raise ValueError("inputs contain non-finite values")


def distill(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    class_names: Sequence[str],
    feature_config: FeatureConfig,
    cfg: RFADConfig = RFADConfig(),
    *,
    source_fingerprint: str = "",
    real_targets: np.ndarray | None = None,
    label_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    comm: Comm | None = None,
) -> Coreset:
    """Distil a labelled training set into a coreset of ``cfg.per_class`` images per class.

    Args:
        x_train: ``(N, H, W)`` float32 normalised MFCC; ``(H, W) == feature_config.shape``.
        y_train: ``(N,)`` integer labels.
        x_val, y_val: held-out validation set (early stopping and model selection).
        class_names: the ``C`` class names in label order.
        feature_config: the (fitted) FeatureConfig the inputs were computed with; stored in the coreset.
        cfg: distillation settings.
        source_fingerprint: identity of the source dataset, stored in the coreset.
        real_targets: ``(N, C)`` what KRR on the coreset should predict for each training clip (e.g. a teacher's
            probabilities); default: the one-hot labels. The coreset's labels start from the targets of the clips
            it is initialised from.
        label_fn: the coreset's labels as a differentiable function of its inputs, ``(M, H, W) -> (M, C)``
            (e.g. a teacher's probabilities): each step labels the moving coreset with it and the loss reaches the
            inputs through it too, so the coreset is one whose *labelled* points make KRR reproduce
            ``real_targets``; learned labels are then off. Not stored in a checkpoint: pass the same function
            when resuming.
        checkpoint_path: save the full state here every ``cfg.checkpoint_every`` steps and at the end (atomic
            writes: an interrupted run leaves the last checkpoint valid).
        resume: continue from ``checkpoint_path`` when it exists (same settings and data; ``steps`` and
            ``patience`` may grow).
        progress: receives ``{"event": "rfad_features", "done", "total"}`` while real-side features are
            computed and ``{"event": "distill", "step", "steps", "loss", "val_accuracy", ...}`` after every step.
        comm: processes distilling together (:mod:`edgekws.server.distributed`); default: the initialised
            ``torch.distributed`` group, else this process alone. Every process passes the same data and
            settings and gets the same coreset; only the main process writes checkpoints and reports progress.

    Returns:
        The coreset with the best validation accuracy seen (the random-real initialisation included).
    """
    x_train = np.asarray(x_train, dtype=np.float32)
    x_val = np.asarray(x_val, dtype=np.float32)
    y_train = np.asarray(y_train).astype(np.int64)
    y_val = np.asarray(y_val).astype(np.int64)
    class_names = tuple(str(c) for c in class_names)
    _validate_inputs(x_train, y_train, x_val, y_val, class_names, feature_config)
    if real_targets is not None:
        real_targets = np.asarray(real_targets, dtype=np.float64)
        if real_targets.shape != (len(x_train), len(class_names)) or not np.all(np.isfinite(real_targets)):
            raise ValueError(f"real_targets must be finite ({len(x_train)}, {len(class_names)}), "
                             f"got {real_targets.shape}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    comm = comm if comm is not None else current_comm()
    if not comm.is_main:
        progress = None
    n_classes = len(class_names)
    t_start = time.perf_counter()
    fingerprint = _data_fingerprint(x_train, y_train, x_val, y_val, np.array(class_names),
                                    *([] if real_targets is None else [real_targets]))
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    state = _load_checkpoint(ckpt, cfg, fingerprint) if resume and ckpt is not None and ckpt.is_file() else None

    init_idx = _balanced_indices(y_train, cfg.per_class, n_classes, np.random.default_rng([int(cfg.seed), 1]))
    init_labels = y_train[init_idx]
    offset = 1.0 / n_classes if cfg.label_init == "centered" else 0.0
    if state is None:
        x_c = torch.from_numpy(x_train[init_idx].copy()).to(device)
        y0 = _onehot(init_labels, n_classes) if real_targets is None else real_targets[init_idx]
        y_c = torch.from_numpy(np.asarray(y0 - offset, dtype=np.float32)).to(device)
        log_tau = torch.tensor(math.log(cfg.temperature), dtype=torch.float32, device=device)
    else:
        x_c, y_c, log_tau = (state[k].to(device) for k in ("x", "y", "log_tau"))
    x_c.requires_grad_(True)
    learn_labels = cfg.learn_labels and label_fn is None

    def labelled(x: torch.Tensor) -> torch.Tensor:
        """The coreset's labels for inputs ``x``: ``label_fn`` (with the same centring) or the free labels."""
        return label_fn(x).to(y_c.dtype) - offset if label_fn is not None else y_c

    if label_fn is not None:
        with torch.no_grad():
            y_c = labelled(x_c)
    y_c.requires_grad_(learn_labels)
    log_tau.requires_grad_(cfg.loss == "platt")
    opt_x = torch.optim.Adam([x_c], lr=cfg.lr)
    label_params = ([y_c] if learn_labels else []) + ([log_tau] if cfg.loss == "platt" else [])
    opt_y = torch.optim.Adam(label_params, lr=cfg.label_lr) if label_params else None
    rng = np.random.default_rng([int(cfg.seed), 2])

    step, history = 0, []
    best = {"acc": -1.0, "step": 0, "x": None, "y": None, "log_tau": None}
    bad_evals, stopped, init_acc, feature_seconds = 0, False, None, 0.0
    step_seconds: list[float] = []
    losses: list[float] = []  # step losses since the last validation
    if state is not None:
        opt_x.load_state_dict(state["opt_x"])
        if opt_y is not None:
            opt_y.load_state_dict(state["opt_y"])
        rng.bit_generator.state = state["rng"]
        step, history, bad_evals, stopped = state["step"], state["history"], state["bad_evals"], state["stopped"]
        best = dict(state["best"])
        init_acc, feature_seconds = state["init_acc"], state["feature_seconds"]
        step_seconds, losses = list(state["step_seconds"]), list(state["losses"])

    def checkpoint() -> None:
        if ckpt is None or not comm.is_main:
            return
        _save_checkpoint(ckpt, {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg.to_dict(),
            "data": fingerprint, "step": step, "x": x_c.detach().cpu(), "y": y_c.detach().cpu(),
            "log_tau": log_tau.detach().cpu(), "opt_x": opt_x.state_dict(),
            "opt_y": opt_y.state_dict() if opt_y is not None else None, "rng": rng.bit_generator.state,
            "history": history, "bad_evals": bad_evals, "stopped": stopped, "best": best, "init_acc": init_acc,
            "feature_seconds": feature_seconds, "step_seconds": step_seconds, "losses": losses,
            "readout_scores": readout_scores,
        })

    run_cfg, readout_scores = None, None
    if state is not None:
        readout_scores = state.get("readout_scores")
    if not stopped and step < cfg.steps:
        run_cfg = cfg
        if cfg.readout == "auto":
            if readout_scores is None:  # measured once, on the initial coreset; a resumed run keeps the choice
                readout_scores = {r: _krr_accuracy(dataclasses.replace(cfg, readout=r), x_c.detach(), y_c.detach(),
                                                   x_val, y_val, device) for r in READOUTS}
            run_cfg = dataclasses.replace(cfg, readout=_best_readout(readout_scores))
        pool = RandomConvNets.pool(run_cfg, device)
        eval_nets = RandomConvNets.evaluation(run_cfg, device)
        t0 = time.perf_counter()
        xt, xv = _as_tensor(x_train, device), _as_tensor(x_val, device)
        d = pool.feature_dim(x_train.shape[1:])
        owned = [j for j in range(cfg.pool_size) if comm.owns(j)]  # this process keeps these nets' features
        slots = {j: k for k, j in enumerate(owned)}
        real = torch.empty((len(owned), len(x_train), d), dtype=torch.float32, device=device)
        for s, j in enumerate(owned):  # one net at a time: the same numbers whichever process owns it
            pool.features_chunked(xt, [j], out=real[s].unsqueeze(1))
            if progress:
                progress({"event": "rfad_features", "done": s + 1, "total": len(owned)})
        val_feats = eval_nets.features_chunked(xv)
        del xt, xv
        feature_seconds += time.perf_counter() - t0
        targets = _onehot(y_train, n_classes) if real_targets is None else real_targets
        targets = torch.from_numpy(np.asarray(targets, dtype=np.float64)).to(device) - offset
        objective = _Objective(cfg, pool, real, slots, targets, torch.from_numpy(y_train).to(device), comm)
        by_class = [np.flatnonzero(y_train == c) for c in range(n_classes)]
        y_val_t = torch.from_numpy(y_val).to(device)

        def validate() -> float:
            with torch.no_grad():
                fc = eval_nets.features_chunked(x_c.detach())
                pred = kernel_ridge(_gram(fc, fc), _gram(val_feats, fc), labelled(x_c.detach()).detach(), cfg.reg)
                return float((pred.argmax(1) == y_val_t).double().mean())

        if step == 0 and init_acc is None:
            init_acc = validate()
            best = {"acc": init_acc, "step": 0, "x": x_c.detach().cpu().clone(),
                    "y": labelled(x_c.detach()).detach().cpu().clone(),
                    "log_tau": log_tau.detach().cpu().clone()}
            history.append({"step": 0, "loss": None, "val_accuracy": init_acc})
        val_acc = history[-1]["val_accuracy"] if history else init_acc
        while step < cfg.steps:
            ts = time.perf_counter()
            ids = torch.from_numpy(np.sort(rng.choice(cfg.pool_size, size=cfg.n_models, replace=False)))
            bidx = torch.from_numpy(_batch_indices(y_train, by_class, cfg.batch_size, rng)).to(device)
            opt_x.zero_grad(set_to_none=True)
            if opt_y is not None:
                opt_y.zero_grad(set_to_none=True)
            y_now = labelled(x_c) if label_fn is not None else y_c  # a teacher's labels carry x_c's graph
            loss = objective.backward(x_c, y_now, log_tau, ids, bidx)
            if not math.isfinite(loss):
                raise FloatingPointError(f"RFAD loss became {loss} at step {step + 1}; lower lr or raise reg")
            opt_x.step()
            if opt_y is not None:
                opt_y.step()
            step += 1
            losses.append(loss)
            step_seconds.append(time.perf_counter() - ts)
            evaluated = step % cfg.eval_every == 0 or step == cfg.steps
            if evaluated:
                val_acc = validate()
                history.append({"step": step, "loss": float(np.mean(losses)), "val_accuracy": val_acc})
                losses.clear()
                if val_acc > best["acc"]:
                    best = {"acc": val_acc, "step": step, "x": x_c.detach().cpu().clone(),
                            "y": labelled(x_c.detach()).detach().cpu().clone(),
                            "log_tau": log_tau.detach().cpu().clone()}
                    bad_evals = 0
                else:
                    bad_evals += 1
                stopped = bool(cfg.patience) and bad_evals >= cfg.patience and step < cfg.steps
            if progress:
                progress({"event": "distill", "step": step, "steps": cfg.steps, "loss": loss,
                          "val_accuracy": val_acc, "best_val_accuracy": best["acc"], "evaluated": evaluated,
                          "seconds": step_seconds[-1]})
            if stopped:
                break
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                checkpoint()
        checkpoint()

    metrics = {
        "init_val_accuracy": init_acc,
        "val_accuracy": best["acc"],
        "best_step": best["step"],
        "steps": step,
        "stopped_early": stopped,
        "temperature": float(torch.exp(best["log_tau"])) if cfg.loss == "platt" else None,
        "feature_seconds": feature_seconds,
        "seconds_per_step": float(np.mean(step_seconds)) if step_seconds else None,
        "seconds": time.perf_counter() - t_start,
        "device": str(device),
        "processes": comm.world,
        "readout": cfg.readout if cfg.readout != "auto" else _best_readout(readout_scores or {READOUTS[0]: 0.0}),
        "readout_scores": readout_scores,
        "history": history,
    }
    return Coreset(x=best["x"].numpy(), y=best["y"].numpy(), class_names=class_names, feature_config=feature_config,
                   config=cfg, source_fingerprint=source_fingerprint, metrics=metrics, init_labels=init_labels)
