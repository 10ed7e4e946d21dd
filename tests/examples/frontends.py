"""What the tests of both web front ends share: one adapter over Flask's and Django's test clients.

``make_front("flask")`` / ``make_front("django")`` wrap the framework's test client in a
:class:`Front`, whose calls (``get``, ``post``, ``post_json``, ``post_form``) answer a framework-
neutral :class:`Reply`. The tests every front end must pass are written once against it, in
``tests/examples/test_front_ends.py``, parametrised over :data:`FRONT_ENDS`; what only one
framework does stays in its module (``test_django_front.py``: Django's CSRF checks, both apps
served in one process; ``test_flask_front.py``: Flask's form without a token, the app served
over real HTTP). The helpers here are the pieces those framework-specific tests share.

Call :func:`make_front` only once the ``example_project`` fixture has imported the project: the
front ends import the project of the current test.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery_flow import Context, DagStep
from celery_flow.testing import start_flow_worker
from example_project.trigger import waits_for_approval

from .conftest import ExampleProject

waiting_for_event = waits_for_approval  # parked in wait_for_event(..., "approval") (RunInfo JSON)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.django_site.settings")

FRONT_ENDS = ("flask", "django")
SIGNATURE = "X-Celery-Flow-Signature"
TERMINAL = {"succeeded", "failed", "canceled"}
APPROVAL_WORKFLOW = "test-expense"
WEBHOOK_DAG = "test-webhook-dag"


# -- the adapter --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A test client's response, the same for both frameworks."""

    status: int
    headers: Mapping[str, str]  # the framework's own (case-insensitive) headers
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def mimetype(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Front:
    """One front end's test client behind the calls the tests make."""

    name: str
    client: Any  # flask.testing.FlaskClient or django.test.Client
    base_url: str  # the scheme and host the app puts in the absolute URLs it returns

    def get(self, path: str, **headers: str) -> Reply:
        """GET ``path`` (query string included)."""
        return self._reply(self.client.get(path, headers=headers))

    def post(self, path: str, data: bytes | None = None, **headers: str) -> Reply:
        """POST ``data`` as ``application/json`` (raw: any bytes), or no body at all if None."""
        if data is None:
            return self._reply(self.client.post(path, headers=headers))
        return self._reply(
            self.client.post(path, data=data, content_type="application/json", headers=headers)
        )

    def post_json(self, path: str, body: Any, **headers: str) -> Reply:
        return self.post(path, json.dumps(body).encode(), **headers)

    def post_form(self, path: str, fields: dict[str, str]) -> Reply:
        """POST ``fields`` as an HTML form does."""
        return self._reply(self.client.post(path, data=fields))

    def _reply(self, resp: Any) -> Reply:
        body = resp.get_data() if self.name == "flask" else resp.content
        return Reply(resp.status_code, resp.headers, body)

    # -- starting runs and following them

    def start(self, path: str, body: Any = None, **headers: str) -> dict[str, Any]:
        """POST ``path`` (a JSON body unless None); assert 202; return the reply."""
        data = None if body is None else json.dumps(body).encode()
        resp = self.post(path, data, **headers)
        assert resp.status == 202, resp.text
        reply = resp.json()
        assert set(reply) >= {"run_id", "workflow", "status_url"}
        assert reply["status_url"] == f"{self.base_url}/runs/{reply['run_id']}"
        return reply

    def run_json(self, run_id: str) -> dict[str, Any]:
        resp = self.get(f"/runs/{run_id}?format=json")
        assert resp.status == 200, resp.text
        return resp.json()

    def poll(self, run_id: str, until: set[str], timeout: float = 20.0) -> dict[str, Any]:
        """Poll the JSON status page until the run's status is in ``until``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.run_json(run_id)
            if info["status"] in until:
                return info
            assert info["status"] not in TERMINAL, info
            assert time.monotonic() < deadline, f"run still {info['status']}: {info}"
            time.sleep(0.05)


def make_front(name: str, *, enforce_csrf: bool = False) -> Front:
    """The test client of front end ``name`` (``"flask"`` or ``"django"``).

    ``enforce_csrf``: Django's client checks CSRF tokens as a browser's requests are checked
    (off by default, Django's default for its test client). Flask has no CSRF protection.
    """
    if name == "flask":
        from example_project.flask_app import create_app

        app = create_app()
        app.testing = True
        return Front(name, app.test_client(), "http://localhost")
    if name == "django":
        import django
        from django.test import Client

        django.setup()
        return Front(name, Client(enforce_csrf_checks=enforce_csrf), "http://testserver")
    raise ValueError(f"no front end {name!r}")


# -- the run states and records the tests read --------------------------------------------------


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


# -- approvals ----------------------------------------------------------------------------------


def with_approval_workflow(example_project: ExampleProject) -> ExampleProject:
    """Register :data:`APPROVAL_WORKFLOW` on the project; to be done before the worker starts
    (a Celery worker only knows the tasks registered when it starts)."""

    @example_project.flow.workflow(name=APPROVAL_WORKFLOW)
    def test_expense(ctx: Context, amount: int) -> dict[str, Any]:
        """Wait for an ``approval`` event; return the decision."""
        decision = ctx.step.wait_for_event("manager-approval", "approval", timeout=30)
        return {"amount": amount, **decision}

    return example_project


@contextmanager
def awaiting_approval(example_project: ExampleProject, front: Front) -> Iterator[tuple[str, str]]:
    """Two runs of :data:`APPROVAL_WORKFLOW` waiting for their approval, with a worker running.

    Registers the workflow, starts a worker (threads x8, as the ``example`` fixture's) that knows
    it, starts two runs through the JSON API (amounts 120, to be decided by the form, and 9000,
    by JSON), polls each until it waits for its approval and checks that its status page offers
    the decision form; yields ``(by_form, by_json)``, the worker running until the block ends.
    """
    with_approval_workflow(example_project)
    with start_flow_worker(example_project.app, pool="threads", concurrency=8):
        run_ids = [
            front.start(f"/start/{APPROVAL_WORKFLOW}", amount)["run_id"] for amount in (120, 9000)
        ]
        for run_id in run_ids:
            info = front.poll(run_id, {"waiting"})
            assert waiting_for_event(info), info
            [step] = [s for s in info["steps"] if s["kind"] == "event"]
            assert (step["name"], step["event_type"]) == ("manager-approval", "approval")
            assert_offers_approval_form(front.get(f"/runs/{run_id}").text, run_id)
        by_form, by_json = run_ids
        yield by_form, by_json


def assert_offers_approval_form(html: str, run_id: str) -> None:
    """The status page of a run waiting for its approval offers the decision form."""
    assert 'id="approval-form"' in html
    assert f'action="/runs/{run_id}/approval"' in html
    assert 'name="approved" value="true"' in html and 'name="approved" value="false"' in html
    assert 'class="badge s-waiting">waiting<' in html
    assert '<td class="mono">manager-approval</td>' in html


def finish_approval_round_trip(
    front: Front, by_form: str, by_json: str, form_extra: Mapping[str, str] | None = None
) -> None:
    """Approve ``by_form`` (as ada) through the status page's HTML form, its fields plus
    ``form_extra`` (Django's CSRF token): 303 back to the status page. Then malformed JSON
    decisions for ``by_json`` are 400 and never reach the run; a JSON decision is 202; both
    runs end with their decisions; a decision for an ended run is 409."""
    fields = {"approved": "true", "by": "ada", **(form_extra or {})}
    resp = front.post_form(f"/runs/{by_form}/approval", fields)
    assert resp.status == 303
    assert resp.headers["Location"] == f"/runs/{by_form}"

    path = f"/runs/{by_json}/approval"
    for bad in ({"approved": "maybe", "by": "ada"}, {"approved": True}, [1, 2]):
        resp = front.post_json(path, bad)
        assert resp.status == 400, bad
    resp = front.post(path, b"{oops")
    assert resp.status == 400 and "not JSON" in resp.json()["error"]
    assert waiting_for_event(front.run_json(by_json))
    # The JSON API: 202 with the decision.
    resp = front.post_json(path, {"approved": False, "by": "grace"})
    assert resp.status == 202
    assert resp.json() == {"run_id": by_json, "event": "approval", "approved": False, "by": "grace"}
    form_info = front.poll(by_form, {"succeeded"})
    assert form_info["output"] == {"amount": 120, "approved": True, "by": "ada"}
    json_info = front.poll(by_json, {"succeeded"})
    assert json_info["output"] == {"amount": 9000, "approved": False, "by": "grace"}

    # Too late: the run has ended -> 409 with the engine's message.
    late = front.post_json(path, {"approved": True, "by": "x"})
    assert late.status == 409
    assert "can receive no more events" in late.json()["error"]


# -- over real HTTP -----------------------------------------------------------------------------


@contextmanager
def serving(server: Any) -> Iterator[str]:
    """Serve ``server`` (a WSGI server bound to a port) from a thread; yield its base URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_webhook_dag(example_project: ExampleProject, on_complete: str) -> str:
    """Run :data:`WEBHOOK_DAG` (pack -> label) with its signed ``on_complete`` webhook posted to
    ``on_complete``, a front end's ``/webhooks/flow``; return its run id once it succeeded and
    the front end verified and recorded the webhook.

    The DAG needs the URL, and a worker only knows the tasks registered when it starts, so this
    starts its own worker after registering the DAG (no ``example`` fixture).
    """
    dag = example_project.flow.dag(
        WEBHOOK_DAG,
        steps=[
            DagStep("pack", lambda context, prev: f"box-{context['order']}"),
            DagStep("label", lambda _, prev: f"{prev['pack']}-labelled", depends_on=["pack"]),
        ],
        on_complete=on_complete,
    )
    with start_flow_worker(example_project.app, pool="threads", concurrency=4):
        handle = dag.run(context={"order": "o7"})
        assert handle.result(timeout=20) == {"pack": "box-o7", "label": "box-o7-labelled"}
    # The webhook is the run's step ``webhook:on_complete``: delivered by now, recorded once.
    [row] = deliveries(example_project)
    assert (row["run_id"], row["dag"], row["state"]) == (handle.id, WEBHOOK_DAG, "completed")
    assert json.loads(row["body"])["results"]["label"] == "box-o7-labelled"
    return handle.id
