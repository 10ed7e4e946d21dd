"""What the dashboard shows, read from a Flow: run pages, run detail, timeline, workflows.

Plain synchronous functions (the web layer calls them in a thread pool), shared by the HTML
pages and the JSON API so both always show the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._keys import STATUSES, TERMINAL_STATUSES
from .._models import CronStatus, GateStatus, RunInfo, RunPage, run_info_from_hash

if TYPE_CHECKING:
    from .._flow import Flow

MAX_CHILDREN = 200  # children listed on a run page (the rest are counted)
SCAN_BUDGET = 5000  # index entries one time-filtered page may scan before it returns
_SCAN_CHUNK = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(dt: datetime) -> int:
    """Exact milliseconds since the epoch of an aware datetime."""
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def parse_time(value: str | None, what: str) -> datetime | None:
    """ISO 8601 (``2025-01-02T10:00``, naive means UTC) or epoch milliseconds; '' is None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{what}={value!r}: expected an ISO 8601 time such as 2025-01-02T10:00:00Z "
            "(naive times are UTC) or milliseconds since the epoch"
        ) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def runs_page(
    flow: Flow,
    *,
    workflow: str | None = None,
    status: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> RunPage:
    """``flow.list_runs`` plus an optional creation-time range ``[after, before)``.

    With a time range, the creation index (the workflow's, or all runs') is walked newest
    first from ``created_before`` and stops at ``created_after``; a status filter is applied
    to the loaded runs. One request scans at most ``SCAN_BUDGET`` entries and then returns
    what it found with a cursor to continue. Cursors have ``list_runs``' format.
    """
    if created_after is None and created_before is None:
        return flow.list_runs(workflow=workflow, status=status, limit=limit, cursor=cursor)
    if status is not None and status not in STATUSES:
        raise ValueError(f"status={status!r}: expected one of {', '.join(STATUSES)}")
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValueError(f"limit={limit!r}: expected an int from 1 to 1000")
    store = flow.store
    index = store.keys.workflow_runs(workflow) if workflow else store.keys.created
    max_score, after_id = _parse_cursor(cursor)
    if max_score is None and created_before is not None:
        max_score = float(to_ms(created_before) - 1)  # strictly before
    floor = None if created_after is None else to_ms(created_after)
    runs: list[RunInfo] = []
    scanned, exhausted = 0, False
    while len(runs) < limit and scanned < SCAN_BUDGET and not exhausted:
        rows = store.index_page(index, max_score, after_id, _SCAN_CHUNK)
        exhausted = len(rows) < _SCAN_CHUNK
        hashes = store.load_many([rid for rid, _ in rows])
        for (rid, score), h in zip(rows, hashes, strict=True):
            if floor is not None and score < floor:
                exhausted = True
                break
            max_score, after_id, scanned = score, rid, scanned + 1
            if h and (status is None or h.get("status") == status):
                runs.append(run_info_from_hash(h))
                if len(runs) == limit:
                    exhausted = False
                    break
    cursor_out = None
    if not exhausted and max_score is not None and after_id is not None:
        cursor_out = f"{int(max_score)}:{after_id}"
    return RunPage(runs=runs, next_cursor=cursor_out)


def _parse_cursor(cursor: str | None) -> tuple[float | None, str | None]:
    if not cursor:
        return None, None
    score, sep, rid = cursor.partition(":")
    if not sep or not score.isdigit() or not rid:
        raise ValueError(f"cursor={cursor!r} is not a cursor returned by this API")
    return float(score), rid


# -- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    """One step drawn on the timeline; ``left`` and ``width`` are percentages of the span."""

    name: str
    kind: str
    status: str
    attempts: int
    left: float
    width: float
    seconds: float  # so far, for a step still running or waiting
    live: bool
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class Timeline:
    """Step bars over ``start``..``end``, with axis ticks as (percent, label)."""

    start: datetime | None
    end: datetime | None
    bars: list[Bar]
    ticks: list[tuple[float, str]]


@dataclass
class RunDetail:
    """Everything the run page shows: the run, its parent, children and buffered events."""

    run: RunInfo
    children: list[RunInfo] = field(default_factory=list)
    children_total: int = 0
    events: dict[str, list[Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body = self.run.model_dump(mode="json")
        body["children"] = [_summary(c) for c in self.children]
        body["children_total"] = self.children_total
        body["events"] = self.events
        return body


def _summary(run: RunInfo) -> dict[str, Any]:
    return run.model_dump(mode="json", include={"id", "workflow", "status", "created_at"})


def run_detail(flow: Flow, run_id: str) -> RunDetail:
    """The run (steps included), its children and its buffered events. 4 round trips.

    Raises:
        RunNotFound: no such run.
    """
    run = flow.get_run(run_id)
    store = flow.store
    child_ids = store.children(run_id)
    hashes = store.load_many(child_ids[:MAX_CHILDREN])
    children = sorted((run_info_from_hash(h) for h in hashes if h), key=lambda r: r.created_at)
    with store.errors():
        raw: dict[str, str] = store.redis.hgetall(store.keys.events(run_id))  # type: ignore[assignment]
    events = {
        etype: [json.loads(p) for p in json.loads(payloads)]
        for etype, payloads in sorted(raw.items())
    }
    return RunDetail(run, children, len(child_ids), events)


def timeline(run: RunInfo, now: datetime | None = None) -> Timeline:
    """Horizontal bars for the run's steps, positioned on a common time axis.

    The axis starts at the first step's start (else the run's start) and ends at the last
    step's end, the run's end, or ``now`` while the run is live. Unfinished steps extend to
    the end of the axis; every bar is at least 0.5 % wide so instant steps stay visible.
    """
    now = now or datetime.now(UTC)
    live = run.status not in TERMINAL_STATUSES
    starts = [s.started_at for s in run.steps if s.started_at]
    start = min(starts) if starts else run.started_at
    if start is None:
        return Timeline(None, None, [], [])
    ends = [s.finished_at for s in run.steps if s.finished_at]
    ends += [run.finished_at] if run.finished_at else []
    end = max([*ends, start, now if live else start])
    span = max((end - start).total_seconds(), 0.001)
    bars = []
    for s in run.steps:
        s_start = s.started_at or start
        s_end = s.finished_at or end
        left = 100 * (s_start - start).total_seconds() / span
        width = 100 * (s_end - s_start).total_seconds() / span
        left = min(max(left, 0.0), 99.5)
        bars.append(
            Bar(
                name=s.name,
                kind=s.kind,
                status=s.status,
                attempts=s.attempts,
                left=round(left, 3),
                width=round(min(max(width, 0.5), 100.0 - left), 3),
                seconds=max(0.0, (s_end - s_start).total_seconds()),
                live=s.finished_at is None,
                started_at=s.started_at,
                finished_at=s.finished_at,
            )
        )
    ticks = [(float(p), "+" + fmt_seconds(span * p / 100)) for p in (0, 25, 50, 75, 100)]
    return Timeline(start, end, bars, ticks)


def fmt_seconds(seconds: float | None) -> str:
    """A compact duration: ``340 ms``, ``4.2 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


# -- workflows ---------------------------------------------------------------------------------


@dataclass
class WorkflowRow:
    """One workflow as the workflows page shows it."""

    name: str
    queue: str | None
    max_concurrency: int | None
    rate_limit: str | None
    limit_key: str | None  # None: computed from each run's input
    max_attempts: int | None
    timeout: float | None
    registered_here: bool
    gate: GateStatus | None = None
    crons: list[CronStatus] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queue": self.queue,
            "max_concurrency": self.max_concurrency,
            "rate_limit": self.rate_limit,
            "limit_key": self.limit_key,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "registered_here": self.registered_here,
            "gate": None if self.gate is None else self.gate.model_dump(mode="json"),
            "cron": [c.model_dump(mode="json") for c in self.crons],
        }


def workflows_overview(flow: Flow) -> tuple[list[WorkflowRow], list[CronStatus]]:
    """Every workflow (this process' registry plus those workers synced to Redis) and crons.

    Gate occupancy is read for static limit keys (1 round trip each); a workflow whose
    ``limit_key`` is a callable has one gate per key and shows none here.
    """
    rows: dict[str, WorkflowRow] = {}
    for wf in flow.workflows.values():
        rows[wf.name] = WorkflowRow(
            name=wf.name,
            queue=wf.queue,
            max_concurrency=wf.max_concurrency,
            rate_limit=wf.rate_limit,
            limit_key=wf.resolve_limit_key_static(),
            max_attempts=wf.retries.max_attempts,
            timeout=wf.timeout,
            registered_here=True,
        )
    for meta in _synced_metadata(flow, exclude=set(rows)):
        rows[meta["name"]] = WorkflowRow(
            name=meta["name"],
            queue=meta.get("queue") or None,
            max_concurrency=_int(meta.get("max_concurrency")),
            rate_limit=meta.get("rate_limit") or None,
            limit_key=meta.get("limit_key") or meta["name"],
            max_attempts=_int(meta.get("max_attempts")),
            timeout=float(meta["timeout"]) if meta.get("timeout") else None,
            registered_here=False,
        )
    crons = flow.cron_status()
    for row in rows.values():
        if row.limit_key and (row.max_concurrency or row.rate_limit):
            row.gate = flow.gate_status(row.limit_key)
        row.crons = [c for c in crons if c.workflow == row.name]
    return sorted(rows.values(), key=lambda r: r.name), crons


def _synced_metadata(flow: Flow, exclude: set[str]) -> list[dict[str, str]]:
    """Metadata of workflows that workers wrote with ``sync_registry``. 2 round trips."""
    store = flow.store
    with store.errors():
        names = sorted(str(n) for n in store.redis.smembers(store.keys.workflows))
        names = [n for n in names if n not in exclude][:500]
        if not names:
            return []
        with store.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(store.keys.workflow(name))
            metas = pipe.execute()
    return [dict(m, name=n) for n, m in zip(names, metas, strict=True) if m]


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def scheduler_leaders(flow: Flow, crons: list[CronStatus] | None = None) -> dict[str, str | None]:
    """Current cron leader node per app id: this Flow's app and every app owning a cron entry.

    1 round trip (plus ``cron_status`` when ``crons`` is not given).
    """
    crons = flow.cron_status() if crons is None else crons
    apps = sorted({flow.app_id, *(c.app_id for c in crons)})
    store = flow.store
    with store.errors():
        holders = store.redis.mget([store.keys.cron_lock(a) for a in apps])
    return {
        app: (str(h).rpartition("|")[0] or str(h)) if h else None
        for app, h in zip(apps, holders, strict=True)
    }


def status_counts(flow: Flow) -> dict[str, int]:
    """Runs per status (ZCARD of each status index, expired runs included until purged). 1 RT."""
    store = flow.store
    with store.errors(), store.redis.pipeline(transaction=False) as pipe:
        for status in STATUSES:
            pipe.zcard(store.keys.status(status))
        counts = pipe.execute()
    return {s: int(c) for s, c in zip(STATUSES, counts, strict=True)}


def workflow_names(flow: Flow) -> list[str]:
    """Names for the workflow filter: this process' registry plus Redis' synced one. 1 RT."""
    store = flow.store
    with store.errors():
        synced = {str(n) for n in store.redis.smembers(store.keys.workflows)}
    return sorted(synced | set(flow.workflows))
