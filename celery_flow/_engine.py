"""Executes one delivery of a run task: start, replay, finalize.

Round trips of one execution (the budget):

* start: **1** (the start script returns the run and its whole step cache);
* each new step: **1** (record_step); each cached step: **0**;
* the end: **1** (finalize or schedule_retry), plus 1 per compensation;
* heartbeat: 1 pipelined round trip per ``lease_seconds / 3`` for *all* runs of
  the process, and only for runs that live that long.

So a 1-step workflow costs 3 Redis round trips in the worker, plus the
enqueue script and the broker publish on the caller's side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _serde
from ._context import (
    Context,
    RunLogger,
    check_deadline,
    current_context,
    error_dict,
    now_ms,
)
from ._control import Cancelled, LostOwnership, StopReplay, Suspend
from ._models import ErrorInfo
from .errors import RunCanceled

if TYPE_CHECKING:
    from ._context import _Compensation
    from ._flow import Flow
    from ._workflow import Workflow

logger = logging.getLogger("celery_flow")
_COMPENSATION_ATTEMPTS = 3


@dataclass(frozen=True)
class FailureContext:
    """Passed to ``on_failure`` once when a run ends failed (after compensations)."""

    run_id: str
    workflow: str
    input: Any
    error: ErrorInfo
    attempt: int


class Execution:
    """State of one execution of one run: the owner token, step cache and flags."""

    def __init__(
        self,
        flow: Flow,
        workflow: Workflow[Any],
        token: str,
        run: dict[str, str],
        steps: dict[str, str],
    ) -> None:
        self.flow = flow
        self.store = flow.store
        self.workflow = workflow
        self.run_id = run["id"]
        self.limit_key = run.get("limit_key", "")
        self.token = token
        self.run = run
        self.steps: dict[str, dict[str, Any]] = {k: json.loads(v) for k, v in steps.items()}
        # Finished steps this execution has not reached again yet. While any is left the
        # handler is replaying code an earlier execution already ran, so ctx.progress does not
        # write (the stored progress is already at least that far; no backwards jumps). The
        # first new step write ends the replay even if the code no longer reaches some of them.
        self.replaying: set[str] = {
            k for k, rec in self.steps.items() if rec.get("status") in ("succeeded", "compensated")
        }
        self.attempt = int(run.get("attempt", 1))
        # a wait that failed (event timeout, failed child) replays as failed within the same
        # generation; a whole-run retry or flow.retry starts a new generation that waits again
        self.generation = f"{run.get('retries', '0')}:{self.attempt}"
        self.deadline = int(run.get("deadline") or 0) or None
        self.cancel_flag = run.get("cancel_requested") == "1"
        self.lost = False
        self.ending = False  # set before the write that ends the execution (see _lease)
        self.replay_only = False
        self.current_step = ""
        self.ctx: Context | None = None
        self._cancel_polled = time.monotonic()
        self.log = RunLogger(
            logger,
            {"run_id": self.run_id, "workflow": workflow.name, "step": None},
            step=lambda: self.current_step,
        )

    # -- called by the step API ----------------------------------------------------------------

    def boundary(self) -> None:
        """Checks made before every step: ownership, cancellation, run deadline."""
        if self.lost:
            raise LostOwnership(self.run_id)
        if self.replay_only:
            return
        if self.cancel_flag:
            raise Cancelled(self.run_id)
        check_deadline(self.deadline, self.run_id, self.workflow.name)

    def child_id(self, step_name: str) -> str:
        """Deterministic id of the child run a step starts: same step, same child.

        It keeps the parent's time prefix (children list next to their parent) and changes
        with the generation, so a retried parent starts a fresh child for a failed wait.
        """
        seed = f"{self.run_id}:{step_name}"
        if self.generation != "0:1":
            seed += f":{self.generation}"
        return self.run_id[:16] + hashlib.sha256(seed.encode()).hexdigest()[:16]

    def record(
        self,
        name: str,
        seq: int,
        status: str,
        out_json: str | None,
        attempts: int,
        started: int,
        error: dict[str, Any] | None,
        compensable: bool = False,
        kind: str = "run",
    ) -> None:
        rec: dict[str, Any] = {
            "kind": kind,
            "status": status,
            "seq": seq,
            "attempts": attempts,
            "started_at": started,
            "finished_at": now_ms(),
        }
        if error:
            rec["error"] = error
        head = json.dumps(rec, separators=(",", ":"))
        raw = head if out_json is None else head[:-1] + ',"output":' + out_json + "}"
        self._write_step(name, raw, compensable)
        rec["output"] = None if out_json is None else _serde.loads(out_json)
        self.steps[name] = rec

    def _write_step(self, name: str, raw: str, compensable: bool) -> None:
        self.replaying.clear()
        owned, cancel = self.store.record_step(
            self.run_id, self.limit_key, self.token, name, raw, compensable
        )
        self._after_write(owned, cancel)

    def update(self, **fields: str) -> None:
        owned, cancel = self.store.update(self.run_id, self.limit_key, self.token, **fields)
        self._after_write(owned, cancel)

    def _after_write(self, owned: bool, cancel: bool) -> None:
        if not owned:
            self.lost = True
            raise LostOwnership(self.run_id)
        self.cancel_flag = self.cancel_flag or cancel

    def poll_cancel(self) -> bool:
        if not self.cancel_flag and time.monotonic() - self._cancel_polled > 0.5:
            self._cancel_polled = time.monotonic()
            with self.store.errors():
                flag = self.store.redis.hget(self.store.keys.run(self.run_id), "cancel_requested")
            self.cancel_flag = flag == "1"
        return self.cancel_flag

    # -- the execution -------------------------------------------------------------------------

    def execute(self) -> str:
        """Run the handler to an outcome: succeeded | failed | canceled | retrying | lost."""
        try:
            if self.cancel_flag or self.run.get("phase") == "compensating":
                return self._wind_down()
            try:
                self.boundary()
                value = self.workflow.validate_input(
                    _serde.loads(self.run.get("input")), self.run_id
                )
                out = self._call_handler(value)
                if self.cancel_flag:  # the handler's end is a step boundary too
                    raise Cancelled(self.run_id)
                check_deadline(self.deadline, self.run_id, self.workflow.name)
                out_json = _serde.dumps(
                    out,
                    what=f"output of run {self.run_id} ({self.workflow.name}), "
                    f"a {type(out).__qualname__}",
                    max_bytes=self.flow.max_payload_bytes,
                )
            except Suspend:
                return "waiting"
            except Cancelled:
                return self._end("canceled", self._cancel_error())
            except Exception as exc:
                return self._failed(exc)
            if self.lost:
                raise LostOwnership(self.run_id)
            self._finalize("succeeded", out_json, "")
            return "succeeded"
        except LostOwnership:
            self.log.warning(
                "lost ownership of the run (lease expired or superseded); stopping without writing"
            )
            return "lost"

    def _call_handler(self, value: Any) -> Any:
        self.ctx = Context(self, value)
        reset = current_context.set(self.ctx)
        try:
            return self.workflow.call(self.ctx, value)
        finally:
            current_context.reset(reset)

    def _failed(self, exc: Exception) -> str:
        err = error_dict(exc)
        policy = self.workflow.retries
        deadline_passed = bool(self.deadline and now_ms() >= self.deadline)
        if policy.should_retry(exc, self.attempt) and not deadline_passed:
            delay_ms = int(policy.delay(self.attempt) * 1000)
            self.ending = True
            due, woken = self.store.schedule_retry(
                self.run_id, self.limit_key, self.token, delay_ms, json.dumps(err)
            )
            self.flow._publish_claimed(woken)
            if not due:
                raise LostOwnership(self.run_id)
            self.log.warning(
                "attempt %d/%d failed (%s: %s); retrying in %.2fs",
                self.attempt,
                policy.max_attempts,
                err["type"],
                err["message"],
                delay_ms / 1000,
            )
            return "retrying"
        self.log.error("run failed: %s: %s", err["type"], err["message"])
        return self._end("failed", err)

    def _cancel_error(self) -> dict[str, Any]:
        with self.store.errors():
            raw = self.store.redis.hget(self.store.keys.run(self.run_id), "cancel_reason")
        reason = str(raw) if raw else self.run.get("cancel_reason") or None
        return {
            "type": "celery_flow.errors.RunCanceled",
            "message": str(RunCanceled(self.run_id, reason)),
        }

    def _wind_down(self) -> str:
        """Re-execution after cancel / a crash during compensation: replay, then compensate."""
        self.replay_only = True
        try:
            value = self.workflow.validate_input(_serde.loads(self.run.get("input")), self.run_id)
            self._call_handler(value)
        except (StopReplay, Suspend):
            pass
        except Exception as exc:  # the handler failed while replaying: compensate what we have
            self.log.info("replay for compensation stopped at %r", exc)
        if self.cancel_flag:
            return self._end("canceled", self._cancel_error())
        err = _serde.loads(self.run.get("error")) or {"type": "unknown", "message": "unknown"}
        return self._end("failed", err)

    def _end(self, status: str, err: dict[str, Any]) -> str:
        pending = [
            c
            for c in (self.ctx.step.compensations if self.ctx else [])
            if self.steps.get(c.name, {}).get("status") != "compensated"
        ]
        err_json = json.dumps(err)
        if pending:
            self.update(phase="compensating", error=err_json)
            for comp in sorted(pending, key=lambda c: c.seq, reverse=True):
                self._compensate(comp)
        if status == "failed" and self.workflow.on_failure and self.run.get("on_failure") != "done":
            self._call_on_failure(err)
        self._finalize(status, "", err_json)
        return status

    def _finalize(self, status: str, output: str, error: str) -> None:
        self.ending = True
        written, woken, parent = self.store.finalize(
            self.run_id, self.limit_key, self.token, status, output, error, self.flow.expire_ms
        )
        self.flow._publish_claimed(woken)
        if parent:  # a parent waiting on this run (run_workflow) resumes now
            self.flow._resume([parent])
        if not written:
            raise LostOwnership(self.run_id)

    def _compensate(self, comp: _Compensation) -> None:
        rec = dict(self.steps.get(comp.name) or {})
        fresh = not rec
        if fresh:
            # flow.dag registers its compensations under their own name (compensate:<step id>),
            # which has no record yet: write a whole one, listed after every earlier step
            started = now_ms()
            seq = max((int(r.get("seq", 0)) for r in self.steps.values()), default=0) + 1
            rec = {"kind": "run", "status": "failed", "seq": seq, "attempts": 1}
            rec.update(started_at=started, finished_at=started)
        for attempt in range(1, _COMPENSATION_ATTEMPTS + 1):
            try:
                comp.fn(comp.output)
            except Exception as exc:
                self.log.warning(
                    "compensation of step %r failed (attempt %d/%d): %r",
                    comp.name,
                    attempt,
                    _COMPENSATION_ATTEMPTS,
                    exc,
                )
                if attempt == _COMPENSATION_ATTEMPTS:
                    rec["compensation_error"] = error_dict(exc)
                    self.log.error(
                        "compensation of step %r gave up; fix and compensate by hand", comp.name
                    )
                    self._write_step(comp.name, json.dumps(rec), False)
                    self.steps[comp.name] = rec
                    return
                time.sleep(0.1 * 2 ** (attempt - 1))
                continue
            rec.update(status="compensated", compensated_at=now_ms())
            if fresh:
                rec.update(attempts=attempt, finished_at=rec["compensated_at"])
            self._write_step(comp.name, json.dumps(rec), False)
            self.steps[comp.name] = rec
            return

    def _call_on_failure(self, err: dict[str, Any]) -> None:
        assert self.workflow.on_failure is not None
        fctx = FailureContext(
            run_id=self.run_id,
            workflow=self.workflow.name,
            input=_serde.loads(self.run.get("input")),
            error=ErrorInfo(**err),
            attempt=self.attempt,
        )
        try:
            self.workflow.on_failure(fctx)
        except Exception:
            self.log.exception(
                "on_failure of workflow %r raised; the run stays failed", self.workflow.name
            )
        self.update(on_failure="done")


def execute(
    flow: Flow, workflow: Workflow[Any], run_id: str, token: str, limit_key: str | None
) -> str:
    """Body of every workflow's Celery task. Returns the outcome (for logs and tests)."""
    if limit_key is None:  # a message published without it (hand-crafted or older)
        (limit_key,) = flow.store.limit_keys([run_id])
    started = flow.store.start(run_id, token, flow.lease_ms, limit_key)
    if started.outcome != "ok":
        logger.debug(
            "run %s: delivery with token %s ignored (%s, status %s)",
            run_id,
            token,
            started.outcome,
            started.status,
            extra={"run_id": run_id, "workflow": workflow.name, "step": None},
        )
        return started.outcome
    assert started.run is not None and started.steps is not None
    ex = Execution(flow, workflow, started.token, started.run, started.steps)
    flow.heartbeat.add(ex)
    try:
        return ex.execute()
    finally:
        flow.heartbeat.remove(ex)
