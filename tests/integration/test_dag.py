"""flow.dag: the seed's chains, fan-out / fan-in, dependency graphs and sagas on a real worker.

Every example of shared/seeds/dag-saga-platform-workflows.txt is translated here (callable
handlers; the URL form of the order chain and the webhooks are in test_webhooks.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest

from celery_flow import (
    DagStep,
    InputValidationError,
    NonRetriableError,
    RunCanceled,
    RunFailed,
    WorkflowStatus,
)
from celery_flow.testing import eventually


class Journal:
    """Thread-safe record of what the handlers did, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[str] = []

    def add(self, event: str) -> None:
        with self.lock:
            self.events.append(event)


def step(journal: Journal, name: str, result: Any = None, sleep: float = 0.0):
    def handler(context: dict[str, Any], previous: dict[str, Any]) -> Any:
        journal.add(name)
        time.sleep(sleep)
        return {"step": name, "saw": sorted(previous)} if result is None else result

    return handler


def assert_respects_dependencies(status: WorkflowStatus, steps: list[DagStep]) -> None:
    """Every step started after each of its dependencies finished (recorded times)."""
    by_id = {s.id: s for s in status.steps}
    for st in steps:
        for dep in st.depends_on:
            assert by_id[dep].completed_at is not None and by_id[st.id].started_at is not None
            assert by_id[dep].completed_at <= by_id[st.id].started_at, (dep, st.id)


def test_the_order_processing_chain_runs_each_step_once_in_order(env):
    # Given the seed's sequential order workflow, with a payment that fails once
    journal = Journal()
    attempts = {"payment": 0}

    def process_payment(context, previous):
        attempts["payment"] += 1
        journal.add("process-payment")
        if attempts["payment"] == 1:
            raise ConnectionError("gateway timeout")
        return {"charged": previous["reserve-inventory"]["reserved"]}

    from celery_flow import Retries

    steps = [
        DagStep("validate", lambda c, p: journal.add("validate") or {"valid": True}),
        DagStep(
            "reserve-inventory",
            lambda c, p: (
                journal.add("reserve-inventory")
                or {"reserved": sum(i["quantity"] for i in c["items"])}
            ),
            depends_on=["validate"],
        ),
        DagStep(
            "process-payment",
            process_payment,
            depends_on=["reserve-inventory"],
            retries=Retries(max_attempts=3, backoff="exponential", base_delay=0.05),
        ),
        DagStep(
            "create-shipment", step(journal, "create-shipment"), depends_on=["process-payment"]
        ),
        DagStep(
            "send-confirmation",
            lambda c, p: journal.add("send-confirmation") or f"mailed {c['userId']}",
            depends_on=["create-shipment"],
        ),
    ]
    order = env.flow.dag("order-processing", steps=steps)
    context = {
        "orderId": "order_123",
        "userId": "user_456",
        "items": [{"sku": "SKU001", "quantity": 2}, {"sku": "SKU002", "quantity": 1}],
    }

    # When it runs
    with env.worker():
        handle = order.run(context=context)
        results = handle.result(timeout=30)

    # Then each step ran in dependency order, payment retried in place, results flow along
    assert journal.events == [
        "validate",
        "reserve-inventory",
        "process-payment",
        "process-payment",
        "create-shipment",
        "send-confirmation",
    ]
    assert results["process-payment"] == {"charged": 3}
    assert results["send-confirmation"] == "mailed user_456"
    assert results["create-shipment"] == {"step": "create-shipment", "saw": ["process-payment"]}
    status = env.flow.get_status(handle.id)
    assert status.state == "completed" and status.context == context
    assert status.completed_steps == [s.id for s in steps]
    assert status.failed_steps == [] and status.current_step is None
    assert status.results == results
    payment = next(s for s in status.steps if s.id == "process-payment")
    assert payment.attempts == 2 and payment.state == "completed"
    assert_respects_dependencies(status, steps)


def test_fan_out_runs_three_items_in_parallel_and_finalize_collects_them_all(env):
    # Given the seed's batch-process: prepare, three parallel items, a fan-in finalize
    def process_item(context, previous):
        time.sleep(0.4)
        return {"success": True, "processedCount": len(previous["prepare"]["items"])}

    def finalize(context, previous):
        results = [{"stepId": k, **v} for k, v in sorted(previous.items())]
        return {
            "total": len(results),
            "successful": sum(r["success"] for r in results),
            "failed": sum(not r["success"] for r in results),
            "totalProcessed": sum(r["processedCount"] for r in results),
            "from": [r["stepId"] for r in results],
        }

    items = ["process-item-1", "process-item-2", "process-item-3"]
    steps = [
        DagStep("prepare", lambda c, p: {"batch": c["batchId"], "items": c["items"]}),
        *(DagStep(i, process_item, depends_on=["prepare"], parallel=True) for i in items),
        DagStep("finalize", finalize, depends_on=items),
    ]
    batch = env.flow.dag("batch-process", steps=steps)

    # When it runs on a worker with 4 threads
    with env.worker(concurrency=4):
        handle = batch.run(
            context={"batchId": "batch_123", "items": ["item_1", "item_2", "item_3"]}
        )
        results = handle.result(timeout=30)

    # Then finalize saw every item's result, and the items overlapped in time
    assert results["finalize"] == {
        "total": 3,
        "successful": 3,
        "failed": 0,
        "totalProcessed": 9,
        "from": items,
    }
    status = env.flow.get_status(handle.id)
    parallel = [s for s in status.steps if s.id in items]
    assert all(s.state == "completed" and s.attempts == 1 for s in parallel)
    assert max(s.started_at for s in parallel) < min(s.completed_at for s in parallel)
    assert_respects_dependencies(status, steps)


def test_a_complex_graph_honours_every_dependency(env):
    # Given the seed's complex pipeline:
    #   prepare -> process-a/b/c ; process-c -> validate ; a,b,c -> aggregate ;
    #   aggregate + validate -> notify
    journal = Journal()
    steps = [
        DagStep("prepare", step(journal, "prepare")),
        DagStep("process-a", step(journal, "process-a", sleep=0.2), depends_on=["prepare"]),
        DagStep("process-b", step(journal, "process-b", sleep=0.3), depends_on=["prepare"]),
        DagStep("process-c", step(journal, "process-c", sleep=0.1), depends_on=["prepare"]),
        DagStep("validate", step(journal, "validate"), depends_on=["process-c"]),
        DagStep(
            "aggregate",
            step(journal, "aggregate"),
            depends_on=["process-a", "process-b", "process-c"],
        ),
        DagStep("notify", step(journal, "notify"), depends_on=["aggregate", "validate"]),
    ]
    pipeline = env.flow.dag("complex-pipeline", steps=steps)

    # When it runs
    with env.worker(concurrency=4):
        handle = pipeline.run(context={"pipelineId": "pipeline_123"})
        results = handle.result(timeout=30)

    # Then the recorded start / finish times satisfy every edge of the graph
    status = env.flow.get_status(handle.id)
    assert status.state == "completed" and sorted(status.completed_steps) == sorted(results)
    assert_respects_dependencies(status, steps)
    times = {s.id: s for s in status.steps}
    assert times["notify"].started_at >= max(
        times["aggregate"].completed_at, times["validate"].completed_at
    )
    assert results["notify"]["saw"] == ["aggregate", "validate"]
    assert results["aggregate"]["saw"] == ["process-a", "process-b", "process-c"]
    assert sorted(journal.events) == sorted(s.id for s in steps)  # each step exactly once


def saga_steps(journal: Journal, *, failing_refund: bool = False) -> list[DagStep]:
    def refund(context, result):
        journal.add("refund-payment")
        if failing_refund:
            raise RuntimeError("refund API down")
        assert result == {"charged": 500}

    def fail_shipment(context, previous):
        journal.add("create-shipment")
        if not context.get("carrier_fixed"):
            raise RuntimeError("carrier rejected the parcel")
        return {"tracking": "T1"}

    return [
        DagStep(
            "reserve-inventory",
            step(journal, "reserve-inventory", {"reserved": 2}),
            compensation=lambda c, r: journal.add("release-inventory"),
        ),
        DagStep(
            "charge-payment",
            step(journal, "charge-payment", {"charged": 500}),
            depends_on=["reserve-inventory"],
            compensation=refund,
        ),
        DagStep(
            "create-shipment",
            fail_shipment,
            depends_on=["charge-payment"],
            compensation=lambda c, r: journal.add("cancel-shipment"),
        ),
        DagStep(
            "notify-customer", step(journal, "notify-customer"), depends_on=["create-shipment"]
        ),
    ]


def test_the_order_saga_compensates_completed_steps_in_reverse_order(env):
    # Given the seed's order saga whose create-shipment fails
    journal = Journal()
    errors: list[dict[str, Any]] = []
    saga = env.flow.dag("order-saga", steps=saga_steps(journal), saga=True, on_error=errors.append)

    # When it runs
    with env.worker():
        handle = saga.run(context={"orderId": "order_123", "userId": "user_456"})
        with pytest.raises(RunFailed) as exc:
            handle.result(timeout=30)

    # Then refund then release ran once each; cancel-shipment and notify never ran
    assert journal.events == [
        "reserve-inventory",
        "charge-payment",
        "create-shipment",
        "refund-payment",
        "release-inventory",
    ]
    assert "create-shipment" in exc.value.error.message
    assert "compensated: charge-payment, reserve-inventory" in exc.value.error.message
    assert exc.value.error.type == "celery_flow.errors.DagStepFailed"
    status = env.flow.get_status(handle.id)
    assert status.state == "failed" and status.failed_steps == ["create-shipment"]
    states = {s.id: s.state for s in status.steps}
    assert states == {
        "reserve-inventory": "compensated",
        "charge-payment": "compensated",
        "create-shipment": "failed",
        "notify-customer": "skipped",
    }
    failed = next(s for s in status.steps if s.id == "create-shipment")
    assert failed.error is not None and "carrier rejected" in failed.error.message
    assert env.flow.get_run(handle.id).attempt == 1  # the run itself is not retried
    # on_error got the failure and what was compensated
    assert len(errors) == 1 and errors[0]["state"] == "failed"
    assert errors[0]["error"]["step"] == "create-shipment"
    assert errors[0]["compensated"] == ["charge-payment", "reserve-inventory"]

    # And a retry from the first step (the documented way after compensation) redoes it all
    journal.events.clear()
    with env.worker():
        again = env.flow.retry(
            handle.id,
            from_step="reserve-inventory",
            input={"context": {"orderId": "order_123", "carrier_fixed": True}},
        )
        assert again.result(timeout=30)["create-shipment"] == {"tracking": "T1"}
    assert journal.events == [
        "reserve-inventory",
        "charge-payment",
        "create-shipment",
        "notify-customer",
    ]
    retried = env.flow.get_status(handle.id)
    assert retried.completed_steps == [s.id for s in saga_steps(journal)]
    assert {s.state for s in retried.steps} == {"completed"}


def test_a_failing_compensation_is_retried_then_reported_never_dropped(env):
    # Given a saga whose refund compensation always fails
    journal = Journal()
    saga = env.flow.dag("fragile-saga", steps=saga_steps(journal, failing_refund=True), saga=True)

    # When the run fails
    with env.worker():
        handle = saga.run(context={"orderId": "o2"})
        with pytest.raises(RunFailed) as exc:
            handle.result(timeout=30)

    # Then the refund was tried 3 times, release still ran, and the error says so
    assert journal.events.count("refund-payment") == 3
    assert journal.events[-1] == "release-inventory"
    message = exc.value.error.message
    assert "compensation FAILED for charge-payment" in message and "refund API down" in message
    charge = next(s for s in env.flow.get_status(handle.id).steps if s.id == "charge-payment")
    assert charge.state == "completed" and charge.error is not None
    assert "compensation failed" in charge.error.message


def test_a_failing_parallel_step_fails_the_wave_and_compensates_its_finished_siblings(env):
    # Given a saga whose parallel wave has one failing and one succeeding step
    journal = Journal()

    def broken(context, previous):
        time.sleep(0.2)
        raise ValueError("bad sku")

    steps = [
        DagStep(
            "start",
            step(journal, "start", {"ok": 1}),
            compensation=lambda c, r: journal.add("undo-start"),
        ),
        DagStep(
            "good",
            step(journal, "good", {"ok": 2}),
            depends_on=["start"],
            compensation=lambda c, r: journal.add("undo-good"),
        ),
        DagStep("bad", broken, depends_on=["start"], compensation=lambda c, r: journal.add("x")),
        DagStep("after", step(journal, "after"), depends_on=["good", "bad"]),
    ]
    dag = env.flow.dag("wave-saga", steps=steps, saga=True)

    # When it runs
    with env.worker():
        handle = dag.run(context={})
        with pytest.raises(RunFailed, match="step bad failed: ValueError: bad sku"):
            handle.result(timeout=30)

    # Then the finished sibling and the first step are undone, newest first
    assert [e for e in journal.events if e.startswith("undo")] == ["undo-good", "undo-start"]
    assert "x" not in journal.events and "after" not in journal.events
    status = env.flow.get_status(handle.id)
    assert status.failed_steps == ["bad"]
    assert {s.id: s.state for s in status.steps}["good"] == "compensated"


def test_get_status_reports_a_running_wave_and_a_plain_run(env):
    # Given a DAG whose parallel steps wait on a gate, and a plain workflow
    gate = threading.Event()

    def slow(context, previous):
        gate.wait(10)
        return "slow"

    steps = [
        DagStep("first", lambda c, p: 1),
        DagStep("fast", lambda c, p: "fast", depends_on=["first"]),
        DagStep("slow", slow, depends_on=["first"]),
    ]
    dag = env.flow.dag("status-dag", steps=steps)

    @env.flow.workflow()
    def plain(ctx, value: int):
        doubled = ctx.step.run("double", lambda: value * 2)
        return ctx.step.run("add", lambda: doubled + 1)

    with env.worker():
        handle = dag.run(context={"k": "v"})

        # When the wave is half done
        def half_done():
            st = env.flow.get_status(handle.id)
            states = {s.id: s.state for s in st.steps}
            return states["fast"] == "completed" and states["slow"] == "running" and st

        status = eventually(half_done, timeout=10, what="fast done, slow running")
        gate.set()
        handle.result(timeout=10)
        plain_handle = plain.run(20)
        assert plain_handle.result(timeout=10) == 41

    # Then the DAG status shows the wave in flight ...
    assert status.state == "waiting" and status.current_step == "slow"
    assert status.completed_steps == ["first", "fast"] and status.results["fast"] == "fast"
    assert status.context == {"k": "v"} and status.completed_at is None
    # ... and a plain run maps onto the same model
    plain_status = env.flow.get_status(plain_handle.id)
    assert plain_status.state == "completed" and plain_status.context == 20
    assert plain_status.completed_steps == ["double", "add"]
    assert plain_status.results == {"double": 40, "add": 41}
    assert [s.state for s in plain_status.steps] == ["completed", "completed"]
    assert plain_status.started_at is not None and plain_status.completed_at is not None


def test_a_queued_run_is_pending_and_a_dag_runs_via_flow_run_too(env):
    # Given a DAG and no worker yet
    dag = env.flow.dag("one-step", steps=[DagStep("only", lambda c, p: c["n"] + 1)])

    # When it is started by name with the raw input
    handle = env.flow.run("one-step", {"context": {"n": 1}})

    # Then it is pending until a worker takes it
    status = env.flow.get_status(handle.id)
    assert status.state == "pending" and [s.state for s in status.steps] == ["pending"]
    with env.worker():
        assert handle.result(timeout=10) == {"only": 2}
    assert dag.name == "one-step" and env.flow.dags["one-step"].workflow is dag
    # and input that is not a context is refused before anything is written
    before = env.keys()
    for bad in ({"context": [1]}, {"n": 1}, "text"):
        with pytest.raises(InputValidationError, match="'one-step'"):
            env.flow.run("one-step", bad)
    with pytest.raises(InputValidationError, match="context"):
        dag.run(context=["not", "a", "dict"])  # type: ignore[arg-type]
    assert env.keys() == before


def test_the_docs_example_runs_and_the_receiver_examples_parse(env):
    # Given the python blocks of docs/dag.md (the receivers need Django / Flask: parse only)
    import ast
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "dag.md").read_text()
    first, *receivers = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    for block in receivers:
        ast.parse(block)
    namespace: dict[str, Any] = {"flow": env.flow}
    exec(compile(first, "docs/dag.md", "exec"), namespace)

    # When the documented DAG runs
    with env.worker():
        handle = namespace["order"].run(
            context={"order_id": "o1", "user_id": "u1", "items": [{"quantity": 2}]}
        )
        results = handle.result(timeout=30)

    # Then it gives the documented output
    assert results["send-confirmation"] == "mailed u1: T-o1"
    assert results["process-payment"] == {"charged_cents": 200}


def test_celery_tasks_are_step_handlers_alone_and_in_a_parallel_wave(env):
    # Given Celery tasks as handlers (called in-process by the DAG's worker task)
    @env.app.task(name="dag.seed")
    def seed(context, previous):
        return context["n"]

    @env.app.task(name="dag.times")
    def times(context, previous):
        return previous["seed"] * context["factor"]

    dag = env.flow.dag(
        "task-handlers",
        steps=[
            DagStep("seed", seed),
            DagStep("x", times, depends_on=["seed"]),
            DagStep("y", lambda c, p: p["seed"] + 1, depends_on=["seed"]),
        ],
    )

    # When it runs
    with env.worker():
        results = dag.run(context={"n": 4, "factor": 10}).result(timeout=30)

    # Then both kinds of handler gave their results
    assert results == {"seed": 4, "x": 40, "y": 5}


# -- flow.cancel of a DAG run: the saga's compensations run on cancel too ------------------------


def undoable(journal: Journal, name: str, result: Any) -> DagStep:
    """A step returning ``result`` whose compensation journals ``undo-<name>`` with its input."""
    return DagStep(
        name,
        step(journal, name, result),
        compensation=lambda c, r: journal.add(f"undo-{name}:{c['order']}:{r}"),
    )


def test_cancel_of_a_running_saga_compensates_the_completed_steps_newest_first(env):
    # Given a saga whose charge step blocks until the test lets it finish
    journal = Journal()
    charging, proceed = threading.Event(), threading.Event()

    def charge(context, previous):
        journal.add("charge")
        charging.set()
        proceed.wait(10)
        return 500

    errors: list[dict[str, Any]] = []
    steps = [
        undoable(journal, "reserve", 2),
        DagStep(
            "charge",
            charge,
            depends_on=["reserve"],
            compensation=lambda c, r: journal.add(f"undo-charge:{c['order']}:{r}"),
        ),
        DagStep("ship", step(journal, "ship"), depends_on=["charge"], compensation=print),
    ]
    saga = env.flow.dag("cancel-saga", steps=steps, saga=True, on_error=errors.append)

    # When it is canceled while charge runs (the cancel takes effect at the next step boundary)
    with env.worker():
        handle = saga.run(context={"order": "o1"})
        assert charging.wait(10)
        assert env.flow.cancel(handle.id, reason="customer changed their mind")
        proceed.set()
        with pytest.raises(RunCanceled, match="customer changed their mind"):
            handle.result(timeout=30)

    # Then charge and reserve were undone once each, newest first, and ship never ran
    assert journal.events == ["reserve", "charge", "undo-charge:o1:500", "undo-reserve:o1:2"]
    status = env.flow.get_status(handle.id)
    assert status.state == "canceled"
    assert {s.id: s.state for s in status.steps} == {
        "reserve": "compensated",
        "charge": "compensated",
        "ship": "skipped",
    }
    recorded = env.flow.get_run(handle.id).steps
    # the engine's compensation records are whole steps, listed after the steps they undo
    assert [(s.name, s.status) for s in recorded] == [
        ("reserve", "succeeded"),
        ("charge", "succeeded"),
        ("compensate:charge", "compensated"),
        ("compensate:reserve", "compensated"),
    ]
    assert all(s.finished_at is not None and s.attempts == 1 for s in recorded)
    assert recorded[2].started_at >= recorded[1].finished_at
    assert errors == []  # on_error is for failures; a canceled run does not deliver it


def test_a_saga_past_its_timeout_still_compensates_its_completed_steps(env):
    # Given a saga with a 1 s timeout whose second step fails after the deadline passed
    journal = Journal()

    def late_failure(context, previous):
        time.sleep(1.2)
        raise NonRetriableError("carrier down")

    steps = [
        undoable(journal, "reserve", 2),
        DagStep("ship", late_failure, depends_on=["reserve"]),
    ]
    saga = env.flow.dag("late-saga", steps=steps, saga=True, timeout=1)

    # When it runs
    with env.worker():
        handle = saga.run(context={"order": "o9"})
        with pytest.raises(RunFailed) as failed:
            handle.result(timeout=30)

    # Then it fails on its timeout, and the reservation is still undone (once)
    assert failed.value.error.type == "celery_flow.errors.RunTimeout"
    assert journal.events == ["reserve", "undo-reserve:o9:2"]
    states = {s.id: s.state for s in env.flow.get_status(handle.id).steps}
    assert states["reserve"] == "compensated"


def test_cancel_while_a_parallel_wave_runs_compensates_its_finished_steps_too(env):
    # Given a saga whose second wave has a fast step and one blocked on a gate
    journal = Journal()
    gate = threading.Event()

    def slow(context, previous):
        gate.wait(20)
        return "slow"

    steps = [
        undoable(journal, "start", 1),
        DagStep(
            "fast",
            step(journal, "fast", 2),
            depends_on=["start"],
            compensation=lambda c, r: journal.add(f"undo-fast:{c['order']}:{r}"),
        ),
        DagStep("slow", slow, depends_on=["start"]),
        DagStep("after", step(journal, "after"), depends_on=["fast", "slow"]),
    ]
    saga = env.flow.dag("cancel-wave-saga", steps=steps, saga=True)

    with env.worker(concurrency=4):
        handle = saga.run(context={"order": "o2"})

        def half_done():
            st = env.flow.get_status(handle.id)
            states = {s.id: s.state for s in st.steps}
            return st.state == "waiting" and states["fast"] == "completed" and st

        eventually(half_done, timeout=10, what="fast done, the run waiting on slow")

        # When the waiting run is canceled
        assert env.flow.cancel(handle.id)
        try:
            with pytest.raises(RunCanceled):
                handle.result(timeout=30)
        finally:
            gate.set()

    # Then the finished wave step and the first step were undone once each, newest first
    assert [e for e in journal.events if e.startswith("undo")] == [
        "undo-fast:o2:2",
        "undo-start:o2:1",
    ]
    assert "after" not in journal.events
    status = env.flow.get_status(handle.id)
    assert status.state == "canceled"
    states = {s.id: s.state for s in status.steps}
    assert states["start"] == states["fast"] == "compensated" and states["after"] == "skipped"


def test_cancel_of_a_dag_without_saga_runs_no_compensation(env):
    # Given a DAG with compensations but saga=False, blocked in its second step
    journal = Journal()
    inside, proceed = threading.Event(), threading.Event()

    def block(context, previous):
        inside.set()
        proceed.wait(10)
        return "b"

    dag = env.flow.dag(
        "cancel-plain-dag",
        steps=[
            undoable(journal, "a", 1),
            DagStep("b", block, depends_on=["a"], compensation=print),
            DagStep("c", step(journal, "c"), depends_on=["b"]),
        ],
    )

    # When it is canceled
    with env.worker():
        handle = dag.run(context={"order": "o3"})
        assert inside.wait(10)
        env.flow.cancel(handle.id)
        proceed.set()
        with pytest.raises(RunCanceled):
            handle.result(timeout=30)

    # Then nothing was undone and the completed steps stay completed
    assert journal.events == ["a"]
    states = {s.id: s.state for s in env.flow.get_status(handle.id).steps}
    assert states == {"a": "completed", "b": "completed", "c": "skipped"}


# -- on_complete / on_error carry the DAG context ------------------------------------------------


def test_hook_payloads_carry_the_context_for_callables_and_signed_urls(flow_redis_url, flow_prefix):
    # Given DAGs with callable hooks and URL hooks on a local HTTP server
    from celery_flow import Flow
    from celery_flow.testing import start_flow_worker
    from tests.apps.dag_handlers import hook_server
    from tests.conftest import make_celery

    secret = "hook-secret"
    app = make_celery(flow_redis_url, flow_prefix)
    flow = Flow(app, redis_url=flow_redis_url, prefix=flow_prefix, webhook_secret=secret)
    called: list[dict[str, Any]] = []

    def boom(context, previous):
        raise ValueError("nope")

    with hook_server(secret) as server:
        server.routes["/done"] = server.routes["/failed"] = lambda body: (200, {})
        ok = [DagStep("a", lambda c, p: c["order_id"])]
        bad = [DagStep("a", boom)]
        by_callable = flow.dag("hooks-call", ok, on_complete=called.append)
        fails_callable = flow.dag("hooks-call-err", bad, on_error=called.append)
        by_url = flow.dag("hooks-url", ok, on_complete=server.url("/done"))
        fails_url = flow.dag("hooks-url-err", bad, on_error=server.url("/failed"))

        # When each runs
        with start_flow_worker(app, pool="threads", concurrency=4):
            handles = {}
            for dag in (by_callable, fails_callable, by_url, fails_url):
                handles[dag.name] = dag.run(context={"order_id": dag.name})
            for h in handles.values():
                with contextlib.suppress(RunFailed):
                    h.result(timeout=30)

        # Then every payload names the run and carries its context
        bodies = [*called, *(r.body for r in server.received)]
        assert all(r.verified for r in server.received) and len(server.received) == 2
        assert sorted((b["dag"], b["state"]) for b in bodies) == [
            ("hooks-call", "completed"),
            ("hooks-call-err", "failed"),
            ("hooks-url", "completed"),
            ("hooks-url-err", "failed"),
        ]
        for body in bodies:
            assert body["context"] == {"order_id": body["dag"]}
            assert body["run_id"] == handles[body["dag"]].id
