"""The Django front end (``example_project.django_site``): what only it does, against a real
Redis and a real worker.

What both front ends must do (start, poll, status page, idempotency, examples by key, every
example to success, errors, the webhook's signature check) runs against Django too,
parametrised over both front ends, in ``tests/examples/test_front_ends.py`` (its ``[django]``
cases), through the adapter of ``tests/examples/frontends.py``.

Here: CSRF (the JSON endpoints are exempt, the HTML approval form is not), through
``django.test.Client`` with CSRF checks on; and the Django WSGI application and the Flask app
served over real HTTP in one process, as the demo does. Flask's own tests are in
``tests/examples/test_flask_front.py``.
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from werkzeug.serving import make_server as make_werkzeug_server

from tests.examples.conftest import ExampleProject
from tests.examples.frontends import (
    WEBHOOK_DAG,
    awaiting_approval,
    finish_approval_round_trip,
    make_front,
    run_webhook_dag,
    serving,
    waiting_for_event,
)

# -- approvals and CSRF (Django) ----------------------------------------------------------------


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "the approval form has no CSRF token"
    return match.group(1)


def test_approval_round_trip_with_csrf(example_project: ExampleProject) -> None:
    """JSON endpoints need no CSRF token; the HTML form is refused without one, then works."""
    front = make_front("django", enforce_csrf=True)
    # Started through the JSON API (no token needed); their status pages offer the form, with
    # the token (and set the CSRF cookie).
    with awaiting_approval(example_project, front) as (by_form, by_json):
        approval_path = f"/runs/{by_form}/approval"

        # A form post without the token (a cross-site form would look like this: the browser
        # sends the cookie, never the token) is refused.
        forged = front.post_form(approval_path, {"approved": "true", "by": "mallory"})
        assert forged.status == 403
        assert waiting_for_event(front.run_json(by_form))  # the run never heard of it

        html = front.get(f"/runs/{by_form}").text
        assert "csrftoken" in front.client.cookies
        # The form with the token is a 303; the JSON API works without a token.
        finish_approval_round_trip(
            front, by_form, by_json, {"csrfmiddlewaretoken": csrf_token(html)}
        )


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
    assert seen[0] == seen[1]
    assert (seen[0]["workflow"], seen[0]["status"]) == (WEBHOOK_DAG, "succeeded")
