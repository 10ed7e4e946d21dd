"""Migrate customers from a legacy table in batches, reporting progress after each batch.

Seed: ``cloudflare-workflows-patterns.md``, "Long-Running Process Patterns / Progress
Tracking".

The workflow ``migrate-customers`` copies the ``legacy_customers`` table (free-form names,
mixed-case e-mails, US dates, formatted phone numbers) into ``customers`` with normalised
fields. Each batch is its own step, ``batch:{i}``, so a crash or a retry resumes after the last
finished batch instead of starting over. After every batch ``ctx.progress(done, total,
message)`` records how far it got: ``RunInfo.progress``, ``celery -A example_project.proj flow
show <run_id>``, the dashboard and ``GET /api/runs/<run_id>`` all show it while the run goes on.

Batches are read by key (``id > last id of the previous batch``), not by offset, and written
with an upsert that bumps ``version``, so a batch that runs twice (a worker died after writing,
before the step was recorded) cannot duplicate a customer, and the row version shows it. As in
the seed, each batch pauses briefly (``pause_seconds``) to spare the legacy database. (The
pause is a plain sleep inside the batch step rather than a durable ``ctx.step.sleep``: after a
durable sleep the handler replays from the top, and the replayed ``ctx.progress`` calls of the
earlier batches would make the progress bar flicker backwards for a moment.)

``max_concurrency=1``: a second migration started meanwhile waits for the first (two at once
would only fight over the same rows).

The ``seed`` step fills the legacy table with ``total`` fake rows (idempotently) so the
example has something to migrate; a real migration would start at ``count``.

Run it: ``python -m example_project.trigger migration``; tests:
``tests/examples/test_migration_approval.py``.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from celery_flow import Context

from .. import db
from ..celery import flow
from .catalog import Example

SCHEMA = """
CREATE TABLE IF NOT EXISTS legacy_customers (
    id INTEGER PRIMARY KEY, full_name TEXT, email TEXT, phone TEXT, signup TEXT);
CREATE TABLE IF NOT EXISTS customers (
    id INTEGER PRIMARY KEY, first_name TEXT NOT NULL, last_name TEXT NOT NULL,
    email TEXT NOT NULL, phone TEXT NOT NULL, signed_up TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1);
"""
FIRST = ["ada", "GRACE", "Alan ", "katherine", " Edsger", "barbara", "DONALD", "Frances"]
LAST = ["lovelace", "Hopper", "TURING", "johnson ", "dijkstra", " Liskov", "knuth", "ALLEN"]


def seed_legacy(total: int) -> int:
    """Fill the legacy table with ``total`` messy rows (the same rows every time)."""
    rows = [
        (
            i,
            f"  {FIRST[i % len(FIRST)]} {LAST[i * 3 % len(LAST)]} ",
            f" {FIRST[i % len(FIRST)].strip()}.{i}@Example.COM",
            f"(555) {i // 10000 % 1000:03d}-{i % 10000:04d}",
            f"{i % 12 + 1:02d}/{i % 28 + 1:02d}/{2010 + i % 15}",
        )
        for i in range(1, total + 1)
    ]
    with db.connect(SCHEMA) as conn:
        conn.executemany("INSERT OR IGNORE INTO legacy_customers VALUES (?, ?, ?, ?, ?)", rows)
    return total


def count_legacy() -> int:
    with db.connect(SCHEMA) as conn:
        return int(conn.execute("SELECT count(*) FROM legacy_customers").fetchone()[0])


def normalise(row: Any) -> tuple[Any, ...]:
    """``'  ada lovelace '`` -> Ada / Lovelace; e-mail lower-cased; E.164 phone; ISO date."""
    first, _, last = row["full_name"].strip().partition(" ")
    return (
        row["id"],
        first.strip().capitalize(),
        last.strip().capitalize(),
        row["email"].strip().lower(),
        "+1" + re.sub(r"\D", "", row["phone"]),
        datetime.strptime(row["signup"], "%m/%d/%Y").date().isoformat(),
    )


def migrate_batch(after_id: int, size: int, pause_seconds: float) -> dict[str, int]:
    """Copy the next ``size`` legacy rows with ``id > after_id``; returns count and last id."""
    time.sleep(pause_seconds)  # throttle: the legacy database serves live traffic too
    with db.connect(SCHEMA) as conn:
        rows = conn.execute(
            "SELECT * FROM legacy_customers WHERE id > ? ORDER BY id LIMIT ?", (after_id, size)
        ).fetchall()
        conn.executemany(
            "INSERT INTO customers (id, first_name, last_name, email, phone, signed_up)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
            " first_name = excluded.first_name, last_name = excluded.last_name,"
            " email = excluded.email, phone = excluded.phone, signed_up = excluded.signed_up,"
            " version = customers.version + 1",
            [normalise(row) for row in rows],
        )
    return {"migrated": len(rows), "last_id": rows[-1]["id"] if rows else after_id}


class MigrationIn(BaseModel):
    """Input of ``migrate-customers``."""

    total: int = Field(default=500, ge=0)  # legacy rows the ``seed`` step creates
    batch_size: int = Field(default=100, ge=1)
    pause_seconds: float = Field(default=0.2, ge=0)  # throttle before each batch


@flow.workflow(name="migrate-customers", max_concurrency=1)
def migrate_customers(ctx: Context, job: MigrationIn) -> dict[str, Any]:
    """One step per batch (``batch:0``, ``batch:1``, ...), progress after each."""
    ctx.step.run("seed", seed_legacy, job.total)
    total = ctx.step.run("count", count_legacy)
    done, last_id, i = 0, 0, 0
    while done < total:
        batch = ctx.step.run(
            f"batch:{i}", migrate_batch, last_id, job.batch_size, job.pause_seconds
        )
        if not batch["migrated"]:
            break  # rows were deleted from the legacy table meanwhile
        done, last_id, i = done + batch["migrated"], batch["last_id"], i + 1
        ctx.progress(done, total, f"migrated {done}/{total} customers in {i} batches")
    return {"migrated": done, "total": total, "batches": i}


EXAMPLES = [
    Example(
        key="migration",
        title="Migrate legacy customers in batches with progress tracking",
        workflow="migrate-customers",
        make_input=lambda tag: {"total": 500, "batch_size": 100, "pause_seconds": 0.3},
    )
]
