"""The data migration (progress tracking) and expense approval (timeout, escalation) examples.

Each test imports the example project on its own prefix and SQLite file (``tests/examples/
conftest.py``) with a real worker; outcomes are read back from SQLite, from the runs in Redis
and, for progress, from the dashboard's JSON API.
"""

from __future__ import annotations

import sqlite3
import uuid
import warnings
from typing import Any

import pytest

from celery_flow import RunInfo
from celery_flow.testing import eventually, start_flow_worker

from .conftest import ExampleProject, wait_result

with warnings.catch_warnings():
    # Starlette >= 1.x prefers the httpx2 package and warns when it falls back to httpx.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient


def query(example: ExampleProject, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` against the test's SQLite file."""
    with sqlite3.connect(example.db_path) as conn:
        return [tuple(row) for row in conn.execute(sql, args)]


def step(info: RunInfo, name: str) -> Any:
    return next(s for s in info.steps if s.name == name)


# -- migration -----------------------------------------------------------------------------------


def test_migration_copies_every_row_once_in_batches_and_reports_progress(example):
    from celery_flow.dashboard import create_app

    dashboard = TestClient(create_app(example.flow))

    # When 150 legacy customers are migrated 25 at a time, each batch taking 0.2 s
    handle = example.flow.run(
        "migrate-customers", {"total": 150, "batch_size": 25, "pause_seconds": 0.2}
    )

    # Then the progress is visible while it runs: in RunInfo ...
    def partway() -> Any:
        p = example.flow.get_run(handle.id).progress
        return p is not None and 0 < p.current < 150 and p

    seen = eventually(partway, what="an intermediate progress value")
    assert seen.total == 150 and seen.message.startswith(f"migrated {int(seen.current)}/150")

    # ... and in the dashboard's JSON API
    def api_partway() -> Any:
        body = dashboard.get(f"/api/runs/{handle.id}").json()
        return body["status"] == "running" and 0 < body["progress"]["current"] < 150 and body

    assert eventually(api_partway, what="progress in /api/runs/<id>")["progress"]["total"] == 150

    # And at the end it reached total/total, one step per batch
    assert wait_result(handle) == {"migrated": 150, "total": 150, "batches": 6}
    info = handle.info()
    assert (info.progress.current, info.progress.total, info.progress.message) == (
        150,
        150,
        "migrated 150/150 customers in 6 batches",
    )
    batches = [s for s in info.steps if s.name.startswith("batch:")]
    assert [s.name for s in batches] == [f"batch:{i}" for i in range(6)]
    assert all(s.attempts == 1 for s in batches)
    # every customer was written exactly once (an upsert bumps the row version)
    assert query(example, "SELECT count(*), min(version), max(version) FROM customers") == [
        (150, 1, 1)
    ]
    # with normalised fields
    assert query(example, "SELECT * FROM customers WHERE id = 1") == [
        (1, "Grace", "Johnson", "grace.1@example.com", "+15550000001", "2011-02-02", 1)
    ]
    # seeding the legacy table again adds nothing
    assert example.module("migration").seed_legacy(150) == 150
    assert query(example, "SELECT count(*) FROM legacy_customers") == [(150,)]


# -- approval ------------------------------------------------------------------------------------


def expense(example: ExampleProject, tag: str, **timeouts: float) -> Any:
    return example.flow.run(
        "expense-approval",
        {
            "expense_id": f"exp-{tag}",
            "amount_cents": 8000,
            "employee": f"{tag}@example.com",
            **timeouts,
        },
    )


def notifications(example: ExampleProject) -> list[tuple[Any, ...]]:
    return query(example, "SELECT recipient, kind FROM notifications ORDER BY id")


def decisions(example: ExampleProject) -> list[tuple[Any, ...]]:
    return query(
        example, "SELECT expense_id, approved, decided_by, escalated FROM expense_decisions"
    )


def wait_until_waiting(handle: Any) -> None:
    eventually(lambda: handle.status() == "waiting", what="the run to wait for a decision")


@pytest.mark.parametrize("approved", [True, False], ids=["approved", "rejected"])
def test_an_expense_started_like_the_trigger_waits_then_takes_the_approvers_decision(
    example, approved
):
    # Given the catalogue's approval example (48 h timeout), started as the trigger does
    entry = example.proj.patterns.EXAMPLES["approval"]
    assert entry.approval and entry.workflow == "expense-approval"
    tag = uuid.uuid4().hex[:8]
    handle = example.flow.run(entry.workflow, entry.make_input(tag))

    # When it waits (no worker held) and the approver answers through an "approval" event
    wait_until_waiting(handle)
    assert notifications(example) == [("team-lead@example.com", "please-approve")]
    example.flow.send_event(handle.id, "approval", {"approved": approved, "by": "dana"})

    # Then the decision is the approver's, recorded once, and the employee is told
    out = wait_result(handle)
    assert out == {
        "expense_id": f"exp-{tag}",
        "approved": approved,
        "by": "dana",
        "escalated": False,
    }
    assert decisions(example) == [(f"exp-{tag}", int(approved), "dana", 0)]
    outcome = "approved" if approved else "rejected"
    assert notifications(example)[1:] == [(f"employee-{tag}@example.com", outcome)]
    assert step(handle.info(), "decision").kind == "event"


def test_a_decision_sent_before_the_run_waits_is_buffered(example_project):
    # Given a run that no worker has picked up yet, and a decision sent right away
    handle = expense(example_project, "early", timeout=5)
    example_project.flow.send_event(handle.id, "approval", {"approved": True, "by": "quick"})
    assert handle.status() == "queued"

    # When a worker runs it
    with start_flow_worker(example_project.app, pool="threads", concurrency=8):
        out = wait_result(handle)

    # Then the buffered event was the decision: no wait, no escalation
    assert out["approved"] is True and out["by"] == "quick" and out["escalated"] is False
    assert decisions(example_project) == [("exp-early", 1, "quick", 0)]


def test_a_timeout_escalates_to_the_manager_who_decides(example):
    # Given an approver who does not answer within 0.3 s
    handle = expense(example, "late", timeout=0.3, escalation_timeout=10)

    # When the wait times out, the manager is notified and the run waits again
    def escalated() -> bool:
        return any(s.name == "notify-manager" for s in handle.info().steps)

    eventually(escalated, what="the escalation")
    assert notifications(example)[-1] == ("finance-manager@example.com", "escalated")
    wait_until_waiting(handle)
    example.flow.send_event(handle.id, "approval", {"approved": True, "by": "fin-mgr"})

    # Then the manager's decision counts, marked as escalated
    out = wait_result(handle)
    assert out == {"expense_id": "exp-late", "approved": True, "by": "fin-mgr", "escalated": True}
    assert decisions(example) == [("exp-late", 1, "fin-mgr", 1)]
    info = handle.info()
    assert step(info, "decision").error.type == "celery_flow.errors.EventTimeout"
    assert step(info, "escalated-decision").status == "succeeded"
    assert [kind for _, kind in notifications(example)] == [
        "please-approve",
        "escalated",
        "approved",
    ]


def test_nobody_deciding_rejects_the_expense(example):
    # When neither the approver nor the manager answers in time
    handle = expense(example, "ignored", timeout=0.3, escalation_timeout=0.3)

    # Then the expense is auto-rejected after the escalation, and everyone was told
    out = wait_result(handle)
    assert out == {
        "expense_id": "exp-ignored",
        "approved": False,
        "by": "auto-reject",
        "escalated": True,
    }
    assert handle.status() == "succeeded"
    assert decisions(example) == [("exp-ignored", 0, "auto-reject", 1)]
    assert notifications(example) == [
        ("team-lead@example.com", "please-approve"),
        ("finance-manager@example.com", "escalated"),
        ("ignored@example.com", "rejected"),
    ]
