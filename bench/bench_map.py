"""Map benchmark: ``ctx.step.map`` fan-out/fan-in vs a plain Celery ``chord``, on one worker.

Reproduce (from the repository root)::

    python -m bench.bench_map                      # or: make bench
    python -m bench.bench_map --pool threads       # the other pool
    python -m bench.bench_map --quick              # a smoke run with small counts
    CELERY_FLOW_BENCH_REDIS_URL=redis://host:6379/9 python -m bench.bench_map

Set-up as in ``bench_core``: a throwaway ``redis-server`` unless ``CELERY_FLOW_BENCH_REDIS_URL``
is set, and ONE real ``celery worker`` subprocess for ``bench/app.py`` (``--pool``,
``--concurrency``; default prefork x 4), one queue, one Redis for broker, result backend and
celery_flow state. After a warm-up it measures:

1. wall time: the workflow ``map-noop`` (``ctx.step.map`` of the module-level no-op
   ``bench.app.identity`` over 10,000 items, ``chunk_size=100``), from ``.run()`` to
   ``handle.result()``, vs a raw Celery ``chord`` of 10,000 ``bench.noop`` tasks (Redis result
   backend) with the callback ``bench.count_results``, from ``apply_async()`` to the callback's
   ``AsyncResult.get(follow_parents=False)`` (see ``MapBench.run_chord``; the 10,000
   signatures are built before the clock starts). Median of
   rounds, the order alternating each round; ratio map/chord. The same map with
   ``chunk_size=20`` (the default) runs in every round too, for information.
2. Redis memory per item held once every item has a result: ``INFO memory`` ``used_memory``
   just before ``.run()`` and just after ``result()`` (a finished run keeps its keys for
   ``retention``, so this is the fan-out's peak footprint), / items, and the same for
   ``used_memory_dataset`` (without client buffers); plus ``MEMORY USAGE``
   (exact, ``SAMPLES 0``) of the run's maps hash (``flow.store.keys.maps(run_id)``) / items.
   For the chord: the same ``used_memory`` delta and the sum of ``MEMORY USAGE`` of the 10,000
   result-backend keys (``celery-task-meta-<id>``).
3. Redis commands per item: ``INFO commandstats`` deltas around the same timed runs, idle
   background rate subtracted (script-internal commands included), and the Celery messages
   published (``LPUSH`` calls); then, from a MONITOR around one more run of each (the chord
   with fewer tasks: MONITOR slows it too much), top-level commands (~ round trips) and the
   ``LPUSH`` calls to the benchmark's queue: the run's own task messages plus one per chunk.
4. the longest single Redis command during each timed run (SLOWLOG, threshold 1 ms; only on
   the throwaway Redis, whose config we may change): ``map_start`` stores every item in one
   Lua call, so it blocks Redis for a time proportional to the number of items.

Wall time, memory and commands of 1-3 come from the same timed runs: ``INFO`` is read just
before and just after each one, outside the timed window.

Results go to ``bench/results/map.json`` and ``bench/results/map.md`` (printed at the end).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import redis
from celery import chord
from celery.exceptions import TimeoutError as CeleryTimeoutError

from bench._common import (
    MONITOR_STOP,
    MonitorThread,
    RunClock,
    WorkerBench,
    add_run_args,
    alternate,
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
    publish,
    ratio,
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

TARGETS = {"map_chord_ratio": 1.2}  # map wall time / chord wall time, lower is better
SLOWLOG_US = 1000  # SLOWLOG threshold on the throwaway Redis: commands over 1 ms
IGNORED_SLOW = {"info", "memory|usage", "memory", "config", "config|set", "monitor"}
KINDS = ("map", "chord", "map_default")  # run order; map: --chunk-size; map_default: 20
COLUMNS = ("map", "map_default", "chord")  # report order


# -- MONITOR -----------------------------------------------------------------------------------

_MONITOR_LINE = re.compile(rb'^[\d.]+ \[\d+ ([^\]]*)\] "([^"]*)"(?: "((?:[^"\\]|\\.)*)")?')


@dataclass
class MonitorTap(MonitorThread):
    """Top-level commands (not script-internal ones) seen by MONITOR, counted in a thread.

    Parses only the command name and its first argument (the key) of each line, so it keeps
    up with a chord's 10,000 task messages. ``pushes`` counts LPUSH/RPUSH by key.
    """

    commands: Counter[str] = field(default_factory=Counter)
    pushes: Counter[str] = field(default_factory=Counter)
    _join_seconds: float = 30

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        conn = client.connection_pool.get_connection("MONITOR")
        try:
            conn.send_command("MONITOR")  # type: ignore[no-untyped-call]
            conn.read_response()  # OK
            self._ready.set()
            while True:
                line = conn.read_response()
                if not isinstance(line, bytes):
                    continue
                m = _MONITOR_LINE.match(line)
                if not m or m.group(1) == b"lua":
                    continue
                name = m.group(2).decode().lower()
                arg = (m.group(3) or b"").decode(errors="replace")
                if name == "echo" and arg == MONITOR_STOP:
                    break
                if name == "evalsha":
                    name = script_label(self.sha_names, arg)
                elif name in ("lpush", "rpush"):
                    self.pushes[arg] += 1
                self.commands[name] += 1
        finally:
            conn.disconnect()  # type: ignore[no-untyped-call]
            client.close()


# -- phases ------------------------------------------------------------------------------------


class MapBench(WorkerBench):
    def __init__(self, mod: ModuleType, worker: subprocess.Popen[bytes], args: argparse.Namespace):
        super().__init__(mod, worker, args)
        self.task_ids: list[str] = []  # every task id, for cleanup on a shared Redis
        self.group_ids: list[str] = []  # every chord's group id, likewise
        self.idle_rate: dict[str, float] = {}
        self.slowlog = False  # True once we may set the throwaway Redis' slowlog threshold
        self.sha_names = script_names(self.flow)

    def enable_slowlog(self) -> None:
        """Log every command over 1 ms (only on our own throwaway Redis: a config change)."""
        self.r.config_set("slowlog-log-slower-than", SLOWLOG_US)
        self.r.config_set("slowlog-max-len", 1024)
        self.slowlog = True

    def slowest(self, limit: int = 5) -> list[dict[str, Any]]:
        """The longest commands in SLOWLOG (server-side duration), labelled."""
        out = []
        for e in self.r.slowlog_get(1024):
            raw = e["command"]
            parts = (raw.decode(errors="replace") if isinstance(raw, bytes) else raw).split(" ")
            name = parts[0].lower()
            if name == "evalsha" and len(parts) > 1:
                name = script_label(self.sha_names, parts[1])
            if name.startswith("slowlog") or name in IGNORED_SLOW:
                continue
            out.append({"command": name, "ms": round(e["duration"] / 1000, 2)})
        return sorted(out, key=lambda x: -x["ms"])[:limit]

    def used_memory(self) -> tuple[int, int]:
        """(used_memory, used_memory_dataset): the latter leaves out client buffers & co."""
        info = self.r.info("memory")
        return int(info["used_memory"]), int(info["used_memory_dataset"])

    def chunk_size(self, kind: str) -> int:
        return int(self.args.chunk_size if kind == "map" else self.args.default_chunk_size)

    # -- one map / one chord ---------------------------------------------------------------

    def run_map(self, n: int, chunk_size: int, label: str) -> tuple[float, str]:
        """One ``map-noop`` run; (seconds from .run() to result(), run id)."""
        t0 = time.perf_counter()
        h = self.mod.map_noop.run({"n": n, "chunk_size": chunk_size})
        maps_key = self.flow.store.keys.maps(h.id)

        def progress() -> None:
            done, chunks = (
                v if isinstance(v, str) else "?"
                for v in self.r.hmget(maps_key, "map\x1fdone", "map\x1fchunks")
            )
            log(f"  {label}: {done}/{chunks} chunks done")

        out = self.await_result(lambda: h.result(timeout=2), TimeoutError, t0, progress)
        elapsed = time.perf_counter() - t0
        self.check_sum(label, out, n)
        return elapsed, h.id

    def await_result(
        self,
        get: Callable[[], Any],
        timeout_error: type[Exception],
        t0: float,
        progress: Callable[[], None],
    ) -> Any:
        """``get()`` until it returns; on each of its timeouts, check the worker and log."""
        while True:
            try:
                return get()
            except timeout_error:
                self.check_worker()
                progress()
                if time.perf_counter() - t0 > self.args.timeout:
                    raise

    @staticmethod
    def check_sum(label: str, out: Any, n: int) -> None:
        expected = {"n": n, "sum": n * (n - 1) // 2}
        if out != expected:
            raise AssertionError(f"{label}: returned {out!r}, expected {expected!r}")

    def run_chord(self, n: int, label: str) -> tuple[float, list[str]]:
        """One chord of n ``bench.noop``; (seconds from apply_async to the callback's result,
        ids of the header tasks, the callback and the group).

        The callback is awaited with ``get(follow_parents=False)``: with the default ``True``,
        every wake-up of ``get()`` re-checks all n header results of the parent group
        (``GroupResult.maybe_throw``), O(n^2) in the caller, which alone takes minutes at 10k.
        """
        c = chord([self.mod.noop.s(i) for i in range(n)], self.mod.count_results.s())
        t0 = time.perf_counter()
        res = c.apply_async()
        out = self.await_result(
            lambda: res.get(timeout=5, follow_parents=False),
            CeleryTimeoutError,
            t0,
            lambda: log(f"  {label}: waiting for the callback ({time.perf_counter() - t0:.0f} s)"),
        )
        elapsed = time.perf_counter() - t0
        self.check_sum(label, out, n)
        ids = [r.id for r in res.parent.results] if res.parent is not None else []
        ids.append(res.id)
        if res.parent is not None:
            ids.append(res.parent.id)
        self.task_ids.extend(ids)
        if res.parent is not None:
            self.group_ids.append(res.parent.id)
        return elapsed, ids

    def run_kind(self, kind: str, n: int, label: str) -> float:
        if kind == "chord":
            return self.run_chord(n, label)[0]
        return self.run_map(n, self.chunk_size(kind), label)[0]

    def label(self, kind: str) -> str:
        return "chord" if kind == "chord" else f"map chunk_size {self.chunk_size(kind)}"

    def measure(self, kind: str, n: int) -> dict[str, Any]:
        """One timed run with used_memory and commandstats taken just around it."""
        label = self.label(kind)
        if self.slowlog:
            self.r.slowlog_reset()
        mem0, cmd0, c0 = self.used_memory(), command_calls(self.r), time.perf_counter()
        if kind == "chord":
            seconds, ids = self.run_chord(n, label)
        else:
            seconds, run_id = self.run_map(n, self.chunk_size(kind), label)
        mem1, cmd1 = self.used_memory(), command_calls(self.r)
        window = time.perf_counter() - c0
        raw = delta(cmd1, cmd0)
        net = net_of_idle(raw, self.idle_rate, window)
        out: dict[str, Any] = {
            "seconds": round(seconds, 3),
            "used_memory_delta_bytes": mem1[0] - mem0[0],
            "used_memory_dataset_delta_bytes": mem1[1] - mem0[1],
            "commands": round(sum(net.values())),
            "commands_raw": sum(raw.values()),
            "by_command": {k: round(v, 1) for k, v in sorted(net.items())},
            "slowest_commands": self.slowest() if self.slowlog else None,
        }
        if kind == "chord":  # MEMORY USAGE (exact) of every result-backend key it left
            backend = self.mod.app.backend
            pipe = self.r.pipeline(transaction=False)
            for tid in ids:
                pipe.memory_usage(backend.get_key_for_task(tid), samples=0)
            sizes = [int(x or 0) for x in pipe.execute()]
            out["result_keys"] = sum(1 for x in sizes if x)
            out["result_keys_bytes"] = sum(sizes)
        else:
            keys = self.flow.store.keys
            run_keys = {
                "run": keys.run(run_id),
                "steps": keys.steps(run_id),
                "done": keys.done(run_id),
                "events": keys.events(run_id),
                "children": keys.children(run_id),
                "maps": keys.maps(run_id),
                "mapdone": keys.mapdone(run_id),
            }
            usage = {
                name: int(self.r.memory_usage(key, samples=0) or 0)
                for name, key in run_keys.items()
            }
            out["run_id"] = run_id
            out["maps_hash_bytes"] = usage["maps"]
            out["maps_hash_fields"] = int(self.r.hlen(run_keys["maps"]))
            out["maps_hash_encoding"] = str(self.r.object("encoding", run_keys["maps"]))
            out["run_keys_bytes"] = {k: v for k, v in usage.items() if v}
        return out

    # -- phases ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        log("waiting for the worker (a plain task)...")

        def probe() -> None:
            res = self.mod.noop.delay(0)
            self.task_ids.append(res.id)
            res.get(timeout=2)

        wait_for_worker(self.check_worker, probe)
        n = self.args.warmup
        log(f"warm-up: maps and a chord of {n} items each, twice")
        for _ in range(2):
            for kind in KINDS:
                self.run_kind(kind, n, f"warm-up {self.label(kind)}")

    def idle(self) -> dict[str, float]:
        idle = self.args.idle_seconds
        log(f"idle background Redis commands over {idle:g} s (subtracted from the deltas)")
        self.idle_rate = idle_rate(self.r, idle)
        return rounded(self.idle_rate)

    def rounds(self) -> dict[str, Any]:
        """(1), (2) and (3) from the same runs: wall time, used_memory and commandstats."""
        n, rounds = self.args.items, self.args.rounds
        samples: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        for rnd in range(rounds):
            for kind in alternate(KINDS, rnd):
                label = self.label(kind)
                log(f"round {rnd + 1}/{rounds}: {label}, {n} items")
                time.sleep(0.3)  # let the previous run's last acks land
                s = self.measure(kind, n)
                samples[kind].append(s)
                log(
                    f"  {label}: {s['seconds']:.3f} s ({n / s['seconds']:.0f} items/s), "
                    f"used_memory +{s['used_memory_delta_bytes'] / n:.0f} B/item (dataset "
                    f"+{s['used_memory_dataset_delta_bytes'] / n:.0f}), "
                    f"{s['commands'] / n:.2f} Redis commands/item"
                )
                self.check_worker()
        out: dict[str, Any] = {"n": n, "rounds": rounds}
        for kind, rows in samples.items():
            med = statistics.median(r["seconds"] for r in rows)
            by_cmd: Counter[str] = Counter()
            for r in rows:
                by_cmd.update(r["by_command"])
            summary: dict[str, Any] = {
                "seconds": med,
                "items_per_s": round(n / med, 1),
                "rounds_seconds": [r["seconds"] for r in rows],
                "used_memory_bytes_per_item": round(
                    statistics.median(r["used_memory_delta_bytes"] for r in rows) / n, 1
                ),
                "used_memory_dataset_bytes_per_item": round(
                    statistics.median(r["used_memory_dataset_delta_bytes"] for r in rows) / n, 1
                ),
                "commands_per_item": round(statistics.median(r["commands"] for r in rows) / n, 2),
                "by_command_per_item": {
                    k: round(v / n / rounds, 3)
                    for k, v in sorted(by_cmd.items())
                    if v / n / rounds >= 0.005
                },
                "runs": rows,
            }
            worst: dict[str, float] = {}  # the longest call of each command over the rounds
            for c in (c for r in rows for c in (r["slowest_commands"] or [])):
                worst[c["command"]] = max(worst.get(c["command"], 0.0), c["ms"])
            summary["slowest_commands"] = [
                {"command": k, "ms": v} for k, v in sorted(worst.items(), key=lambda kv: -kv[1])
            ][:3] or None
            summary["messages_published_lpush"] = round(
                statistics.median(r["by_command"].get("lpush", 0) for r in rows)
            )
            last = rows[-1]
            if kind == "chord":
                summary["result_keys"] = last["result_keys"]
                summary["result_keys_bytes_per_item"] = round(last["result_keys_bytes"] / n, 1)
            else:
                summary["chunk_size"] = self.chunk_size(kind)
                summary["chunks"] = math.ceil(n / self.chunk_size(kind))
                summary["maps_hash_bytes_per_item"] = round(last["maps_hash_bytes"] / n, 1)
                summary["maps_hash_fields"] = last["maps_hash_fields"]
                summary["maps_hash_encoding"] = last["maps_hash_encoding"]
                summary["run_keys_bytes"] = last["run_keys_bytes"]
            out[kind] = summary
        out["ratio"] = ratio(out["map"]["seconds"], out["chord"]["seconds"])
        out["ratio_default_chunk"] = ratio(out["map_default"]["seconds"], out["chord"]["seconds"])
        return out

    def monitor(self) -> dict[str, Any]:
        """Top-level commands and messages published, from MONITOR (one more run of each)."""
        queue = self.mod.PREFIX
        out: dict[str, Any] = {}
        for kind in KINDS:
            n = self.args.monitor_chord_items if kind == "chord" else self.args.items
            label = self.label(kind)
            log(f"MONITOR: one {label} of {n} items")
            with MonitorTap(self.mod.REDIS_URL, self.sha_names) as tap:
                seconds = self.run_kind(kind, n, label)
                time.sleep(0.2)  # the last acks
            messages = sum(v for k, v in tap.pushes.items() if k == queue or k.startswith(queue))
            top = sum(tap.commands.values())
            out[kind] = {
                "n": n,
                "seconds_under_monitor": round(seconds, 3),
                "top_level_commands": top,
                "top_level_per_item": round(top / n, 2),
                "top_level_by_command": dict(tap.commands.most_common()),
                "messages_published": messages,
            }
            log(f"  {label}: {top / n:.2f} top-level commands/item, {messages} messages published")
        return out

    def cleanup(self) -> None:
        """Delete what this benchmark left in a shared Redis (a throwaway one just stops)."""
        prefix = self.mod.PREFIX
        backend = self.mod.app.backend
        keys = [backend.get_key_for_task(t) for t in self.task_ids]
        keys += [
            backend.get_key_for_group(g, suffix)
            for g in self.group_ids
            for suffix in ("", ".j", ".t", ".s", ".c")
        ]
        keys += list(self.r.scan_iter(match=f"{prefix}*", count=1000))
        keys += list(self.r.scan_iter(match=f"_kombu.binding*.{prefix}", count=1000))
        deleted = sum(int(self.r.unlink(*keys[i : i + 1000])) for i in range(0, len(keys), 1000))
        log(f"cleanup: {deleted} keys deleted")


# -- report ------------------------------------------------------------------------------------


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    r = res["rounds"]
    metric = f"map/chord wall time, {r['n']} no-op items, chunk_size {r['map']['chunk_size']}"
    return target_rows([(metric, r["ratio"], "<=", TARGETS["map_chord_ratio"])])


def markdown(res: dict[str, Any]) -> str:
    r, mon, cfg = res["rounds"], res["monitor"], res["config"]
    v, m, w = res["versions"], res["machine"], res["worker"]
    n = r["n"]

    def by_cmd(d: dict[str, float], limit: int = 8) -> str:
        top = sorted(d.items(), key=lambda kv: -kv[1])[:limit]
        return ", ".join(f"{k} {x:g}" for k, x in top) or "-"

    def row(label: str, fmt: Callable[[str], Any]) -> str:
        return f"| {label} | " + " | ".join(str(fmt(k)) for k in COLUMNS) + " |"

    def head(kind: str) -> str:
        if kind == "chord":
            return "Celery chord"
        default = " (the default)" if r[kind]["chunk_size"] == 20 else ""
        return f"map, chunk_size {r[kind]['chunk_size']}{default}"

    chord_mon = mon["chord"]
    lines = [
        "# celery_flow map benchmark",
        "",
        f"- date: {res['date']}",
        f"- source: {res['source']}",
        *md_machine(m),
        md_versions(v),
        md_worker(
            cfg,
            ", same queue and same Redis (broker, result backend, celery_flow state) for the "
            f"chord and the workflows; Redis: {cfg['redis']}",
        ),
        f"- reproduce: `{cfg['command']}` (from the repository root; or `make bench`)",
        f"- worker exit code {w['exit_code']}; worker log: {w['warnings']} warning/error lines",
        f"- total time {res['seconds_total']:g} s",
        "",
        *md_targets(res["targets"]),
        f"## {n} no-op items: `ctx.step.map` vs a Celery `chord`",
        "",
        f"Map: workflow `map-noop` (`ctx.step.map` of `bench.app.identity`), `.run()` -> "
        f"`result()`. Chord: {n} `bench.noop` (Redis result backend) + callback "
        "`bench.count_results`, `apply_async()` -> callback `get(follow_parents=False)`. "
        f"Median of {r['rounds']} rounds, order alternating; used_memory and commandstats "
        "taken just around each timed run (idle background rate subtracted).",
        "",
        "| measure | " + " | ".join(head(k) for k in COLUMNS) + " |",
        "|---|---:|---:|---:|",
        row("(1) wall time, median (s)", lambda k: f"{r[k]['seconds']:g}"),
        row(
            "(1) wall time per round (s)",
            lambda k: " / ".join(f"{x:g}" for x in r[k]["rounds_seconds"]),
        ),
        row("(1) items/s", lambda k: f"{r[k]['items_per_s']:g}"),
        f"| (1) ratio to the chord | {r['ratio']:g} | {r['ratio_default_chunk']:g} | 1 |",
        row(
            "(2) used_memory delta per item (B), median",
            lambda k: f"{r[k]['used_memory_bytes_per_item']:g}",
        ),
        row(
            "(2) used_memory_dataset delta per item (B), median",
            lambda k: f"{r[k]['used_memory_dataset_bytes_per_item']:g}",
        ),
        row(
            "(2) MEMORY USAGE per item (B): maps hash / result-backend keys",
            lambda k: r[k].get("maps_hash_bytes_per_item", r[k].get("result_keys_bytes_per_item")),
        ),
        row(
            "(3) Redis commands per item (incl. script-internal), median",
            lambda k: f"{r[k]['commands_per_item']:g}",
        ),
        row(
            "(3) top-level commands per item (~ round trips), MONITOR",
            lambda k: (
                f"{mon[k]['top_level_per_item']:g}"
                + (f" ({mon[k]['n']} items)" if mon[k]["n"] != n else "")
            ),
        ),
        row(
            "(3) Celery messages published (LPUSH, commandstats), median",
            lambda k: (
                f"{r[k]['messages_published_lpush']}"
                + (f" ({r[k]['chunks']} chunks + the run's own)" if k != "chord" else "")
            ),
        ),
        row(
            "(3) messages published to the queue, MONITOR",
            lambda k: (
                f"{mon[k]['messages_published']}"
                + (f" ({mon[k]['n']} items)" if mon[k]["n"] != n else "")
            ),
        ),
        row(
            "(4) longest single Redis command, max of the rounds (ms, SLOWLOG)",
            lambda k: (
                f"{r[k]['slowest_commands'][0]['ms']:g} ({r[k]['slowest_commands'][0]['command']})"
                if r[k]["slowest_commands"]
                else ("< 1" if cfg["slowlog"] else "n/a (shared Redis)")
            ),
        ),
        "",
        "## Memory (2)",
        "",
        "used_memory: `INFO memory` just before `.run()` / `apply_async()` and just after the "
        "result; a finished run keeps its keys for `retention`, so this is what the fan-out "
        "holds once every item has a result. MEMORY USAGE is exact (`SAMPLES 0`).",
        "",
    ]
    for kind in ("map", "map_default"):
        d = r[kind]
        per_key = ", ".join(f"{k} {x}" for k, x in d["run_keys_bytes"].items())
        lines.append(
            f"- {head(kind)}: {d['used_memory_bytes_per_item']:g} B/item used_memory "
            f"({d['used_memory_dataset_bytes_per_item']:g} dataset); maps hash "
            f"{d['maps_hash_bytes_per_item']:g} B/item ({d['maps_hash_fields']} fields: item + "
            f"result per item + counters, {d['maps_hash_encoding']}); all the run's keys (B): "
            f"{per_key}"
        )
    c = r["chord"]
    lines += [
        f"- chord: {c['used_memory_bytes_per_item']:g} B/item used_memory "
        f"({c['used_memory_dataset_bytes_per_item']:g} dataset); {c['result_keys']} "
        f"result-backend keys, {c['result_keys_bytes_per_item']:g} B/item (MEMORY USAGE); they "
        "expire after `result_expires` (1 h here), the map's keys with the run (`retention`).",
        "",
        "## Redis commands (3)",
        "",
        f"Per item, all commands (`INFO commandstats`, mean of the {r['rounds']} timed runs, idle "
        "rate subtracted), and top-level commands of one more run under MONITOR (whole run; "
        f"the chord's MONITOR run has {chord_mon['n']} items: MONITOR slows a 10k chord too "
        "much).",
        "",
        "| | all commands per item | top-level commands, whole run |",
        "|---|---|---|",
        *(
            f"| {head(k)} | {by_cmd(r[k]['by_command_per_item'])} | "
            f"{by_cmd(mon[k]['top_level_by_command'])} |"
            for k in COLUMNS
        ),
        "",
    ]
    if res.get("notes"):
        lines += ["## Notes", "", *(f"- {x}" for x in res["notes"]), ""]
    lines += md_log_excerpt("Worker log: warnings", w["excerpt"])
    return "\n".join(lines)


def notes(res: dict[str, Any]) -> list[str]:
    out = [
        "The map sends one Celery message per chunk and no result-backend traffic; the chord "
        "sends one message per item, and the caller subscribes to each task's result channel "
        "(Celery's Redis backend does that on send), so most of the gap is per-task Celery "
        "overhead, not fan-in.",
        "The chord's callback is awaited with `get(follow_parents=False)`: the default "
        "`follow_parents=True` re-checks every header result of the parent group on each "
        "wake-up of `get()` (`GroupResult.maybe_throw`), O(n^2) in the caller; at 10k tasks "
        "that alone takes minutes.",
    ]
    r = res["rounds"]
    for kind in ("map", "map_default"):
        slow = {c["command"]: c["ms"] for c in reversed(r[kind]["slowest_commands"] or [])}
        start = slow.get("evalsha:map_start")
        if start:
            us = start * 1000 / r["n"]
            out.append(
                f"map chunk_size {r[kind]['chunk_size']}: `map_start` (one Lua call: HSET of "
                f"every item, HDEL of every item's error field, a check of every chunk) blocked "
                f"Redis for {start:g} ms for {r['n']} items ({us:.1f} us/item, so about "
                f"{us:.0f} s per million items); the last `map_chunk_done` (an HEXISTS per "
                f"item) {slow.get('evalsha:map_chunk_done', '< 1')} ms."
            )
    if res["worker"]["lease_lost_count"]:
        out.append(
            f"{res['worker']['lease_lost_count']} spurious 'lease lost' warning(s) from map-noop "
            "run(s): the heartbeat renewed the run after `map_start` had parked it (waiting) "
            "while the execution was still publishing the chunk group (celery_flow/_fanout.py "
            "resets `ex.ending = False` before the dispatch). Harmless to the results here."
        )
    return out


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arg_parser("python -m bench.bench_map", __doc__)
    p.add_argument("--items", type=int, default=10_000, help="items per map / tasks per chord")
    p.add_argument("--chunk-size", type=int, default=100, help="chunk_size of the measured map")
    p.add_argument(
        "--default-chunk-size", type=int, default=20, help="chunk_size of the second map variant"
    )
    p.add_argument("--rounds", type=int, default=3, help="(1) rounds, alternating the order")
    p.add_argument("--idle-seconds", type=float, default=2.0, help="(3) idle window")
    p.add_argument(
        "--monitor-chord-items", type=int, default=1000, help="(3) tasks of the MONITORed chord"
    )
    p.add_argument("--warmup", type=int, default=500, help="items per warm-up map / chord")
    p.add_argument("--timeout", type=float, default=120.0, help="max seconds per map / chord")
    add_run_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.items, args.rounds, args.idle_seconds, args.warmup = 1000, 1, 1.0, 100
        args.monitor_chord_items = 200
    if args.items < 1 or args.chunk_size < 1 or args.default_chunk_size < 1:
        p.error("--items and the chunk sizes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    clock = RunClock(track_source=True)
    with worker_session(args.pool, args.concurrency) as session:
        bench = MapBench(session.mod, session.worker, args)
        if session.shared:
            session.cleanups.append(bench.cleanup)
        else:
            bench.enable_slowlog()
        bench.warm_up()
        counts = (
            "items",
            "chunk_size",
            "default_chunk_size",
            "rounds",
            "idle_seconds",
            "monitor_chord_items",
            "warmup",
        )
        config = run_config(args, session, "bench.bench_map", argv, counts, slowlog=bench.slowlog)
        res = report_head(bench.r, config, clock.source)
        res["idle_background_per_s"] = bench.idle()
        res["rounds"] = bench.rounds()
        res["monitor"] = bench.monitor()
        bench.check_worker()
    res["worker"] = worker_log_summary(
        session.log_lines, session.worker_exit_code(), {"lease_lost_count": "lease lost"}
    )
    clock.stamp(res)
    res["targets"] = targets(res)
    res["notes"] = notes(res)
    publish(args.out, "map", res, clock, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
