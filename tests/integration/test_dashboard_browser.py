"""The dashboard in a real browser: headless Chromium driven by Playwright, real runs.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``); the tests
skip without it. Set ``CELERY_FLOW_UPDATE_SCREENSHOTS=1`` to rewrite docs/img/run-detail.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from celery_flow import NonRetriableError
from celery_flow.testing import eventually
from tests.browser import UPDATE_SCREENSHOTS, serve_dashboard

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dashboard(env):
    with serve_dashboard(env.flow) as url:
        yield url


def status_in_redis(env, run_id):
    return env.redis.hget(f"{env.prefix}:run:{{{run_id}}}", "status")


def test_the_runs_list_loads_and_its_workflow_filter_works(env, dashboard, page):
    # Given finished runs of two workflows
    @env.flow.workflow()
    def ingest(ctx, n: int):
        return ctx.step.run("read", lambda: n)

    @env.flow.workflow()
    def report(ctx):
        return ctx.step.run("render", lambda: "ok")

    with env.worker():
        handles = [ingest.run(i) for i in range(3)] + [report.run() for _ in range(2)]
        for h in handles:
            h.result(timeout=10)

    # When the list loads, every run is there, newest first
    page.goto(dashboard + "/")
    rows = page.locator("#runs-table tbody tr[data-run-id]")
    assert rows.count() == 5
    assert rows.first.get_attribute("data-run-id") == handles[-1].id
    assert page.locator(".chip.s-succeeded b").inner_text() == "5"

    # When the workflow filter is set to "report", only its runs remain
    page.select_option("select[name=workflow]", "report")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/?workflow=report*")
    ids = {rows.nth(i).get_attribute("data-run-id") for i in range(rows.count())}
    assert ids == {h.id for h in handles[3:]}

    # And a row links to the run's page
    page.click(f"a[href='/runs/{handles[3].id}']")
    page.wait_for_url(f"**/runs/{handles[3].id}")
    assert page.locator("#run-id").inner_text() == handles[3].id


def test_the_detail_page_draws_the_timeline_and_its_buttons_cancel_and_retry(
    env, dashboard, page, tmp_path
):
    charges = f"{env.prefix}:probe:charges"

    def charge(total: int) -> dict:
        time.sleep(0.25)
        if env.redis.incr(charges) == 1:
            raise NonRetriableError("card declined by the issuer (code 51)")
        return {"charged": total}

    @env.flow.workflow(name="process-order")
    def process_order(ctx, order: dict):
        ctx.step.run("validate", lambda: time.sleep(0.05) or True)
        ctx.progress(1, 4, "inventory")
        reserved = ctx.step.run(
            "reserve-inventory",
            lambda: time.sleep(0.15) or {"sku": "A-1", "qty": 2},
            compensate=lambda out: None,
        )
        ctx.progress(2, 4, "payment")
        paid = ctx.step.run("charge-card", charge, order["total_cents"])
        ctx.progress(3, 4, "shipping")
        ship = ctx.step.run("create-shipment", lambda: time.sleep(0.1) or "SHP-7")
        ctx.progress(4, 4, "done")
        return {"reserved": reserved, "payment": paid, "shipment": ship}

    with env.worker():
        # Given a run that failed at its third step (its reservation was compensated)
        failed = process_order.run({"order_id": "o-1042", "total_cents": 4599})
        eventually(lambda: status_in_redis(env, failed.id) == "failed", what="the run to fail")

        # When its page opens, the timeline has one bar per step, placed left to right
        page.goto(f"{dashboard}/runs/{failed.id}")
        bars = page.locator("#timeline .tl-bar")
        assert bars.count() == 3
        assert [bars.nth(i).get_attribute("data-step") for i in range(3)] == [
            "validate",
            "reserve-inventory",
            "charge-card",
        ]
        boxes = [bars.nth(i).bounding_box() for i in range(3)]
        assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
        assert boxes[2]["width"] > boxes[0]["width"]  # 250 ms vs 50 ms
        assert "card declined" in page.locator("body").inner_text()
        shot = (
            ROOT / "docs" / "img" / "run-detail.png"
            if UPDATE_SCREENSHOTS
            else tmp_path / "run-detail.png"
        )
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # When "Retry run" is clicked, the run runs again under the same id and succeeds
        page.select_option("#from-step", "charge-card")
        page.click("#retry-button")
        page.wait_for_url(f"**/runs/{failed.id}?done=retried")
        eventually(lambda: status_in_redis(env, failed.id) == "succeeded", what="the retry")
        page.reload()
        assert page.locator("#run-status").inner_text().startswith("succeeded")
        assert page.locator("#timeline .tl-bar").count() == 4

        # Given a scheduled run, "Cancel run" cancels it
        later = process_order.run({"order_id": "o-1043", "total_cents": 100}, delay=3600)
        page.goto(f"{dashboard}/runs/{later.id}")
        page.fill("#cancel-form input[name=reason]", "customer called")
        page.click("#cancel-button")
        page.wait_for_url(f"**/runs/{later.id}?done=canceled")
        assert status_in_redis(env, later.id) == "canceled"
        assert "Cancel requested" in page.locator(".alert.ok").inner_text()
        assert page.locator("#run-status").inner_text().startswith("canceled")
