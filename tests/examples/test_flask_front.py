"""The Flask front end (``example_project.flask_app``) against a real Redis and a real worker.

Every request goes through Flask's test client into the views, which start and inspect real
runs of the freshly imported example project; outcomes are read back as statuses, outputs
and rows in the project's SQLite file. The last test serves the app over real HTTP (werkzeug,
in a thread, as the demo does) and lets a DAG deliver its signed ``on_complete`` webhook.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from celery_flow import Context, DagStep
from celery_flow.testing import start_flow_worker
from tests.examples.conftest import ExampleProject

SIGNATURE = "X-Celery-Flow-Signature"
TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture
def app(example_project: ExampleProject) -> Flask:
    """The Flask app, created after the fixture imported the project on this test's prefix.

    Tests that need runs to make progress also request ``example`` (the embedded worker); the
    others skip the worker's start and stop.
    """
    from example_project.flask_app import create_app

    app = create_app()
    app.testing = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def start(client: FlaskClient, path: str, body: Any = None, **headers: str) -> dict[str, Any]:
    """POST ``path`` (a JSON body unless None); assert 202; return the reply."""
    resp = client.post(path, json=body, headers=headers) if body is not None else client.post(path)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    reply = resp.get_json()
    assert set(reply) >= {"run_id", "workflow", "status_url"}
    assert reply["status_url"] == f"http://localhost/runs/{reply['run_id']}"
    return reply


def run_json(client: FlaskClient, run_id: str) -> dict[str, Any]:
    resp = client.get(f"/runs/{run_id}?format=json")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def poll(
    client: FlaskClient, run_id: str, until: set[str], timeout: float = 20.0
) -> dict[str, Any]:
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


APPROVAL_WORKFLOW = "test-expense"


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


# -- starting runs and following them -----------------------------------------------------------


def test_start_poll_and_status_page(
    example: ExampleProject, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply = start(client, "/start/reindex-catalog", 3)
    assert reply["workflow"] == "reindex-catalog"
    info = poll(client, reply["run_id"], {"succeeded"})
    assert info["output"] == {"batches": 3, "documents": 300}
    assert info["progress"]["current"] == 3 and info["progress"]["total"] == 3
    assert [s["name"] for s in info["steps"]] == ["batch:0", "batch:1", "batch:2"]
    # The Accept header selects JSON too, and answers the same RunInfo.
    by_header = client.get(f"/runs/{reply['run_id']}", headers={"Accept": "application/json"})
    assert by_header.get_json() == info
    assert by_header.headers["Vary"] == "Accept"

    monkeypatch.setenv("EXAMPLE_DASHBOARD_URL", "http://127.0.0.1:8155/")
    page = client.get(f"/runs/{reply['run_id']}", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '<h1 id="workflow">reindex-catalog</h1>' in html
    assert 'class="badge s-succeeded">succeeded<' in html
    assert 'id="attempt">1 of 1<' in html
    for name in ("batch:0", "batch:1", "batch:2"):
        assert f'<td class="mono">{name}</td>' in html
    assert '<progress value="3.0" max="3.0">' in html
    assert "&#34;documents&#34;: 300" in html  # the output, HTML-escaped
    assert f'href="http://127.0.0.1:8155/runs/{reply["run_id"]}"' in html
    assert "approval-form" not in html  # nothing to decide on a finished run


def test_idempotency_key_header(example: ExampleProject, client: FlaskClient) -> None:
    first = start(client, "/start/reindex-catalog", 1, **{"Idempotency-Key": "reindex-42"})
    again = start(client, "/start/reindex-catalog", 1, **{"Idempotency-Key": "reindex-42"})
    other = start(client, "/start/reindex-catalog", 1, **{"Idempotency-Key": "reindex-43"})
    assert again["run_id"] == first["run_id"]
    assert other["run_id"] != first["run_id"]
    assert poll(client, first["run_id"], {"succeeded"})["idempotency_key"] == "reindex-42"
    assert len(example.flow.list_runs(workflow="reindex-catalog").runs) == 2


def test_start_example_by_key(example: ExampleProject, client: FlaskClient) -> None:
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
    assert "no example 'no-such-example'" in missing.get_json()["error"]


# Every example through the Flask front end, over real HTTP: tests/examples/test_trigger.py.
# (The Django module runs every example through Django's test client.)


# -- approvals ----------------------------------------------------------------------------------


def test_approval_round_trip_form_and_json(example: ExampleProject, client: FlaskClient) -> None:
    workflow = APPROVAL_WORKFLOW
    by_form = start(client, f"/start/{workflow}", 120)
    by_json = start(client, f"/start/{workflow}", 9000)
    for reply in (by_form, by_json):
        assert waiting_for_event(poll(client, reply["run_id"], {"waiting"}))

    html = client.get(f"/runs/{by_form['run_id']}").get_data(as_text=True)
    assert 'id="approval-form"' in html
    assert f'action="/runs/{by_form["run_id"]}/approval"' in html
    assert 'name="approved" value="true"' in html and 'name="approved" value="false"' in html
    assert 'class="badge s-waiting">waiting<' in html
    assert '<td class="mono">manager-approval</td>' in html

    # The HTML form: fields, then a 303 back to the status page.
    resp = client.post(
        f"/runs/{by_form['run_id']}/approval", data={"approved": "true", "by": "ada"}
    )
    assert resp.status_code == 303
    assert resp.headers["Location"] == f"/runs/{by_form['run_id']}"
    # Malformed decisions are 400 and never reach the run.
    for bad in ({"approved": "maybe", "by": "ada"}, {"approved": True}, [1, 2]):
        resp = client.post(f"/runs/{by_json['run_id']}/approval", json=bad)
        assert resp.status_code == 400, bad
    resp = client.post(
        f"/runs/{by_json['run_id']}/approval", data=b"{not json", content_type="application/json"
    )
    assert resp.status_code == 400 and "not JSON" in resp.get_json()["error"]
    assert waiting_for_event(run_json(client, by_json["run_id"]))
    # The JSON API: 202 with the decision.
    resp = client.post(
        f"/runs/{by_json['run_id']}/approval", json={"approved": False, "by": "grace"}
    )
    assert resp.status_code == 202
    assert resp.get_json() == {
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
    late = client.post(f"/runs/{by_json['run_id']}/approval", json={"approved": True, "by": "x"})
    assert late.status_code == 409
    assert "can receive no more events" in late.get_json()["error"]


# -- errors and idempotency ---------------------------------------------------------------------


def test_unknown_workflow_and_run_are_404(
    example_project: ExampleProject, client: FlaskClient
) -> None:
    resp = client.post("/start/no-such-workflow", json={})
    assert resp.status_code == 404
    message = resp.get_json()["error"]
    assert "no workflow named 'no-such-workflow'" in message
    assert "reindex-catalog" in message  # the WorkflowNotFound message lists the known ones

    approve = client.post("/runs/no-such-run/approval", json={"approved": True, "by": "ada"})
    assert approve.status_code == 404 and "no-such-run" in approve.get_json()["error"]
    as_json = client.get("/runs/no-such-run?format=json")
    assert as_json.status_code == 404 and "no-such-run" in as_json.get_json()["error"]
    as_html = client.get("/runs/no-such-run")
    assert as_html.status_code == 404 and as_html.mimetype == "text/html"
    assert "no-such-run" in as_html.get_data(as_text=True)


def test_bad_input_is_400(example_project: ExampleProject, client: FlaskClient) -> None:
    resp = client.post("/start/reindex-catalog", json="many")
    assert resp.status_code == 400
    assert "reindex-catalog" in resp.get_json()["error"]  # the InputValidationError message
    resp = client.post("/start/reindex-catalog", data=b"{oops", content_type="application/json")
    assert resp.status_code == 400 and "not JSON" in resp.get_json()["error"]
    assert example_project.flow.list_runs(workflow="reindex-catalog").runs == []  # nothing started


# -- webhooks -----------------------------------------------------------------------------------


def test_webhook_signature_check(example_project: ExampleProject, client: FlaskClient) -> None:
    from example_project.proj.celery import WEBHOOK_SECRET

    body = json.dumps({"run_id": "r-1", "dag": "ship", "state": "completed"}).encode()
    tampered = body.replace(b"completed", b"failed")
    refused = [
        client.post(
            "/webhooks/flow", data=tampered, headers={SIGNATURE: sign(body, WEBHOOK_SECRET)}
        ),
        client.post("/webhooks/flow", data=body),  # no signature at all
        client.post("/webhooks/flow", data=body, headers={SIGNATURE: sign(body, "wrong-key")}),
    ]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert deliveries(example_project) == []

    ok = client.post("/webhooks/flow", data=body, headers={SIGNATURE: sign(body, WEBHOOK_SECRET)})
    assert ok.status_code == 204 and ok.get_data() == b""
    [row] = deliveries(example_project)
    assert (row["run_id"], row["dag"], row["state"]) == ("r-1", "ship", "completed")
    assert row["body"] == body.decode()


def test_dag_webhook_is_delivered_and_recorded(example_project: ExampleProject) -> None:
    """celery_flow signs a DAG's ``on_complete`` POST; the front end verifies and records it.

    The app is served over real HTTP by werkzeug in a thread, as the demo serves it. The DAG
    needs the server's URL and the worker must start after the DAG is registered, so this test
    starts its own worker instead of using the ``example`` fixture.
    """
    from example_project.flask_app import create_app

    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dag = example_project.flow.dag(
            "test-webhook-dag",
            steps=[
                DagStep("pack", lambda context, prev: f"box-{context['order']}"),
                DagStep(
                    "label", lambda context, prev: f"{prev['pack']}-labelled", depends_on=["pack"]
                ),
            ],
            on_complete=f"http://127.0.0.1:{server.server_port}/webhooks/flow",
        )
        with start_flow_worker(example_project.app, pool="threads", concurrency=4):
            handle = dag.run(context={"order": "o7"})
            assert handle.result(timeout=20) == {"pack": "box-o7", "label": "box-o7-labelled"}
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
    [row] = deliveries(example_project)
    assert (row["run_id"], row["dag"], row["state"]) == (handle.id, "test-webhook-dag", "completed")
    assert json.loads(row["body"])["results"]["label"] == "box-o7-labelled"


def test_unknown_routes_and_methods(example_project: ExampleProject, client: FlaskClient) -> None:
    assert client.get("/start/reindex-catalog").status_code == 405
    assert client.get("/webhooks/flow").status_code == 405
    assert client.post("/runs/some-run").status_code == 405
