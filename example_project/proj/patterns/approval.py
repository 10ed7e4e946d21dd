"""Approve an expense: wait for a human, escalate after a timeout, reject if nobody decides.

Seed: ``cloudflare-workflows-patterns.md``, "Human-in-the-Loop Patterns / Approval with
Timeout and Escalation".

The workflow ``expense-approval`` notifies the approver, then waits for an ``approval`` event
with ``ctx.step.wait_for_event("decision", "approval", timeout=...)`` (48 hours by default).
The run is ``waiting`` meanwhile: it holds no worker, and a worker restart loses nothing. A
person answers through a front end (``POST /runs/<id>/approval``), the CLI (``celery -A
example_project.proj flow send-event <run_id> approval --payload '{"approved": true, "by":
"dana"}'``) or ``flow.send_event(run_id, "approval", {"approved": True, "by": "dana"})``. An
answer sent before the run reaches the wait (a very fast approver) is buffered, not lost.

If the timeout passes, ``EventTimeout`` is raised; the workflow catches it, notifies the
manager and waits again on a second step, ``escalated-decision`` (24 hours by default).
**If nobody decides at all, the expense is rejected** (``by`` is ``"auto-reject"``): money is
never paid out by default, and the employee is told, so they can resubmit. Either way the
decision is recorded in SQLite (an upsert keyed by the expense) and the employee notified.

Replay keeps this honest: a timed-out wait raises ``EventTimeout`` again on every replay, so a
resumed run takes the escalation path again without re-sending the manager's e-mail (the
``notify-manager`` step is cached).

Run it: ``python -m example_project.trigger approval`` (the trigger approves it);
tests: ``tests/examples/test_migration_approval.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from celery_flow import Context, EventTimeout

from .. import db
from ..celery import flow
from .catalog import Example

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY, expense_id TEXT NOT NULL, recipient TEXT NOT NULL,
    kind TEXT NOT NULL, sent_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS expense_decisions (
    expense_id TEXT PRIMARY KEY, approved INTEGER NOT NULL, decided_by TEXT NOT NULL,
    escalated INTEGER NOT NULL, decided_at TEXT NOT NULL);
"""


def notify(expense_id: str, recipient: str, kind: str) -> None:
    """Send an e-mail (here: a row in ``notifications``)."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT INTO notifications (expense_id, recipient, kind, sent_at) VALUES (?, ?, ?, ?)",
            (expense_id, recipient, kind, datetime.now(UTC).isoformat()),
        )


def record_decision(expense_id: str, approved: bool, by: str, escalated: bool) -> None:
    """Upsert the decision, so a re-executed step leaves one row."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT INTO expense_decisions VALUES (?, ?, ?, ?, ?) ON CONFLICT(expense_id) DO UPDATE"
            " SET approved = excluded.approved, decided_by = excluded.decided_by,"
            " escalated = excluded.escalated, decided_at = excluded.decided_at",
            (expense_id, approved, by, escalated, datetime.now(UTC).isoformat()),
        )


class Decision(BaseModel):
    """Payload of an ``approval`` event."""

    approved: bool
    by: str


class ExpenseIn(BaseModel):
    """Input of ``expense-approval``. Timeouts are seconds or ISO 8601 durations (``PT48H``)."""

    expense_id: str
    amount_cents: int = Field(gt=0)
    employee: str
    approver: str = "team-lead@example.com"
    manager: str = "finance-manager@example.com"
    timeout: timedelta = timedelta(hours=48)
    escalation_timeout: timedelta = timedelta(hours=24)


@flow.workflow(name="expense-approval")
def expense_approval(ctx: Context, expense: ExpenseIn) -> dict[str, Any]:
    """Ask the approver; on timeout ask the manager; on a second timeout reject."""
    ctx.step.run("notify-approver", notify, expense.expense_id, expense.approver, "please-approve")
    escalated = False
    try:
        payload = ctx.step.wait_for_event("decision", "approval", timeout=expense.timeout)
    except EventTimeout:
        escalated = True
        ctx.step.run("notify-manager", notify, expense.expense_id, expense.manager, "escalated")
        try:
            payload = ctx.step.wait_for_event(
                "escalated-decision", "approval", timeout=expense.escalation_timeout
            )
        except EventTimeout:
            payload = {"approved": False, "by": "auto-reject"}
    decision = Decision.model_validate(payload)
    ctx.step.run(
        "record", record_decision, expense.expense_id, decision.approved, decision.by, escalated
    )
    outcome = "approved" if decision.approved else "rejected"
    ctx.step.run("notify-employee", notify, expense.expense_id, expense.employee, outcome)
    return {
        "expense_id": expense.expense_id,
        "approved": decision.approved,
        "by": decision.by,
        "escalated": escalated,
    }


EXAMPLES = [
    Example(
        key="approval",
        title="Expense approval: wait 48 h for a human, escalate, auto-reject",
        workflow="expense-approval",
        make_input=lambda tag: {
            "expense_id": f"exp-{tag}",
            "amount_cents": 12900,
            "employee": f"employee-{tag}@example.com",
            "timeout": "PT48H",
        },
        approval=True,
    )
]
