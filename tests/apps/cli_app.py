"""A Celery app for the CLI tests (tests/integration/test_cli.py), configured by environment.

* ``CF_CLI_BROKER``: broker URL; unset or empty means *no broker configured* (what
  ``flow dev`` must cope with by starting an embedded Redis).
* ``CF_CLI_REDIS``: celery_flow's Redis URL; unset means "derived from the broker".
* ``CF_CLI_PREFIX``: key prefix, also the default queue (tests never share messages).

Side effects are flags in Redis (``<prefix>:probe:<name>``) so tests can flip them.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

from celery_flow import Cron, Flow, NonRetriableError

PREFIX = os.environ.get("CF_CLI_PREFIX", "cf-cli")

app = Celery("cli_app", broker=os.environ.get("CF_CLI_BROKER") or None, set_as_current=False)
app.conf.update(
    task_default_queue=PREFIX,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
flow = Flow(app, redis_url=os.environ.get("CF_CLI_REDIS") or None, prefix=PREFIX, lease_seconds=2)

plain = Celery("plain_app", set_as_current=False)  # no Flow: the CLI must say so


def fixed() -> bool:
    """True once a test has "deployed the fix" (set the probe flag)."""
    client = redis.Redis.from_url(flow.redis_url)
    try:
        return bool(client.exists(f"{PREFIX}:probe:fixed"))
    finally:
        client.close()


@flow.workflow(name="double")
def double(ctx: Any, n: int) -> int:
    ctx.progress(1, 2, "doubling")
    doubled = ctx.step.run("double", lambda: n * 2)
    return int(ctx.step.run("check", lambda: doubled))


@flow.workflow(name="maybe-fail")
def maybe_fail(ctx: Any, inp: dict[str, Any]) -> str:
    ctx.step.run("first", lambda: "ok")
    if inp.get("fail"):
        raise NonRetriableError(f"asked to fail: {inp['fail']}")
    return str(ctx.step.run("second", lambda: "done"))


@flow.workflow(name="fixable")
def fixable(ctx: Any) -> str:
    ctx.step.run("before", lambda: "ok")
    if not fixed():  # stands for the code change a deploy brings (not a step: not cached)
        raise NonRetriableError("the bug is not fixed yet")
    return "fixed"


@flow.workflow(name="approval")
def approval(ctx: Any) -> Any:
    return ctx.step.wait_for_event("approved", "approved", timeout=60)


@flow.workflow(name="nap")
def nap(ctx: Any) -> None:
    ctx.step.sleep("nap", 3600)


@flow.workflow(
    name="limited", max_concurrency=2, rate_limit="5/s", cron=Cron("0 0 1 1 *", id="new-year")
)
def limited(ctx: Any) -> None:
    return None


if hasattr(flow, "batch"):  # the batch API (API.md section 7) may not be merged yet
    from celery_flow import Page

    @flow.workflow(name="greet-user")
    def greet_user(ctx: Any, user_id: str) -> str:
        return f"hello {user_id}"

    flow.batch(
        "welcome",
        execute=greet_user,
        source=lambda cursor, limit: Page(ids=["u1", "u2", "u3"], next_cursor=None),
        needs_processing=lambda ids: [i for i in ids if i != "u1"],  # u1 was welcomed already
    )
