"""One finite net trained on a small gsc-dev set with recipe overrides: for probing why a net fails on few clips.

Trains ``--model`` on 50/class (``--per-class``) random real training clips (``--method random_ce`` or
``random_mse``) or on an RFAD coreset from ``benchmarks/rfad_gsc.py`` (``--method rfad``), with the small-set
recipe of ``edgekws evaluate`` (SpecAugment, at least 12 steps per epoch, best epoch on val) and the given
overrides, then prints the training curve and the test accuracy on the speaker-disjoint test split.

    python benchmarks/small_set_recipe.py --gsc ../shared/data/gsc-dev --model resnet18 --method random_ce \\
        --set width=0.25 --set stem_stride=1 --set stem_pool=false

``--set`` takes model arguments (width, stem_stride, stem_pool, dropout) and recipe fields (weight_decay,
label_smoothing, batch_size, min_steps_per_epoch, schedule, mixup).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from edgekws.datasets import load_dataset
from edgekws.features import FeatureConfig
from edgekws.server.data import prepare
from edgekws.server.evaluate import coreset_train_config
from edgekws.server.rfad import Coreset, random_real_coreset
from edgekws.server.train import evaluate, train_model

MODEL_ARGS = {"width": float, "stem_stride": int, "stem_pool": lambda v: v.lower() in ("1", "true", "yes"),
              "dropout": float}
RECIPE_ARGS = {"weight_decay": float, "label_smoothing": float, "batch_size": int, "min_steps_per_epoch": int,
               "schedule": str}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gsc", type=Path, required=True)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--method", choices=("random_ce", "random_mse", "rfad"), default="random_ce")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--coresets", type=Path, default=Path("runs/rfad_gsc"), help="folder of coreset_pc<P>_s<S>.npz")
    args = ap.parse_args()
    torch.set_num_threads(1)

    ds = load_dataset("gsc", args.gsc)
    prep = prepare(ds, FeatureConfig(normalization="global", clip_seconds=ds.clip_seconds))
    _, xtr, ytr = prep.subset("train")
    _, xv, yv = prep.subset("val")
    _, xt, yt = prep.subset("test")
    if args.method == "rfad":
        core = Coreset.load(args.coresets / f"coreset_pc{args.per_class}_s{args.seed}.npz")
        x, y, loss = core.x, core.y, "mse"
    else:
        xr, yr = random_real_coreset(xtr, ytr, args.per_class, seed=args.seed, n_classes=prep.n_classes)
        x, y, loss = (xr, yr, "mse") if args.method == "random_mse" else (xr, yr.argmax(1), "ce")
    cfg = coreset_train_config(args.model, loss=loss, epochs=args.epochs, seed=args.seed)
    cfg.threads, cfg.lr = 1, args.lr
    for item in args.set:
        key, _, value = item.partition("=")
        if key in MODEL_ARGS:
            cfg.model_kwargs[key] = MODEL_ARGS[key](value)
        elif key in RECIPE_ARGS:
            setattr(cfg, key, RECIPE_ARGS[key](value))
        elif key == "mixup":
            cfg.augment.mixup = float(value)
        else:
            ap.error(f"unknown setting {key!r}")
    t0 = time.perf_counter()
    res = train_model(x, y, xv, yv, prep.feature_cfg, prep.n_classes, cfg, inputs="features")
    acc = evaluate(res.model, xt, yt, prep.n_classes)["accuracy"]
    for h in res.history[:: max(1, len(res.history) // 15)]:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in h.items()})
    print(json.dumps({"model": args.model, "method": args.method, "per_class": args.per_class, "seed": args.seed,
                      "epochs": args.epochs, "lr": args.lr, "settings": args.set, "test_accuracy": 100 * acc,
                      "best_val_accuracy": 100 * res.best_val_accuracy, "best_epoch": res.best_epoch,
                      "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
