"""Leader-elected cron scheduler: replaces celery beat, runs in every worker node.

Every worker node (through the bootstep) and every ``Scheduler.run_forever()`` process
competes for one lease per app, ``lock:cron:<app id>``: a token set with SET NX PX and
renewed every ``lease_seconds / 3``, compare-and-set in ``cron_lease.lua``. Losing it (a
renewal that finds another token, or no successful renewal before the lease would have
expired) is a normal event: the node logs, steps down, and keeps trying to acquire.

The leader keeps the schedule in memory (a heap of next fire times), computed with
:mod:`celery_flow._cron` from Redis' clock. A due tick starts one run through
``Flow._start`` with the idempotency key ``cron:<entry id>:<fire ms>`` and
``skip_if_full=True``: one atomic enqueue script that dedups the tick across leaders (two
nodes that both believe they lead start it once) and skips it, writing nothing, when the
workflow is at ``max_concurrency``. A node that becomes leader computes every entry's next
fire time from *now*, and after each tick the next one is computed from now minus
``misfire_grace_seconds`` (1 s): a tick that fell due during a short stall of the leader
still fires (late), older ones are skipped. No catch-up burst after downtime.

Definitions come from ``cron:defs`` (written by ``Flow.sync_registry``), filtered to this
app, so a cron removed from the code stops once the registry's stale cleanup drops it.

Redis round trips:

* follower: 1 per ``min(1 s, lease / 4)`` (the acquire attempt; also right when the
  leader's lease lapses);
* idle leader: 1 per ``lease / 3`` (renew) + 1 per ``refresh_seconds`` (reload definitions);
* per tick batch: 1 per due entry (the enqueue script, plus one broker publish when it
  started a run) + 1 (renew the lease and record the batch's next fire times together).
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._cron import CronSpec, compile_spec, next_fire, to_datetime
from ._definitions import Cron
from ._models import CronStatus
from .errors import ConfigurationError, FlowConnectionError, FlowError, WorkflowDefinitionError

if TYPE_CHECKING:
    from ._flow import Flow

logger = logging.getLogger("celery_flow")


@dataclass
class _Entry:
    id: str
    workflow: str
    input: Any
    spec: CronSpec
    body: str  # the definition without its updated_at stamp: a change means "recompute"
    next_ms: int | None = None


class Scheduler:
    """The cron scheduler of one Flow: leader election plus the tick loop.

    Workers run one per node (started by the bootstep, next to the maintenance loop); a
    dedicated process can run one with :meth:`run_forever`. Any number may run: one leads.

    Args:
        flow: the Flow whose ``cron=`` entries it fires (only this ``app_id``'s entries).
        lease_seconds: leader lease TTL; a dead leader is replaced within about this long.
        node_id: shown as ``leader`` in ``Flow.cron_status()`` (default ``<host>:<pid>``; the
            bootstep passes the worker's hostname).
        refresh_seconds: how often the leader reloads definitions from Redis.

    Attributes:
        misfire_grace_seconds: after a tick, ticks that fell due within this long before now
            still fire (late) instead of being skipped (default 1 s: a short stall of the
            leader loses nothing, a long one causes no burst).
        counters: ticks ``fired``, ``skipped_full``, ``failed``; leadership ``acquired``/``lost``.

    Examples:
        >>> flow.scheduler.lease_seconds = 5   # each Flow has one: flow.scheduler
        >>> flow.scheduler.run_forever()       # blocks; stop() from another thread or a signal
    """

    def __init__(
        self,
        flow: Flow,
        *,
        lease_seconds: float = 10.0,
        node_id: str | None = None,
        refresh_seconds: float = 5.0,
    ) -> None:
        if not isinstance(lease_seconds, int | float) or lease_seconds < 0.3:
            raise ConfigurationError(
                f"Scheduler(lease_seconds={lease_seconds!r}): must be a number >= 0.3"
            )
        self.flow = flow
        self.lease_seconds = float(lease_seconds)
        self.refresh_seconds = refresh_seconds
        self.misfire_grace_seconds = 1.0
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}"
        self.counters = {"fired": 0, "skipped_full": 0, "failed": 0, "acquired": 0, "lost": 0}
        self._token = ""
        self._leader = False
        self._valid_until = 0.0  # monotonic: fire only before this (lease minus a margin)
        self._next_lease = 0.0  # monotonic: next acquire / renew round trip
        self._refresh_at = 0.0
        self._skew_ms = 0.0  # Redis clock minus ours
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[int, str]] = []
        self._pending: dict[str, int] = {}  # next fire times not yet recorded in cron:next
        self._warned: set[str] = set()
        self._ignored: dict[str, str] = {}  # entry id -> body of definitions not ours
        self._failing = False
        self._refs = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """True while this scheduler holds a valid leader lease."""
        return self._leader and time.monotonic() < self._valid_until

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, node_id: str | None = None) -> None:
        """Run the loop on a daemon thread (reference-counted, like the maintenance loop)."""
        with self._lock:
            self._refs += 1
            if self._thread is None:
                self.node_id = node_id or self.node_id
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="celery-flow-scheduler", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """Stop the loop (the last ``start`` reference, or ``run_forever``); release the lease."""
        with self._lock:
            if self._thread is not None:
                self._refs = max(0, self._refs - 1)
                if self._refs:
                    return
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def run_forever(self, *, sync_registry: bool = True) -> None:
        """Run the loop in this thread until :meth:`stop` (or Ctrl-C); release the lease.

        Args:
            sync_registry: write the registry (workflows and cron definitions) every minute,
                as a worker's maintenance loop does, so a scheduler-only process keeps its
                crons alive. Every scheduler writes it once when it starts.
        """
        self._stop.clear()
        try:
            self._loop(sync_every=60.0 if sync_registry else None)
        except KeyboardInterrupt:
            self._release()

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self, sync_every: float | None = None) -> None:
        self._token = f"{self.node_id}|{uuid.uuid4().hex[:12]}"
        self._leader, self._next_lease, self._entries, self._heap = False, 0.0, {}, []
        next_sync = 0.0
        while not self._stop.is_set():
            wait = 0.5
            try:
                if time.monotonic() >= next_sync:  # at start (then every sync_every s)
                    next_sync = time.monotonic() + (sync_every or float("inf"))
                    try:
                        self.flow.sync_registry()
                    except FlowConnectionError:
                        next_sync = time.monotonic() + 1.0  # Redis is down: retry soon
                        raise
                wait = self._step()
                if self._failing:
                    logger.warning("cron scheduler %s: Redis reachable again", self.node_id)
                self._failing = False
            except FlowConnectionError as exc:
                if not self._failing:
                    logger.warning("cron scheduler %s: %s; retrying", self.node_id, exc)
                self._failing = True
                self._next_lease = min(self._next_lease, time.monotonic() + 0.25)
                self._check_validity()
                wait = 0.25
            except Exception:
                logger.exception("cron scheduler %s: pass failed; continuing", self.node_id)
                wait = 1.0
            self._stop.wait(max(0.0, min(wait, 5.0)))
        self._release()

    def _step(self) -> float:
        """One pass: lease, definitions, due ticks. Returns seconds until the next pass."""
        if time.monotonic() >= self._next_lease:
            self._lease()
        self._check_validity()
        if not self._leader:
            return self._next_lease - time.monotonic()
        if time.monotonic() >= self._refresh_at:
            self._load_definitions()
        self._fire_due()
        if self._pending:
            self._lease()
        wait = min(self._next_lease, self._refresh_at) - time.monotonic()
        if self._heap:
            wait = min(wait, (self._heap[0][0] - self._now_ms()) / 1000)
        return wait

    def _now_ms(self) -> float:
        return time.time() * 1000 + self._skew_ms

    # -- lease ---------------------------------------------------------------------------------

    def _lease(self) -> None:
        sent, wall = time.monotonic(), time.time()
        record = sorted(self._pending.items()) if self._leader else []
        owned, now_ms, holder, left_ms = self.flow.store.cron_lease(
            self.flow.app_id, self._token, int(self.lease_seconds * 1000), record
        )
        got = time.monotonic()
        self._skew_ms = now_ms - (wall + (got - sent) / 2) * 1000
        if owned:
            self._valid_until = sent + self.lease_seconds - min(0.5, 0.1 * self.lease_seconds)
            self._next_lease = got + self.lease_seconds / 3
            for eid, ms in record:
                if self._pending.get(eid) == ms:
                    del self._pending[eid]
            if not self._leader:
                self._become_leader()
        else:
            if self._leader:
                self._step_down(f"the lease is held by {holder.rpartition('|')[0] or holder!r}")
            # poll every min(1 s, lease / 4), and right when the holder's lease lapses
            poll = min(1.0, self.lease_seconds / 4)
            self._next_lease = got + (min(poll, left_ms / 1000 + 0.002) if left_ms > 0 else poll)

    def _become_leader(self) -> None:
        self._leader = True
        self.counters["acquired"] += 1
        logger.info("cron scheduler %s: now the leader of app %r", self.node_id, self.flow.app_id)
        self._entries, self._heap, self._pending = {}, [], {}
        self._refresh_at = 0.0  # load definitions and compute every entry from now

    def _step_down(self, why: str) -> None:
        self._leader = False
        self.counters["lost"] += 1
        self._entries, self._heap, self._pending = {}, [], {}
        logger.warning("cron scheduler %s: stepped down as leader (%s)", self.node_id, why)

    def _check_validity(self) -> None:
        if self._leader and time.monotonic() >= self._valid_until:
            self._step_down("the lease could not be renewed in time")

    def _release(self) -> None:
        if not self._leader:
            return
        self._leader = False
        try:
            self.flow.store.cron_lease(self.flow.app_id, self._token, 0)
        except FlowConnectionError as exc:
            logger.warning("cron scheduler %s: could not release the lease: %s", self.node_id, exc)

    # -- definitions and ticks ------------------------------------------------------------------

    def _load_definitions(self) -> None:
        raw = self.flow.store.cron_defs()
        self._refresh_at = time.monotonic() + self.refresh_seconds
        now = self._now_ms()
        live: set[str] = set()
        for eid, text in raw.items():
            body = text.split(",", 1)[1] if text.startswith('{"updated_at":') else text
            old = self._entries.get(eid)
            if old is not None and old.body == body:
                live.add(eid)
                continue
            if self._ignored.get(eid) == body:
                continue  # another app's entry (or unreadable): parsed once
            entry = self._parse(eid, text, body)
            if entry is None:
                self._ignored[eid] = body
                continue
            live.add(eid)
            entry.next_ms = _next_ms(entry.spec, now)
            self._entries[eid] = entry
            self._schedule(entry)
        for eid in set(self._entries) - live:
            del self._entries[eid]
        self._ignored = {eid: b for eid, b in self._ignored.items() if eid in raw}

    def _parse(self, eid: str, text: str, body: str) -> _Entry | None:
        try:
            d = json.loads(text)
            if d.get("app_id") != self.flow.app_id:
                return None
            Cron(d["expression"], timezone=d["timezone"])  # validates (written by other code)
            spec = compile_spec(d["expression"], d["timezone"])
            return _Entry(eid, str(d["workflow"]), d.get("input"), spec, body)
        except (ValueError, KeyError, TypeError, AttributeError, WorkflowDefinitionError) as exc:
            self._warn_once(eid, "cron entry %s: unreadable definition (%s); skipped", eid, exc)
            return None

    def _schedule(self, entry: _Entry) -> None:
        if entry.next_ms is not None:
            heapq.heappush(self._heap, (entry.next_ms, entry.id))
            self._pending[entry.id] = entry.next_ms

    def _fire_due(self) -> None:
        while self._heap and self._heap[0][0] <= self._now_ms():
            due_ms, eid = self._heap[0]
            entry = self._entries.get(eid)
            if entry is None or entry.next_ms != due_ms:
                heapq.heappop(self._heap)  # superseded (definition changed or removed)
                continue
            if not self.is_leader:
                return  # the lease may have lapsed: never fire on a stale belief
            self._fire(entry, due_ms)  # a connection error propagates: the tick stays due
            heapq.heappop(self._heap)
            # ticks that fell due during a short stall still fire; older ones are skipped
            late_ok = self._now_ms() - self.misfire_grace_seconds * 1000
            entry.next_ms = _next_ms(entry.spec, max(late_ok, due_ms))
            self._schedule(entry)

    def _fire(self, entry: _Entry, fire_ms: int) -> None:
        """Start the tick's run. 1 round trip (+ 1 broker publish when a run was created)."""
        flow = self.flow
        wf = flow.workflows.get(entry.workflow)
        if wf is None:
            self._warn_once(
                entry.id,
                "cron entry %s: workflow %r is not registered in this process; its ticks are "
                "skipped while this node leads (deploy the code that defines it everywhere)",
                entry.id,
                entry.workflow,
            )
            return
        try:
            handle = flow._start(
                wf,
                entry.input,
                idempotency_key=f"cron:{entry.id}:{fire_ms}",
                idempotency_ttl=timedelta(seconds=max(60.0, 10 * self.lease_seconds)),
                run_at=None,
                delay=None,
                queue=None,
                skip_if_full=True,
            )
        except FlowConnectionError:
            raise
        except Exception as exc:  # bad input, a limit_key callable that raises, ...
            self.counters["failed"] += 1
            logger.error(
                "cron entry %s: tick %s of %r not started: %s",
                entry.id,
                to_datetime(fire_ms).isoformat(),
                entry.workflow,
                exc,
                exc_info=not isinstance(exc, FlowError),
            )
            return
        if handle is None:
            self.counters["skipped_full"] += 1
            logger.info(
                "cron entry %s: tick %s skipped, %r is at max_concurrency",
                entry.id,
                to_datetime(fire_ms).isoformat(),
                entry.workflow,
            )
        else:
            self.counters["fired"] += 1

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.error(msg, *args)


def _next_ms(spec: CronSpec, after_ms: float) -> int | None:
    nxt = next_fire(spec, after_ms / 1000)
    return None if nxt is None else nxt * 1000


# -- registry sync and status (called by Flow) -----------------------------------------------


def cron_status(flow: Flow) -> list[CronStatus]:
    """Every cron entry in this prefix (all apps) with its next fire time and leader."""
    defs, nxt, leaders, now_ms = flow.store.cron_overview()
    out: list[CronStatus] = []
    for eid, text in defs.items():
        try:
            d = json.loads(text)
            expression, timezone = str(d["expression"]), str(d["timezone"])
        except (ValueError, KeyError, TypeError):
            continue
        app_id = str(d.get("app_id", ""))
        holder = leaders.get(app_id)
        next_ms: float | None = nxt.get(eid)
        if holder is None or next_ms is None or next_ms < now_ms - 1000:
            # no leader (or not scheduled yet): what a leader elected now would compute
            try:
                next_ms = _next_ms(compile_spec(expression, timezone), now_ms)
            except Exception:
                next_ms = None
        out.append(
            CronStatus(
                id=eid,
                workflow=str(d.get("workflow", "")),
                expression=expression,
                timezone=timezone,
                app_id=app_id,
                next_fire_at=None if next_ms is None else to_datetime(int(next_ms)),
                leader=holder.rpartition("|")[0] or holder if holder else None,
            )
        )
    return sorted(out, key=lambda s: (s.workflow, s.id))
