"""The browser demo in headless Chromium: per-hop processing time, page weight, first detection on a warm cache,
agreement with `edgekws listen`, and the MFCC front end in JavaScript against the waveform-in ONNX graph.

    python benchmarks/web_demo.py [--repeats 3] [--name web_demo]

Bundles (made on first use under $EDGEKWS_CACHE/test-bundles, exactly as the tests make them):
``mfcc``: CNN-4 on 40 MFCC x 48 frames (yes/no/stop + _silence_), here as a ``phone`` bundle that also carries
``frontend_mfcc.onnx``, run once with the JavaScript MFCC and once with the graph; ``speech-embedding``: the
rpi-style bundle on the frozen speech front end (mel graph + embedding graph + se-head, int8 head).

Per case, in one Chromium (Debian's, driven by playwright), over HTTPS with a self-signed certificate (brotli, as a
phone gets it), onnxruntime-web on one thread:

- cold visit: bytes transferred (encoded body sizes) for the page and its runtime vs the bundle's files;
- a 16 kHz WAV through the page's file input, as fast as it goes (reaches the model sample for sample):
  processing time of every hop (front end since the last window + classifier + rule) and of the classifier alone,
  and the detections against `listen --wav --json` (same words, time differences, score differences);
- the same WAV on a fake microphone (`--use-file-for-fake-audio-capture`, resampled by Chromium and the page):
  hop times in real time and the detections against listen's;
- warm cache: a second visit with the microphone started at once and a keyword 0.3 s into the audio: time from
  navigation start to the first detection (also to "ready" and to "listening");
- for scale, the same hops in Python (`Detector`, ONNX Runtime native, one thread).

Writes ``benchmarks/results/<name>.json`` and ``<name>.md`` with the machine and its load average.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT / "tests"))


def _q(values, p):
    v = sorted(values)
    return round(v[min(len(v) - 1, int(p * len(v)))], 3) if v else None


def _stats(values):
    return {"n": len(values), "median": _q(values, 0.5), "p90": _q(values, 0.9), "p99": _q(values, 0.99),
            "mean": round(statistics.fmean(values), 3) if values else None}


def page_weight(web: Path) -> dict[str, Any]:
    """Bytes the page itself costs, apart from the bundle: its own files (raw and gzip) and onnxruntime-web (raw,
    brotli, gzip)."""
    from edgekws.server.webdemo import page_assets, runtime_assets

    own = {}
    for name in ["index.html", "sw.js", *page_assets(web)]:
        raw = (web / name).read_bytes()
        own[name] = {"size": len(raw), "gz": len(gzip.compress(raw, 9, mtime=0))}
    ort = runtime_assets(web)
    total = {k: sum(v[k] for v in own.values()) for k in ("size", "gz")}
    total_ort = {k: sum(v[k] for v in ort["files"].values()) for k in ("size", "br", "gz")}
    return {"page": own, "runtime": ort, "total": {
        "raw": total["size"] + total_ort["size"],
        "compressed": total["gz"] + total_ort["br"],  # what a browser accepting br (all, over HTTPS) downloads
        "gzip_only": total["gz"] + total_ort["gz"]}}


def _native_hops(bundle: Path, pub: Path, wav: Path, precision: str) -> dict:
    """Per-hop time of the device runtime (Python, ONNX Runtime native, one thread) on the same WAV."""
    from edgekws.audio import load_audio
    from edgekws.device.model import DeviceModel, open_bundle
    from edgekws.device.runtime import Detector

    info = open_bundle(bundle, pub)
    det = Detector(DeviceModel(info, fmt="onnx", precision=precision, calibrate=True), info.feature_config)
    y = load_audio(wav, sample_rate=16000)
    hops, block = [], 1280 if info.manifest.get("frontend") else 1600
    det.feed(y[:block])  # warm-up
    det.reset()
    for i in range(0, len(y), block):
        t = time.perf_counter()
        n = len(det.feed(y[i: i + block]))
        dt = (time.perf_counter() - t) * 1000
        if n:
            hops.append(dt / n)
    return _stats(hops)


def _phone_mfcc_bundle(tmp: Path) -> Path:
    """The MFCC keyword fixture re-signed as a phone bundle carrying the waveform-in graph."""
    from device_support import keyword_bundle

    from edgekws.bundle import load_private_key, write_bundle
    from edgekws.export.mfcc_graph import MFCC_GRAPH_FILE, mfcc_graph_entry, mfcc_graph_parity, write_mfcc_graph
    from edgekws.features import FeatureConfig

    src = keyword_bundle()
    m = json.loads((src / "manifest.json").read_text())
    fc = FeatureConfig.from_dict(m["feature_config"])
    g = write_mfcc_graph(fc, tmp / MFCC_GRAPH_FILE)
    files = {k: src / k for k in m["files"]} | {MFCC_GRAPH_FILE: g}
    return write_bundle(tmp / "phone-mfcc", files, target="phone", classes=m["classes"], feature_config=fc,
                        model=m["model"], graphs=m["graphs"],
                        private_key=load_private_key(src.parent / "keys" / "signing.key"),
                        extra={"mfcc_graph": mfcc_graph_entry(mfcc_graph_parity(g, fc))})


def _js_mfcc_parity(wav: Path, fc_dict: dict, tmp: Path) -> dict:
    """JavaScript MFCC (mfcc.js under node) and the waveform graph against numpy on the same audio."""
    import onnxruntime as ort
    from web_support import read_f32, run_node, web_module, write_f32

    from edgekws.audio import load_audio
    from edgekws.export.mfcc_graph import build_mfcc_graph, mfcc_graph_parity
    from edgekws.features import FeatureConfig, mfcc

    fc = FeatureConfig.from_dict(fc_dict)
    y = load_audio(wav, sample_rate=16000)
    write_f32(tmp / "y.f32", y)
    out = run_node(f"""
import {{ FeatureConfig, mfccFrames }} from "{web_module('mfcc.js')}";
import {{ readFileSync, writeFileSync }} from "node:fs";
const b = readFileSync("{tmp / 'y.f32'}");
const y = new Float32Array(b.buffer, b.byteOffset, b.length / 4);
const cfg = new FeatureConfig({json.dumps(fc_dict)});
mfccFrames(y.subarray(0, 16000), cfg);
const t = performance.now();
const fr = mfccFrames(y, cfg);
const ms = performance.now() - t;
const flat = new Float32Array(fr.length * cfg.n_mfcc); fr.forEach((f, i) => flat.set(f, i * cfg.n_mfcc));
writeFileSync("{tmp / 'js.f32'}", Buffer.from(flat.buffer));
console.log(JSON.stringify({{ ms_per_frame: ms / fr.length }}));
""")
    js = read_f32(tmp / "js.f32").reshape(-1, fc.n_mfcc).T
    raw = mfcc(y, fc, normalize_output=False)
    (tmp / "g.onnx").write_bytes(build_mfcc_graph(fc))
    sess = ort.InferenceSession(str(tmp / "g.onnx"), providers=["CPUExecutionProvider"])
    g = sess.run(["mfcc_raw"], {"audio": y[None]})[0][0, 0]
    return {"js_max_abs_diff_raw": float(np.abs(js - raw).max()), "graph_max_abs_diff_raw": float(np.abs(g - raw).max()),
            "raw_range": float(np.abs(raw).max()), "node_ms_per_frame": json.loads(out)["ms_per_frame"],
            "graph_parity_signals": mfcc_graph_parity(tmp / "g.onnx", fc)}


def _recorder(seen: list):
    """A requestfinished handler: (url, encoded body bytes, served by the service worker)."""

    def on(r):
        resp = r.response()
        seen.append((r.url, r.sizes()["responseBodySize"], bool(resp and resp.from_service_worker),
                     r.timing["startTime"]))

    return on


def _transfer(seen, before_ms=None):
    """Bytes of the requests started before ``before_ms`` (epoch ms; the page fetches its files again into the
    offline cache once it is ready, which is not part of what it costs to open)."""
    net = [(u, s) for u, s, sw, t0 in seen if not sw and (before_ms is None or t0 <= before_ms)]
    page = sum(s for u, s in net if "/demo/b/" not in u)
    bundle = sum(s for u, s in net if "/demo/b/" in u)
    return {"page_bytes": page, "bundle_bytes": bundle,
            "files": sorted({(u.split("/demo/", 1)[-1].split("?")[0], s) for u, s in net})}


def run_case(p, name: str, bundle: Path, pub: Path, features: str, wavs: dict, ca: tuple, repeats: int) -> dict:
    from web_support import listen_json, match_detections, state, wait_for

    from edgekws.server.webdemo import DemoConfig, DemoServer, LocalBundleSource, create_demo_app, demo_config

    src = LocalBundleSource(bundle, pub)
    app = create_demo_app(src, DemoConfig(features=features))
    plan = demo_config(app, src.ref.target)["plan"]
    out = {"case": name, "bundle": str(bundle), "features": features, "plan": {k: plan[k] for k in
                                                                               ("classifier", "temperature")}}
    ref = listen_json(bundle, wavs["words"], pub, plan["precision"])
    out["listen"] = ref
    out["native_hops_ms"] = _native_hops(bundle, pub, wavs["words"], plan["precision"])
    with DemoServer(app, tls=ca) as srv:
        url = f"{srv.url}/demo/{src.ref.target}?threads=1"
        # cold visit, then the file runs (reloads come from the warm cache)
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                              args=["--no-sandbox", "--ignore-certificate-errors", "--renderer-process-limit=2"])
        ctx = b.new_context(service_workers="block")  # every byte of the cold visit goes through the page
        page = ctx.new_page()
        seen = []
        page.on("requestfinished", _recorder(seen))
        page.goto(url)
        st = wait_for(page, lambda s: s["phase"] == "ready" and s.get("cached"), 120, "the cold visit")
        ready_epoch = st["timeline"]["opened"] + st["timeline"]["ready"]
        out["cold_visit"] = _transfer(seen, ready_epoch) | {"ready_ms": round(st["timeline"]["ready"], 1),
                                               "signature": st["signature"]["status"]}
        file_runs = []
        for r in range(repeats):
            if r:
                page.reload()
                wait_for(page, lambda s: s["phase"] == "ready", 120, "the reload")
            page.set_input_files("#wav", str(wavs["words"]))
            st = wait_for(page, lambda s: s.get("fileDone"), 300, "the file")
            file_runs.append(st)
        # two onnxruntime-web threads (the page is cross-origin isolated, so WebAssembly threads are allowed)
        page.goto(url.replace("threads=1", "threads=2"))
        wait_for(page, lambda s: s["phase"] == "ready", 120, "the two-thread page")
        page.set_input_files("#wav", str(wavs["words"]))
        st2 = wait_for(page, lambda s: s.get("fileDone"), 300, "the file, two threads")
        b.close()
        f0 = file_runs[0]
        hops = [h for s in file_runs for h in s["hopMs"]]
        cls = [h for s in file_runs for h in s["hopClassifierMs"]]
        feats = [a - c for s in file_runs for a, c in zip(s["hopMs"], s["hopClassifierMs"])]
        same_words = [d["keyword"] for d in f0["detections"]] == [d["keyword"] for d in ref]
        out["file"] = {"hop_ms": _stats(hops), "classifier_ms": _stats(cls), "features_ms": _stats(feats),
                       "detections": f0["detections"], "same_words_as_listen": same_words,
                       "max_time_diff_s": max((abs(a["time"] - b_["time"]) for a, b_ in zip(f0["detections"], ref)),
                                              default=None) if same_words else None,
                       "max_score_diff": max((abs(a["score"] - b_["score"]) for a, b_ in
                                              zip(f0["detections"], ref)), default=None) if same_words else None,
                       "threads": f0["threads"], "two_threads": {"threads": st2["threads"],
                                                                 "hop_ms": _stats(st2["hopMs"]),
                                                                 "same_words_and_times": [
                                                                     (d["keyword"], d["time"]) for d in
                                                                     st2["detections"]] == [
                                                                     (d["keyword"], d["time"]) for d in
                                                                     f0["detections"]]}}
        # the fake microphone: the words, in real time
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--no-sandbox", "--ignore-certificate-errors", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
            f"--use-file-for-fake-audio-capture={wavs['words']}%noloop"])
        page = b.new_page()
        page.goto(url + "&autostart=1")
        wait_for(page, lambda s: s["phase"] == "listening", 120, "the microphone")
        st = wait_for(page, lambda s: s["processedSeconds"] >= wavs["words_seconds"] - 0.5,
                      wavs["words_seconds"] + 120, "the words")
        time.sleep(0.5)
        st = state(page)
        b.close()
        dets = [d for d in st["detections"] if d["time"] <= wavs["words_seconds"]]
        try:
            match_detections(dets, ref, 0.3)
            agree = True
        except AssertionError:
            agree = False
        out["microphone"] = {"rate": st["source"]["rate"], "hop_ms": _stats(st["hopMs"]), "detections": dets,
                             "matches_listen_within_0.3s": agree,
                             "time_diffs_s": [round(a["time"] - b_["time"], 3) for a, b_ in zip(dets, ref)]}
        # warm cache: first detection after the page opens, the keyword 0.3 s into the audio
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--no-sandbox", "--ignore-certificate-errors", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
            f"--use-file-for-fake-audio-capture={wavs['first']}%noloop"])
        ctx = b.new_context()
        page = ctx.new_page()
        page.goto(url)
        wait_for(page, lambda s: s["phase"] == "ready" and s.get("cached"), 120, "the first visit")
        wait_for(page, lambda s: page.evaluate("() => !!navigator.serviceWorker.controller"), 60, "the worker")
        page.close()
        firsts = []
        for _ in range(repeats):
            page = ctx.new_page()
            seen = []
            page.on("requestfinished", _recorder(seen))
            page.goto(url + "&autostart=1")
            st = wait_for(page, lambda s: s["timeline"]["firstDetection"] is not None or s["phase"] in
                          ("refused", "error"), 60, "a detection")
            tl = st["timeline"]
            firsts.append({"first_detection_ms": round(tl["firstDetection"], 1), "ready_ms": round(tl["ready"], 1),
                           "listening_ms": round(tl["listening"], 1), "keyword": st["detections"][0]["keyword"],
                           "at_audio_s": st["detections"][0]["time"],
                           "network_bytes": sum(s for _, s, sw, _ in seen if not sw)})
            page.close()
        b.close()
        out["warm_first_detection"] = {"runs": firsts,
                                       "median_ms": statistics.median(f["first_detection_ms"] for f in firsts)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="web_demo")
    args = ap.parse_args()

    import os

    os.environ.setdefault("EDGEKWS_OFFLINE", "1")
    from device_support import bundle_public_key, keyword_bundle, sentence, speak
    from playwright.sync_api import sync_playwright
    from web_support import se_keyword_bundle

    from conftest import write_wav
    from edgekws.machine import describe_machine
    from edgekws.server.tls import ensure_local_tls
    from edgekws.server.webdemo import find_web_dir

    machine = describe_machine()
    machine["chromium"] = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True,
                                         text=True).stdout.strip()
    machine["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="edgekws-webbench-"))
    y, _ = sentence(["yes", "no", "stop", "yes", "stop", "no"], gap_s=1.2)
    y = np.concatenate([y, np.zeros(24000, np.float32)])
    words = write_wav(tmp / "words.wav", y)
    first = np.concatenate([np.zeros(4800, np.float32), speak("yes"), np.zeros(48000, np.float32)])
    wavs = {"words": words, "words_seconds": len(y) / 16000, "first": write_wav(tmp / "first.wav", first)}
    tls = ensure_local_tls([], tmp / "tls")
    ca = (str(tls.cert), str(tls.key))
    mfcc_bundle = _phone_mfcc_bundle(tmp)
    se = se_keyword_bundle()
    cases = [("mfcc, MFCC in JavaScript", mfcc_bundle, bundle_public_key(keyword_bundle()), "js"),
             ("mfcc, waveform-in graph", mfcc_bundle, bundle_public_key(keyword_bundle()), "graph"),
             ("speech-embedding", se, bundle_public_key(se), "js")]
    results = []
    with sync_playwright() as p:
        for name, bundle, pub, features in cases:
            print(f"{name} ...", flush=True)
            results.append(run_case(p, name, bundle, pub, features, wavs, ca, args.repeats))
            print(json.dumps({k: results[-1][k] for k in ("file", "warm_first_detection")}, default=str)[:600],
                  flush=True)
    web = find_web_dir()
    weight = page_weight(web)
    fc = json.loads((mfcc_bundle / "manifest.json").read_text())["feature_config"]
    parity = _js_mfcc_parity(words, fc, tmp)
    machine["load_average_end"] = list(os.getloadavg())
    report = {"machine": machine, "page_weight": weight, "mfcc_parity": parity, "cases": results,
              "wavs": {"words": "yes no stop yes stop no (espeak-ng, 1.2 s gaps), 12.4 s",
                       "first": "yes at 0.3 s, then 3 s of silence"}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(report) + "\n")
    print(markdown(report))


def markdown(r: dict) -> str:
    m = r["machine"]
    w = r["page_weight"]
    lines = [
        "# The bundle in the browser (`benchmarks/web_demo.py`)",
        "",
        f"{m.get('cpu', '')}, {m.get('cores', '')} cores (shared), load average {m['load_average_start']} at the "
        f"start, {m['load_average_end']} at the end; {m['chromium']} headless, onnxruntime-web "
        f"{w['runtime']['version']} (WebAssembly, one thread), node {m['node']}. Compare rows of one run.",
        "",
        "| case | per hop, file (median / p90 / p99 ms) | features / classifier (median ms) | per hop, 2 threads "
        "(median / p90 ms) | per hop, microphone (median / p90 ms) | native Python per hop (median ms) | page = "
        "listen (file) | page = listen (microphone, 0.3 s) | first detection, warm (median ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        f, mic = c["file"], c["microphone"]
        same = ("yes, Δt ≤ " + f"{f['max_time_diff_s']:.3f} s, Δscore ≤ {f['max_score_diff']:.1e}"
                if f["same_words_as_listen"] else "no")
        lines.append(
            f"| {c['case']} | {f['hop_ms']['median']} / {f['hop_ms']['p90']} / {f['hop_ms']['p99']} | "
            f"{f['features_ms']['median']} / {f['classifier_ms']['median']} | "
            f"{f['two_threads']['hop_ms']['median']} / {f['two_threads']['hop_ms']['p90']} | {mic['hop_ms']['median']} / "
            f"{mic['hop_ms']['p90']} | {c['native_hops_ms']['median']} | {same} ({len(c['listen'])} words) | "
            f"{'yes' if mic['matches_listen_within_0.3s'] else 'no'} (Δt {mic['time_diffs_s']}) | "
            f"{c['warm_first_detection']['median_ms']} |")
    tot = w["total"]
    lines += [
        "",
        f"Page weight beyond the bundle's files: {tot['compressed'] / 1e6:.2f} MB transferred with brotli "
        f"({tot['gzip_only'] / 1e6:.2f} MB gzip only, {tot['raw'] / 1e6:.2f} MB uncompressed); measured on the cold "
        "visits: " + "; ".join(f"{c['case']}: page {c['cold_visit']['page_bytes'] / 1e6:.2f} MB, bundle files "
                               f"{c['cold_visit']['bundle_bytes'] / 1e6:.2f} MB" for c in r["cases"]) + ".",
        "",
        "First detection on a warm cache (navigation start to the detection, the keyword 0.3 s into the audio): "
        + "; ".join(f"{c['case']}: " + ", ".join(f"{x['first_detection_ms']:.0f} ms (ready {x['ready_ms']:.0f}, "
                                                  f"listening {x['listening_ms']:.0f}, {x['network_bytes']} B from "
                                                  "the network)" for x in c["warm_first_detection"]["runs"])
                    for c in r["cases"]) + ".",
        "",
        f"MFCC parity against numpy on the words WAV (raw MFCC, range ±{r['mfcc_parity']['raw_range']:.0f}): "
        f"JavaScript max |Δ| {r['mfcc_parity']['js_max_abs_diff_raw']:.2g}, waveform graph "
        f"{r['mfcc_parity']['graph_max_abs_diff_raw']:.2g} (on its test signals: normalised "
        f"{r['mfcc_parity']['graph_parity_signals']['max_abs_diff']:.2g}, raw "
        f"{r['mfcc_parity']['graph_parity_signals']['max_abs_diff_raw']:.2g}).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
