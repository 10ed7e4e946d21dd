"""Fixtures for the example project: a fresh import of it per test, on its own key prefix.

``example_project.proj`` reads ``REDIS_URL`` / ``EXAMPLE_PREFIX`` / ``EXAMPLE_DB`` at import,
so each test sets them, drops every ``example_project.*`` module and imports the project again:
its Flow, Celery queue and SQLite file are the test's own. Django's URL cache is cleared too,
so the Django front end re-imports its views (and with them the fresh project).

Override ``example_extra_env`` in a test module to set more environment variables before the
import (e.g. a faster cron expression).
"""

from __future__ import annotations

import importlib
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from celery import Celery

from celery_flow import Flow
from celery_flow.testing import start_flow_worker


@dataclass
class ExampleProject:
    proj: ModuleType  # example_project.proj, freshly imported
    app: Celery
    flow: Flow
    prefix: str
    db_path: Path
    redis: redis.Redis

    def module(self, name: str) -> ModuleType:
        """``example_project.proj.patterns.<name>`` of this import."""
        return importlib.import_module(f"example_project.proj.patterns.{name}")


def drop_example_modules() -> None:
    for name in [n for n in sys.modules if n.startswith("example_project.")]:
        del sys.modules[name]
    if "django.urls" in sys.modules:
        from django.urls import clear_url_caches

        clear_url_caches()


@pytest.fixture
def example_extra_env() -> dict[str, str]:
    return {}


@pytest.fixture
def example_project(
    flow_redis_url: str,
    flow_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    example_extra_env: dict[str, str],
) -> Iterator[ExampleProject]:
    """The example project imported on this test's prefix and SQLite file (no worker)."""
    db_path = tmp_path / "example.sqlite3"
    monkeypatch.setenv("REDIS_URL", flow_redis_url)
    monkeypatch.setenv("EXAMPLE_PREFIX", flow_prefix)
    monkeypatch.setenv("EXAMPLE_DB", str(db_path))
    for key, value in example_extra_env.items():
        monkeypatch.setenv(key, value)
    drop_example_modules()
    proj = importlib.import_module("example_project.proj")
    client = redis.Redis.from_url(flow_redis_url, decode_responses=True)
    try:
        yield ExampleProject(proj, proj.app, proj.flow, flow_prefix, db_path, client)
    finally:
        client.close()
        drop_example_modules()


@pytest.fixture
def example(example_project: ExampleProject) -> Iterator[ExampleProject]:
    """The example project with an embedded worker (threads x8) consuming its queue."""
    with start_flow_worker(example_project.app, pool="threads", concurrency=8):
        yield example_project


def wait_result(handle: Any, timeout: float = 30.0) -> Any:
    """``handle.result(timeout)``; a shorthand so tests read as the examples do."""
    return handle.result(timeout=timeout)


def query(example: ExampleProject, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` against the test's SQLite file."""
    with sqlite3.connect(example.db_path) as conn:
        return [tuple(row) for row in conn.execute(sql, args)]


def start_like_the_trigger(example: ExampleProject, key: str) -> Any:
    """What ``python -m example_project.trigger <key>`` does through a front end."""
    chosen = example.proj.patterns.EXAMPLES[key]
    return example.flow.run(chosen.workflow, chosen.make_input(uuid.uuid4().hex[:8]))
