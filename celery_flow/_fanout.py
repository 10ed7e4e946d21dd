"""Fan-out and fan-in: ``ctx.step.map`` over Celery groups, with our own idempotent fan-in.

A map stores its items in the run's ``maps`` hash and parks the run (``map_start``, 1 round
trip); the chunks go out as one Celery ``group`` of ``map chunk`` tasks. A chunk task reads
its items and their cached results (1 round trip), calls ``fn`` for each item that has no
result yet, records each result as it is made (1 round trip per item, so a redelivered chunk
skips what finished), then reports the chunk (``map_chunk_done``, 1 round trip). The last
chunk ends the wait exactly once; the run resumes and reads every result in order (1 round
trip). Celery's chord counter is not used: it can double-count redelivered header tasks and
needs a result backend (celery#3324, #3363, #9674).
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from celery import group

from . import _serde
from ._control import LostOwnership, StopReplay, Suspend
from ._definitions import NO_RETRY, Retries
from ._store import _claimed
from .errors import MapFailed, WorkflowDefinitionError

if TYPE_CHECKING:
    from ._engine import Execution
    from ._flow import Flow

logger = logging.getLogger("celery_flow")
current_flow: ContextVar[Flow | None] = ContextVar("celery_flow_chunk_flow", default=None)


def fn_ref(fn: Any, step: str) -> dict[str, str]:
    """How a chunk task on any worker finds ``fn``: a Celery task name or an import path."""
    from celery import Task

    if isinstance(fn, Task):
        return {"task": fn.name}
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not callable(fn) or not module or "<" in qualname:
        raise WorkflowDefinitionError(
            f"map step {step!r}: fn must be a Celery task or a module-level function, got "
            f"{fn!r}. Chunks run on other workers, which import fn by name: move it to module "
            "level (no lambda, no nested function)."
        )
    return {"path": f"{module}:{qualname}"}


def resolve(flow: Flow, ref: dict[str, str]) -> Callable[..., Any]:
    if "task" in ref:
        return flow.app.tasks[ref["task"]]  # type: ignore[no-any-return]
    module, _, qualname = ref["path"].partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def map_step(
    ex: Execution,
    seq: int,
    name: str,
    fn: Any,
    items: Sequence[Any],
    chunk_size: int,
    retries: Retries | None,
) -> list[Any]:
    """``ctx.step.map``: see the module docstring. Returns results in item order."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise WorkflowDefinitionError(
            f"map step {name!r}: chunk_size={chunk_size!r} must be an int >= 1"
        )
    ref = fn_ref(fn, name)
    cached = ex.steps.get(name)
    if cached is not None and ex.ctx is not None and ex.ctx.step._replays(cached):
        return _outcome(ex, name, cached)
    if ex.replay_only:
        raise StopReplay(name)
    waiting = cached is not None and cached["status"] == "waiting"
    encoded: list[str] | None = None
    n = int(cached["n"]) if waiting and cached else len(items)
    if not waiting:
        encoded = [
            _serde.dumps(
                item, what=f"item {i} of map step {name!r}", max_bytes=ex.flow.max_payload_bytes
            )
            for i, item in enumerate(items)
        ]
        if not encoded:
            ex.record(name, seq, "succeeded", "[]", 1, int(time.time() * 1000), None, kind="map")
            return []
    head = json.dumps(
        {
            "kind": "map",
            "seq": seq,
            "attempts": 1,
            "started_at": int(cached.get("started_at", 0))
            if waiting and cached
            else int(time.time() * 1000),
            "gen": ex.generation,
            "n": n,
            "chunk_size": chunk_size,
        },
        separators=(",", ":"),
    )[:-1]
    ex.ending = True
    res = ex.store.map_start(
        ex.run_id,
        ex.limit_key,
        ex.token,
        name,
        head,
        n,
        chunk_size,
        int(ex.flow.republish_after * 1000),
        encoded,
    )
    if res[0] == "lost":
        ex.lost = True
        raise LostOwnership(ex.run_id)
    if res[0] == "done":
        ex.ending = False  # every item already had a result: the run goes on
        ex.steps[name] = json.loads(res[1])
        return _outcome(ex, name, ex.steps[name])
    ex.flow._publish_claimed(_claimed(res[2]))
    pending = [int(c) for c in res[1]]
    queue = ex.run.get("queue") or None
    group(
        ex.flow.app.signature(
            ex.flow.map_task_name,
            args=(ex.run_id, ex.limit_key, name, c, chunk_size, ref, _retries_dict(retries)),
            queue=queue,
            ignore_result=True,
            serializer="json",
        )
        for c in pending
    ).apply_async()
    ex.log.info("map step %r: %d items in %d chunks dispatched; waiting", name, n, len(pending))
    raise Suspend(name)


def _outcome(ex: Execution, name: str, rec: dict[str, Any]) -> list[Any]:
    n = int(rec.get("n", 0))
    if rec["status"] == "failed":
        errors = ex.store.map_fields(ex.run_id, name, "e", range(n))
        failed = [k for k, e in enumerate(errors) if e is not None]
        raise MapFailed(str((rec.get("error") or {}).get("message", "map failed")), failed)
    if n == 0:
        return list(rec.get("output") or [])
    return [_serde.loads(r) for r in ex.store.map_fields(ex.run_id, name, "r", range(n))]


def _retries_dict(retries: Retries | None) -> dict[str, Any] | None:
    if retries is None:
        return None
    return {
        "max_attempts": retries.max_attempts,
        "backoff": retries.backoff,
        "base_delay": retries.base_delay,
        "max_delay": retries.max_delay,
        "jitter": retries.jitter,
    }


def run_chunk(
    flow: Flow,
    run_id: str,
    limit_key: str,
    step: str,
    chunk: int,
    chunk_size: int,
    ref: dict[str, str],
    retries: dict[str, Any] | None,
) -> str:
    """Body of the map chunk task: compute the chunk's missing results, then report it."""
    store = flow.store
    with store.errors():
        status, wait_step = store.redis.hmget(store.keys.run(run_id), "status", "wait_step")
        n = store.redis.hget(store.keys.maps(run_id), f"{step}\x1fn")
    if status != "waiting" or wait_step != step or n is None:
        return "stale"  # the run moved on (canceled, or a newer generation finished it)
    indexes = list(range(chunk * chunk_size, min(int(n), (chunk + 1) * chunk_size)))
    items = store.map_fields(run_id, step, "i", indexes)
    done = store.map_fields(run_id, step, "r", indexes)
    fn = resolve(flow, ref)
    policy = Retries(**retries) if retries else NO_RETRY
    reset = current_flow.set(flow)
    try:
        for k, item, result in zip(indexes, items, done, strict=True):
            if result is None:
                _run_item(flow, run_id, step, k, fn, _serde.loads(item), policy)
    finally:
        current_flow.reset(reset)
    if store.map_chunk_done(run_id, limit_key, step, chunk) == "resume":
        flow._resume([run_id])
    return "done"


def _run_item(
    flow: Flow,
    run_id: str,
    step: str,
    k: int,
    fn: Callable[..., Any],
    item: Any,
    policy: Retries,
) -> None:
    from ._context import _maybe_await, error_dict

    attempt = 0
    while True:
        attempt += 1
        try:
            value = _maybe_await(fn(item))
            out = _serde.dumps(
                value,
                what=f"result of item {k} of map step {step!r}",
                max_bytes=flow.max_payload_bytes,
            )
        except Exception as exc:
            if policy.should_retry(exc, attempt):
                time.sleep(policy.delay(attempt))
                continue
            logger.warning(
                "run %s map step %r item %d failed: %r",
                run_id,
                step,
                k,
                exc,
                extra={"run_id": run_id, "workflow": None, "step": step},
            )
            flow.store.map_record(run_id, step, "e", k, json.dumps(error_dict(exc)))
            return
        flow.store.map_record(run_id, step, "r", k, out)
        return


def start_child(item: dict[str, Any]) -> str:
    """Map fn of ``map_workflow``: start one child run (idempotent: its id is deterministic)."""
    flow = current_flow.get()
    if flow is None:  # pragma: no cover - only ever called by a map chunk task
        raise RuntimeError("start_child runs inside a celery_flow map chunk")
    handle = flow._start(
        flow.get_workflow(item["workflow"]),
        item["input"],
        idempotency_key=None,
        idempotency_ttl=flow.retention,
        run_at=None,
        delay=None,
        queue=None,
        parent=item["parent"],
        run_id=item["id"],
        parent_step=item["step"],
    )
    assert handle is not None
    return handle.id


def children_outcome(ex: Execution, name: str, ids: list[str]) -> list[Any]:
    """Outputs of a map_workflow's children in order, or MapFailed naming the failed ones."""
    hashes = ex.store.load_many(ids)
    failed = [k for k, h in enumerate(hashes) if h.get("status") != "succeeded"]
    if failed:
        shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
        raise MapFailed(
            f"{len(failed)} of {len(ids)} child runs of map_workflow step {name!r} did not "
            f"succeed (indexes {shown}); see each child's error with flow.get_run(child_id)",
            failed,
        )
    return [_serde.loads(h.get("output")) for h in hashes]
