"""Helpers shared by the benchmarks (``bench_core``, ``bench_gate``).

Processes (a throwaway Redis, one real ``celery worker`` subprocess), statistics, Redis
``INFO commandstats`` accounting and the machine/version facts every report carries.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
IGNORED_COMMANDS = {"info", "monitor", "client|list", "echo"}  # the benchmark's own probes


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


# -- processes ---------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_url() -> Iterator[tuple[str, str]]:
    url = os.environ.get("CELERY_FLOW_BENCH_REDIS_URL")
    if url:
        yield url, "CELERY_FLOW_BENCH_REDIS_URL"
        return
    from celery_flow.testing import RedisServer

    server = RedisServer().start()
    try:
        yield server.url, "throwaway redis-server (celery_flow.testing.RedisServer)"
    finally:
        server.stop()


def start_worker(
    pool: str, concurrency: int, env: dict[str, str], logfile: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.app",
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--hostname",
        f"bench-{uuid.uuid4().hex[:6]}@%h",
    ]
    with logfile.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Warm shutdown (SIGTERM); after 15 s, SIGKILL the worker's own process group."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        log("worker did not stop within 15 s; killing its process group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the worker's processes
        proc.wait(5)


# -- Redis accounting --------------------------------------------------------------------------


def command_calls(r: redis.Redis) -> Counter[str]:
    stats = r.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for k in after:
        d = after[k] - before.get(k, 0)
        if d > 0 and k not in IGNORED_COMMANDS:
            out[k] = d
    return out


# -- report ------------------------------------------------------------------------------------


def versions(r: redis.Redis) -> dict[str, str]:
    import celery
    import kombu

    import celery_flow

    return {
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": str(r.info("server")["redis_version"]),
        "celery_flow": celery_flow.__version__,
    }


def machine() -> dict[str, Any]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": cpus, "cpu": model, "platform": platform.platform()}


def cpu_probe_ms() -> float:
    """Time of a fixed pure-Python loop: a yardstick for how fast this machine is right now."""
    t0 = time.perf_counter()
    x = 0
    for i in range(2_000_000):
        x += i
    return round((time.perf_counter() - t0) * 1000, 1)


def cpu_jiffies() -> tuple[int, int]:
    """(steal, total) CPU jiffies from /proc/stat; (0, 0) where unavailable."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
        return fields[7], sum(fields[:8])
    return 0, 0


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
