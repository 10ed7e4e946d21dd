"""What both web front ends of the example project do, written once, framework-neutral.

:mod:`example_project.django_site` and :mod:`example_project.flask_app` are thin adapters:
each turns its framework's request into plain values (path arguments, raw body, a few
headers, form fields), calls one method of :class:`FlowWeb` and turns the returned
:class:`Reply` into its framework's response. So both serve exactly the same endpoints:

===========================  ==================================================================
``POST /start/<workflow>``   start a run; JSON body = input (empty = ``None``); header
                             ``Idempotency-Key`` dedupes. 202 ``{"run_id", "workflow",
                             "status_url"}``; 404 unknown workflow; 400 bad input.
``POST /examples/<key>/start``  start ``EXAMPLES[key]`` with ``make_input(<random tag>)``.
``GET /runs/<run_id>``       status page (HTML), or ``RunInfo`` JSON with ``Accept:
                             application/json`` / ``?format=json``; 404 unknown run.
``POST /runs/<id>/approval`` send the ``approval`` event ``{"approved": bool, "by": str}``
                             (JSON -> 202 JSON, HTML form -> 303 to the status page);
                             404 unknown run, 409 run already ended.
``POST /webhooks/flow``      a signed celery_flow webhook (DAG ``on_complete`` / ``on_error``):
                             401 unless ``X-Celery-Flow-Signature`` matches, else 204 and the
                             delivery is recorded in SQLite (``webhook_deliveries``).
===========================  ==================================================================

Only the public celery_flow API is used. The status page is one Jinja2 template,
``example_project/templates/run.html``, rendered here for both frameworks.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from celery_flow import (
    Flow,
    FlowConnectionError,
    InputValidationError,
    RunInfo,
    RunNotFound,
    RunStateError,
    WorkflowNotFound,
    verify_signature,
)

from .proj import db
from .proj.patterns.catalog import Example

TEMPLATES = Path(__file__).parent / "templates"
"""The templates of both front ends (one status page, shared)."""

SIGNATURE_HEADER = "X-Celery-Flow-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
APPROVAL_EVENT = "approval"
DASHBOARD_ENV = "EXAMPLE_DASHBOARD_URL"
VARY_ACCEPT = {"Vary": "Accept"}  # GET /runs/<id> answers HTML or JSON by the Accept header

WEBHOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    run_id TEXT,
    dag TEXT,
    state TEXT,
    body TEXT NOT NULL
);
"""
"""Every verified webhook delivery, so the demo and the tests can show what arrived."""

_JINJA = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


_JINJA.filters["pretty"] = _pretty


@dataclass(frozen=True)
class Reply:
    """A framework-neutral HTTP response: status, body, content type, extra headers."""

    status: int
    body: str = ""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


def json_reply(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Reply:
    """``data`` as a JSON response."""
    return Reply(status, json.dumps(data), "application/json", headers or {})


def error_reply(status: int, message: str) -> Reply:
    """``{"error": message}`` with ``status``: every error of the JSON API looks like this."""
    return json_reply(status, {"error": message})


def is_json(content_type: str | None) -> bool:
    """Whether a request's ``Content-Type`` is JSON (``application/json; charset=...``)."""
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


def wants_json(accept: str | None, format_param: str | None) -> bool:
    """Whether ``GET /runs/<id>`` should answer JSON: ``?format=json`` or a JSON ``Accept``.

    A browser sends ``Accept: text/html,...``; API clients send ``application/json``. An
    explicit ``?format=html`` wins over the header.
    """
    if format_param:
        return format_param.lower() == "json"
    accept = (accept or "").lower()
    return "application/json" in accept and "text/html" not in accept


def parse_json_body(body: bytes) -> Any:
    """The request body as JSON; an empty body is ``None``.

    Raises:
        ValueError: the body is not JSON (the caller answers 400).
    """
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the request body is not JSON: {exc}") from None


def parse_approval(data: Any) -> dict[str, Any]:
    """Validate an approval decision (JSON object or form fields) into the event payload.

    Form fields are strings: ``approved`` is ``"true"`` / ``"false"`` (the two buttons).

    Raises:
        ValueError: ``approved`` or ``by`` missing or of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise ValueError('send {"approved": true|false, "by": "<who decides>"}')
    approved = data.get("approved")
    if isinstance(approved, str):
        approved = {"true": True, "false": False}.get(approved.strip().lower(), approved)
    if not isinstance(approved, bool):
        raise ValueError(f'"approved" must be true or false, got {approved!r}')
    by = data.get("by")
    if not isinstance(by, str) or not by.strip():
        raise ValueError('"by" must name who decides (a non-empty string)')
    return {"approved": approved, "by": by.strip()}


def awaits_event(info: RunInfo, event_type: str = APPROVAL_EVENT) -> bool:
    """Whether the run is suspended in ``wait_for_event(..., event_type)``: it can take a
    decision, so the status page shows the approve / reject form."""
    return info.status == "waiting" and any(
        step.kind == "event" and step.status == "waiting" and step.event_type == event_type
        for step in info.steps
    )


class FlowWeb:
    """The endpoints of both front ends, bound to one Flow and the project's examples.

    Args:
        flow: the project's Flow (``example_project.proj.flow``).
        examples: what ``POST /examples/<key>/start`` can start (``patterns.EXAMPLES``).
        webhook_secret: the HMAC key incoming webhooks must be signed with (the one the Flow
            signs its own webhooks with, ``example_project.proj.celery.WEBHOOK_SECRET``).

    Every method takes plain values and returns a :class:`Reply`; none touches a framework.
    """

    def __init__(self, flow: Flow, examples: Mapping[str, Example], webhook_secret: str) -> None:
        self.flow = flow
        self.examples = examples
        self.webhook_secret = webhook_secret

    # -- starting runs ------------------------------------------------------------------------

    def start_workflow(
        self,
        workflow: str,
        body: bytes,
        idempotency_key: str | None,
        status_url: Callable[[str], str],
    ) -> Reply:
        """``POST /start/<workflow>``: the JSON body is the input; 202 with the run's URL."""
        try:
            data = parse_json_body(body)
        except ValueError as exc:
            return error_reply(400, str(exc))
        return self._start(workflow, data, idempotency_key, status_url)

    def start_example(
        self, key: str, idempotency_key: str | None, status_url: Callable[[str], str]
    ) -> Reply:
        """``POST /examples/<key>/start``: start one example with a fresh random tag."""
        example = self.examples.get(key)
        if example is None:
            known = ", ".join(self.examples) or "none"
            return error_reply(404, f"no example {key!r} (known: {known})")
        tag = uuid.uuid4().hex[:6]  # reruns against the same Redis / SQLite never collide
        extra = {"example": key, "approval": example.approval}
        return self._start(
            example.workflow, example.make_input(tag), idempotency_key, status_url, extra
        )

    def _start(
        self,
        workflow: str,
        data: Any,
        idempotency_key: str | None,
        status_url: Callable[[str], str],
        extra: Mapping[str, Any] | None = None,
    ) -> Reply:
        try:
            # get_workflow raises WorkflowNotFound with the list of known workflows.
            handle = self.flow.get_workflow(workflow).run(
                data, idempotency_key=idempotency_key or None
            )
        except WorkflowNotFound as exc:
            return error_reply(404, str(exc))
        except InputValidationError as exc:
            return error_reply(400, str(exc))
        except FlowConnectionError as exc:
            return error_reply(503, str(exc))
        started = {"run_id": handle.id, "workflow": handle.workflow}
        return json_reply(202, {**started, "status_url": status_url(handle.id), **(extra or {})})

    # -- the status page ----------------------------------------------------------------------

    def run_status(
        self,
        run_id: str,
        *,
        as_json: bool,
        approval_url: str,
        csrf_field: tuple[str, str] | None = None,
    ) -> Reply:
        """``GET /runs/<run_id>``: ``RunInfo`` as JSON, or the HTML status page.

        ``csrf_field`` is the ``(name, token)`` hidden field the framework wants in the
        approval form (Django's ``csrfmiddlewaretoken``); ``None`` adds none.
        """
        try:
            info = self.flow.get_run(run_id)
        except RunNotFound as exc:
            if as_json:
                return error_reply(404, str(exc))
            return self._page(404, "error.html", message=str(exc))
        except FlowConnectionError as exc:
            return error_reply(503, str(exc))
        if as_json:
            return json_reply(200, info.model_dump(mode="json"), VARY_ACCEPT)
        return self._page(
            200,
            "run.html",
            run=info,
            awaits_approval=awaits_event(info),
            approval_url=approval_url,
            csrf_field=csrf_field,
            dashboard_url=(os.environ.get(DASHBOARD_ENV) or "").rstrip("/"),
        )

    def _page(self, status: int, template: str, **context: Any) -> Reply:
        html = _JINJA.get_template(template).render(**context)
        return Reply(status, html, "text/html; charset=utf-8", VARY_ACCEPT)

    # -- approvals ----------------------------------------------------------------------------

    def approve(
        self,
        run_id: str,
        status_url: Callable[[str], str],
        *,
        json_body: bytes | None = None,
        form: Mapping[str, str] | None = None,
    ) -> Reply:
        """``POST /runs/<run_id>/approval``: send the ``approval`` event to the run.

        Pass the raw ``json_body`` of an API call (answered 202 JSON) or the ``form`` fields of
        the status page's form (answered with a 303 redirect back to the status page).
        """
        try:
            data = parse_json_body(json_body or b"") if form is None else form
            payload = parse_approval(data)
            self.flow.send_event(run_id, APPROVAL_EVENT, payload)
        except ValueError as exc:
            return error_reply(400, str(exc))
        except RunNotFound as exc:
            return error_reply(404, str(exc))
        except RunStateError as exc:  # the run already ended: too late to decide
            return error_reply(409, str(exc))
        except FlowConnectionError as exc:
            return error_reply(503, str(exc))
        if form is not None:
            return Reply(303, "", "text/plain", {"Location": status_url(run_id)})
        return json_reply(202, {"run_id": run_id, "event": APPROVAL_EVENT, **payload})

    # -- incoming webhooks --------------------------------------------------------------------

    def webhook(self, body: bytes, signature: str | None) -> Reply:
        """``POST /webhooks/flow``: verify the signature on the raw body, then record it.

        The signature covers the exact bytes sent, so it is checked before any parsing; a
        missing or wrong one is 401 and nothing is stored.
        """
        if not verify_signature(body, signature, self.webhook_secret):
            return error_reply(401, f"missing or invalid {SIGNATURE_HEADER} header")
        text = body.decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        fields = data if isinstance(data, dict) else {}
        with db.connect(WEBHOOK_SCHEMA) as conn:
            conn.execute(
                "INSERT INTO webhook_deliveries (received_at, run_id, dag, state, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    datetime.now(UTC).isoformat(),
                    _str_or_none(fields.get("run_id")),
                    _str_or_none(fields.get("dag")),
                    _str_or_none(fields.get("state")),
                    text,
                ),
            )
        return Reply(204, "", "text/plain")


def webhook_deliveries() -> list[dict[str, Any]]:
    """Every recorded webhook delivery, oldest first (for the demo and the tests)."""
    with db.connect(WEBHOOK_SCHEMA) as conn:
        rows = conn.execute("SELECT * FROM webhook_deliveries ORDER BY id").fetchall()
    return [dict(row) for row in rows]


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
