"""Cron scheduler benchmark: fire lateness, and scheduler CPU with 1,000 cron entries.

Reproduce (from the repository root)::

    python -m bench.bench_cron                    # 60 ticks + 20 s CPU window, ~1.5 min
    python -m bench.bench_cron --ticks 120        # the issue's 120 ticks
    CELERY_FLOW_BENCH_REDIS_URL=redis://host:6379/9 python -m bench.bench_cron

Set-up: a throwaway ``redis-server`` unless ``CELERY_FLOW_BENCH_REDIS_URL`` is set (one Redis
for broker and celery_flow state). This module is also the benchmark's Celery app
(``celery -A bench.bench_cron``), built from ``CF_BENCH_CRON_*`` environment variables.

1. Lateness: ONE real ``celery worker`` subprocess (``--pool``, ``--concurrency``; default
   threads x 4) whose bootstep runs the scheduler (it leads: no other node), with a
   per-second cron (``* * * * * *``) on a no-op workflow. After 3 warm-up ticks, ``--ticks``
   ticks are measured: lateness = the run's ``started_at`` (start script, Redis clock) minus
   its scheduled fire time (from its idempotency key ``cron:<id>:<fire ms>``); also the
   enqueue lateness (``created_at`` minus fire time: the scheduler's own share). Target: p99
   <= 500 ms. With 60 ticks, p99 is the nearest-rank 60th value, i.e. the maximum.
2. CPU: two scheduler-only processes (``Scheduler.run_forever``, default 10 s lease) for an
   app with ``--entries`` cron entries on one workflow; entry i fires once an hour, at its own
   second of the hour (1,000 distinct seconds: ~0.28 fires/s, each a real enqueue + publish).
   Once the leader has scheduled every entry (``cron:next`` is full) and 2 s have passed, the
   CPU time (user + system, ``/proc/<pid>/stat``) of the leader and of the follower is
   measured over ``--cpu-seconds``, with the Redis commands both sent (INFO commandstats).

Results go to ``bench/results/cron.json`` and ``bench/results/cron.md`` (printed at the end).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench._common import (
    RESULTS,
    child_env,
    command_calls,
    command_line,
    delta,
    log,
    percentile,
    redis_url,
    report_head,
    spawn,
    start_worker,
    stop_worker,
    write_results,
)
from celery_flow import Cron, Flow

# -- the benchmark's app (``celery -A bench.bench_cron worker`` and the scheduler role) -------

APP_ID = "bench_cron"
TICK = "bench-tick"
MANY = "bench-many"


def build_app(url: str, prefix: str, entries: int) -> tuple[Celery, Flow]:
    """The app: ``bench-tick`` (per-second cron) or ``bench-many`` (``entries`` hourly crons)."""
    app = Celery(APP_ID, broker=url)
    app.conf.update(
        task_default_queue=prefix,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    flow = Flow(app, redis_url=url, prefix=prefix)
    if entries:
        # entry i fires at second floor(3.6 * i) of every hour: all distinct for 1,000 entries
        crons = [
            Cron(f"{i * 36 // 10 % 60} {i * 36 // 600} * * * *", id=f"m{i}") for i in range(entries)
        ]

        @flow.workflow(name=MANY, cron=crons)
        def many(ctx: Any) -> None:
            return None

    else:

        @flow.workflow(name=TICK, cron=Cron("* * * * * *", id=TICK))
        def tick(ctx: Any) -> None:
            return None

    return app, flow


if os.environ.get("CF_BENCH_CRON_REDIS"):
    app, flow = build_app(
        os.environ["CF_BENCH_CRON_REDIS"],
        os.environ["CF_BENCH_CRON_PREFIX"],
        int(os.environ.get("CF_BENCH_CRON_ENTRIES", "0")),
    )


# -- helpers ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def ms_stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(max(values), 1),
        "min_ms": round(min(values), 1),
    }


# -- (1) lateness ----------------------------------------------------------------------------


def lateness(url: str, args: argparse.Namespace, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    prefix = f"bench-cron-{uuid.uuid4().hex[:8]}"
    env = dict(env, CF_BENCH_CRON_REDIS=url, CF_BENCH_CRON_PREFIX=prefix, CF_BENCH_CRON_ENTRIES="0")
    _, reader = build_app(url, prefix, 0)
    log(f"(1) worker --pool {args.pool} -c {args.concurrency}; {args.ticks} ticks + 3 warm-up")
    worker = start_worker(
        args.pool, args.concurrency, env, tmp / "worker.log", "bench.bench_cron", f"{prefix}@%h"
    )
    try:
        total = args.ticks + 3

        def started() -> list[Any] | None:
            runs = reader.list_runs(workflow=TICK, limit=1000).runs
            runs.sort(key=lambda r: r.created_at)
            return runs if len(runs) >= total and all(r.started_at for r in runs[:total]) else None

        runs = wait_until(started, timeout=total + 60, what=f"{total} started tick runs")
    finally:
        stop_worker(worker)
    rows = []
    for run in runs[3 : 3 + args.ticks]:
        fire = int((run.idempotency_key or "").rsplit(":", 1)[1])
        rows.append(
            (
                fire,
                run.created_at.timestamp() * 1000 - fire,
                run.started_at.timestamp() * 1000 - fire,
            )
        )
    fires = [f for f, _, _ in rows]
    gaps = [b - a for a, b in itertools.pairwise(fires)]
    return {
        "ticks": len(rows),
        "duplicates": len(fires) - len(set(fires)),
        "gaps_other_than_1s": sum(1 for g in gaps if g != 1000),
        "start_lateness": ms_stats([s for _, _, s in rows]),
        "enqueue_lateness": ms_stats([c for _, c, _ in rows]),
        "target_p99_ms": 500,
    }


# -- (2) CPU with many entries ---------------------------------------------------------------


def cpu(url: str, args: argparse.Namespace, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    prefix = f"bench-cron-{uuid.uuid4().hex[:8]}"
    env = dict(
        env,
        CF_BENCH_CRON_REDIS=url,
        CF_BENCH_CRON_PREFIX=prefix,
        CF_BENCH_CRON_ENTRIES=str(args.entries),
    )
    r = redis.Redis.from_url(url, decode_responses=True)
    _, reader = build_app(url, prefix, args.entries)
    keys = reader.store.keys
    log(f"(2) two scheduler processes, {args.entries} entries, {args.cpu_seconds} s window")
    procs = [
        spawn(
            [sys.executable, "-m", "bench.bench_cron", "--role", "scheduler"],
            dict(env, CF_BENCH_CRON_NODE=f"s{i}"),
            tmp / f"scheduler{i}.log",
        )
        for i in range(2)
    ]
    try:
        holder = wait_until(lambda: r.get(keys.cron_lock(APP_ID)), 60, "a leader")
        wait_until(lambda: r.zcard(keys.cron_next) >= args.entries, 60, "the full schedule")
        time.sleep(2.0)
        leader = int(holder.split("|")[0][1:])
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        calls0, runs0, t0 = command_calls(r), r.zcard(keys.workflow_runs(MANY)), time.monotonic()
        time.sleep(args.cpu_seconds)
        cpu1 = [cpu_seconds(p.pid) for p in procs]
        calls1, runs1 = command_calls(r), r.zcard(keys.workflow_runs(MANY))
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(15)
    used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    cmds = delta(calls1, calls0)
    return {
        "entries": args.entries,
        "window_s": round(elapsed, 2),
        "fires_in_window": runs1 - runs0,
        "leader_cpu_s": round(used[leader], 3),
        "leader_cpu_percent": round(100 * used[leader] / elapsed, 2),
        "follower_cpu_s": round(used[1 - leader], 3),
        "follower_cpu_percent": round(100 * used[1 - leader] / elapsed, 2),
        "redis_commands_per_s": round(sum(cmds.values()) / elapsed, 1),
        "redis_commands": dict(cmds.most_common()),
    }


# -- report ----------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    lat, c = res["lateness"], res["cpu"]
    s, e = lat["start_lateness"], lat["enqueue_lateness"]
    ok = "meets" if s["p99_ms"] <= lat["target_p99_ms"] else "MISSES"
    return "\n".join(
        [
            "# Cron scheduler benchmark",
            "",
            f"{res['date']} · {res['machine']['cpu']} ({res['machine']['nproc']} CPUs) · "
            + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
            "",
            f"Command: `{res['config']['command']}`",
            "",
            f"## (1) Fire lateness: {lat['ticks']} per-second ticks, one worker "
            f"({res['config']['pool']} x {res['config']['concurrency']}) leading",
            "",
            "| measure | p50 | p99 | max | min |",
            "|---|---:|---:|---:|---:|",
            f"| run started - scheduled fire (ms) | {s['p50_ms']} | {s['p99_ms']} | "
            f"{s['max_ms']} | {s['min_ms']} |",
            f"| run created (enqueued) - scheduled fire (ms) | {e['p50_ms']} | {e['p99_ms']} | "
            f"{e['max_ms']} | {e['min_ms']} |",
            "",
            f"p99 {ok} the {lat['target_p99_ms']} ms target. Duplicate ticks: "
            f"{lat['duplicates']}; gaps other than 1 s: {lat['gaps_other_than_1s']}. "
            f"(With fewer than 100 ticks, p99 is the maximum.)",
            "",
            f"## (2) Scheduler CPU with {c['entries']} cron entries, {c['window_s']} s window",
            "",
            f"- leader: {c['leader_cpu_s']} s CPU = {c['leader_cpu_percent']} % of one core "
            f"({c['fires_in_window']} ticks fired in the window)",
            f"- follower: {c['follower_cpu_s']} s CPU = {c['follower_cpu_percent']} %",
            f"- Redis commands, both processes: {c['redis_commands_per_s']} /s "
            f"({', '.join(f'{k} {v}' for k, v in c['redis_commands'].items())})",
            "",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_cron",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--role", choices=["driver", "scheduler"], default="driver")
    p.add_argument("--pool", default="threads", choices=["prefork", "threads", "solo"])
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--ticks", type=int, default=60, help="(1) measured ticks (default 60)")
    p.add_argument("--entries", type=int, default=1000, help="(2) cron entries (default 1000)")
    p.add_argument("--cpu-seconds", type=float, default=20.0, help="(2) CPU window (default 20)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return p.parse_args(argv)


def run_scheduler() -> int:
    flow.scheduler.node_id = os.environ.get("CF_BENCH_CRON_NODE") or flow.scheduler.node_id
    signal.signal(signal.SIGTERM, lambda *_: flow.scheduler.stop())
    flow.scheduler.run_forever()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "scheduler":
        return run_scheduler()
    with redis_url() as (url, source), tempfile.TemporaryDirectory() as tmp:
        env = child_env()
        log(f"Redis: {source}")
        config = {
            "pool": args.pool,
            "concurrency": args.concurrency,
            "redis": source,
            "command": command_line("bench.bench_cron", argv),
        }
        res = report_head(redis.Redis.from_url(url), config)
        res["lateness"] = lateness(url, args, env, Path(tmp))
        res["cpu"] = cpu(url, args, env, Path(tmp))
    report = markdown(res)
    write_results(args.out, "cron", res, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
