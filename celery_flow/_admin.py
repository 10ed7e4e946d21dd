"""Reading and acting on runs: list, show, cancel, gate status.

Shared by ``Flow``'s public methods, the CLI and the dashboard. Each function
documents its Redis round trips.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._handle import _not_found
from ._keys import STATUSES
from ._models import GateStatus, RunInfo, RunPage, run_info_from_hash
from ._store import _claimed
from .errors import RunNotFound

if TYPE_CHECKING:
    from ._flow import Flow


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

    Example:
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
    return True


def _parse_cursor(cursor: str | None) -> tuple[float | None, str | None]:
    if cursor is None:
        return None, None
    score, sep, rid = cursor.partition(":")
    if not sep or not score.isdigit() or not rid:
        raise ValueError(f"cursor={cursor!r} is not a cursor returned by list_runs")
    return float(score), rid
