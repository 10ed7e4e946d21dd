"""Gate benchmark: max_concurrency churn and handoff, gate overhead, rate-limit accuracy.

Reproduce (from the repository root)::

    python -m bench.bench_gate                     # or: make bench (runs both benchmarks)
    python -m bench.bench_gate --pool threads      # the other pool
    python -m bench.bench_gate --quick             # a smoke run with small counts
    CELERY_FLOW_BENCH_REDIS_URL=redis://host:6379/9 python -m bench.bench_gate

Set-up as in ``bench_core``: a throwaway ``redis-server`` unless ``CELERY_FLOW_BENCH_REDIS_URL``
is set, and ONE real ``celery worker`` subprocess for ``bench/app.py`` (``--pool``,
``--concurrency``; default prefork x 4), one queue, one Redis for broker and celery_flow state.
Executions are counted in the worker: ``bench/app.py`` connects a ``task_postrun`` handler
(only when this driver sets ``CELERY_FLOW_BENCH_COUNT_TASKS``) that HINCRBYs a Redis hash per
task name and per outcome, for the tasks of ``gate-serial`` and ``gate-rate`` only. After a
warm-up it measures:

1. churn: 200 runs of ``gate-serial`` (``max_concurrency=1``, one no-op step) started at once;
   Celery task executions of that workflow / runs (a waiter must cost no execution until its
   slot is handed over). A sampler polls ``flow.gate_status`` meanwhile (max holders seen), and
   the handlers' own timestamps show whether two ever overlapped.
2. handoff latency, same runs: next run's start - previous run's finish, runs sorted by start;
   from ``RunInfo.started_at`` / ``finished_at`` (Redis clock, ms resolution: the finalize
   script that frees the slot -> the start script of the next run), and from ``time.time()``
   taken inside the handler (handler return -> next handler entry, so it also covers the
   finalize round trip, the publish, broker delivery and the start script).
3. gate overhead: ``gate-wide`` (``max_concurrency=1000``: never blocks, but goes through the
   gate code) vs ``gate-free`` (same body, no limit): throughput of 500 runs started at once
   then awaited (median of rounds, alternating order), mean round trip of 500 sequential
   ``run().result()`` each (interleaved), and Redis commands per run from ``INFO
   commandstats`` deltas around sequential batches, idle background rate subtracted.
4. rate limit: 60 runs of ``gate-rate`` (``rate_limit="20/s"``) started at once: achieved start
   rate, max starts in any sliding 1-second window [t, t + 1 s), executions / runs, and how
   late each run started after the time the GCRA booked for it.

Results go to ``bench/results/gate.json`` and ``bench/results/gate.md`` (printed at the end).
"""

from __future__ import annotations

import argparse
import bisect
import functools
import itertools
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bench._common import (
    RunClock,
    WorkerBench,
    add_run_args,
    alternate,
    arg_parser,
    batch_row,
    command_calls,
    commands_per_run,
    delta,
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
    summary_ms,
    target_rows,
    timed_batch,
    wait_for_worker,
    worker_log_summary,
    worker_session,
)

TARGETS = {
    "churn_executions_per_run": 1.05,
    "handoff_p50_ms": 5.0,
    "max_concurrent_handlers": 1,
    "rate_max_starts_per_window": 20,  # = the workflow's rate_limit "20/s"
    "rate_executions_per_run": 1.05,
}
COUNTED_WORKFLOWS = ("gate-serial", "gate-rate")


def ms(dt: datetime | None) -> float:
    if dt is None:
        raise AssertionError("a run without started_at / finished_at")
    return dt.timestamp() * 1000


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """p50/p99/mean/min/max of values already in ms."""
    s = summary_ms([v / 1000 for v in values])
    s["min_ms"] = round(min(values), digits)
    return s


def max_in_window(times_ms: Sequence[float], window_ms: float) -> tuple[int, float]:
    """Most events in any half-open window [t, t + window), and that window's t.

    It suffices to try windows that start at an event.
    """
    ordered = sorted(times_ms)
    return max(
        ((bisect.bisect_left(ordered, t + window_ms) - i, t) for i, t in enumerate(ordered)),
        key=lambda ct: ct[0],
        default=(0, 0.0),
    )


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """Most intervals open at once (an end at the same instant as a start does not overlap)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    depth = best = 0
    for _, step in events:
        depth += step
        best = max(best, depth)
    return best


class GateSampler:
    """Polls ``flow.gate_status(key)`` in a thread; keeps the most holders / waiters seen."""

    def __init__(self, flow: Any, key: str, every: float = 0.005) -> None:
        self.flow, self.key, self.every = flow, key, every
        self.max_holders = self.max_waiting = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-gate-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            st = self.flow.gate_status(self.key)
            self.max_holders = max(self.max_holders, len(st.holders))
            self.max_waiting = max(self.max_waiting, st.waiting)
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self) -> GateSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class GateBench(WorkerBench):
    # -- helpers ---------------------------------------------------------------------------

    def executions(self) -> dict[str, int]:
        raw = self.r.hgetall(self.mod.EXECUTIONS_KEY)
        return {str(k): int(v) for k, v in raw.items()}

    def settled_executions(
        self, task: str, at_least: int, before: dict[str, int]
    ) -> dict[str, int]:
        """Executions of ``task`` (and by outcome) since ``before``, once the count is stable.

        The counter is bumped after each task body (task_postrun), so wait until it reaches
        ``at_least`` and then stays unchanged for 0.5 s (a late duplicate would show up).
        """
        deadline = time.monotonic() + 15
        last, stable_since = -1, time.monotonic()
        while True:
            now = self.executions()
            count = now.get(task, 0) - before.get(task, 0)
            if count != last:
                last, stable_since = count, time.monotonic()
            if count >= at_least and time.monotonic() - stable_since >= 0.5:
                break
            if time.monotonic() > deadline:
                log(f"  warning: {task}: {count} executions counted, expected >= {at_least}")
                break
            time.sleep(0.05)
        return {
            k.split("|", 1)[1] if "|" in k else "total": v - before.get(k, 0)
            for k, v in sorted(now.items())
            if k.split("|", 1)[0] == task and v - before.get(k, 0) > 0
        }

    def wait_results(self, handles: Sequence[Any], label: str, every: int = 100) -> list[Any]:
        out = []
        for i, h in enumerate(handles):
            out.append(h.result(timeout=120))
            if (i + 1) % every == 0 or i + 1 == len(handles):
                log(f"  {label}: {i + 1}/{len(handles)} done")
        return out

    # -- phases ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        log("waiting for the worker (a workflow run)...")
        wait_for_worker(
            self.check_worker, lambda: self.mod.gate_free.run(0).result(timeout=2), TimeoutError
        )
        n = self.args.warmup
        log(f"warm-up: {n} runs each of gate-free and gate-wide, 20 of gate-serial, 1 of gate-rate")
        hs = [self.mod.gate_free.run(i) for i in range(n)]
        hs += [self.mod.gate_wide.run(i) for i in range(n)]
        hs += [self.mod.gate_serial.run(i) for i in range(20)]
        hs.append(self.mod.gate_rate.run(0))
        for h in hs:
            h.result(timeout=60)
        for i in range(n // 4):
            self.mod.gate_free.run(i).result(timeout=30)
            self.mod.gate_wide.run(i).result(timeout=30)
        time.sleep(1.0)  # the rate limit's booking from the warm-up run is long past

    def churn(self) -> dict[str, Any]:
        n = self.args.churn_runs
        wf = self.mod.gate_serial
        before = self.executions()
        log(f"(1)+(2) churn and handoff: {n} runs of gate-serial (max_concurrency=1) at once")
        with GateSampler(self.flow, wf.name) as sampler:
            t0 = time.perf_counter()
            handles = [wf.run(i) for i in range(n)]
            t_enq, wall_enq = time.perf_counter(), time.time()
            outputs = self.wait_results(handles, "gate-serial", every=50)
            elapsed = time.perf_counter() - t0
        log(f"  all {n} done in {elapsed:.2f} s ({t_enq - t0:.2f} s starting them)")
        counts = self.settled_executions(wf.task_name, n, before)
        infos = [self.flow.get_run(h.id) for h in handles]
        if any(info.status != "succeeded" for info in infos):
            raise AssertionError("a gate-serial run did not succeed")
        end = self.flow.gate_status(wf.name)

        # (2) handoff from RunInfo (Redis clock, ms), runs sorted by start
        runs = sorted(
            zip(infos, outputs, strict=True),
            key=lambda io: (ms(io[0].started_at), io[1]["t0"]),
        )
        starts = [ms(i.started_at) for i, _ in runs]
        finishes = [ms(i.finished_at) for i, _ in runs]
        gaps = [starts[k + 1] - finishes[k] for k in range(n - 1)]
        # precise: handler timestamps (time.time() in the worker), sorted by handler entry
        precise = sorted(outputs, key=lambda o: o["t0"])
        pgaps = [(precise[k + 1]["t0"] - precise[k]["t1"]) * 1000 for k in range(n - 1)]
        pgaps_after = [
            (precise[k + 1]["t0"] - precise[k]["t1"]) * 1000
            for k in range(n - 1)
            if precise[k]["t1"] >= wall_enq
        ]
        order = [o["i"] for o in precise]
        fifo_violations = sum(1 for a, b in itertools.pairwise(order) if b < a)
        overlap_precise = max_overlap([(o["t0"], o["t1"]) for o in outputs])
        overlap_ms = max_overlap(list(zip(starts, finishes, strict=True)))
        durations = [f - s for s, f in zip(starts, finishes, strict=True)]
        span_s = (finishes[-1] - starts[0]) / 1000
        executions = counts.get("total", 0)
        res = {
            "n": n,
            "seconds": round(elapsed, 3),
            "enqueue_seconds": round(t_enq - t0, 3),
            "serial_runs_per_s": round(n / span_s, 1) if span_s else None,
            "executions": executions,
            "executions_by_outcome": {k: v for k, v in counts.items() if k != "total"},
            "executions_per_run": round(executions / n, 4),
            "gate_sampler": {
                "samples": sampler.samples,
                "max_holders": sampler.max_holders,
                "max_waiting": sampler.max_waiting,
            },
            "gate_after": {"holders": len(end.holders), "waiting": end.waiting},
            "max_concurrent_handlers_precise": overlap_precise,
            "max_concurrent_runs_ms": overlap_ms,
            "fifo_violations": fifo_violations,
            "run_duration_ms": summary(durations),
            "handoff_ms": summary(gaps),
            "handoff_ms_values": [round(g, 1) for g in gaps],
            "handoff_zero_ms_count": sum(1 for g in gaps if g <= 0),
            "handoff_precise_ms": summary(pgaps),
            "handoff_precise_after_enqueue_ms": summary(pgaps_after) if pgaps_after else None,
            "handoff_precise_ms_values": [round(g, 3) for g in pgaps],
        }
        log(
            f"  executions {executions}/{n} = {res['executions_per_run']:g} per run "
            f"{res['executions_by_outcome']}; max holders seen {sampler.max_holders}, "
            f"max concurrent handlers {overlap_precise}"
        )
        log(
            f"  handoff (RunInfo, ms) p50 {res['handoff_ms']['p50_ms']:g} p99 "
            f"{res['handoff_ms']['p99_ms']:g}; precise p50 "
            f"{res['handoff_precise_ms']['p50_ms']:g} p99 {res['handoff_precise_ms']['p99_ms']:g}"
        )
        self.check_worker()
        return res

    @staticmethod
    def start_batch(wf: Any, n: int) -> list[Any]:
        return [wf.run(i) for i in range(n)]

    @staticmethod
    def check_results(label: str, handles: list[Any]) -> None:
        for i, h in enumerate(handles):
            if h.result(timeout=120) != i:
                raise AssertionError(f"{label}: run {i} returned something else")

    def overhead(self) -> dict[str, Any]:
        n, rounds = self.args.overhead_runs, self.args.rounds
        wfs = {"gated": self.mod.gate_wide, "free": self.mod.gate_free}
        out: dict[str, Any] = {"n": n, "rounds": rounds}
        per_round: dict[str, list[dict[str, float]]] = {"gated": [], "free": []}
        for rnd in range(rounds):
            for label in alternate(("free", "gated"), rnd):
                log(f"(3) throughput, round {rnd + 1}/{rounds}, {label}: {n} runs at once")
                elapsed, enq = timed_batch(
                    functools.partial(self.start_batch, wfs[label], n),
                    functools.partial(self.check_results, label),
                )
                per_round[label].append(batch_row(n, elapsed, enq))
                log(f"  {label}: {n / elapsed:.0f} runs/s ({elapsed:.2f} s)")
                self.check_worker()
        out.update(median_rounds(per_round))
        out["throughput_ratio"] = ratio(out["gated"]["runs_per_s"], out["free"]["runs_per_s"])
        out["throughput_ms_per_run_diff"] = round(
            1000 / out["gated"]["runs_per_s"] - 1000 / out["free"]["runs_per_s"], 4
        )

        m = self.args.latency_iters
        log(f"(3) round trip: {m} sequential run().result() each, interleaved")
        rt: dict[str, list[float]] = {"gated": [], "free": []}
        for i in range(m):
            for label in ("gated", "free") if i % 2 == 0 else ("free", "gated"):
                t0 = time.perf_counter()
                wfs[label].run(i).result(timeout=30)
                rt[label].append(time.perf_counter() - t0)
            if (i + 1) % 250 == 0:
                log(f"  {i + 1}/{m}")
        lat = {label: summary_ms(v) for label, v in rt.items()}
        out["round_trip"] = {
            **lat,
            "mean_diff_ms": round(lat["gated"]["mean_ms"] - lat["free"]["mean_ms"], 4),
            "p50_diff_ms": round(lat["gated"]["p50_ms"] - lat["free"]["p50_ms"], 4),
            "mean_ratio": ratio(lat["gated"]["mean_ms"], lat["free"]["mean_ms"]),
        }
        log(
            f"  mean gated {lat['gated']['mean_ms']:g} ms, free {lat['free']['mean_ms']:g} ms "
            f"(diff {out['round_trip']['mean_diff_ms']:g} ms)"
        )
        out["commands"] = self.commands(wfs)
        return out

    def commands(self, wfs: dict[str, Any]) -> dict[str, Any]:
        n, idle = self.args.cmd_runs, self.args.idle_seconds
        log(f"(3) Redis commands: idle background over {idle:g} s, then {n} sequential runs each")
        rate = idle_rate(self.r, idle)
        out: dict[str, Any] = {"n": n, "idle_seconds": idle, "background_per_s": rounded(rate)}
        net_by: dict[str, dict[str, float]] = {}
        for label in ("gated", "free"):
            before = command_calls(self.r)
            t0 = time.perf_counter()
            for i in range(n):
                wfs[label].run(i).result(timeout=30)
            elapsed = time.perf_counter() - t0
            raw = delta(command_calls(self.r), before)
            net = net_of_idle(raw, rate, elapsed)
            net_by[label] = net
            out[label] = commands_per_run(elapsed, raw, net, n, signed=True)
            log(f"  {label}: {out[label]['commands_per_run']} commands per run")
        keys = set(net_by["gated"]) | set(net_by["free"])
        diff = {k: (net_by["gated"].get(k, 0.0) - net_by["free"].get(k, 0.0)) / n for k in keys}
        out["diff_per_run"] = round(
            out["gated"]["commands_per_run"] - out["free"]["commands_per_run"], 2
        )
        out["diff_by_command_per_run"] = {
            k: round(v, 2)
            for k, v in sorted(diff.items(), key=lambda kv: -abs(kv[1]))
            if abs(v) >= 0.3
        }
        return out

    def rate(self) -> dict[str, Any]:
        n = self.args.rate_runs
        wf = self.mod.gate_rate
        count, unit = wf.rate_limit.split("/")
        window_ms = {"s": 1000, "m": 60_000, "h": 3_600_000}[unit]
        limit = int(count)
        before = self.executions()
        log(f"(4) rate limit: {n} runs of gate-rate (rate_limit={wf.rate_limit!r}) at once")
        t0 = time.perf_counter()
        handles = [wf.run(i) for i in range(n)]
        t_enq = time.perf_counter()
        outputs = self.wait_results(handles, "gate-rate", every=20)
        elapsed = time.perf_counter() - t0
        counts = self.settled_executions(wf.task_name, n, before)
        infos = [self.flow.get_run(h.id) for h in handles]
        if any(info.status != "succeeded" for info in infos):
            raise AssertionError("a gate-rate run did not succeed")
        starts = sorted(ms(i.started_at) for i in infos)
        precise = sorted(o["t0"] * 1000 for o in outputs)
        # the time the GCRA booked for each delayed run (raw run hash; the first run has none)
        booked = {
            h.id: float(self.flow.store.load(h.id, with_steps=False)[0].get("run_at") or 0)
            for h in handles
        }
        lag = [ms(i.started_at) - booked[i.id] for i in infos if booked[i.id]]
        # when the limiter allowed each run to start: its booked time, or its admission
        allowed = [booked[i.id] or ms(i.created_at) for i in infos]
        worst, worst_at = max_in_window(starts, window_ms)
        origin = starts[0]
        timeline = sorted(
            (
                round(ms(i.started_at) - origin, 1),
                round(a - origin, 1),
                o["i"],
            )
            for i, a, o in zip(infos, allowed, outputs, strict=True)
        )
        spacing = sorted(booked.values())
        spacing = [b - a for a, b in itertools.pairwise(spacing) if a]
        span = (starts[-1] - starts[0]) / 1000
        executions = counts.get("total", 0)
        res = {
            "n": n,
            "rate_limit": wf.rate_limit,
            "limit_per_window": limit,
            "window_ms": window_ms,
            "seconds": round(elapsed, 3),
            "enqueue_seconds": round(t_enq - t0, 3),
            "start_span_s": round(span, 3),
            "achieved_starts_per_s": round((n - 1) / span, 2) if span else None,
            "max_starts_in_window": worst,
            "max_window_starts_at_ms": round(worst_at - origin, 1),
            "max_starts_in_window_precise": max_in_window(precise, window_ms)[0],
            "max_allowed_in_window": max_in_window(allowed, window_ms)[0],
            "executions": executions,
            "executions_by_outcome": {k: v for k, v in counts.items() if k != "total"},
            "executions_per_run": round(executions / n, 4),
            "booked_runs": len(lag),
            "booked_spacing_ms": summary(spacing) if spacing else None,
            "start_lag_after_booking_ms": summary(lag) if lag else None,
            "timeline_start_allowed_i": timeline,  # ms from the first start, in start order
        }
        log(
            f"  {res['achieved_starts_per_s']} starts/s over {span:.2f} s; max "
            f"{res['max_starts_in_window']} starts in any {window_ms} ms window "
            f"(precise {res['max_starts_in_window_precise']}); executions {executions}/{n}"
        )
        self.check_worker()
        return res


# -- report ------------------------------------------------------------------------------------


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    c, rt = res["churn"], res["rate"]
    rows: list[tuple[str, float, str, float]] = [
        (
            f"(1) Celery executions per run, max_concurrency=1, {c['n']} at once",
            c["executions_per_run"],
            "<=",
            TARGETS["churn_executions_per_run"],
        ),
        (
            "(2) handoff p50 (ms), RunInfo finished_at -> next started_at",
            c["handoff_ms"]["p50_ms"],
            "<=",
            TARGETS["handoff_p50_ms"],
        ),
        (
            "(2) handoff p50 (ms), precise: handler return -> next handler entry",
            c["handoff_precise_ms"]["p50_ms"],
            "<=",
            TARGETS["handoff_p50_ms"],
        ),
        (
            "(1) max concurrent gate-serial handlers (max_concurrency=1)",
            c["max_concurrent_handlers_precise"],
            "<=",
            TARGETS["max_concurrent_handlers"],
        ),
        (
            f"(4) max starts in any 1 s window, rate_limit {rt['rate_limit']}",
            rt["max_starts_in_window"],
            "<=",
            TARGETS["rate_max_starts_per_window"],
        ),
        (
            "(4) Celery executions per run, rate-limited",
            rt["executions_per_run"],
            "<=",
            TARGETS["rate_executions_per_run"],
        ),
    ]
    return target_rows(rows)


def markdown(res: dict[str, Any]) -> str:
    c, o, rt, cfg = res["churn"], res["overhead"], res["rate"], res["config"]
    v, m, w = res["versions"], res["machine"], res["worker"]
    cmd, lat = o["commands"], o["round_trip"]
    after = c["handoff_precise_after_enqueue_ms"]
    ideal_span = (rt["n"] - 1) * rt["window_ms"] / rt["limit_per_window"] / 1000

    def by_cmd(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {x:+g}" for k, x in d.items()) or "-"

    lines = [
        "# celery_flow gate benchmark",
        "",
        f"- date: {res['date']}",
        *md_machine(m),
        md_versions(v, f" ({res['source']})"),
        md_worker(cfg, f"; Redis: {cfg['redis']}"),
        "- executions counted in the worker by a `task_postrun` handler (bench/app.py, enabled "
        "by `CELERY_FLOW_BENCH_COUNT_TASKS`): one HINCRBY per execution of a `gate-serial` / "
        "`gate-rate` task, whatever its outcome (the outcome is counted too)",
        f"- reproduce: `{cfg['command']}` (total {res['seconds_total']:g} s)",
        f"- worker exit code {w['exit_code']}; worker log: {w['warnings']} warning/error lines",
        "",
        *md_targets(res["targets"]),
        f"## (1) Churn and (2) handoff: {c['n']} runs of `max_concurrency=1` at once",
        "",
        f"- Celery executions: {c['executions']} for {c['n']} runs = "
        f"{c['executions_per_run']:g} per run; by outcome: "
        f"{', '.join(f'{k} {x}' for k, x in c['executions_by_outcome'].items())}",
        f"- semaphore: max concurrent handlers {c['max_concurrent_handlers_precise']} (handler "
        f"timestamps); max gate holders seen by `flow.gate_status` "
        f"{c['gate_sampler']['max_holders']} ({c['gate_sampler']['samples']} samples), max "
        f"waiting {c['gate_sampler']['max_waiting']}"
        f"; after the batch: {c['gate_after']['holders']} holders, {c['gate_after']['waiting']} "
        f"waiting; FIFO order violations {c['fifo_violations']}",
        f"- the batch took {c['seconds']:g} s ({c['enqueue_seconds']:g} s of it starting the "
        f"runs): {c['serial_runs_per_s']:g} serial runs/s; a run lasts "
        f"{c['run_duration_ms']['p50_ms']:g} ms p50 (RunInfo started_at -> finished_at)",
        "",
        "| handoff: previous finish -> next start (ms) | p50 | p99 | mean | min | max |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {label} | {s['p50_ms']:g} | {s['p99_ms']:g} | {s['mean_ms']:g} | "
            f"{s['min_ms']:g} | {s['max_ms']:g} |"
            for label, s in (
                (
                    "RunInfo (Redis clock, ms resolution; slot freed -> next start script)",
                    c["handoff_ms"],
                ),
                (
                    "precise (worker time.time(): handler return -> next handler entry)",
                    c["handoff_precise_ms"],
                ),
                *((("precise, only after the last `.run()` returned", after),) if after else ()),
            )
        ),
        "",
        f"RunInfo gaps of 0 ms (same millisecond): {c['handoff_zero_ms_count']} of {c['n'] - 1}.",
        "",
        "## (3) Gate overhead: `max_concurrency=1000` (never blocking) vs no limit",
        "",
        "| measure | gated | free | gated/free | gated - free |",
        "|---|---:|---:|---:|---:|",
        f"| throughput, {o['n']} runs at once, median of {o['rounds']} rounds (runs/s) | "
        f"{o['gated']['runs_per_s']:g} | {o['free']['runs_per_s']:g} | "
        f"{o['throughput_ratio']:g} | {o['throughput_ms_per_run_diff']:+g} ms/run |",
        f"| round trip mean (ms), {lat['gated']['n']} sequential each, interleaved | "
        f"{lat['gated']['mean_ms']:g} | {lat['free']['mean_ms']:g} | {lat['mean_ratio']:g} | "
        f"{lat['mean_diff_ms']:+g} ms |",
        f"| round trip p50 (ms) | {lat['gated']['p50_ms']:g} | {lat['free']['p50_ms']:g} | "
        f"{ratio(lat['gated']['p50_ms'], lat['free']['p50_ms']):g} | {lat['p50_diff_ms']:+g} ms |",
        f"| round trip p99 (ms) | {lat['gated']['p99_ms']:g} | {lat['free']['p99_ms']:g} | "
        f"{ratio(lat['gated']['p99_ms'], lat['free']['p99_ms']):g} | "
        f"{lat['gated']['p99_ms'] - lat['free']['p99_ms']:+.3f} ms |",
        f"| Redis commands per run (INFO commandstats, incl. script-internal, idle rate "
        f"subtracted; {cmd['n']} sequential runs) | {cmd['gated']['commands_per_run']:g} | "
        f"{cmd['free']['commands_per_run']:g} | "
        f"{ratio(cmd['gated']['commands_per_run'], cmd['free']['commands_per_run']):g} | "
        f"{cmd['diff_per_run']:+g} |",
        "",
        f"Extra commands per run with the gate (|diff| >= 0.3): "
        f"{by_cmd(cmd['diff_by_command_per_run'])}.",
        "",
        f"## (4) Rate limit: {rt['n']} runs of `rate_limit={rt['rate_limit']!r}` at once",
        "",
        f"- achieved start rate {rt['achieved_starts_per_s']:g} starts/s (starts spread over "
        f"{rt['start_span_s']:g} s; ideal {ideal_span:g} s)",
        f"- max starts in any {rt['window_ms']} ms window [t, t + {rt['window_ms']} ms): "
        f"{rt['max_starts_in_window']} by RunInfo.started_at (Redis clock), "
        f"{rt['max_starts_in_window_precise']} by handler entry time (limit "
        f"{rt['limit_per_window']}); the worst window opens {rt['max_window_starts_at_ms']:g} ms "
        f"after the first start. By the times the limiter allowed (GCRA booking, or admission "
        f"for a run not delayed): {rt['max_allowed_in_window']} in any window",
        f"- Celery executions: {rt['executions']} for {rt['n']} runs = "
        f"{rt['executions_per_run']:g} per run; by outcome: "
        f"{', '.join(f'{k} {x}' for k, x in rt['executions_by_outcome'].items())}",
    ]
    if rt["booked_spacing_ms"] and rt["start_lag_after_booking_ms"]:
        bs, lg = rt["booked_spacing_ms"], rt["start_lag_after_booking_ms"]
        lines.append(
            f"- {rt['booked_runs']} runs were delayed by the GCRA; booked times are "
            f"{bs['p50_ms']:g} ms apart (min {bs['min_ms']:g}, max {bs['max_ms']:g}); a run "
            f"started {lg['p50_ms']:g} ms p50 / {lg['p99_ms']:g} ms p99 / {lg['max_ms']:g} ms max "
            "after its booked time (timer promoter + publish + delivery)"
        )
    lines.append("")
    lines += md_log_excerpt("Worker log: warnings", w["excerpt"])
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arg_parser("python -m bench.bench_gate", __doc__)
    p.add_argument("--churn-runs", type=int, default=200, help="(1)(2) runs started at once")
    p.add_argument("--overhead-runs", type=int, default=500, help="(3) runs per side and round")
    p.add_argument("--rounds", type=int, default=3, help="(3) throughput rounds")
    p.add_argument("--latency-iters", type=int, default=500, help="(3) round trips per side")
    p.add_argument("--cmd-runs", type=int, default=200, help="(3) runs per side for commands")
    p.add_argument("--idle-seconds", type=float, default=2.0, help="(3) idle window")
    p.add_argument("--rate-runs", type=int, default=60, help="(4) runs started at once")
    p.add_argument("--warmup", type=int, default=100, help="warm-up runs per workflow")
    add_run_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.churn_runs, args.overhead_runs, args.rounds = 50, 100, 1
        args.latency_iters, args.cmd_runs, args.idle_seconds = 50, 50, 1.0
        args.rate_runs, args.warmup = 25, 20
    if args.churn_runs < 2 or args.rate_runs < 2:
        p.error("--churn-runs and --rate-runs must be >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    clock = RunClock(track_source=True)
    count_tasks = ",".join(f"celery_flow.{name}" for name in COUNTED_WORKFLOWS)
    with worker_session(
        args.pool, args.concurrency, {"CELERY_FLOW_BENCH_COUNT_TASKS": count_tasks}
    ) as session:
        bench = GateBench(session.mod, session.worker, args)
        bench.warm_up()
        counts = (
            "churn_runs",
            "overhead_runs",
            "rounds",
            "latency_iters",
            "cmd_runs",
            "idle_seconds",
            "rate_runs",
            "warmup",
        )
        config = run_config(args, session, "bench.bench_gate", argv, counts)
        res = report_head(bench.r, config, clock.source)
        res["churn"] = bench.churn()
        res["overhead"] = bench.overhead()
        res["rate"] = bench.rate()
        bench.check_worker()
    res["worker"] = worker_log_summary(session.log_lines, session.worker_exit_code())
    clock.stamp(res)
    res["targets"] = targets(res)
    publish(args.out, "gate", res, clock, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
