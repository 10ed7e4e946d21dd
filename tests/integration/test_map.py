"""ctx.step.map: Celery-group fan-out, idempotent fan-in, per-item cache."""

from __future__ import annotations

import os
import signal

import pytest
import redis

from celery_flow import MapFailed, RunFailed
from celery_flow.testing import eventually
from tests.apps import map_fns
from tests.procs import celery_worker


@pytest.fixture(autouse=True)
def probe(flow_redis_url, flow_prefix):
    map_fns.configure(flow_redis_url, flow_prefix)


def item_calls(env, n):
    return int(env.redis.get(f"{env.prefix}:probe:item:{n}") or 0)


def test_map_over_10000_items_returns_ordered_results_and_resumes_once(env):
    runs_of_parent = []

    @env.flow.workflow()
    def squares(ctx, n: int):
        runs_of_parent.append(ctx.attempt)
        out = ctx.step.map("square", map_fns.square, list(range(n)), chunk_size=100)
        return {"count": len(out), "sum": sum(out), "head": out[:3], "tail": out[-1]}

    with env.worker(concurrency=4):
        handle = squares.run(10_000)
        eventually(lambda: handle.status() == "waiting", what="the parent to wait on the map")
        out = handle.result(timeout=120)
    assert out == {
        "count": 10_000,
        "sum": sum(i * i for i in range(10_000)),
        "head": [0, 1, 4],
        "tail": 9999 * 9999,
    }
    assert len(runs_of_parent) == 2  # the first execution and exactly one resume
    step = handle.info().steps[0]
    assert step.kind == "map" and step.status == "succeeded"


def test_one_failing_item_raises_map_failed_and_retry_recomputes_only_it(env):
    @env.flow.workflow()
    def mapper(ctx):
        return ctx.step.map("compute", map_fns.fails_on_seven, list(range(12)), chunk_size=5)

    with env.worker():
        handle = mapper.run()
        with pytest.raises(RunFailed) as exc:
            handle.result(timeout=30)
        assert exc.value.error.type == "celery_flow.errors.MapFailed"
        assert "indexes 7" in exc.value.error.message
        assert [item_calls(env, n) for n in range(12)] == [1] * 12
        # fix the bug, then retry: only item 7 runs again
        env.redis.set(f"{env.prefix}:probe:fixed", 1)
        assert env.flow.retry(handle.id).result(timeout=30) == [n * n for n in range(12)]
    assert [item_calls(env, n) for n in range(12)] == [1] * 7 + [2] + [1] * 4


def test_map_failed_can_be_caught_with_the_failed_indexes(env):
    @env.flow.workflow()
    def tolerant(ctx):
        try:
            ctx.step.map("compute", map_fns.fails_on_seven, list(range(10)), chunk_size=4)
        except MapFailed as exc:
            return exc.failed_indexes

    with env.worker():
        assert tolerant.run().result(timeout=30) == [7]


def test_an_empty_map_and_bad_arguments(env):
    @env.flow.workflow()
    def empty(ctx):
        return ctx.step.map("nothing", map_fns.square, [])

    @env.flow.workflow()
    def bad_chunk(ctx):
        return ctx.step.map("bad", map_fns.square, [1], chunk_size=0)

    @env.flow.workflow()
    def lambda_fn(ctx):
        return ctx.step.map("bad", lambda x: x, [1])

    with env.worker():
        assert empty.run().result(timeout=10) == []
        with pytest.raises(RunFailed, match="chunk_size=0"):
            bad_chunk.run().result(timeout=10)
        with pytest.raises(RunFailed, match="module-level function"):
            lambda_fn.run().result(timeout=10)


@pytest.mark.slow
def test_a_worker_killed_mid_chunk_recomputes_no_finished_item(
    proc_flow, flow_redis_url, flow_prefix, monkeypatch
):
    monkeypatch.setenv("CF_TEST_REPUBLISH", "2")  # the map watchdog re-dispatches after 2 s
    mod = proc_flow(flow_redis_url)
    r = redis.Redis.from_url(flow_redis_url, decode_responses=True)
    with celery_worker(
        flow_redis_url, flow_redis_url, flow_prefix, "prefork", concurrency=1
    ) as first:
        handle = mod.map_parent.run(10)
        eventually(
            lambda: r.get(f"{flow_prefix}:probe:item:5") == "1",
            timeout=30,
            what="the chunk to reach item 5",
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    with celery_worker(flow_redis_url, flow_redis_url, flow_prefix, "prefork", concurrency=2):
        assert handle.result(timeout=60) == [n * n for n in range(10)]
    calls = [int(r.get(f"{flow_prefix}:probe:item:{n}") or 0) for n in range(10)]
    # items 0-4 finished before the kill and were not recomputed; item 5 ran twice
    assert calls == [1, 1, 1, 1, 1, 2, 1, 1, 1, 1]


def test_map_workflow_starts_one_child_per_input_and_returns_outputs_in_order(env):
    @env.flow.workflow()
    def ship(ctx, order: int):
        ctx.step.sleep("pack", 0.05 * (order % 3))  # children finish out of order
        if order == 13:
            raise ValueError("address unknown")
        return f"shipped {order}"

    @env.flow.workflow()
    def fulfil_all(ctx, n: int):
        try:
            return ctx.step.map_workflow("ship", ship, list(range(n)), chunk_size=10)
        except MapFailed as exc:
            return {"failed": exc.failed_indexes}

    with env.worker(concurrency=2):
        assert fulfil_all.run(12).result(timeout=30) == [f"shipped {i}" for i in range(12)]
        assert fulfil_all.run(30).result(timeout=30) == {"failed": [13]}
    children = env.flow.list_runs(workflow="ship", limit=1000).runs
    assert len(children) == 42  # each child started exactly once despite the parent's replays
    assert all(c.parent_run_id for c in children)
