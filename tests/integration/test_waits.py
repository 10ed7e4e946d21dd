"""Durable waits: sleep, events, child workflows, retry from a step, async handlers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from celery_flow import (
    ChildRunFailed,
    EventTimeout,
    RunCanceled,
    RunFailed,
    RunNotFound,
    RunStateError,
    StepNotFound,
)
from celery_flow.testing import eventually


def counter(env, name):
    key = f"{env.prefix}:probe:{name}"
    return (lambda *a: env.redis.incr(key)), (lambda: int(env.redis.get(key) or 0))


def test_a_sleeping_run_holds_no_worker_and_resumes_once(env):
    bump_before, before = counter(env, "before")
    bump_after, after = counter(env, "after")

    @env.flow.workflow()
    def sleepy(ctx):
        ctx.step.run("before", bump_before)
        ctx.step.sleep("nap", 2)
        return ctx.step.run("after", bump_after)

    @env.flow.workflow()
    def quick(ctx):
        return "quick"

    # Given a worker with a single thread
    with env.worker(concurrency=1):
        handle = sleepy.run()
        eventually(lambda: handle.status() == "waiting", what="the run to sleep")
        # When another run arrives during the sleep, it completes: no thread is occupied
        assert quick.run().result(timeout=1.5) == "quick"
        assert handle.status() == "waiting"
        info = handle.info()
        assert [(s.name, s.kind, s.status) for s in info.steps] == [
            ("before", "run", "succeeded"),
            ("nap", "sleep", "waiting"),
        ]
        # Then the run resumes once after the sleep; the step before it did not run again
        assert handle.result(timeout=10) == 1
    assert before() == 1 and after() == 1
    info = handle.info()
    assert (info.finished_at - info.started_at).total_seconds() >= 1.9
    nap = next(s for s in info.steps if s.name == "nap")
    assert nap.status == "succeeded" and (nap.finished_at - nap.started_at).total_seconds() >= 1.9


def test_sleep_until_a_past_time_returns_at_once(env):
    @env.flow.workflow()
    def past(ctx):
        ctx.step.sleep_until("then", datetime.now(UTC) - timedelta(seconds=5))
        return "went on"

    with env.worker():
        assert past.run().result(timeout=5) == "went on"


def test_events_sent_before_and_after_the_wait_are_each_consumed_once(env):
    @env.flow.workflow()
    def approvals(ctx):
        first = ctx.step.wait_for_event("first", "approve")
        second = ctx.step.wait_for_event("second", "approve")
        return [first, second]

    with env.worker():
        handle = approvals.run(delay=0.5)
        env.flow.send_event(handle.id, "approve", {"by": "early"})  # buffered
        eventually(lambda: handle.status() == "waiting", what="the second wait")
        waiting = [s for s in handle.info().steps if s.status == "waiting"]
        assert [(s.name, s.kind, s.event_type) for s in waiting] == [("second", "event", "approve")]
        env.flow.send_event(handle.id, "approve", {"by": "late", "items": []})
        assert handle.result(timeout=10) == [{"by": "early"}, {"by": "late", "items": []}]
    assert not env.redis.hgetall(env.flow.store.keys.events(handle.id))
    with pytest.raises(RunStateError, match="succeeded"):
        env.flow.send_event(handle.id, "approve")
    with pytest.raises(RunNotFound):
        env.flow.send_event("no-such-run", "approve")


def test_an_event_timeout_can_be_caught_to_escalate(env):
    notified = []

    @env.flow.workflow()
    def approval(ctx, request: str):
        try:
            return ctx.step.wait_for_event("manager", "approved", timeout=0.5)
        except EventTimeout:
            ctx.step.run("escalate", lambda: notified.append(request) or "sent")
            return ctx.step.wait_for_event("director", "approved", timeout=30)

    with env.worker():
        handle = approval.run("laptop")
        eventually(
            lambda: any(s.name == "director" for s in handle.info().steps),
            what="the escalation wait",
        )
        env.flow.send_event(handle.id, "approved", {"by": "director"})
        assert handle.result(timeout=10) == {"by": "director"}
    steps = {s.name: s for s in handle.info().steps}
    assert steps["manager"].status == "failed" and "timeout" in steps["manager"].error.message
    assert steps["manager"].error.type == "celery_flow.errors.EventTimeout"
    assert notified == ["laptop"]  # the escalation ran once despite the replays


def test_a_parent_waits_for_its_child_on_a_single_worker_thread(env):
    bump, count = counter(env, "child-ran")

    @env.flow.workflow()
    def fulfil(ctx, order: str):
        return ctx.step.run("pack", bump) and f"packed {order}"

    @env.flow.workflow()
    def order(ctx, order_id: str):
        packed = ctx.step.run_workflow("fulfil", fulfil, order_id)
        return ctx.step.run("notify", lambda: f"notified: {packed}")

    with env.worker(concurrency=1):
        handle = order.run("o1")
        assert handle.result(timeout=10) == "notified: packed o1"
    child = handle.info().steps[0]
    assert child.kind == "child" and child.status == "succeeded"
    children = env.flow.list_runs(workflow="fulfil").runs
    assert len(children) == 1 and children[0].parent_run_id == handle.id
    assert count() == 1


def test_a_failing_child_raises_child_run_failed_with_its_error(env):
    @env.flow.workflow()
    def broken(ctx):
        raise ValueError("out of stock")

    @env.flow.workflow()
    def parent(ctx):
        try:
            ctx.step.run_workflow("child", broken)
        except ChildRunFailed as exc:
            return {"type": exc.error.type, "message": exc.error.message}

    with env.worker(concurrency=1):
        assert parent.run().result(timeout=10) == {"type": "ValueError", "message": "out of stock"}


def test_emit_workflow_returns_the_child_id_once(env):
    bump, count = counter(env, "emitted")

    @env.flow.workflow()
    def analytics(ctx, n: int):
        return bump()

    @env.flow.workflow()
    def emitter(ctx):
        child = ctx.step.emit_workflow("track", analytics, 7)
        ctx.step.sleep("pause", 0.2)  # forces a replay of "track"
        return child

    with env.worker():
        child_id = emitter.run().result(timeout=10)
        assert env.flow.handle(child_id).result(timeout=10) == 1
    assert count() == 1
    assert env.flow.get_run(child_id).input == 7


def test_retry_from_a_step_with_new_input_replays_earlier_steps(env):
    bump_fetch, fetched = counter(env, "fetch")
    bump_charge, charged = counter(env, "charge")

    @env.flow.workflow()
    def pay(ctx, amount: int):
        ctx.step.run("fetch", bump_fetch)
        ctx.step.run("charge", bump_charge)
        if amount < 0:
            raise ValueError("negative amount")
        return ctx.step.run("receipt", lambda: f"paid {amount}")

    with env.worker():
        handle = pay.run(-5)
        with pytest.raises(RunFailed):
            handle.result(timeout=10)
        with pytest.raises(StepNotFound, match="fetch, charge"):
            env.flow.retry(handle.id, from_step="refund")
        again = env.flow.retry(handle.id, from_step="charge", input=10)
        assert again.id == handle.id
        assert again.result(timeout=10) == "paid 10"
    assert fetched() == 1 and charged() == 2
    info = handle.info()
    assert info.input == 10 and info.attempt == 1 and info.error is None
    with pytest.raises(RunStateError, match="succeeded"):
        env.flow.retry(handle.id)


def test_retry_many_replays_every_failed_run_of_a_workflow(env):
    fixed = []

    @env.flow.workflow()
    def fragile(ctx, n: int):
        if not fixed:
            raise RuntimeError("bug")
        return n

    with env.worker():
        handles = [fragile.run(n) for n in range(3)]
        for h in handles:
            with pytest.raises(RunFailed):
                h.result(timeout=10)
        fixed.append(True)  # "deploy the fix"
        retried = env.flow.retry_many(workflow="fragile")
        assert sorted(h.id for h in retried) == sorted(h.id for h in handles)
        assert sorted(h.result(timeout=10) for h in handles) == [0, 1, 2]


def test_a_waiting_run_fails_with_run_timeout_at_its_deadline(env):
    @env.flow.workflow(timeout=0.5)
    def patient(ctx):
        ctx.step.wait_for_event("forever", "never-sent")

    with env.worker():
        handle = patient.run()
        started = time.monotonic()
        with pytest.raises(RunFailed) as exc:
            handle.result(timeout=10)
    assert exc.value.error.type == "celery_flow.errors.RunTimeout"
    assert time.monotonic() - started < 3


def test_canceling_a_waiting_parent_cancels_it_at_once_and_its_children(env):
    @env.flow.workflow()
    def slow_child(ctx):
        ctx.step.sleep("long", 3600)

    @env.flow.workflow()
    def parent(ctx):
        ctx.step.run_workflow("child", slow_child)

    with env.worker():
        handle = parent.run()
        eventually(
            lambda: env.flow.list_runs(workflow="slow-child", status="waiting").runs,
            what="the child to sleep",
        )
        (child,) = env.flow.list_runs(workflow="slow-child").runs
        assert handle.cancel("no longer needed")
        assert handle.status() == "canceled"
        with pytest.raises(RunCanceled):
            env.flow.handle(child.id).result(timeout=5)
    assert "parent run" in env.flow.get_run(child.id).error.message


def test_a_waiting_run_gives_its_gate_slot_back(env):
    @env.flow.workflow(max_concurrency=1)
    def one_at_a_time(ctx, n: int):
        if n == 0:
            ctx.step.sleep("nap", 1.5)
        return n

    with env.worker():
        sleeper = one_at_a_time.run(0)
        eventually(lambda: sleeper.status() == "waiting", what="the first run to sleep")
        assert one_at_a_time.run(1).result(timeout=1) == 1
        assert sleeper.result(timeout=10) == 0


def test_async_handlers_and_async_step_functions(env):
    async def fetch(n):
        await asyncio.sleep(0.01)
        return n * 2

    @env.flow.workflow()
    async def async_flow(ctx, n: int):
        doubled = ctx.step.run("fetch", fetch, n)
        ctx.step.sleep("nap", 0.2)
        return doubled + 1

    @env.flow.workflow()
    def sync_flow(ctx, n: int):
        return ctx.step.run("fetch", fetch, n)

    with env.worker():
        assert async_flow.run(20).result(timeout=10) == 41
        assert sync_flow.run(4).result(timeout=10) == 8


def test_bad_wait_arguments_fail_the_run_with_a_clear_error(env):
    @env.flow.workflow()
    def negative(ctx):
        ctx.step.sleep("back-in-time", -1)

    with env.worker(), pytest.raises(RunFailed) as exc:
        negative.run().result(timeout=10)
    assert "must not be negative" in exc.value.error.message


def test_a_thousand_sleeping_runs_cost_far_less_than_a_thousand_worker_seconds(env):
    @env.flow.workflow()
    def naps(ctx, n: int):
        ctx.step.sleep("nap", 1)
        return n

    with env.worker(concurrency=4):
        started = time.monotonic()
        handles = [naps.run(n) for n in range(1000)]
        assert sorted(h.result(timeout=120) for h in handles) == list(range(1000))
        wall = time.monotonic() - started
    print(f"\n1000 runs x 1 s sleep on 4 worker threads: {wall:.1f} s wall")
    assert wall < 60  # 4 threads x 60 s = 240 worker-seconds at most, vs 1,000 if sleeps blocked


def test_the_poll_with_exponential_backoff_pattern(env):
    # Cloudflare Workflows seed, "Polling with backoff": submit a job, then sleep and check
    # with growing delays until it is done, each check its own step.
    bump_check, checks = counter(env, "checks")

    @env.flow.workflow()
    def transcode(ctx, video: str):
        job = ctx.step.run("submit", lambda: f"job-{video}")
        for attempt in range(10):
            status = ctx.step.run(
                f"check:{attempt}", lambda: "done" if bump_check() >= 3 else "busy"
            )
            if status == "done":
                return {"job": job, "checks": attempt + 1}
            ctx.step.sleep(f"wait:{attempt}", 0.1 * 2**attempt)
        raise RuntimeError("processing timed out")

    with env.worker():
        assert transcode.run("v1").result(timeout=15) == {"job": "job-v1", "checks": 3}
    assert checks() == 3  # each check ran once across all the replays


def test_progress_never_goes_back_while_a_resumed_run_replays(env):
    # Given a run that reports progress between durable sleeps (each resume replays the loop)
    @env.flow.workflow(name="paced")
    def paced(ctx, n: int) -> int:
        for i in range(n):
            ctx.step.run(f"b:{i}", lambda: None)
            ctx.progress(i + 1, n, f"batch {i + 1}")
            ctx.step.sleep(f"pause:{i}", 0.15)
        return n

    seen: list[float] = []
    with env.worker():
        handle = paced.run(6)
        # When its progress is sampled as fast as Redis answers until it ends
        while handle.status() not in ("succeeded", "failed"):
            progress = env.flow.get_run(handle.id).progress
            if progress is not None:
                seen.append(progress.current)
        assert handle.result(timeout=10) == 6

    # Then every value seen is >= the one before, and it went all the way through
    assert seen and seen[-1] == 6, seen
    assert seen == sorted(seen), seen
    assert len(set(seen)) >= 4, seen  # intermediate values were visible, not just the end
