"""Flow: the extension object that binds a Celery app to celery_flow's Redis state."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, overload

import celery

from . import _admin, _serde
from ._batch import Batch, Page, build_batch
from ._bootsteps import install_worker_step
from ._cron import cron_definitions, entry_id
from ._definitions import (
    Cron,
    Retries,
    check_name,
    parse_rate,
    to_seconds,
)
from ._engine import FailureContext, execute
from ._handle import RunHandle, _not_found
from ._ids import new_run_id, run_at_ms
from ._lease import Heartbeat
from ._maintenance import Maintenance
from ._models import CronStatus, GateStatus, RunInfo, RunPage, run_info_from_hash
from ._scheduler import Scheduler, cron_status
from ._store import Claimed, Store, redact, redis_url_of
from ._workflow import UNSET, Workflow, build_workflow
from .errors import (
    ConfigurationError,
    RunNotFound,
    WorkflowDefinitionError,
    WorkflowNotFound,
)

if TYPE_CHECKING:
    from ._dag import Dag, DagStep, DagWorkflow
    from ._dag_status import WorkflowStatus

R = TypeVar("R")
logger = logging.getLogger("celery_flow")
REGISTRY_GRACE_MS = 30_000
PURGE_GRACE_MS = 15 * 60_000
# Every task celery_flow registers: acked after it ran (a crash redelivers it), requeued when
# a child process dies, no result backend (the run hash is the result), JSON only.
TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "serializer": "json",
    "shared": False,
    "typing": False,
}


class Flow:
    """Durable workflows on a Celery app; state lives in Redis.

    Args:
        app: the Celery app whose workers execute the runs.
        redis_url: Redis for run state. Default: ``app.conf.flow_redis_url``, then the
            ``CELERY_FLOW_REDIS_URL`` environment variable, then the broker URL when it is
            ``redis://``, ``rediss://`` or ``redis+socket://``.
        prefix: every key starts with it; two prefixes never see each other.
        app_id: ownership scope for registry stale cleanup (default: ``app.main``).
        lease_seconds: run lease TTL; a crashed worker's run is recovered after it.
        retention: terminal runs (and their steps) are deleted after this.
        webhook_secret: HMAC key for outgoing webhooks and URL steps.
        max_payload_bytes: largest JSON input / output / step result accepted.
        republish_after: seconds after which a queued run whose message never started it is
            published again (lost publish, broker restart). Duplicates are harmless no-ops.

    Examples:
        >>> app = Celery("proj", broker="redis://127.0.0.1:6379/0")
        >>> flow = Flow(app)
        >>> @flow.workflow()
        ... def greet(ctx, name: str) -> str:
        ...     return ctx.step.run("hello", lambda: f"hello {name}")
    """

    def __init__(
        self,
        app: celery.Celery,
        *,
        redis_url: str | None = None,
        prefix: str = "celery_flow",
        app_id: str | None = None,
        lease_seconds: float = 10.0,
        retention: timedelta = timedelta(days=7),
        webhook_secret: str | None = None,
        max_payload_bytes: int = 1 << 20,
        republish_after: float = 300.0,
    ) -> None:
        check_name(prefix, what="Flow prefix")
        if not isinstance(lease_seconds, int | float) or lease_seconds < 0.3:
            raise ConfigurationError(f"lease_seconds={lease_seconds!r}: must be a number >= 0.3")
        if not isinstance(retention, timedelta) or retention.total_seconds() <= 0:
            raise ConfigurationError(f"retention={retention!r}: must be a positive timedelta")
        self.app = app
        self.prefix = prefix
        self._redis_url = redis_url
        self._app_id = app_id
        self.lease_seconds = float(lease_seconds)
        self.lease_ms = int(lease_seconds * 1000)
        self.retention = retention
        self.retention_ms = int(retention.total_seconds() * 1000)
        # Terminal runs carry a TTL of retention + grace as a safety net; the maintenance purge
        # deletes them (and their index entries, which need the run's hash) at retention.
        self.expire_ms = self.retention_ms + PURGE_GRACE_MS
        self.webhook_secret = webhook_secret
        self.max_payload_bytes = max_payload_bytes
        self.republish_after = republish_after
        self._registry: dict[str, Workflow[Any]] = {}
        self._store: Store | None = None
        self._store_lock = threading.Lock()
        self.heartbeat = Heartbeat(self.lease_ms)
        self.maintenance = Maintenance(self)
        self.scheduler = Scheduler(self)  # replace to tune: Scheduler(flow, lease_seconds=5)
        install_worker_step(self)
        self.batches: dict[str, Batch] = {}
        self.dags: dict[str, Dag] = {}
        self.map_task_name = f"celery_flow.map_chunk.{prefix}"
        self._register_map_task()
        app.celery_flow = self  # lets the CLI and tooling find the Flow of an app

    # -- configuration ------------------------------------------------------------------------

    @property
    def app_id(self) -> str:
        return self._app_id or self.app.main or "default"

    @property
    def redis_url(self) -> str:
        """The Redis URL in use (resolved on first use, so app config may come later)."""
        if self._redis_url:
            return self._redis_url
        conf = self.app.conf
        url = conf.get("flow_redis_url") or os.environ.get("CELERY_FLOW_REDIS_URL")
        broker = conf.broker_url
        if not url and isinstance(broker, str):
            url = redis_url_of(broker)
        if not url:
            raise ConfigurationError(
                f"celery_flow needs Redis for run state, and the broker ({redact(str(broker))}) "
                "is not Redis: pass Flow(app, redis_url='redis://host:6379/0'), or set "
                "app.conf.flow_redis_url or the CELERY_FLOW_REDIS_URL environment variable."
            )
        self._redis_url = url
        return url

    def use_redis(self, url: str) -> None:
        """Point this Flow at another Redis before first use (e.g. an embedded one).

        Raises:
            ConfigurationError: the Flow already connected to Redis.
        """
        if self._store is not None:
            raise ConfigurationError(
                f"Flow already uses {redact(self._store.url)}; call use_redis() before any run "
                "is started or read"
            )
        self._redis_url = url

    def purge(self, older_than: timedelta) -> int:
        """Delete terminal runs that ended more than ``older_than`` ago; returns how many.

        Workers also purge on their own at ``retention``; this is for a shorter horizon.
        """
        seconds = to_seconds(older_than, what="older_than")
        return _admin.purge_runs(self, int((seconds or 0) * 1000))

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = Store(self.redis_url, self.prefix)
        return self._store

    # -- definitions --------------------------------------------------------------------------

    @overload
    def workflow(self, fn: Callable[..., R]) -> Workflow[R]: ...

    @overload
    def workflow(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_concurrency: int | None = None,
        rate_limit: str | None = None,
        limit_key: str | Callable[[Any], str] | None = None,
        retries: Retries | None = None,
        timeout: timedelta | float | None = None,
        cron: Cron | list[Cron] | tuple[Cron, ...] | None = None,
        schema: Any = UNSET,
        on_failure: Callable[[FailureContext], Any] | None = None,
    ) -> Callable[[Callable[..., R]], Workflow[R]]: ...

    def workflow(
        self,
        fn: Callable[..., R] | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_concurrency: int | None = None,
        rate_limit: str | None = None,
        limit_key: str | Callable[[Any], str] | None = None,
        retries: Retries | None = None,
        timeout: timedelta | float | None = None,
        cron: Cron | list[Cron] | tuple[Cron, ...] | None = None,
        schema: Any = UNSET,
        on_failure: Callable[[FailureContext], Any] | None = None,
    ) -> Workflow[R] | Callable[[Callable[..., R]], Workflow[R]]:
        """Register ``def handler(ctx, input)`` as a durable workflow (see API.md section 2).

        Every argument is validated here, so a mistake fails at import time. The workflow gets
        one Celery task, ``celery_flow.<name>``, routed to ``queue``.

        Examples:
            >>> @flow.workflow(name="process-order", retries=Retries(max_attempts=3))
            ... def process_order(ctx, order: OrderIn) -> dict:
            ...     return ctx.step.run("charge", charge, order.order_id)
        """

        def decorate(f: Callable[..., R]) -> Workflow[R]:
            return self._register(
                f,
                name=name,
                queue=queue,
                max_concurrency=max_concurrency,
                rate_limit=rate_limit,
                limit_key=limit_key,
                retries=retries,
                timeout=timeout,
                cron=cron,
                schema=schema,
                on_failure=on_failure,
            )

        return decorate(fn) if fn is not None else decorate

    def _register(
        self, fn: Callable[..., R], *, cls: type[Workflow[Any]] = Workflow, **opts: Any
    ) -> Workflow[R]:
        if not callable(fn):
            raise WorkflowDefinitionError(f"@flow.workflow must decorate a function, got {fn!r}")
        name = check_name(opts["name"] or fn.__name__.replace("_", "-"))
        if name in self._registry:
            raise WorkflowDefinitionError(
                f"workflow {name!r} is already registered (by {self._registry[name].fn!r}); "
                "give one of them another name=."
            )
        wf: Workflow[R] = build_workflow(self, fn, name, opts, cls)
        flow = self

        def run_task(run_id: str, token: str, limit_key: str | None = None) -> str:
            return execute(flow, wf, run_id, token, limit_key)

        # Celery builds a Python signature from __name__: keep it an identifier.
        run_task.__name__ = run_task.__qualname__ = "workflow_" + "".join(
            c if c.isalnum() else "_" for c in name
        )
        run_task.__doc__ = f"Executes runs of the celery_flow workflow {name!r}."
        task_opts: dict[str, Any] = dict(TASK_OPTIONS, name=wf.task_name)
        if wf.queue:
            task_opts["queue"] = wf.queue
        self.app.task(**task_opts)(run_task)
        self._registry[name] = wf
        return wf

    def batch(
        self,
        name: str,
        *,
        execute: Workflow[Any],
        source: Callable[[Any, int], Page],
        needs_processing: Callable[[list[Any]], Any] | None = None,
        page_size: int = 50,
        chunk_size: int = 20,
    ) -> Batch:
        """Define a process → paginate → execute batch (API.md section 7).

        ``source(cursor, limit) -> Page`` walks the data by cursor (``None`` first);
        ``needs_processing(ids) -> ids`` filters already-done items; ``execute`` is the
        one-item workflow (its ``max_concurrency`` / ``rate_limit`` apply).

        Examples:
            >>> welcome = flow.batch("welcome", execute=generate_user, source=users_page,
            ...                      needs_processing=without_placeholder, page_size=50)
            >>> welcome.process(dry_run=True).result(timeout=60)["to_process"]
        """
        return build_batch(
            self,
            name,
            execute=execute,
            source=source,
            needs_processing=needs_processing,
            page_size=page_size,
            chunk_size=chunk_size,
        )

    def _register_map_task(self) -> None:
        from ._fanout import run_chunk

        flow = self

        def map_chunk(
            run_id: str,
            limit_key: str,
            step: str,
            chunk: int,
            chunk_size: int,
            ref: dict[str, str],
            retries: dict[str, Any] | None = None,
        ) -> str:
            return run_chunk(flow, run_id, limit_key, step, chunk, chunk_size, ref, retries)

        self.app.task(**TASK_OPTIONS, name=self.map_task_name)(map_chunk)

    @property
    def workflows(self) -> Mapping[str, Workflow[Any]]:
        """The registry: workflow name -> Workflow (read-only)."""
        return MappingProxyType(self._registry)

    def get_workflow(self, name: str | Workflow[Any]) -> Workflow[Any]:
        """The registered workflow with this name (a Workflow is returned as is).

        Raises:
            WorkflowNotFound: no such workflow on this Flow; the message lists the known ones.
        """
        if isinstance(name, Workflow):
            return name
        wf = self._registry.get(name)
        if wf is None:
            known = ", ".join(sorted(self._registry)) or "none"
            raise WorkflowNotFound(
                f"no workflow named {name!r} on this Flow (registered: {known}); import the "
                "module that defines it before starting runs."
            )
        return wf

    def sync_registry(self) -> None:
        """Write workflow metadata (and cron definitions) to Redis; remove this app's stale ones.

        A workflow (or cron entry) that disappeared from this app's code is removed 30 s after
        its last sync, and only by the same ``app_id``; runs are never deleted. Workers call
        this on start and every minute. 3 round trips.

        Raises:
            WorkflowDefinitionError: two cron entries share an id (give one ``Cron(id=...)``).
        """
        crons = cron_definitions(self)
        metas = [
            {
                "name": wf.name,
                "queue": wf.queue or "",
                "max_concurrency": str(wf.max_concurrency or ""),
                "rate_limit": wf.rate_limit or "",
                "limit_key": wf.limit_key if isinstance(wf.limit_key, str) else "",
                "max_attempts": str(wf.retries.max_attempts),
                "timeout": "" if wf.timeout is None else str(wf.timeout),
                "cron": _serde.dumps(
                    [
                        {
                            "expression": c.expression,
                            "timezone": c.timezone,
                            "input": c.input,
                            "id": c.id or entry_id(wf.name, c.expression, c.timezone),
                        }
                        for c in wf.cron
                    ],
                    what=f"cron input of workflow {wf.name!r}",
                    max_bytes=self.max_payload_bytes,
                ),
            }
            for wf in self._registry.values()
        ]
        self.store.sync_registry(self.app_id, metas, REGISTRY_GRACE_MS)
        self.store.sync_cron(self.app_id, crons, REGISTRY_GRACE_MS)

    def cron_status(self) -> list[CronStatus]:
        """Every cron entry in this prefix with its next fire time and the current leader.

        2 round trips. Entries of every app sharing the prefix are listed (``app_id`` says
        whose); ``leader`` is the node id holding that app's scheduler lease.

        Examples:
            >>> [(s.workflow, s.next_fire_at, s.leader) for s in flow.cron_status()]
            [('nightly-report', datetime.datetime(2025, 1, 2, 1, 0, tzinfo=...), 'celery@w1')]
        """
        return cron_status(self)

    # -- starting runs ------------------------------------------------------------------------

    def run(self, name: str, input: Any = None, **run_options: Any) -> RunHandle:
        """Start a registered workflow by name; options as ``Workflow.run``."""
        return self.get_workflow(name).run(input, **run_options)

    def _start(
        self,
        wf: Workflow[Any],
        input: Any,
        *,
        idempotency_key: str | None,
        idempotency_ttl: timedelta,
        run_at: datetime | None,
        delay: timedelta | float | None,
        queue: str | None,
        parent: str = "",
        run_id: str | None = None,
        skip_if_full: bool = False,
        parent_step: str = "",
    ) -> RunHandle | None:
        """Validate, record and publish a run (see Workflow.run).

        Returns None only when ``skip_if_full`` and the workflow's gate is at max_concurrency
        (cron ticks are skipped, not queued).
        """
        validated, input_json = wf.dump_input(input)
        at_ms = run_at_ms(run_at, delay)
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise WorkflowDefinitionError("idempotency_key must be a non-empty string")
        ttl = to_seconds(idempotency_ttl, what="idempotency_ttl") or 0
        queue = queue or wf.queue or ""
        limit_key = wf.resolve_limit_key(validated)
        created, rid, token, outcome = self.store.enqueue(
            run_id or new_run_id(),
            workflow=wf.name,
            input_json=input_json,
            queue=queue,
            max_attempts=wf.retries.max_attempts,
            parent=parent,
            idem_key=idempotency_key or "",
            idem_ttl_ms=max(1, int(ttl * 1000)),
            run_at_ms=at_ms,
            timeout_ms=int((wf.timeout or 0) * 1000),
            limit_key=limit_key,
            gate_max=wf.max_concurrency or 0,
            rate=parse_rate(wf.rate_limit),
            lease_ms=self.lease_ms,
            skip_if_full=skip_if_full,
            parent_step=parent_step,
        )
        if outcome == "skipped":
            return None
        if created and outcome == "queued":
            self._publish(wf.name, rid, token, queue, limit_key)
        return RunHandle(self, rid, wf.name)

    def send_event(self, run_id: str, event_type: str, payload: Any = None) -> None:
        """Deliver an event to a run; buffered when the run is not waiting for it yet.

        Each event is consumed once, by the first ``wait_for_event`` of that type (FIFO).

        Raises:
            RunNotFound: no such run.
            RunStateError: the run already ended.

        Examples:
            >>> flow.send_event(run_id, "approved", {"by": "ada"})
        """
        _admin.send_event(self, run_id, event_type, payload)

    def retry(self, run_id: str, *, from_step: str | None = None, input: Any = None) -> RunHandle:
        """Re-run a failed or canceled run under the same id.

        Steps that succeeded replay from the cache, except ``from_step`` and every step after
        it, which run again; failed and compensated steps run again. ``input`` replaces the
        run's input (validated against the schema first).

        Raises:
            RunStateError: the run is not failed or canceled.
            StepNotFound: ``from_step`` is not a step of the run.

        Examples:
            >>> flow.retry(run_id, from_step="charge", input={"order_id": "o1", "total_cents": 9})
        """
        return _admin.retry(self, run_id, from_step=from_step, input=input)

    def retry_many(
        self, *, workflow: str | None = None, status: str = "failed", since: datetime | None = None
    ) -> list[RunHandle]:
        """Retry every failed run (of ``workflow``, created ``since``), e.g. after a fix."""
        return _admin.retry_many(self, workflow=workflow, status=status, since=since)

    def _wake_soon(self, run_id: str, due_in: float) -> None:
        """Claim a run parked on a short timer from this process when it falls due.

        The promoter polls at most every 100 ms, so without this a 5 ms durable sleep would
        cost ~100 ms. claim_due is atomic and idempotent: if the promoter (or another process)
        gets there first, this claim is a no-op; if this process dies, the promoter still
        wakes the run. Only timers due within a second are handled here.
        """
        if not 0 <= due_in <= 1.0:
            return

        def wake() -> None:
            try:
                self._resume([run_id])
            except Exception:  # the promoter remains responsible for the run
                logger.debug("early wake of run %s failed", run_id, exc_info=True)

        timer = threading.Timer(due_in + 0.002, wake)
        timer.daemon = True
        timer.start()

    def _resume(self, run_ids: list[str]) -> None:
        """Re-admit runs whose wait just ended (they are due now) and publish them."""
        self._publish_claimed(self.store.claim_due(run_ids))

    def _publish_claimed(self, claimed: list[Claimed]) -> None:
        for c in claimed:
            self._publish(c.workflow, c.run_id, c.token, c.queue, c.limit_key)

    def _publish(self, workflow: str, run_id: str, token: str, queue: str, limit_key: str) -> None:
        """One broker publish of the run's task: (run_id, token, limit_key), nothing else."""
        options: dict[str, Any] = {"serializer": "json", "ignore_result": True}
        if queue:
            options["queue"] = queue
        try:
            self.app.send_task(
                f"celery_flow.{workflow}", args=[run_id, token, limit_key], **options
            )
        except Exception as exc:
            # The run is durably queued; the republisher publishes it again after
            # republish_after seconds, so a broker blip delays the run but never loses it.
            logger.error(
                "run %s (%s): broker publish failed (%r); a worker will republish it within %ss",
                run_id,
                workflow,
                exc,
                self.republish_after,
                extra={"run_id": run_id, "workflow": workflow, "step": None},
            )

    # -- reading and acting on runs -----------------------------------------------------------

    def handle(self, run_id: str) -> RunHandle:
        """A handle for an existing run. Raises RunNotFound."""
        with self.store.errors():
            wf = self.store.redis.hget(self.store.keys.run(run_id), "workflow")
        if wf is None:
            raise RunNotFound(_not_found(run_id))
        return RunHandle(self, run_id, str(wf))

    def get_run(self, run_id: str) -> RunInfo:
        """Full state of one run, steps included. 1 round trip. Raises RunNotFound."""
        h, steps = self.store.load(run_id)
        if not h:
            raise RunNotFound(_not_found(run_id))
        return run_info_from_hash(h, steps)

    def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs newest first (by creation; by entry into the status when ``status`` is given).

        Pass ``RunPage.next_cursor`` back as ``cursor`` for the next page. Steps are not loaded
        (use ``get_run``).

        Examples:
            >>> page = flow.list_runs(workflow="process-order", status="failed", limit=20)
            >>> more = flow.list_runs(workflow="process-order", cursor=page.next_cursor)
        """
        return _admin.list_runs(self, workflow=workflow, status=status, limit=limit, cursor=cursor)

    def gate_status(self, key: str) -> GateStatus:
        """Holders, waiting count and rate budget of one limit key. 1 round trip.

        Examples:
            >>> flow.gate_status("process-order").waiting
            12
        """
        return _admin.gate_status(self, key)

    def cancel(self, run_id: str, reason: str | None = None) -> bool:
        """Cancel a run. False when it was already terminal. 2-3 round trips.

        A queued, scheduled or waiting run is canceled at once (if it has steps with
        compensations, an execution first runs them). A running run stops at its next step
        boundary (``ctx.cancel_requested`` lets long steps check) and its compensations run.
        """
        return _admin.cancel(self, run_id, reason)

    # -- DAG and saga workflows (_dag.py, _dag_run.py, _dag_status.py) ------------------------

    def dag(
        self,
        name: str,
        steps: Sequence[DagStep],
        *,
        saga: bool = False,
        on_complete: str | Callable[[dict[str, Any]], Any] | None = None,
        on_error: str | Callable[[dict[str, Any]], Any] | None = None,
        timeout: timedelta | float | None = 86400,
        queue: str | None = None,
        max_concurrency: int | None = None,
    ) -> DagWorkflow:
        """Define a declarative DAG (optionally a saga) as one durable workflow (API.md §6).

        Steps whose dependencies are all done run in parallel (a Celery group); each handler
        gets ``(context, previous_steps)``. With ``saga=True`` a failed step makes the completed
        steps' compensations run in reverse completion order. ``on_complete`` / ``on_error``
        are URLs (signed POST, retried on 5xx) or ``callable(payload: dict)``; the payload is
        ``{"run_id", "dag", "context", "state", "results"}`` (plus ``"error"``,
        ``"compensated"`` and ``"compensation_errors"`` on error). URLs need
        ``Flow(webhook_secret=...)``.

        Raises:
            WorkflowDefinitionError: duplicate ids, unknown or self dependencies, a cycle, a
                bad handler / compensation / URL scheme, or URLs without a webhook_secret.

        Examples:
            >>> order = flow.dag("order-processing", steps=[
            ...     DagStep("validate", validate_order),
            ...     DagStep("charge", charge, depends_on=["validate"], compensation=refund),
            ...     DagStep("ship", ship, depends_on=["charge"]),
            ... ], saga=True, on_error="https://app.example/hooks/failed")
            >>> order.run(context={"order_id": "o1"}).result(timeout=60)["ship"]
        """
        from ._dag_run import build_dag

        return build_dag(
            self,
            name,
            steps,
            saga=saga,
            on_complete=on_complete,
            on_error=on_error,
            timeout=timeout,
            queue=queue,
            max_concurrency=max_concurrency,
        )

    def get_status(self, run_id: str) -> WorkflowStatus:
        """DAG-style status of any run: state, completed / failed steps, results, per step.

        For a ``flow.dag`` run there is one entry per DAG step (parallel steps included, also
        while their wave runs); for a plain run, one per recorded step. Raises RunNotFound.

        Examples:
            >>> status = flow.get_status(handle.id)
            >>> status.state, status.completed_steps, status.steps[0].attempts
            ('running', ['validate'], 1)
        """
        from ._dag_status import get_status

        return get_status(self, run_id)
