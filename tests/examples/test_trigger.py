"""The second terminal command of the demo: every example, started through a real front end.

The Flask front end is served by werkzeug on a free port (as ``make demo`` serves it); the
trigger command posts ``/examples/<key>/start`` over HTTP, approves the approval example
through ``/runs/<id>/approval`` and waits until every run ends. This is the test that every
example of ``example_project/proj/patterns`` runs to completion.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from celery_flow.testing import free_port

from .conftest import ExampleProject

PATTERN_MODULES = {
    "welcome_batch",
    "order_saga",
    "dependency_graph",
    "payment",
    "video",
    "migration",
    "approval",
    "fulfilment",
    "sweep",
}


@pytest.fixture
def flask_url(example: ExampleProject) -> Iterator[str]:
    from werkzeug.serving import make_server

    from example_project.flask_app import create_app

    server = make_server("127.0.0.1", free_port(), create_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="flask-front", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def test_every_pattern_module_offers_at_least_one_example(example_project: ExampleProject):
    patterns = example_project.proj.patterns
    offering = {m.__name__.rsplit(".", 1)[-1] for m in patterns.MODULES if m.EXAMPLES}
    assert offering == PATTERN_MODULES
    for example in patterns.EXAMPLES.values():
        assert example.workflow in example_project.flow.workflows, example


def test_the_trigger_runs_every_example_to_success_through_the_flask_front_end(
    example: ExampleProject, flask_url: str, capsys: pytest.CaptureFixture[str]
):
    from example_project import trigger

    # When the trigger command starts every example through the front end
    code = trigger.main(["--url", flask_url, "--timeout", "90"])

    # Then it reports every example succeeded, and Redis agrees
    out = capsys.readouterr().out
    assert code == 0, out
    keys = list(example.proj.patterns.EXAMPLES)
    summary = out.split("\nsummary\n", 1)[1].splitlines()
    assert [line.split()[0] for line in summary] == keys
    assert all(line.split()[1] == "succeeded" for line in summary), out
    assert "approved through the front end" in out
    started = [line.split() for line in out.splitlines() if line.startswith("started ")]
    assert len(started) == len(keys)
    for _, key, workflow, status_url in started:
        run_id = status_url.rsplit("/", 1)[-1]
        info = example.flow.get_run(run_id)
        assert (info.workflow, info.status) == (workflow, "succeeded"), key


def test_the_trigger_names_unknown_examples_and_an_unreachable_front_end(
    example_project: ExampleProject, capsys: pytest.CaptureFixture[str]
):
    from example_project import trigger

    with pytest.raises(SystemExit) as exit_info:
        trigger.main(["no-such-example"])
    assert exit_info.value.code == 2
    assert "unknown example(s) no-such-example; choose from" in capsys.readouterr().err

    port = free_port()  # nothing listens there
    assert trigger.main(["--url", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}/examples/" in err and "is `make demo` running?" in err
