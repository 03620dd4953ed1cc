"""Which random-feature kernel is worth matching: KRR accuracy of kernel variants on real data.

A coreset can only be as good as the kernel it is distilled under. This measures the kernel itself: kernel ridge
regression with the whole training split as support (the ceiling a coreset approaches) and with random real clips
per class (where a coreset starts), on the validation split, for readouts (flatten / time-mean / global-mean),
numbers and widths of random nets, ridge lambda and per-coefficient whitening of the inputs.

    python benchmarks/rfad_kernel.py --dataset gsc --data-dir ../shared/data/gsc-dev
    python benchmarks/rfad_kernel.py --dataset us8k --data-dir ../shared/data/us8k-dev

Writes ``benchmarks/results/rfad_kernel_<dataset>.json|md``.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from edgekws.datasets import load_dataset
from edgekws.features import FeatureConfig
from edgekws.server.data import prepare, split_by_group_hash
from edgekws.server.pipeline import run_environment, write_json
from edgekws.server.rfad import RandomConvNets, RFADConfig, _gram, kernel_ridge, random_real_coreset

RESULTS = Path(__file__).resolve().parent / "results"


def whiten(x_fit: np.ndarray, *xs: np.ndarray, eps: float = 1e-2) -> list[np.ndarray]:
    """ZCA over the MFCC coefficients (rows of each (H, W) map), fitted on ``x_fit``'s frames."""
    h = x_fit.shape[1]
    frames = x_fit.transpose(0, 2, 1).reshape(-1, h).astype(np.float64)
    cov = np.cov(frames, rowvar=False)
    vals, vecs = np.linalg.eigh(cov)
    w = vecs @ np.diag(1.0 / np.sqrt(vals + eps * vals.mean())) @ vecs.T
    return [np.einsum("ij,njt->nit", w, x).astype(np.float32) for x in (x_fit, *xs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gsc")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--readouts", default="flatten,time-mean,global-mean")
    ap.add_argument("--nets", default="4x32,8x32,4x128")
    ap.add_argument("--regs", default="0.001,0.1")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--inputs", default="global-norm,zca", help="input variants: global-norm, zca")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset, args.data_dir)
    if len(set(ds.folds.tolist())) == 1:
        ds = split_by_group_hash(ds)
    prep = prepare(ds, FeatureConfig(normalization="global", clip_seconds=ds.clip_seconds))
    _, xtr, ytr = prep.subset("train")
    _, xv, yv = prep.subset("val")
    c = prep.n_classes
    inputs = {}
    for name in args.inputs.split(","):
        inputs[name] = (xtr, xv) if name == "global-norm" else tuple(whiten(xtr, xv))
    rows = []
    regs = [float(r) for r in args.regs.split(",")]
    for (wname, (a, b)), readout, nets in itertools.product(inputs.items(), args.readouts.split(","),
                                                          args.nets.split(",")):
        m, width = (int(v) for v in nets.split("x"))
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = RFADConfig(n_models=m, pool_size=m, width=width, readout=readout, seed=seed)
            t0 = time.perf_counter()
            kernel = RandomConvNets.evaluation(cfg)
            xs, ys = random_real_coreset(a, ytr, args.per_class, seed=seed, n_classes=c)
            with torch.no_grad():  # the kernels once; every ridge reuses them
                fa, fb, fs = (kernel.features_chunked(torch.from_numpy(np.ascontiguousarray(v))) for v in (a, b, xs))
                k_aa, k_ba, k_ss, k_bs = _gram(fa, fa), _gram(fb, fa), _gram(fs, fs), _gram(fb, fs)
            y_all = torch.from_numpy(np.eye(c)[ytr])
            for reg in regs:
                full = float((kernel_ridge(k_aa, k_ba, y_all, reg).argmax(1).numpy() == yv).mean())
                small = float((kernel_ridge(k_ss, k_bs, torch.from_numpy(ys).double(), reg).argmax(1).numpy()
                               == yv).mean())
                row = {"inputs": wname, "readout": readout, "nets": m, "width": width, "reg": reg, "seed": seed,
                       "krr_all_train": 100 * full, f"krr_{args.per_class}_per_class": 100 * small,
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(row, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"rfad_kernel_{args.dataset}"
    write_json(RESULTS / f"{name}.json", {"environment": run_environment(), "dataset": ds.name,
                                         "split": {k: int(len(getattr(prep.split, k))) for k in ("train", "val")},
                                         "rows": rows})
    key = f"krr_{args.per_class}_per_class"
    lines = [f"# KRR under random-feature kernels on {ds.name} (validation accuracy %, mean over seeds "
             f"{args.seeds})", "",
             f"Support: all {len(ytr)} training clips, or {args.per_class} random real clips per class. Query: the "
             f"{len(yv)} validation clips.", "",
             "| inputs | readout | nets x width | lambda (x mean diag) | KRR, all training clips | "
             f"KRR, {args.per_class}/class |", "|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["inputs"], r["readout"], r["nets"], r["width"], r["reg"]), []).append(r)
    for (wname, readout, m, width, reg), rs in groups.items():
        lines.append(f"| {wname} | {readout} | {m} x {width} | {reg:g} | "
                     f"{np.mean([r['krr_all_train'] for r in rs]):.1f} | {np.mean([r[key] for r in rs]):.1f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
