"""What both web front ends must do, against a real Redis and a real worker: every test here
is parametrised by ``front_end`` and runs once per front end (``[flask]``, ``[django]``).

Both serve the same endpoints through ``example_project/web.py`` and must answer alike.
Requests go through each framework's own test client (Flask's test client,
``django.test.Client``: one adapter, ``tests/examples/frontends.py``) into its routes or views,
which start and inspect real runs of the freshly imported example project (the conftest
fixture drops every ``example_project.*`` module and clears Django's URL cache, so the views
import the project of the current test). Outcomes are read back as statuses, outputs and rows
in the project's SQLite file.

What only one framework does is in its own module: ``tests/examples/test_django_front.py``
(CSRF, both apps served over real HTTP in one process) and
``tests/examples/test_flask_front.py`` (the form without a token, the app served over real
HTTP).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.examples.conftest import ExampleProject
from tests.examples.frontends import (
    FRONT_ENDS,
    SIGNATURE,
    TERMINAL,
    Front,
    deliveries,
    make_front,
    sign,
    waiting_for_event,
)

EVERY_EXAMPLE_DEADLINE = 90.0
"""Seconds for every example, started at once, to end (one worker for them all)."""


@pytest.fixture(params=FRONT_ENDS)
def front_end(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def front(example_project: ExampleProject, front_end: str) -> Front:
    """The front end's test client (Django's without CSRF enforcement, its test default).

    Tests that need runs to make progress also request ``example`` (the embedded worker).
    """
    return make_front(front_end)


@pytest.fixture
def csrf_front(example_project: ExampleProject, front_end: str) -> Front:
    """As ``front``, with Django's client checking CSRF tokens as a browser's requests are
    checked (Flask has no CSRF protection: the same client as ``front``)."""
    return make_front(front_end, enforce_csrf=True)


# -- starting runs and following them (both front ends) -----------------------------------------


def test_start_poll_and_status_page(
    example: ExampleProject, front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply = front.start("/start/reindex-catalog", 3)
    assert reply["workflow"] == "reindex-catalog"
    info = front.poll(reply["run_id"], {"succeeded"})
    assert info["output"] == {"batches": 3, "documents": 300}
    assert info["progress"]["current"] == 3 and info["progress"]["total"] == 3
    assert [s["name"] for s in info["steps"]] == ["batch:0", "batch:1", "batch:2"]
    # The Accept header selects JSON too, and answers the same RunInfo.
    by_header = front.get(f"/runs/{reply['run_id']}", Accept="application/json")
    assert by_header.json() == info
    assert by_header.headers["Vary"] == "Accept"

    monkeypatch.setenv("EXAMPLE_DASHBOARD_URL", "http://127.0.0.1:8155/")
    page = front.get(f"/runs/{reply['run_id']}", Accept="text/html")
    assert page.status == 200 and page.mimetype == "text/html"
    html = page.text
    assert '<h1 id="workflow">reindex-catalog</h1>' in html
    assert 'class="badge s-succeeded">succeeded<' in html
    assert 'id="attempt">1 of 1<' in html
    for name in ("batch:0", "batch:1", "batch:2"):
        assert f'<td class="mono">{name}</td>' in html
    assert '<progress value="3.0" max="3.0">' in html
    assert "&#34;documents&#34;: 300" in html  # the output, HTML-escaped
    assert f'href="http://127.0.0.1:8155/runs/{reply["run_id"]}"' in html
    assert "approval-form" not in html  # nothing to decide on a finished run


def test_idempotency_key_header(example: ExampleProject, front: Front) -> None:
    first = front.start("/start/reindex-catalog", 1, **{"Idempotency-Key": "reindex-42"})
    again = front.start("/start/reindex-catalog", 1, **{"Idempotency-Key": "reindex-42"})
    other = front.start("/start/reindex-catalog", 1, **{"Idempotency-Key": "reindex-43"})
    assert again["run_id"] == first["run_id"]
    assert other["run_id"] != first["run_id"]
    assert front.poll(first["run_id"], {"succeeded"})["idempotency_key"] == "reindex-42"
    assert len(example.flow.list_runs(workflow="reindex-catalog").runs) == 2


def test_start_example_by_key(example: ExampleProject, front: Front) -> None:
    """``/examples/<key>/start`` starts ``EXAMPLES[key]`` with ``make_input(tag)``."""
    from example_project.proj.patterns import EXAMPLES
    from example_project.proj.patterns.catalog import Example

    tags: list[str] = []

    def make_input(tag: str) -> int:
        tags.append(tag)
        return 2

    # A tour workflow as one more example, so this runs whatever the pattern modules hold.
    EXAMPLES["tour-reindex"] = Example("tour-reindex", "Reindex", "reindex-catalog", make_input)
    first = front.start("/examples/tour-reindex/start")
    second = front.start("/examples/tour-reindex/start")
    assert first["example"] == "tour-reindex" and first["approval"] is False
    assert first["workflow"] == "reindex-catalog"
    assert first["run_id"] != second["run_id"]
    assert len(tags) == 2 and tags[0] != tags[1]  # a fresh random tag per start
    for reply in (first, second):
        assert front.poll(reply["run_id"], {"succeeded"})["output"]["documents"] == 200

    missing = front.post("/examples/no-such-example/start")
    assert missing.status == 404
    assert "no example 'no-such-example'" in missing.json()["error"]


def test_every_example_succeeds_through_the_front_end(
    example: ExampleProject, front: Front
) -> None:
    """Every example of ``EXAMPLES``, started at once through this front end's test client
    (``POST /examples/<key>/start``), ends ``succeeded``; an ``approval`` example is approved
    through ``POST /runs/<id>/approval`` once its run waits for the decision.

    All of them share the test's one worker, so the suite starts one worker per front end,
    not one per example.
    """
    examples = example.proj.patterns.EXAMPLES
    if not examples:
        pytest.fail("example_project.proj.patterns.EXAMPLES is empty: no example to run")
    started = {key: front.start(f"/examples/{key}/start") for key in examples}
    for key, reply in started.items():
        assert (reply["example"], reply["workflow"]) == (key, examples[key].workflow)
        assert reply["approval"] is examples[key].approval, key

    open_runs = {key: reply["run_id"] for key, reply in started.items()}
    latest: dict[str, dict[str, Any]] = {}  # each example's last RunInfo JSON
    approved: set[str] = set()
    deadline = time.monotonic() + EVERY_EXAMPLE_DEADLINE
    while open_runs and time.monotonic() < deadline:
        for key, run_id in list(open_runs.items()):
            info = latest[key] = front.run_json(run_id)
            if info["status"] in TERMINAL:
                del open_runs[key]
            elif examples[key].approval and key not in approved and waiting_for_event(info):
                decision = {"approved": True, "by": "ada"}
                resp = front.post_json(f"/runs/{run_id}/approval", decision)
                assert resp.status == 202, f"{key}: {resp.text}"
                approved.add(key)
        time.sleep(0.05)

    failed = {
        key: f"{info['status']}, error {info['error']}"
        for key, info in latest.items()
        if info["status"] != "succeeded"
    }
    assert not failed, (
        f"examples not succeeded within {EVERY_EXAMPLE_DEADLINE:.0f}s on {front.name}: {failed}"
    )
    assert approved == {key for key, chosen in examples.items() if chosen.approval}


# -- errors (both front ends) -------------------------------------------------------------------


def test_unknown_workflow_and_run_are_404(example_project: ExampleProject, front: Front) -> None:
    resp = front.post_json("/start/no-such-workflow", {})
    assert resp.status == 404
    message = resp.json()["error"]
    assert "no workflow named 'no-such-workflow'" in message
    assert "reindex-catalog" in message  # the WorkflowNotFound message lists the known ones

    approve = front.post_json("/runs/no-such-run/approval", {"approved": True, "by": "ada"})
    assert approve.status == 404 and "no-such-run" in approve.json()["error"]
    as_json = front.get("/runs/no-such-run?format=json")
    assert as_json.status == 404 and "no-such-run" in as_json.json()["error"]
    as_html = front.get("/runs/no-such-run")
    assert as_html.status == 404 and as_html.mimetype == "text/html"
    assert "no-such-run" in as_html.text


def test_bad_input_is_400(example_project: ExampleProject, front: Front) -> None:
    resp = front.post_json("/start/reindex-catalog", "many")
    assert resp.status == 400
    assert "reindex-catalog" in resp.json()["error"]  # the InputValidationError message
    resp = front.post("/start/reindex-catalog", b"{oops")
    assert resp.status == 400 and "not JSON" in resp.json()["error"]
    assert example_project.flow.list_runs(workflow="reindex-catalog").runs == []  # nothing started


def test_wrong_methods_are_405(example_project: ExampleProject, front: Front) -> None:
    assert front.get("/start/reindex-catalog").status == 405
    assert front.get("/webhooks/flow").status == 405
    assert front.post("/runs/some-run").status == 405


# -- webhooks -----------------------------------------------------------------------------------


def test_webhook_signature_check(example_project: ExampleProject, csrf_front: Front) -> None:
    """Both front ends; Django's with CSRF enforcement on: the webhook is exempt, its HMAC
    signature is not."""
    from example_project.proj.celery import WEBHOOK_SECRET

    front = csrf_front
    body = json.dumps({"run_id": "r-1", "dag": "ship", "state": "completed"}).encode()
    tampered = body.replace(b"completed", b"failed")
    refused = [
        front.post("/webhooks/flow", tampered, **{SIGNATURE: sign(body, WEBHOOK_SECRET)}),
        front.post("/webhooks/flow", body),  # no signature at all
        front.post("/webhooks/flow", body, **{SIGNATURE: sign(body, "wrong-key")}),
    ]
    assert [r.status for r in refused] == [401, 401, 401]
    assert deliveries(example_project) == []

    ok = front.post("/webhooks/flow", body, **{SIGNATURE: sign(body, WEBHOOK_SECRET)})
    assert ok.status == 204 and ok.body == b""
    [row] = deliveries(example_project)
    assert (row["run_id"], row["dag"], row["state"]) == ("r-1", "ship", "completed")
    assert row["body"] == body.decode()
