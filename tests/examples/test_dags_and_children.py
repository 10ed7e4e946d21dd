"""The order saga, the sales-report dependency graph and parent -> child fulfilment examples.

Each test imports the example project on its own prefix and SQLite file and runs it on an
embedded worker (threads x8, ``tests/examples/conftest.py``); outcomes are read back from
SQLite, from ``flow.get_status`` and from the runs in Redis.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from celery_flow import RunFailed, WorkflowStatus
from celery_flow.testing import eventually

from .conftest import ExampleProject, query, start_like_the_trigger, wait_result


def assert_respects_dependencies(status: WorkflowStatus, depends_on: dict[str, Any]) -> None:
    """Every step started after each of its dependencies completed (recorded times)."""
    steps = {s.id: s for s in status.steps}
    for step_id, deps in depends_on.items():
        for dep in deps:
            assert steps[dep].completed_at <= steps[step_id].started_at, (dep, step_id)


# -- order saga ----------------------------------------------------------------------------------

ORDER_STEPS = [
    "validate",
    "reserve-inventory",
    "process-payment",
    "create-shipment",
    "send-confirmation",
]
STOCK = "SELECT sku, available FROM inventory ORDER BY sku"
INITIAL_STOCK = [("SKU-MUG", 100), ("SKU-TEE", 40)]


def journal(example: ExampleProject, order_id: str) -> list[str]:
    rows = "SELECT action FROM order_journal WHERE order_id = ? ORDER BY seq"
    return [action for (action,) in query(example, rows, order_id)]


def test_order_saga_completes_every_step_once_with_a_retried_payment(example):
    # Given an order whose payment gateway times out once
    saga = example.module("order_saga")
    context = saga.sample_order("o-ok", gateway_timeouts=1)

    # When the DAG runs
    handle = saga.order_processing.run(context=context)
    results = wait_result(handle)

    # Then each step completed once, in order, the payment on its second attempt
    assert results["send-confirmation"] == "mailed ada@example.com: TRK-O-OK"
    assert results["process-payment"] == {"payment_id": "pay_o-ok", "amount_cents": 4900}
    status = example.flow.get_status(handle.id)
    assert status.state == "completed" and status.completed_steps == ORDER_STEPS
    assert status.failed_steps == [] and status.context == context
    attempts = {s.id: s.attempts for s in status.steps}
    assert attempts == {**dict.fromkeys(status.completed_steps, 1), "process-payment": 2}
    assert_respects_dependencies(status, {b: [a] for a, b in itertools.pairwise(ORDER_STEPS)})
    # and the shop's data shows one reservation, one capture, one shipment
    assert query(example, STOCK) == [("SKU-MUG", 98), ("SKU-TEE", 39)]
    assert query(example, "SELECT * FROM order_payments") == [("o-ok", 4900, "captured")]
    assert query(example, "SELECT * FROM order_shipments") == [("o-ok", "TRK-O-OK", "booked")]
    assert journal(example, "o-ok") == ["reserve", "payment-timeout", "charge", "ship", "confirm"]
    assert query(example, "SELECT * FROM order_outcomes") == [(handle.id, "completed", None, "[]")]


def test_order_saga_rejected_shipment_refunds_then_releases_and_restores_the_stock(example):
    # Given an order to a postcode the carrier rejects
    saga = example.module("order_saga")

    # When the DAG runs
    handle = saga.order_processing.run(context=saga.sample_order("o-bad", postcode="00000"))
    with pytest.raises(RunFailed) as failed:
        wait_result(handle)

    # Then it failed at create-shipment and compensated the completed steps, newest first
    message = failed.value.error.message
    assert "step create-shipment failed" in message and "carrier rejected postcode" in message
    assert "compensated: process-payment, reserve-inventory" in message
    status = example.flow.get_status(handle.id)
    assert status.state == "failed" and status.failed_steps == ["create-shipment"]
    assert {s.id: s.state for s in status.steps} == {
        "validate": "completed",  # nothing to undo
        "reserve-inventory": "compensated",
        "process-payment": "compensated",
        "create-shipment": "failed",  # its own compensation (cancel) is not called
        "send-confirmation": "skipped",
    }
    # the side effects, in order: the refund came before the release
    assert journal(example, "o-bad") == ["reserve", "charge", "refund 4900", "release"]
    compensations = sorted(
        (s for s in handle.info().steps if s.name.startswith("compensate:")),
        key=lambda s: s.started_at,
    )
    assert [s.name for s in compensations] == [
        "compensate:process-payment",
        "compensate:reserve-inventory",
    ]
    assert compensations[0].finished_at <= compensations[1].started_at
    # and the data is back where it started
    assert query(example, STOCK) == INITIAL_STOCK
    assert query(example, "SELECT COUNT(*) FROM order_reservations") == [(0,)]
    assert query(example, "SELECT status FROM order_payments") == [("refunded",)]
    assert query(example, "SELECT COUNT(*) FROM order_shipments") == [(0,)]
    assert query(example, "SELECT * FROM order_outcomes") == [
        (handle.id, "failed", "create-shipment", '["process-payment", "reserve-inventory"]')
    ]


def test_order_saga_example_starts_like_the_trigger_and_succeeds(example):
    handle = start_like_the_trigger(example, "order-saga")
    assert wait_result(handle)["send-confirmation"].startswith("mailed ada@example.com")
    assert example.flow.get_status(handle.id).state == "completed"


# -- dependency graph ----------------------------------------------------------------------------

FETCHES = ["fetch-apac", "fetch-eu", "fetch-us"]
GRAPH = {
    "fetch-eu": ["prepare"],
    "fetch-us": ["prepare"],
    "fetch-apac": ["prepare"],
    "audit-apac": ["fetch-apac"],
    "merge": FETCHES,
    "publish": ["merge", "audit-apac"],
}


def test_sales_report_runs_the_fetches_together_and_fans_in_every_result(example):
    # Given the daily sales report graph, with 0.3 s per regional API call
    graph = example.module("dependency_graph")

    # When it runs
    handle = graph.sales_report.run(context=graph.report_context("r-1", latency_seconds=0.3))
    results = wait_result(handle)

    # Then every edge held, and the three fetches overlapped in time (one wave)
    status = example.flow.get_status(handle.id)
    assert status.state == "completed" and sorted(status.completed_steps) == sorted(results)
    assert_respects_dependencies(status, GRAPH)
    fetches = [s for s in status.steps if s.id in FETCHES]
    assert max(s.started_at for s in fetches) < min(s.completed_at for s in fetches)
    # and each fan-in received every dependency's result
    merged = results["merge"]
    assert merged["sources"] == FETCHES
    assert merged["by_region"] == {
        results[f]["region"]: results[f]["revenue_usd_cents"] for f in FETCHES
    }
    assert merged["total_usd_cents"] == sum(results[f]["revenue_usd_cents"] for f in FETCHES)
    assert results["publish"] == {"report_id": "r-1", "inputs": ["audit-apac", "merge"]}
    assert query(example, "SELECT report_id, total_usd_cents FROM sales_reports") == [
        ("r-1", merged["total_usd_cents"])
    ]


def test_sales_report_example_starts_like_the_trigger_and_succeeds(example):
    handle = start_like_the_trigger(example, "sales-report")
    assert wait_result(handle)["audit-apac"] == {"region": "apac", "reconciled": True}
    assert query(example, "SELECT COUNT(*) FROM sales_reports") == [(1,)]


# -- parent -> child -----------------------------------------------------------------------------


def actions(example: ExampleProject, order_id: str) -> list[str]:
    rows = "SELECT action FROM fulfilment_log WHERE order_id = ? ORDER BY seq"
    return [action for (action,) in query(example, rows, order_id)]


def test_fulfilment_child_runs_once_though_the_parent_is_retried_and_replays(example):
    # Given an order whose ERP update times out once (the parent has whole-run retries)
    fulfilment = example.module("fulfilment")

    # When it runs
    handle = fulfilment.place_order.run(fulfilment.sample_order("ord-1", erp_outages=1))
    result = wait_result(handle)

    # Then the parent succeeded on its second attempt, replaying the child's result
    assert result["status"] == "shipped" and result["units"] == 2
    assert handle.info().attempt == 2
    (child,) = example.flow.list_runs(workflow="fulfil-order").runs  # started once
    assert child.parent_run_id == handle.id and child.status == "succeeded"
    assert child.output == {"tracking": result["tracking"], "units": 2}
    # the emitted email child is linked too, and runs on its own
    email = example.flow.handle(result["email_run"])
    assert wait_result(email) == f"sent {result['tracking']} to ada@example.com"
    assert email.info().parent_run_id == handle.id
    # and SQLite shows each side effect once, the ERP timeout before the retry
    assert actions(example, "ord-1") == [
        "pick",
        "pack",
        f"label {result['tracking']}",
        "erp-timeout",
        "erp-shipped",
        f"email {result['tracking']}",
    ]
    assert query(example, "SELECT status, tracking FROM shop_orders") == [
        ("shipped", result["tracking"])
    ]


def test_a_failing_fulfilment_child_surfaces_child_run_failed_in_the_parent(example):
    # Given an order of a SKU the warehouse cannot pick
    fulfilment = example.module("fulfilment")

    # When it runs
    handle = fulfilment.place_order.run(fulfilment.sample_order("ord-2", sku="SKU-DISCONTINUED"))
    result = wait_result(handle)

    # Then the child failed, the parent caught ChildRunFailed and put the order on hold
    (child,) = example.flow.list_runs(workflow="fulfil-order").runs
    assert child.status == "failed" and child.parent_run_id == handle.id
    assert child.error.message == "out of stock: SKU-DISCONTINUED"
    assert result == {"order_id": "ord-2", "status": "on-hold", "reason": child.error.message}
    step = next(s for s in handle.info().steps if s.name == "fulfil")
    assert step.kind == "child" and step.status == "failed"
    assert step.error.type == "celery_flow.errors.ChildRunFailed"
    assert actions(example, "ord-2") == ["hold: out of stock: SKU-DISCONTINUED"]
    assert query(example, "SELECT status FROM shop_orders") == [("on-hold",)]
    assert example.flow.list_runs(workflow="send-order-email").runs == []  # nothing shipped


def test_fulfilment_example_starts_like_the_trigger_and_succeeds(example):
    handle = start_like_the_trigger(example, "fulfilment")
    result = wait_result(handle)
    assert result["status"] == "shipped"
    eventually(
        lambda: example.flow.get_run(result["email_run"]).status == "succeeded",
        what="the confirmation email",
    )
