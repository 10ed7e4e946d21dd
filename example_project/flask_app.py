"""The Flask front end of the example project: ``create_app()`` builds it.

Serve it with ``flask --app example_project.flask_app run`` (Flask finds the factory) or any
WSGI server calling :func:`create_app`. Every endpoint's logic lives in
:mod:`example_project.web` (shared with the Django front end); the routes here only read the
request and build the response.

Flask has no CSRF protection of its own: a real app would add Flask-WTF's ``CSRFProtect`` for
the status page's approval form (the Django front end checks its CSRF token). The JSON
endpoints and the signed webhook need none.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, request, url_for

from example_project import web
from example_project.proj import flow
from example_project.proj.celery import WEBHOOK_SECRET
from example_project.proj.patterns import EXAMPLES


def _response(reply: web.Reply) -> Response:
    return Response(
        reply.body, status=reply.status, content_type=reply.content_type, headers=reply.headers
    )


def _status_url() -> Callable[[str], str]:
    """``run_id -> absolute URL of its status page`` (returned to API clients)."""
    return lambda run_id: url_for("run_status", run_id=run_id, _external=True)


def _status_path(run_id: str) -> str:
    return url_for("run_status", run_id=run_id)


def create_app() -> Flask:
    """A Flask app serving the endpoints of :mod:`example_project.web` for the project's Flow."""
    app = Flask(__name__)
    api = web.FlowWeb(flow, EXAMPLES, WEBHOOK_SECRET)

    @app.post("/start/<workflow>")
    def start_workflow(workflow: str) -> Response:
        """Start a run with the JSON body as input."""
        key = request.headers.get(web.IDEMPOTENCY_HEADER)
        return _response(api.start_workflow(workflow, request.get_data(), key, _status_url()))

    @app.post("/examples/<key>/start")
    def start_example(key: str) -> Response:
        """Start one of the project's examples."""
        idempotency_key = request.headers.get(web.IDEMPOTENCY_HEADER)
        return _response(api.start_example(key, idempotency_key, _status_url()))

    @app.get("/runs/<run_id>")
    def run_status(run_id: str) -> Response:
        """The HTML status page, or the run as JSON."""
        as_json = web.wants_json(request.headers.get("Accept"), request.args.get("format"))
        approval_url = url_for("run_approval", run_id=run_id)
        return _response(api.run_status(run_id, as_json=as_json, approval_url=approval_url))

    @app.post("/runs/<run_id>/approval")
    def run_approval(run_id: str) -> Response:
        """Send the approval decision: a JSON API call, or the status page's HTML form."""
        if web.is_json(request.content_type):
            return _response(api.approve(run_id, _status_path, json_body=request.get_data()))
        return _response(api.approve(run_id, _status_path, form=request.form))

    @app.post("/webhooks/flow")
    def flow_webhook() -> Response:
        """A signed DAG notification; recorded when the signature is good."""
        body = request.get_data()
        return _response(api.webhook(body, request.headers.get(web.SIGNATURE_HEADER)))

    return app
