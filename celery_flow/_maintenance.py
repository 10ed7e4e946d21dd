"""Per-worker-node background loop: timer promoter, lease reaper, republisher, purge.

Every worker node runs one (started by the bootstep); running several is safe
because every claim is an atomic Lua script, so a run is published once.

Round trips per pass: promoter 1 (+2 and a pipeline of claims when timers are
due); reaper 1 per ``min(1 s, lease/4)`` (+2 and a pipeline when leases
expired); gate sweeper 1 per second (+1 pipeline when gates have waiters);
republisher 1 per 5 s; purge 1 per terminal status per minute. A pipeline of
scripts costs 2 round trips (redis-py checks ``SCRIPT EXISTS`` first).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ._admin import purge_runs
from .errors import FlowConnectionError

if TYPE_CHECKING:
    from ._flow import Flow
    from ._store import Claimed

logger = logging.getLogger("celery_flow")
_BATCH = 500
_MAX_TIMER_WAIT = 0.1


class Maintenance:
    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self._refs = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.purge_backlog = False  # the last purge pass left a full batch: run again soon
        self.counters = {
            "promoted": 0,
            "recovered": 0,
            "republished": 0,
            "purged": 0,
            "handed_off": 0,
        }

    def start(self) -> None:
        with self._lock:
            self._refs += 1
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="celery-flow-maintenance", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._refs = max(0, self._refs - 1)
            if self._refs or self._thread is None:
                return
            self._stop.set()
            thread, self._thread = self._thread, None
        thread.join(timeout=5)

    def _publish(self, claimed: list[Claimed], counter: str) -> None:
        self.flow._publish_claimed(claimed)
        self.counters[counter] += len(claimed)

    def promote(self) -> float:
        """Queue due timers. Returns seconds until the next known timer (capped)."""
        store = self.flow.store
        ids, nxt, now = store.due(store.keys.timers, _BATCH)
        self._publish(store.claim_due(ids), "promoted")
        if len(ids) == _BATCH:
            return 0.0
        # Timers added by other processes while we sleep are found on the next pass, so the
        # cadence bounds their lateness: at most 100 ms (10 cheap round trips/s per node).
        return (
            _MAX_TIMER_WAIT if nxt is None else max(0.0, min(_MAX_TIMER_WAIT, (nxt - now) / 1000))
        )

    def reap(self) -> None:
        """Re-queue runs whose lease expired (crashed or frozen workers)."""
        store = self.flow.store
        ids, _, _ = store.due(store.keys.running, _BATCH)
        claimed = store.claim_expired(ids)
        for c in claimed:
            logger.warning(
                "run %s (%s): lease expired, re-queued for recovery",
                c.run_id,
                c.workflow,
                extra={"run_id": c.run_id, "workflow": c.workflow, "step": None},
            )
        self._publish(claimed, "recovered")

    def republish(self) -> None:
        """Publish again queued runs whose message seems lost (publisher died, broker lost it)."""
        store = self.flow.store
        age = int(self.flow.republish_after * 1000)
        ids, _, _ = store.due(store.keys.queued, _BATCH, age)
        self._publish(store.claim_stale_queued(ids, age), "republished")

    def sweep_gates(self) -> None:
        """Hand gate slots freed without a release (lapsed reservations) to waiters."""
        self._publish(self.flow.store.sweep_gates(), "handed_off")

    def purge(self) -> int:
        """Delete terminal runs older than the retention period, index entries included.

        One batch per terminal status per pass, so a large backlog never stalls the timers;
        while a pass leaves a status with a full batch, the next pass follows one second later
        instead of a minute, so purging keeps pace with hundreds of finished runs a second.
        """
        backlog: list[str] = []
        total = purge_runs(self.flow, self.flow.retention_ms, max_batches=1, backlog=backlog)
        self.purge_backlog = bool(backlog)
        self.counters["purged"] += total
        return total

    def _loop(self) -> None:
        flow = self.flow
        reap_every = min(1.0, flow.lease_seconds / 4)
        due = {"reap": 0.0, "gates": 0.0, "republish": 0.0, "purge": 0.0, "sync": 0.0}
        every = {"reap": reap_every, "gates": 1.0, "republish": 5.0, "purge": 60.0, "sync": 60.0}
        jobs = {
            "reap": self.reap,
            "gates": self.sweep_gates,
            "republish": self.republish,
            "purge": self.purge,
            "sync": flow.sync_registry,
        }
        failing = False
        while not self._stop.is_set():
            wait = 0.25
            try:
                wait = self.promote()
                now = time.monotonic()
                for name, job in jobs.items():
                    if now >= due[name]:
                        job()
                        backlog = name == "purge" and self.purge_backlog
                        due[name] = now + (1.0 if backlog else every[name])
                if failing:
                    logger.warning("celery_flow maintenance: Redis reachable again")
                failing = False
            except FlowConnectionError as exc:
                if not failing:
                    logger.error("celery_flow maintenance: %s; retrying every second", exc)
                failing, wait = True, 1.0
            except Exception:
                logger.exception("celery_flow maintenance pass failed; continuing")
                wait = 1.0
            self._stop.wait(max(wait, 0.01))
