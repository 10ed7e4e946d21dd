"""Shared fixtures: a real Redis (celery_flow.testing), a fresh Celery app + Flow per test."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from celery import Celery

from celery_flow import Flow
from celery_flow.testing import start_flow_worker


def make_celery(broker: str, prefix: str, **conf: Any) -> Celery:
    app = Celery(f"app-{prefix}", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=prefix,  # a queue per test: no stray messages between tests
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        **conf,
    )
    return app


@dataclass
class Env:
    app: Celery
    flow: Flow
    redis: redis.Redis
    prefix: str
    workers: list[Any] = field(default_factory=list)

    @contextlib.contextmanager
    def worker(self, pool: str = "threads", concurrency: int = 4, **kw: Any) -> Iterator[Any]:
        with start_flow_worker(self.app, pool=pool, concurrency=concurrency, **kw) as w:
            yield w

    def keys(self) -> list[str]:
        return sorted(self.redis.scan_iter(f"{self.prefix}:*"))


@pytest.fixture
def env(flow_redis_url: str, flow_prefix: str) -> Iterator[Env]:
    app = make_celery(flow_redis_url, flow_prefix)
    flow = Flow(app, redis_url=flow_redis_url, prefix=flow_prefix, lease_seconds=2.0)
    client = redis.Redis.from_url(flow_redis_url, decode_responses=True)
    yield Env(app, flow, client, flow_prefix)
    client.close()


@pytest.fixture
def proc_flow(flow_redis_url, flow_prefix, monkeypatch):
    """Import the subprocess app in this process too (same prefix) to start runs."""

    def load(broker: str) -> Any:
        monkeypatch.setenv("CF_TEST_BROKER", broker)
        monkeypatch.setenv("CF_TEST_REDIS", flow_redis_url)
        monkeypatch.setenv("CF_TEST_PREFIX", flow_prefix)
        sys.modules.pop("tests.apps.proc_app", None)
        import tests.apps.proc_app as mod

        return mod

    yield load
    sys.modules.pop("tests.apps.proc_app", None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for the browser tests (their modules import tests.browser, which
    skips them when Chromium or Playwright is missing)."""
    from tests.browser import launch

    with launch() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()
