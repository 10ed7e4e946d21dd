"""The Redis gate: an exact semaphore per limit key, FIFO waiting in Redis, GCRA rate limits."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import pytest
from celery.signals import task_prerun

from celery_flow import Retries
from celery_flow.testing import eventually
from tests.procs import celery_worker


def probe(env, name):
    key = f"{env.prefix}:probe:{name}"
    return key


def track(env, name, hold):
    """Step body: count active runs, remember the peak, hold the slot."""
    active = env.redis.incr(f"{env.prefix}:probe:{name}:active")
    env.redis.zadd(f"{env.prefix}:probe:{name}:peak", {"peak": active}, gt=True)
    time.sleep(hold)
    env.redis.decr(f"{env.prefix}:probe:{name}:active")
    return active


def peak(env, name):
    return int(env.redis.zscore(f"{env.prefix}:probe:{name}:peak", "peak") or 0)


@pytest.fixture
def executions():
    """Count every Celery task execution in this process (embedded workers run here)."""
    seen: list[str] = []

    def on_prerun(sender=None, **_):
        seen.append(sender.name)

    task_prerun.connect(on_prerun, weak=False)
    yield seen
    task_prerun.disconnect(on_prerun)


def test_a_full_gate_publishes_nothing_until_a_slot_is_handed_over(env, executions):
    @env.flow.workflow(max_concurrency=1)
    def serial(ctx, n: int):
        return ctx.step.run("work", track, env, "serial", 0.02)

    # Given 10 runs started while nothing runs them
    handles = [serial.run(n) for n in range(10)]

    # Then one holds a reserved slot and is in the broker; nine wait in Redis, not the broker
    gate = env.flow.gate_status("serial")
    assert gate.holders == [handles[0].id] and gate.waiting == 9 and gate.max_concurrency == 1
    assert env.redis.llen(env.prefix) == 1  # the Redis broker's queue for this test
    assert all(h.status() == "queued" for h in handles)

    # When a worker runs them
    with env.worker(concurrency=4):
        assert [h.result(timeout=20) for h in handles] == [1] * 10

    # Then each run was executed exactly once (no requeue loop), in FIFO order, one at a time
    assert executions.count("celery_flow.serial") == 10
    starts = [h.info().started_at for h in handles]
    assert starts == sorted(starts)
    assert peak(env, "serial") == 1
    assert env.flow.gate_status("serial").waiting == 0
    assert env.redis.scard(env.flow.store.keys.gates) == 0


def test_a_per_tenant_limit_key_limits_each_tenant_separately(env):
    @env.flow.workflow(max_concurrency=1, limit_key=lambda inp: f"tenant-{inp['tenant']}")
    def sync_tenant(ctx, inp: dict):
        return ctx.step.run("sync", track, env, inp["tenant"], 0.2) and ctx.step.run(
            "both", lambda: env.redis.get(f"{env.prefix}:probe:A:active")
        )

    @env.flow.workflow()
    def overlap_probe(ctx):
        return 0

    with env.worker(concurrency=6):
        handles = [sync_tenant.run({"tenant": t}) for t in "ABABAB"]
        for h in handles:
            h.result(timeout=20)

    assert peak(env, "A") == 1 and peak(env, "B") == 1
    # A and B ran at the same time: some A run overlapped some B run
    infos = [h.info() for h in handles]
    spans = {
        t: [(i.started_at, i.finished_at) for i, h in zip(infos, "ABABAB", strict=True) if h == t]
        for t in "AB"
    }
    assert any(a0 < b1 and b0 < a1 for a0, a1 in spans["A"] for b0, b1 in spans["B"])
    assert env.flow.gate_status("tenant-A").max_concurrency is None  # dynamic key


def test_a_run_waiting_for_its_retry_gives_its_slot_back(env):
    @env.flow.workflow(max_concurrency=1, retries=Retries(max_attempts=2, base_delay=1.5))
    def retrying(ctx, n: int):
        if n == 0 and ctx.attempt == 1:
            raise RuntimeError("retry me later")
        return n

    with env.worker():
        first = retrying.run(0)
        eventually(lambda: first.status() == "scheduled", what="first run to schedule its retry")
        second = retrying.run(1)
        assert second.result(timeout=5) == 1  # ran while the first waited for its backoff
        assert first.status() == "scheduled"
        assert first.result(timeout=10) == 0


def test_canceling_waiting_and_reserved_runs_frees_their_places(env):
    @env.flow.workflow(max_concurrency=1)
    def single(ctx, n: int):
        return n

    reserved, waiting, last = single.run(0), single.run(1), single.run(2)
    assert env.flow.gate_status("single").holders == [reserved.id]
    assert waiting.cancel() and reserved.cancel()
    # the reserved slot went straight to the next live waiter
    assert env.flow.gate_status("single").holders == [last.id]
    with env.worker():
        assert last.result(timeout=10) == 2
    assert waiting.status() == reserved.status() == "canceled"


def test_a_rate_limit_spaces_starts_and_loses_none(env, executions):
    @env.flow.workflow(rate_limit="5/s")
    def limited(ctx, n: int):
        return n

    with env.worker(concurrency=4):
        handles = [limited.run(n) for n in range(20)]
        assert sorted(h.result(timeout=30) for h in handles) == list(range(20))

    starts = sorted(h.info().started_at for h in handles)
    spread = (starts[-1] - starts[0]).total_seconds()
    assert spread >= 3.6, spread  # 19 intervals of 200 ms
    # the gate books admissions exactly 200 ms apart (run_at = the booked time of delayed runs)
    booked = sorted(
        int(env.redis.hget(env.flow.store.keys.run(h.id), "run_at") or 0) for h in handles
    )
    assert booked[0] == 0 and all(b - a >= 199 for a, b in itertools.pairwise(booked[1:]))
    # and actual starts follow within the promoter's jitter: no second holds 6 of them
    for i in range(len(starts) - 5):
        assert (starts[i + 5] - starts[i]).total_seconds() >= 0.9, starts
    # delayed runs became timers, never a requeue loop: one execution per run
    assert executions.count("celery_flow.limited") == 20


@pytest.mark.slow
def test_max_concurrency_is_exact_across_two_worker_processes(
    proc_flow, flow_redis_url, flow_prefix
):
    mod = proc_flow(flow_redis_url)
    with (
        celery_worker(flow_redis_url, flow_redis_url, flow_prefix, "threads", concurrency=8),
        celery_worker(flow_redis_url, flow_redis_url, flow_prefix, "threads", concurrency=8),
    ):
        time.sleep(1.0)  # both nodes consuming before the burst
        handles = [mod.gated.run(n) for n in range(40)]
        outs = [h.result(timeout=90) for h in handles]
    assert [o["n"] for o in outs] == list(range(40))
    assert len({o["pid"] for o in outs}) == 2  # both nodes ran runs under the one limit
    import redis

    r = redis.Redis.from_url(flow_redis_url)
    assert int(r.zscore(f"{flow_prefix}:probe:gated:peak", "peak")) == 3


@pytest.mark.slow
def test_a_slot_held_by_a_sigkilled_worker_is_reclaimed_after_its_lease(
    proc_flow, flow_redis_url, flow_prefix
):
    mod = proc_flow(flow_redis_url)
    import redis

    r = redis.Redis.from_url(flow_redis_url, decode_responses=True)
    with celery_worker(flow_redis_url, flow_redis_url, flow_prefix, "prefork") as first:
        holder = mod.gated_slow.run(0)
        eventually(
            lambda: r.get(f"{flow_prefix}:probe:slow:0") == "1",
            timeout=30,
            what="the first run to hold the slot",
        )
        others = [mod.gated_slow.run(n) for n in range(1, 4)]
        assert mod.flow.gate_status("gated-slow").waiting == 3
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    started = time.monotonic()
    with celery_worker(flow_redis_url, flow_redis_url, flow_prefix, "threads", concurrency=4):
        assert [h.result(timeout=60) for h in [holder, *others]] == [0, 1, 2, 3]
    assert time.monotonic() - started < 30
    assert r.hget(mod.flow.store.keys.run(holder.id), "recoveries") == "1"
    assert mod.flow.gate_status("gated-slow").holders == []


def test_gate_state_is_visible_while_runs_hold_and_wait(env):
    release = threading.Event()

    @env.flow.workflow(max_concurrency=2, rate_limit="100/s")
    def visible(ctx, n: int):
        return ctx.step.run("hold", release.wait, 10)

    with env.worker(concurrency=4):
        handles = [visible.run(n) for n in range(5)]
        eventually(lambda: sum(h.status() == "running" for h in handles) == 2, what="2 running")
        gate = env.flow.gate_status("visible")
        assert len(gate.holders) == 2 and gate.waiting == 3
        assert gate.max_concurrency == 2 and gate.rate_limit == "100/s"
        release.set()
        assert [h.result(timeout=10) for h in handles] == [True] * 5


def test_skip_if_full_writes_nothing_when_the_gate_is_at_max_concurrency(env):
    # (the path cron ticks use: a tick at max_concurrency is skipped, not queued)
    @env.flow.workflow(max_concurrency=1)
    def swept(ctx):
        return 1

    holder = env.flow._start(
        swept,
        None,
        idempotency_key=None,
        idempotency_ttl=3600,
        run_at=None,
        delay=None,
        queue=None,
        skip_if_full=True,
    )
    assert holder is not None
    before = env.keys()
    skipped = env.flow._start(
        swept,
        None,
        idempotency_key="tick-2",
        idempotency_ttl=3600,
        run_at=None,
        delay=None,
        queue=None,
        skip_if_full=True,
    )
    assert skipped is None and env.keys() == before
