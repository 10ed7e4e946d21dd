"""``flow.get_status``: the DAG-style status view of a run (``WorkflowStatus``, ``DagStepStatus``).

A ``flow.dag`` run has one entry per DAG step, from its step records, its ``compensate:<id>``
records and, for a parallel wave, the wave's map items (also while the wave runs); a plain run
has one entry per recorded step.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from ._models import ErrorInfo, RunInfo, ms_to_dt, run_info_from_hash
from .errors import RunNotFound

if TYPE_CHECKING:
    from ._dag import Dag
    from ._flow import Flow

WorkflowState = Literal["pending", "running", "waiting", "completed", "failed", "canceled"]
DagStepState = Literal[
    "pending", "running", "waiting", "completed", "failed", "compensated", "skipped"
]
_RUN_STATE: dict[str, WorkflowState] = {
    "scheduled": "pending",
    "queued": "pending",
    "running": "running",
    "waiting": "waiting",
    "succeeded": "completed",
    "failed": "failed",
    "canceled": "canceled",
}
_STEP_STATE: dict[str, DagStepState] = {
    "running": "running",
    "waiting": "waiting",
    "succeeded": "completed",
    "failed": "failed",
    "compensated": "compensated",
}


class DagStepStatus(BaseModel):
    """One step in :class:`WorkflowStatus`.

    ``state`` is ``pending`` (not started), ``running``, ``waiting`` (plain runs: a durable
    wait), ``completed``, ``failed``, ``compensated`` (completed, then undone by the saga) or
    ``skipped`` (never ran: the run ended first). A compensation that failed leaves the step
    ``completed`` with the compensation's ``error``.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    state: DagStepState
    started_at: datetime | None = None
    completed_at: datetime | None = None
    attempts: int = 0
    result: Any = None
    error: ErrorInfo | None = None


class WorkflowStatus(BaseModel):
    """DAG-style view of any run (``flow.get_status(run_id)``).

    ``context`` is the DAG run's context (a plain run's input); ``results`` maps each completed
    step id to its result; ``current_step`` is a step running now (None when none is).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    state: WorkflowState
    started_at: datetime | None = None
    completed_at: datetime | None = None
    current_step: str | None = None
    completed_steps: list[str] = []
    failed_steps: list[str] = []
    context: Any = None
    results: dict[str, Any] = {}
    steps: list[DagStepStatus] = []


def get_status(flow: Flow, run_id: str) -> WorkflowStatus:
    """Status of one run: per DAG step for DAG runs, per recorded step for plain runs."""
    from ._handle import _not_found

    h, raw_steps = flow.store.load(run_id)
    if not h:
        raise RunNotFound(_not_found(run_id))
    info = run_info_from_hash(h, raw_steps)
    dag = flow.dags.get(info.workflow)
    if dag is None:
        steps = [
            DagStepStatus(
                id=s.name,
                state=_STEP_STATE.get(s.status, "pending"),
                started_at=s.started_at,
                completed_at=s.finished_at,
                attempts=s.attempts,
                result=s.output,
                error=s.error,
            )
            for s in info.steps
        ]
        context = info.input
    else:
        records = {k: json.loads(v) for k, v in (raw_steps or {}).items()}
        steps = _dag_steps(flow, dag, info, records)
        context = info.input.get("context") if isinstance(info.input, dict) else info.input
    return _summary(info, steps, context)


def _summary(info: RunInfo, steps: list[DagStepStatus], context: Any) -> WorkflowStatus:
    done = [s for s in steps if s.state in ("completed", "compensated")]
    done.sort(key=lambda s: s.completed_at or datetime.max.replace(tzinfo=UTC))
    running = [s.id for s in steps if s.state in ("running", "waiting")]
    return WorkflowStatus(
        id=info.id,
        state=_RUN_STATE[info.status],
        started_at=info.started_at,
        completed_at=info.finished_at if info.is_terminal else None,
        current_step=None if info.is_terminal else (info.current_step or next(iter(running), None)),
        completed_steps=[s.id for s in done],
        failed_steps=[s.id for s in steps if s.state == "failed"],
        context=context,
        results={s.id: s.result for s in done},
        steps=steps,
    )


def _dag_steps(
    flow: Flow, dag: Dag, info: RunInfo, records: dict[str, dict[str, Any]]
) -> list[DagStepStatus]:
    found: dict[str, dict[str, Any]] = {}
    for name, rec in records.items():
        if name in dag.steps:
            found[name] = {
                "state": _STEP_STATE.get(rec["status"], "pending"),
                "started_at": ms_to_dt(rec.get("started_at")),
                "completed_at": ms_to_dt(rec.get("finished_at")),
                "attempts": rec.get("attempts", 0),
                "result": rec.get("output"),
                "error": rec.get("error"),
            }
        elif name.startswith("wave:") and rec.get("kind") == "map":
            found.update(_wave_steps(flow, info.id, name, rec))
    if info.current_step in dag.steps and info.current_step not in found:
        found[info.current_step] = {"state": "running"}
    for name, rec in records.items():
        sid = name.removeprefix("compensate:")
        if name.startswith("compensate:") and sid in found:
            # "succeeded": the failure path's step; "compensated": the engine's (cancel)
            if rec["status"] in ("succeeded", "compensated"):
                found[sid]["state"] = "compensated"
            elif rec.get("error") or rec.get("compensation_error"):
                error = dict(rec.get("error") or rec["compensation_error"])
                error["message"] = f"compensation failed: {error.get('message', '')}"
                found[sid]["error"] = error
    idle: DagStepState = "skipped" if info.is_terminal else "pending"
    return [
        DagStepStatus(
            id=sid,
            state=found.get(sid, {}).get("state", idle),
            started_at=found.get(sid, {}).get("started_at"),
            completed_at=found.get(sid, {}).get("completed_at"),
            attempts=found.get(sid, {}).get("attempts", 0),
            result=found.get(sid, {}).get("result"),
            error=_error_info(found.get(sid, {}).get("error")),
        )
        for sid in dag.steps
    ]


def _wave_steps(
    flow: Flow, run_id: str, name: str, rec: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per-step detail of a parallel wave, from its map items (also while it is running)."""
    n = int(rec.get("n", 0))
    items = flow.store.map_fields(run_id, name, "i", range(n))
    results = flow.store.map_fields(run_id, name, "r", range(n))
    errors = flow.store.map_fields(run_id, name, "e", range(n))
    out: dict[str, dict[str, Any]] = {}
    for item, result, error in zip(items, results, errors, strict=True):
        if item is None:
            continue
        sid = json.loads(item)["step"]
        if result is not None:
            env = json.loads(result)
            out[sid] = {
                "state": "failed" if "error" in env else "completed",
                "started_at": ms_to_dt(env.get("started_at")),
                "completed_at": ms_to_dt(env.get("finished_at")),
                "attempts": env.get("attempts", 0),
                "result": env.get("result"),
                "error": env.get("error"),
            }
        elif error is not None:
            out[sid] = {"state": "failed", "error": json.loads(error)}
        elif rec["status"] == "waiting":
            out[sid] = {"state": "running", "started_at": ms_to_dt(rec.get("started_at"))}
    return out


def _error_info(error: Any) -> ErrorInfo | None:
    if not isinstance(error, dict):
        return None
    return ErrorInfo(
        type=str(error.get("type", "")),
        message=str(error.get("message", "")),
        traceback=error.get("traceback"),
    )
