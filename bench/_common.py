"""Helpers shared by the benchmarks (``bench_core``, ``bench_gate``, ``bench_map``, ``bench_waits``,
``bench_cron``).

Processes (a throwaway Redis, one real ``celery worker`` subprocess and the session around it),
statistics, Redis ``INFO commandstats`` accounting and MONITOR taps, the machine/version facts
every report carries, and the pieces of the reports (JSON and markdown) they share.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Self

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


def alternate(labels: Sequence[str], rnd: int) -> Sequence[str]:
    """The order of round ``rnd``: ``labels``, reversed every other round."""
    return labels if rnd % 2 == 0 else labels[::-1]


def timed_batch(
    start: Callable[[], list[Any]], wait: Callable[[list[Any]], object]
) -> tuple[float, float]:
    """Start a batch, then wait for all of it: (seconds in all, seconds starting it)."""
    t0 = time.perf_counter()
    items = start()
    t_enq = time.perf_counter()
    wait(items)
    return time.perf_counter() - t0, t_enq - t0


def batch_row(n: int, elapsed: float, enqueue: float) -> dict[str, float]:
    return {
        "seconds": round(elapsed, 3),
        "runs_per_s": round(n / elapsed, 1),
        "enqueue_seconds": round(enqueue, 3),
    }


def median_rounds(per_round: Mapping[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Each label's median runs/s over its rounds, with the rounds."""
    return {
        label: {"runs_per_s": statistics.median(r["runs_per_s"] for r in rows), "rounds": rows}
        for label, rows in per_round.items()
    }


# -- command line ------------------------------------------------------------------------------


def arg_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser, with the worker's ``--pool`` and ``--concurrency``."""
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--pool",
        default="prefork",
        choices=["prefork", "threads", "solo"],
        help="worker pool (default: prefork)",
    )
    p.add_argument("--concurrency", type=int, default=4, help="worker concurrency (default: 4)")
    return p


def add_run_args(p: argparse.ArgumentParser) -> None:
    """``--quick`` and ``--out`` (after the benchmark's own options)."""
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")


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


def child_env() -> dict[str, str]:
    """This process' environment, with the repository root on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def spawn(cmd: list[str], env: dict[str, str], logfile: Path) -> subprocess.Popen[bytes]:
    """A subprocess in its own session (so its process group can be killed), output to logfile."""
    with logfile.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_worker(
    pool: str,
    concurrency: int,
    env: dict[str, str],
    logfile: Path,
    app: str = "bench.app",
    hostname: str | None = None,
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
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
        hostname or f"bench-{uuid.uuid4().hex[:6]}@%h",
    ]
    return spawn(cmd, env, logfile)


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


def wait_for_worker(
    check_worker: Callable[[], None],
    probe: Callable[[], object],
    errors: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    timeout: float = 60,
) -> None:
    """Call ``probe`` until it returns without one of ``errors`` (it waits for the worker)."""
    deadline = time.monotonic() + timeout
    while True:
        check_worker()
        try:
            probe()
            return
        except errors:
            if time.monotonic() > deadline:
                raise


@dataclass
class WorkerSession:
    """What ``worker_session`` set up: Redis, the app module (``bench.app``) and its worker."""

    url: str
    source: str  # where the Redis comes from, for the report
    shared: bool  # True: CELERY_FLOW_BENCH_REDIS_URL (not ours: no config changes, clean up)
    prefix: str
    mod: ModuleType
    worker: subprocess.Popen[bytes]
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # after the worker stops
    log_lines: list[str] = field(default_factory=list)  # the worker's log, once it stopped

    def worker_exit_code(self) -> int | None:
        return self.worker.returncode


def drop_keys(r: redis.Redis, prefix: str) -> int:
    """Delete the benchmark's keys from a shared Redis (its prefix is unique per run)."""
    n = 0
    for pattern in (f"{prefix}*", f"_kombu.binding.{prefix}*"):
        batch = list(r.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 500):
            n += int(r.delete(*batch[i : i + 500]))
    return n


@contextlib.contextmanager
def worker_session(
    pool: str,
    concurrency: int,
    env: Mapping[str, str] | None = None,
    app: str = "bench.app",
    name: str = "bench",
    drop_prefix: bool = False,
) -> Iterator[WorkerSession]:
    """A Redis (throwaway unless CELERY_FLOW_BENCH_REDIS_URL), the ``app`` module, one worker.

    ``env``: more variables for ``app`` (read at import) and the worker; ``name``: the start
    of the key prefix and of the worker's hostname. On exit the worker stops (warm shutdown),
    the cleanups run (with ``drop_prefix``, on a shared Redis, one that deletes every key of
    the prefix: :func:`drop_keys`), and its log is read into ``log_lines`` (its last 40 lines
    go to stderr if the body raised).
    """
    prefix = f"{name}-{uuid.uuid4().hex[:8]}"
    with redis_url() as (url, source), tempfile.TemporaryDirectory() as tmp:
        shared = "CELERY_FLOW_BENCH_REDIS_URL" in os.environ
        os.environ["CELERY_FLOW_BENCH_REDIS_URL"] = url
        os.environ["CELERY_FLOW_BENCH_PREFIX"] = prefix
        os.environ.update(env or {})
        mod = importlib.import_module(app)  # reads the variables above
        logfile = Path(tmp) / "worker.log"
        log(f"Redis: {source}; prefix/queue {prefix}")
        log(f"starting celery worker --pool {pool} --concurrency {concurrency}")
        hostname = f"{name}-{uuid.uuid4().hex[:6]}@%h"
        worker = start_worker(pool, concurrency, child_env(), logfile, app, hostname)
        session = WorkerSession(url, source, shared, prefix, mod, worker)
        if shared and drop_prefix:

            def drop() -> None:
                client = redis.Redis.from_url(url)
                try:
                    log(f"deleted {drop_keys(client, prefix)} benchmark keys")
                finally:
                    client.close()

            session.cleanups.append(drop)
        ok = False
        try:
            yield session
            ok = True
        finally:
            log("stopping the worker")
            stop_worker(worker)
            for cleanup in session.cleanups:
                with contextlib.suppress(redis.RedisError):
                    cleanup()
            session.log_lines = logfile.read_text(errors="replace").splitlines()
            if not ok:
                print(
                    "---- worker log (last 40 lines) ----",
                    *session.log_lines[-40:],
                    sep="\n",
                    file=sys.stderr,
                )


class WorkerBench:
    """Base of a benchmark's phases: the app module, its flow, the worker, a client."""

    def __init__(self, mod: ModuleType, worker: subprocess.Popen[bytes], args: argparse.Namespace):
        self.mod = mod
        self.flow = mod.flow
        self.worker = worker
        self.args = args
        self.r = redis.Redis.from_url(mod.REDIS_URL, decode_responses=True)

    def check_worker(self) -> None:
        if self.worker.poll() is not None:
            raise RuntimeError(f"the celery worker exited with status {self.worker.returncode}")


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


def idle_rate(r: redis.Redis, seconds: float) -> dict[str, float]:
    """Commands per second Redis runs meanwhile (worker polling, maintenance) while we idle."""
    before = command_calls(r)
    time.sleep(seconds)
    background = delta(command_calls(r), before)
    return {k: v / seconds for k, v in background.items()}


def net_of_idle(raw: Counter[str], rate: Mapping[str, float], seconds: float) -> dict[str, float]:
    """Command counts minus the idle background rate over ``seconds``."""
    return {k: v - rate.get(k, 0.0) * seconds for k, v in raw.items()}


def rounded(d: Mapping[str, float], digits: int = 2) -> dict[str, float]:
    return {k: round(v, digits) for k, v in sorted(d.items())}


def commands_per_run(
    elapsed: float, raw: Counter[str], net: Mapping[str, float], n: int, signed: bool = False
) -> dict[str, Any]:
    """Commands per run of a batch of n runs; by command those >= 0.05 (|x| if ``signed``)."""
    return {
        "seconds": round(elapsed, 3),
        "commands_per_run": round(sum(net.values()) / n, 2),
        "commands_per_run_raw": round(sum(raw.values()) / n, 2),
        "by_command_per_run": {
            k: round(v / n, 2)
            for k, v in sorted(net.items())
            if (abs(v / n) if signed else v / n) >= 0.05
        },
    }


def script_names(flow: Any) -> dict[str, str]:
    """SHA -> name of the flow's Lua scripts (to label EVALSHA)."""
    return {script.sha: name for name, script in flow.store._scripts.items()}


def script_label(sha_names: Mapping[str, str], sha: str) -> str:
    return f"evalsha:{sha_names.get(sha, sha[:8])}"


MONITOR_STOP = "celery-flow-bench-monitor-stop"


@dataclass
class MonitorThread:
    """A MONITOR connection read in a thread (``_run``) until it sees ``ECHO MONITOR_STOP``."""

    url: str
    sha_names: dict[str, str]
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _join_seconds: float = 10

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        client = redis.Redis.from_url(self.url)
        client.echo(MONITOR_STOP)
        client.close()
        if self._thread:
            self._thread.join(self._join_seconds)


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


class RunClock:
    """Started with the benchmark: its total time, how noisy the machine was meanwhile, and
    (``track_source``) the celery_flow source measured (``source_state``)."""

    def __init__(self, track_source: bool = False) -> None:
        self.started = time.monotonic()
        self.probe_start, self.jiffies_start = cpu_probe_ms(), cpu_jiffies()
        self.source = source_state() if track_source else None

    def stamp(self, res: dict[str, Any]) -> None:
        """After the run: ``machine.noise``, and a warning in ``source`` if the source changed."""
        if self.source is not None and source_state() != self.source:
            res["source"] += " (the source changed during the run!)"
        res["machine"]["noise"] = self.noise()

    def noise(self) -> dict[str, Any]:
        steal, total = (b - a for a, b in zip(self.jiffies_start, cpu_jiffies(), strict=True))
        return {
            "cpu_probe_ms_start": self.probe_start,
            "cpu_probe_ms_end": cpu_probe_ms(),
            "steal_percent": round(100 * steal / total, 1) if total else None,
        }

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 1)


def source_state() -> str:
    """The celery_flow source measured: git commit, plus a digest of local edits in celery_flow/."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "celery_flow").strip()
        if dirty:
            dirty += git("diff", "HEAD", "--", "celery_flow")
    except OSError:
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    if not dirty:
        return f"git {head}"
    digest = hashlib.sha1(dirty.encode()).hexdigest()[:8]
    return f"git {head} + uncommitted changes in celery_flow/ (digest {digest})"


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """How to reproduce this run: ``python -m <prog>`` and its arguments."""
    return " ".join([f"python -m {prog}", *(sys.argv[1:] if argv is None else argv)])


def run_config(
    args: argparse.Namespace,
    session: WorkerSession,
    prog: str,
    argv: Sequence[str] | None,
    counts: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    """The report's ``config``: pool, Redis (then ``extra``), prefix, command line, counts."""
    return {
        "pool": args.pool,
        "concurrency": args.concurrency,
        "redis": session.source,
        **extra,
        "prefix": session.prefix,
        "command": command_line(prog, argv),
        "counts": {k: getattr(args, k) for k in counts},
    }


def report_head(
    r: redis.Redis, config: dict[str, Any], source: str | None = None
) -> dict[str, Any]:
    """The first keys of every report: date, machine, versions, (source), config."""
    res: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(r),
    }
    if source is not None:
        res["source"] = source
    res["config"] = config
    return res


WARNING_LINE = re.compile(r"WARNING|ERROR|CRITICAL|Traceback")


def flagged_lines(lines: Sequence[str]) -> list[str]:
    """The worker log's warning, error and traceback lines."""
    return [ln for ln in lines if WARNING_LINE.search(ln)]


def worker_log_summary(
    lines: Sequence[str], exit_code: int | None, counts: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Warning/error lines of the worker log; ``counts``: key -> substring, flagged lines each."""
    flagged = flagged_lines(lines)
    return {
        "exit_code": exit_code,
        "log_lines": len(lines),
        "warnings": len(flagged),
        **{key: sum(1 for ln in flagged if s in ln) for key, s in (counts or {}).items()},
        "excerpt": flagged[:20],
    }


def target_rows(rows: Sequence[tuple[str, float, str, float]]) -> list[dict[str, Any]]:
    """(metric, value, ">=" or "<=", target) -> the report's ``targets``."""
    return [
        {
            "metric": m,
            "value": v,
            "target": f"{op} {t:g}",
            "pass": bool(v >= t if op == ">=" else v <= t),
        }
        for m, v, op, t in rows
    ]


# -- markdown ----------------------------------------------------------------------------------


def md_machine(m: Mapping[str, Any]) -> list[str]:
    """The report's machine and machine-noise lines."""
    return [
        f"- machine: nproc {m['nproc']}, {m['cpu'] or 'cpu ?'}, {m['platform']}",
        f"- machine noise: CPU steal {m['noise']['steal_percent']}% of CPU time during the run; "
        f"yardstick loop (2M additions) {m['noise']['cpu_probe_ms_start']:g} ms before, "
        f"{m['noise']['cpu_probe_ms_end']:g} ms after (lower = faster machine)",
    ]


def md_versions(v: Mapping[str, str], suffix: str = "") -> str:
    return (
        f"- versions: python {v['python']}, celery {v['celery']}, kombu {v['kombu']}, "
        f"redis-py {v['redis_py']}, redis-server {v['redis_server']}, "
        f"celery_flow {v['celery_flow']}{suffix}"
    )


def md_worker(cfg: Mapping[str, Any], rest: str) -> str:
    return (
        f"- worker: one `celery worker --pool {cfg['pool']} --concurrency {cfg['concurrency']}` "
        f"(gossip/mingle/heartbeat off){rest}"
    )


def md_targets(targets: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's targets table, with its heading."""
    return [
        "## Targets",
        "",
        "| metric | value | target | result |",
        "|---|---:|---:|---|",
        *(
            f"| {t['metric']} | {t['value']:g} | {t['target']} | "
            f"{'PASS' if t['pass'] else 'FAIL'} |"
            for t in targets
        ),
        "",
    ]


def md_log_excerpt(title: str, excerpt: Sequence[str]) -> list[str]:
    """The first 5 flagged worker log lines, as a section (none: nothing)."""
    if not excerpt:
        return []
    return [f"## {title} (first 5)", "", "```", *excerpt[:5], "```", ""]


# -- results -----------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_results(out: Path, name: str, res: Mapping[str, Any], md: str) -> None:
    """``<out>/<name>.json`` and ``<out>/<name>.md``."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / f"{name}.json", json.dumps(res, indent=2) + "\n")
    write_atomic(out / f"{name}.md", md)


def publish(
    out: Path,
    name: str,
    res: dict[str, Any],
    clock: RunClock,
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """Stamp the total time, write the results, print the markdown and say where they went."""
    res["seconds_total"] = clock.seconds()
    md = markdown(res)
    write_results(out, name, res, md)
    print()
    print(md)
    log(
        f"wrote {out / f'{name}.json'} and {out / f'{name}.md'} "
        f"({res['seconds_total']:.0f} s in total)"
    )


def results_only_app(name: str, default_prefix: str) -> tuple[Any, Any]:
    """``(app, flow)`` for a benchmark worker module (``celery -A bench.<module> worker``).

    Redis and prefix come from ``CELERY_FLOW_BENCH_REDIS_URL`` / ``CELERY_FLOW_BENCH_PREFIX``
    (set by :func:`worker_session`); JSON only and no result backend: results live in
    celery_flow.
    """
    from celery import Celery

    from celery_flow import Flow

    url = os.environ.get("CELERY_FLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = os.environ.get("CELERY_FLOW_BENCH_PREFIX", default_prefix)
    app = Celery(name, broker=url)
    app.conf.update(
        task_default_queue=prefix,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
    )
    return app, Flow(app, redis_url=url, prefix=prefix)
