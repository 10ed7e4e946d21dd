"""Core benchmark: celery_flow workflows vs plain Celery tasks, side by side, on one worker.

Reproduce (from the repository root)::

    python -m bench.bench_core                     # or: make bench
    python -m bench.bench_core --pool threads      # the other pool
    python -m bench.bench_core --quick             # a smoke run with small counts
    CELERY_FLOW_BENCH_REDIS_URL=redis://host:6379/9 python -m bench.bench_core

Set-up: a throwaway ``redis-server`` (``celery_flow.testing.RedisServer``) unless
``CELERY_FLOW_BENCH_REDIS_URL`` is set, and ONE real ``celery worker`` subprocess for the app in
``bench/app.py`` (``--pool``, ``--concurrency``; default prefork x 4). That worker serves the
plain task ``bench.noop`` (Redis result backend) and the workflows ``one-step``, ``many-steps``
and ``replay-steps`` from one queue, and the same Redis is broker, result backend and
celery_flow state. The driver (this process) is the caller. After a warm-up it measures:

a. throughput: N one-step runs started with ``.run()`` then awaited with ``handle.result()``,
   vs N ``bench.noop.delay()`` awaited with ``AsyncResult.get()``; runs/s and ratio ours/plain.
b. round-trip latency p50/p99, sequential and interleaved: ``wf.run(i).result()`` vs
   ``noop.delay(i).get()``.
c. enqueue latency p50/p99 of ``.run()`` alone (only the call is timed), with the worker
   executing the runs meanwhile; for context also ``noop.delay()`` and ``.run()`` to a queue
   no worker consumes (the caller's cost without CPU contention from the worker).
d. per-step overhead: (worker-side duration of a 500-step run - that of a 1-step run) / 499,
   durations from ``RunInfo.finished_at - started_at`` (``flow.get_run``), median of a few
   runs; and the replay cost of cached steps (time and Redis round trips, counted inside the
   worker by ``replay-steps``; the design says 0 round trips).
e. Redis commands per run: ``INFO commandstats`` deltas around sequential batches of one-step
   runs and of plain tasks, minus the idle background rate (worker polling, celery_flow
   maintenance) measured just before. Script-internal commands are included there; a MONITOR
   taken during the same batches gives top-level commands (~ round trips) split by caller /
   worker. Broker and result-backend traffic are in the same Redis, so both sides count them.

Results go to ``bench/results/core.json`` and ``bench/results/core.md`` (printed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from bench._common import (
    MONITOR_STOP,
    MonitorThread,
    RunClock,
    WorkerBench,
    add_run_args,
    alternate,
    arg_parser,
    batch_row,
    command_calls,
    commands_per_run,
    delta,
    flagged_lines,
    idle_rate,
    log,
    md_log_excerpt,
    md_machine,
    md_targets,
    md_versions,
    md_worker,
    median_rounds,
    net_of_idle,
    publish,
    ratio,
    report_head,
    rounded,
    run_config,
    script_label,
    script_names,
    summary_ms,
    target_rows,
    timed_batch,
    wait_for_worker,
    worker_session,
)

TARGETS = {
    "throughput_ratio": 0.8,  # ours / plain, higher is better
    "enqueue_p50_ms": 2.0,
    "per_step_ms": 0.3,
    "replay_round_trips_per_cached_step": 0.0,
}


# -- processes ---------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (Linux /proc; just [pid] elsewhere)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
    return out


def tcp_ports(pids: Sequence[int]) -> set[int]:
    """Local TCP ports of the sockets these processes hold (Linux only; empty elsewhere)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.read().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


# -- Redis accounting --------------------------------------------------------------------------


@dataclass
class MonitorTap(MonitorThread):
    """Records top-level commands (not script-internal ones) seen by MONITOR in a thread."""

    lines: list[tuple[str, str]] = field(default_factory=list)  # (client port, command label)

    def _label(self, command: str) -> str:
        parts = command.split(" ", 2)
        name = parts[0].lower()
        if name == "evalsha" and len(parts) > 1:
            return script_label(self.sha_names, parts[1])
        return name

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as mon:  # type: ignore[no-untyped-call]
            self._ready.set()
            for cmd in mon.listen():
                if cmd["client_type"] == "lua":
                    continue
                if MONITOR_STOP in cmd["command"]:
                    break
                self.lines.append((cmd["client_port"], self._label(cmd["command"])))
        client.close()


# -- phases ------------------------------------------------------------------------------------


class Bench(WorkerBench):
    def wait_all(self, items: Sequence[Any], get: Callable[[Any], Any], label: str) -> None:
        for i, item in enumerate(items):
            value = get(item)
            if value != i:
                raise AssertionError(f"{label}: item {i} returned {value!r}")
            if (i + 1) % 500 == 0:
                log(f"  {label}: {i + 1}/{len(items)} done")

    def flow_result(self, h: Any) -> Any:
        return h.result(timeout=120)

    @staticmethod
    def plain_result(r: Any) -> Any:
        return r.get(timeout=120)

    def warm_up(self) -> None:
        log("waiting for the worker (a plain task and a workflow)...")
        wait_for_worker(self.check_worker, lambda: self.mod.noop.delay(0).get(timeout=2))
        self.mod.one_step.run(0).result(timeout=30)
        n = self.args.warmup
        log(f"warm-up: {n} runs of each kind, batched then sequential")
        hs = [self.mod.one_step.run(i) for i in range(n)]
        rs = [self.mod.noop.delay(i) for i in range(n)]
        self.wait_all(hs, self.flow_result, "warm-up flow")
        self.wait_all(rs, self.plain_result, "warm-up plain")
        for i in range(n // 4):
            self.mod.one_step.run(i).result(timeout=30)
            self.mod.noop.delay(i).get(timeout=30)
        self.mod.many_steps.run(50).result(timeout=30)

    def start_batch(self, label: str, n: int) -> list[Any]:
        if label == "flow":
            return [self.mod.one_step.run(i) for i in range(n)]
        return [self.mod.noop.delay(i) for i in range(n)]

    def wait_batch(self, label: str, items: list[Any]) -> None:
        self.wait_all(items, self.flow_result if label == "flow" else self.plain_result, label)

    def throughput(self) -> dict[str, Any]:
        n, rounds = self.args.runs, self.args.rounds
        out: dict[str, Any] = {"n": n, "rounds": rounds}
        per_round: dict[str, list[dict[str, float]]] = {"flow": [], "plain": []}
        for rnd in range(rounds):
            for label in alternate(("plain", "flow"), rnd):
                log(
                    f"(a) throughput, round {rnd + 1}/{rounds}, {label}: starting {n} runs, "
                    "then waiting for all"
                )
                elapsed, enq = timed_batch(
                    functools.partial(self.start_batch, label, n),
                    functools.partial(self.wait_batch, label),
                )
                per_round[label].append(batch_row(n, elapsed, enq))
                log(
                    f"  {label}: {n / elapsed:.0f} runs/s ({elapsed:.2f} s, of which "
                    f"{enq:.2f} s starting them)"
                )
                self.check_worker()
        out.update(median_rounds(per_round))
        out["ratio"] = ratio(out["flow"]["runs_per_s"], out["plain"]["runs_per_s"])
        return out

    def latency(self) -> dict[str, Any]:
        n = self.args.latency_iters
        log(f"(b) round-trip latency: {n} sequential iterations each, interleaved")
        flow_s: list[float] = []
        plain_s: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            self.mod.one_step.run(i).result(timeout=30)
            t1 = time.perf_counter()
            self.mod.noop.delay(i).get(timeout=30)
            t2 = time.perf_counter()
            flow_s.append(t1 - t0)
            plain_s.append(t2 - t1)
            if (i + 1) % 100 == 0:
                log(f"  {i + 1}/{n}")
        flow, plain = summary_ms(flow_s), summary_ms(plain_s)
        return {
            "flow": flow,
            "plain": plain,
            "ratio_p50": ratio(flow["p50_ms"], plain["p50_ms"]),
            "ratio_p99": ratio(flow["p99_ms"], plain["p99_ms"]),
        }

    def enqueue(self) -> dict[str, Any]:
        n = self.args.enqueue_iters
        parked = f"{self.mod.PREFIX}-parked"  # a queue no worker consumes
        out: dict[str, Any] = {"n": n, "parked_queue": parked}
        variants: list[tuple[str, Callable[[int], Any]]] = [
            ("flow", lambda i: self.mod.one_step.run(i)),
            ("plain", lambda i: self.mod.noop.delay(i)),
            ("flow_parked", lambda i: self.mod.one_step.run(i, queue=parked)),
            ("plain_parked", lambda i: self.mod.noop.apply_async((i,), queue=parked)),
        ]
        for label, call in variants:
            log(f"(c) enqueue latency, {label}: {n} calls, only the call is timed")
            times: list[float] = []
            items: list[Any] = []
            for i in range(n):
                t0 = time.perf_counter()
                item = call(i)
                times.append(time.perf_counter() - t0)
                items.append(item)
            out[label] = summary_ms(times)
            log(f"  p50 {out[label]['p50_ms']:.3f} ms, p99 {out[label]['p99_ms']:.3f} ms")
            if label == "flow":
                self.wait_all(items, self.flow_result, "enqueued flow runs")
            elif label == "plain":
                self.wait_all(items, self.plain_result, "enqueued plain tasks")
            elif label == "flow_parked":  # never executed: cancel the runs, drop the messages
                for h in items:
                    h.cancel("benchmark cleanup")
                self.r.delete(parked)
            else:
                for r in items:
                    r.forget()  # unsubscribes from the result channel
                self.r.delete(parked)
        out["ratio_p50"] = ratio(out["flow"]["p50_ms"], out["plain"]["p50_ms"])
        out["ratio_p50_parked"] = ratio(out["flow_parked"]["p50_ms"], out["plain_parked"]["p50_ms"])
        return out

    def run_ms(self, run_id: str) -> float:
        info = self.flow.get_run(run_id)
        if info.status != "succeeded" or not info.started_at or not info.finished_at:
            raise AssertionError(f"run {run_id}: {info.status}")
        return float((info.finished_at - info.started_at).total_seconds() * 1000)

    def per_step(self) -> dict[str, Any]:
        steps, reps = self.args.steps, self.args.step_reps
        log(f"(d) per-step overhead: {reps} x many-steps(1) and {reps} x many-steps({steps})")
        one: list[float] = []
        many: list[float] = []
        many_client: list[float] = []
        for _ in range(reps):
            h = self.mod.many_steps.run(1)
            h.result(timeout=60)
            one.append(self.run_ms(h.id))
            t0 = time.perf_counter()
            h = self.mod.many_steps.run(steps)
            h.result(timeout=120)
            many_client.append((time.perf_counter() - t0) * 1000)
            many.append(self.run_ms(h.id))
        one_med, many_med = statistics.median(one), statistics.median(many)
        per_step = (many_med - one_med) / (steps - 1)
        log(f"  {per_step:.4f} ms per step (worker side)")
        log(f"    replay: replay-steps({steps}) fails once, attempt 2 replays every step")
        rep = self.mod.replay_steps.run(steps).result(timeout=120)
        first, again = rep["first"], rep["replay"]
        return {
            "steps": steps,
            "reps": reps,
            "one_step_run_ms": [round(x, 1) for x in one],
            "many_step_run_ms": [round(x, 1) for x in many],
            "many_step_client_ms": [round(x, 1) for x in many_client],
            "per_step_ms": round(per_step, 4),
            "replay": {
                "first_attempt_loop_ms": round(first["ms"], 2),
                "first_attempt_round_trips": first["round_trips"],
                "replay_loop_ms": round(again["ms"], 2),
                "replay_round_trips": again["round_trips"],
                "replay_ms_per_cached_step": round(again["ms"] / steps, 5),
                "replay_round_trips_per_cached_step": again["round_trips"] / steps,
            },
        }

    def commands(self) -> dict[str, Any]:
        n, idle = self.args.cmd_runs, self.args.idle_seconds
        log(f"(e) Redis commands: idle background over {idle:.0f} s, then {n} sequential runs each")
        rate = idle_rate(self.r, idle)
        sha_names = script_names(self.flow)
        worker_pids = process_tree(self.worker.pid)
        out: dict[str, Any] = {
            "n": n,
            "idle_seconds": idle,
            "background_per_s": rounded(rate),
        }
        batches: list[tuple[str, Callable[[int], Any]]] = [
            ("flow", lambda i: self.mod.one_step.run(i).result(timeout=30)),
            ("plain", lambda i: self.mod.noop.delay(i).get(timeout=30)),
        ]
        for label, once in batches:
            with MonitorTap(self.mod.REDIS_URL, sha_names) as tap:
                before = command_calls(self.r)
                t0 = time.perf_counter()
                for i in range(n):
                    once(i)
                elapsed = time.perf_counter() - t0
                after = command_calls(self.r)
                mine = tcp_ports([os.getpid()])
                theirs = tcp_ports(process_tree(self.worker.pid) or worker_pids)
            raw = delta(after, before)
            net = net_of_idle(raw, rate, elapsed)
            sides: dict[str, Counter[str]] = {
                "caller": Counter(),
                "worker": Counter(),
                "other": Counter(),
            }
            for port, cmd in tap.lines:
                side = (
                    "caller"
                    if port.isdigit() and int(port) in mine
                    else "worker"
                    if port.isdigit() and int(port) in theirs
                    else "other"
                )
                sides[side][cmd] += 1
            out[label] = {
                **commands_per_run(elapsed, raw, net, n),
                "top_level_per_run": {
                    side: {
                        "total": round(sum(c.values()) / n, 2),
                        "by_command": {
                            k: round(v / n, 2) for k, v in c.most_common() if v / n >= 0.05
                        },
                    }
                    for side, c in sides.items()
                },
            }
            log(
                f"  {label}: {out[label]['commands_per_run']} commands per run "
                f"(caller {out[label]['top_level_per_run']['caller']['total']} + worker "
                f"{out[label]['top_level_per_run']['worker']['total']} top-level)"
            )
        return out


# -- report ------------------------------------------------------------------------------------


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[tuple[str, float, str, float]] = [
        (
            "throughput ratio ours/plain",
            res["throughput"]["ratio"],
            ">=",
            TARGETS["throughput_ratio"],
        ),
        (
            "`.run()` enqueue p50 (ms)",
            res["enqueue"]["flow"]["p50_ms"],
            "<=",
            TARGETS["enqueue_p50_ms"],
        ),
        ("per-step overhead (ms)", res["per_step"]["per_step_ms"], "<=", TARGETS["per_step_ms"]),
        (
            "round trips per cached step on replay",
            res["per_step"]["replay"]["replay_round_trips_per_cached_step"],
            "<=",
            TARGETS["replay_round_trips_per_cached_step"],
        ),
    ]
    return target_rows(rows)


def markdown(res: dict[str, Any]) -> str:
    t, lat, enq = res["throughput"], res["latency"], res["enqueue"]
    ps, cmd, cfg = res["per_step"], res["commands"], res["config"]
    v, m, w = res["versions"], res["machine"], res["worker"]

    def top(side: dict[str, Any]) -> str:
        return ", ".join(f"{k} {x:g}" for k, x in side["by_command"].items()) or "-"

    lines = [
        "# celery_flow core benchmark",
        "",
        f"- date: {res['date']}",
        *md_machine(m),
        md_versions(v),
        md_worker(
            cfg,
            f", same queue and same Redis for plain tasks and workflows; Redis: {cfg['redis']}",
        ),
        f"- reproduce: `{cfg['command']}`",
        f"- worker exit code {w['exit_code']}; worker log: {w['warnings_unexpected']} unexpected "
        f"warning/error lines, {w['warnings_expected']} expected (replay-steps' planned "
        "failure)",
        "",
        *md_targets(res["targets"]),
        "## Side by side",
        "",
        "| measure | celery_flow | plain Celery | ours/plain |",
        "|---|---:|---:|---:|",
        f"| (a) throughput, {t['n']} runs, median of {t['rounds']} rounds (runs/s) | "
        f"{t['flow']['runs_per_s']:g} | {t['plain']['runs_per_s']:g} | {t['ratio']:g} |",
        f"| (b) round trip p50 (ms), {lat['flow']['n']} sequential | {lat['flow']['p50_ms']:g} | "
        f"{lat['plain']['p50_ms']:g} | {lat['ratio_p50']:g} |",
        f"| (b) round trip p99 (ms) | {lat['flow']['p99_ms']:g} | {lat['plain']['p99_ms']:g} | "
        f"{lat['ratio_p99']:g} |",
        f"| (c) enqueue p50 (ms), {enq['n']} calls, worker busy | {enq['flow']['p50_ms']:g} | "
        f"{enq['plain']['p50_ms']:g} | {enq['ratio_p50']:g} |",
        f"| (c) enqueue p99 (ms) | {enq['flow']['p99_ms']:g} | {enq['plain']['p99_ms']:g} | "
        f"{ratio(enq['flow']['p99_ms'], enq['plain']['p99_ms']):g} |",
        f"| (c) enqueue p50 (ms), queue without consumer (no CPU contention) | "
        f"{enq['flow_parked']['p50_ms']:g} | {enq['plain_parked']['p50_ms']:g} | "
        f"{enq['ratio_p50_parked']:g} |",
        f"| (c) enqueue p99 (ms), queue without consumer | {enq['flow_parked']['p99_ms']:g} | "
        f"{enq['plain_parked']['p99_ms']:g} | "
        f"{ratio(enq['flow_parked']['p99_ms'], enq['plain_parked']['p99_ms']):g} |",
        f"| (e) Redis commands per run (incl. script-internal, idle rate subtracted) | "
        f"{cmd['flow']['commands_per_run']:g} | {cmd['plain']['commands_per_run']:g} | "
        f"{ratio(cmd['flow']['commands_per_run'], cmd['plain']['commands_per_run']):g} |",
        f"| (e) top-level commands per run, caller side | "
        f"{cmd['flow']['top_level_per_run']['caller']['total']:g} | "
        f"{cmd['plain']['top_level_per_run']['caller']['total']:g} | |",
        f"| (e) top-level commands per run, worker side | "
        f"{cmd['flow']['top_level_per_run']['worker']['total']:g} | "
        f"{cmd['plain']['top_level_per_run']['worker']['total']:g} | |",
        "",
        "## Steps",
        "",
        f"- (d) per-step overhead: {ps['per_step_ms']:g} ms/step = (median worker-side duration "
        f"of a {ps['steps']}-step run, {statistics.median(ps['many_step_run_ms']):g} ms, - that "
        f"of a 1-step run, {statistics.median(ps['one_step_run_ms']):g} ms) / {ps['steps'] - 1}"
        f"; {ps['reps']} runs each (RunInfo.finished_at - started_at, ms resolution).",
        f"- first execution of {ps['steps']} new steps: {ps['replay']['first_attempt_loop_ms']:g}"
        f" ms, {ps['replay']['first_attempt_round_trips']} Redis round trips (1 per new step).",
        f"- replay of {ps['steps']} cached steps: {ps['replay']['replay_loop_ms']:g} ms "
        f"({ps['replay']['replay_ms_per_cached_step'] * 1000:.2f} us/step), "
        f"{ps['replay']['replay_round_trips']} Redis round trips (design: 0).",
        "",
        "## Redis commands per run (e)",
        "",
        f"{cmd['n']} sequential `run().result()` vs `delay().get()`; background idle rate "
        f"measured over {cmd['idle_seconds']:g} s and subtracted. Top-level commands from "
        "MONITOR (a pipelined command counts once per command, not per round trip).",
        "",
        "| | celery_flow | plain Celery |",
        "|---|---|---|",
        f"| caller, top-level | {top(cmd['flow']['top_level_per_run']['caller'])} | "
        f"{top(cmd['plain']['top_level_per_run']['caller'])} |",
        f"| worker, top-level | {top(cmd['flow']['top_level_per_run']['worker'])} | "
        f"{top(cmd['plain']['top_level_per_run']['worker'])} |",
        f"| all commands (INFO commandstats) | "
        f"{', '.join(f'{k} {x:g}' for k, x in cmd['flow']['by_command_per_run'].items())} | "
        f"{', '.join(f'{k} {x:g}' for k, x in cmd['plain']['by_command_per_run'].items())} |",
        "",
        *md_log_excerpt("Worker log: unexpected warnings", w["unexpected_excerpt"]),
    ]
    return "\n".join(lines)


def worker_log_summary(lines: Sequence[str], exit_code: int | None) -> dict[str, Any]:
    """Warnings and errors the worker logged; the planned failure of replay-steps is expected."""
    flagged = flagged_lines(lines)
    unexpected = [ln for ln in flagged if "PlannedFailure" not in ln]
    return {
        "exit_code": exit_code,
        "log_lines": len(lines),
        "warnings_expected": len(flagged) - len(unexpected),
        "warnings_unexpected": len(unexpected),
        "unexpected_excerpt": unexpected[:20],
    }


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arg_parser("python -m bench.bench_core", __doc__)
    p.add_argument("--runs", type=int, default=2000, help="(a) runs per side and round")
    p.add_argument("--rounds", type=int, default=3, help="(a) rounds, alternating the order")
    p.add_argument("--latency-iters", type=int, default=300, help="(b) iterations per side")
    p.add_argument("--enqueue-iters", type=int, default=1000, help="(c) calls per variant")
    p.add_argument("--steps", type=int, default=500, help="(d) steps of the long run")
    p.add_argument("--step-reps", type=int, default=5, help="(d) runs of each length")
    p.add_argument("--cmd-runs", type=int, default=200, help="(e) runs per side")
    p.add_argument("--idle-seconds", type=float, default=3.0, help="(e) idle window")
    p.add_argument("--warmup", type=int, default=200, help="warm-up runs per side")
    add_run_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.rounds, args.latency_iters, args.enqueue_iters = 200, 1, 50, 100
        args.steps, args.step_reps, args.cmd_runs = 100, 2, 50
        args.idle_seconds, args.warmup = 1.0, 20
    if args.steps < 2:
        p.error("--steps must be >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    clock = RunClock()
    with worker_session(args.pool, args.concurrency) as session:
        bench = Bench(session.mod, session.worker, args)
        bench.warm_up()
        counts = (
            "runs",
            "rounds",
            "latency_iters",
            "enqueue_iters",
            "steps",
            "step_reps",
            "cmd_runs",
            "idle_seconds",
            "warmup",
        )
        config = run_config(args, session, "bench.bench_core", argv, counts)
        res = report_head(bench.r, config)
        res["throughput"] = bench.throughput()
        res["latency"] = bench.latency()
        res["enqueue"] = bench.enqueue()
        res["per_step"] = bench.per_step()
        res["commands"] = bench.commands()
        bench.check_worker()
    res["worker"] = worker_log_summary(session.log_lines, session.worker_exit_code())
    clock.stamp(res)
    res["targets"] = targets(res)
    publish(args.out, "core", res, clock, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
