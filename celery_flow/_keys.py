"""Every Redis key celery_flow uses, built in one place.

All keys start with ``<prefix>:``. Run-scoped keys put the run id in a hash
tag (``{<id>}``) so a future Redis Cluster mode can keep one run's keys in one
slot. Times stored as scores are milliseconds of the Redis server clock.

Keys (type; what it holds; who writes it; TTL):

* ``run:{id}`` (hash): the run record (status, input, token, ...); enqueue and every
  transition; TTL ``retention`` + 15 min once terminal (the purge deletes it at ``retention``).
* ``run:{id}:steps`` (hash): step name -> JSON step record; record_step; same TTL.
* ``run:{id}:done`` (list): one element once terminal; result() waiters block on it
  with BLMOVE (a rotation, so every waiter wakes); same TTL.
* ``run:{id}:events`` (hash): event type -> JSON array of buffered payloads; send_event,
  suspend (consumes); same TTL.
* ``run:{id}:children`` (set): ids of the run's child runs; enqueue of a child; same TTL.
* ``run:{id}:maps`` (hash): ``<step>\x1f<i|r|e>\x1f<index>`` -> item / result / error JSON of
  ``ctx.step.map`` items, plus ``<step>\x1f<n|chunks|done|errors>`` counters; same TTL.
* ``run:{id}:mapdone`` (set): ``<step>\x1f<chunk index>`` of finished chunks (idempotent fan-in).
* ``runs:created`` (zset): run id -> created ms; enqueue, purge_run.
* ``runs:status:<status>`` (zset): run id -> ms it entered that status; every transition.
* ``wf:<name>:runs`` (zset): run id -> created ms; enqueue, purge_run.
* ``running`` (zset): run id -> lease deadline ms; start, renew; read by the reaper.
* ``timers`` (zset): run id -> due ms (run_at, retry backoff); read by the promoter.
* ``queued`` (zset): run id -> last publish ms; read by the republisher.
* ``idem:<wf>:<key>`` (string): run id; enqueue; TTL ``idempotency_ttl``.
* ``gate:<limit key>`` (zset): slot holder run id -> slot lease deadline ms (max_concurrency);
  admission, start, renew, release.
* ``gate:<limit key>:waiting`` (zset): run id -> created ms, runs waiting for a slot (FIFO).
* ``gates`` (set): limit keys with waiting runs; read by the gate sweeper.
* ``rate:<limit key>`` (string): GCRA theoretical arrival time in ms (rate_limit).
* ``cron:next`` (zset): cron entry id -> next fire ms; written by the scheduler leader.
* ``cron:defs`` (hash): cron entry id -> JSON definition (workflow, expression, timezone,
  input, app_id, updated_at); sync_registry.
* ``lock:cron:<app_id>`` (string): that app's scheduler leader token (``<node>|<random>``),
  SET NX PX; renewed by the leader. One leader per app: a leader can only start workflows
  its own code registers.
* ``workflows`` (set): registered workflow names; sync_registry.
* ``workflow:<name>`` (hash): workflow metadata (app_id, queue, limits, cron); sync_registry.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUSES: tuple[str, ...] = (
    "scheduled",
    "queued",
    "running",
    "waiting",
    "succeeded",
    "failed",
    "canceled",
)
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class Keys:
    """Key builder for one prefix; two prefixes never share a key."""

    prefix: str

    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}"

    def steps(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:steps"

    def done(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:done"

    def events(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:events"

    def children(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:children"

    def maps(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:maps"

    def mapdone(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:mapdone"

    @property
    def created(self) -> str:
        return f"{self.prefix}:runs:created"

    def status(self, status: str) -> str:
        return f"{self.prefix}:runs:status:{status}"

    def workflow_runs(self, workflow: str) -> str:
        return f"{self.prefix}:wf:{workflow}:runs"

    @property
    def running(self) -> str:
        return f"{self.prefix}:running"

    @property
    def timers(self) -> str:
        return f"{self.prefix}:timers"

    @property
    def queued(self) -> str:
        return f"{self.prefix}:queued"

    def idempotency(self, workflow: str, key: str) -> str:
        return f"{self.prefix}:idem:{workflow}:{key}"

    @property
    def workflows(self) -> str:
        return f"{self.prefix}:workflows"

    def workflow(self, name: str) -> str:
        return f"{self.prefix}:workflow:{name}"

    def gate(self, limit_key: str) -> str:
        return f"{self.prefix}:gate:{limit_key}"

    def gate_waiting(self, limit_key: str) -> str:
        return f"{self.prefix}:gate:{limit_key}:waiting"

    @property
    def gates(self) -> str:
        return f"{self.prefix}:gates"

    def rate(self, limit_key: str) -> str:
        return f"{self.prefix}:rate:{limit_key}"

    @property
    def cron_next(self) -> str:
        return f"{self.prefix}:cron:next"

    @property
    def cron_defs(self) -> str:
        return f"{self.prefix}:cron:defs"

    def cron_lock(self, app_id: str) -> str:
        return f"{self.prefix}:lock:cron:{app_id}"

    def run_keys(self, run_id: str, limit_key: str) -> list[str]:
        """The 21 leading KEYS of every per-run script, in ``_prelude.lua``'s order."""
        return [
            self.run(run_id),
            self.steps(run_id),
            self.running,
            self.timers,
            self.queued,
            self.done(run_id),
            *(self.status(s) for s in STATUSES),
            self.gate(limit_key),
            self.gate_waiting(limit_key),
            self.gates,
            self.rate(limit_key),
            self.events(run_id),
            self.children(run_id),
            self.maps(run_id),
            self.mapdone(run_id),
        ]
