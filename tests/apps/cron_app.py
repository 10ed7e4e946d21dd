"""A Celery app whose process runs only the cron scheduler (``python -m tests.apps.cron_app``).

Configured by environment: CF_TEST_REDIS (celery_flow's Redis URL, may carry an ACL user),
CF_TEST_PREFIX, CF_TEST_NODE (the node id shown as leader), CF_TEST_LEASE (scheduler lease
seconds). The broker is in-memory: these tests look at the runs the ticks create in Redis,
no worker executes them. SIGTERM stops the scheduler gracefully (it releases the lease).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from celery import Celery

from celery_flow import Cron, Flow

REDIS = os.environ["CF_TEST_REDIS"]
PREFIX = os.environ["CF_TEST_PREFIX"]

app = Celery("cron_app", broker="memory://")
app.conf.update(task_default_queue=PREFIX)
flow = Flow(app, redis_url=REDIS, prefix=PREFIX)
flow.scheduler.lease_seconds = float(os.environ.get("CF_TEST_LEASE", "2"))
flow.scheduler.node_id = os.environ.get("CF_TEST_NODE") or flow.scheduler.node_id


@flow.workflow(name="every-second", cron=Cron("* * * * * *", id="every-second"))
def every_second(ctx) -> None:
    return None


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s"
    )
    signal.signal(signal.SIGTERM, lambda *_: flow.scheduler.stop())
    print(f"scheduler {flow.scheduler.node_id} pid {os.getpid()} starting", flush=True)
    flow.scheduler.run_forever()
    print(f"scheduler {flow.scheduler.node_id} stopped cleanly", flush=True)


if __name__ == "__main__":
    main()
