"""Reading and acting on runs: list, show, cancel, gate status.

Shared by ``Flow``'s public methods, the CLI and the dashboard. Each function
documents its Redis round trips.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import _serde
from ._handle import RunHandle, _not_found
from ._keys import STATUSES, TERMINAL_STATUSES
from ._models import GateStatus, RunInfo, RunPage, run_info_from_hash
from ._store import _claimed
from .errors import RunNotFound, RunStateError, StepNotFound

if TYPE_CHECKING:
    from ._flow import Flow

PURGE_BATCH = 500


def list_runs(
    flow: Flow,
    *,
    workflow: str | None = None,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> RunPage:
    """Runs newest first (by creation; by entry into the status when ``status`` is given).

    Pass ``RunPage.next_cursor`` back as ``cursor`` for the next page. Steps are not loaded
    (use ``get_run``).
    """
    if status is not None and status not in STATUSES:
        raise ValueError(f"status={status!r}: expected one of {', '.join(STATUSES)}")
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValueError(f"limit={limit!r}: expected an int from 1 to 1000")
    keys = flow.store.keys
    index = (
        keys.status(status)
        if status
        else keys.workflow_runs(workflow)
        if workflow
        else keys.created
    )
    max_score, after = _parse_cursor(cursor)
    runs: list[RunInfo] = []
    while len(runs) < limit:
        rows = flow.store.index_page(index, max_score, after, limit)
        if not rows:
            max_score = None
            break
        hashes = flow.store.load_many([rid for rid, _ in rows])
        gone = [rid for (rid, _), h in zip(rows, hashes, strict=True) if not h]
        flow.store.drop_from_index(index, gone)
        for (rid, score), h in zip(rows, hashes, strict=True):
            max_score, after = score, rid
            if (
                h
                and (workflow is None or h.get("workflow") == workflow)
                and (status is None or h.get("status") == status)
            ):
                runs.append(run_info_from_hash(h))
                if len(runs) == limit:
                    break
        if len(rows) < limit and len(runs) < limit:
            max_score = None
            break
    next_cursor = None if max_score is None else f"{int(max_score)}:{after}"
    return RunPage(runs=runs, next_cursor=next_cursor)


def gate_status(flow: Flow, key: str) -> GateStatus:
    """Holders, waiting count and rate budget of one limit key. 1 round trip.

    Examples:
        >>> flow.gate_status("process-order").waiting
        12
    """
    holders, waiting, tat = flow.store.gate_state(key)
    now_ms = time.time() * 1000
    live = [rid for rid, deadline in holders if deadline > now_ms]
    limits = [wf for wf in flow._registry.values() if wf.resolve_limit_key_static() == key]
    next_ms = float(tat) if tat else 0.0
    return GateStatus(
        key=key,
        max_concurrency=limits[0].max_concurrency if limits else None,
        rate_limit=limits[0].rate_limit if limits else None,
        holders=live,
        waiting=waiting,
        next_start_at=datetime.fromtimestamp(next_ms / 1000, tz=UTC) if next_ms > now_ms else None,
    )


def cancel(flow: Flow, run_id: str, reason: str | None = None) -> bool:
    """Cancel a run. False when it was already terminal.

    A queued, scheduled or waiting run is canceled at once (if it has steps with
    compensations, an execution first runs them). A running run stops at its next step
    boundary (``ctx.cancel_requested`` lets long steps check) and its compensations run.
    """
    err = {
        "type": "celery_flow.errors.RunCanceled",
        "message": f"run {run_id} was canceled" + (f": {reason}" if reason else ""),
    }

    limit_key, res = flow.store.cancel(run_id, reason or "", json.dumps(err), flow.expire_ms)
    if res[0] == "missing":
        raise RunNotFound(_not_found(run_id))
    if res[0] == "terminal":
        return False
    if res[0] == "compensate":
        flow._publish(res[3], run_id, res[1], res[2], limit_key)
    elif res[0] == "canceled":
        flow._publish_claimed(_claimed(res[1]))
        if res[2]:
            flow._resume([res[2]])
    # a canceled parent cancels its children (and they theirs)
    for child in flow.store.children(run_id):
        with contextlib.suppress(RunNotFound):  # an expired child
            cancel(flow, child, f"parent run {run_id} was canceled")
    return True


def send_event(flow: Flow, run_id: str, event_type: str, payload: Any = None) -> None:
    """Deliver an event, or buffer it until the run waits for it.

    1 round trip when buffered; when it ends a wait, +3 to claim the run and a publish.
    """
    if not isinstance(event_type, str) or not event_type:
        raise ValueError(f"event_type={event_type!r}: must be a non-empty string")
    body = _serde.dumps(
        payload,
        what=f"payload of event {event_type!r}",
        max_bytes=flow.max_payload_bytes,
        is_input=True,
    )
    res = flow.store.send_event(run_id, event_type, body)
    if res[0] == "missing":
        raise RunNotFound(_not_found(run_id))
    if res[0] == "terminal":
        raise RunStateError(
            f"run {run_id} is {res[1]}: it can receive no more events. Send events only to "
            "runs that have not ended (check handle.status()), or retry the run first."
        )
    if res[0] == "delivered":
        flow._resume([run_id])


def retry(flow: Flow, run_id: str, *, from_step: str | None = None, input: Any = None) -> RunHandle:
    """Run a failed or canceled run again under the same id (see ``Flow.retry``). 2 round trips.

    Steps that succeeded replay from the cache; failed and compensated steps, and ``from_step``
    with every step after it, run again.
    """
    h, raw_steps = flow.store.load(run_id)
    if not h:
        raise RunNotFound(_not_found(run_id))
    if h["status"] not in ("failed", "canceled"):
        raise RunStateError(
            f"run {run_id} is {h['status']}: only failed or canceled runs can be retried "
            "(cancel it first to restart a live run)."
        )
    wf = flow.get_workflow(h["workflow"])
    steps = {name: json.loads(raw) for name, raw in raw_steps.items()}
    forget = {name for name, rec in steps.items() if rec.get("status") != "succeeded"}
    if from_step is not None:
        if from_step not in steps:
            known = ", ".join(sorted(steps, key=lambda n: steps[n].get("seq", 0))) or "none"
            raise StepNotFound(
                f"run {run_id} has no step {from_step!r} (its steps: {known}); pass one of "
                "them as from_step, or None to rerun only what did not succeed."
            )
        first = steps[from_step].get("seq", 0)
        forget |= {name for name, rec in steps.items() if rec.get("seq", 0) >= first}
    input_json = "" if input is None else wf.dump_input(input)[1]
    res = flow.store.retry(
        run_id, h.get("limit_key", ""), input_json, wf.retries.max_attempts, sorted(forget)
    )
    if res[0] == "state":
        raise RunStateError(
            f"run {run_id} is {res[1]}: only failed or canceled runs can be retried"
        )
    flow._publish_claimed(_claimed(res[2]))
    return RunHandle(flow, run_id, wf.name)


def retry_many(
    flow: Flow,
    *,
    workflow: str | None = None,
    status: str = "failed",
    since: datetime | None = None,
) -> list[RunHandle]:
    """Retry every failed (or canceled) run, optionally of one workflow and created since."""
    if status not in ("failed", "canceled"):
        raise ValueError(f"status={status!r}: retry_many retries 'failed' or 'canceled' runs")
    if since is not None and since.tzinfo is None:
        raise ValueError("since= must be an aware datetime")
    targets: list[str] = []
    cursor = None
    while True:
        page = list_runs(flow, workflow=workflow, status=status, limit=500, cursor=cursor)
        targets += [r.id for r in page.runs if since is None or r.created_at >= since]
        cursor = page.next_cursor
        if cursor is None:
            break
    return [retry(flow, run_id) for run_id in targets]


def _parse_cursor(cursor: str | None) -> tuple[float | None, str | None]:
    if cursor is None:
        return None, None
    score, sep, rid = cursor.partition(":")
    if not sep or not score.isdigit() or not rid:
        raise ValueError(f"cursor={cursor!r} is not a cursor returned by list_runs")
    return float(score), rid


def purge_runs(
    flow: Flow, older_ms: int, *, max_batches: int | None = None, backlog: list[str] | None = None
) -> int:
    """Delete terminal runs finished more than ``older_ms`` ago; returns how many.

    Works in batches of 500 per terminal status (3 round trips each); ``max_batches`` bounds
    the batches per status (the maintenance loop takes one per pass, so it never stalls).
    The statuses that stopped at ``max_batches`` with a full batch (more may be due) are
    appended to ``backlog`` when given.
    """
    store = flow.store
    total = 0
    for status in sorted(TERMINAL_STATUSES):
        seen: set[str] = set()
        batches = 0
        while max_batches is None or batches < max_batches:
            batches += 1
            ids, _, now = store.due(store.keys.status(status), PURGE_BATCH, older_ms)
            fresh = [i for i in ids if i not in seen]
            if not fresh:  # a batch that cannot be deleted would come back forever: stop
                break
            seen.update(fresh)
            total += store.purge(fresh, now - older_ms)
            if len(ids) < PURGE_BATCH:
                break
        else:
            if backlog is not None:
                backlog.append(status)
    return total
