"""The Celery app of the example project and its celery_flow ``Flow``.

Both web front ends (Django: :mod:`example_project.django_site`, Flask:
:mod:`example_project.flask_app`) and every worker import this one module.

Settings come from the environment *at import time*:

* ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``): the Celery broker, and the Redis that
  holds workflow state (``Flow`` finds it from the broker URL). The demo sets it to an embedded
  Redis when it is not set. A unix socket is spelled ``redis+socket:///path/redis.sock``.
* ``EXAMPLE_PREFIX`` (default ``example``): the key prefix of every workflow key and the name
  of the Celery queue, so the example never mixes with other data in a shared Redis database
  (the tests give every test its own prefix).
* ``EXAMPLE_WEBHOOK_SECRET``: the HMAC key of DAG webhooks and URL steps; the example's
  default is for local use only.
* ``EXAMPLE_DB`` (read per call by :mod:`example_project.proj.db`): the SQLite file of the
  examples that need data.

Run a worker of this project with ``celery -A example_project.proj worker``.
"""

from __future__ import annotations

import os

from celery import Celery

from celery_flow import Flow

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
PREFIX = os.environ.get("EXAMPLE_PREFIX") or "example"
WEBHOOK_SECRET = os.environ.get("EXAMPLE_WEBHOOK_SECRET") or "example-webhook-secret-dev-only"


app = Celery("example", broker=REDIS_URL)
app.conf.update(
    task_default_queue=PREFIX,  # a queue of our own, so a shared Redis db stays tidy
    worker_prefetch_multiplier=1,  # workflow tasks can be long: take one at a time
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

flow = Flow(app, prefix=PREFIX, webhook_secret=WEBHOOK_SECRET)  # run state in the broker's Redis
