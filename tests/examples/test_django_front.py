"""The Django front end (``example_project.django_site``) against a real Redis and a real worker.

Requests go through ``django.test.Client`` into the views, which start and inspect real runs
of the freshly imported example project (the conftest fixture drops every
``example_project.*`` module and clears Django's URL cache, so the views import the project of
the current test). Outcomes are read back as statuses, outputs and rows in the project's SQLite
file. CSRF: the JSON endpoints are exempt, the HTML approval form is not. The last test serves
the Django WSGI application and the Flask app over real HTTP in one process, as the demo does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sqlite3
import threading
import time
import urllib.request
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import django
import pytest
from django.test import Client
from werkzeug.serving import make_server as make_werkzeug_server

from celery_flow import Context, DagStep
from celery_flow.testing import start_flow_worker
from tests.examples.conftest import ExampleProject, drop_example_modules

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.django_site.settings")

SIGNATURE = "X-Celery-Flow-Signature"
TERMINAL = {"succeeded", "failed", "canceled"}
APPROVAL_WORKFLOW = "test-expense"


def _example_keys() -> list[str]:
    """Keys of ``EXAMPLES`` at collection time, or a sentinel that fails when there are none."""
    from example_project.proj.patterns import EXAMPLES

    keys = list(EXAMPLES)
    drop_example_modules()  # each test imports the project afresh on its own prefix
    return keys or ["<EXAMPLES is empty>"]


@pytest.fixture
def example_project(example_project: ExampleProject) -> ExampleProject:
    """The conftest fixture plus a workflow of this module, registered before the worker starts
    (a Celery worker only knows the tasks registered when it starts)."""

    @example_project.flow.workflow(name=APPROVAL_WORKFLOW)
    def test_expense(ctx: Context, amount: int) -> dict[str, Any]:
        """Wait for an ``approval`` event; return the decision."""
        decision = ctx.step.wait_for_event("manager-approval", "approval", timeout=30)
        return {"amount": amount, **decision}

    return example_project


@pytest.fixture
def client(example_project: ExampleProject) -> Client:
    """Django's test client (no CSRF enforcement, Django's default for it).

    Tests that need runs to make progress also request ``example`` (the embedded worker).
    """
    django.setup()
    return Client()


@pytest.fixture
def csrf_client(example_project: ExampleProject) -> Client:
    """A test client that checks CSRF tokens as a browser's requests are checked."""
    django.setup()
    return Client(enforce_csrf_checks=True)


def post_json(client: Client, path: str, body: Any = None, **headers: str) -> Any:
    data = b"" if body is None else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers=headers)


def start(client: Client, path: str, body: Any = None, **headers: str) -> dict[str, Any]:
    """POST ``path`` (a JSON body unless None); assert 202; return the reply."""
    resp = post_json(client, path, body, **headers)
    assert resp.status_code == 202, resp.content
    reply = resp.json()
    assert set(reply) >= {"run_id", "workflow", "status_url"}
    assert reply["status_url"] == f"http://testserver/runs/{reply['run_id']}"
    return reply


def run_json(client: Client, run_id: str) -> dict[str, Any]:
    resp = client.get(f"/runs/{run_id}", {"format": "json"})
    assert resp.status_code == 200, resp.content
    return resp.json()


def poll(client: Client, run_id: str, until: set[str], timeout: float = 20.0) -> dict[str, Any]:
    """Poll the JSON status page until the run's status is in ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        info = run_json(client, run_id)
        if info["status"] in until:
            return info
        assert info["status"] not in TERMINAL, info
        assert time.monotonic() < deadline, f"run still {info['status']}: {info}"
        time.sleep(0.05)


def waiting_for_event(info: dict[str, Any]) -> bool:
    return info["status"] == "waiting" and any(
        s["kind"] == "event" and s["status"] == "waiting" for s in info["steps"]
    )


def deliveries(example: ExampleProject) -> list[dict[str, Any]]:
    """Rows of ``webhook_deliveries`` in the test's SQLite file (none if never created)."""
    if not example.db_path.exists():
        return []
    conn = sqlite3.connect(example.db_path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM webhook_deliveries ORDER BY id")]
    except sqlite3.OperationalError:  # no such table: nothing was ever recorded
        return []
    finally:
        conn.close()


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- starting runs and following them -----------------------------------------------------------


def test_start_poll_and_status_page(
    example: ExampleProject, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply = start(client, "/start/reindex-catalog", 3)
    assert reply["workflow"] == "reindex-catalog"
    info = poll(client, reply["run_id"], {"succeeded"})
    assert info["output"] == {"batches": 3, "documents": 300}
    assert info["progress"]["current"] == 3 and info["progress"]["total"] == 3
    assert [s["name"] for s in info["steps"]] == ["batch:0", "batch:1", "batch:2"]
    # The Accept header selects JSON too, and answers the same RunInfo.
    by_header = client.get(f"/runs/{reply['run_id']}", headers={"Accept": "application/json"})
    assert by_header.json() == info
    assert "Accept" in by_header["Vary"]

    monkeypatch.setenv("EXAMPLE_DASHBOARD_URL", "http://127.0.0.1:8155/")
    page = client.get(f"/runs/{reply['run_id']}", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    assert '<h1 id="workflow">reindex-catalog</h1>' in html
    assert 'class="badge s-succeeded">succeeded<' in html
    assert 'id="attempt">1 of 1<' in html
    for name in ("batch:0", "batch:1", "batch:2"):
        assert f'<td class="mono">{name}</td>' in html
    assert '<progress value="3.0" max="3.0">' in html
    assert "&#34;documents&#34;: 300" in html  # the output, HTML-escaped
    assert f'href="http://127.0.0.1:8155/runs/{reply["run_id"]}"' in html
    assert "approval-form" not in html  # nothing to decide on a finished run


def test_idempotency_key_header(example: ExampleProject, client: Client) -> None:
    first = start(client, "/start/reindex-catalog", 1, **{"Idempotency-Key": "reindex-42"})
    again = start(client, "/start/reindex-catalog", 1, **{"Idempotency-Key": "reindex-42"})
    other = start(client, "/start/reindex-catalog", 1, **{"Idempotency-Key": "reindex-43"})
    assert again["run_id"] == first["run_id"]
    assert other["run_id"] != first["run_id"]
    assert poll(client, first["run_id"], {"succeeded"})["idempotency_key"] == "reindex-42"
    assert len(example.flow.list_runs(workflow="reindex-catalog").runs) == 2


def test_start_example_by_key(example: ExampleProject, client: Client) -> None:
    """``/examples/<key>/start`` starts ``EXAMPLES[key]`` with ``make_input(tag)``."""
    from example_project.proj.patterns import EXAMPLES
    from example_project.proj.patterns.catalog import Example

    tags: list[str] = []

    def make_input(tag: str) -> int:
        tags.append(tag)
        return 2

    # A tour workflow as one more example, so this runs whatever the pattern modules hold.
    EXAMPLES["tour-reindex"] = Example("tour-reindex", "Reindex", "reindex-catalog", make_input)
    first = start(client, "/examples/tour-reindex/start")
    second = start(client, "/examples/tour-reindex/start")
    assert first["example"] == "tour-reindex" and first["approval"] is False
    assert first["workflow"] == "reindex-catalog"
    assert first["run_id"] != second["run_id"]
    assert len(tags) == 2 and tags[0] != tags[1]  # a fresh random tag per start
    for reply in (first, second):
        assert poll(client, reply["run_id"], {"succeeded"})["output"]["documents"] == 200

    missing = client.post("/examples/no-such-example/start")
    assert missing.status_code == 404
    assert "no example 'no-such-example'" in missing.json()["error"]


@pytest.mark.parametrize("key", _example_keys())
def test_every_example_succeeds_through_the_front_end(
    example: ExampleProject, client: Client, key: str
) -> None:
    from example_project.proj.patterns import EXAMPLES

    if key not in EXAMPLES:
        pytest.fail("example_project.proj.patterns.EXAMPLES is empty: no example to run")
    reply = start(client, f"/examples/{key}/start")
    assert reply["workflow"] == EXAMPLES[key].workflow
    deadline = time.monotonic() + 60
    approved = False
    while True:
        info = run_json(client, reply["run_id"])
        if info["status"] in TERMINAL:
            break
        if EXAMPLES[key].approval and not approved and waiting_for_event(info):
            resp = post_json(
                client, f"/runs/{reply['run_id']}/approval", {"approved": True, "by": "ada"}
            )
            assert resp.status_code == 202, resp.content
            approved = True
        assert time.monotonic() < deadline, f"{key}: run still {info['status']}: {info}"
        time.sleep(0.05)
    assert info["status"] == "succeeded", info["error"]
    assert approved == EXAMPLES[key].approval


# -- approvals and CSRF -------------------------------------------------------------------------


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "the approval form has no CSRF token"
    return match.group(1)


def test_approval_round_trip_with_csrf(example: ExampleProject, csrf_client: Client) -> None:
    """JSON endpoints need no CSRF token; the HTML form is refused without one, then works."""
    client = csrf_client
    by_form = start(client, f"/start/{APPROVAL_WORKFLOW}", 120)  # JSON API: no token needed
    by_json = start(client, f"/start/{APPROVAL_WORKFLOW}", 9000)
    for reply in (by_form, by_json):
        assert waiting_for_event(poll(client, reply["run_id"], {"waiting"}))
    approval_path = f"/runs/{by_form['run_id']}/approval"

    # A form post without the token (a cross-site form would look like this) is refused.
    forged = client.post(approval_path, {"approved": "true", "by": "mallory"})
    assert forged.status_code == 403
    assert waiting_for_event(run_json(client, by_form["run_id"]))  # the run never heard of it

    # The status page offers the form, with the token (and sets the CSRF cookie).
    page = client.get(f"/runs/{by_form['run_id']}")
    html = page.content.decode()
    assert 'id="approval-form"' in html
    assert f'action="{approval_path}"' in html
    assert 'name="approved" value="true"' in html and 'name="approved" value="false"' in html
    assert 'class="badge s-waiting">waiting<' in html
    assert '<td class="mono">manager-approval</td>' in html
    assert "csrftoken" in client.cookies
    resp = client.post(
        approval_path, {"approved": "true", "by": "ada", "csrfmiddlewaretoken": csrf_token(html)}
    )
    assert resp.status_code == 303
    assert resp["Location"] == f"/runs/{by_form['run_id']}"

    # Malformed decisions are 400 and never reach the run.
    for bad in ({"approved": "maybe", "by": "ada"}, {"approved": True}, [1, 2]):
        resp = post_json(client, f"/runs/{by_json['run_id']}/approval", bad)
        assert resp.status_code == 400, bad
    resp = client.post(
        f"/runs/{by_json['run_id']}/approval", data=b"{oops", content_type="application/json"
    )
    assert resp.status_code == 400 and "not JSON" in resp.json()["error"]
    assert waiting_for_event(run_json(client, by_json["run_id"]))
    # The JSON API works without a token: 202 with the decision.
    resp = post_json(
        client, f"/runs/{by_json['run_id']}/approval", {"approved": False, "by": "grace"}
    )
    assert resp.status_code == 202
    assert resp.json() == {
        "run_id": by_json["run_id"],
        "event": "approval",
        "approved": False,
        "by": "grace",
    }
    form_info = poll(client, by_form["run_id"], {"succeeded"})
    assert form_info["output"] == {"amount": 120, "approved": True, "by": "ada"}
    json_info = poll(client, by_json["run_id"], {"succeeded"})
    assert json_info["output"] == {"amount": 9000, "approved": False, "by": "grace"}

    # Too late: the run has ended -> 409 with the engine's message.
    late = post_json(client, f"/runs/{by_json['run_id']}/approval", {"approved": True, "by": "x"})
    assert late.status_code == 409
    assert "can receive no more events" in late.json()["error"]


# -- errors -------------------------------------------------------------------------------------


def test_unknown_workflow_and_run_are_404(example_project: ExampleProject, client: Client) -> None:
    resp = post_json(client, "/start/no-such-workflow", {})
    assert resp.status_code == 404
    message = resp.json()["error"]
    assert "no workflow named 'no-such-workflow'" in message
    assert "reindex-catalog" in message  # the WorkflowNotFound message lists the known ones

    approve = post_json(client, "/runs/no-such-run/approval", {"approved": True, "by": "ada"})
    assert approve.status_code == 404 and "no-such-run" in approve.json()["error"]
    as_json = client.get("/runs/no-such-run", {"format": "json"})
    assert as_json.status_code == 404 and "no-such-run" in as_json.json()["error"]
    as_html = client.get("/runs/no-such-run")
    assert as_html.status_code == 404 and as_html["Content-Type"].startswith("text/html")
    assert "no-such-run" in as_html.content.decode()


def test_bad_input_is_400(example_project: ExampleProject, client: Client) -> None:
    resp = post_json(client, "/start/reindex-catalog", "many")
    assert resp.status_code == 400
    assert "reindex-catalog" in resp.json()["error"]  # the InputValidationError message
    resp = client.post("/start/reindex-catalog", data=b"{oops", content_type="application/json")
    assert resp.status_code == 400 and "not JSON" in resp.json()["error"]
    assert example_project.flow.list_runs(workflow="reindex-catalog").runs == []


def test_wrong_methods_are_405(example_project: ExampleProject, client: Client) -> None:
    assert client.get("/start/reindex-catalog").status_code == 405
    assert client.get("/webhooks/flow").status_code == 405
    assert client.post("/runs/some-run").status_code == 405


# -- webhooks -----------------------------------------------------------------------------------


def test_webhook_signature_check(example_project: ExampleProject, csrf_client: Client) -> None:
    """Checked with CSRF enforcement on: the webhook is exempt, its HMAC signature is not."""
    from example_project.proj.celery import WEBHOOK_SECRET

    client = csrf_client
    body = json.dumps({"run_id": "r-1", "dag": "ship", "state": "completed"}).encode()
    tampered = body.replace(b"completed", b"failed")

    def post(data: bytes, **headers: str) -> Any:
        return client.post(
            "/webhooks/flow", data=data, content_type="application/json", headers=headers
        )

    refused = [
        post(tampered, **{SIGNATURE: sign(body, WEBHOOK_SECRET)}),
        post(body),  # no signature at all
        post(body, **{SIGNATURE: sign(body, "wrong-key")}),
    ]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert deliveries(example_project) == []

    ok = post(body, **{SIGNATURE: sign(body, WEBHOOK_SECRET)})
    assert ok.status_code == 204 and ok.content == b""
    [row] = deliveries(example_project)
    assert (row["run_id"], row["dag"], row["state"]) == ("r-1", "ship", "completed")
    assert row["body"] == body.decode()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log in test output
        pass


def test_both_front_ends_served_in_one_process(example_project: ExampleProject) -> None:
    """The demo's setup: Django (wsgiref) and Flask (werkzeug) in threads of one process.

    A DAG's signed ``on_complete`` webhook goes to the Django site over real HTTP and is
    recorded; both front ends then report the same run. The DAG needs the server's URL and the
    worker must start after it is registered, so this test starts its own worker.
    """
    from example_project.django_site.wsgi import application
    from example_project.flask_app import create_app

    django_server = make_server("127.0.0.1", 0, application, handler_class=_QuietHandler)
    flask_server = make_werkzeug_server("127.0.0.1", 0, create_app(), threaded=True)
    threads = [
        threading.Thread(target=server.serve_forever, daemon=True)
        for server in (django_server, flask_server)
    ]
    for thread in threads:
        thread.start()
    django_url = f"http://127.0.0.1:{django_server.server_port}"
    flask_url = f"http://127.0.0.1:{flask_server.server_port}"
    try:
        dag = example_project.flow.dag(
            "test-webhook-dag",
            steps=[
                DagStep("pack", lambda context, prev: f"box-{context['order']}"),
                DagStep("label", lambda _, prev: f"{prev['pack']}-labelled", depends_on=["pack"]),
            ],
            on_complete=f"{django_url}/webhooks/flow",
        )
        with start_flow_worker(example_project.app, pool="threads", concurrency=4):
            handle = dag.run(context={"order": "o7"})
            assert handle.result(timeout=20) == {"pack": "box-o7", "label": "box-o7-labelled"}
        seen = []
        for base in (django_url, flask_url):
            with urllib.request.urlopen(f"{base}/runs/{handle.id}?format=json", timeout=5) as r:
                seen.append(json.loads(r.read()))
    finally:
        for server in (django_server, flask_server):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)
    [row] = deliveries(example_project)
    assert (row["run_id"], row["dag"], row["state"]) == (handle.id, "test-webhook-dag", "completed")
    assert json.loads(row["body"])["results"]["label"] == "box-o7-labelled"
    assert seen[0] == seen[1]
    assert (seen[0]["workflow"], seen[0]["status"]) == ("test-webhook-dag", "succeeded")
