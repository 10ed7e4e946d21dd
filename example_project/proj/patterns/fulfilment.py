"""Parent -> child workflows: an order run hands the warehouse work to a child run and waits.

Seed: "Pattern 1: Parent-Child Workflows" of the Cloudflare Workflows patterns
(``cloudflare-workflows-patterns.md``). There the parent starts a child instance, then polls its
status in a sleep loop. Here ``ctx.step.run_workflow`` does both: it starts the child and parks
the parent (no worker held) until the child ends, then returns the child's output, or raises
``ChildRunFailed`` with the child's error. ``ctx.step.emit_workflow`` starts a fire-and-forget
child (the confirmation email) and returns its run id at once.

* ``place-order`` (parent): record the order, run ``fulfil-order``, mark it shipped in the ERP,
  emit ``send-order-email``. It has whole-run ``Retries``: when the ERP update fails, the run is
  retried and *replays*: the finished steps and the child's result come from the step cache,
  and the child's id is derived from the parent's, so the warehouse never ships twice.
* ``fulfil-order`` (child, the warehouse): pick, pack, label; an out-of-stock SKU fails it, and
  the parent puts the order on hold instead of shipping.

Every side effect is logged in SQLite (``fulfilment_log``) so the tests can count them.
Fault injection for the demo and tests: ``erp_outages`` (the ERP times out that many times) and
a SKU in :data:`OUT_OF_STOCK`.

Run it with a worker (``celery -A example_project.proj worker``)::

    >>> from example_project.proj.patterns.fulfilment import place_order, sample_order
    >>> place_order.run(sample_order("ord-1")).result(timeout=30)["status"]
    'shipped'

or start the ``fulfilment`` example with ``python -m example_project.trigger fulfilment``.
"""

from __future__ import annotations

import zlib
from typing import Any

from pydantic import BaseModel

from celery_flow import ChildRunFailed, Context, NonRetriableError, Retries

from .. import db
from ..celery import flow
from .catalog import Example

SCHEMA = """
CREATE TABLE IF NOT EXISTS shop_orders (
    order_id TEXT PRIMARY KEY, email TEXT NOT NULL, status TEXT NOT NULL, tracking TEXT
);
CREATE TABLE IF NOT EXISTS fulfilment_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL, action TEXT NOT NULL
);
"""
OUT_OF_STOCK = frozenset({"SKU-DISCONTINUED"})
"""SKUs the warehouse cannot pick."""


class Line(BaseModel):
    """One order line."""

    sku: str
    quantity: int


class OrderIn(BaseModel):
    """Input of ``place-order``."""

    order_id: str
    email: str
    items: list[Line]
    erp_outages: int = 0


class FulfilIn(BaseModel):
    """Input of ``fulfil-order``."""

    order_id: str
    items: list[Line]


def log(order_id: str, action: str, status: str | None = None, tracking: str | None = None) -> None:
    """Log one side effect; with ``status``, also update the order (one transaction)."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT INTO fulfilment_log (order_id, action) VALUES (?, ?)", (order_id, action)
        )
        if status:
            conn.execute(
                "UPDATE shop_orders SET status = ?, tracking = COALESCE(?, tracking) "
                "WHERE order_id = ?",
                (status, tracking, order_id),
            )


# -- fake external services: the shop's database, the warehouse, the ERP ---------------------------


def record_order(order_id: str, email: str) -> None:
    """Store the order as placed (a replay finds it already there)."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT OR IGNORE INTO shop_orders (order_id, email, status) VALUES (?, ?, 'placed')",
            (order_id, email),
        )


def pick(order_id: str, items: list[dict[str, Any]]) -> int:
    """Take the items from the shelves; an out-of-stock SKU fails for good."""
    missing = [i["sku"] for i in items if i["sku"] in OUT_OF_STOCK]
    if missing:
        raise NonRetriableError(f"out of stock: {', '.join(missing)}")
    log(order_id, "pick")
    return sum(i["quantity"] for i in items)


def print_label(order_id: str) -> str:
    """Buy the carrier label; returns its tracking number (stable for an order)."""
    tracking = f"1Z{zlib.crc32(order_id.encode()):010d}"
    log(order_id, f"label {tracking}")
    return tracking


def erp_mark_shipped(order_id: str, tracking: str, outages: int) -> None:
    """Tell the ERP the order shipped; it times out on the first ``outages`` calls."""
    with db.connect(SCHEMA) as conn:
        failed = conn.execute(
            "SELECT COUNT(*) FROM fulfilment_log WHERE order_id = ? AND action = 'erp-timeout'",
            (order_id,),
        ).fetchone()[0]
    if failed < outages:
        log(order_id, "erp-timeout")
        raise ConnectionError("ERP timed out")
    log(order_id, "erp-shipped", status="shipped", tracking=tracking)


# -- the child workflows ---------------------------------------------------------------------------


@flow.workflow(name="fulfil-order", max_concurrency=4)
def fulfil_order(ctx: Context, order: FulfilIn) -> dict[str, Any]:
    """The warehouse: pick, pack and label one order; returns the tracking number."""
    items = [line.model_dump() for line in order.items]
    units = ctx.step.run("pick", pick, order.order_id, items)
    ctx.step.run("pack", log, order.order_id, "pack")
    tracking = ctx.step.run("label", print_label, order.order_id)
    return {"tracking": tracking, "units": units}


@flow.workflow(name="send-order-email")
def send_order_email(ctx: Context, message: dict[str, Any]) -> str:
    """Fire-and-forget child: mail the customer their tracking number."""
    ctx.step.run("send", log, message["order_id"], f"email {message['tracking']}")
    return f"sent {message['tracking']} to {message['email']}"


# -- the parent workflow ---------------------------------------------------------------------------


@flow.workflow(name="place-order", retries=Retries(max_attempts=3, base_delay=0.2))
def place_order(ctx: Context, order: OrderIn) -> dict[str, Any]:
    """Record the order, have the warehouse fulfil it (a child run), then confirm it."""
    ctx.step.run("record", record_order, order.order_id, order.email)
    try:
        parcel = ctx.step.run_workflow(
            "fulfil",
            fulfil_order,
            {"order_id": order.order_id, "items": [line.model_dump() for line in order.items]},
        )
    except ChildRunFailed as exc:  # the child's own error is in exc.error
        reason = exc.error.message if exc.error else str(exc)
        ctx.step.run("hold", log, order.order_id, f"hold: {reason}", status="on-hold")
        return {"order_id": order.order_id, "status": "on-hold", "reason": reason}
    ctx.step.run(
        "mark-shipped", erp_mark_shipped, order.order_id, parcel["tracking"], order.erp_outages
    )
    email_run = ctx.step.emit_workflow(
        "email",
        send_order_email,
        {"order_id": order.order_id, "email": order.email, "tracking": parcel["tracking"]},
    )
    return {"order_id": order.order_id, "status": "shipped", **parcel, "email_run": email_run}


def sample_order(order_id: str, *, sku: str = "SKU-MUG", erp_outages: int = 0) -> dict[str, Any]:
    """Input of ``place-order``: two of ``sku`` for Ada."""
    return {
        "order_id": order_id,
        "email": "ada@example.com",
        "items": [{"sku": sku, "quantity": 2}],
        "erp_outages": erp_outages,
    }


EXAMPLES = [
    Example(
        key="fulfilment",
        title="Parent -> child: an order waits for its warehouse run, then emails the customer",
        workflow="place-order",
        make_input=lambda tag: sample_order(f"ord-{tag}"),
    )
]
