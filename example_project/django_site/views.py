"""Views of the Django front end: read the request, call :class:`example_project.web.FlowWeb`.

Every endpoint's logic lives in :mod:`example_project.web` (shared with the Flask front end);
these functions only read the request and build the ``HttpResponse``.

The project is imported here, at module level, as a user's views would: the Flow comes from
``example_project.proj`` and never from settings (settings are imported once per process;
this module is re-imported with the URLconf, e.g. by the tests, each time on a fresh project).

CSRF: ``start``, ``examples/<key>/start`` and the webhook are machine-to-machine JSON APIs
called with no browser session and no CSRF cookie (the webhook proves itself with its HMAC
signature instead), so they are ``csrf_exempt``. The approval endpoint serves both: a JSON
call is exempt, while the status page's HTML form goes through Django's CSRF check.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from example_project import web
from example_project.proj import flow
from example_project.proj.celery import WEBHOOK_SECRET
from example_project.proj.patterns import EXAMPLES

api = web.FlowWeb(flow, EXAMPLES, WEBHOOK_SECRET)


def _response(reply: web.Reply) -> HttpResponse:
    response = HttpResponse(reply.body, status=reply.status, content_type=reply.content_type)
    for name, value in reply.headers.items():
        response[name] = value
    return response


def _status_url(request: HttpRequest) -> Callable[[str], str]:
    """``run_id -> absolute URL of its status page`` (returned to API clients)."""
    return lambda run_id: request.build_absolute_uri(reverse("run-status", args=[run_id]))


def _status_path(run_id: str) -> str:
    return reverse("run-status", args=[run_id])


@csrf_exempt  # JSON API for machines (scripts, the trigger command): no cookie, no form
@require_POST
def start_workflow(request: HttpRequest, workflow: str) -> HttpResponse:
    """``POST /start/<workflow>``: start a run with the JSON body as input."""
    key = request.headers.get(web.IDEMPOTENCY_HEADER)
    return _response(api.start_workflow(workflow, request.body, key, _status_url(request)))


@csrf_exempt  # JSON API for machines, like start_workflow
@require_POST
def start_example(request: HttpRequest, key: str) -> HttpResponse:
    """``POST /examples/<key>/start``: start one of the project's examples."""
    idempotency_key = request.headers.get(web.IDEMPOTENCY_HEADER)
    return _response(api.start_example(key, idempotency_key, _status_url(request)))


@require_GET
def run_status(request: HttpRequest, run_id: str) -> HttpResponse:
    """``GET /runs/<run_id>``: the HTML status page, or the run as JSON."""
    as_json = web.wants_json(request.headers.get("Accept"), request.GET.get("format"))
    reply = api.run_status(
        run_id,
        as_json=as_json,
        approval_url=reverse("run-approval", args=[run_id]),
        # The approval form posts this token back; get_token also sets the CSRF cookie.
        csrf_field=None if as_json else ("csrfmiddlewaretoken", get_token(request)),
    )
    return _response(reply)


@csrf_exempt  # the JSON branch is an API call; the form branch is CSRF-checked below
@require_POST
def approval(request: HttpRequest, run_id: str) -> HttpResponse:
    """``POST /runs/<run_id>/approval``: a JSON API call, or the status page's HTML form.

    Skipping the CSRF check for ``Content-Type: application/json`` is safe: a cross-site HTML
    form cannot send that content type, and a cross-site ``fetch`` with it needs a CORS
    preflight this site never grants. Anything else is treated as a form and CSRF-checked.
    """
    if web.is_json(request.content_type):
        return _response(api.approve(run_id, _status_path, json_body=request.body))
    return _approval_form(request, run_id)


@csrf_protect
def _approval_form(request: HttpRequest, run_id: str) -> HttpResponse:
    """The HTML form branch of :func:`approval`; 403 without a valid CSRF token."""
    return _response(api.approve(run_id, _status_path, form=request.POST))


@csrf_exempt  # called by celery_flow workers, authenticated by the HMAC signature instead
@require_POST
def webhook(request: HttpRequest) -> HttpResponse:
    """``POST /webhooks/flow``: a signed DAG notification; recorded when the signature is good."""
    return _response(api.webhook(request.body, request.headers.get(web.SIGNATURE_HEADER)))
