"""Run lifecycle: scheduling, idempotency, cancellation, timeouts, fencing, recovery, retention."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from celery_flow import Flow, Retries, RunCanceled, RunFailed
from celery_flow._keys import STATUSES
from celery_flow.testing import eventually
from tests.conftest import make_celery


def counter(env, name):
    key = f"{env.prefix}:probe:{name}"
    return (lambda *a: env.redis.incr(key)), (lambda: int(env.redis.get(key) or 0))


def enqueue_without_publishing(store, run_id, workflow):
    """Record a queued run as .run() would, but publish no message (a publisher that died)."""
    _created, run_id, token, _ = store.enqueue(
        run_id,
        workflow=workflow,
        input_json="null",
        queue="",
        max_attempts=1,
        parent="",
        idem_key="",
        idem_ttl_ms=1,
        run_at_ms=0,
        timeout_ms=0,
        limit_key=workflow,
        gate_max=0,
        rate=None,
        lease_ms=2000,
    )
    return run_id, token


def status_memberships(env, run_id):
    return [s for s in STATUSES if env.redis.zscore(env.flow.store.keys.status(s), run_id)]


def test_a_delayed_run_stays_scheduled_in_redis_timers_until_due(env):
    @env.flow.workflow()
    def later(ctx):
        return "done"

    # Given a run started with a delay, before any worker exists
    handle = later.run(delay=0.8)
    assert handle.status() == "scheduled"
    assert env.redis.zscore(env.flow.store.keys.timers, handle.id) is not None
    assert status_memberships(env, handle.id) == ["scheduled"]

    # When a worker runs (its maintenance loop promotes due timers)
    started = time.monotonic()
    with env.worker():
        assert handle.result(timeout=10) == "done"
    # Then it ran after the delay, and nothing was left in the timer set
    info = handle.info()
    assert (info.started_at - info.created_at).total_seconds() >= 0.75
    assert time.monotonic() - started < 5
    assert env.redis.zcard(env.flow.store.keys.timers) == 0
    assert status_memberships(env, handle.id) == ["succeeded"]


def test_run_at_accepts_an_aware_datetime(env):
    @env.flow.workflow()
    def at(ctx):
        return 1

    handle = at.run(run_at=datetime.now(UTC) + timedelta(seconds=0.3))
    assert handle.status() == "scheduled"
    with env.worker():
        assert handle.result(timeout=10) == 1


def test_the_same_idempotency_key_from_8_threads_starts_one_run(env):
    bump, count = counter(env, "charged")

    @env.flow.workflow()
    def charge(ctx, order_id: str):
        return ctx.step.run("charge", bump)

    # When 8 threads start the same key at once
    barrier = threading.Barrier(8)
    ids: list[str] = []

    def start():
        barrier.wait()
        ids.append(charge.run("o1", idempotency_key="order-o1").id)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then all got the same run, and the work ran once
    assert len(ids) == 8 and len(set(ids)) == 1
    assert env.redis.zcard(env.flow.store.keys.workflow_runs("charge")) == 1
    with env.worker():
        assert env.flow.handle(ids[0]).result(timeout=10) == 1
    assert count() == 1
    # and a different key is a different run
    assert charge.run("o1", idempotency_key="order-o2").id != ids[0]
    assert env.flow.get_run(ids[0]).idempotency_key == "order-o1"


def test_an_idempotency_key_expires_after_its_ttl(env):
    @env.flow.workflow()
    def once(ctx):
        return 1

    first = once.run(idempotency_key="k", idempotency_ttl=timedelta(milliseconds=200))
    time.sleep(0.3)
    assert once.run(idempotency_key="k").id != first.id


def test_canceling_a_queued_run_is_immediate_and_result_raises(env):
    @env.flow.workflow()
    def never(ctx):
        return 1

    handle = never.run()  # no worker: stays queued
    assert handle.cancel("not needed") is True
    assert handle.status() == "canceled"
    with pytest.raises(RunCanceled, match="not needed"):
        handle.result(timeout=1)
    assert handle.cancel() is False  # already terminal
    assert status_memberships(env, handle.id) == ["canceled"]
    assert env.redis.zscore(env.flow.store.keys.queued, handle.id) is None
    # the stale message is a no-op when a worker finally sees it
    _bump, _count = counter(env, "ran")
    with env.worker():
        time.sleep(0.5)
    assert handle.status() == "canceled"


def test_canceling_a_running_run_stops_it_at_the_next_step_and_compensates(env):
    compensated = []
    in_step = threading.Event()

    @env.flow.workflow()
    def long(ctx):
        ctx.step.run("reserve", lambda: "r", compensate=compensated.append)
        ctx.step.run("wait", lambda: (in_step.set(), time.sleep(0.5)))
        ctx.step.run("after", lambda: compensated.append("should not run"))

    with env.worker():
        handle = long.run()
        assert in_step.wait(10)
        assert env.flow.cancel(handle.id, "user asked") is True
        with pytest.raises(RunCanceled, match="user asked"):
            handle.result(timeout=10)

    assert compensated == ["r"]
    steps = {s.name: s.status for s in handle.info().steps}
    assert steps == {"reserve": "compensated", "wait": "succeeded"}
    assert handle.info().error.type == "celery_flow.errors.RunCanceled"


def test_a_long_step_sees_cancel_requested(env):
    observed = []

    def cooperative():
        for _ in range(200):
            if ctx_holder[0].cancel_requested:
                observed.append("saw cancel")
                return "stopped early"
            time.sleep(0.05)
        return "ran to the end"

    ctx_holder = []

    @env.flow.workflow()
    def polls(ctx):
        ctx_holder.append(ctx)
        return ctx.step.run("work", cooperative)

    with env.worker():
        handle = polls.run()
        eventually(lambda: handle.status() == "running", what="run to start")
        time.sleep(0.2)
        handle.cancel()
        with pytest.raises(RunCanceled):
            handle.result(timeout=10)
    assert observed == ["saw cancel"]


def test_canceling_a_scheduled_run_with_compensable_steps_runs_its_compensations(env):
    compensated = []

    @env.flow.workflow(retries=Retries(max_attempts=2, base_delay=60))
    def retry_later(ctx):
        ctx.step.run("book", lambda: "seat-1", compensate=compensated.append)
        raise RuntimeError("try again in a minute")

    with env.worker():
        handle = retry_later.run()
        eventually(lambda: handle.status() == "scheduled", what="retry to be scheduled")
        assert handle.cancel("give up") is True
        with pytest.raises(RunCanceled):
            handle.result(timeout=10)
    assert compensated == ["seat-1"]


def test_a_run_past_its_workflow_timeout_fails_with_run_timeout_and_is_not_retried(env):
    @env.flow.workflow(timeout=0.3, retries=Retries(max_attempts=5, base_delay=0.01))
    def too_slow(ctx):
        ctx.step.run("one", time.sleep, 0.5)
        ctx.step.run("two", lambda: "never")

    with env.worker():
        handle = too_slow.run()
        with pytest.raises(RunFailed) as exc:
            handle.result(timeout=10)
    assert exc.value.error.type == "celery_flow.errors.RunTimeout"
    assert handle.info().attempt == 1
    assert [s.name for s in handle.info().steps] == ["one"]


def test_a_zombie_executions_writes_are_rejected_by_the_fencing_token(env):
    store = env.flow.store

    @env.flow.workflow()
    def fenced(ctx):
        return 1

    # Given an execution that started (token 2) and then lost its lease
    run_id, token = enqueue_without_publishing(store, "zombie-run", "fenced")
    first = store.start(run_id, token, 60_000, "fenced")
    assert first.outcome == "ok" and first.token == "2"
    env.redis.zadd(store.keys.running, {run_id: 0})  # the lease ran out
    (claimed,) = store.claim_expired([run_id])
    second = store.start(run_id, claimed.token, 60_000, "fenced")
    assert second.outcome == "ok" and second.token == "4"

    # When the zombie (token 2) tries to write, nothing is written
    assert store.record_step(run_id, "fenced", "2", "s", '{"status":"succeeded"}', False) == (
        False,
        False,
    )
    assert store.finalize(run_id, "fenced", "2", "succeeded", "1", "", 1000) == (False, [], "")
    assert store.schedule_retry(run_id, "fenced", "2", 10, "{}") == (0, [])
    # and a duplicate delivery of an old message is a no-op
    assert store.start(run_id, token, 60_000, "fenced").outcome == "stale"
    assert store.start(run_id, claimed.token, 60_000, "fenced").outcome == "stale"
    # while the owner's writes go through
    assert store.finalize(run_id, "fenced", "4", "succeeded", "1", "", 60_000) == (True, [], "")
    assert env.flow.get_run(run_id).status == "succeeded"
    assert env.flow.get_run(run_id).attempt == 1  # recovery did not consume an attempt


def test_a_duplicate_delivery_of_the_same_message_executes_the_run_once(env):
    bump, count = counter(env, "ran")

    @env.flow.workflow()
    def once(ctx):
        return ctx.step.run("work", bump)

    handle = once.run()
    token = env.redis.hget(env.flow.store.keys.run(handle.id), "token")
    for _ in range(3):
        env.flow._publish("once", handle.id, token, "", "once")
    with env.worker():
        assert handle.result(timeout=10) == 1
        time.sleep(0.3)
    assert count() == 1


def test_the_reaper_recovers_a_run_whose_worker_died_mid_run(env):
    bump, count = counter(env, "first")

    @env.flow.workflow()
    def recovers(ctx):
        a = ctx.step.run("first", bump)
        b = ctx.step.run("second", lambda: "b")
        return [a, b]

    # Given a run that a (now dead) worker started and recorded one step for
    store = env.flow.store
    handle = recovers.run()
    token = env.redis.hget(store.keys.run(handle.id), "token")
    dead = store.start(handle.id, token, 300, "recovers")
    assert dead.outcome == "ok"
    bump()
    store.record_step(
        handle.id,
        "recovers",
        dead.token,
        "first",
        '{"kind":"run","status":"succeeded","seq":1,"attempts":1,"output":1}',
        False,
    )

    # When a live worker's reaper sees the lease expire
    with env.worker():
        out = handle.result(timeout=15)

    # Then the run finished, replaying "first" without running it again
    assert out == [1, "b"]
    assert count() == 1
    assert env.redis.hget(store.keys.run(handle.id), "recoveries") == "1"
    assert handle.info().attempt == 1


def test_a_run_whose_publish_was_lost_is_republished(flow_redis_url, flow_prefix):
    app = make_celery(flow_redis_url, flow_prefix)
    flow = Flow(app, redis_url=flow_redis_url, prefix=flow_prefix, republish_after=0.5)

    @flow.workflow()
    def lost(ctx):
        return "found"

    # Given a run that was recorded but whose publisher died before publishing
    run_id, _ = enqueue_without_publishing(flow.store, "lost-run", "lost")
    from celery_flow.testing import start_flow_worker

    with start_flow_worker(app):
        assert flow.handle(run_id).result(timeout=15) == "found"
    assert flow.store.redis.hget(flow.store.keys.run(run_id), "republished") == "1"


def test_terminal_runs_expire_after_retention_and_purge_cleans_the_indexes(
    flow_redis_url, flow_prefix
):
    app = make_celery(flow_redis_url, flow_prefix)
    flow = Flow(
        app, redis_url=flow_redis_url, prefix=flow_prefix, retention=timedelta(milliseconds=700)
    )

    @flow.workflow()
    def short_lived(ctx):
        return ctx.step.run("s", lambda: 1)

    from celery_flow.testing import start_flow_worker

    with start_flow_worker(app):
        handle = short_lived.run()
        handle.result(timeout=10)
        # a TTL is the safety net (retention + grace) should no worker purge
        for key in (flow.store.keys.run(handle.id), flow.store.keys.steps(handle.id)):
            assert 0 < flow.store.redis.pttl(key) <= 700 + 15 * 60_000
        live = flow.run("short-lived", delay=3600)  # a non-terminal run is never purged
        time.sleep(0.8)
        flow.maintenance.purge()
    assert [r.id for r in flow.list_runs().runs] == [live.id]
    keys = flow.store.keys
    assert flow.store.redis.zscore(keys.created, handle.id) is None
    assert flow.store.redis.zscore(keys.status("succeeded"), handle.id) is None
    assert flow.store.redis.zscore(keys.workflow_runs("short-lived"), handle.id) is None
    assert not flow.store.redis.exists(keys.run(handle.id))


def test_the_workers_purge_drains_a_backlog_of_several_batches_in_seconds(
    flow_redis_url, flow_prefix
):
    from celery_flow._admin import PURGE_BATCH
    from celery_flow.testing import start_flow_worker

    app = make_celery(flow_redis_url, flow_prefix)
    flow = Flow(app, redis_url=flow_redis_url, prefix=flow_prefix, retention=timedelta(seconds=1))

    @flow.workflow()
    def noop(ctx):
        return 1

    # Given 2.2 batches of terminal runs past retention (scheduled then canceled: no messages)
    count = PURGE_BATCH * 2 + PURGE_BATCH // 5
    for _ in range(count):
        flow.cancel(noop.run(delay=3600).id)
    canceled = flow.store.keys.status("canceled")
    assert flow.store.redis.zcard(canceled) == count
    time.sleep(1.1)

    # When a worker's maintenance loop runs (it purges one batch per status per pass)
    with start_flow_worker(app):
        # Then the backlog is gone within seconds, not one batch a minute
        eventually(lambda: flow.store.redis.zcard(canceled) == 0, timeout=15, what="the purge")
    assert flow.maintenance.counters["purged"] == count
    assert not list(flow.store.redis.scan_iter(f"{flow_prefix}:run:*", count=1000))


def test_every_transition_keeps_the_run_in_exactly_one_status_index(env):
    @env.flow.workflow(retries=Retries(max_attempts=2, base_delay=0.01))
    def flaky(ctx):
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return 1

    h1 = flaky.run()
    h2 = flaky.run(delay=60)
    h3 = flaky.run()
    h3.cancel()
    with env.worker():
        h1.result(timeout=10)
    for h, expected in ((h1, "succeeded"), (h2, "scheduled"), (h3, "canceled")):
        assert status_memberships(env, h.id) == [expected]
