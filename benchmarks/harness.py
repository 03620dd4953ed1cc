"""What every benchmark shares: one description of the machine, one way to time a call, one way to measure a
command's wall time, CPU time and peak RSS.

- :func:`describe_machine` (:mod:`edgekws.machine`, which run records use too): CPU model, cores (all and usable), memory, OS, package versions, git commit, load average
  now. Every report carries it, so numbers from a busy shared machine say so.
- :func:`latency_ms`: per-call times of ``fn(x)`` after warm-up, as :func:`percentiles`.
- :func:`measure_command`: run a command under a small wrapper process that reports its wall time, CPU time and
  peak RSS (``ru_maxrss`` of the wrapper's children: the command's own high-water mark; Linux counts the larger of it
  and the ~10 MB wrapper at fork).
- :func:`status_mb`: a ``/proc/self/status`` field (``VmHWM``, ``VmRSS``) of this process, in MB.

Used by ``bench.py`` (``edgekws bench``), ``export_bench.py`` and ``device_listen.py`` / ``listen_memory.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgekws.machine import cpu_model, describe_machine

__all__ = [
    "MEASURE_WRAPPER",
    "cpu_model",
    "describe_machine",
    "latency_ms",
    "measure_command",
    "percentiles",
    "status_mb",
]


def status_mb(key: str) -> float:
    """``VmHWM`` (peak RSS), ``VmRSS``, ... of this process in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(times_ms: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times_ms, dtype=np.float64)
    return {
        "n": int(t.size),
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
    }


def latency_ms(fn: Callable[[Any], Any], x: Any, repeats: int, warmup: int = 5) -> dict[str, float]:
    """Times of ``fn(x)`` in ms over ``repeats`` calls after ``warmup`` calls (:func:`percentiles`)."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(1000 * (time.perf_counter() - t))
    return percentiles(times)


MEASURE_WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": r.returncode, "wall_s": wall, "cpu_s": u.ru_utime + u.ru_stime,
                  "peak_rss_mb": u.ru_maxrss / 1024, "stdout": r.stdout[-200000:], "stderr": r.stderr[-2000:]}))
"""


def measure_command(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    python: str | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run ``cmd`` under :data:`MEASURE_WRAPPER` (with ``python``, default this interpreter): ``{"rc", "wall_s",
    "cpu_s", "peak_rss_mb", "stdout", "stderr"}``."""
    r = subprocess.run(
        [python or sys.executable, "-c", MEASURE_WRAPPER, *cmd],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])
