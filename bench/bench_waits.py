"""Waits benchmark: durable sleep timer accuracy, and the cost of one suspend + resume.

Reproduce (from the repository root)::

    python -m bench.bench_waits                    # prefork x 4
    python -m bench.bench_waits --concurrency 8    # or --pool threads
    python -m bench.bench_waits --quick            # a smoke run with small counts
    CELERY_FLOW_BENCH_REDIS_URL=redis://host:6379/9 python -m bench.bench_waits

Set-up: a throwaway ``redis-server`` (``celery_flow.testing.RedisServer``) unless
``CELERY_FLOW_BENCH_REDIS_URL`` is set, and ONE real ``celery worker`` subprocess for the app
in ``bench/waits_app.py`` (``--pool``, ``--concurrency``; default prefork x 4). Its celery_flow
bootstep runs the timer promoter (``celery_flow/_maintenance.py``) in the worker's parent
process. The driver (this process) is the caller. After a warm-up it measures:

1. timer accuracy: ``--timer-runs`` runs of ``nap`` (``ctx.step.sleep("nap", 1)``) started at
   once. Wake lateness = the worker's ``time.time()`` just after the sleep returned (returned by
   the run) - (the sleep step's ``started_at`` + 1 s). Also the promoter's share: the sleep
   step's ``finished_at`` (written when the promoter claims the due timer) - the same due time.
   p50/p99/max and the wall time of the whole batch.
2. suspend + resume overhead per wait:
   a. ``many-sleeps``: ``--waits`` sequential ``ctx.step.sleep(f"s:{k}", 0.001)`` (a 0 s sleep
      returns at once without suspending, see ``suspend.lua``; 1 ms suspends and resumes through
      the timer promoter). Per wait: (run wall time - sum of the sleep durations) / N, from the
      caller's clock and from ``RunInfo.finished_at - started_at``; split into the promoter's
      delay (step ``finished_at - started_at - duration``) and the resume (the next sleep's
      ``started_at`` - this one's ``finished_at``: publish, pick-up, replay, suspend).
   b. ``many-events``: ``--waits`` sequential ``ctx.step.wait_for_event(f"e:{k}", "go")``; the
      driver polls the run hash (one HMGET, every ``--poll-ms``) and sends each event as soon
      as the run waits on that step. Per cycle: time between two successive "waiting on e:k"
      detections (send_event + resume + replay + suspend + detection).
   Redis cost of both: ``INFO commandstats`` deltas around each run (script-internal commands
   included), minus the idle background rate (worker polling, promoter) measured just before,
   and for (b) minus the driver's own polls; divided by the number of waits.

Results go to ``bench/results/waits.json`` and ``bench/results/waits.md`` (printed at the end).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any

import redis

from bench._common import (
    IGNORED_COMMANDS,
    MONITOR_STOP,
    MonitorThread,
    RunClock,
    WorkerBench,
    add_run_args,
    arg_parser,
    command_calls,
    delta,
    idle_rate,
    log,
    md_log_excerpt,
    md_machine,
    md_targets,
    md_versions,
    md_worker,
    net_of_idle,
    percentile,
    publish,
    report_head,
    rounded,
    run_config,
    script_label,
    script_names,
    target_rows,
    wait_for_worker,
    worker_log_summary,
    worker_session,
)

TARGETS = {"timer_lateness_p99_ms": 500.0}


# -- statistics --------------------------------------------------------------------------------


def summary(ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "min_ms": round(min(ms), 2),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def ts(dt: datetime | None) -> float:
    if dt is None:
        raise AssertionError("missing timestamp")
    return dt.timestamp()


def per_wait(raw: Counter[str], net: Mapping[str, float], n: int) -> dict[str, Any]:
    """Redis commands per wait of a run with ``n`` waits; by command those >= 0.05."""
    return {
        "commands_per_wait": round(sum(net.values()) / n, 2),
        "commands_per_wait_raw": round(sum(raw.values()) / n, 2),
        "by_command_per_wait": {
            k: round(v / n, 2) for k, v in sorted(net.items()) if v / n >= 0.05
        },
    }


# -- processes ---------------------------------------------------------------------------------


def loadavg() -> float:
    """1-minute load average (-1 where unavailable)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


class LoadClock(RunClock):
    """A ``RunClock`` whose machine noise also has the 1-minute load average, before and after."""

    def __init__(self) -> None:
        super().__init__()
        self.load_start = loadavg()

    def noise(self) -> dict[str, Any]:
        return {**super().noise(), "loadavg_start": self.load_start, "loadavg_end": loadavg()}


# -- Redis accounting --------------------------------------------------------------------------


@dataclass
class MonitorTap(MonitorThread):
    """Counts top-level commands (not script-internal ones) seen by MONITOR, in a thread.

    ``evalsha`` is labelled with the script's name; a pipelined command counts once per command.
    """

    counts: Counter[str] = field(default_factory=Counter)

    def _label(self, command: str) -> str:
        parts = command.split(" ", 2)
        name = parts[0].lower()
        if name == "evalsha" and len(parts) > 1:
            return script_label(self.sha_names, parts[1])
        if name == "script" and len(parts) > 1:
            return f"script {parts[1].lower()}"
        return name

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as mon:  # type: ignore[no-untyped-call]
            self._ready.set()
            for cmd in mon.listen():
                if cmd.get("client_type") == "lua":
                    continue
                if MONITOR_STOP in cmd["command"]:
                    break
                label = self._label(cmd["command"])
                if label not in IGNORED_COMMANDS:
                    self.counts[label] += 1
        client.close()


# -- phases ------------------------------------------------------------------------------------


class Bench(WorkerBench):
    def __init__(self, mod: ModuleType, worker: subprocess.Popen[bytes], args: argparse.Namespace):
        super().__init__(mod, worker, args)
        self.idle_rate: dict[str, float] = {}

    def warm_up(self) -> None:
        log("waiting for the worker (a short nap)...")
        h = self.mod.nap.run({"i": -1, "seconds": 0.01})
        wait_for_worker(self.check_worker, lambda: h.result(timeout=2), TimeoutError)
        log("warm-up: 20 naps, a 5-sleep run, a 5-event run")
        hs = [self.mod.nap.run({"i": i, "seconds": 0.05}) for i in range(20)]
        for h in hs:
            h.result(timeout=30)
        self.mod.many_sleeps.run({"n": 5, "seconds": 0.001}).result(timeout=30)
        self.event_run(5)

    def idle(self) -> dict[str, Any]:
        secs = self.args.idle_seconds
        log(f"idle background: Redis commands over {secs:g} s with nothing to do")
        self.idle_rate = idle_rate(self.r, secs)
        return {
            "seconds": round(secs, 2),
            "per_s": rounded(self.idle_rate),
            "total_per_s": round(sum(self.idle_rate.values()), 1),
        }

    def net(
        self, raw: Counter[str], elapsed: float, minus: Counter[str] | None = None
    ) -> dict[str, float]:
        """``raw`` minus the idle rate over ``elapsed`` and ``minus`` (the driver's own), >= 0."""
        net = net_of_idle(raw - (minus or Counter()), self.idle_rate, elapsed)
        return {k: max(0.0, v) for k, v in net.items()}

    # 1 -- timer accuracy ---------------------------------------------------------------------

    def timers(self) -> dict[str, Any]:
        n, secs = self.args.timer_runs, self.args.timer_seconds
        log(f"(1) timer accuracy: starting {n} runs of ctx.step.sleep('nap', {secs:g})")
        t0 = time.perf_counter()
        hs = [self.mod.nap.run({"i": i, "seconds": secs}) for i in range(n)]
        t_enq = time.perf_counter()
        log(f"  started {n} runs in {t_enq - t0:.2f} s; waiting for them")
        outs = []
        for i, h in enumerate(hs):
            outs.append(h.result(timeout=60 + secs))
            if (i + 1) % 100 == 0:
                log(f"  {i + 1}/{n} woke")
        wall = time.perf_counter() - t0
        self.check_worker()
        log("  reading the sleep steps back (one get_run per run)")
        wake, promote, resume, sleep_starts, claimed_at = [], [], [], [], []
        for h, out in zip(hs, outs, strict=True):
            info = self.flow.get_run(h.id)
            step = next(s for s in info.steps if s.name == "nap")
            if info.status != "succeeded" or step.status != "succeeded" or step.kind != "sleep":
                raise AssertionError(f"run {h.id}: {info.status}, step {step}")
            due = ts(step.started_at) + secs
            sleep_starts.append(ts(step.started_at))
            wake.append((out["woke"] - due) * 1000)
            promote.append((ts(step.finished_at) - due) * 1000)
            resume.append((out["woke"] - ts(step.finished_at)) * 1000)
            claimed_at.append(ts(step.finished_at))
        # lateness along the batch: tenths of the runs in order of their due time
        order = sorted(range(n), key=lambda k: sleep_starts[k])
        tenth = max(1, n // 10)
        by_tenth = [
            round(statistics.median(wake[k] for k in order[j : j + tenth]), 1)
            for j in range(0, n, tenth)
        ]
        woke = [out["woke"] for out in outs]
        res = {
            "n": n,
            "sleep_seconds": secs,
            "wall_seconds": round(wall, 3),
            "enqueue_seconds": round(t_enq - t0, 3),
            "sleep_start_spread_ms": round((max(sleep_starts) - min(sleep_starts)) * 1000, 1),
            "wake_lateness": summary(wake),
            "promoter_lateness": summary(promote),
            "promoted_to_woke": summary(resume),
            "early_wakes": sum(1 for x in wake if x < 0),
            "wake_lateness_p50_by_tenth_ms": by_tenth,
            "due_spread_ms": round((max(sleep_starts) - min(sleep_starts)) * 1000, 1),
            "resume_window_ms": round((max(woke) - min(claimed_at)) * 1000, 1),
            "resumes_per_s": round(n / max(1e-3, max(woke) - min(claimed_at)), 1),
        }
        w = res["wake_lateness"]
        log(
            f"  wake lateness p50 {w['p50_ms']:g} ms, p99 {w['p99_ms']:g} ms, max "
            f"{w['max_ms']:g} ms; {n} runs in {wall:.2f} s"
        )
        return res

    # 2a -- sequential sleeps -----------------------------------------------------------------

    def sleeps(self) -> dict[str, Any]:
        n, secs, reps = self.args.waits, self.args.sleep_seconds, self.args.reps
        rows = []
        for rep in range(reps):
            log(f"(2a) sleeps, run {rep + 1}/{reps}: {n} sequential sleeps of {secs * 1000:g} ms")
            before = command_calls(self.r)
            t0 = time.perf_counter()
            h = self.mod.many_sleeps.run({"n": n, "seconds": secs})
            out = h.result(timeout=120)
            wall = time.perf_counter() - t0
            raw = delta(command_calls(self.r), before)
            if out != n:
                raise AssertionError(f"many-sleeps returned {out!r}")
            info = self.flow.get_run(h.id)
            steps = sorted(
                (s for s in info.steps if s.kind == "sleep"), key=lambda s: ts(s.started_at)
            )
            if len(steps) != n or any(s.status != "succeeded" for s in steps):
                raise AssertionError(f"run {h.id}: {len(steps)} sleep steps, not all succeeded")
            promote = [(ts(s.finished_at) - ts(s.started_at) - secs) * 1000 for s in steps]
            resume = [
                (ts(b.started_at) - ts(a.finished_at)) * 1000 for a, b in itertools.pairwise(steps)
            ]
            run_ms = (ts(info.finished_at) - ts(info.started_at)) * 1000
            net = self.net(raw, wall)
            row = {
                "wall_ms": round(wall * 1000, 1),
                "run_ms": round(run_ms, 1),
                "overhead_per_wait_ms_client": round((wall * 1000 - n * secs * 1000) / n, 2),
                "overhead_per_wait_ms_worker": round((run_ms - n * secs * 1000) / n, 2),
                "promoter_delay": summary(promote),
                "resume": summary(resume),
                **per_wait(raw, net, n),
            }
            rows.append(row)
            log(
                f"  {row['overhead_per_wait_ms_client']:g} ms/wait (promoter delay p50 "
                f"{row['promoter_delay']['p50_ms']:g} ms, resume p50 {row['resume']['p50_ms']:g}"
                f" ms), {row['commands_per_wait']:g} Redis commands/wait"
            )
            self.check_worker()
        return {"waits": n, "sleep_seconds": secs, "reps": reps, "runs": rows, **medians(rows)}

    # 2b -- sequential events -----------------------------------------------------------------

    def event_run(self, n: int) -> dict[str, Any]:
        """One many-events run, the driver sending each event once the run waits for it."""
        poll = self.args.poll_ms / 1000
        h = self.mod.many_events.run(n)
        key = self.flow.store.keys.run(h.id)
        detected: list[float] = []
        send_ms: list[float] = []
        polls = 0
        t_start = time.perf_counter()
        deadline = time.monotonic() + 120
        for k in range(n):
            want = f"e:{k}"
            while True:
                polls += 1
                status, step = self.r.hmget(key, "status", "wait_step")
                if status == "waiting" and step == want:
                    break
                if status in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
                    raise AssertionError(f"run {h.id} is {status!s} (step {step!s}) before {want}")
                time.sleep(poll)
            detected.append(time.perf_counter())
            t0 = time.perf_counter()
            self.flow.send_event(h.id, "go", k)
            send_ms.append((time.perf_counter() - t0) * 1000)
        out = h.result(timeout=60)
        t_end = time.perf_counter()
        if out != n:
            raise AssertionError(f"many-events returned {out!r}")
        cycles = [(b - a) * 1000 for a, b in itertools.pairwise(detected)]
        return {
            "id": h.id,
            "wall": t_end - t_start,
            "cycles": cycles,
            "send_ms": send_ms,
            "polls": polls,
        }

    def events(self) -> dict[str, Any]:
        n, reps = self.args.waits, self.args.reps
        rows = []
        for rep in range(reps):
            log(f"(2b) events, run {rep + 1}/{reps}: {n} sequential wait_for_event + send_event")
            before = command_calls(self.r)
            t0 = time.perf_counter()
            got = self.event_run(n)
            wall = time.perf_counter() - t0
            raw = delta(command_calls(self.r), before)
            net = self.net(raw, wall, Counter({"hmget": got["polls"]}))
            cyc = summary(got["cycles"])
            row = {
                "wall_ms": round(wall * 1000, 1),
                "ms_per_wait_resume_cycle": round(statistics.fmean(got["cycles"]), 2),
                "cycle": cyc,
                "send_event_call": summary(got["send_ms"]),
                "driver_polls": got["polls"],
                **per_wait(raw, net, n),
            }
            rows.append(row)
            log(
                f"  {row['ms_per_wait_resume_cycle']:g} ms per cycle (p50 {cyc['p50_ms']:g}, p99 "
                f"{cyc['p99_ms']:g}), send_event p50 {row['send_event_call']['p50_ms']:g} ms, "
                f"{row['commands_per_wait']:g} Redis commands/wait"
            )
            self.check_worker()
        return {
            "waits": n,
            "poll_ms": self.args.poll_ms,
            "reps": reps,
            "runs": rows,
            **medians(rows),
        }

    # 2c -- round trips (MONITOR) -------------------------------------------------------------

    def round_trips(self) -> dict[str, Any]:
        """Top-level commands per wait, by command, from MONITOR (an extra, untimed run each)."""
        n, secs = self.args.waits, self.args.sleep_seconds
        sha_names = script_names(self.flow)
        url = self.mod.REDIS_URL
        log(f"(2c) round trips: MONITOR over {self.args.idle_seconds:g} s idle, then one run each")
        with MonitorTap(url, sha_names) as tap:
            t0 = time.perf_counter()
            time.sleep(self.args.idle_seconds)
            idle_s = time.perf_counter() - t0
        idle = {k: v / idle_s for k, v in tap.counts.items()}
        out: dict[str, Any] = {
            "idle_per_s": {k: round(v, 2) for k, v in sorted(idle.items())},
        }
        runs: list[tuple[str, Any]] = [
            ("sleeps", lambda: self.mod.many_sleeps.run({"n": n, "seconds": secs}).result(120)),
            ("events", lambda: self.event_run(n)),
        ]
        for label, once in runs:
            with MonitorTap(url, sha_names) as tap:
                t0 = time.perf_counter()
                got = once()
                elapsed = time.perf_counter() - t0
            minus = Counter({"hmget": got["polls"]}) if label == "events" else Counter()
            per = {}
            for k, v in tap.counts.items():
                x = (v - idle.get(k, 0.0) * elapsed - minus.get(k, 0)) / n
                if x >= 0.05:
                    per[k] = round(x, 2)
            out[label] = {"total_per_wait": round(sum(per.values()), 2), "by_command": per}
            log(f"  {label}: {out[label]['total_per_wait']:g} top-level commands per wait")
        return out


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float)]
    return {"median": {k: round(statistics.median(r[k] for r in rows), 2) for k in keys}}


# -- report ------------------------------------------------------------------------------------


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    t = res["timers"]
    metric = f"sleep({t['sleep_seconds']:g} s) wake lateness p99 (ms), {t['n']} runs at once"
    return target_rows(
        [(metric, t["wake_lateness"]["p99_ms"], "<=", TARGETS["timer_lateness_p99_ms"])]
    )


def fmt_cmds(by: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])) or "-"


def markdown(res: dict[str, Any]) -> str:
    t, s, e, idle, rt = res["timers"], res["sleeps"], res["events"], res["idle"], res["round_trips"]
    v, m, w, cfg = res["versions"], res["machine"], res["worker"], res["config"]
    sm, em = s["median"], e["median"]
    nap = f"sleep({s['sleep_seconds'] * 1000:g} ms)"
    wl, pl, rl = t["wake_lateness"], t["promoter_lateness"], t["promoted_to_woke"]
    machine_lines = md_machine(m)
    machine_lines[-1] += (
        f"; 1-min load average {m['noise']['loadavg_start']:g} before, "
        f"{m['noise']['loadavg_end']:g} after (other processes on the machine compete with the "
        "worker)"
    )
    lines = [
        "# celery_flow waits benchmark",
        "",
        f"- date: {res['date']}",
        *machine_lines,
        md_versions(v),
        md_worker(cfg, f", one timer promoter (its parent process); Redis: {cfg['redis']}"),
        f"- reproduce: `{cfg['command']}`",
        f"- worker exit code {w['exit_code']}; worker log: {w['warnings']} warning/error lines",
        f"- total benchmark time: {res['seconds_total']:g} s",
        "",
        *md_targets(res["targets"]),
        f"## 1. Timer accuracy: {t['n']} x `ctx.step.sleep('nap', {t['sleep_seconds']:g})` "
        "started at once",
        "",
        f"Wall time for all {t['n']}: {t['wall_seconds']:g} s (starting them: "
        f"{t['enqueue_seconds']:g} s; first to last sleep began {t['sleep_start_spread_ms']:g} ms"
        f" apart). Early wakes: {t['early_wakes']}.",
        "",
        "| lateness vs sleep started_at + duration | p50 ms | p99 ms | max ms | mean ms |",
        "|---|---:|---:|---:|---:|",
        f"| wake: step after the sleep starts (worker `time.time()`) | {wl['p50_ms']:g} | "
        f"{wl['p99_ms']:g} | {wl['max_ms']:g} | {wl['mean_ms']:g} |",
        f"| of which promoter: sleep step finished_at (timer claimed) | {pl['p50_ms']:g} | "
        f"{pl['p99_ms']:g} | {pl['max_ms']:g} | {pl['mean_ms']:g} |",
        f"| of which resume: claimed -> step after starts | {rl['p50_ms']:g} | {rl['p99_ms']:g} | "
        f"{rl['max_ms']:g} | {rl['mean_ms']:g} |",
        "",
        f"Along the batch (runs in order of due time, median wake lateness of each tenth, ms): "
        f"{', '.join(f'{x:g}' for x in t['wake_lateness_p50_by_tenth_ms'])}. The timers fell "
        f"due over {t['due_spread_ms']:g} ms; the worker resumed the {t['n']} runs within "
        f"{t['resume_window_ms']:g} ms of the first claim ({t['resumes_per_s']:g} resumes/s). "
        "Wake lateness beyond the promoter's share is time the resumed run's task message "
        "spent in the worker's queue (behind the starts of later runs and other resumes) and "
        "being executed: the worker's throughput, not the timer's precision.",
        "",
        "Step timestamps have ms resolution; started_at is the worker's clock when the step "
        "suspends, the due time is set by Redis' clock a moment later (same machine).",
        "",
        f"## 2. Suspend + resume per wait ({s['waits']} sequential waits in one run, median of "
        f"{s['reps']} runs)",
        "",
        f"| measure | {nap} | wait_for_event |",
        "|---|---:|---:|",
        f"| ms per wait: (run wall - sleep time) / N, caller clock | "
        f"{sm['overhead_per_wait_ms_client']:g} | - |",
        f"| ms per wait: same, worker side (RunInfo finished_at - started_at) | "
        f"{sm['overhead_per_wait_ms_worker']:g} | - |",
        f"| ms per wait/resume cycle: waiting on e:k -> waiting on e:k+1 (driver sends at once) "
        f"| - | {em['ms_per_wait_resume_cycle']:g} |",
        f"| Redis commands per wait (INFO commandstats, script-internal included, idle rate "
        f"and driver polls subtracted) | {sm['commands_per_wait']:g} | "
        f"{em['commands_per_wait']:g} |",
        f"| same, raw (nothing subtracted) | {sm['commands_per_wait_raw']:g} | "
        f"{em['commands_per_wait_raw']:g} |",
        "",
        "Sleep breakdown (median over runs of each run's p50): promoter delay (step finished_at "
        f"- started_at - {s['sleep_seconds'] * 1000:g} ms) {sm_p50(s, 'promoter_delay')} ms; "
        "resume (claimed -> next sleep "
        f"suspends: publish, pick-up, replay of the cached steps, suspend) "
        f"{sm_p50(s, 'resume')} ms.",
        "",
        f"Event breakdown: `send_event` call p50 {sm_p50(e, 'send_event_call')} ms (delivery + "
        f"claim + publish); cycle p50 {sm_p50(e, 'cycle')} ms, p99 "
        f"{statistics.median(r['cycle']['p99_ms'] for r in e['runs']):g} ms; the driver polls "
        f"the run hash every {e['poll_ms']:g} ms, which adds up to that much per cycle.",
        "",
        "The timer promoter (one per worker node) sleeps until the next timer it knows of, at "
        "most 100 ms; a timer armed by another process (the pool child that suspends the run) "
        "is found on the next pass. A run that sleeps again right after being promoted so "
        "re-arms its timer just after a pass, and waits nearly a full 100 ms period each time.",
        "",
        f"| per wait, by command | {nap} | wait_for_event |",
        "|---|---|---|",
        "| all commands (INFO commandstats, first run) | "
        f"{fmt_cmds(s['runs'][0]['by_command_per_wait'])} | "
        f"{fmt_cmds(e['runs'][0]['by_command_per_wait'])} |",
        f"| top-level commands per wait (MONITOR, one more run each; ~ round trips, a "
        f"pipeline counts each command) | {rt['sleeps']['total_per_wait']:g} | "
        f"{rt['events']['total_per_wait']:g} |",
        f"| top-level, by command | {fmt_cmds(rt['sleeps']['by_command'])} | "
        f"{fmt_cmds(rt['events']['by_command'])} |",
        "",
        f"Idle background subtracted: {idle['total_per_s']:g} commands/s ("
        f"{fmt_cmds(idle['per_s'])}), measured over {idle['seconds']:g} s.",
        "",
        "### Per run",
        "",
        "| run | sleeps: ms/wait (client) | promoter delay p50/max | resume p50/max | "
        "cmds/wait | events: ms/cycle | cycle p50/max | cmds/wait |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {i + 1} | {a['overhead_per_wait_ms_client']:g} | "
            f"{a['promoter_delay']['p50_ms']:g} / {a['promoter_delay']['max_ms']:g} | "
            f"{a['resume']['p50_ms']:g} / {a['resume']['max_ms']:g} | {a['commands_per_wait']:g}"
            f" | {b['ms_per_wait_resume_cycle']:g} | {b['cycle']['p50_ms']:g} / "
            f"{b['cycle']['max_ms']:g} | {b['commands_per_wait']:g} |"
            for i, (a, b) in enumerate(zip(s["runs"], e["runs"], strict=True))
        ),
        "",
        *md_log_excerpt("Worker log: warnings", w["excerpt"]),
    ]
    return "\n".join(lines)


def sm_p50(section: dict[str, Any], key: str) -> str:
    return f"{statistics.median(r[key]['p50_ms'] for r in section['runs']):g}"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arg_parser("python -m bench.bench_waits", __doc__)
    p.add_argument("--timer-runs", type=int, default=500, help="(1) runs started at once")
    p.add_argument("--timer-seconds", type=float, default=1.0, help="(1) sleep duration")
    p.add_argument("--waits", type=int, default=100, help="(2) sequential waits per run")
    p.add_argument("--sleep-seconds", type=float, default=0.001, help="(2a) each sleep (> 0)")
    p.add_argument("--reps", type=int, default=3, help="(2) runs of each kind")
    p.add_argument("--poll-ms", type=float, default=0.5, help="(2b) driver poll interval")
    p.add_argument("--idle-seconds", type=float, default=3.0, help="idle background window")
    add_run_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.timer_runs, args.waits, args.reps, args.idle_seconds = 50, 20, 1, 1.0
    if args.sleep_seconds < 0.001:
        p.error("--sleep-seconds must be >= 0.001 (a shorter sleep never suspends)")
    if args.waits < 2:
        p.error("--waits must be >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    clock = LoadClock()
    with worker_session(
        args.pool, args.concurrency, app="bench.waits_app", name="bench-waits", drop_prefix=True
    ) as session:
        bench = Bench(session.mod, session.worker, args)
        bench.warm_up()
        counts = (
            "timer_runs",
            "timer_seconds",
            "waits",
            "sleep_seconds",
            "reps",
            "poll_ms",
            "idle_seconds",
        )
        config = run_config(args, session, "bench.bench_waits", argv, counts)
        res = report_head(bench.r, config)
        res["timers"] = bench.timers()
        res["idle"] = bench.idle()
        res["sleeps"] = bench.sleeps()
        res["events"] = bench.events()
        res["round_trips"] = bench.round_trips()
        bench.check_worker()
    bench.r.close()
    res["worker"] = worker_log_summary(session.log_lines, session.worker_exit_code())
    clock.stamp(res)
    res["targets"] = targets(res)
    publish(args.out, "waits", res, clock, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
