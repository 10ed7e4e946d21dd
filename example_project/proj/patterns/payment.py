"""Charge a card safely: idempotency key, database upsert, 4xx/5xx categories, circuit breaker.

Seed: ``cloudflare-workflows-patterns.md``, "Idempotency Keys", "Database Upsert for
Idempotency", "Categorize Errors for Retry Logic" and "Circuit Breaker".

The workflow ``charge-payment`` charges a card, records the payment and mails a receipt:

* **Idempotency key.** ``ctx.idempotency_key("charge")`` is ``"<run_id>:charge"``, the same on
  every retry and replay. The gateway stores each charge under it, so a request repeated after
  a lost response (``tok_timeout``: charged, but the answer never arrived) returns the first
  charge instead of charging twice. The step cache covers the rest: once ``charge`` succeeded,
  a whole-run retry (the receipt mail was greylisted) replays it without calling the gateway.
* **Upsert.** ``record`` writes the payment with ``INSERT ... ON CONFLICT DO UPDATE``, so running
  it twice (a crash after the write, before the step was recorded) leaves one row.
* **Error categories.** A 4xx answer (``tok_declined``: HTTP 402) will not get better by
  retrying: it raises ``NonRetriableError`` and the run fails at once. A 5xx or a timeout
  (``tok_flaky``: two 503s, then success) is retried in place by the step's ``retries=``.
* **Circuit breaker.** Every call goes through a ``pybreaker`` breaker whose state lives in
  Redis (under this Flow's prefix), so all workers share it: after ``BREAKER_FAIL_MAX``
  consecutive 5xx/timeouts it opens and calls fail in microseconds with
  ``pybreaker.CircuitBreakerError`` instead of piling onto a sick gateway. That error is
  retriable *after a delay*: the step does not retry it in place (it would fail fast again);
  the run's own retry policy schedules the next attempt on a Redis timer (the run holds no
  worker meanwhile). After ``BREAKER_RESET_SECONDS`` the next call is let through as a trial:
  success closes the breaker, failure opens it again. Here the run's attempts are ~1 s and
  ~2 s apart so the tests stay fast; in production space them to outlast the reset timeout
  (``base_delay=15``, more attempts). A run that still fails can be replayed once the gateway
  is back, ``flow.retry_many(workflow="charge-payment")``: same run id, same idempotency key,
  so nothing is charged twice. Declines do not count: a healthy gateway saying "no" is not a
  failure.

Run it: ``python -m example_project.trigger payment`` (its input uses ``tok_flaky``; also try
``tok_visa``, ``tok_timeout``, ``tok_declined``, ``tok_unavailable`` with ``celery -A
example_project.proj flow start charge-payment --input '{...}'``); tests:
``tests/examples/test_payment_video.py``.
"""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime
from typing import Any

import pybreaker
import redis
from pydantic import BaseModel, Field

from celery_flow import Context, NonRetriableError, Retries

from .. import db
from ..celery import flow
from .catalog import Example

# -- fake external services (a payment gateway, a mail relay) and our payments table ---------

SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_charges (idempotency_key TEXT PRIMARY KEY,
    charge_id TEXT NOT NULL, card TEXT NOT NULL, amount_cents INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_requests (id INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL, status INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mail_log (id INTEGER PRIMARY KEY, recipient TEXT NOT NULL,
    outcome TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS payments (order_id TEXT PRIMARY KEY, charge_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL, updated_at TEXT NOT NULL);
"""
DECLINED_CARDS = {"tok_declined": "card_declined", "tok_expired": "expired_card"}
FLAKY_CARDS = {"tok_flaky": 2, "tok_unavailable": 1_000_000}  # first N requests get a 503
TIMEOUT_CARDS = {"tok_timeout"}  # the first request is charged, but its answer is lost
GREYLISTING_DOMAINS = {"greylisted.example"}  # the first mail to them is deferred


def gateway_post_charge(card: str, amount: int, idempotency_key: str) -> tuple[int, dict[str, Any]]:
    """``POST /v1/charges`` with an ``Idempotency-Key`` header: (HTTP status, JSON body)."""
    key = idempotency_key
    with db.connect(SCHEMA) as conn:
        conn.execute("BEGIN IMMEDIATE")  # one request at a time, like the real thing
        seen = conn.execute(
            "SELECT count(*) FROM gateway_requests WHERE idempotency_key = ?", (key,)
        ).fetchone()[0]
        charged = conn.execute(
            "SELECT charge_id FROM gateway_charges WHERE idempotency_key = ?", (key,)
        ).fetchone()
        if charged:  # a repeated request: the first charge's answer, nothing charged
            status, body = 200, {"id": charged["charge_id"], "idempotent_replay": True}
        elif card in DECLINED_CARDS:
            status, body = 402, {"error": DECLINED_CARDS[card]}
        elif seen < FLAKY_CARDS.get(card, 0):
            status, body = 503, {"error": "service_unavailable"}
        else:
            status, body = 200, {"id": f"ch_{secrets.token_hex(8)}", "idempotent_replay": False}
            row = (key, body["id"], card, amount)
            conn.execute("INSERT INTO gateway_charges VALUES (?, ?, ?, ?)", row)
        conn.execute("INSERT INTO gateway_requests VALUES (NULL, ?, ?)", (key, status))
    if card in TIMEOUT_CARDS and seen == 0:
        raise TimeoutError("payment gateway did not answer within 10 s")
    return status, body


class MailDeferred(Exception):
    """``421 try again later``: a temporary refusal, worth a retry."""


def send_receipt(email: str, charge_id: str) -> str:
    """Mail the receipt; returns the message id. Greylisting defers a first delivery."""
    with db.connect(SCHEMA) as conn:
        tried = conn.execute("SELECT count(*) FROM mail_log WHERE recipient = ?", (email,))
        defer = email.rpartition("@")[2] in GREYLISTING_DOMAINS and not tried.fetchone()[0]
        outcome = "deferred" if defer else "sent"
        conn.execute("INSERT INTO mail_log (recipient, outcome) VALUES (?, ?)", (email, outcome))
    if defer:
        raise MailDeferred(f"421 4.7.1 <{email}>: greylisted, try again later")
    return f"<{charge_id}@mail.example>"


# -- our side: the gateway client behind a shared circuit breaker ------------------------------

BREAKER_FAIL_MAX = 5
BREAKER_RESET_SECONDS = 30.0
_breaker: pybreaker.CircuitBreaker | None = None
_breaker_lock = threading.Lock()


class GatewayError(Exception):
    """The gateway answered 5xx: its problem, not ours; retry later."""


def breaker() -> pybreaker.CircuitBreaker:
    """The gateway's breaker, created on first use (the Flow's Redis URL is known by then)."""
    global _breaker
    with _breaker_lock:
        if _breaker is None:
            client = redis.Redis.from_url(flow.redis_url, socket_timeout=5.0)
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, client, namespace=f"{flow.prefix}:breaker:payment-gateway"
            )
            _breaker = pybreaker.CircuitBreaker(
                fail_max=BREAKER_FAIL_MAX,
                reset_timeout=BREAKER_RESET_SECONDS,
                exclude=[NonRetriableError],  # a decline means the gateway is healthy
                state_storage=storage,
                name="payment-gateway",
            )
        return _breaker


def _post_charge(card: str, amount_cents: int, idempotency_key: str) -> dict[str, Any]:
    status, body = gateway_post_charge(card, amount_cents, idempotency_key)
    if status >= 500:
        raise GatewayError(f"payment gateway: HTTP {status} {body['error']}")
    if status >= 400:
        raise NonRetriableError(f"card declined: HTTP {status} {body['error']}")
    return body


def charge_card(card: str, amount_cents: int, *, idempotency_key: str) -> dict[str, Any]:
    """Charge through the breaker: 4xx -> NonRetriableError; 5xx, timeout, open -> retriable."""
    return breaker().call(_post_charge, card, amount_cents, idempotency_key)


# -- the workflow --------------------------------------------------------------------------------

CHARGE_RETRIES = Retries(
    max_attempts=3, base_delay=0.1, max_delay=1.0, non_retriable=(pybreaker.CircuitBreakerError,)
)
"""5xx and timeouts: retry in place. An open breaker: leave it to the run's retry policy."""


def record_payment(order_id: str, charge_id: str, amount_cents: int) -> None:
    """Upsert the payment: a second execution updates the row instead of adding one."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT INTO payments VALUES (?, ?, ?, ?) ON CONFLICT(order_id) DO UPDATE SET"
            " charge_id = excluded.charge_id, amount_cents = excluded.amount_cents,"
            " updated_at = excluded.updated_at",
            (order_id, charge_id, amount_cents, datetime.now(UTC).isoformat()),
        )


class PaymentIn(BaseModel):
    """Input of ``charge-payment``."""

    order_id: str
    amount_cents: int = Field(gt=0)
    card: str = "tok_visa"
    email: str


@flow.workflow(
    name="charge-payment",
    retries=Retries(max_attempts=3, base_delay=1.0, max_delay=BREAKER_RESET_SECONDS),
)
def charge_payment(ctx: Context, payment: PaymentIn) -> dict[str, Any]:
    """Charge once, record the payment, mail a receipt; retries never charge twice."""
    charge = ctx.step.run(
        "charge",
        charge_card,
        payment.card,
        payment.amount_cents,
        idempotency_key=ctx.idempotency_key("charge"),
        retries=CHARGE_RETRIES,
    )
    ctx.step.run("record", record_payment, payment.order_id, charge["id"], payment.amount_cents)
    message_id = ctx.step.run("receipt", send_receipt, payment.email, charge["id"])
    return {"order_id": payment.order_id, "charge_id": charge["id"], "receipt": message_id}


EXAMPLES = [
    Example(
        key="payment",
        title="Charge a flaky card: idempotency key, 5xx retries, shared circuit breaker",
        workflow="charge-payment",
        make_input=lambda tag: {
            "order_id": f"ord-{tag}",
            "amount_cents": 4999,
            "card": "tok_flaky",
            "email": f"buyer-{tag}@example.com",
        },
    )
]
