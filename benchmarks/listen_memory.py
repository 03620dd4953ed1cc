"""Peak RSS of `edgekws listen --wav F --json` and `edgekws device collect --wav F` against the length of F.

A sentence of the bundle's keywords (espeak-ng, silence between words, light noise) is tiled into WAV files of each
length (written block by block). Every run is a fresh process of the interpreter given with ``--python`` (e.g. a
venv with only ``pip install -e ".[device]"``, no torch) under the shared harness (`harness.measure_command`: wall
time, CPU time, peak RSS). A first short run per graph caches the softmax temperature in the state folder, as a
device does once per bundle. Also records which of typer, click, pydantic, rich, cryptography, onnxruntime,
ai_edge_litert and torch the listen path imported.

    python benchmarks/listen_memory.py --bundle B [--bundle B2] --embedded-key --python /path/to/device-venv/bin/python \
        --lengths 10,600,7200 --collect-lengths 10,600,7200

Writes ``benchmarks/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import describe_machine, measure_command

RESULTS = Path(__file__).resolve().parent / "results"
GOALS = {"tflite": 60.0, "onnx": 80.0, "collect": 150.0}

_IMPORTS = r"""
import sys
from edgekws.cli import main
try:
    main(sys.argv[1:])
finally:
    names = ("typer", "click", "pydantic", "rich", "cryptography", "onnxruntime", "ai_edge_litert", "torch")
    sys.stderr.write("IMPORTED " + ",".join(n for n in names if n in sys.modules) + "\n")
"""


def write_long_wav(path: Path, base, seconds: float, rate: int = 16000) -> Path:
    """``base`` tiled to ``seconds`` of audio, written in blocks (the benchmark itself stays small)."""
    import numpy as np
    import soundfile as sf

    n = int(seconds * rate)
    pcm = np.clip(np.rint(np.asarray(base, np.float64) * 32768), -32768, 32767).astype(np.int16)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, format="WAV", subtype="PCM_16") as out:
        done = 0
        while done < n:
            k = min(len(pcm), n - done)
            out.write(pcm[:k])
            done += k
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, action="append", required=True)
    ap.add_argument("--public-key", type=Path)
    ap.add_argument("--embedded-key", action="store_true")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the install to measure")
    ap.add_argument("--lengths", default="10,600,7200", help="listen: seconds of audio")
    ap.add_argument("--collect-lengths", default="10,600,7200", help="collect: seconds of audio ('' to skip)")
    ap.add_argument("--formats", default="onnx,tflite")
    ap.add_argument("--work", type=Path, default=Path("runs/listen-memory"))
    ap.add_argument("--name", default="listen_memory")
    args = ap.parse_args()
    from device_support import sentence

    from edgekws.device.model import open_bundle

    machine = describe_machine()
    args.work.mkdir(parents=True, exist_ok=True)
    key = ["--embedded-key"] if args.embedded_key else ["--public-key", str(args.public_key)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    exe = [args.python, "-m", "edgekws.cli"]
    lengths = [float(v) for v in args.lengths.split(",") if v]
    collect_lengths = [float(v) for v in args.collect_lengths.split(",") if v]
    rows, collect_rows = [], []
    for bundle in args.bundle:
        info = open_bundle(bundle, args.public_key, trust_embedded_key=args.embedded_key)
        words = [c for c in info.classes if not c.startswith("_")]
        base, _ = sentence(words, gap_s=1.0, lead_s=0.5, seed=0, noise_db=-50.0)
        wavs = {
            s: write_long_wav(args.work / f"{info.id}_{int(s)}s.wav", base, s)
            for s in sorted(set(lengths) | set(collect_lengths))
        }
        state = args.work / f"state-{info.id}"
        for fmt in args.formats.split(",") if lengths else []:
            if not any(k.startswith(f"{fmt}_") for k in info.manifest["graphs"].get("classifier", {})):
                rows.append({"bundle": str(bundle), "format": fmt, "skipped": f"the bundle has no {fmt} graph"})
                continue
            base_cmd = ["listen", "--bundle", str(bundle), *key, "--json", "--state", str(state), "--format", fmt]
            subprocess.run(
                [*exe, *base_cmd, "--wav", str(wavs[min(wavs)])], env=env, check=True, capture_output=True
            )  # caches the temperature
            probe = subprocess.run(
                [args.python, "-c", _IMPORTS, *base_cmd, "--wav", str(wavs[min(wavs)])],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            imported = next((ln.split(" ", 1)[1] for ln in probe.stderr.splitlines() if ln.startswith("IMPORTED")), "")
            for s in lengths:
                load = os.getloadavg()[0]
                r = measure_command([*exe, *base_cmd, "--wav", str(wavs[s])], env=env)
                if r["rc"] != 0:
                    raise SystemExit(f"listen failed: {r['stderr']}")
                n = sum(1 for ln in r["stdout"].splitlines() if ln.startswith("{"))
                row = {
                    "bundle": str(bundle),
                    "bundle_id": info.id,
                    "frontend": (info.manifest.get("frontend") or {}).get("kind", "mfcc"),
                    "format": fmt,
                    "graph": f"{fmt} {info.choose_graph(fmt)[1]}",
                    "audio_s": s,
                    "peak_rss_mb": round(r["peak_rss_mb"], 1),
                    "wall_s": round(r["wall_s"], 1),
                    "cpu_s": round(r["cpu_s"], 1),
                    "detections": n,
                    "load_average": round(load, 2),
                    "imported": imported,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        for s in collect_lengths:
            cstate = args.work / f"collect-{info.id}-{int(s)}"
            load = os.getloadavg()[0]
            r = measure_command(
                [
                    *exe,
                    "device",
                    "collect",
                    "--bundle",
                    str(bundle),
                    *key,
                    "--wav",
                    str(wavs[s]),
                    "--state",
                    str(cstate),
                    "--k",
                    "10",
                ],
                env=env,
            )
            if r["rc"] != 0:
                raise SystemExit(f"collect failed: {r['stderr']}")
            row = {
                "bundle": str(bundle),
                "bundle_id": info.id,
                "audio_s": s,
                "peak_rss_mb": round(r["peak_rss_mb"], 1),
                "wall_s": round(r["wall_s"], 1),
                "cpu_s": round(r["cpu_s"], 1),
                "load_average": round(load, 2),
                "summary": " ".join(r["stderr"].split())[-300:],
            }
            collect_rows.append(row)
            print(json.dumps(row), flush=True)
    res = {
        "machine": machine,
        "python": args.python,
        "torch_importable": subprocess.run([args.python, "-c", "import torch"], capture_output=True).returncode == 0,
        "goals_mb": GOALS,
        "listen": rows,
        "collect": collect_rows,
        "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    write(res, args.name)


def render(res: dict) -> list[str]:
    """The markdown report of a result (``--render RESULT.json`` writes it again from a saved result)."""
    machine, rows, collect_rows = res["machine"], res["listen"], res["collect"]
    L = [
        "# Peak RSS of `edgekws listen --wav --json` and `edgekws device collect --wav` by input length",
        "",
        f"Interpreter `{res['python']}` (torch importable: {res.get('torch_importable')}); "
        f"{machine['cpu']}, {machine['cores']} cores (shared), load average at start "
        f"{machine['load_average_start'][0]:.1f}; one thread; goals: listen <= {GOALS['tflite']:.0f} MB with "
        f"TFLite, <= {GOALS['onnx']:.0f} MB with ONNX Runtime, flat in the length; collect <= "
        f"{GOALS['collect']:.0f} MB.",
        "",
    ]
    if res.get("note"):
        L += [res["note"], ""]
    if rows:
        L += [
            "| bundle (front end) | graph | audio | peak RSS MB | wall s | detections | load | modules imported |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        if "skipped" in r:
            L.append(f"| {Path(r['bundle']).name} | {r['format']} | – | skipped: {r['skipped']} | | | | |")
            continue
        L.append(
            f"| {Path(r['bundle']).name} ({r['frontend']}) | {r['graph']} | {r['audio_s']:.0f} s | "
            f"{r['peak_rss_mb']:.1f} | {r['wall_s']:.1f} | {r['detections']} | {r['load_average']:.1f} | "
            f"{r['imported']} |"
        )
    if collect_rows:
        L += ["", "| collect: bundle | audio | peak RSS MB | wall s | load | result |", "|---|---|---|---|---|---|"]
        for r in collect_rows:
            L.append(
                f"| {Path(r['bundle']).name} | {r['audio_s']:.0f} s | {r['peak_rss_mb']:.1f} | {r['wall_s']:.1f} | "
                f"{r['load_average']:.1f} | {r['summary'].split(' State:')[0]} |"
            )
    return L


def write(res: dict, name: str) -> None:
    from edgekws.fileio import atomic_write_bytes, atomic_write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    L = render(res)
    atomic_write_json(RESULTS / f"{name}.json", res)
    atomic_write_bytes(RESULTS / f"{name}.md", ("\n".join(L) + "\n").encode())
    print("\n".join(L))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--render"]:  # write the markdown of a saved result again
        saved = Path(sys.argv[2])
        write(json.loads(saved.read_text()), saved.stem)
    else:
        main()
