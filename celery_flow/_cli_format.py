"""What the CLI prints: the registry rows, run lists, one run's description, as text or JSON.

celery_flow/cli.py defines the commands and calls these. Everything here returns strings
(``echo_json`` prints), except ``registry``, which reads the gate and cron status it reports.
Times print in UTC (``2024-05-01 12:00:00Z``), durations compactly (``340ms``, ``4.2s``,
``3m05s``, ``2h10m``) and ``-`` stands for "none".
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ._flow import Flow
    from ._models import RunInfo


def one_line(message: object) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _dt(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _secs(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{minutes}m{sec:02d}s" if not hours else f"{hours}h{minute:02d}m"


def _span(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def _short(value: Any, width: int = 70) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


# -- the registry (`flow workflows`) ----------------------------------------------------------


def registry(flow: Flow) -> list[dict[str, Any]]:
    """One JSON-ready row per workflow: queue, limits, gate occupancy, cron entries."""
    from ._cron import compile_spec, entry_id, next_fire

    status = {c.id: c for c in flow.cron_status()}
    out = []
    for wf in sorted(flow.workflows.values(), key=lambda w: w.name):
        key = wf.resolve_limit_key_static()
        gate = None
        if key and (wf.max_concurrency or wf.rate_limit):
            g = flow.gate_status(key)
            nxt = g.next_start_at.isoformat() if g.next_start_at else None
            gate = {"key": key, "running": len(g.holders), "waiting": g.waiting, "next": nxt}
        crons = []
        for c in wf.cron:
            eid = c.id or entry_id(wf.name, c.expression, c.timezone)
            st = status.get(eid)
            if st is not None:
                at = st.next_fire_at
            else:  # not synced yet (no worker started): what a leader would compute now
                sec = next_fire(compile_spec(c.expression, c.timezone), time.time())
                at = None if sec is None else datetime.fromtimestamp(sec, UTC)
            crons.append(
                {
                    "id": eid,
                    "expression": c.expression,
                    "timezone": c.timezone,
                    "next_fire_at": at.isoformat() if at else None,
                    "leader": st.leader if st else None,
                    "synced": st is not None,
                }
            )
        out.append(
            {
                "name": wf.name,
                "queue": wf.queue or flow.app.conf.task_default_queue,
                "max_concurrency": wf.max_concurrency,
                "rate_limit": wf.rate_limit,
                "limit_key": "<callable>" if callable(wf.limit_key) else key,
                "max_attempts": wf.retries.max_attempts,
                "timeout": wf.timeout,
                "gate": gate,
                "cron": crons,
            }
        )
    return out


def registry_text(rows: list[dict[str, Any]]) -> str:
    """The rows of ``registry`` as a table, then the cron leader if any workflow has cron."""
    table = [
        [
            r["name"],
            r["queue"],
            str(r["max_concurrency"] or "-"),
            r["rate_limit"] or "-",
            _gate_text(r),
            ", ".join(f"{c['expression']} {c['timezone']} -> {_iso_text(c)}" for c in r["cron"])
            or "-",
        ]
        for r in rows
    ]
    head = ["WORKFLOW", "QUEUE", "MAX", "RATE", "RUNNING/WAITING", "CRON -> NEXT FIRE"]
    lines = [_table(head, table)]
    crons = [c for r in rows for c in r["cron"]]
    if crons:
        leader = next((c["leader"] for c in crons if c["leader"]), None)
        lines.append(f"cron leader: {leader or 'none (no worker or scheduler is running)'}")
    return "\n".join(lines)


def _gate_text(row: dict[str, Any]) -> str:
    if row["limit_key"] == "<callable>":
        return "per input"  # one gate per key the callable returns
    gate = row["gate"]
    return "-" if gate is None else f"{gate['running']}/{gate['waiting']}"


def _iso_text(cron: dict[str, Any]) -> str:
    at = cron["next_fire_at"]
    return "never" if at is None else _dt(datetime.fromisoformat(at))


# -- runs (`flow runs`, `flow show`) ----------------------------------------------------------


def runs_table(runs: list[RunInfo]) -> str:
    """One line per run: id, workflow, status, attempt, creation time, duration."""
    rows = [
        [
            r.id,
            r.workflow,
            r.status,
            f"{r.attempt}/{r.max_attempts}",
            _dt(r.created_at),
            _secs(_span(r.started_at, r.finished_at)),
        ]
        for r in runs
    ]
    return _table(["RUN", "WORKFLOW", "STATUS", "ATTEMPT", "CREATED", "DURATION"], rows)


def describe(info: RunInfo) -> list[str]:
    """One run's lines: its fields, then its step timeline (offsets from the run's creation)."""
    lines = [
        f"run       {info.id}",
        f"workflow  {info.workflow}   queue {info.queue or '-'}",
        f"status    {info.status}   attempt {info.attempt}/{info.max_attempts}"
        + ("   (cancel requested)" if info.cancel_requested and not info.is_terminal else ""),
        f"created   {_dt(info.created_at)}   started {_dt(info.started_at)}   finished "
        f"{_dt(info.finished_at)}   ({_secs(_span(info.started_at, info.finished_at))})",
    ]
    if info.parent_run_id or info.idempotency_key:
        lines.append(f"parent    {info.parent_run_id or '-'}   key {info.idempotency_key or '-'}")
    lines.append(f"input     {_short(info.input)}")
    if info.status == "succeeded":
        lines.append(f"output    {_short(info.output)}")
    if info.progress is not None:
        p = info.progress
        total = f"/{p.total:g}" if p.total is not None else ""
        lines.append(f"progress  {p.current:g}{total}" + (f"  {p.message}" if p.message else ""))
    if info.error is not None:
        lines.append(f"error     {info.error.type}: {one_line(info.error.message)}")
    if not info.steps:
        return [*lines, "steps     none"]
    rows = []
    for i, s in enumerate(info.steps, 1):
        offset = _span(info.created_at, s.started_at)
        error = "" if s.error is None else f"{s.error.type.rsplit('.', 1)[-1]}: {s.error.message}"
        rows.append(
            [
                str(i),
                s.name,
                s.kind,
                s.status,
                str(s.attempts),
                "-" if offset is None else "+" + _secs(offset),
                _secs(_span(s.started_at, s.finished_at)),
                one_line(error)[:60],
            ]
        )
    head = ["#", "STEP", "KIND", "STATUS", "ATTEMPTS", "START", "DURATION", "ERROR"]
    return [*lines, "steps:", *("  " + line for line in _table(head, rows).splitlines())]
