"""Registry under load: concurrent bundle downloads and channel polls against `edgekws server serve` on loopback.

    python benchmarks/registry_load.py [--concurrency 50] [--rounds 3] [--sizes-kb 2400,6200]

Starts the registry as its own process on a free 127.0.0.1 port (nothing else is ever contacted), publishes one
signed bundle per size, then for each scenario runs ``rounds`` rounds of ``concurrency`` simultaneous requests
(threads released together by a barrier). Every download is checked against the server's sha256 header and its
length; any error, short read or mismatch counts as a failure. The run is bounded: a fixed number of requests,
each with a timeout, and the server is stopped at the end.

Sizes: 2,400 KB is a real `rpi` export without a coreset (fp32 + int8 ONNX and TFLite graphs of CNN-4); 6,200 KB
adds a 10-class, 50-per-class coreset (500 x 40 x 48 float32). The bundles here hold tiny graphs plus padding of
those sizes: the server neither parses nor cares what the bytes are after verifying them.

Writes ``benchmarks/results/registry_load.json`` and ``registry_load.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
TOKEN = "benchmark-token-0123456789abcdef"


def _bundle(out: Path, key: Path, size_kb: int, seed: int) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from ship_support import tiny_bundle  # small real ONNX graphs, signed

    base = tiny_bundle(out.with_name(out.name + "-probe"), key, head_seed=seed)
    have = sum(p.stat().st_size for p in base.iterdir())
    return tiny_bundle(out, key, head_seed=seed, padding_bytes=max(0, size_kb * 1024 - have))


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _one(url: str, barrier: threading.Barrier, expect: dict | None, timeout: float) -> dict:
    barrier.wait(timeout=60)
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            first = resp.read(1)
            ttfb = time.perf_counter() - t0
            h = hashlib.sha256(first)
            n = len(first)
            while True:
                block = resp.read(256 * 1024)
                if not block:
                    break
                h.update(block)
                n += len(block)
            digest = resp.headers.get("X-Content-SHA256")
            status = resp.status
        dt = time.perf_counter() - t0
        if expect is not None and (n != expect["size"] or h.hexdigest() != expect["sha256"] or digest != expect["sha256"]):
            return {"ok": False, "error": f"mismatch: {n} bytes, sha {h.hexdigest()[:12]}", "seconds": dt}
        return {"ok": status == 200, "seconds": dt, "ttfb": ttfb, "bytes": n, "error": None if status == 200
                else f"status {status}"}
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}


def _scenario(name: str, url: str, expect: dict | None, concurrency: int, rounds: int, timeout: float) -> dict:
    results: list[dict] = []
    wall = 0.0
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in range(rounds):
            barrier = threading.Barrier(concurrency)
            t0 = time.perf_counter()
            futs = [pool.submit(_one, url, barrier, expect, timeout) for _ in range(concurrency)]
            results += [f.result() for f in futs]
            wall += time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    lat = [1000 * r["seconds"] for r in ok]
    ttfb = [1000 * r["ttfb"] for r in ok]
    total_bytes = sum(r.get("bytes", 0) for r in ok)
    errors = sorted({r["error"] for r in results if not r["ok"]})
    return {
        "scenario": name, "requests": len(results), "failures": len(results) - len(ok), "errors": errors[:5],
        "concurrency": concurrency, "rounds": rounds,
        "latency_ms": {"p50": _pct(lat, 0.5), "p90": _pct(lat, 0.9), "p99": _pct(lat, 0.99), "max": max(lat or [0]),
                       "mean": statistics.fmean(lat) if lat else float("nan")},
        "ttfb_ms": {"p50": _pct(ttfb, 0.5), "p99": _pct(ttfb, 0.99)},
        "wall_s": wall, "requests_per_s": len(results) / wall if wall else 0.0,
        "throughput_MB_s": total_bytes / wall / 1e6 if wall else 0.0,
        "bytes_per_request": (expect or {}).get("size"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes-kb", default="2400,6200")
    ap.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not 1 <= args.concurrency <= 200 or not 1 <= args.rounds <= 20:
        ap.error("--concurrency must be 1..200 and --rounds 1..20 (a bounded test)")
    sizes = [int(s) for s in args.sizes_kb.split(",") if s.strip()]

    from edgekws.bundle import generate_keypair
    from edgekws.server.registry import publish

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgekws-load-") as tmp:
        tmp = Path(tmp)
        priv, pub = generate_keypair(tmp / "keys")
        (tmp / "token").write_text(TOKEN)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        server = subprocess.Popen(
            [sys.executable, "-m", "edgekws.cli", "server", "serve", "--root", str(tmp / "registry"), "--host",
             "127.0.0.1", "--port", "0", "--token-file", str(tmp / "token"), "--trusted-key", str(pub)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            url = server.stdout.readline().strip()
            if not url.startswith("http://127.0.0.1:"):
                raise SystemExit(f"server did not start: {server.stderr.read()}")
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"{url}/healthz", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.1)
            scenarios = []
            published = []
            for i, kb in enumerate(sizes):
                b = _bundle(tmp / f"bundle{i}", priv, kb, seed=i)
                t0 = time.perf_counter()
                info = publish(b, url, "stable" if i == 0 else "beta", TOKEN)
                published.append({"size_kb": kb, "bytes": info["size"], "publish_s": time.perf_counter() - t0})
                scenarios.append(_scenario(f"download {info['size'] / 1e6:.2f} MB bundle", f"{url}{info['url']}",
                                           {"size": info["size"], "sha256": info["sha256"]}, args.concurrency,
                                           args.rounds, args.timeout))
            scenarios.append(_scenario("poll channel (GET /v1/targets/rpi/channels/stable)",
                                       f"{url}/v1/targets/rpi/channels/stable", None, args.concurrency,
                                       args.rounds, args.timeout))
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    import fastapi
    import uvicorn

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(), "fastapi": fastapi.__version__,
                    "uvicorn": uvicorn.__version__, "note": "server and clients share this machine; loopback only",
                    "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
        "published": published, "scenarios": scenarios,
        "total_requests": sum(s["requests"] for s in scenarios),
        "total_failures": sum(s["failures"] for s in scenarios),
    }
    from edgekws.fileio import atomic_write_bytes

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "registry_load.json", (json.dumps(report, indent=2) + "\n").encode())
    lines = [
        "# Registry load: concurrent downloads on loopback",
        "",
        (f"`edgekws server serve` (FastAPI {fastapi.__version__}, uvicorn {uvicorn.__version__}, one process) and "
         f"{args.concurrency} client threads on the same {os.cpu_count()}-core machine ({platform.machine()}, "
         f"Python {platform.python_version()}); {args.rounds} rounds of {args.concurrency} simultaneous requests per "
         "scenario. Every download is checked (length + sha256 against `X-Content-SHA256`). Latency = request to "
         "last byte. The machine is shared: 1-minute load average "
         f"{report['machine']['loadavg_1min_before_after'][0]:.1f} before and "
         f"{report['machine']['loadavg_1min_before_after'][1]:.1f} after the run (2 = both cores busy)."),
        "",
        "| scenario | requests | failures | p50 ms | p90 ms | p99 ms | max ms | TTFB p50 ms | req/s | MB/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        la = s["latency_ms"]
        lines.append(f"| {s['scenario']} | {s['requests']} | {s['failures']} | {la['p50']:.1f} | {la['p90']:.1f} | "
                     f"{la['p99']:.1f} | {la['max']:.1f} | {s['ttfb_ms']['p50']:.1f} | {s['requests_per_s']:.1f} | "
                     f"{s['throughput_MB_s']:.1f} |")
    lines += ["", "Publish (upload + signature and hash verification + store): "
              + ", ".join(f"{p['bytes'] / 1e6:.2f} MB in {1000 * p['publish_s']:.0f} ms" for p in published), ""]
    atomic_write_bytes(args.out / "registry_load.md", ("\n".join(lines) + "\n").encode())
    sys.stdout.write("\n".join(lines) + "\n")
    if report["total_failures"]:
        raise SystemExit(f"{report['total_failures']} request(s) failed: "
                         f"{[e for s in scenarios for e in s['errors']]}")


if __name__ == "__main__":
    main()
