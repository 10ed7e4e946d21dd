"""Runs, steps, replay and retries against a real Redis and an embedded worker."""

from __future__ import annotations

import logging
import time
from datetime import UTC

import pytest
from pydantic import BaseModel

from celery_flow import (
    NonRetriableError,
    Retries,
    RunFailed,
)


class OrderIn(BaseModel):
    order_id: str
    total_cents: int


class Receipt(BaseModel):
    order_id: str
    charged: int


def counter(env, name):
    """A side-effect counter in Redis, visible across threads and processes."""
    key = f"{env.prefix}:probe:{name}"
    return (lambda: env.redis.incr(key)), (lambda: int(env.redis.get(key) or 0))


def test_a_run_records_its_output_steps_and_timestamps(env):
    # Given a two-step workflow with a pydantic schema
    seen = {}

    @env.flow.workflow(name="process-order")
    def process_order(ctx, order: OrderIn) -> Receipt:
        seen["input_type"] = type(order)
        reserved = ctx.step.run("reserve", lambda: {"sku": "A", "qty": 1})
        charged = ctx.step.run("charge", lambda: order.total_cents)
        assert reserved == {"sku": "A", "qty": 1}
        return Receipt(order_id=order.order_id, charged=charged)

    # When it runs
    with env.worker():
        handle = process_order.run({"order_id": "o1", "total_cents": 500})
        out = handle.result(timeout=10)

    # Then the handler got a model, the output is the model dumped as JSON
    assert seen["input_type"] is OrderIn
    assert out == {"order_id": "o1", "charged": 500}
    info = handle.info()
    assert info.status == "succeeded" and handle.status() == "succeeded"
    assert info.workflow == "process-order" and info.id == handle.id
    assert info.input == {"order_id": "o1", "total_cents": 500}
    assert info.attempt == 1 and info.max_attempts == 1 and info.error is None
    assert info.created_at.tzinfo == UTC and info.started_at and info.finished_at
    assert info.created_at <= info.started_at <= info.finished_at
    assert [(s.name, s.kind, s.status, s.attempts) for s in info.steps] == [
        ("reserve", "run", "succeeded", 1),
        ("charge", "run", "succeeded", 1),
    ]
    assert info.steps[1].output == 500
    assert all(s.started_at and s.finished_at for s in info.steps)


def test_a_retried_run_replays_succeeded_steps_instead_of_redoing_them(env):
    # Given a workflow whose first attempt fails after step "a" succeeded
    bump_a, count_a = counter(env, "a")

    @env.flow.workflow(retries=Retries(max_attempts=3, base_delay=0.05, jitter=False))
    def flaky(ctx):
        a = ctx.step.run("a", bump_a)
        b = ctx.step.run("b", lambda: ctx.attempt if ctx.attempt > 1 else 1 / 0)
        return {"a": a, "b": b, "attempt": ctx.attempt}

    # When it runs to success
    with env.worker():
        handle = flaky.run()
        out = handle.result(timeout=10)

    # Then step "a" ran exactly once and its cached output was returned on attempt 2
    assert out == {"a": 1, "b": 2, "attempt": 2}
    assert count_a() == 1
    info = handle.info()
    assert info.attempt == 2 and info.status == "succeeded" and info.error is None
    # and the step that failed on attempt 1 reports both of its attempts
    assert [(s.name, s.attempts) for s in info.steps] == [("a", 1), ("b", 2)]


def test_a_run_that_keeps_failing_ends_failed_after_max_attempts(env):
    @env.flow.workflow(retries=Retries(max_attempts=3, base_delay=0.02, backoff="fixed"))
    def always_fails(ctx):
        raise ValueError("boom")

    with env.worker():
        handle = always_fails.run()
        with pytest.raises(RunFailed) as exc:
            handle.result(timeout=10)

    assert exc.value.error.type == "ValueError"
    assert exc.value.error.message == "boom"
    assert "Traceback" in (exc.value.error.traceback or "")
    info = handle.info()
    assert info.status == "failed" and info.attempt == 3


@pytest.mark.parametrize(
    "exc_factory",
    [lambda: NonRetriableError("declined"), lambda: PermissionError("listed as non-retriable")],
    ids=["NonRetriableError", "non_retriable-tuple"],
)
def test_non_retriable_errors_fail_the_run_on_the_first_attempt(env, exc_factory):
    @env.flow.workflow(
        retries=Retries(max_attempts=5, base_delay=0.01, non_retriable=(PermissionError,))
    )
    def declines(ctx):
        raise exc_factory()

    with env.worker():
        handle = declines.run()
        with pytest.raises(RunFailed):
            handle.result(timeout=10)
    assert handle.info().attempt == 1


def test_a_step_is_retried_in_place_before_the_run_policy(env):
    bump, count = counter(env, "calls")

    def sometimes():
        if bump() < 3:
            raise ConnectionError("flaky upstream")
        return "ok"

    @env.flow.workflow()
    def uses_retries(ctx):
        return ctx.step.run("call", sometimes, retries=Retries(max_attempts=3, base_delay=0.01))

    with env.worker():
        handle = uses_retries.run()
        assert handle.result(timeout=10) == "ok"
    info = handle.info()
    assert count() == 3 and info.attempt == 1
    assert info.steps[0].attempts == 3 and info.steps[0].status == "succeeded"


def test_a_step_attempt_over_its_timeout_raises_step_timeout(env):
    @env.flow.workflow()
    def slow(ctx):
        return ctx.step.run("slow", time.sleep, 5, timeout=0.2)

    with env.worker():
        handle = slow.run()
        with pytest.raises(RunFailed) as exc:
            handle.result(timeout=10)
    assert exc.value.error.type == "celery_flow.errors.StepTimeout"
    step = handle.info().steps[0]
    assert step.status == "failed" and step.error and "0.2s" in step.error.message


def test_a_step_error_caught_by_the_handler_does_not_fail_the_run(env):
    @env.flow.workflow()
    def tolerant(ctx):
        try:
            ctx.step.run("bad", lambda: 1 / 0)
        except ZeroDivisionError:
            return "recovered"

    with env.worker():
        handle = tolerant.run()
        assert handle.result(timeout=10) == "recovered"
    assert handle.info().steps[0].status == "failed"


def test_a_duplicate_step_name_fails_the_run_with_a_clear_error(env):
    @env.flow.workflow()
    def dup(ctx):
        ctx.step.run("same", lambda: 1)
        ctx.step.run("same", lambda: 2)

    with env.worker(), pytest.raises(RunFailed) as exc:
        dup.run().result(timeout=10)
    assert exc.value.error.type == "celery_flow.errors.DuplicateStepError"
    assert "'same'" in exc.value.error.message and "f'same:{i}'" in exc.value.error.message


def test_a_non_json_step_output_fails_without_retry_naming_the_step_and_type(env):
    class Opaque:
        pass

    @env.flow.workflow(retries=Retries(max_attempts=3, base_delay=0.01))
    def leaks(ctx):
        return ctx.step.run("make", Opaque)

    with env.worker():
        handle = leaks.run()
        with pytest.raises(RunFailed) as exc:
            handle.result(timeout=10)
    err = exc.value.error
    assert err.type == "celery_flow.errors.OutputSerializationError"
    assert "step 'make'" in err.message and "Opaque" in err.message
    assert handle.info().attempt == 1


def test_a_non_json_run_output_fails_the_run(env):
    @env.flow.workflow()
    def returns_set(ctx):
        return {1, 2}

    with env.worker(), pytest.raises(RunFailed) as exc:
        returns_set.run().result(timeout=10)
    assert exc.value.error.type == "celery_flow.errors.OutputSerializationError"
    assert "set" in exc.value.error.message


def test_compensations_run_in_reverse_order_when_the_run_ends_failed(env):
    order = []

    @env.flow.workflow(retries=Retries(max_attempts=2, base_delay=0.01))
    def saga(ctx):
        ctx.step.run("reserve", lambda: "r1", compensate=lambda out: order.append(("release", out)))
        ctx.step.run("charge", lambda: "c1", compensate=lambda out: order.append(("refund", out)))
        ctx.step.run("note", lambda: "no compensation")
        ctx.step.run("ship", lambda: 1 / 0)

    with env.worker():
        handle = saga.run()
        with pytest.raises(RunFailed):
            handle.result(timeout=10)

    # compensations ran once, after the last attempt, newest first
    assert order == [("refund", "c1"), ("release", "r1")]
    status = {s.name: s.status for s in handle.info().steps}
    assert status == {
        "reserve": "compensated",
        "charge": "compensated",
        "note": "succeeded",
        "ship": "failed",
    }


def test_on_failure_is_called_once_with_the_failure_context(env):
    calls = []

    @env.flow.workflow(
        retries=Retries(max_attempts=2, base_delay=0.01), on_failure=lambda fctx: calls.append(fctx)
    )
    def doomed(ctx, n: int):
        raise KeyError(n)

    with env.worker():
        handle = doomed.run(7)
        with pytest.raises(RunFailed):
            handle.result(timeout=10)

    assert len(calls) == 1
    fctx = calls[0]
    assert fctx.run_id == handle.id and fctx.workflow == "doomed" and fctx.input == 7
    assert fctx.error.type == "KeyError" and fctx.attempt == 2


def test_the_context_exposes_run_identity_progress_and_a_structured_logger(env, caplog):
    seen = {}

    @env.flow.workflow()
    def introspect(ctx, n: int):
        seen.update(
            run_id=ctx.run_id,
            workflow=ctx.workflow,
            attempt=ctx.attempt,
            input=ctx.input,
            key=ctx.idempotency_key("charge"),
            cancel=ctx.cancel_requested,
        )
        ctx.progress(3, 10, "three of ten")
        ctx.log.info("hello from the run")
        ctx.step.run("inside", lambda: ctx.log.info("hello from a step"))
        return n

    with caplog.at_level(logging.INFO, logger="celery_flow"), env.worker():
        handle = introspect.run(5)
        handle.result(timeout=10)

    assert seen == {
        "run_id": handle.id,
        "workflow": "introspect",
        "attempt": 1,
        "input": 5,
        "key": f"{handle.id}:charge",
        "cancel": False,
    }
    progress = handle.info().progress
    assert progress and (progress.current, progress.total, progress.message) == (
        3,
        10,
        "three of ten",
    )
    record = next(r for r in caplog.records if "hello from the run" in r.getMessage())
    assert record.run_id == handle.id and record.workflow == "introspect"
    assert record.step is None  # logged between steps
    in_step = next(r for r in caplog.records if "hello from a step" in r.getMessage())
    assert (in_step.run_id, in_step.workflow, in_step.step) == (handle.id, "introspect", "inside")


def test_async_handlers_run(env):
    @env.flow.workflow()
    async def async_wf(ctx, n: int):
        return ctx.step.run("double", lambda: n * 2)

    with env.worker():
        assert async_wf.run(21).result(timeout=10) == 42


def test_a_plain_callable_and_a_celery_task_both_work_as_step_functions(env):
    @env.app.task(name=f"{env.prefix}.add")
    def add(a, b):
        return a + b

    @env.flow.workflow()
    def uses_task(ctx):
        return ctx.step.run("add", add, 2, 3) + ctx.step.run("mul", lambda a, b: a * b, 2, b=4)

    with env.worker():
        assert uses_task.run().result(timeout=10) == 13
