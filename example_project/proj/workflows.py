"""Three small workflows, written with the public celery_flow API only.

* ``process-order``: reserve stock, charge the card, ship; a saga whose ``compensate=``
  callables release the stock and refund the charge when a later step fails.
* ``send-invoice``: whole-run retries; the mail relay fails once, the run is retried, and the
  invoice rendered on attempt 1 is *replayed* from the step cache on attempt 2.
* ``reindex-catalog``: one step per batch (``batch:0``, ``batch:1``, ...) with
  ``ctx.progress(...)`` after each.

The "external services" are in-memory fakes. They count their calls in :data:`CALLS`
(per process) so the demo can show which steps really ran and which were replayed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel

from celery_flow import Context, NonRetriableError, Retries

from .celery import flow

# -- fake external services ---------------------------------------------------------------------

CALLS: Counter[str] = Counter()
"""How many times each fake service call ran, keyed ``"<call>:<subject>"``."""

_calls_lock = threading.Lock()
UNDELIVERABLE = frozenset({"o-404"})
"""Order ids the fake carrier refuses (to show compensation)."""


def _count(key: str) -> int:
    with _calls_lock:
        CALLS[key] += 1
        return CALLS[key]


def reserve_stock(order_id: str) -> dict[str, Any]:
    """Reserve the order's items; returns the reservation."""
    _count(f"reserve:{order_id}")
    return {"reservation_id": f"res-{order_id}", "order_id": order_id}


def release_stock(reservation: dict[str, Any]) -> None:
    """Compensation of :func:`reserve_stock`."""
    _count(f"release:{reservation['order_id']}")


def charge_card(order_id: str, amount_cents: int, *, idempotency_key: str) -> dict[str, Any]:
    """Charge the customer. A real gateway would dedupe on ``idempotency_key``."""
    _count(f"charge:{order_id}")
    charge_id = "ch-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:10]
    return {"charge_id": charge_id, "order_id": order_id, "amount_cents": amount_cents}


def refund_charge(charge: dict[str, Any]) -> None:
    """Compensation of :func:`charge_card`."""
    _count(f"refund:{charge['order_id']}")


def create_shipment(order_id: str) -> dict[str, Any]:
    """Book a carrier. Undeliverable addresses fail for good (no retry would help)."""
    _count(f"ship:{order_id}")
    if order_id in UNDELIVERABLE:
        raise NonRetriableError(f"carrier rejected the address of order {order_id}")
    return {"tracking": f"TRK-{order_id.upper()}"}


def render_invoice(invoice_id: str) -> dict[str, Any]:
    """Render the invoice (pretend it is expensive: it must not run twice)."""
    _count(f"render:{invoice_id}")
    return {"invoice_id": invoice_id, "pdf": f"s3://invoices/{invoice_id}.pdf"}


def deliver_invoice(invoice: dict[str, Any]) -> str:
    """Send the invoice by mail. The relay times out on the first call per invoice."""
    if _count(f"deliver:{invoice['invoice_id']}") == 1:
        raise ConnectionError("mail relay timed out")
    return f"msg-{invoice['invoice_id']}"


def index_batch(batch: int, size: int) -> int:
    """Index one batch of documents; returns how many were indexed."""
    time.sleep(0.02)
    return size


# -- workflows ----------------------------------------------------------------------------------


class OrderIn(BaseModel):
    """Input of ``process-order``."""

    order_id: str
    total_cents: int


@flow.workflow(name="process-order", max_concurrency=5)
def process_order(ctx: Context, order: OrderIn) -> dict[str, Any]:
    """Reserve, charge, ship. If shipping fails, the charge is refunded and the stock released."""
    reservation = ctx.step.run("reserve", reserve_stock, order.order_id, compensate=release_stock)
    charge = ctx.step.run(
        "charge",
        charge_card,
        order.order_id,
        order.total_cents,
        idempotency_key=ctx.idempotency_key("charge"),
        compensate=refund_charge,
    )
    shipment = ctx.step.run("ship", create_shipment, order.order_id)
    return {
        "order_id": order.order_id,
        "reservation": reservation["reservation_id"],
        "charge": charge["charge_id"],
        "tracking": shipment["tracking"],
    }


@flow.workflow(name="send-invoice", retries=Retries(max_attempts=3, base_delay=0.2))
def send_invoice(ctx: Context, invoice_id: str) -> dict[str, Any]:
    """Render then deliver an invoice; a failed delivery retries the run, not the rendering."""
    invoice = ctx.step.run("render", render_invoice, invoice_id)
    message_id = ctx.step.run("deliver", deliver_invoice, invoice)
    return {"invoice_id": invoice_id, "message_id": message_id, "attempt": ctx.attempt}


@flow.workflow(name="reindex-catalog")
def reindex_catalog(ctx: Context, batches: int) -> dict[str, Any]:
    """Reindex the catalog in ``batches`` steps, reporting progress after each."""
    indexed = 0
    for i in range(batches):
        indexed += ctx.step.run(f"batch:{i}", index_batch, i, 100)
        ctx.progress(i + 1, batches, f"indexed batch {i + 1}/{batches}")
    return {"batches": batches, "documents": indexed}
