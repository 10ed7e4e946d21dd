"""The Django front end (``example_project.django_site``), and what both front ends must do,
against a real Redis and a real worker.

Requests go through the test clients (``django.test.Client``, Flask's test client: one adapter,
``tests/examples/frontends.py``) into the views, which start and inspect real runs of the
freshly imported example project (the conftest fixture drops every ``example_project.*`` module
and clears Django's URL cache, so the views import the project of the current test). Outcomes
are read back as statuses, outputs and rows in the project's SQLite file.

The tests parametrised by ``front_end`` run against both front ends (``[flask]``,
``[django]``): they share every endpoint through ``example_project/web.py`` and must answer
alike. The others are Django's own: every example through its views; CSRF (the JSON endpoints
are exempt, the HTML approval form is not); and the last test serves the Django WSGI
application and the Flask app over real HTTP in one process, as the demo does. Flask's own
tests are in ``tests/examples/test_flask_front.py``.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from werkzeug.serving import make_server as make_werkzeug_server

from tests.examples.conftest import ExampleProject, drop_example_modules
from tests.examples.frontends import (
    FRONT_ENDS,
    SIGNATURE,
    TERMINAL,
    WEBHOOK_DAG,
    Front,
    assert_offers_approval_form,
    assert_webhook_recorded,
    deliveries,
    finish_approval_round_trip,
    make_front,
    run_webhook_dag,
    serving,
    sign,
    start_awaiting_approval,
    waiting_for_event,
    with_approval_workflow,
)


def _example_keys() -> list[str]:
    """Keys of ``EXAMPLES`` at collection time, or a sentinel that fails when there are none."""
    from example_project.proj.patterns import EXAMPLES

    keys = list(EXAMPLES)
    drop_example_modules()  # each test imports the project afresh on its own prefix
    return keys or ["<EXAMPLES is empty>"]


@pytest.fixture
def example_project(example_project: ExampleProject) -> ExampleProject:
    """The conftest fixture plus ``APPROVAL_WORKFLOW``, registered before the worker starts."""
    return with_approval_workflow(example_project)


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


@pytest.mark.parametrize("key", _example_keys())
def test_every_example_succeeds_through_the_front_end(example: ExampleProject, key: str) -> None:
    """Django only: Flask's every-example run is tests/examples/test_trigger.py (real HTTP)."""
    from example_project.proj.patterns import EXAMPLES

    if key not in EXAMPLES:
        pytest.fail("example_project.proj.patterns.EXAMPLES is empty: no example to run")
    front = make_front("django")
    reply = front.start(f"/examples/{key}/start")
    assert reply["workflow"] == EXAMPLES[key].workflow
    deadline = time.monotonic() + 60
    approved = False
    while True:
        info = front.run_json(reply["run_id"])
        if info["status"] in TERMINAL:
            break
        if EXAMPLES[key].approval and not approved and waiting_for_event(info):
            decision = {"approved": True, "by": "ada"}
            resp = front.post_json(f"/runs/{reply['run_id']}/approval", decision)
            assert resp.status == 202, resp.text
            approved = True
        assert time.monotonic() < deadline, f"{key}: run still {info['status']}: {info}"
        time.sleep(0.05)
    assert info["status"] == "succeeded", info["error"]
    assert approved == EXAMPLES[key].approval


# -- approvals and CSRF (Django) ----------------------------------------------------------------


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "the approval form has no CSRF token"
    return match.group(1)


def test_approval_round_trip_with_csrf(example: ExampleProject) -> None:
    """JSON endpoints need no CSRF token; the HTML form is refused without one, then works."""
    front = make_front("django", enforce_csrf=True)
    by_form, by_json = start_awaiting_approval(front)  # JSON API: no token needed
    approval_path = f"/runs/{by_form}/approval"

    # A form post without the token (a cross-site form would look like this) is refused.
    forged = front.post_form(approval_path, {"approved": "true", "by": "mallory"})
    assert forged.status == 403
    assert waiting_for_event(front.run_json(by_form))  # the run never heard of it

    # The status page offers the form, with the token (and sets the CSRF cookie).
    html = front.get(f"/runs/{by_form}").text
    assert_offers_approval_form(html, by_form)
    assert "csrftoken" in front.client.cookies
    token = csrf_token(html)
    resp = front.post_form(
        approval_path, {"approved": "true", "by": "ada", "csrfmiddlewaretoken": token}
    )
    assert resp.status == 303
    assert resp.headers["Location"] == f"/runs/{by_form}"

    # The JSON API works without a token.
    finish_approval_round_trip(front, by_form, by_json)


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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log in test output
        pass


def test_both_front_ends_served_in_one_process(example_project: ExampleProject) -> None:
    """The demo's setup: Django (wsgiref) and Flask (werkzeug) in threads of one process.

    A DAG's signed ``on_complete`` webhook goes to the Django site over real HTTP and is
    recorded; both front ends then report the same run.
    """
    from example_project.django_site.wsgi import application
    from example_project.flask_app import create_app

    django_server = make_server("127.0.0.1", 0, application, handler_class=_QuietHandler)
    flask_server = make_werkzeug_server("127.0.0.1", 0, create_app(), threaded=True)
    with serving(django_server) as django_url, serving(flask_server) as flask_url:
        run_id = run_webhook_dag(example_project, f"{django_url}/webhooks/flow")
        seen = []
        for base in (django_url, flask_url):
            with urllib.request.urlopen(f"{base}/runs/{run_id}?format=json", timeout=5) as r:
                seen.append(json.loads(r.read()))
    assert_webhook_recorded(example_project, run_id)
    assert seen[0] == seen[1]
    assert (seen[0]["workflow"], seen[0]["status"]) == (WEBHOOK_DAG, "succeeded")
