"""On-device fine-tune: accuracy on real held-out speakers vs labelled prototypes, and its time and memory.

The bundle (e.g. CNN-4 trained on the synthetic-keyword coreset, exported by ``edgekws export``) runs on real
Speech Commands clips. The speaker-disjoint split of the shared subset gives a *pool* (train split: what the device
"heard") and a *held-out* set (validation + test speakers). For n = 0, 5, 10, 20 labelled prototypes per class the
head is fine-tuned with :func:`edgekws.device.finetune.finetune` (numpy, frozen embedding graph) on the bundle's
coreset + the labelled prototypes, and tested on the held-out set. Prototype choice is compared at the same label
budget (10·n clips in total, labels from the ground truth, i.e. a perfect person): stratified random n per class,
and the class-blind methods the device can actually run (random, k-center, k-medoids, most uncertain, hybrid).

Time and peak memory of one fine-tune (500 coreset + 20 labelled clips) are measured in a fresh process on one
thread, with the coreset embeddings cold (computed through the graph) and cached.

    python benchmarks/device_finetune.py --bundle B --public-key K --gsc ../shared/data/gsc-dev

Writes ``benchmarks/results/device_finetune.json`` and ``device_finetune.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _load(args):
    from edgekws.device.model import DeviceModel, open_bundle

    from edgekws.datasets import load_dataset, split_indices
    from edgekws.datasets.cache import load_waveforms

    info = open_bundle(args.bundle, args.public_key, trust_embedded_key=args.embedded_key)
    model = DeviceModel(info, fmt=args.format or "onnx", precision=args.precision or "fp32", threads=args.threads,
                        calibrate=True)
    classes = [c for c in info.classes if not c.startswith("_")]
    ds = load_dataset("gsc", args.gsc, keywords=tuple(classes))
    names = list(ds.class_names)
    y = np.array([info.classes.index(names[i]) for i in ds.labels])
    sp = split_indices(ds)
    pool, held = np.asarray(sp.train), np.concatenate([sp.val, sp.test])
    cache = args.work / f"gsc_embeddings_{info.identity}_{model.fmt}_{model.precision}.npz"
    if cache.is_file():
        Z = np.load(cache)["Z"]
    else:
        t = time.perf_counter()
        # the bundle's own front end (MFCC or speech embeddings), as `device collect` turns clips into inputs
        waves = load_waveforms(ds)
        Z = np.concatenate([model.embed(model.clip_inputs(waves[i: i + 64])) for i in range(0, len(waves), 64)])
        print(f"embedded {len(waves)} clips in {time.perf_counter() - t:.1f} s", flush=True)
        np.savez(cache, Z=Z)
    return info, model, Z, y, pool, held


def _stratified(y, pool, n, rng):
    out = []
    for c in np.unique(y[pool]):
        members = pool[y[pool] == c]
        out += list(rng.choice(members, size=min(n, len(members)), replace=False))
    return np.array(out, dtype=np.int64)


def experiment(args) -> dict:
    from edgekws.device.finetune import FinetuneConfig, finetune
    from edgekws.device.prototypes import choose

    info, model, Z, y, pool, held = _load(args)
    W0, b0 = info.head()
    classes = list(info.classes)

    def acc_head(W, b):
        return float(np.mean(np.argmax(Z[held] @ W.T + b, 1) == y[held]))

    base = acc_head(W0, b0)
    state_root = Path(tempfile.mkdtemp(prefix="ft-"))
    cfg = FinetuneConfig()
    rows = []
    from edgekws.device.finetune import coreset_embeddings

    core_dir = state_root / "core"
    coreset_embeddings(model, core_dir)  # computed once, copied into every run's state (as a device would cache)
    cached = next(core_dir.glob("coreset_emb_*.npz"))

    def run(tag, idx, seed, use_coreset=True, n=None):
        st = state_root / f"{tag}-{len(idx)}-{seed}-{int(use_coreset)}"
        st.mkdir()
        shutil.copyfile(cached, st / cached.name)
        c = FinetuneConfig(**{**cfg.__dict__, "use_coreset": use_coreset})
        rep = finetune(model, None, st, c, extra=(Z[idx], [classes[i] for i in y[idx]]) if len(idx) else None)
        from edgekws.device.model import load_version

        W, b, cls = load_version(st, rep["version"])
        assert list(cls) == classes
        a = acc_head(W, b)
        per_class = np.bincount(y[idx], minlength=len(classes)).tolist() if len(idx) else [0] * len(classes)
        rows.append({"method": tag, "labels": len(idx), "per_class": n, "seed": seed, "coreset": use_coreset,
                     "accuracy": a, "classes_covered": int(sum(1 for v in per_class if v)),
                     "seconds_train": rep["seconds_train"]})
        print(f"{tag:>12} labels={len(idx):3d} seed={seed} coreset={use_coreset}: {100 * a:.1f} %", flush=True)

    run("coreset-only", np.zeros(0, np.int64), 0)
    logits_pool = (Z[pool] @ W0.T + b0) / model.temperature  # margins on calibrated posteriors
    for n in args.per_class:
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            idx = _stratified(y, pool, n, rng)
            run("stratified", idx, seed, n=n)
            run("stratified", idx, seed, use_coreset=False, n=n)
        k = n * (len(classes))
        for method in ("random", "kcenter", "kmedoids", "uncertain", "hybrid"):
            seeds = args.seeds if method == "random" else [0]
            for seed in seeds:
                sel = choose(Z[pool], k, method, logits=logits_pool, seed=seed)
                run(method, pool[sel], seed)
    return {"base_accuracy": base, "rows": rows, "n_pool": len(pool), "n_held_out": len(held),
            "classes": classes, "config": cfg.__dict__}


_TIMING = r"""
import json, os, resource, sys, time, tracemalloc
import numpy as np
t0 = time.perf_counter()
from edgekws.device.model import DeviceModel, open_bundle, read_coreset
from edgekws.device.finetune import FinetuneConfig, finetune
from edgekws.device.store import LabelStore
bundle, pub, state, n_labels = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
info = open_bundle(bundle, pub or None, trust_embedded_key=not pub)
model = DeviceModel(info, threads=1)
t_open = time.perf_counter() - t0
rng = np.random.default_rng(0)
D = info.head()[0].shape[1]
store = LabelStore(os.path.join(state, "labels.sqlite"))
if not store.clips():
    ids = store.add_clips([{"path": f"c{i}.wav", "embedding": rng.standard_normal(D).astype(np.float32)}
                           for i in range(n_labels)])
    for i, cid in enumerate(ids):
        store.set_label(cid, info.classes[i % len(info.classes)])
tracemalloc.start()
t1 = time.perf_counter()
rep = finetune(model, store, __import__("pathlib").Path(state), FinetuneConfig())
wall = time.perf_counter() - t1
_, peak_py = tracemalloc.get_traced_memory()
print(json.dumps({"seconds_finetune": wall, "seconds_coreset_embed": rep["seconds_coreset_embed"],
                  "seconds_train": rep["seconds_train"], "seconds_open": t_open, "n_coreset": rep["n_coreset"],
                  "n_labeled": rep["n_labeled"], "peak_python_heap_mb": peak_py / 2**20,
                  "peak_rss_mb": int(dict(l.split(":", 1) for l in open("/proc/self/status"))["VmHWM"].split()[0]) / 1024}))
"""


def timing(args) -> list[dict]:
    """Per repeat, in one fresh state folder: a cold process (embeds the coreset and caches it), then a warm one."""
    out = []
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory() as st:
            for cold in (True, False):
                r = subprocess.run([sys.executable, "-c", _TIMING, str(args.bundle), str(args.public_key or ""), st,
                                    "20"],
                                   capture_output=True, text=True, env=env, check=True)
                d = json.loads(r.stdout.strip().splitlines()[-1])
                d.update(cold=cold, repeat=rep)
                out.append(d)
                print(f"finetune cold={cold}: {d['seconds_finetune']:.3f} s, peak RSS {d['peak_rss_mb']:.0f} MB",
                      flush=True)
    return out


def _ms(vals):
    if len(vals) == 1:
        return f"{100 * vals[0]:.1f}"
    return f"{100 * statistics.mean(vals):.1f} ± {100 * statistics.stdev(vals):.1f}"


def report(res: dict, times: list[dict], args) -> str:
    rows = res["rows"]
    L = ["# On-device fine-tune: accuracy vs labelled prototypes, time and memory", "",
         f"Bundle: `{args.bundle}` ({', '.join(res['classes'])}). Held-out set: {res['n_held_out']} real clips "
         f"(validation + test speakers of the shared Speech Commands subset); pool: {res['n_pool']} clips (train "
         "speakers). Labels come from the ground truth (a perfect person). Head: numpy softmax regression on the "
         f"frozen embedding graph, config `{json.dumps(res['config'])}`.", "",
         f"Bundle head before fine-tuning: **{100 * res['base_accuracy']:.1f} %**. Coreset only (fine-tuned on "
         f"the shipped coreset, no labels): {_ms([r['accuracy'] for r in rows if r['method'] == 'coreset-only'])} %.",
         "", "## Accuracy vs labelled prototypes per class (stratified: n per class, seeds "
         f"{','.join(map(str, args.seeds))})", "",
         "| labelled per class | total labels | coreset + labels | labels only |", "|---|---|---|---|",
         f"| 0 | 0 | {_ms([r['accuracy'] for r in rows if r['method'] == 'coreset-only'])} | – |"]
    for n in args.per_class:
        strat = [r for r in rows if r["method"] == "stratified" and r["per_class"] == n]
        a = [r["accuracy"] for r in strat if r["coreset"]]
        b = [r["accuracy"] for r in strat if not r["coreset"]]
        L.append(f"| {n} | {strat[0]['labels'] if strat else '–'} | {_ms(a)} | {_ms(b)} |")
    L += ["", "## Which prototypes to ask for (class-blind choice, same label budget, coreset + labels)", "",
          "| budget (labels) | " + " | ".join(["random", "kcenter", "kmedoids", "uncertain", "hybrid"]) + " |",
          "|---|---|---|---|---|---|"]
    for n in args.per_class:
        k = n * len(res["classes"])
        cells = []
        for m in ("random", "kcenter", "kmedoids", "uncertain", "hybrid"):
            accs = [r["accuracy"] for r in rows if r["method"] == m and r["labels"] == k]
            cov = [r["classes_covered"] for r in rows if r["method"] == m and r["labels"] == k]
            cells.append(f"{_ms(accs)} ({min(cov) if cov else 0}/{len(res['classes'])} cl.)" if accs else "–")
        L.append(f"| {k} | " + " | ".join(cells) + " |")
    L += ["", "(n cl. = classes with at least one labelled clip.)", "",
          "## Time and peak memory of one fine-tune (500 coreset + 20 labelled clips, one thread, fresh process)",
          "", "| coreset embeddings | fine-tune wall s | of which embedding s | head training s | "
          "peak RSS MB (process) | peak Python heap MB |", "|---|---|---|---|---|---|"]
    for cold in (True, False):
        ts = [t for t in times if t["cold"] == cold]
        if not ts:
            continue
        L.append(f"| {'computed (cold)' if cold else 'cached'} | "
                 f"{statistics.median(t['seconds_finetune'] for t in ts):.3f} | "
                 f"{statistics.median(t['seconds_coreset_embed'] for t in ts):.3f} | "
                 f"{statistics.median(t['seconds_train'] for t in ts):.3f} | "
                 f"{max(t['peak_rss_mb'] for t in ts):.0f} | {max(t['peak_python_heap_mb'] for t in ts):.1f} |")
    L += ["", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other "
          f"jobs), Python {platform.python_version()}; medians of {args.repeats} run(s)."]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--public-key", type=Path, default=None)
    ap.add_argument("--embedded-key", action="store_true", help="trust the key embedded in the bundle")
    ap.add_argument("--format", default=None, help="onnx (default) or tflite")
    ap.add_argument("--precision", default=None, help="fp32 (default) or int8")
    ap.add_argument("--gsc", type=Path, required=True)
    ap.add_argument("--per-class", default="5,10,20")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("runs/device-bench"))
    ap.add_argument("--name", default="device_finetune")
    ap.add_argument("--no-timing", action="store_true", help="skip the time/memory runs")
    args = ap.parse_args()
    args.per_class = [int(v) for v in args.per_class.split(",")]
    args.seeds = [int(v) for v in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = experiment(args)
    times = [] if args.no_timing else timing(args)
    res.update(timing=times, seconds=time.time() - t0, bundle=str(args.bundle),
               peak_rss_mb_benchmark=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    from edgekws.fileio import atomic_write_bytes, atomic_write_json

    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"{args.name}.json", res)
    atomic_write_bytes(RESULTS / f"{args.name}.md", report(res, times, args).encode())
    print(report(res, times, args))


if __name__ == "__main__":
    main()
