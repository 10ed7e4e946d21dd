"""Memory benchmark: Redis bytes per run and per step, for sizing a celery_flow Redis.

Reproduce (from the repository root)::

    python -m bench.bench_memory                   # default: 1000 runs per case
    python -m bench.bench_memory --runs 5000       # more runs, smoother averages
    python -m bench.bench_memory --quick           # a smoke run with small counts
    CELERY_FLOW_BENCH_REDIS_URL=redis://host:6379/9 python -m bench.bench_memory

Set-up: a throwaway ``redis-server`` (``celery_flow.testing.RedisServer``) unless
``CELERY_FLOW_BENCH_REDIS_URL`` is set, and ONE real ``celery worker`` subprocess (``--pool``,
``--concurrency``; default prefork x 4) for the app defined in this very module (the worker
runs ``celery -A bench.bench_memory worker``). Its one workflow, ``mem-steps``, takes
``{"user_id", "email", "steps", "wait"}``, runs ``steps`` steps that each return a small JSON
object (about 50 bytes), then, with ``wait``, parks in ``ctx.step.sleep("wait", 1 h)``.

Cases: 0, 1 and 10 steps, each as a *terminal* run (succeeded: TTLs set, done marker, kept
for ``retention``) and as a *waiting* run (parked on a sleep: a timer entry, no TTL). For each
case, N runs are started and awaited (all succeeded, or all waiting, and the broker queue and
Celery's unacked hash drained), and the memory they added is measured two ways:

a. ``INFO memory`` ``used_memory`` after minus before, divided by N: what Redis really grew by,
   hash-table buckets and allocator rounding included. The keyspace's hash tables double in
   size at powers of two, so one case can absorb a resize another avoided: read the keys-based
   figure next to it.
b. ``MEMORY USAGE <key> SAMPLES 0``: the run's own keys (run hash, steps hash, done marker),
   averaged over a sample of runs, plus the growth of the shared indexes (``runs:created``,
   ``runs:status:<status>``, ``wf:<name>:runs``, ``timers``) divided by N.

Per step = (bytes per run with 10 steps - with 0 steps) / 10, for both figures.

Then, on the benchmark's own Redis only (never a shared one), the same cases again with
``CONFIG SET hash-max-listpack-value 1024`` (``--listpack-value``; 0 skips it): run records and
step records are longer than Redis' default 64-byte limit for the compact hash encoding, so
this shows what raising it saves.

Results go to ``bench/results/memory.json`` and ``bench/results/memory.md`` (printed at the
end); docs/operations/memory.md includes the markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bench._common import (
    RunClock,
    WorkerBench,
    add_run_args,
    arg_parser,
    log,
    md_machine,
    md_versions,
    md_worker,
    publish,
    report_head,
    results_only_app,
    run_config,
    wait_for_worker,
    worker_log_summary,
    worker_session,
)
from celery_flow import Context

# -- the app the worker runs (``celery -A bench.bench_memory worker``) --------------------------

app, flow = results_only_app("bench_memory", "celery-flow-bench-memory")
REDIS_URL, PREFIX = flow.redis_url, flow.prefix
WAIT_SECONDS = 3600.0  # waiting runs park far longer than the benchmark lasts


def small_result(user_id: str, k: int) -> dict[str, Any]:
    """A step's output: a small JSON object (about 50 bytes), like an id and a status."""
    return {"user_id": user_id, "step": k, "status": "ok"}


@flow.workflow(name="mem-steps")
def mem_steps(ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
    """``steps`` small steps, then (``wait``) a long durable sleep: the run being measured."""
    for k in range(int(spec["steps"])):
        ctx.step.run(f"step:{k}", small_result, spec["user_id"], k)
    if spec["wait"]:
        ctx.step.sleep("wait", WAIT_SECONDS)
    return {"user_id": spec["user_id"], "steps": spec["steps"]}


# -- the driver ------------------------------------------------------------------------------

STEP_COUNTS = (0, 1, 10)
CASES = [(state, steps) for state in ("terminal", "waiting") for steps in STEP_COUNTS]


class Bench(WorkerBench):
    def warm_up(self) -> None:
        log("waiting for the worker (a 1-step run)...")
        h = self.mod.mem_steps.run(self.spec(1, wait=False))
        wait_for_worker(self.check_worker, lambda: h.result(timeout=2), TimeoutError)
        # Past 128 entries a sorted set leaves its compact encoding for good: fill the indexes
        # first, so every case measures the per-entry cost of a Redis that has runs in it.
        n = self.args.warmup
        log(f"warm-up: {n} terminal and {n} waiting runs")
        for wait in (False, True):
            for _ in range(n):
                self.mod.mem_steps.run(self.spec(1, wait=wait))
        self.wait_for("succeeded", n + 1, timeout=120)
        self.wait_for("waiting", n, timeout=120)

    def spec(self, steps: int, *, wait: bool) -> dict[str, Any]:
        n = uuid.uuid4().hex[:8]
        return {"user_id": f"u-{n}", "email": f"user-{n}@example.com", "steps": steps, "wait": wait}

    def index_keys(self) -> list[str]:
        keys = self.flow.store.keys
        return [
            keys.created,
            *(keys.status(s) for s in ("succeeded", "waiting")),
            keys.workflow_runs("mem-steps"),
            keys.timers,
        ]

    def index_bytes(self) -> int:
        return sum(int(self.r.memory_usage(k, samples=0) or 0) for k in self.index_keys())

    def drained(self) -> bool:
        """No message left on the queue and none unacked (kombu's Redis transport keys)."""
        return int(self.r.llen(self.mod.PREFIX)) == 0 and int(self.r.hlen("unacked")) == 0

    def wait_for(self, status: str, count: int, timeout: float) -> None:
        index = self.flow.store.keys.status(status)
        deadline = time.monotonic() + timeout
        while int(self.r.zcard(index)) < count or not self.drained():
            self.check_worker()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} runs {status} not reached within {timeout} s")
            time.sleep(0.05)
        time.sleep(0.2)  # the last acks and connection buffers settle

    def case(self, state: str, steps: int) -> dict[str, Any]:
        n, wait = self.args.runs, state == "waiting"
        status = "waiting" if wait else "succeeded"
        index = self.flow.store.keys.status(status)
        target = int(self.r.zcard(index)) + n
        used_before, index_before = self.used_memory(), self.index_bytes()
        t0 = time.perf_counter()
        handles = [self.mod.mem_steps.run(self.spec(steps, wait=wait)) for _ in range(n)]
        self.wait_for(status, target, timeout=60 + n * (steps + 1) * 0.05)
        elapsed = time.perf_counter() - t0
        used_after, index_after = self.used_memory(), self.index_bytes()
        sample = [h.id for h in handles[:: max(1, n // self.args.sample)]]
        own = self.own_keys(sample)
        index_per_run = (index_after - index_before) / n
        row = {
            "state": state,
            "steps": steps,
            "runs": n,
            "seconds": round(elapsed, 2),
            "used_memory_per_run": round((used_after - used_before) / n, 1),
            "keys_per_run": round(own["total"] + index_per_run, 1),
            "index_per_run": round(index_per_run, 1),
            "own_keys": own,
        }
        log(
            f"{state:8} {steps:2} steps: {row['used_memory_per_run']:g} B/run (used_memory), "
            f"{row['keys_per_run']:g} B/run (keys) in {elapsed:.1f} s"
        )
        return row

    def used_memory(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    def own_keys(self, run_ids: Sequence[str]) -> dict[str, Any]:
        """Mean MEMORY USAGE of each of a run's own keys over ``run_ids``, and encodings."""
        keys = self.flow.store.keys
        kinds = {"run": keys.run, "steps": keys.steps, "done": keys.done}
        out: dict[str, Any] = {}
        for kind, build in kinds.items():
            sizes = [int(self.r.memory_usage(build(rid), samples=0) or 0) for rid in run_ids]
            out[kind] = round(statistics.fmean(sizes), 1)
            encodings = {self.r.object("encoding", build(rid)) for rid in run_ids[:20]}
            out[f"{kind}_encoding"] = ",".join(sorted(str(e) for e in encodings if e))
        out["total"] = round(sum(out[k] for k in kinds), 1)
        return out

    def redis_config(self) -> dict[str, str]:
        """The settings that decide the figures (hash encodings), where CONFIG GET is allowed.

        Redis 7 names them ``hash-max-listpack-*``, Redis 6.2 ``hash-max-ziplist-*``.
        """
        out: dict[str, str] = {}
        for name in ("hash-max-*-value", "hash-max-*-entries", "maxmemory-policy"):
            try:
                found = self.r.config_get(name)
            except Exception as exc:  # a managed Redis may refuse CONFIG
                out[name] = f"unknown ({type(exc).__name__})"
                continue
            # Redis 7 answers both spellings of a renamed setting: keep its own
            new = {k: v for k, v in found.items() if "ziplist" not in k}
            out.update({str(k): str(v) for k, v in (new or found).items()})
        return out

    def run_cases(self) -> dict[str, Any]:
        cases = [self.case(state, steps) for state, steps in CASES]
        return {"cases": cases, "per_step": per_step(cases)}

    def tuned(self, value: int) -> dict[str, Any]:
        """The cases again with ``hash-max-listpack-value`` raised (on our own Redis only)."""
        name = next(iter(k for k in self.redis_config() if k.endswith("-value")))
        before = self.r.config_get(name)[name]
        log(f"CONFIG SET {name} {value}; the cases again")
        self.r.config_set(name, value)
        try:
            return {"setting": name, "value": value, **self.run_cases()}
        finally:
            self.r.config_set(name, before)


def per_step(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """(bytes per run with 10 steps - with 0) / 10, per state and figure."""
    out: dict[str, dict[str, float]] = {}
    for state in ("terminal", "waiting"):
        by = {r["steps"]: r for r in rows if r["state"] == state}
        lo, hi = by[STEP_COUNTS[0]], by[STEP_COUNTS[-1]]
        span = STEP_COUNTS[-1] - STEP_COUNTS[0]
        out[state] = {
            figure: round((hi[figure] - lo[figure]) / span, 1)
            for figure in ("used_memory_per_run", "keys_per_run")
        }
    return out


def md_tables(rows: list[dict[str, Any]], steps: dict[str, dict[str, float]]) -> list[str]:
    """The bytes-per-run table and the bytes-per-step table of one set of cases."""
    return [
        "| run | steps | used_memory / run | keys / run | run hash | steps hash | done marker "
        "| indexes | encodings (run, steps) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {r['state']} | {r['steps']} | {r['used_memory_per_run']:g} | "
            f"{r['keys_per_run']:g} | {r['own_keys']['run']:g} | {r['own_keys']['steps']:g} | "
            f"{r['own_keys']['done']:g} | {r['index_per_run']:g} | "
            f"{r['own_keys']['run_encoding'] or '-'}, {r['own_keys']['steps_encoding'] or '-'} |"
            for r in rows
        ),
        "",
        f"Per step, (bytes per run with {STEP_COUNTS[-1]} steps - with {STEP_COUNTS[0]}) / "
        f"{STEP_COUNTS[-1] - STEP_COUNTS[0]}, for a step returning about 50 bytes of JSON:",
        "",
        "| run | used_memory / step | keys / step |",
        "|---|---:|---:|",
        *(
            f"| {state} | {s['used_memory_per_run']:g} | {s['keys_per_run']:g} |"
            for state, s in steps.items()
        ),
        "",
    ]


def markdown(res: dict[str, Any]) -> str:
    v, m, cfg, w = res["versions"], res["machine"], res["config"], res["worker"]
    conf = ", ".join(f"`{k} {v}`" for k, v in res["redis_config"].items())
    # The --8<-- markers (in HTML comments, invisible) let docs/operations/memory.md include
    # the set-up and the tables by name with pymdownx.snippets.
    lines = [
        "# celery_flow memory benchmark",
        "",
        "<!-- --8<-- [start:setup] -->",
        f"- date: {res['date']}",
        *md_machine(m),
        md_versions(v),
        md_worker(cfg, f"; Redis: {cfg['redis']}"),
        f"- Redis settings: {conf}",
        f"- reproduce: `{cfg['command']}`",
        f"- worker exit code {w['exit_code']}; worker log: {w['warnings']} warning/error lines",
        f"- total benchmark time: {res['seconds_total']:g} s",
        "<!-- --8<-- [end:setup] -->",
        "",
        "<!-- --8<-- [start:tables] -->",
        f"Each case: {cfg['counts']['runs']} runs of a workflow whose steps each return a small "
        "JSON object (about 50 bytes), after a warm-up of "
        f"{cfg['counts']['warmup']} runs of each kind; *terminal* runs succeeded (kept until "
        "`retention`), *waiting* runs are parked on a 1-hour `ctx.step.sleep`. Bytes per run: "
        "*used_memory* is the growth of Redis' `INFO memory` divided by the runs (what to "
        "provision); *keys* is the sum of `MEMORY USAGE` of the run's own keys plus the growth "
        "of the shared indexes per run (where the bytes go). Hash tables double in size at "
        "powers of two, so single figures move by a few hundred bytes from run to run.",
        "",
        "## Bytes per run and per step (Redis defaults)",
        "",
        *md_tables(res["cases"], res["per_step"]),
    ]
    tuned = res.get("tuned")
    if tuned:
        lines += [
            f"## The same with `{tuned['setting']} {tuned['value']}`",
            "",
            "Run and step records are longer than the default 64-byte limit of Redis' compact "
            "hash encoding (listpack); with the limit raised, the run hash and the steps hash "
            "stay compact:",
            "",
            *md_tables(tuned["cases"], tuned["per_step"]),
        ]
    lines.append("<!-- --8<-- [end:tables] -->")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arg_parser("python -m bench.bench_memory", __doc__)
    p.add_argument("--runs", type=int, default=1000, help="runs per case (default: 1000)")
    p.add_argument(
        "--sample", type=int, default=50, help="runs per case measured key by key (default: 50)"
    )
    p.add_argument(
        "--listpack-value",
        type=int,
        default=1024,
        help="then measure again with this hash-max-listpack-value (own Redis only; 0: skip)",
    )
    p.add_argument(
        "--warmup", type=int, default=200, help="runs of each kind started first (default: 200)"
    )
    add_run_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.sample, args.warmup = 100, 20, 150
    if args.runs < 10:
        p.error("--runs must be >= 10")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    clock = RunClock()
    with worker_session(
        args.pool,
        args.concurrency,
        app="bench.bench_memory",
        name="bench-memory",
        drop_prefix=True,
    ) as session:
        bench = Bench(session.mod, session.worker, args)
        bench.warm_up()
        counts = ("runs", "sample", "warmup")
        config = run_config(args, session, "bench.bench_memory", argv, counts)
        res = report_head(bench.r, config)
        res["redis_config"] = bench.redis_config()
        res.update(bench.run_cases())
        if args.listpack_value and not session.shared:
            res["tuned"] = bench.tuned(args.listpack_value)
        bench.check_worker()
    bench.r.close()
    res["worker"] = worker_log_summary(session.log_lines, session.worker_exit_code())
    clock.stamp(res)
    publish(args.out, "memory", res, clock, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
