"""Shared set-up of the browser tests: Debian's Chromium driven by Playwright, the dashboard.

Importing this module skips the importing test module when Chromium or Playwright is missing
(``apt-get install -y chromium``; ``.ci/run`` installs it). The ``browser`` and ``page``
fixtures live in tests/conftest.py and use :func:`launch`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from celery_flow import Flow
from celery_flow.dashboard import create_app
from celery_flow.testing import eventually, free_port

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UPDATE_SCREENSHOTS = bool(os.environ.get("CELERY_FLOW_UPDATE_SCREENSHOTS"))
"""Set ``CELERY_FLOW_UPDATE_SCREENSHOTS=1`` to rewrite the screenshots under docs/img/."""


@contextlib.contextmanager
def launch() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``)."""
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def serve_dashboard(flow: Flow) -> Iterator[str]:
    """The dashboard served by uvicorn on a free loopback port, in a background thread."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        create_app(flow), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    eventually(lambda: server.started, timeout=10, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
