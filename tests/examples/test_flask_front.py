"""The Flask front end (``example_project.flask_app``): what only it does, against a real Redis
and a real worker.

What both front ends must do (start, poll, status page, idempotency, examples by key, every
example to success, errors, the webhook's signature check) runs against Flask too,
parametrised over both front ends, in ``tests/examples/test_front_ends.py`` (its ``[flask]``
cases), through the adapter of ``tests/examples/frontends.py``; every example also runs
through Flask over real HTTP in ``tests/examples/test_trigger.py``.

Here: the approval form, posted without a token (Flask has no CSRF protection), and the app
served over real HTTP (werkzeug, in a thread, as the demo does) while a DAG delivers its
signed ``on_complete`` webhook to it.
"""

from __future__ import annotations

from werkzeug.serving import make_server

from tests.examples.conftest import ExampleProject
from tests.examples.frontends import (
    awaiting_approval,
    finish_approval_round_trip,
    make_front,
    run_webhook_dag,
    serving,
)


def test_approval_round_trip_form_and_json(example_project: ExampleProject) -> None:
    """The page's form, posted without a token (Flask has no CSRF protection), then JSON."""
    front = make_front("flask")
    with awaiting_approval(example_project, front) as (by_form, by_json):
        finish_approval_round_trip(front, by_form, by_json)


def test_dag_webhook_is_delivered_and_recorded(example_project: ExampleProject) -> None:
    """celery_flow signs a DAG's ``on_complete`` POST; the front end verifies and records it.

    The app is served over real HTTP by werkzeug in a thread, as the demo serves it.
    """
    from example_project.flask_app import create_app

    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    with serving(server) as url:
        run_webhook_dag(example_project, f"{url}/webhooks/flow")
