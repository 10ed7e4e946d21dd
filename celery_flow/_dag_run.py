"""``flow.dag``: a validated DAG compiled onto one regular workflow, and one execution of it.

:func:`build_dag` registers a DAG (validated by :func:`celery_flow._dag.check_dag`) as one
workflow whose handler walks the graph in *waves*: wave ``k`` holds the
steps whose longest dependency chain has length ``k``, so every step of a wave has all its
dependencies done. A wave of one step is ``ctx.step.run(step_id, ...)``; a wave of several
is ``ctx.step.map(f"wave:{k}", run_dag_item, ...)`` with ``chunk_size=1`` (a Celery group, one
task per step; the run waits without a worker). Both are ordinary cached steps, so a replayed
run never calls a finished DAG step again.

On failure with ``saga=True`` the completed steps are compensated in reverse completion
order, each as its own step ``compensate:<id>`` (so replay never repeats one), then
``on_error`` is delivered (step ``webhook:on_error``) and the run fails with
:class:`DagStepFailed`, which is not retried. On success ``on_complete`` is delivered
(step ``webhook:on_complete``) and the run's output is ``{step_id: result}``.

On ``flow.cancel`` the engine's own cancel path undoes a saga: every completed step with a
compensation is also registered in ``ctx.step.compensations`` (named ``compensate:<id>``),
which the engine runs newest first when the run ends canceled, in-process for a running run
and in a replay-only execution for a waiting one (``cancel.lua`` re-queues a run marked
``compensable``). The failure path above takes its registrations back as it compensates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ._context import _call, _Compensation, error_dict
from ._control import StopReplay
from ._dag import (
    Dag,
    DagStep,
    DagWorkflow,
    _seconds,
    call_step,
    check_dag,
    context_of,
    is_step_handler,
    run_dag_item,
)
from ._definitions import Retries
from ._webhooks import is_http_url, post_json
from .errors import DagStepFailed, FlowError, MapFailed, RunTimeout, WorkflowDefinitionError

if TYPE_CHECKING:
    from ._context import Context
    from ._flow import Flow

COMPENSATION_RETRIES = Retries(max_attempts=3, backoff="exponential", base_delay=0.2)
WEBHOOK_RETRIES = Retries(max_attempts=5, backoff="exponential", base_delay=0.5, max_delay=30)
WEBHOOK_TIMEOUT = 30.0


def build_dag(
    flow: Flow,
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
    """Validate a DAG (see :func:`celery_flow._dag.check_dag`) and register its workflow."""
    waves = check_dag(name, steps)
    for label, hook in (("on_complete", on_complete), ("on_error", on_error)):
        if hook is not None and not is_step_handler(hook):
            raise WorkflowDefinitionError(
                f"DAG {name!r}: {label}={hook!r} must be an http(s):// URL or a callable(payload)"
            )
    uses_http = [
        f"step {s.id!r}" for s in steps if is_http_url(s.handler) or is_http_url(s.compensation)
    ]
    uses_http += [
        label
        for label, h in (("on_complete", on_complete), ("on_error", on_error))
        if is_http_url(h)
    ]
    if uses_http and not flow.webhook_secret:
        raise WorkflowDefinitionError(
            f"DAG {name!r}: {', '.join(uses_http)} call URLs, and requests are signed with the "
            "Flow's webhook_secret, which is not set: Flow(app, webhook_secret='...')"
        )
    dag = Dag(name, {s.id: s for s in steps}, waves, bool(saga), on_complete, on_error)

    def handler(ctx: Context, value: Any) -> dict[str, Any]:
        return _Walk(flow, dag, ctx, context_of(name, value)).run()

    handler.__doc__ = f"Walks the DAG {name!r} ({len(steps)} steps, {len(waves)} waves)."
    wf = flow._register(
        handler,
        cls=DagWorkflow,
        name=name,
        queue=queue,
        max_concurrency=max_concurrency,
        rate_limit=None,
        limit_key=None,
        retries=None,
        timeout=timeout,
        cron=None,
        schema=None,
        on_failure=None,
    )
    assert isinstance(wf, DagWorkflow)
    dag.workflow = wf
    flow.dags[name] = dag
    return wf


# -- the handler --------------------------------------------------------------------------------


class _Walk:
    """One execution of a DAG's handler: the waves, then compensation and notification."""

    def __init__(self, flow: Flow, dag: Dag, ctx: Context, context: Any) -> None:
        self.flow, self.dag, self.ctx, self.context = flow, dag, ctx, context
        self.results: dict[str, Any] = {}
        self.order: list[str] = []  # completion order: compensations run in its reverse
        self.undo: dict[str, _Compensation] = {}  # registered for the engine's cancel path

    def run(self) -> dict[str, Any]:
        for k, wave in enumerate(self.dag.waves, 1):
            failure = self._single(wave[0]) if len(wave) == 1 else self._parallel(k, wave)
            if failure is not None:
                self._fail(*failure)
        body = {"state": "completed", "results": self.results}
        self._notify(self.dag.on_complete, "on_complete", body)
        return dict(self.results)

    def _previous(self, step: DagStep) -> dict[str, Any]:
        return {dep: self.results[dep] for dep in step.depends_on}

    def _done(self, sid: str, result: Any) -> None:
        """A step completed: keep its result and, in a saga, register its undo for cancel.

        The engine runs ``ctx.step.compensations`` when the run ends canceled (or failed),
        newest ``seq`` first, each once: it records ``compensate:<id>`` as ``compensated``
        and skips what is recorded so. One the failure path already ran is not registered.
        """
        self.results[sid] = result
        self.order.append(sid)
        step = self.dag.steps[sid]
        name = f"compensate:{sid}"
        done = self.ctx._ex.steps.get(name, {}).get("status") in ("succeeded", "compensated")
        if not self.dag.saga or step.compensation is None or done:
            return
        args = (self.flow, self.dag, sid, self.ctx.run_id, self.context)
        limit = _seconds(step.timeout)

        def undo(value: Any) -> None:
            _call(compensate, (*args, value), {}, limit, name)

        self.undo[sid] = _Compensation(len(self.order), name, undo, result)
        self.ctx.step.compensations.append(self.undo[sid])

    def _forget(self, sid: str) -> None:
        """The failure path handled ``sid``'s compensation: the engine must not run it again."""
        comp = self.undo.pop(sid, None)
        if comp is not None:
            self.ctx.step.compensations.remove(comp)

    def _mark_compensable(self, steps: list[DagStep]) -> None:
        """Let ``flow.cancel`` of a run that is not running re-queue it to compensate.

        ``cancel.lua`` cancels a waiting or queued run at once unless its hash says
        ``compensable`` (which ``record_step`` sets for ``compensate=`` steps). Set it once per
        run (1 round trip) before the first step or wave holding a compensation starts, so no
        crash between a step's record and the flag can leave a completed step un-undoable.
        """
        ex = self.ctx._ex
        if not self.dag.saga or ex.replay_only or ex.run.get("compensable") == "1":
            return
        if any(s.compensation is not None for s in steps):
            ex.update(compensable="1")
            ex.run["compensable"] = "1"

    def _finished_in_flight(self, k: int, wave: list[DagStep]) -> None:
        """Winding down a run canceled while wave ``k`` ran: register its finished steps.

        A step still executing is not stopped; if it finishes after this read, it is not
        compensated (documented in docs/dag.md).
        """
        if not self.dag.saga or all(s.compensation is None for s in wave):
            return
        raw = self.flow.store.map_fields(self.ctx.run_id, f"wave:{k}", "r", range(len(wave)))
        self._done_in_order([json.loads(r) for r in raw if r is not None])

    def _done_in_order(self, envelopes: list[dict[str, Any]]) -> None:
        """Record a wave's succeeded steps in their completion order (compensation order)."""
        for env in sorted(envelopes, key=lambda e: (e["finished_at"], e["id"])):
            if "error" not in env:
                self._done(env["id"], env["result"])

    def _single(self, step: DagStep) -> tuple[str, dict[str, Any]] | None:
        self._mark_compensable([step])
        try:
            value = self.ctx.step.run(
                step.id,
                call_step,
                self.flow,
                self.dag,
                step.id,
                self.ctx.run_id,
                self.context,
                self._previous(step),
                retries=step.retries,
                timeout=step.timeout,
            )
        except Exception as exc:
            return step.id, error_dict(exc, with_traceback=False)
        self._done(step.id, value)
        return None

    def _parallel(self, k: int, wave: list[DagStep]) -> tuple[str, dict[str, Any]] | None:
        items = [
            {
                "dag": self.dag.name,
                "step": s.id,
                "run_id": self.ctx.run_id,
                "context": self.context,
                "previous": self._previous(s),
            }
            for s in wave
        ]
        self._mark_compensable(wave)
        try:
            envelopes = self.ctx.step.map(f"wave:{k}", run_dag_item, items, chunk_size=1)
        except StopReplay:  # replay-only (canceled while this wave ran): undo what finished
            self._finished_in_flight(k, wave)
            raise
        except MapFailed as exc:  # only if an envelope itself could not be stored
            failed = [wave[i].id for i in exc.failed_indexes] or [s.id for s in wave]
            return ", ".join(failed), error_dict(exc, with_traceback=False)
        except FlowError as exc:  # e.g. the items are over max_payload_bytes
            return ", ".join(s.id for s in wave), error_dict(exc, with_traceback=False)
        self._done_in_order(envelopes)
        failed_envs = [e for e in envelopes if "error" in e]
        if not failed_envs:
            return None
        first = dict(failed_envs[0]["error"])
        first.pop("traceback", None)
        return ", ".join(e["id"] for e in failed_envs), first

    def _fail(self, label: str, error: dict[str, Any]) -> None:
        compensated: list[str] = []
        comp_errors: list[dict[str, Any]] = []
        if self.dag.saga:
            for sid in reversed(self.order):
                step = self.dag.steps[sid]
                if step.compensation is None:
                    continue
                try:
                    self.ctx.step.run(
                        f"compensate:{sid}",
                        compensate,
                        self.flow,
                        self.dag,
                        sid,
                        self.ctx.run_id,
                        self.context,
                        self.results[sid],
                        retries=COMPENSATION_RETRIES,
                        timeout=step.timeout,
                    )
                    compensated.append(sid)
                except RunTimeout:
                    # the step boundary refused to start it (the run passed its timeout): the
                    # engine compensates what is still registered when the run ends failed
                    raise
                except Exception as exc:
                    comp_errors.append({"step": sid, **error_dict(exc, with_traceback=False)})
                self._forget(sid)  # a cancel from here on leaves the rest to the engine
        message = f"DAG {self.dag.name!r} step {label} failed: {error['type']}: {error['message']}"
        if self.dag.saga:
            message += f"; compensated: {', '.join(compensated) or 'nothing'}"
        if comp_errors:
            failed = ", ".join(f"{e['step']} ({e['type']}: {e['message']})" for e in comp_errors)
            message += f"; compensation FAILED for {failed}: undo those by hand"
        body = {
            "state": "failed",
            "error": {"step": label, "type": error["type"], "message": error["message"]},
            "results": self.results,
            "compensated": compensated,
            "compensation_errors": comp_errors,
        }
        problem = self._notify(self.dag.on_error, "on_error", body)
        if problem:
            message += f"; on_error delivery failed: {problem}"
        raise DagStepFailed(message)

    def _notify(self, target: Any, label: str, body: dict[str, Any]) -> str | None:
        if target is None:
            return None
        payload = {"run_id": self.ctx.run_id, "dag": self.dag.name, "context": self.context, **body}
        try:
            self.ctx.step.run(
                f"webhook:{label}", deliver, self.flow, target, payload, retries=WEBHOOK_RETRIES
            )
        except Exception as exc:
            self.ctx.log.error("%s delivery of DAG %r gave up: %r", label, self.dag.name, exc)
            return f"{type(exc).__name__}: {exc}"
        return None


def compensate(flow: Flow, dag: Dag, step_id: str, run_id: str, context: Any, result: Any) -> None:
    """Undo one completed step: ``compensation(context, result)`` or a signed POST."""
    comp = dag.steps[step_id].compensation
    if isinstance(comp, str):
        post_json(
            comp,
            {
                "run_id": run_id,
                "step_id": step_id,
                "action": "compensate",
                "context": context,
                "result": result,
            },
            secret=flow.webhook_secret or "",
            timeout=_seconds(dag.steps[step_id].timeout),
        )
        return
    comp(context, result)


def deliver(flow: Flow, target: Any, payload: dict[str, Any]) -> str:
    """Deliver ``on_complete`` / ``on_error``: call it with the payload, or POST it signed."""
    if isinstance(target, str):
        post_json(target, payload, secret=flow.webhook_secret or "", timeout=WEBHOOK_TIMEOUT)
        return "delivered"
    target(payload)
    return "called"
