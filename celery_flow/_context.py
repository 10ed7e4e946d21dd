"""Context and the step API handed to every workflow handler.

Per-step cost (documented budget): a step whose result is cached costs **no**
Redis round trip (the whole cache arrives with the start script). A new step
costs **one** round trip (``record_step``), which also reports cancellation.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from . import _serde
from ._control import Cancelled, LostOwnership, StopReplay
from ._definitions import NO_RETRY, Retries, is_non_retriable, to_seconds
from .errors import DuplicateStepError, FlowError, RunTimeout, StepTimeout, describe

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
    """Adds ``run_id``, ``workflow`` and ``step`` to every record's ``extra``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
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

        Example:
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
    import asyncio
    import inspect

    if inspect.isawaitable(value):
        return asyncio.run(_as_coro(value))
    return value


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
        """Report progress (``RunInfo.progress``, CLI, dashboard). 1 round trip."""
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
