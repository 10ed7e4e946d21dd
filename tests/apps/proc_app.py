"""A Celery app for tests that run a real `celery worker` subprocess.

Configured by environment: CF_TEST_BROKER, CF_TEST_REDIS, CF_TEST_PREFIX, CF_TEST_LEASE.
Side effects are counted in Redis (``<prefix>:probe:<name>``) so the test process sees them.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from celery_flow import Flow, Retries

BROKER = os.environ["CF_TEST_BROKER"]
REDIS = os.environ["CF_TEST_REDIS"]
PREFIX = os.environ["CF_TEST_PREFIX"]

app = Celery("proc_app", broker=BROKER)
app.conf.update(
    task_default_queue=PREFIX,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
flow = Flow(
    app,
    republish_after=float(os.environ.get("CF_TEST_REPUBLISH", "300")),
    redis_url=REDIS,
    prefix=PREFIX,
    lease_seconds=float(os.environ.get("CF_TEST_LEASE", "2")),
)
_probe = redis.Redis.from_url(REDIS)


def bump(name: str) -> int:
    return int(_probe.incr(f"{PREFIX}:probe:{name}"))


@flow.workflow(name="two-steps", retries=Retries(max_attempts=2, base_delay=0.05))
def two_steps(ctx, n: int) -> dict:
    a = ctx.step.run("a", bump, f"a:{n}")
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails on purpose")
    b = ctx.step.run("b", lambda: n * 2)
    return {"a": a, "b": b, "pid": os.getpid(), "attempt": ctx.attempt}


@flow.workflow(name="slow-second-step")
def slow_second_step(ctx) -> dict:
    first = ctx.step.run("first", bump, "first")

    def second() -> int:
        calls = bump("second")
        if calls == 1:
            time.sleep(120)  # the first execution is killed in here
        return calls

    return {"first": first, "second": ctx.step.run("second", second)}


def _track_peak(name: str, hold: float) -> int:
    """Count this run as active, remember the peak, hold the slot, then stop counting."""
    active = bump(f"{name}:active")
    _probe.zadd(f"{PREFIX}:probe:{name}:peak", {"peak": active}, gt=True)
    try:
        time.sleep(hold)
    finally:
        _probe.decr(f"{PREFIX}:probe:{name}:active")
    return active


@flow.workflow(name="gated", max_concurrency=3)
def gated(ctx, n: int) -> dict:
    ctx.step.run("hold", _track_peak, "gated", 0.15)
    return {"n": n, "pid": os.getpid()}


@flow.workflow(name="gated-slow", max_concurrency=1)
def gated_slow(ctx, n: int) -> int:
    def hold() -> int:
        if bump(f"slow:{n}") == 1 and n == 0:
            time.sleep(120)  # the first run's first execution is killed in here
        return n

    return int(ctx.step.run("hold", hold))


@flow.workflow(name="map-parent")
def map_parent(ctx, n: int) -> list:
    from tests.apps import map_fns

    return ctx.step.map("items", map_fns.slow_once_on_five, list(range(n)), chunk_size=10)
