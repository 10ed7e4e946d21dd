"""Order processing as a DAG saga: each completed step is undone when a later one fails.

Seed: the order example of the DAG/saga platform guide (``dag-saga-platform-workflows.txt``):
validate -> reserve inventory -> process payment (retried) -> create shipment -> send
confirmation, declared with ``flow.dag(..., saga=True)``. Each step is a plain function of
``(context, previous_steps)``; the steps that change the world name a ``compensation(context,
result)``. If the carrier rejects the address, the payment is refunded, then the stock is
released (reverse completion order, each exactly once), and ``on_error`` records the outcome.

The shop's data is in SQLite: stock, reservations, payments, shipments, and a journal of every
side effect in order, so you can watch a failed order leave the stock as it was. Fault injection
for the demo and the tests: ``gateway_timeouts`` in the context (the payment gateway times out
that many times first) and a postcode in :data:`REJECTED_POSTCODES` (the carrier refuses it).

Run it with a worker (``celery -A example_project.proj worker``)::

    >>> from example_project.proj import flow
    >>> from example_project.proj.patterns.order_saga import order_processing, sample_order
    >>> handle = order_processing.run(context=sample_order("o-1"))
    >>> handle.result(timeout=30)["send-confirmation"]
    'mailed ada@example.com: TRK-O-1'
    >>> flow.get_status(handle.id).steps  # state, attempts, times and result of every step

or start the ``order-saga`` example with ``python -m example_project.trigger order-saga``.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from celery_flow import DagStep, NonRetriableError, Retries

from .. import db
from ..celery import flow
from .catalog import Example

SCHEMA = """
CREATE TABLE IF NOT EXISTS inventory (
    sku TEXT PRIMARY KEY, price_cents INTEGER NOT NULL, available INTEGER NOT NULL
);
INSERT OR IGNORE INTO inventory VALUES ('SKU-MUG', 1200, 100), ('SKU-TEE', 2500, 40);
CREATE TABLE IF NOT EXISTS order_reservations (
    order_id TEXT, sku TEXT, quantity INTEGER NOT NULL, PRIMARY KEY (order_id, sku)
);
CREATE TABLE IF NOT EXISTS order_payments (
    order_id TEXT PRIMARY KEY, amount_cents INTEGER NOT NULL, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS order_shipments (
    order_id TEXT PRIMARY KEY, tracking TEXT NOT NULL, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS order_journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT NOT NULL, action TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS order_outcomes (
    run_id TEXT PRIMARY KEY, state TEXT NOT NULL, failed_step TEXT, compensated TEXT
);
"""
REJECTED_POSTCODES = frozenset({"00000"})
"""Postcodes the (fake) carrier refuses to deliver to."""

OrderContext = dict[str, Any]
"""The DAG context every step receives (``sample_order`` builds one)."""


def journal(conn: sqlite3.Connection, order_id: str, action: str) -> None:
    """Append one side effect to the journal, in the caller's transaction."""
    conn.execute("INSERT INTO order_journal (order_id, action) VALUES (?, ?)", (order_id, action))


# -- the steps and their compensations ------------------------------------------------------------


def validate_order(context: OrderContext, previous: dict[str, Any]) -> dict[str, Any]:
    """Check every line against the catalog and price the order (a bad order is not retried)."""
    with db.connect(SCHEMA) as conn:
        prices = dict(conn.execute("SELECT sku, price_cents FROM inventory").fetchall())
    lines = context.get("items") or []
    if not lines or any(i["sku"] not in prices or i["quantity"] < 1 for i in lines):
        raise NonRetriableError(f"order {context['order_id']}: no items or bad lines {lines}")
    return {"total_cents": sum(prices[i["sku"]] * i["quantity"] for i in lines)}


def reserve_inventory(context: OrderContext, previous: dict[str, Any]) -> dict[str, Any]:
    """Take the items off the shelf; a line this order already reserved is not taken twice."""
    order_id = context["order_id"]
    with db.connect(SCHEMA) as conn:  # one transaction: all lines or none
        for line in context["items"]:
            sku, quantity = line["sku"], line["quantity"]
            reservation = (order_id, sku, quantity)
            if not conn.execute(
                "INSERT OR IGNORE INTO order_reservations VALUES (?, ?, ?)", reservation
            ).rowcount:
                continue  # reserved by an earlier attempt of this step
            taken = conn.execute(
                "UPDATE inventory SET available = available - ? WHERE sku = ? AND available >= ?",
                (quantity, sku, quantity),
            ).rowcount
            if not taken:
                raise NonRetriableError(f"order {order_id}: {sku} is out of stock")
        journal(conn, order_id, "reserve")
    return {"reserved": len(context["items"]), **previous["validate"]}


def release_inventory(context: OrderContext, result: dict[str, Any]) -> None:
    """Compensation of ``reserve-inventory``: put the reserved items back on the shelf."""
    order_id = context["order_id"]
    with db.connect(SCHEMA) as conn:
        reserved = conn.execute(
            "SELECT sku, quantity FROM order_reservations WHERE order_id = ?", (order_id,)
        ).fetchall()
        for sku, quantity in reserved:
            conn.execute(
                "UPDATE inventory SET available = available + ? WHERE sku = ?", (quantity, sku)
            )
        conn.execute("DELETE FROM order_reservations WHERE order_id = ?", (order_id,))
        journal(conn, order_id, "release")


def process_payment(context: OrderContext, previous: dict[str, Any]) -> dict[str, Any]:
    """Capture the payment at the (fake) gateway, which first times out ``gateway_timeouts``x."""
    order_id, amount = context["order_id"], previous["reserve-inventory"]["total_cents"]
    with db.connect(SCHEMA) as conn:
        timeouts = conn.execute(
            "SELECT COUNT(*) FROM order_journal WHERE order_id = ? AND action = 'payment-timeout'",
            (order_id,),
        ).fetchone()[0]
        if timeouts >= context.get("gateway_timeouts", 0):
            conn.execute(
                "INSERT OR IGNORE INTO order_payments VALUES (?, ?, 'captured')", (order_id, amount)
            )
            journal(conn, order_id, "charge")
            return {"payment_id": f"pay_{order_id}", "amount_cents": amount}
        journal(conn, order_id, "payment-timeout")
    raise ConnectionError("payment gateway timed out")  # retried in place (the step's Retries)


def refund_payment(context: OrderContext, result: dict[str, Any]) -> None:
    """Compensation of ``process-payment``: refund the captured amount."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "UPDATE order_payments SET status = 'refunded' WHERE order_id = ?",
            (context["order_id"],),
        )
        journal(conn, context["order_id"], f"refund {result['amount_cents']}")


def create_shipment(context: OrderContext, previous: dict[str, Any]) -> dict[str, Any]:
    """Book the (fake) carrier; a postcode it rejects fails the step for good."""
    order_id, postcode = context["order_id"], context["address"]["postcode"]
    if postcode in REJECTED_POSTCODES:
        raise NonRetriableError(f"carrier rejected postcode {postcode} of order {order_id}")
    tracking = f"TRK-{order_id.upper()}"
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT OR IGNORE INTO order_shipments VALUES (?, ?, 'booked')", (order_id, tracking)
        )
        journal(conn, order_id, "ship")
    return {"tracking": tracking}


def cancel_shipment(context: OrderContext, result: dict[str, Any]) -> None:
    """Compensation of ``create-shipment`` (runs if a later step fails)."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "UPDATE order_shipments SET status = 'canceled' WHERE order_id = ?",
            (context["order_id"],),
        )
        journal(conn, context["order_id"], "cancel-shipment")


def send_confirmation(context: OrderContext, previous: dict[str, Any]) -> str:
    """Mail the customer (not undoable, so no compensation)."""
    with db.connect(SCHEMA) as conn:
        journal(conn, context["order_id"], "confirm")
    return f"mailed {context['email']}: {previous['create-shipment']['tracking']}"


def record_outcome(payload: dict[str, Any]) -> None:
    """``on_complete`` / ``on_error``: what the shop's order page shows (delivered once)."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO order_outcomes VALUES (?, ?, ?, ?)",
            (
                payload["run_id"],
                payload["state"],
                payload.get("error", {}).get("step"),
                json.dumps(payload.get("compensated", [])),
            ),
        )


# -- the DAG ------------------------------------------------------------------------------------

order_processing = flow.dag(
    "order-processing",
    steps=[
        DagStep("validate", validate_order),
        DagStep(
            "reserve-inventory",
            reserve_inventory,
            depends_on=["validate"],
            compensation=release_inventory,
        ),
        DagStep(
            "process-payment",
            process_payment,
            depends_on=["reserve-inventory"],
            retries=Retries(max_attempts=3, backoff="exponential", base_delay=0.2),
            compensation=refund_payment,
        ),
        DagStep(
            "create-shipment",
            create_shipment,
            depends_on=["process-payment"],
            compensation=cancel_shipment,
        ),
        DagStep("send-confirmation", send_confirmation, depends_on=["create-shipment"]),
    ],
    saga=True,
    on_complete=record_outcome,
    on_error=record_outcome,
    timeout=3600,
)


def sample_order(
    order_id: str, *, postcode: str = "10115", gateway_timeouts: int = 0
) -> OrderContext:
    """A context for ``order-processing``: 2 mugs and a tee shirt, shipped to Berlin."""
    return {
        "order_id": order_id,
        "user_id": "user_456",
        "email": "ada@example.com",
        "items": [{"sku": "SKU-MUG", "quantity": 2}, {"sku": "SKU-TEE", "quantity": 1}],
        "address": {"city": "Berlin", "postcode": postcode},
        "gateway_timeouts": gateway_timeouts,
    }


EXAMPLES = [
    Example(
        key="order-saga",
        title="Order saga (DAG): validate, reserve, pay, ship, confirm; undone on failure",
        workflow="order-processing",
        make_input=lambda tag: {"context": sample_order(f"o-{tag}")},
    )
]
