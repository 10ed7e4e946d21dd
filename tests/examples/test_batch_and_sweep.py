"""The welcome-placeholder batch and the cron cart sweep of the example project, on a real worker.

Each test imports the example project on its own prefix and SQLite file (``tests/examples/
conftest.py``); outcomes are read back from SQLite and from the runs in Redis.
"""

from __future__ import annotations

from typing import Any

import pytest

from celery_flow import BatchProgress
from celery_flow.testing import eventually

from .conftest import query, start_like_the_trigger, wait_result

EVERY_SECOND = {"EXAMPLE_SWEEP_CRON": "* * * * * *"}  # 6 fields: seconds first


# -- welcome placeholders: process -> paginate -> execute -----------------------------------------


def test_welcome_batch_dry_run_then_each_pending_user_once_then_nothing_left(example):
    # Given 75 users (60 active) of whom 3 already got their placeholder from a layer-3 run
    batch = example.module("welcome_batch")
    assert batch.seed_users(75) == 75 and batch.seed_users(75) == 75  # seeding is idempotent
    for user_id in (1, 2, 3):
        assert wait_result(batch.generate_placeholder.run(user_id))["success"] is True
    placeholders = "SELECT COUNT(*), COALESCE(SUM(writes), 0) FROM welcome_placeholders"

    # When layer 1 runs as a dry run
    dry = wait_result(batch.welcome.process(dry_run=True))

    # Then it counts exactly and writes nothing
    assert dry == {
        "success": True,
        "total_eligible": 60,
        "to_process": 57,
        "already_processed": 3,
        "dry_run": True,
        "message": "[DryRun] Would process 57 items",
    }
    assert query(example, placeholders) == [(3, 3)]
    assert len(example.flow.list_runs(workflow="generate-placeholder").runs) == 3

    # When it runs for real
    handle = batch.welcome.process()
    stats = wait_result(handle)
    assert stats["to_process"] == 57 and stats["dry_run"] is False
    progress = eventually(
        lambda: (p := batch.welcome.progress(handle.id)).done == p.total and p,
        timeout=30,
        what="every pending user processed",
    )

    # Then every pending user was processed exactly once, on 2 pages (50 + 10 active users)
    assert progress == BatchProgress(total=57, done=57, failed=0, pending=0, pages=2)
    assert query(example, placeholders) == [(60, 60)]  # one row per active user, written once
    inactive = "SELECT COUNT(*) FROM welcome_placeholders JOIN users ON id = user_id AND NOT active"
    assert query(example, inactive) == [(0,)]
    runs = example.flow.list_runs(workflow="generate-placeholder", limit=200).runs
    assert len(runs) == 60 and {r.status for r in runs} == {"succeeded"}
    # every layer is a real run: process -> page 1 -> page 2 (each page starts the next)
    first, second = sorted(
        example.flow.list_runs(workflow="welcome-placeholder:paginate").runs,
        key=lambda run: run.input["page"],
    )
    assert (first.parent_run_id, second.parent_run_id) == (handle.id, first.id)

    # And a second call finds nothing left to do
    again = wait_result(batch.welcome.process())
    assert again["to_process"] == 0 and again["already_processed"] == 60
    assert again["message"] == "Nothing to process: all 60 items already processed"
    assert query(example, placeholders) == [(60, 60)]


def test_welcome_batch_example_starts_like_the_trigger_and_succeeds(example):
    # Given a fresh database, when the example is started as the trigger does
    handle = start_like_the_trigger(example, "welcome-batch")

    # Then layer 1 succeeds and every active demo user gets a placeholder
    stats = wait_result(handle)
    assert stats["success"] is True and stats["to_process"] == 60
    batch = example.module("welcome_batch")
    eventually(lambda: batch.welcome.progress(handle.id).done == 60, timeout=30, what="60 done")
    assert query(example, "SELECT COUNT(*) FROM welcome_placeholders") == [(60,)]


# -- the cron sweep ------------------------------------------------------------------------------


@pytest.mark.parametrize("example_extra_env", [EVERY_SECOND], ids=["cron-every-second"])
def test_the_cron_sweep_expires_exactly_the_abandoned_carts(example):
    # Given a worker (whose bootstep runs the scheduler), abandoned and fresh carts
    sweep = example.module("sweep")
    assert sweep.SWEEP_CRON == "* * * * * *"
    for i in range(3):
        sweep.add_cart(f"old-{i}", f"u{i}", items=2, idle_minutes=45 + i)
        sweep.add_cart(f"new-{i}", f"u{i}", items=1, idle_minutes=5)

    # When the cron ticks (every second here)
    def swept_by_cron() -> list[Any]:
        runs = example.flow.list_runs(workflow="sweep-expired-carts", status="succeeded").runs
        return sum(r.output["swept"] for r in runs) == 3 and runs

    runs = eventually(swept_by_cron, timeout=15, what="cron runs sweeping the 3 abandoned carts")

    # Then cron runs (not manual ones) swept exactly the abandoned carts, once each
    assert all((r.idempotency_key or "").startswith("cron:") for r in runs)
    assert runs[0].input == {"ttl_minutes": 30.0, "batch_size": 500}
    expired = query(example, "SELECT id FROM carts WHERE status = 'expired' ORDER BY id")
    assert expired == [("old-0",), ("old-1",), ("old-2",)]
    assert query(example, "SELECT COUNT(*) FROM carts WHERE status = 'open'") == [(3,)]
    # and the registry shows the entry with its leader (this worker)
    (entry,) = [s for s in example.flow.cron_status() if s.workflow == "sweep-expired-carts"]
    assert entry.expression == "* * * * * *" and entry.leader is not None
    assert entry.next_fire_at is not None


def test_cart_sweep_example_starts_like_the_trigger_and_succeeds(example):
    # Given a fresh database, when the example is started as the trigger does (a manual run)
    handle = start_like_the_trigger(example, "cart-sweep")

    # Then it sweeps the abandoned cart it left and keeps the fresh one
    result = wait_result(handle)
    assert result["swept"] == 1 and result["cart_ids"][0].endswith("-abandoned")
    assert query(example, "SELECT status, COUNT(*) FROM carts GROUP BY status") == [
        ("expired", 1),
        ("open", 1),
    ]
    assert handle.info().idempotency_key is None  # started by hand, not by a tick
