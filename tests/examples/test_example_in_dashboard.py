"""The docs' dashboard screenshot is a real run of an example, taken by this test.

``CELERY_FLOW_UPDATE_SCREENSHOTS=1`` rewrites docs/img/example-order-saga.png; otherwise the
picture goes to a temp dir and only the page is checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_flow import RunFailed
from tests.browser import UPDATE_SCREENSHOTS, serve_dashboard

from .conftest import ExampleProject

ROOT = Path(__file__).resolve().parents[2]


def test_a_compensated_order_saga_run_in_the_dashboard(example: ExampleProject, page, tmp_path):
    # Given the order-saga example with a flaky gateway and an address the carrier rejects
    saga = example.module("order_saga")
    context = saga.sample_order("o-1042", postcode="00000", gateway_timeouts=1)
    handle = saga.order_processing.run(context=context)
    with pytest.raises(RunFailed, match="carrier rejected postcode 00000"):
        handle.result(timeout=30)
    steps = {s.name: s for s in handle.info().steps}
    assert steps["process-payment"].attempts == 2

    with serve_dashboard(example.flow) as dashboard:
        # When its page opens in the dashboard
        page.goto(f"{dashboard}/runs/{handle.id}")

        # Then it shows the failed run, one timeline bar per step in order, the compensations
        assert page.locator("#run-status").inner_text().startswith("failed")
        bars = page.locator("#timeline .tl-bar")
        shown = [bars.nth(i).get_attribute("data-step") for i in range(bars.count())]
        assert shown == list(steps)
        assert shown[:6] == [
            "validate",
            "reserve-inventory",
            "process-payment",
            "create-shipment",
            "compensate:process-payment",  # the saga undoes the completed steps, newest first
            "compensate:reserve-inventory",
        ]
        assert (
            page.locator("#run-error").inner_text().startswith("celery_flow.errors.DagStepFailed")
        )
        assert "carrier rejected postcode 00000" in page.locator("#run-error").inner_text()
        shot = (
            ROOT / "docs" / "img" / "example-order-saga.png"
            if UPDATE_SCREENSHOTS
            else tmp_path / "example-order-saga.png"
        )
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
