"""Expire abandoned shopping carts every five minutes: a cron-driven sweep, without celery beat.

Seed: redflow's cron scheduler (``redflow-0.0.4-internals-and-diff.txt``: one leader-elected
loop creates cron runs, a tick is skipped while the workflow is at ``maxConcurrency``, no
catch-up burst). A cart nobody touched for ``ttl_minutes`` is abandoned: the sweep marks it
``expired`` (so its stock can be released and a reminder mailed) and returns how many it swept.

* ``cron=[Cron(SWEEP_CRON, ...)]`` makes every worker a scheduler candidate; one leader per app
  starts each tick exactly once, as an ordinary run you can see in the CLI and dashboard.
* ``max_concurrency=1``: a tick that falls while the previous sweep still runs is skipped, so
  two sweeps never race over the same carts.
* Time is read inside a step (``cutoff``), so a replayed run sweeps with the same cutoff.

``EXAMPLE_SWEEP_CRON`` (read at import) overrides the schedule, e.g. ``"* * * * * *"`` (6 fields:
every second) in the tests. Run it: start a worker (``celery -A example_project.proj worker``)
and watch ``celery -A example_project.proj flow workflows`` show the next fire time; or sweep
now with ``flow.run("sweep-expired-carts", {"ttl_minutes": 30})``, or start the ``cart-sweep``
example with ``python -m example_project.trigger cart-sweep``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel

from celery_flow import Context, Cron

from .. import db
from ..celery import flow
from .catalog import Example

SWEEP_CRON = os.environ.get("EXAMPLE_SWEEP_CRON", "*/5 * * * *")
"""When the sweep runs (croniter, UTC; 5 fields, or 6 with seconds first)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS carts (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    items INTEGER NOT NULL,
    updated_at REAL NOT NULL,              -- unix time of the last change
    status TEXT NOT NULL DEFAULT 'open',   -- open | expired
    expired_at REAL
);
"""


def add_cart(cart_id: str, user_id: str, *, items: int = 1, idle_minutes: float = 0.0) -> None:
    """Record a cart last touched ``idle_minutes`` ago (does nothing if it exists)."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT OR IGNORE INTO carts (id, user_id, items, updated_at) VALUES (?, ?, ?, ?)",
            (cart_id, user_id, items, time.time() - 60 * idle_minutes),
        )


# -- the steps --------------------------------------------------------------------------------


def find_expired(cutoff: float, limit: int) -> list[str]:
    """Ids of open carts not touched since ``cutoff``, oldest first."""
    with db.connect(SCHEMA) as conn:
        rows = conn.execute(
            "SELECT id FROM carts WHERE status = 'open' AND updated_at < ? "
            "ORDER BY updated_at LIMIT ?",
            (cutoff, limit),
        ).fetchall()
    return [row["id"] for row in rows]


def expire_carts(cart_ids: list[str]) -> int:
    """Mark the carts expired; returns how many changed (a replay changes none twice)."""
    marks = ",".join("?" * len(cart_ids))
    with db.connect(SCHEMA) as conn:
        return conn.execute(
            f"UPDATE carts SET status = 'expired', expired_at = ? "
            f"WHERE status = 'open' AND id IN ({marks})",
            (time.time(), *cart_ids),
        ).rowcount


# -- the workflow -----------------------------------------------------------------------------


class SweepIn(BaseModel):
    """Input of a sweep (the cron passes the defaults)."""

    ttl_minutes: float = 30.0
    """A cart idle longer than this is abandoned."""
    batch_size: int = 500
    """At most this many carts per sweep; the next tick takes the rest."""


@flow.workflow(
    name="sweep-expired-carts",
    cron=[Cron(SWEEP_CRON, input={"ttl_minutes": 30.0, "batch_size": 500})],
    max_concurrency=1,
)
def sweep_expired_carts(ctx: Context, opts: SweepIn) -> dict[str, Any]:
    """Expire the carts idle for more than ``ttl_minutes``; returns how many were swept."""
    cutoff = ctx.step.run("cutoff", lambda: time.time() - 60 * opts.ttl_minutes)
    expired = ctx.step.run("find-expired", find_expired, cutoff, opts.batch_size)
    swept = ctx.step.run("expire", expire_carts, expired) if expired else 0
    ctx.log.info("swept %d abandoned carts", swept)
    return {"swept": swept, "cart_ids": expired, "cutoff": cutoff}


def sweep_input(tag: str) -> dict[str, Any]:
    """Input of a manual sweep; first leaves one abandoned and one fresh cart to find."""
    add_cart(f"cart-{tag}-abandoned", f"user-{tag}", items=3, idle_minutes=120)
    add_cart(f"cart-{tag}-active", f"user-{tag}", items=1, idle_minutes=2)
    return {"ttl_minutes": 30.0, "batch_size": 500}


EXAMPLES = [
    Example(
        key="cart-sweep",
        title="Cron sweep: expire shopping carts abandoned for 30 minutes (run by hand here)",
        workflow="sweep-expired-carts",
        make_input=sweep_input,
    )
]
