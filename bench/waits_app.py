"""The Celery app of the waits benchmark (``python -m bench.bench_waits``).

Configuration comes from the environment, so ``celery -A bench.waits_app worker`` and the
driver build the very same app:

* ``CELERY_FLOW_BENCH_REDIS_URL``: broker and celery_flow state (one Redis);
* ``CELERY_FLOW_BENCH_PREFIX``: celery_flow key prefix, also the default queue name, so a
  benchmark on a shared Redis never mixes with other traffic.

Workflows (no plain Celery task, no result backend is needed: results live in celery_flow):

* ``nap``: ``ctx.step.sleep("nap", seconds)`` then returns ``{"i", "woke"}``, ``woke`` being the
  worker's ``time.time()`` just after the sleep returned (the moment the step after it starts).
* ``many-sleeps``: ``n`` sequential ``ctx.step.sleep(f"s:{k}", seconds)``; returns ``n``.
* ``many-events``: ``n`` sequential ``ctx.step.wait_for_event(f"e:{k}", "go")``; checks every
  payload is ``k`` and returns ``n``.
"""

from __future__ import annotations

import time
from typing import Any

from bench._common import results_only_app
from celery_flow import Context

app, flow = results_only_app("bench_waits", "celery-flow-bench-waits")
REDIS_URL, PREFIX = flow.redis_url, flow.prefix


@flow.workflow(name="nap")
def nap(ctx: Context, spec: dict[str, Any]) -> dict[str, Any]:
    ctx.step.sleep("nap", float(spec["seconds"]))
    return {"i": spec["i"], "woke": time.time()}


@flow.workflow(name="many-sleeps")
def many_sleeps(ctx: Context, spec: dict[str, Any]) -> int:
    n, seconds = int(spec["n"]), float(spec["seconds"])
    for k in range(n):
        ctx.step.sleep(f"s:{k}", seconds)
    return n


class WrongPayload(Exception):
    """An event wait got another wait's payload: events were consumed out of order."""


@flow.workflow(name="many-events")
def many_events(ctx: Context, n: int) -> int:
    for k in range(n):
        got = ctx.step.wait_for_event(f"e:{k}", "go")
        if got != k:
            raise WrongPayload(f"wait e:{k} got payload {got!r}")
    return n
