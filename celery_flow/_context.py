"""Context and the step API handed to every workflow handler.

Per-step cost (documented budget): a step whose result is cached costs **no**
Redis round trip (the whole cache arrives with the start script). A new step
costs **one** round trip (``record_step``), which also reports cancellation.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import _serde
from ._control import Cancelled, LostOwnership, StopReplay, Suspend
from ._definitions import NO_RETRY, Retries, is_non_retriable, to_seconds
from ._models import ErrorInfo
from ._store import _claimed
from .errors import (
    ChildRunFailed,
    DuplicateStepError,
    EventTimeout,
    FlowError,
    RunTimeout,
    StepTimeout,
    WorkflowDefinitionError,
    describe,
)

if TYPE_CHECKING:
    from ._engine import Execution

T = TypeVar("T")
logger = logging.getLogger("celery_flow")
current_context: ContextVar[Context | None] = ContextVar("celery_flow_context", default=None)


def now_ms() -> int:
    return int(time.time() * 1000)


def error_dict(exc: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    info = describe(exc)
    if with_traceback:
        info["traceback"] = "".join(traceback.format_exception(exc)).strip()
    return info


class RunLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds ``run_id``, ``workflow`` and ``step`` to every record's ``extra``.

    ``step`` is the step running when the line is logged (None between steps), so a JSON
    formatter can ship each line with its run, workflow and step.
    """

    def __init__(
        self, logger: logging.Logger, extra: dict[str, Any], step: Callable[[], str] | None = None
    ) -> None:
        super().__init__(logger, extra)
        self._step = step

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        if self._step is not None:
            extra["step"] = self._step() or None
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return f"[{extra.get('workflow')} {extra.get('run_id')}] {msg}", kwargs


@dataclass
class _Compensation:
    seq: int
    name: str
    fn: Callable[[Any], Any]
    output: Any


class Steps:
    """``ctx.step``: durable steps. Each name runs at most once to success per run."""

    def __init__(self, ex: Execution) -> None:
        self._ex = ex
        self._seen: set[str] = set()
        self._seq = 0
        self.compensations: list[_Compensation] = []

    def _begin(self, name: str) -> int:
        if not isinstance(name, str) or not name:
            raise ValueError(f"step name must be a non-empty string, got {name!r}")
        if name in self._seen:
            raise DuplicateStepError(
                f"step name {name!r} is used twice in run {self._ex.run_id} "
                f"({self._ex.workflow.name}); names must be unique within a run: "
                f"add a suffix in loops, e.g. f'{name}:{{i}}'."
            )
        self._seen.add(name)
        self._ex.replaying.discard(name)
        self._ex.boundary()
        self._seq += 1
        return self._seq

    def run(
        self,
        name: str,
        fn: Callable[..., T],
        *args: Any,
        retries: Retries | None = None,
        timeout: timedelta | float | None = None,
        compensate: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` once; on replay return its recorded output.

        Args:
            name: unique within the run; the cache key of the result.
            fn: a callable (or Celery task, called in-process).
            retries: retry this step in place before the run's own retry policy applies.
            timeout: bound on one attempt (seconds or timedelta) -> ``StepTimeout``.
            compensate: ``compensate(output)`` runs if the run ends failed or canceled.

        Returns:
            The step's output as a JSON value, identical on first execution and on replay.

        Examples:
            >>> charge = ctx.step.run("charge", gateway.charge, order.id,
            ...                       retries=Retries(max_attempts=3), compensate=gateway.refund)
        """
        if compensate is not None and not callable(compensate):
            raise TypeError(f"compensate= of step {name!r} must be callable, got {compensate!r}")
        seq = self._begin(name)
        ex = self._ex
        cached = ex.steps.get(name)
        if cached is not None and cached["status"] in ("succeeded", "compensated"):
            if compensate is not None:
                self.compensations.append(_Compensation(seq, name, compensate, cached["output"]))
            return cached["output"]  # type: ignore[no-any-return]
        if ex.replay_only:
            raise StopReplay(name)
        policy = retries or NO_RETRY
        limit = to_seconds(timeout, what=f"timeout of step {name!r}")
        started = now_ms()
        # attempts accumulate across whole-run retries: a step that failed before counts on
        prior = cached["attempts"] if cached is not None else 0
        attempt = 0
        while True:
            attempt += 1
            ex.current_step = name
            try:
                value = _call(fn, args, kwargs, limit, name)
            except Exception as exc:
                if policy.should_retry(exc, attempt):
                    ex.log.warning("step %r attempt %d failed: %r; retrying", name, attempt, exc)
                    time.sleep(policy.delay(attempt))
                    ex.boundary()
                    continue
                ex.record(name, seq, "failed", None, prior + attempt, started, error_dict(exc))
                raise
            finally:
                ex.current_step = ""
            try:
                out = _serde.dumps(
                    value,
                    what=f"output of step {name!r} in run {ex.run_id} ({ex.workflow.name}), "
                    f"a {type(value).__qualname__}",
                    max_bytes=ex.flow.max_payload_bytes,
                )
            except FlowError as exc:
                ex.record(
                    name,
                    seq,
                    "failed",
                    None,
                    prior + attempt,
                    started,
                    error_dict(exc, with_traceback=False),
                )
                raise
            ex.record(
                name, seq, "succeeded", out, prior + attempt, started, None, compensate is not None
            )
            result = _serde.loads(out)
            if compensate is not None:
                self.compensations.append(_Compensation(seq, name, compensate, result))
            return result  # type: ignore[no-any-return]

    # -- waits: the run suspends (no worker, no gate slot) until the wait is over -------------

    def sleep(self, name: str, duration: timedelta | float) -> None:
        """Sleep durably: the run parks in Redis and resumes on any worker after ``duration``.

        Works for seconds or months (a Redis timer, never a Celery ETA).

        Examples:
            >>> ctx.step.sleep("cool-down", timedelta(hours=1))
        """
        seconds = to_seconds(duration, what=f"duration of sleep step {name!r}")
        if seconds is None:
            raise WorkflowDefinitionError(f"sleep step {name!r}: duration is required")
        self._wait(name, self._begin(name), "sleep", {}, in_ms=int(seconds * 1000))

    def sleep_until(self, name: str, when: datetime) -> None:
        """Sleep durably until an aware datetime (returns at once if it is past)."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise WorkflowDefinitionError(
                f"sleep_until step {name!r}: expected an aware datetime, got {when!r}"
            )
        until = int(when.timestamp() * 1000)
        self._wait(name, self._begin(name), "sleep", {}, until_ms=max(until, 1))

    def wait_for_event(
        self, name: str, event_type: str, *, timeout: timedelta | float | None = None
    ) -> Any:
        """Wait durably for ``flow.send_event(run_id, event_type, payload)``; return the payload.

        An event sent before the run gets here is buffered and consumed by the first matching
        wait; each event is consumed once.

        Raises:
            EventTimeout: no event within ``timeout`` (catch it to escalate and wait again).

        Examples:
            >>> try:
            ...     decision = ctx.step.wait_for_event("approval", "approved", timeout=48 * 3600)
            ... except EventTimeout:
            ...     decision = ctx.step.wait_for_event("escalated", "approved")
        """
        if not isinstance(event_type, str) or not event_type:
            raise WorkflowDefinitionError(
                f"wait_for_event step {name!r}: event_type must be a non-empty string"
            )
        seconds = to_seconds(timeout, what=f"timeout of wait_for_event step {name!r}")
        return self._wait(
            name,
            self._begin(name),
            "event",
            {"event_type": event_type},
            in_ms=-1 if seconds is None else int(seconds * 1000),
            event_type=event_type,
        )

    def run_workflow(
        self,
        name: str,
        workflow: Any,
        input: Any = None,
        *,
        timeout: timedelta | float | None = None,
        queue: str | None = None,
    ) -> Any:
        """Start a child run and wait for its output without holding a worker.

        The child's id is derived from this run and the step name, so a replayed parent never
        starts it twice. ``parent_run_id`` is recorded on the child.

        Raises:
            ChildRunFailed: the child ended failed or canceled (``.error`` is its ErrorInfo).
            StepTimeout: the child did not finish within ``timeout`` (it keeps running).
        """
        seq = self._begin(name)
        ex = self._ex
        wf = ex.flow.get_workflow(workflow)
        seconds = to_seconds(timeout, what=f"timeout of run_workflow step {name!r}")
        cached = ex.steps.get(name)
        child = cached.get("child") if cached and cached.get("status") == "waiting" else None
        if (cached is None or not self._replays(cached)) and not ex.replay_only:
            child = child or ex.child_id(name)
            ex.flow._start(
                wf,
                input,
                idempotency_key=None,
                idempotency_ttl=timedelta(0),
                run_at=None,
                delay=None,
                queue=queue,
                parent=ex.run_id,
                run_id=child,
            )
        return self._wait(
            name,
            seq,
            "child",
            {"child": child, "workflow": wf.name},
            in_ms=-1 if seconds is None else int(seconds * 1000),
            child_id=child or "",
        )

    def emit_workflow(
        self,
        name: str,
        workflow: Any,
        input: Any = None,
        *,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a child run and return its id at once (fire and forget, exactly once)."""
        seq = self._begin(name)
        ex = self._ex
        cached = ex.steps.get(name)
        if cached is not None and cached["status"] == "succeeded":
            return str(cached["output"])
        if ex.replay_only:
            raise StopReplay(name)
        started = now_ms()
        handle = ex.flow._start(
            ex.flow.get_workflow(workflow),
            input,
            idempotency_key=idempotency_key,
            idempotency_ttl=timedelta(days=7),
            run_at=run_at,
            delay=delay,
            queue=queue,
            parent=ex.run_id,
            run_id=ex.child_id(name),
        )
        assert handle is not None
        ex.record(name, seq, "succeeded", json.dumps(handle.id), 1, started, None, kind="emit")
        return handle.id

    def map(
        self,
        name: str,
        fn: Any,
        items: Sequence[Any],
        *,
        chunk_size: int = 20,
        retries: Retries | None = None,
    ) -> list[Any]:
        """Apply ``fn`` to every item on the workers, in chunks; return the results in order.

        Chunks are one Celery group; the run waits without a worker until every chunk is done.
        Each item's result is cached, so a redelivered chunk or a ``flow.retry`` recomputes
        only items without a result. ``fn`` is a Celery task or a module-level function (it is
        imported by name on the worker that runs the chunk).

        Raises:
            MapFailed: items failed after their ``retries``; ``.failed_indexes`` lists them.

        Examples:
            >>> sizes = ctx.step.map("resize", resize_image, image_urls, chunk_size=50)
        """
        from ._fanout import map_step

        return map_step(self._ex, self._begin(name), name, fn, items, chunk_size, retries)

    def map_workflow(
        self, name: str, workflow: Any, inputs: Sequence[Any], *, chunk_size: int = 20
    ) -> list[Any]:
        """Start one child run per input (in chunks, on the workers) and wait for all of them.

        Returns the children's outputs in input order. Children are started exactly once
        (deterministic ids) and the last one to end resumes this run; meanwhile it holds no
        worker and no gate slot.

        Raises:
            MapFailed: children failed or were canceled; ``.failed_indexes`` lists them.

        Examples:
            >>> shipments = ctx.step.map_workflow("ship", ship_order, orders, chunk_size=50)
        """
        from ._fanout import children_outcome, start_child

        ex = self._ex
        wf = ex.flow.get_workflow(workflow)
        seq = self._begin(name)
        items = [
            {
                "workflow": wf.name,
                "input": inp,
                "id": ex.child_id(f"{name}:{i}"),
                "parent": ex.run_id,
                "step": name,
            }
            for i, inp in enumerate(inputs)
        ]
        ids = self.map(f"{name}:start", start_child, items, chunk_size=chunk_size)
        self._wait(name, seq, "children", {"workflow": wf.name, "n": len(ids)}, children=ids)
        return children_outcome(ex, name, ids)

    def _replays(self, rec: dict[str, Any]) -> bool:
        """Whether a recorded wait replays: done, or failed in this generation."""
        if rec["status"] in ("succeeded", "compensated"):
            return True
        return rec["status"] == "failed" and rec.get("gen") == self._ex.generation

    def _wait(
        self,
        name: str,
        seq: int,
        kind: str,
        fields: dict[str, Any],
        *,
        until_ms: int = 0,
        in_ms: int = -1,
        event_type: str = "",
        child_id: str = "",
        children: Sequence[str] = (),
    ) -> Any:
        ex = self._ex
        cached = ex.steps.get(name)
        started = now_ms()
        if cached is not None:
            if self._replays(cached):
                return _wait_outcome(cached)
            if cached["status"] == "waiting":  # resumed early (run deadline): wait on
                until_ms, in_ms = int(cached.get("until", 0)), -1
                started = int(cached.get("started_at", started))
        if ex.replay_only:
            raise StopReplay(name)
        head = json.dumps(
            {
                "kind": kind,
                "seq": seq,
                "attempts": 1,
                "started_at": started,
                "gen": ex.generation,
                **fields,
            },
            separators=(",", ":"),
        )[:-1]
        ex.ending = True  # the suspend moves the run out of `running`
        res = ex.store.suspend(
            ex.run_id,
            ex.limit_key,
            ex.token,
            name,
            head,
            kind,
            until_ms=until_ms,
            in_ms=in_ms,
            event_type=event_type,
            child_id=child_id,
            children=children,
        )
        if res[0] == "lost":
            ex.lost = True
            raise LostOwnership(ex.run_id)
        if res[0] == "done":
            ex.ending = False  # the wait was already over: the run goes on
            rec = json.loads(res[1])
            ex.steps[name] = rec
            return _wait_outcome(rec)
        ex.flow._publish_claimed(_claimed(res[1]))
        if kind == "sleep":
            due_in = (until_ms - now_ms()) / 1000 if until_ms > 0 else in_ms / 1000
            ex.flow._wake_soon(ex.run_id, due_in)
        ex.log.info("waiting on step %r (%s)", name, kind)
        raise Suspend(name)


def _wait_outcome(rec: dict[str, Any]) -> Any:
    """The value of a finished wait, or its error raised again (deterministic replay)."""
    if rec["status"] != "failed":
        return rec.get("output")
    err = rec.get("error") or {}
    kind, message = str(err.get("type", "")).rsplit(".", 1)[-1], str(err.get("message", ""))
    if kind == "EventTimeout":
        raise EventTimeout(message)
    if kind == "StepTimeout":
        raise StepTimeout(message)
    child = err.get("child_error")
    raise ChildRunFailed(message, ErrorInfo(**child) if child else None)


def _call(fn: Callable[..., Any], args: Any, kwargs: Any, timeout: float | None, name: str) -> Any:
    if timeout is None:
        return _maybe_await(fn(*args, **kwargs))
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = _maybe_await(fn(*args, **kwargs))
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    # A daemon thread: Python cannot kill a thread, so a timed-out attempt is abandoned.
    threading.Thread(target=target, name=f"celery-flow-step-{name}", daemon=True).start()
    if not done.wait(timeout):
        raise StepTimeout(
            f"step {name!r} did not finish within {timeout:g}s (one attempt). Raise timeout= "
            "or make the step smaller; the abandoned attempt keeps running in its thread."
        )
    if "error" in box:
        raise box["error"]
    return box["value"]


def _maybe_await(value: Any) -> Any:
    """Run an awaitable step result to completion.

    Without a running loop (a sync handler) this is ``asyncio.run``. Inside an ``async def``
    handler the loop belongs to this run alone, so the coroutine runs on a fresh loop in a
    helper thread while the handler's loop waits: steps stay plain calls in both kinds of
    handler.
    """
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_as_coro(value))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_as_coro(value))
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="celery-flow-async-step", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _as_coro(value: Any) -> Any:
    return await value


class Context:
    """What a workflow handler receives as its first argument.

    Attributes:
        run_id: id of this run.
        workflow: the workflow's name.
        attempt: 1 on the first attempt, incremented by whole-run retries.
        input: the validated input (model instance when a schema applies).
        log: a LoggerAdapter that adds run_id / workflow / step to every record.
        step: the durable step API (:class:`Steps`).
    """

    def __init__(self, ex: Execution, input: Any) -> None:
        self._ex = ex
        self.run_id = ex.run_id
        self.workflow = ex.workflow.name
        self.attempt = ex.attempt
        self.input = input
        self.log = ex.log
        self.step = Steps(ex)

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress (``RunInfo.progress``, CLI, dashboard). 1 round trip.

        While the handler replays steps an earlier execution finished (after a wait, a retry
        or a crash), calls are skipped: 0 round trips, and the stored progress never goes back
        to a value it already passed.
        """
        if self._ex.replaying:
            return
        payload = {"current": current, "total": total, "message": message, "updated_at": now_ms()}
        self._ex.update(progress=_serde.dumps(payload, what="progress", max_bytes=64 * 1024))

    def idempotency_key(self, step_name: str) -> str:
        """A key stable across retries and replays, for external APIs: ``"<run_id>:<step>"``."""
        return f"{self.run_id}:{step_name}"

    @property
    def cancel_requested(self) -> bool:
        """True once ``flow.cancel`` was called; checks Redis at most every 0.5 s."""
        return self._ex.poll_cancel()


def check_deadline(deadline_ms: int | None, run_id: str, workflow: str) -> None:
    if deadline_ms and now_ms() >= deadline_ms:
        raise RunTimeout(
            f"run {run_id} ({workflow}) passed its workflow timeout; it is failed and not "
            "retried. Raise @flow.workflow(timeout=...) if the work legitimately takes longer."
        )


__all__ = ["Cancelled", "Context", "LostOwnership", "Steps", "check_deadline", "is_non_retriable"]
