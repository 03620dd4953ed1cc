"""`edgekws listen --wav` on a generated sentence: detections vs where the words are, speed, and peak RSS.

A sentence of the bundle's keywords (espeak-ng, one clean voice, silence between words) is written as a WAV and run
through ``edgekws listen --json`` in a fresh process per graph (ONNX fp32/int8, TFLite fp32/int8 when the bundle
has them), as fast as possible, one thread, under the shared harness (``harness.measure_command``: peak RSS is the
child's ``ru_maxrss``); "runtime only" is the same ``Spotter`` driven from Python without the CLI.

    python benchmarks/device_listen.py --bundle B --public-key K

Writes ``benchmarks/results/device_listen.json`` and ``device_listen.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import describe_machine, measure_command

_RUNTIME_ONLY = r"""
import json, sys, time
t0 = time.perf_counter()
from edgekws.device import Spotter
from edgekws.device.stream import WavSource
# the temperature was cached in the state folder by the CLI runs, as on a device
spotter = Spotter.open(sys.argv[1], public_key=sys.argv[2], fmt=sys.argv[4], precision=sys.argv[5], threads=1,
                       state=sys.argv[6], local=True)
t1 = time.perf_counter()
ev = [e.to_dict() for e in spotter.run(WavSource(sys.argv[3]))]
hwm = int(dict(l.split(":", 1) for l in open("/proc/self/status"))["VmHWM"].split()[0]) / 1024
print(json.dumps({"events": ev, "start_s": t1 - t0, "process_s": time.perf_counter() - t1, "peak_rss_mb": hwm}))
"""


def _score(events, spans):
    """Match each word to the first detection whose window holds its onset."""
    used, hits, offsets = set(), 0, []
    for w, on, off in spans:
        for i, e in enumerate(events):
            if i in used or e["keyword"] != w:
                continue
            if e["start"] <= on + 0.05 and e["time"] >= on and e["time"] <= off + 1.0:
                used.add(i)
                hits += 1
                offsets.append(e["time"] - off)
                break
    wrong = [e for i, e in enumerate(events) if i not in used]
    return {
        "words": len(spans),
        "hits": hits,
        "false_alarms": len(wrong),
        "latency_after_word_end_s": offsets,
        "false": wrong,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--public-key", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("runs/device-bench"))
    ap.add_argument("--gap", type=float, default=1.0)
    ap.add_argument("--name", default="device_listen")
    args = ap.parse_args()
    from device_support import sentence

    from edgekws.audio import save_wav
    from edgekws.device.model import open_bundle

    info = open_bundle(args.bundle, args.public_key)
    words = [c for c in info.classes if not c.startswith("_")]
    y, spans = sentence(words, gap_s=args.gap, lead_s=1.0, seed=0)
    args.work.mkdir(parents=True, exist_ok=True)
    wav = args.work / "sentence.wav"
    save_wav(wav, y, 16000)
    audio_s = len(y) / 16000
    env = dict(os.environ, OMP_NUM_THREADS="1")
    exe = str(Path(sys.executable).with_name("edgekws"))
    graphs = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]
    rows = []
    for fmt, prec in graphs:
        if f"{fmt}_{prec}" not in info.manifest["graphs"].get("classifier", {}):
            continue
        cmd = [
            exe,
            "listen",
            "--bundle",
            str(args.bundle),
            "--public-key",
            str(args.public_key),
            "--wav",
            str(wav),
            "--json",
            "--state",
            str(args.work / "listen-state"),
            "--format",
            fmt,
            "--precision",
            prec,
            "--threads",
            "1",
        ]
        # the first run fits the softmax temperature on the coreset and caches it in the state directory, as a
        # device does once per bundle; the measured run is the second
        subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        r = measure_command(cmd, env=env)
        if r["rc"] != 0:
            raise SystemExit(f"listen failed: {r['stderr']}")
        events = [json.loads(line) for line in r["stdout"].splitlines() if line.startswith("{")]
        rt = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _RUNTIME_ONLY,
                    str(args.bundle),
                    str(args.public_key),
                    str(wav),
                    fmt,
                    prec,
                    str(args.work / "listen-state"),
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )
        sc = _score(events, spans)
        rows.append(
            {
                "format": fmt,
                "precision": prec,
                "cli_wall_s": r["wall_s"],
                "cli_peak_rss_mb": r["peak_rss_mb"],
                "runtime_peak_rss_mb": rt["peak_rss_mb"],
                "runtime_start_s": rt["start_s"],
                "runtime_process_s": rt["process_s"],
                "real_time_factor": rt["process_s"] / audio_s,
                "events": events,
                **sc,
            }
        )
        print(
            f"{fmt} {prec}: {sc['hits']}/{sc['words']} words, {sc['false_alarms']} false, CLI peak RSS "
            f"{r['peak_rss_mb']:.0f} MB, runtime {rt['peak_rss_mb']:.0f} MB, RTF {rt['process_s'] / audio_s:.3f}",
            flush=True,
        )
    res = {
        "machine": describe_machine(),
        "bundle": str(args.bundle),
        "words": words,
        "spans": spans,
        "audio_seconds": audio_s,
        "rows": rows,
    }
    L = [
        "# `edgekws listen --wav` on a generated sentence",
        "",
        f"Bundle `{args.bundle}`; sentence: {' '.join(words)} (espeak-ng en-us, {args.gap} s of silence between "
        f"words, {audio_s:.1f} s). Hop 100 ms, 5-hop smoothing, threshold 0.6, refractory 1 s, level gate 10 dB, "
        "softmax temperature fitted on the bundle's coreset, one thread, as fast as possible.",
        "",
        "| graph | words found | false alarms | CLI peak RSS MB | runtime-only peak RSS MB | real-time factor "
        "(processing / audio) | CLI wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(
            f"| {r['format']} {r['precision']} | {r['hits']}/{r['words']} | {r['false_alarms']} | "
            f"{r['cli_peak_rss_mb']:.0f} | {r['runtime_peak_rss_mb']:.0f} | {r['real_time_factor']:.3f} | "
            f"{r['cli_wall_s']:.1f} |"
        )
    if rows:
        L += ["", f"Detections ({rows[0]['format']} {rows[0]['precision']}), JSON lines as printed:", "", "```"]
        L += [json.dumps(e) for e in rows[0]["events"]]
        L += [
            "```",
            "",
            "Word positions (onset–offset, s): " + ", ".join(f"{w} {on:.2f}–{off:.2f}" for w, on, off in spans),
        ]
    m = res["machine"]
    L += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared), load average at start "
        f"{m['load_average_start'][0]:.1f}, Python {m['versions']['python']}; run at {m['started_utc']} UTC.",
    ]
    from edgekws.fileio import atomic_write_bytes, atomic_write_json

    atomic_write_json(RESULTS / f"{args.name}.json", res)
    atomic_write_bytes(RESULTS / f"{args.name}.md", ("\n".join(L) + "\n").encode())
    print("\n".join(L))


if __name__ == "__main__":
    main()
