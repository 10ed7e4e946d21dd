"""The Celery app of the example project and its celery_flow ``Flow``.

Redis is read from the ``REDIS_URL`` environment variable *at import time* (default
``redis://127.0.0.1:6379/0``); the demo sets it before importing this module. The same
Redis is the Celery broker and holds the workflow state, under the key prefix ``example``.

A unix socket is spelled ``redis+socket:///path/redis.sock`` (kombu's broker spelling);
``Flow`` finds the same Redis from the broker URL, so no separate setting is needed.

Run a worker of this project with ``celery -A example_project.proj worker``.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_flow import Flow

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


app = Celery("example", broker=REDIS_URL)
app.conf.update(
    task_default_queue="example",  # a queue of our own, so a shared Redis db stays tidy
    worker_prefetch_multiplier=1,  # workflow tasks can be long: take one at a time
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

flow = Flow(app, prefix="example")  # run state in the broker's Redis
