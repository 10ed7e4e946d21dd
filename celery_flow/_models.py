"""Public read models: RunInfo, StepInfo, ErrorInfo, ProgressInfo, RunPage.

They are built from the raw Redis hashes by :func:`run_info_from_hash`; all
datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RunStatus = Literal["scheduled", "queued", "running", "waiting", "succeeded", "failed", "canceled"]
StepKind = Literal["run", "sleep", "event", "child", "emit", "map"]
StepStatus = Literal["running", "waiting", "succeeded", "failed", "compensated"]


class ErrorInfo(BaseModel):
    """What went wrong: exception type (qualified name), message, formatted traceback."""

    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    traceback: str | None = None


class ProgressInfo(BaseModel):
    """Last value reported with ``ctx.progress(current, total, message)``."""

    model_config = ConfigDict(frozen=True)

    current: float
    total: float | None = None
    message: str | None = None
    updated_at: datetime | None = None


class StepInfo(BaseModel):
    """One step of a run, as recorded in its step cache."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: StepKind = "run"
    status: StepStatus
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: Any = None
    error: ErrorInfo | None = None
    event_type: str | None = None
    """For a ``wait_for_event`` step (kind ``"event"``): the event type it waits for."""


class RunInfo(BaseModel):
    """Full state of one run. ``steps`` is empty in :meth:`Flow.list_runs` pages."""

    model_config = ConfigDict(frozen=True)

    id: str
    workflow: str
    status: RunStatus
    input: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    attempt: int = 1
    max_attempts: int = 1
    queue: str | None = None
    parent_run_id: str | None = None
    idempotency_key: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: ProgressInfo | None = None
    steps: list[StepInfo] = []
    cancel_requested: bool = False
    current_step: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in ("succeeded", "failed", "canceled")


class GateStatus(BaseModel):
    """State of one limit key's gate (``Flow.gate_status``).

    Attributes:
        key: the limit key (the workflow name unless ``limit_key=`` says otherwise).
        max_concurrency / rate_limit: the limits of the workflows registered with this key here.
        holders: run ids holding (or reserved for) a slot.
        waiting: runs waiting for a slot, in Redis, FIFO.
        next_start_at: earliest time the rate limit allows the next start (None: now).
    """

    model_config = ConfigDict(frozen=True)

    key: str
    max_concurrency: int | None = None
    rate_limit: str | None = None
    holders: list[str] = []
    waiting: int = 0
    next_start_at: datetime | None = None


class RunPage(BaseModel):
    """One page of :meth:`Flow.list_runs`; pass ``next_cursor`` back for the next page."""

    model_config = ConfigDict(frozen=True)

    runs: list[RunInfo]
    next_cursor: str | None = None


def ms_to_dt(value: str | bytes | int | None) -> datetime | None:
    """Milliseconds since the epoch (as stored in Redis) to an aware UTC datetime."""
    if value in (None, "", b""):
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def _loads(raw: str | None) -> Any:
    return None if raw is None or raw == "" else json.loads(raw)


def step_info(name: str, raw: str) -> StepInfo:
    rec = json.loads(raw)
    return StepInfo(
        name=name,
        kind=rec.get("kind", "run"),
        status=rec["status"],
        attempts=rec.get("attempts", 0),
        started_at=ms_to_dt(rec.get("started_at")),
        finished_at=ms_to_dt(rec.get("finished_at")),
        output=rec.get("output"),
        error=ErrorInfo(**rec["error"]) if rec.get("error") else None,
        event_type=rec.get("event_type"),
    )


def run_info_from_hash(h: dict[str, str], steps: dict[str, str] | None = None) -> RunInfo:
    """Build a RunInfo from the ``run:{id}`` hash (and optionally its steps hash)."""
    progress = _loads(h.get("progress"))
    step_list: list[StepInfo] = []
    if steps:
        ordered = sorted(steps.items(), key=lambda kv: json.loads(kv[1]).get("seq", 0))
        step_list = [step_info(name, raw) for name, raw in ordered]
    error = _loads(h.get("error"))
    return RunInfo(
        id=h["id"],
        workflow=h["workflow"],
        status=h["status"],  # type: ignore[arg-type]
        input=_loads(h.get("input")),
        output=_loads(h.get("output")),
        error=ErrorInfo(**error) if error else None,
        attempt=int(h.get("attempt", 1)),
        max_attempts=int(h.get("max_attempts", 1)),
        queue=h.get("queue") or None,
        parent_run_id=h.get("parent") or None,
        idempotency_key=h.get("idem_key") or None,
        created_at=ms_to_dt(h["created_at"]),  # type: ignore[arg-type]
        started_at=ms_to_dt(h.get("started_at")),
        finished_at=ms_to_dt(h.get("finished_at")),
        progress=ProgressInfo(
            current=progress["current"],
            total=progress.get("total"),
            message=progress.get("message"),
            updated_at=ms_to_dt(progress.get("updated_at")),
        )
        if progress
        else None,
        steps=step_list,
        cancel_requested=h.get("cancel_requested") == "1",
        current_step=h.get("current_step") or None,
    )


class CronStatus(BaseModel):
    """One cron entry as the scheduler sees it (``Flow.cron_status``).

    Attributes:
        id: the entry id (``Cron(id=...)``, else derived from workflow, expression, timezone).
        workflow: the workflow each tick starts.
        expression / timezone: the schedule, read in that IANA zone.
        app_id: the app that defines it (only that app's leader fires it).
        next_fire_at: the next tick (UTC): the leader's schedule, or, while no node leads,
            what a leader elected now would compute. None if the expression never matches.
        leader: node id of the app's current scheduler leader, None while none holds the lease.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    workflow: str
    expression: str
    timezone: str
    app_id: str
    next_fire_at: datetime | None = None
    leader: str | None = None
