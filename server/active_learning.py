"""Pool-based active learning: the baselines a distilled coreset is compared against.

A run starts from a small class-balanced random *seed set* drawn from the unlabelled pool, trains a net on the
labelled set, tests it, scores the rest of the pool with an acquisition function, "labels" the top-scoring batch
(the pool's labels are revealed), retrains from scratch and repeats until the largest budget is reached. Test
accuracy is recorded at every labelled-set size; the sizes asked for (``ALConfig.budgets``, e.g. the coreset sizes
20/30/50 per class and 10-60 % of the pool) are always among them.

Acquisition functions (Gal, Islam & Ghahramani 2017, the baselines of Gudur & Thomaz), computed from ``T``
Monte-Carlo dropout passes ``p_t(y|x)`` and their mean ``p(y|x)``:

``random``            uniform sampling (no model involved);
``entropy``           Max Entropy, ``H[p] = -sum_c p_c log p_c``;
``variation_ratios``  least confident, ``1 - max_c p_c``;
``bald``              mutual information, ``H[p] - mean_t H[p_t]`` (needs ``T >= 2``).

Scoring makes one pass over the unlabelled pool per acquisition, in chunks: every chunk is embedded once and the
``T`` dropout samples of the head run as one batched product (:func:`edgekws.models.base.mc_predict`).

A run is resumable: after every round the labelled indices (including the next acquisition) and the records so far
are written atomically to a JSON state file; a restarted run trains on exactly the set the interrupted one would
have, with the same seeds, so it ends with the same records. Progress goes to a callback, never to stdout.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from edgekws.features import FeatureConfig
from edgekws.fileio import atomic_write_json
from edgekws.models.base import mc_predict
from edgekws.server.train import AugmentConfig, TrainConfig, evaluate, train_model

__all__ = [
    "STRATEGIES",
    "ALConfig",
    "ALResult",
    "PoolScores",
    "acquisition_scores",
    "budget_schedule",
    "canonical_strategy",
    "run_active_learning",
    "score_pool",
    "seed_set",
    "small_set_train_config",
]

STRATEGIES = ("random", "entropy", "variation_ratios", "bald")
_ALIASES = {
    "max_entropy": "entropy",
    "maxentropy": "entropy",
    "least_confident": "variation_ratios",
    "var_ratios": "variation_ratios",
    "variation_ratio": "variation_ratios",
    "mutual_information": "bald",
}
LABELS = {"random": "Random", "entropy": "Max Entropy", "variation_ratios": "Variation Ratios", "bald": "BALD"}
STATE_FORMAT = "edgekws-al-state"
STATE_VERSION = 1
_EPS = 1e-12

Progress = Callable[[dict[str, Any]], None]


def canonical_strategy(name: str) -> str:
    """The strategy's canonical name (accepts ``max_entropy``, ``least_confident``, dashes, any case)."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise ValueError(f"unknown acquisition strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return key


def small_set_train_config(model: str, *, epochs: int = 30, seed: int = 0, loss: str = "ce",
                           min_steps_per_epoch: int = 12, device: str = "auto",
                           model_kwargs: dict | None = None) -> TrainConfig:
    """The recipe for labelled feature subsets: SpecAugment only, at least ``min_steps_per_epoch`` steps an epoch.

    The same recipe as :func:`edgekws.server.evaluate.coreset_train_config` (no waveforms to shift or mix), with
    cross-entropy by default: active learning scores the net's predictive probabilities.
    """
    return TrainConfig(model=model, model_kwargs=dict(model_kwargs or {}), epochs=epochs, loss=loss, seed=seed,
                       min_steps_per_epoch=min_steps_per_epoch, device=device,
                       augment=AugmentConfig(time_shift_ms=0.0, gain_db=0.0, noise_prob=0.0))


@dataclass
class ALConfig:
    """One active-learning run.

    Attributes:
        strategy: one of :data:`STRATEGIES`.
        budgets: labelled-set sizes (sample counts) at which a net is trained and tested; ascending, distinct,
            none above the pool size. See :func:`budget_schedule`.
        seed_size: size of the initial class-balanced random labelled set (<= the smallest budget).
        max_batch: the most samples acquired between two retrains (0: acquire straight up to the next budget).
        mc_passes: ``T``, MC-dropout passes per scored sample (1: one deterministic eval-mode pass for
            ``entropy`` / ``variation_ratios``; ``bald`` needs >= 2).
        score_batch_size: pool samples embedded per chunk when scoring.
        seed: seed of the seed set, of tie-breaking and random acquisition, of dropout masks, and (offset per
            round) of training.
        train: how every round's net is trained (see :func:`small_set_train_config`).
        use_val: select each net's best epoch on the validation split (as the coreset evaluation does).
    """

    strategy: str = "entropy"
    budgets: tuple[int, ...] = ()
    seed_size: int = 20
    max_batch: int = 0
    mc_passes: int = 20
    score_batch_size: int = 512
    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: small_set_train_config("cnn4"))
    use_val: bool = True

    def __post_init__(self) -> None:
        self.strategy = canonical_strategy(self.strategy)
        self.budgets = tuple(int(b) for b in self.budgets)
        if not self.budgets:
            raise ValueError("budgets is empty: give the labelled-set sizes to test at")
        if any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive sample counts, got {self.budgets}")
        if list(self.budgets) != sorted(set(self.budgets)):
            raise ValueError(f"budgets must be ascending and distinct, got {self.budgets}")
        if self.seed_size < 1:
            raise ValueError(f"seed_size must be >= 1, got {self.seed_size}")
        if self.seed_size > self.budgets[0]:
            raise ValueError(f"seed_size {self.seed_size} is larger than the smallest budget {self.budgets[0]}")
        if self.max_batch < 0:
            raise ValueError(f"max_batch must be >= 0, got {self.max_batch}")
        if self.mc_passes < 1:
            raise ValueError(f"mc_passes must be >= 1, got {self.mc_passes}")
        if self.strategy == "bald" and self.mc_passes < 2:
            raise ValueError("BALD needs mc_passes >= 2 (the mutual information of one pass is zero)")
        if self.score_batch_size < 1:
            raise ValueError(f"score_batch_size must be >= 1, got {self.score_batch_size}")

    def sizes(self) -> list[int]:
        """Every labelled-set size a net is trained at: the seed set, the budgets, and steps of ``max_batch``."""
        points = sorted({self.seed_size, *self.budgets})
        out = [points[0]]
        for b in points[1:]:
            while self.max_batch and b - out[-1] > self.max_batch:
                out.append(out[-1] + self.max_batch)
            out.append(b)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["budgets"] = list(self.budgets)
        return d


@dataclass
class ALResult:
    """What a run measured.

    ``records`` has one dict per trained net (labelled-set size ascending): ``round``, ``labelled``, ``fraction``
    (of the pool), ``is_budget``, ``test_accuracy``, ``val_accuracy``, ``class_counts`` of the labelled set,
    ``train_seconds`` and, for every round followed by an acquisition, ``acquired`` (batch size),
    ``acquired_entropy`` and ``acquired_mutual_information`` (means over the acquired samples under that round's
    net, for every strategy, random included),
    ``pool_entropy`` (mean over the unlabelled pool; uncertainty strategies only) and ``score_seconds``.
    ``labelled`` lists the pool indices in the order they were labelled.
    """

    strategy: str
    records: list[dict[str, Any]]
    labelled: list[int]
    pool_size: int
    seconds: float

    def at_budgets(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["is_budget"]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def budget_schedule(n_pool: int, n_classes: int, *, per_class: Sequence[int] = (20, 30, 50),
                    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)) -> list[int]:
    """Labelled-set sizes: ``per_class * n_classes`` (the coreset sizes, in total samples) and ``fraction * n_pool``.

    Sizes above the pool are dropped, duplicates merged; ascending.
    """
    if n_pool < 1 or n_classes < 1:
        raise ValueError(f"need a non-empty pool and classes, got n_pool={n_pool}, n_classes={n_classes}")
    for f in fractions:
        if not 0.0 < float(f) <= 1.0:
            raise ValueError(f"fractions must lie in (0, 1], got {f}")
    if any(int(p) < 1 for p in per_class):
        raise ValueError(f"per-class sizes must be positive, got {tuple(per_class)}")
    sizes = {int(p) * n_classes for p in per_class} | {max(1, int(round(float(f) * n_pool))) for f in fractions}
    return sorted(s for s in sizes if s <= n_pool)


def seed_set(y: np.ndarray, size: int, n_classes: int, seed: int = 0) -> np.ndarray:
    """``size`` pool indices, as class-balanced as the pool allows (``size // C`` per class, the rest at random)."""
    y = np.asarray(y).astype(np.int64)
    if size > len(y):
        raise ValueError(f"seed set of {size} from a pool of {len(y)}")
    rng = np.random.default_rng([int(seed), 11])
    per = size // n_classes
    chosen: list[int] = []
    for c in range(n_classes):
        members = np.flatnonzero(y == c)
        chosen.extend(rng.choice(members, size=min(per, len(members)), replace=False).tolist())
    rest = np.setdiff1d(np.arange(len(y)), np.asarray(chosen, dtype=np.int64))
    if size > len(chosen):
        chosen.extend(rng.choice(rest, size=size - len(chosen), replace=False).tolist())
    return np.asarray(chosen, dtype=np.int64)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(_EPS))).sum(-1)


def acquisition_scores(probs: torch.Tensor | np.ndarray, strategy: str) -> np.ndarray:
    """Scores ``(B,)`` (higher = acquire first) from MC class probabilities ``(T, B, C)``.

    ``entropy``: entropy of the mean prediction; ``variation_ratios``: ``1 - max`` of the mean prediction;
    ``bald``: entropy of the mean minus the mean entropy of the passes (0 when all passes agree).
    """
    strategy = canonical_strategy(strategy)
    if strategy == "random":
        raise ValueError("random acquisition has no scores")
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.dim() != 3:
        raise ValueError(f"probs must be (T, B, C), got shape {tuple(p.shape)}")
    mean = p.mean(0)
    if strategy == "entropy":
        s = _entropy(mean)
    elif strategy == "variation_ratios":
        s = 1.0 - mean.max(-1).values
    else:
        s = (_entropy(mean) - _entropy(p).mean(0)).clamp_min(0.0)
    return s.numpy()


@torch.no_grad()
def _probs(model: torch.nn.Module, xb: torch.Tensor, passes: int, seed: int) -> torch.Tensor:
    if passes == 1:
        was = model.training
        model.eval()
        out = torch.softmax(model(xb), dim=-1).unsqueeze(0)
        model.train(was)
        return out
    return mc_predict(model, xb, passes, seed=seed)


class PoolScores(NamedTuple):
    """Per-sample arrays ``(N,)``: the strategy's ``score``, the predictive ``entropy`` of the mean prediction and
    the ``mutual_information`` (BALD) of the MC passes (0 with one deterministic pass)."""

    score: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray


@torch.no_grad()
def score_pool(model: torch.nn.Module, x: np.ndarray, strategy: str, *, mc_passes: int = 20,
               batch_size: int = 512, seed: int = 0) -> PoolScores:
    """Acquisition scores, predictive entropies and mutual information of pool features ``x (N, H, W)``.

    One pass over the pool: each chunk of ``batch_size`` is embedded once and its ``mc_passes`` dropout samples
    run as one batched head call.
    """
    strategy = canonical_strategy(strategy)
    if strategy == "random":
        raise ValueError("random acquisition has no scores")
    dev = next(model.parameters()).device
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i, s in enumerate(range(0, len(x), batch_size)):
        xb = torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size], dtype=np.float32)).to(dev)
        p = _probs(model, xb, mc_passes, seed=int(seed) * 100_003 + i).double().cpu()
        ent = _entropy(p.mean(0))
        mi = (ent - _entropy(p).mean(0)).clamp_min(0.0)
        parts.append((acquisition_scores(p, strategy), ent.numpy(), mi.numpy()))
    if not parts:
        return PoolScores(np.zeros(0), np.zeros(0), np.zeros(0))
    return PoolScores(*(np.concatenate([q[j] for q in parts]) for j in range(3)))


# How a run is executed, not what it computes: a run may resume with other values of these.
_EXECUTION_KEYS = ("threads", "device")


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config dict (:meth:`ALConfig.to_dict`) without the execution keys of its training recipe."""
    return {**config, "train": {k: v for k, v in config["train"].items() if k not in _EXECUTION_KEYS}}


def _fingerprint(cfg: ALConfig, *arrays: np.ndarray, legacy: bool = False) -> str:
    """A hash of the run's settings and data. ``legacy``: as state files of version 1 hashed it, with the thread
    count and device included (accepted on resume so that those files keep working)."""
    h = hashlib.sha256(json.dumps(cfg.to_dict() if legacy else _settings(cfg.to_dict()), sort_keys=True,
                                  default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every value that differs between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _load_state(path: Path, fingerprint: str, *, legacy: Callable[[], str] | None = None,
                config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The state at ``path`` if it was written by this run (``fingerprint``, or ``legacy()``, computed only when
    the first does not match); ``config`` (:meth:`ALConfig.to_dict`) names what differs when it was not."""
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable active-learning state ({exc}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not an active-learning state file")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: state version {state.get('version')} is not {STATE_VERSION}; delete it")
    if state.get("fingerprint") != fingerprint and (legacy is None or state.get("fingerprint") != legacy()):
        stored = state.get("config")
        # compared as stored (JSON turns tuples into lists)
        diff = (_differences(_settings(stored), _settings(json.loads(json.dumps(config, default=str))))
                if config is not None and isinstance(stored, dict) and isinstance(stored.get("train"), dict) else [])
        what = (f"other settings ({'; '.join(diff[:6])}{'; ...' if len(diff) > 6 else ''})" if diff
                else "other data (the pool, the validation or the test split differ)")
        raise ValueError(f"{path}: written by a run with {what}; use another state path or delete it to start over")
    state["fingerprint"] = fingerprint
    return state


def _validate(x_pool, y_pool, x_val, y_val, x_test, y_test, n_classes: int) -> None:
    if x_pool.ndim != 3:
        raise ValueError(f"pool features must be (N, H, W), got shape {x_pool.shape}")
    for name, x, y in (("pool", x_pool, y_pool), ("validation", x_val, y_val), ("test", x_test, y_test)):
        if x is None:
            continue
        if len(x) != len(y):
            raise ValueError(f"{name}: {len(x)} inputs but {len(y)} labels")
        if y.ndim != 1:
            raise ValueError(f"{name} labels must be integer class indices (N,), got shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} labels must lie in 0..{n_classes - 1}")
        if x.ndim != 3 or tuple(x.shape[1:]) != tuple(x_pool.shape[1:]):
            raise ValueError(f"{name} features {x.shape} do not match the pool's {x_pool.shape}")
    if len(x_test) == 0:
        raise ValueError("the test split is empty")


def run_active_learning(
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    x_test: np.ndarray,
    y_test: np.ndarray,
    feature_cfg: FeatureConfig,
    n_classes: int,
    cfg: ALConfig,
    *,
    state_path: str | os.PathLike | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    first_round: dict[str, Any] | None = None,
) -> ALResult:
    """Run one pool-based active-learning experiment and return its records.

    Args:
        x_pool, y_pool: the unlabelled pool ``(N, H, W)`` (normalised features) and its hidden labels ``(N,)``.
        x_val, y_val: validation split (best-epoch selection when ``cfg.use_val``), or None.
        x_test, y_test: test split; every round's net is tested on it.
        feature_cfg: the fitted FeatureConfig of the features.
        n_classes: number of classes.
        cfg: strategy, budgets, seed set, MC passes, training recipe.
        state_path: JSON state file, rewritten atomically after every round.
        resume: continue from ``state_path`` when it exists (it must come from the same settings and data).
        progress: receives ``{"event": "al_round", ...}`` after every trained net and ``{"event": "al_score",
            ...}`` after every acquisition; training epochs arrive as ``{"event": "al_epoch", ...}``.
        first_round: a dict shared by runs that differ only in ``cfg.strategy`` (same data, seed, budgets and
            recipe): the net trained on the common seed set is kept there and reused instead of retrained.

    Raises:
        ValueError: inconsistent inputs, a budget above the pool, a class missing from the pool, a state file
            from other settings.
    """
    x_pool = np.asarray(x_pool, dtype=np.float32)
    y_pool = np.asarray(y_pool).astype(np.int64)
    x_test = np.asarray(x_test, dtype=np.float32)
    y_test = np.asarray(y_test).astype(np.int64)
    if x_val is not None:
        x_val = np.asarray(x_val, dtype=np.float32)
        y_val = np.asarray(y_val).astype(np.int64)
    _validate(x_pool, y_pool, x_val, y_val, x_test, y_test, n_classes)
    n = len(x_pool)
    if cfg.budgets[-1] > n:
        raise ValueError(f"budget {cfg.budgets[-1]} exceeds the pool of {n} samples")
    missing = sorted(set(range(n_classes)) - set(np.unique(y_pool).tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no samples in the pool")
    sizes = cfg.sizes()
    budgets = set(cfg.budgets)
    use_val = cfg.use_val and x_val is not None and len(x_val) > 0
    data = (x_pool, y_pool, x_test, y_test, *((x_val, y_val) if use_val else ()))
    fingerprint = _fingerprint(cfg, *data)
    # the seed set and its net depend on everything but the strategy: runs that differ only there can share it
    fingerprint_without_strategy = _fingerprint(dataclasses.replace(cfg, strategy="random"), *data)
    path = Path(state_path) if state_path is not None else None
    state = (_load_state(path, fingerprint, legacy=lambda: _fingerprint(cfg, *data, legacy=True), config=cfg.to_dict())
             if (resume and path is not None) else None)
    if state is None:
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, "fingerprint": fingerprint,
                 "config": cfg.to_dict(), "pool_size": n, "sizes": sizes, "round": 0, "seconds": 0.0,
                 "labelled": seed_set(y_pool, cfg.seed_size, n_classes, cfg.seed).tolist(), "records": []}
    t0 = time.perf_counter() - float(state["seconds"])

    def save() -> None:
        state["seconds"] = time.perf_counter() - t0
        if path is not None:
            atomic_write_json(path, state)

    for r in range(int(state["round"]), len(sizes)):
        labelled = np.asarray(state["labelled"], dtype=np.int64)
        if len(labelled) != sizes[r]:  # cannot happen unless the state file was edited
            raise ValueError(f"state has {len(labelled)} labelled samples at round {r}, expected {sizes[r]}")
        tcfg = dataclasses.replace(cfg.train, seed=int(cfg.seed) * 1000 + int(cfg.train.seed) + r)
        on_epoch = None
        if progress is not None:
            def on_epoch(ev: dict[str, Any], _r: int = r) -> None:
                if ev.get("event") == "epoch":
                    progress({**ev, "event": "al_epoch", "strategy": cfg.strategy, "round": _r})
        t_train = time.perf_counter()
        key = f"{fingerprint_without_strategy}:{r}" if r == 0 else None
        if first_round is not None and key in first_round:
            model = copy.deepcopy(first_round[key][0])
            best_val = first_round[key][1]
        else:
            res = train_model(x_pool[labelled], y_pool[labelled], x_val if use_val else None,
                              y_val if use_val else None, feature_cfg, n_classes, tcfg, inputs="features",
                              progress=on_epoch)
            model, best_val = res.model, res.best_val_accuracy
            if first_round is not None and key is not None:
                first_round[key] = (copy.deepcopy(model), best_val)
        acc = evaluate(model, x_test, y_test, n_classes)["accuracy"]
        rec: dict[str, Any] = {
            "round": r, "labelled": int(len(labelled)), "fraction": len(labelled) / n,
            "is_budget": int(len(labelled)) in budgets, "test_accuracy": float(acc),
            "val_accuracy": float(best_val) if use_val else None,
            "class_counts": np.bincount(y_pool[labelled], minlength=n_classes).tolist(),
            "train_seconds": time.perf_counter() - t_train,
        }
        if r + 1 < len(sizes):
            k = sizes[r + 1] - sizes[r]
            t_score = time.perf_counter()
            mask = np.ones(n, dtype=bool)
            mask[labelled] = False
            unlabelled = np.flatnonzero(mask)
            rng = np.random.default_rng([int(cfg.seed), 23, r])
            score_seed = int(cfg.seed) * 7919 + r
            if cfg.strategy == "random":
                pick = rng.choice(len(unlabelled), size=k, replace=False)
                sc = score_pool(model, x_pool[unlabelled[pick]], "entropy", mc_passes=cfg.mc_passes,
                                batch_size=cfg.score_batch_size, seed=score_seed)
                acquired = sc
                pool_entropy = score_mean = None
            else:
                sc = score_pool(model, x_pool[unlabelled], cfg.strategy, mc_passes=cfg.mc_passes,
                                batch_size=cfg.score_batch_size, seed=score_seed)
                order = np.lexsort((rng.random(len(unlabelled)), -sc.score))  # highest score first, random ties
                pick = order[:k]
                acquired = PoolScores(*(a[pick] for a in sc))
                pool_entropy, score_mean = float(sc.entropy.mean()), float(acquired.score.mean())
            acquired_entropy = float(acquired.entropy.mean())
            chosen = unlabelled[pick]
            rec.update(acquired=int(k), acquired_entropy=acquired_entropy,
                       acquired_mutual_information=float(acquired.mutual_information.mean()),
                       pool_entropy=pool_entropy, acquired_score=score_mean,
                       score_seconds=time.perf_counter() - t_score)
            state["labelled"] = labelled.tolist() + chosen.tolist()
            if progress:
                progress({"event": "al_score", "strategy": cfg.strategy, "round": r, "acquired": int(k),
                          "acquired_entropy": acquired_entropy, "seconds": rec["score_seconds"]})
        state["records"].append(rec)
        state["round"] = r + 1
        save()
        if progress:
            progress({"event": "al_round", "strategy": cfg.strategy, "seed": cfg.seed, "round": r,
                      "rounds": len(sizes), **{k: rec[k] for k in ("labelled", "fraction", "test_accuracy")}})
    save()
    return ALResult(cfg.strategy, list(state["records"]), [int(i) for i in state["labelled"]], n,
                    float(state["seconds"]))

