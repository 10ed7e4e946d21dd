"""The Celery app the benchmarks run: one worker serves plain tasks and workflows alike.

Configuration comes from the environment, so ``celery -A bench.app worker`` and the benchmark
drivers (``python -m bench.bench_core``, ``python -m bench.bench_gate``) build the very same app:

* ``CELERY_FLOW_BENCH_REDIS_URL``: broker, result backend and celery_flow state (one Redis);
* ``CELERY_FLOW_BENCH_PREFIX``: celery_flow key prefix, also used as the default queue name, so
  a benchmark on a shared Redis never mixes with other traffic;
* ``CELERY_FLOW_BENCH_COUNT_TASKS``: comma-separated Celery task names whose executions the
  worker counts (see :func:`count_execution`); unset (as in ``bench_core``) = no counting, no
  extra Redis traffic.

Contents (core benchmark):

* ``bench.noop``: a plain Celery task with the Redis result backend; returns its argument.
* ``one-step``: a workflow with one ``ctx.step.run``; returns its input.
* ``many-steps``: ``n`` steps (``n`` is the input), each a no-op lambda; returns ``n``.
* ``replay-steps``: ``n`` steps, then a planned failure on attempt 1; attempt 2 (a whole-run
  retry, no backoff) replays the ``n`` cached steps and reports how long the replay took and
  how many Redis round trips it made (counted on the worker's celery_flow Redis client).

Contents (gate benchmark; each workflow is its own limit key):

* ``gate-serial``: ``max_concurrency=1``, one no-op step; returns ``{"i", "t0", "t1"}``, the
  worker's ``time.time()`` at handler entry and just before it returns (precise start / end).
* ``gate-wide``: ``max_concurrency=1000`` (never blocks here, but goes through the gate code),
  one step; returns its input. ``gate-free``: the very same body without any limit.
* ``gate-rate``: ``rate_limit="20/s"``, one no-op step; returns ``{"i", "t0"}``.

Contents (map benchmark):

* ``identity``: a module-level no-op function (returns its input), the ``ctx.step.map`` fn.
* ``map-noop``: ``ctx.step.map("map", identity, range(n), chunk_size=...)`` with input
  ``{"n", "chunk_size"}``; checks the results and returns ``{"n", "sum"}``.
* ``bench.count_results``: the chord callback of the baseline (a chord of ``bench.noop``);
  returns ``{"n", "sum"}`` of the header results.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from celery import Celery
from celery.signals import task_postrun

from celery_flow import Context, Flow, Retries

REDIS_URL = os.environ.get("CELERY_FLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("CELERY_FLOW_BENCH_PREFIX", "celery-flow-bench")

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=PREFIX,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
flow = Flow(app, redis_url=REDIS_URL, prefix=PREFIX)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(i: int = 0) -> int:
    """The plain-Celery baseline: a task that returns its argument."""
    return i


@flow.workflow(name="one-step")
def one_step(ctx: Context, i: int) -> int:
    return ctx.step.run("only", lambda: i)


@flow.workflow(name="many-steps")
def many_steps(ctx: Context, n: int) -> int:
    for k in range(n):
        ctx.step.run(f"s{k}", lambda: None)
    return n


class PlannedFailure(Exception):
    """Raised by ``replay-steps`` on its first attempt so that attempt 2 replays every step."""


@contextmanager
def count_round_trips() -> Iterator[Callable[[], int]]:
    """Count connections checked out of celery_flow's Redis pool by the calling thread.

    redis-py checks a connection out once per command and once per pipeline, so this is the
    number of round trips this thread made (other threads, e.g. the heartbeat, are ignored).
    """
    pool = flow.store.redis.connection_pool
    original = pool.get_connection
    me = threading.get_ident()
    counter = [0]

    def counting(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == me:
            counter[0] += 1
        return original(*args, **kwargs)

    pool.get_connection = counting  # type: ignore[method-assign]
    try:
        yield lambda: counter[0]
    finally:
        del pool.get_connection  # back to the class attribute


@flow.workflow(
    name="replay-steps",
    retries=Retries(max_attempts=2, backoff="fixed", base_delay=0.0, jitter=False),
)
def replay_steps(ctx: Context, n: int) -> dict[str, Any]:
    with count_round_trips() as round_trips:
        t0 = time.perf_counter()
        for k in range(n):
            ctx.step.run(f"s{k}", lambda: None)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        trips = round_trips()
    loop = {"attempt": ctx.attempt, "ms": elapsed_ms, "round_trips": trips}
    first = ctx.step.run("first-attempt", lambda: loop)
    if ctx.attempt == 1:
        raise PlannedFailure("planned failure: the retry replays every cached step")
    return {"n": n, "first": first, "replay": loop}


# -- gate benchmark ----------------------------------------------------------------------------

COUNTED_TASKS = frozenset(
    n for n in os.environ.get("CELERY_FLOW_BENCH_COUNT_TASKS", "").split(",") if n.strip()
)
EXECUTIONS_KEY = f"{PREFIX}:bench:executions"
_counter_client: list[redis.Redis] = []  # one per process, made after the prefork fork


def count_execution(sender: Any = None, retval: Any = None, **_: Any) -> None:
    """``task_postrun`` handler: one pipelined round trip per execution of a counted task.

    Increments two fields of the hash ``EXECUTIONS_KEY``: ``<task name>`` (every execution,
    whatever its outcome) and ``<task name>|<outcome>`` (celery_flow's task returns the outcome:
    ``succeeded``, ``gated``, ``stale``, ...; an exception counts as ``raised``). It runs after
    the task body, so it never delays a run's start or its gate release.
    """
    name = getattr(sender, "name", "")
    if name not in COUNTED_TASKS:
        return
    if not _counter_client:
        _counter_client.append(redis.Redis.from_url(REDIS_URL))
    outcome = retval if isinstance(retval, str) else "raised"
    pipe = _counter_client[0].pipeline(transaction=False)
    pipe.hincrby(EXECUTIONS_KEY, name, 1)
    pipe.hincrby(EXECUTIONS_KEY, f"{name}|{outcome}", 1)
    pipe.execute()


if COUNTED_TASKS:
    task_postrun.connect(count_execution, weak=False)


@flow.workflow(name="gate-serial", max_concurrency=1)
def gate_serial(ctx: Context, i: int) -> dict[str, Any]:
    t0 = time.time()
    ctx.step.run("noop", lambda: None)
    return {"i": i, "t0": t0, "t1": time.time()}


@flow.workflow(name="gate-wide", max_concurrency=1000)
def gate_wide(ctx: Context, i: int) -> int:
    return ctx.step.run("only", lambda: i)


@flow.workflow(name="gate-free")
def gate_free(ctx: Context, i: int) -> int:
    return ctx.step.run("only", lambda: i)


@flow.workflow(name="gate-rate", rate_limit="20/s")
def gate_rate(ctx: Context, i: int) -> dict[str, Any]:
    t0 = time.time()
    ctx.step.run("noop", lambda: None)
    return {"i": i, "t0": t0}


# -- map benchmark -----------------------------------------------------------------------------


def identity(x: Any) -> Any:
    """The no-op ``ctx.step.map`` fn: returns its input (chunks import it by name)."""
    return x


@flow.workflow(name="map-noop")
def map_noop(ctx: Context, spec: dict[str, int]) -> dict[str, int]:
    items = list(range(spec["n"]))
    results = ctx.step.map("map", identity, items, chunk_size=spec["chunk_size"])
    if results != items:
        raise AssertionError("map-noop: results differ from the items")
    return {"n": len(results), "sum": sum(results)}


@app.task(name="bench.count_results")  # type: ignore[untyped-decorator]
def count_results(results: list[int]) -> dict[str, int]:
    """Chord callback of the map baseline: how many header results arrived, and their sum."""
    return {"n": len(results), "sum": sum(results)}
