"""Run leases: one heartbeat thread per process renews every run it executes.

The heartbeat lives with the execution, not the worker bootstep (the bootstep
stops before in-flight tasks end on warm shutdown: see CELERY_NOTES.md). All
runs of a process are renewed in one pipelined round trip every
``lease_seconds / 3``. A renewal that finds the token changed marks the
execution lost: its next fenced write raises and it stops.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from .errors import FlowConnectionError

if TYPE_CHECKING:
    from ._engine import Execution
    from ._store import Store

logger = logging.getLogger("celery_flow")


class Heartbeat:
    def __init__(self, lease_ms: int) -> None:
        self.lease_ms = lease_ms
        self._active: dict[int, Execution] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._wake = threading.Event()

    def add(self, ex: Execution) -> None:
        with self._lock:
            self._active[id(ex)] = ex
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                # First run in this process (or after a fork): start this process's thread.
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._loop, name="celery-flow-heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, ex: Execution) -> None:
        with self._lock:
            self._active.pop(id(ex), None)

    def _loop(self) -> None:
        interval = self.lease_ms / 3000
        while True:
            self._wake.wait(interval)
            with self._lock:
                batch = list(self._active.values())
            if not batch:
                continue
            store: Store = batch[0].store
            try:
                results = store.renew_many(
                    [(ex.run_id, ex.limit_key, ex.token, ex.current_step) for ex in batch],
                    self.lease_ms,
                )
            except FlowConnectionError as exc:
                logger.warning("lease renewal failed: %s (the runs' leases may expire)", exc)
                continue
            with self._lock:
                # a run that finished while we renewed is no longer running: not a lost lease
                still = [id(ex) in self._active for ex in batch]
            for ex, active, (owned, cancel) in zip(batch, still, results, strict=True):
                if not active or ex.ending:
                    # it finished (or is writing its end) while we renewed: not a lost lease
                    continue
                if not owned:
                    ex.lost = True
                    ex.log.warning("lease lost: another execution owns this run now")
                if cancel:
                    ex.cancel_flag = True
