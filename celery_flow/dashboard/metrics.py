"""Prometheus ``/metrics``: a custom collector that reads Redis on each scrape.

A dashboard process sees no worker events, so everything is derived from Redis, in about
five pipelined round trips per scrape, with bounded work (see docs/dashboard.md):

* gauges are read as they are: ``ZCARD`` of each status index, the newest ``sample_size``
  runs for the per-workflow breakdown, gate and timer sorted sets, the cron leader lock;
* counters and the step-duration histogram are accumulated in this process from the
  *window* of runs created / finished since the previous scrape (Redis ``TIME`` is the
  watermark, so each run is counted once). Like any in-process counter they start at 0
  when the dashboard starts; a scrape handles at most ``window_limit`` finished runs per
  status and leaves the rest for the next scrape.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .._keys import STATUSES, TERMINAL_STATUSES
from ..errors import FlowConnectionError
from . import queries

if TYPE_CHECKING:
    from .._flow import Flow
    from .._store import Store

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
MAX_GATES = 200
_TERMINAL = sorted(TERMINAL_STATUSES)


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


class FlowCollector(Collector):
    """Collects celery_flow metrics from Redis at scrape time (thread-safe).

    Args:
        flow: the Flow whose prefix is measured.
        sample_size: newest runs read for ``celery_flow_recent_runs``.
        window_limit: finished runs per terminal status handled by one scrape.
    """

    def __init__(self, flow: Flow, *, sample_size: int = 500, window_limit: int = 1000) -> None:
        self.flow = flow
        self.sample_size = sample_size
        self.window_limit = window_limit
        self._lock = threading.Lock()
        self._start_ms: int | None = None  # Redis time of the first scrape: counters start here
        self._created_wm: dict[str, int] = {}
        self._finished_wm: dict[str, int] = {}
        self.created: dict[str, int] = {}
        self.finished: dict[tuple[str, str], int] = {}
        self.recoveries: dict[str, int] = {}
        self.steps: dict[tuple[str, str], _Histogram] = {}

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            began = time.perf_counter()
            try:
                metrics = list(self._collect())
                up = 1.0
            except FlowConnectionError:
                metrics, up = [], 0.0
            metrics.append(_gauge("celery_flow_up", "1 if Redis answered this scrape.", up))
            metrics.append(
                _gauge(
                    "celery_flow_scrape_duration_seconds",
                    "Time this scrape spent reading Redis.",
                    time.perf_counter() - began,
                )
            )
        return metrics

    def _collect(self) -> Iterator[Metric]:
        flow, store = self.flow, self.flow.store
        keys = store.keys
        with store.errors(), store.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for status in STATUSES:
                pipe.zcard(keys.status(status))
            pipe.zrange(keys.timers, 0, 0, withscores=True)
            pipe.zcard(keys.timers)
            pipe.smembers(keys.gates)
            pipe.smembers(keys.workflows)
            pipe.zrevrange(keys.created, 0, self.sample_size - 1)
            (sec, usec), *rest = pipe.execute()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        counts = dict(zip(STATUSES, rest[: len(STATUSES)], strict=True))
        oldest_timer, timers, gates, synced, newest = rest[len(STATUSES) :]
        upper = now_ms - 1  # every entry scored <= upper was committed before TIME answered
        if self._start_ms is None:
            self._start_ms = upper
        workflows = sorted({str(n) for n in synced} | set(flow.workflows))
        gate_keys = sorted(
            {str(k) for k in gates}
            | {
                k
                for wf in flow.workflows.values()
                if wf.max_concurrency and (k := wf.resolve_limit_key_static())
            }
        )[:MAX_GATES]

        fam = GaugeMetricFamily(
            "celery_flow_runs",
            "Runs per status (ZCARD of the status index; all runs within retention).",
            labels=["status"],
        )
        for status in STATUSES:
            fam.add_metric([status], float(counts[status]))
        yield fam
        yield from self._timers(oldest_timer, timers, now_ms)
        windows, gate_sizes = self._read_windows(store, workflows, gate_keys, upper)
        yield from self._gates(gate_keys, gate_sizes)
        yield from self._sampled_and_windowed(store, newest, windows, workflows)
        yield from self._scheduler()
        yield from self._maintenance()

    # -- reads ------------------------------------------------------------------------------

    def _read_windows(
        self, store: Store, workflows: list[str], gate_keys: list[str], upper: int
    ) -> tuple[dict[str, list[tuple[str, float]]], list[int]]:
        """Count new runs per workflow; fetch newly finished ids; gate sizes. 1 round trip."""
        keys = store.keys
        start = self._start_ms or upper
        with store.errors(), store.redis.pipeline(transaction=False) as pipe:
            for name in workflows:
                pipe.zcount(
                    keys.workflow_runs(name), f"({self._created_wm.get(name, start)}", upper
                )
            for status in _TERMINAL:
                wm = self._finished_wm.get(status, start)
                pipe.zrangebyscore(
                    keys.status(status), f"({wm}", upper, 0, self.window_limit, withscores=True
                )
            for key in gate_keys:
                pipe.zcard(keys.gate(key))
                pipe.zcard(keys.gate_waiting(key))
            res = pipe.execute()
        for name, n in zip(workflows, res, strict=False):
            self.created[name] = self.created.get(name, 0) + int(n)
            self._created_wm[name] = upper
        windows: dict[str, list[tuple[str, float]]] = {}
        for status, rows in zip(_TERMINAL, res[len(workflows) :], strict=False):
            rows = list(rows)
            if len(rows) >= self.window_limit:
                # the rest waits for the next scrape; never split one millisecond
                last = rows[-1][1]
                rows = [r for r in rows if r[1] < last] or rows
                self._finished_wm[status] = int(rows[-1][1])
            else:
                self._finished_wm[status] = upper
            windows[status] = rows
        return windows, [int(n) for n in res[len(workflows) + len(_TERMINAL) :]]

    def _sampled_and_windowed(
        self,
        store: Store,
        newest: list[str],
        windows: dict[str, list[tuple[str, float]]],
        workflows: list[str],
    ) -> Iterator[Metric]:
        """Load the sample's and the window's run fields and steps. 1 round trip."""
        ended = [(rid, status) for status, rows in windows.items() for rid, _ in rows]
        with store.errors(), store.redis.pipeline(transaction=False) as pipe:
            for rid in newest:
                pipe.hmget(store.keys.run(rid), "workflow", "status")
            for rid, _ in ended:
                pipe.hmget(store.keys.run(rid), "workflow", "recoveries")
                pipe.hgetall(store.keys.steps(rid))
            res = pipe.execute()
        sample: dict[tuple[str, str], int] = {}
        for wf, status in res[: len(newest)]:
            if wf and status:
                sample[(wf, status)] = sample.get((wf, status), 0) + 1
        fam = GaugeMetricFamily(
            "celery_flow_recent_runs",
            f"Runs per workflow and status among the newest {self.sample_size} runs.",
            labels=["workflow", "status"],
        )
        for (wf, status), n in sorted(sample.items()):
            fam.add_metric([wf, status], float(n))
        yield fam

        tail = res[len(newest) :]
        for (_, status), (wf, recoveries), steps in zip(ended, tail[::2], tail[1::2], strict=True):
            if not wf:
                continue  # expired meanwhile
            self.finished[(wf, status)] = self.finished.get((wf, status), 0) + 1
            self.recoveries[wf] = self.recoveries.get(wf, 0) + int(recoveries or 0)
            self._observe_steps(wf, steps)
        yield from self._counters(workflows)

    def _observe_steps(self, workflow: str, steps: dict[str, str]) -> None:
        for raw in steps.values():
            try:
                rec = json.loads(raw)
                began, ended = rec.get("started_at"), rec.get("finished_at")
            except (ValueError, AttributeError):
                continue
            if began and ended:
                kind = str(rec.get("kind", "run"))
                hist = self.steps.setdefault((workflow, kind), _Histogram())
                hist.observe(max(0.0, (int(ended) - int(began)) / 1000))

    # -- families ---------------------------------------------------------------------------

    def _counters(self, workflows: list[str]) -> Iterator[Metric]:
        created = CounterMetricFamily(
            "celery_flow_runs_created",
            "Runs created (started with .run(), cron, children) since this process started.",
            labels=["workflow"],
        )
        for name in workflows:
            created.add_metric([name], float(self.created.get(name, 0)))
        yield created
        finished = CounterMetricFamily(
            "celery_flow_runs_finished",
            "Runs that ended, per workflow and terminal status, since this process started.",
            labels=["workflow", "status"],
        )
        for name in workflows:
            for status in _TERMINAL:
                finished.add_metric([name, status], float(self.finished.get((name, status), 0)))
        yield finished
        recov = CounterMetricFamily(
            "celery_flow_run_recoveries",
            "Lease recoveries by the reaper (crashed workers), counted when the run ends.",
            labels=["workflow"],
        )
        for name in workflows:
            recov.add_metric([name], float(self.recoveries.get(name, 0)))
        yield recov
        hist = HistogramMetricFamily(
            "celery_flow_step_duration_seconds",
            "Duration of the steps of runs that ended since this process started.",
            labels=["workflow", "kind"],
        )
        for (wf, kind), h in sorted(self.steps.items()):
            hist.add_metric([wf, kind], buckets=h.cumulative(), sum_value=h.sum)
        yield hist

    def _timers(self, oldest: list[Any], count: int, now_ms: int) -> Iterator[Metric]:
        lag = max(0.0, (now_ms - float(oldest[0][1])) / 1000) if oldest else 0.0
        yield _gauge(
            "celery_flow_timer_lag_seconds",
            "How late the most overdue timer is (0 when none is due): promoter health.",
            lag,
        )
        yield _gauge("celery_flow_timers", "Armed timers (scheduled runs, waits).", float(count))

    def _gates(self, gate_keys: list[str], sizes: list[int]) -> Iterator[Metric]:
        holders = GaugeMetricFamily(
            "celery_flow_gate_holders", "Slots held per limit key.", labels=["limit_key"]
        )
        waiting = GaugeMetricFamily(
            "celery_flow_gate_waiting",
            "Runs waiting for a slot per limit key.",
            labels=["limit_key"],
        )
        for i, key in enumerate(gate_keys):
            holders.add_metric([key], float(sizes[2 * i]))
            waiting.add_metric([key], float(sizes[2 * i + 1]))
        yield holders
        yield waiting

    def _scheduler(self) -> Iterator[Metric]:
        crons = self.flow.cron_status()
        leaders = queries.scheduler_leaders(self.flow, crons)
        fam = GaugeMetricFamily(
            "celery_flow_scheduler_leader",
            "1 while some node holds the app's cron scheduler lease.",
            labels=["app_id"],
        )
        for app, node in leaders.items():
            fam.add_metric([app], 1.0 if node else 0.0)
        yield fam
        nxt = GaugeMetricFamily(
            "celery_flow_cron_next_fire_timestamp_seconds",
            "Next fire time of each cron entry (Unix time).",
            labels=["entry", "workflow"],
        )
        for c in crons:
            if c.next_fire_at is not None:
                nxt.add_metric([c.id, c.workflow], c.next_fire_at.timestamp())
        yield nxt

    def _maintenance(self) -> Iterator[Metric]:
        maintenance = self.flow.maintenance
        if maintenance._thread is None:
            return  # this process runs no maintenance loop: its counters would be all zero
        fam = CounterMetricFamily(
            "celery_flow_maintenance",
            "Work done by this process' maintenance loop (promoted timers, recovered leases...).",
            labels=["action"],
        )
        for action, n in sorted(maintenance.counters.items()):
            fam.add_metric([action], float(n))
        yield fam


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def build_registry(flow: Flow) -> CollectorRegistry:
    """A registry with the Flow collector and the process collector (not the global one)."""
    registry = CollectorRegistry()
    registry.register(FlowCollector(flow))
    ProcessCollector(registry=registry)
    return registry
