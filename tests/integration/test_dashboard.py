"""The dashboard's JSON API, pages, auth/CSRF and /metrics, against real Redis and a worker."""

from __future__ import annotations

import re
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

with warnings.catch_warnings():
    # Starlette >= 1.x prefers the httpx2 package and warns when it falls back to httpx.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

from celery_flow import Flow
from celery_flow.dashboard import create_app
from celery_flow.testing import eventually, free_port
from tests.conftest import make_celery

TOKEN = "t0ps3cret"


def client_for(flow, token=None):
    return TestClient(create_app(flow, token=token), follow_redirects=False)


def csrf_of(client):
    return client.get("/api/csrf").json()["csrf_token"]


def define(env):
    """Two small workflows: a two-step one and one that waits for an event."""

    @env.flow.workflow()
    def alpha(ctx, n: int = 0):
        a = ctx.step.run("fetch", lambda: n + 1)
        return ctx.step.run("store", lambda: a * 10)

    @env.flow.workflow()
    def approval(ctx):
        return ctx.step.wait_for_event("approval", "approved", timeout=60)

    return alpha, approval


def redis_status(env, run_id):
    return env.redis.hget(f"{env.prefix}:run:{{{run_id}}}", "status")


def scrape(client):
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_the_api_lists_filters_pages_and_shows_runs(env):
    # Given three finished runs of alpha and one waiting run of approval
    alpha, approval = define(env)
    client = client_for(env.flow)
    with env.worker():
        done = [alpha.run(i) for i in range(3)]
        for h in done:
            h.result(timeout=10)
        waiting = approval.run()
        eventually(lambda: waiting.status() == "waiting", what="the run to wait")

    # When the API lists them, with filters and a page size of 2
    body = client.get("/api/runs").json()
    assert [r["id"] for r in body["runs"]] == [waiting.id, *[h.id for h in reversed(done)]]
    assert body["next_cursor"] is None and "steps" not in body["runs"][0]
    page1 = client.get("/api/runs", params={"workflow": "alpha", "limit": 2}).json()
    page2 = client.get(
        "/api/runs", params={"workflow": "alpha", "limit": 2, "cursor": page1["next_cursor"]}
    ).json()
    assert [r["id"] for r in page1["runs"] + page2["runs"]] == [h.id for h in reversed(done)]
    by_status = client.get("/api/runs", params={"status": "waiting"}).json()["runs"]
    assert [r["id"] for r in by_status] == [waiting.id]

    # Then a creation-time range selects by created_at, also with a status filter and paging
    first = env.flow.get_run(done[0].id).created_at
    after = (first + timedelta(milliseconds=1)).isoformat()
    ranged = client.get("/api/runs", params={"created_after": after}).json()["runs"]
    assert {r["id"] for r in ranged} <= {waiting.id, done[1].id, done[2].id}
    assert done[0].id not in {r["id"] for r in ranged}
    before = client.get("/api/runs", params={"created_before": after, "status": "succeeded"}).json()
    assert [r["id"] for r in before["runs"]] == [done[0].id]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/api/runs", params={"created_after": future}).json()["runs"] == []
    past = "2000-01-01T00:00:00"
    walked, cursor = [], None
    while True:
        params = {"created_after": past, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/runs", params=params).json()
        walked += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert walked == [waiting.id, *[h.id for h in reversed(done)]]

    # And the detail has steps, input and output
    detail = client.get(f"/api/runs/{done[1].id}").json()
    assert detail["status"] == "succeeded" and detail["input"] == 1 and detail["output"] == 20
    assert [s["name"] for s in detail["steps"]] == ["fetch", "store"]
    assert detail["children"] == [] and detail["events"] == {}


def test_api_actions_cancel_retry_and_send_events_change_the_run_in_redis(env):
    _, approval = define(env)

    @env.flow.workflow()
    def picky(ctx, n: int):
        m = ctx.step.run("fetch", lambda: n + 1)
        return ctx.step.run("check", lambda: m if m > 3 else 1 / 0)

    client = client_for(env.flow)
    headers = {"X-CSRF-Token": csrf_of(client)}
    with env.worker():
        # Given a run waiting for an event
        run = approval.run()
        eventually(lambda: redis_status(env, run.id) == "waiting", what="the run to wait")
        # When the API sends the event, the run completes with the payload
        resp = client.post(
            f"/api/runs/{run.id}/events",
            json={"type": "approved", "payload": {"by": "ada"}},
            headers=headers,
        )
        assert resp.status_code == 202, resp.text
        assert run.result(timeout=10) == {"by": "ada"}

        # Given a run scheduled in an hour: an event for it is buffered and shown
        later = approval.run(delay=3600)
        resp = client.post(
            f"/api/runs/{later.id}/events", json={"type": "approved", "payload": 7}, headers=headers
        )
        assert resp.status_code == 202
        assert client.get(f"/api/runs/{later.id}").json()["events"] == {"approved": [7]}
        assert env.redis.hget(f"{env.prefix}:run:{{{later.id}}}:events", "approved") == '["7"]'

        # When the API cancels it, Redis says canceled
        resp = client.post(f"/api/runs/{later.id}/cancel", json={"reason": "ops"}, headers=headers)
        assert resp.status_code == 202 and resp.json()["run"]["status"] == "canceled"
        assert redis_status(env, later.id) == "canceled"
        assert "ops" in env.flow.get_run(later.id).error.message

        # When the API retries it, it runs again under the same id and ends (buffered event)
        resp = client.post(f"/api/runs/{later.id}/retry", json={}, headers=headers)
        assert resp.status_code == 202, resp.text
        assert later.result(timeout=10) == 7

        # Given a failed run, a retry from its first step with a new input reruns it all
        first = picky.run(1)
        eventually(lambda: redis_status(env, first.id) == "failed", what="the run to fail")
        resp = client.post(
            f"/api/runs/{first.id}/retry", json={"from_step": "fetch", "input": 4}, headers=headers
        )
        assert resp.status_code == 202, resp.text
        assert first.result(timeout=10) == 5
        info = env.flow.get_run(first.id)
        assert info.input == 4 and [s.output for s in info.steps] == [5, 5]


def test_api_errors_are_json_with_meaningful_status_codes(env):
    alpha, _ = define(env)
    client = client_for(env.flow)
    headers = {"X-CSRF-Token": csrf_of(client)}
    with env.worker():
        done = alpha.run(1)
        done.result(timeout=10)
    queued = alpha.run(2)

    cases = [
        ("get", "/api/runs/nope", None, 404, "nope"),
        ("post", "/api/runs/nope/cancel", {}, 404, "nope"),
        ("post", f"/api/runs/{done.id}/cancel", {}, 409, "already succeeded"),
        ("post", f"/api/runs/{done.id}/retry", {}, 409, "only failed or canceled"),
        ("post", f"/api/runs/{done.id}/events", {"type": "x"}, 409, "no more events"),
        ("post", f"/api/runs/{queued.id}/events", {"payload": 1}, 400, "type"),
        ("post", f"/api/runs/{queued.id}/cancel", "not json", 400, "not valid JSON"),
        ("post", f"/api/runs/{queued.id}/cancel", [1], 400, "JSON object"),
        ("get", "/api/runs?status=done", None, 400, "status='done'"),
        ("get", "/api/runs?limit=x", None, 400, "limit"),
        ("get", "/api/runs?cursor=garbage", None, 400, "cursor"),
        ("get", "/api/runs?created_after=yesterday", None, 400, "ISO 8601"),
        ("get", "/api/nothing-here", None, 404, "Not Found"),
    ]
    for method, url, body, status, text in cases:
        if method == "get":
            resp = client.get(url)
        elif isinstance(body, str):
            resp = client.post(url, content=body, headers=headers)
        else:
            resp = client.post(url, json=body, headers=headers)
        assert resp.status_code == status, (url, resp.text)
        assert text in resp.json()["error"], (url, resp.json())

    env.flow.cancel(queued.id)
    resp = client.post(f"/api/runs/{queued.id}/retry", json={"from_step": "x"}, headers=headers)
    assert resp.status_code == 400 and "has no step 'x'" in resp.json()["error"]
    resp = client.post(f"/api/runs/{queued.id}/retry", json={"input": "x"}, headers=headers)
    assert resp.status_code == 400, resp.text
    assert redis_status(env, queued.id) == "canceled"


def test_an_unreachable_redis_gives_503(flow_prefix):
    flow = Flow(
        make_celery("memory://", flow_prefix),
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        prefix=flow_prefix,
    )
    client = client_for(flow)
    resp = client.get("/api/runs")
    assert resp.status_code == 503 and "cannot reach Redis" in resp.json()["error"]
    assert client.get("/healthz").status_code == 503
    assert client.get("/").status_code == 503
    samples = scrape(client)
    assert samples[("celery_flow_up", ())] == 0


def test_with_a_token_requests_need_it_and_browsers_log_in(env, monkeypatch):
    alpha, _ = define(env)
    run = alpha.run(1)
    # Given a dashboard whose token comes from the environment
    monkeypatch.setenv("CELERY_FLOW_DASHBOARD_TOKEN", TOKEN)
    client = client_for(env.flow)

    # Then the API and /metrics answer 401 without it, pages redirect to the login form
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    resp = client.get(f"/runs/{run.id}")
    assert resp.status_code == 303 and resp.headers["location"].startswith("/login?next=")
    assert client.get("/healthz").status_code == 200
    assert client.get("/login").status_code == 200
    assert client.post(f"/api/runs/{run.id}/cancel").status_code == 401

    # And the bearer token works, for POSTs too without any CSRF token
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/runs", headers=bearer).json()["runs"][0]["id"] == run.id
    assert client.get("/metrics", headers=bearer).status_code == 200

    # When a browser logs in with a wrong token, then the right one
    assert client.get("/login", params={"token": "nope"}).status_code == 401
    resp = client.get("/login", params={"token": TOKEN, "next": f"/runs/{run.id}"})
    assert resp.status_code == 303 and resp.headers["location"] == f"/runs/{run.id}"
    # Then its session cookie opens the pages and the API, never an open redirect
    assert client.get(f"/runs/{run.id}").status_code == 200
    assert client.get("/api/runs").status_code == 200
    resp = client.get("/login", params={"token": TOKEN, "next": "//evil.example/"})
    assert resp.headers["location"] == "/"
    resp = client.post(f"/api/runs/{run.id}/cancel", headers=bearer)
    assert resp.status_code == 202 and redis_status(env, run.id) == "canceled"

    # And the login form works too (it carries its CSRF token like every form)
    browser = client_for(env.flow)
    form = browser.get("/login", params={"next": "/workflows"}).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    resp = browser.post("/login", data={"csrf_token": csrf, "token": TOKEN, "next": "/workflows"})
    assert resp.status_code == 303 and resp.headers["location"] == "/workflows"
    assert browser.get("/workflows").status_code == 200
    resp = browser.post("/logout", data={"csrf_token": csrf})
    assert resp.status_code == 303
    assert browser.get("/workflows").status_code == 303

    # And an explicit token argument wins over the environment
    other = client_for(env.flow, token="another")
    assert other.get("/api/runs", headers=bearer).status_code == 401


def test_state_changing_requests_without_a_valid_csrf_token_are_refused(env):
    alpha, _ = define(env)
    run = alpha.run(1, delay=3600)
    client = client_for(env.flow)
    page = client.get(f"/runs/{run.id}")
    assert page.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)

    # A form POST without the token, with a wrong one, or a forged signed pair: 403
    url = f"/runs/{run.id}/cancel"
    assert client.post(url, data={"reason": "x"}).status_code == 403
    assert client.post(url, data={"csrf_token": token + "x"}).status_code == 403
    forged = TestClient(create_app(env.flow), follow_redirects=False)
    forged.cookies.set("cf_csrf", "abc.def")
    assert forged.post(url, data={"csrf_token": "abc.def"}).status_code == 403
    # The JSON API without the header (or the bearer token): 403 too
    resp = client.post(f"/api/runs/{run.id}/cancel", json={})
    assert resp.status_code == 403 and "CSRF" in resp.json()["error"]
    assert redis_status(env, run.id) == "scheduled"

    # With the page's token the form works and redirects back to the run
    resp = client.post(url, data={"csrf_token": token, "reason": "from the form"})
    assert resp.status_code == 303 and resp.headers["location"] == f"/runs/{run.id}?done=canceled"
    assert redis_status(env, run.id) == "canceled"
    shown = client.get(resp.headers["location"]).text
    assert "Cancel requested" in shown and "from the form" in shown

    # A form action the run's state forbids re-renders the page with the reason and a 409
    resp = client.post(url, data={"csrf_token": token})
    assert resp.status_code == 409 and "already canceled" in resp.text
    resp = client.post(f"/runs/{run.id}/retry", data={"csrf_token": token, "input": "{oops"})
    assert resp.status_code == 400 and "not valid JSON" in resp.text
    resp = client.post(f"/runs/{run.id}/retry", data={"csrf_token": token, "from_step": ""})
    assert resp.status_code == 303 and redis_status(env, run.id) == "queued"


def test_pages_show_runs_timeline_children_events_and_workflows(env):
    from celery_flow import Cron

    @env.flow.workflow()
    def child(ctx, n: int):
        return n

    @env.flow.workflow(max_concurrency=2, rate_limit="10/s", cron=[Cron("0 3 * * *")])
    def parent(ctx):
        a = ctx.step.run("prepare", lambda: 1)
        ctx.progress(1, 2, "half way")
        kid = ctx.step.emit_workflow("kid", child, 5)
        return {"a": a, "kid": kid}

    client = client_for(env.flow)
    with env.worker():
        run = parent.run()
        kid = run.result(timeout=10)["kid"]
        assert env.flow.handle(kid).result(timeout=10) == 5
        eventually(lambda: all(c.leader for c in env.flow.cron_status()), what="a scheduler leader")
        listing = client.get("/", params={"workflow": "parent"}).text
        detail = client.get(f"/runs/{run.id}").text
        workflows = client.get("/workflows").text
        api = client.get("/api/workflows").json()

    assert run.id in listing and 'data-status="succeeded"' in listing
    assert env.flow.store.children(run.id) == [kid]
    assert kid not in listing  # filtered to the parent workflow
    # the timeline has one bar per step, with server-computed widths
    bars = re.findall(
        r'class="tl-bar s-(\w+)" data-step="([^"]+)" style="left: ([\d.]+)%; '
        r'width: ([\d.]+)%"',
        detail,
    )
    assert [(s, name) for s, name, _, _ in bars] == [("succeeded", "prepare"), ("succeeded", "kid")]
    assert all(0 <= float(left) <= 100 and 0 < float(w) <= 100 for _, _, left, w in bars)
    assert kid in detail and "half way" in detail
    kid_page = client.get(f"/runs/{kid}").text
    assert f'href="/runs/{run.id}"' in kid_page
    assert "0 3 * * *" in workflows and "10/s" in workflows
    row = next(w for w in api["workflows"] if w["name"] == "parent")
    assert row["max_concurrency"] == 2 and row["gate"]["waiting"] == 0
    assert row["cron"][0]["expression"] == "0 3 * * *"
    assert api["scheduler_leaders"][env.flow.app_id]
    assert client.get("/runs/unknown").status_code == 404


def test_metrics_count_the_runs_of_the_test(env):
    # Given workflows, one with max_concurrency=1, and a first scrape (counters start there)
    alpha, _ = define(env)

    @env.flow.workflow(max_concurrency=1)
    def narrow(ctx):
        return 1

    client = client_for(env.flow)
    before = scrape(client)
    assert before[("celery_flow_runs_created_total", (("workflow", "alpha"),))] == 0

    # When 3 alpha runs succeed, one is canceled, and 3 narrow runs queue without a worker
    with env.worker():
        for h in [alpha.run(i) for i in range(3)]:
            h.result(timeout=10)
    env.flow.cancel(alpha.run(9, delay=3600).id)
    for _ in range(3):
        narrow.run()
    scheduled = alpha.run(5, delay=3600)
    after = scrape(client)

    # Then the gauges and counters match what the test did
    def value(name, **labels):
        return after[(name, tuple(sorted(labels.items())))]

    assert value("celery_flow_up") == 1
    assert value("celery_flow_runs", status="succeeded") == 3
    assert value("celery_flow_runs", status="canceled") == 1
    assert value("celery_flow_runs", status="queued") == 3
    assert value("celery_flow_runs", status="scheduled") == 1
    assert value("celery_flow_recent_runs", workflow="alpha", status="succeeded") == 3
    assert value("celery_flow_recent_runs", workflow="narrow", status="queued") == 3
    assert value("celery_flow_runs_created_total", workflow="alpha") == 5
    assert value("celery_flow_runs_created_total", workflow="narrow") == 3
    assert value("celery_flow_runs_finished_total", workflow="alpha", status="succeeded") == 3
    assert value("celery_flow_runs_finished_total", workflow="alpha", status="canceled") == 1
    assert value("celery_flow_runs_finished_total", workflow="alpha", status="failed") == 0
    assert value("celery_flow_step_duration_seconds_count", workflow="alpha", kind="run") == 6
    assert value("celery_flow_gate_holders", limit_key="narrow") == 1
    assert value("celery_flow_gate_waiting", limit_key="narrow") == 2
    assert value("celery_flow_timer_lag_seconds") == 0
    assert value("celery_flow_timers") >= 1
    assert ("celery_flow_scheduler_leader", (("app_id", env.flow.app_id),)) in after

    # And a second scrape counts nothing twice
    again = scrape(client)
    assert again[("celery_flow_runs_created_total", (("workflow", "alpha"),))] == 5
    key = ("celery_flow_runs_finished_total", (("status", "succeeded"), ("workflow", "alpha")))
    assert again[key] == 3
    env.flow.cancel(scheduled.id)


@pytest.mark.parametrize("path", ["/", "/workflows", "/login"])
def test_every_response_carries_security_headers(env, path):
    resp = client_for(env.flow).get(path)
    assert resp.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert "cf_csrf=" in resp.headers.get("set-cookie", "")
