"""list_runs paging and filters; registry sync with app-scoped stale cleanup."""

from __future__ import annotations

import pytest

from celery_flow import Flow
from tests.conftest import make_celery


def test_list_runs_pages_newest_first_with_a_cursor_and_filters(env):
    @env.flow.workflow()
    def alpha(ctx):
        return 1

    @env.flow.workflow()
    def beta(ctx):
        return 2

    handles = [alpha.run() for _ in range(7)] + [beta.run() for _ in range(3)]
    env.flow.cancel(handles[0].id)

    # all runs, 4 per page, newest first, no duplicates, no gaps
    seen, cursor = [], None
    while True:
        page = env.flow.list_runs(limit=4, cursor=cursor)
        seen += [r.id for r in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [h.id for h in reversed(handles)]

    assert [r.id for r in env.flow.list_runs(workflow="beta").runs] == [
        h.id for h in reversed(handles[7:])
    ]
    canceled = env.flow.list_runs(status="canceled").runs
    assert [r.id for r in canceled] == [handles[0].id] and canceled[0].steps == []
    assert [r.id for r in env.flow.list_runs(workflow="alpha", status="queued", limit=2).runs] == [
        h.id for h in reversed(handles[5:7])
    ]
    with pytest.raises(ValueError, match="status='done'"):
        env.flow.list_runs(status="done")
    with pytest.raises(ValueError, match="cursor"):
        env.flow.list_runs(cursor="garbage")


def test_registry_sync_writes_metadata_and_removes_only_this_apps_stale_workflows(
    flow_redis_url, flow_prefix
):
    def flow_for(app_id, names):
        app = make_celery(flow_redis_url, flow_prefix)
        flow = Flow(app, redis_url=flow_redis_url, prefix=flow_prefix, app_id=app_id)

        def handler(ctx):
            return None

        for name in names:
            flow.workflow(name=name, queue="q1")(handler)
        return flow

    billing_v1 = flow_for("billing", ["invoice", "refund"])
    shipping = flow_for("shipping", ["ship"])
    billing_v1.sync_registry()
    shipping.sync_registry()
    r = billing_v1.store.redis
    keys = billing_v1.store.keys
    assert r.smembers(keys.workflows) == {"invoice", "refund", "ship"}
    meta = r.hgetall(keys.workflow("invoice"))
    assert meta["app_id"] == "billing" and meta["queue"] == "q1" and meta["max_attempts"] == "1"

    # A new billing deploy drops "refund": kept during the 30 s grace period...
    billing_v2 = flow_for("billing", ["invoice"])
    refund_run = billing_v1.run("refund")
    billing_v2.sync_registry()
    assert "refund" in r.smembers(keys.workflows)
    # ...and removed after it; another app's "ship" is never touched, and no run is deleted
    r.hset(keys.workflow("refund"), "updated_at", 0)
    r.hset(keys.workflow("ship"), "updated_at", 0)
    billing_v2.sync_registry()
    assert r.smembers(keys.workflows) == {"invoice", "ship"}
    assert not r.exists(keys.workflow("refund"))
    assert billing_v2.get_run(refund_run.id).workflow == "refund"
