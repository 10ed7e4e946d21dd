"""Real `celery worker` subprocesses: every pool, both brokers, and SIGKILL recovery."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

pytestmark = pytest.mark.slow

from tests.procs import AMQP_URL, celery_worker, ensure_amqp  # noqa: E402


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_runs_retry_and_replay_under_every_pool_and_broker(
    broker, pool, proc_flow, flow_redis_url, flow_prefix
):
    if broker == "amqp":
        ensure_amqp()
    broker_url = flow_redis_url if broker == "redis" else AMQP_URL
    mod = proc_flow(broker_url)
    try:
        with celery_worker(broker_url, flow_redis_url, flow_prefix, pool):
            handles = [mod.two_steps.run(n) for n in range(4)]
            outs = [h.result(timeout=60) for h in handles]
        # every run retried once, and its step "a" ran exactly once across both attempts
        assert [(o["b"], o["attempt"], o["a"]) for o in outs] == [(n * 2, 2, 1) for n in range(4)]
        assert all(o["pid"] != os.getpid() for o in outs)
        probe = redis.Redis.from_url(flow_redis_url)
        assert [int(probe.get(f"{flow_prefix}:probe:a:{n}")) for n in range(4)] == [1, 1, 1, 1]
    finally:
        if broker == "amqp":
            with mod.app.connection() as conn:
                conn.default_channel.queue_delete(flow_prefix)


def test_a_sigkilled_prefork_worker_loses_no_run_and_repeats_no_finished_step(
    proc_flow, flow_redis_url, flow_prefix
):
    mod = proc_flow(flow_redis_url)
    probe = redis.Redis.from_url(flow_redis_url, decode_responses=True)
    # Given a run inside its long second step on a prefork worker
    with celery_worker(flow_redis_url, flow_redis_url, flow_prefix, "prefork") as first:
        handle = mod.slow_second_step.run()
        deadline = time.monotonic() + 30
        while probe.get(f"{flow_prefix}:probe:second") != "1":
            assert time.monotonic() < deadline, "the run never reached its second step"
            time.sleep(0.05)
        # When the whole worker (parent and children) is SIGKILLed
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    assert handle.status() == "running"  # nobody is left to say otherwise

    # Then a new worker recovers it once the lease expires
    started = time.monotonic()
    with celery_worker(flow_redis_url, flow_redis_url, flow_prefix, "prefork"):
        out = handle.result(timeout=60)
    recovery = time.monotonic() - started
    assert out == {"first": 1, "second": 2}
    assert probe.get(f"{flow_prefix}:probe:first") == "1"  # succeeded step ran exactly once
    info = handle.info()
    assert info.status == "succeeded" and info.attempt == 1
    assert probe.hget(mod.flow.store.keys.run(handle.id), "recoveries") == "1"
    assert recovery < 30
