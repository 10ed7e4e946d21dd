"""Celery worker bootstep: one maintenance loop and one cron scheduler per worker node.

It runs in the worker's parent process for every pool type (not in prefork
children), so a node runs one promoter/reaper and one scheduler candidate however
many processes it has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import bootsteps

if TYPE_CHECKING:
    from ._flow import Flow


def install_worker_step(flow: Flow) -> None:
    """Add a bootstep bound to ``flow`` to its app's worker blueprint."""

    class FlowWorkerStep(bootsteps.StartStopStep):  # type: ignore[misc]
        requires = {"celery.worker.components:Pool"}
        name = f"celery_flow.maintenance[{flow.prefix}]"

        _running = False

        def start(self, worker: Any) -> None:
            if not self._running:
                self._running = True
                flow.maintenance.start()
                flow.scheduler.start(node_id=getattr(worker, "hostname", None))

        def stop(self, worker: Any) -> None:
            # Celery may call stop, terminate and shutdown; release the loop once.
            if self._running:
                self._running = False
                flow.scheduler.stop()  # releases the leader lease: another node takes over now
                flow.maintenance.stop()

        terminate = stop
        shutdown = stop

    flow.app.steps["worker"].add(FlowWorkerStep)
