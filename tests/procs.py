"""Helpers for tests that run real `celery worker` subprocesses (tests/apps/proc_app.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AMQP_URL = os.environ.get("CELERY_FLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def amqp_available() -> bool:
    host_port = AMQP_URL.split("@")[-1].split("/")[0]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 5672)), timeout=1):
            return True
    except OSError:
        return False


def ensure_amqp() -> None:
    """Use the local RabbitMQ; try to start one if installed; else skip with the reason."""
    if amqp_available():
        return
    if subprocess.run(["which", "rabbitmq-server"], capture_output=True).returncode == 0:
        subprocess.run(["rabbitmq-server", "-detached"], capture_output=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not amqp_available():
            time.sleep(1)
    if not amqp_available():
        pytest.skip(
            f"no RabbitMQ reachable at {AMQP_URL} and none could be started here; "
            "set CELERY_FLOW_TEST_AMQP_URL to run the amqp:// broker tests"
        )


@contextmanager
def celery_worker(
    broker: str, redis_url: str, prefix: str, pool: str, concurrency: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    """A `celery worker` subprocess for tests/apps/proc_app.py."""
    env = dict(
        os.environ,
        CF_TEST_BROKER=broker,
        CF_TEST_REDIS=redis_url,
        CF_TEST_PREFIX=prefix,
        PYTHONPATH=str(ROOT),
    )
    name = f"{prefix}-{pool}-{time.monotonic_ns()}"
    with spawn_worker("tests.apps.proc_app", env, name, pool, concurrency) as proc:
        yield proc


@contextmanager
def spawn_worker(
    app: str, env: dict[str, str], name: str, pool: str = "threads", concurrency: int = 4
) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A <app> worker` in its own process group, logging to $TMPDIR/<name>.log.

    Stopped with SIGTERM (warm shutdown), then SIGKILL of the whole group after 4 s.
    """
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool),
            *("-c", str(concurrency), "--loglevel", "INFO", "--without-gossip"),
            *("--without-mingle", "--without-heartbeat", "-n", f"{name}@%h"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(4)  # amqp warm shutdown idles ~10 s in solo/threads pools
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()
