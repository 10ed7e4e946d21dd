"""``flow.dag``: declarative DAG and saga workflows compiled onto one regular workflow.

A DAG is validated when ``flow.dag`` is called (ids, dependencies, cycles, handlers) and
registered as one workflow whose handler walks the graph in *waves*: wave ``k`` holds the
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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from . import _serde
from ._context import _call, _Compensation, error_dict
from ._control import StopReplay
from ._definitions import NO_RETRY, Retries, check_name, to_seconds
from ._fanout import current_flow
from ._models import ErrorInfo, RunInfo, ms_to_dt, run_info_from_hash
from ._webhooks import is_http_url, post_json
from ._workflow import Workflow
from .errors import (
    DagStepFailed,
    FlowError,
    InputValidationError,
    MapFailed,
    NonRetriableError,
    RunNotFound,
    WorkflowDefinitionError,
)

if TYPE_CHECKING:
    from ._context import Context
    from ._flow import Flow
    from ._handle import RunHandle

COMPENSATION_RETRIES = Retries(max_attempts=3, backoff="exponential", base_delay=0.2)
WEBHOOK_RETRIES = Retries(max_attempts=5, backoff="exponential", base_delay=0.5, max_delay=30)
WEBHOOK_TIMEOUT = 30.0


@dataclass(frozen=True)
class DagStep:
    """One step of a :meth:`Flow.dag` workflow.

    Args:
        id: unique within the DAG; names the step in ``get_status``, the CLI and errors.
        handler: a Python callable, a Celery task (called in-process) or an ``http(s)://``
            URL (signed JSON POST). It receives ``(context, previous_steps)`` where
            ``previous_steps`` maps each dependency id to its result.
        depends_on: ids that must complete first; several ids make this step a fan-in.
        parallel: accepted for compatibility; steps whose dependencies are done always run
            in parallel.
        retries: retry policy of this step (default: one attempt).
        timeout: bound on one attempt, in seconds or a timedelta (default 300 s).
        compensation: ``compensation(context, result)`` (or a URL) that undoes this step when
            a ``saga=True`` DAG fails or is canceled after it completed.

    Examples:
        >>> DagStep("process-payment", charge, depends_on=["reserve-inventory"],
        ...         retries=Retries(max_attempts=3), compensation=refund)
    """

    id: str
    handler: Any
    depends_on: Sequence[str] = ()
    parallel: bool = False
    retries: Retries | None = None
    timeout: timedelta | float | None = 300
    compensation: Any = None

    def __post_init__(self) -> None:
        deps: Any = self.depends_on
        if isinstance(deps, str):
            deps = (deps,)
        try:
            normalized = tuple(dict.fromkeys(deps))
        except TypeError:
            raise WorkflowDefinitionError(
                f"DagStep {self.id!r}: depends_on={deps!r} must be a list of step ids"
            ) from None
        object.__setattr__(self, "depends_on", normalized)


@dataclass
class Dag:
    """A validated DAG registered on a Flow (``flow.dags[name]``)."""

    name: str
    steps: dict[str, DagStep]
    waves: list[list[DagStep]]
    saga: bool
    on_complete: str | Callable[[dict[str, Any]], Any] | None
    on_error: str | Callable[[dict[str, Any]], Any] | None
    workflow: DagWorkflow = field(init=False)


class DagWorkflow(Workflow[dict[str, Any]]):
    """The workflow ``flow.dag`` returns: start runs with ``.run(context={...})``.

    Examples:
        >>> handle = order.run(context={"order_id": "o1", "user_id": "u1"})
        >>> handle.result(timeout=60)  # {step_id: result, ...}
    """

    def run(
        self, input: Any = None, *, context: Mapping[str, Any] | None = None, **run_options: Any
    ) -> RunHandle:
        """Start a run with ``context`` (a JSON object every step receives).

        ``input`` is the raw run input ``{"context": {...}}`` (what ``flow.run(name, input)``
        and the CLI pass); give either, not both. Other options as :meth:`Workflow.run`.
        """
        if context is not None and input is not None:
            raise InputValidationError(f"DAG {self.name!r}: pass context= or input=, not both")
        raw = input if input is not None else {"context": context}
        return super().run(
            {"context": context_of(self.name, raw, InputValidationError)}, **run_options
        )


def context_of(name: str, value: Any, error: type[Exception] = NonRetriableError) -> Any:
    """The context dict of a DAG run input (``None`` or ``{"context": {...}}``)."""
    if value is None:
        return {}
    if isinstance(value, Mapping) and set(value) <= {"context"}:
        ctx = value.get("context")
        if ctx is None or isinstance(ctx, Mapping):
            return dict(ctx or {})
    raise error(
        f"DAG {name!r}: the run input must be {{'context': {{...}}}}, got {value!r}; start it "
        f"with dag.run(context={{...}}) or flow.run({name!r}, {{'context': {{...}}}})"
    )


# -- validation (pure: table-driven unit tests in tests/unit/test_dag_validation.py) -------------

RESERVED_PREFIXES = ("wave:", "compensate:", "webhook:")


def is_step_handler(value: Any) -> bool:
    """A callable (Celery tasks are) or an absolute http(s) URL."""
    return callable(value) or is_http_url(value)


def _check_handler(dag: str, step: str, label: str, value: Any) -> None:
    if callable(value) or is_http_url(value):
        return
    if isinstance(value, str):
        scheme = urlsplit(value).scheme
        why = (
            f"the scheme {scheme!r} is not supported (only http:// and https://)"
            if scheme
            else "it is not an absolute URL (relative paths have no host to call)"
        )
        raise WorkflowDefinitionError(
            f"DAG {dag!r} step {step!r}: {label}={value!r}: {why}; give a callable, a Celery "
            "task or an absolute http(s):// URL"
        )
    raise WorkflowDefinitionError(
        f"DAG {dag!r} step {step!r}: {label}={value!r} is neither callable, a Celery task nor "
        "an http(s):// URL"
    )


def _check_step(dag: str, step: Any, seen: set[str]) -> None:
    if not isinstance(step, DagStep):
        raise WorkflowDefinitionError(
            f"DAG {dag!r}: steps= takes DagStep(...) objects, got {step!r}"
        )
    sid = step.id
    if not isinstance(sid, str) or not sid.strip():
        raise WorkflowDefinitionError(f"DAG {dag!r}: step id {sid!r} must be a non-empty string")
    check_name(sid, what=f"DAG {dag!r} step id")
    if sid.startswith(RESERVED_PREFIXES):
        raise WorkflowDefinitionError(
            f"DAG {dag!r} step {sid!r}: ids starting with {', '.join(RESERVED_PREFIXES)} are "
            "reserved for the DAG's own bookkeeping steps; rename it"
        )
    if sid in seen:
        raise WorkflowDefinitionError(
            f"DAG {dag!r}: duplicate step id {sid!r}; ids must be unique within a DAG"
        )
    seen.add(sid)
    _check_handler(dag, sid, "handler", step.handler)
    if step.compensation is not None:
        _check_handler(dag, sid, "compensation", step.compensation)
    if step.retries is not None and not isinstance(step.retries, Retries):
        raise WorkflowDefinitionError(
            f"DAG {dag!r} step {sid!r}: retries={step.retries!r} must be a Retries(...)"
        )
    seconds = to_seconds(step.timeout, what=f"DAG {dag!r} step {sid!r} timeout")
    if seconds == 0:
        raise WorkflowDefinitionError(
            f"DAG {dag!r} step {sid!r}: timeout=0 would fail every attempt; use None for no limit"
        )
    if not isinstance(step.parallel, bool):
        raise WorkflowDefinitionError(f"DAG {dag!r} step {sid!r}: parallel= must be a bool")


def check_dag(name: Any, steps: Any) -> list[list[DagStep]]:
    """Validate a DAG definition and return its waves (steps grouped by dependency depth).

    Raises:
        WorkflowDefinitionError: naming the DAG and the step ids: duplicate ids, unknown or
            self dependencies, a cycle (``a -> b -> a``), a bad handler or compensation.
    """
    check_name(name, what="DAG name")
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence) or not steps:
        raise WorkflowDefinitionError(
            f"DAG {name!r}: steps= must be a non-empty list of DagStep(...)"
        )
    seen: set[str] = set()
    for step in steps:
        _check_step(name, step, seen)
    for step in steps:
        for dep in step.depends_on:
            if dep == step.id:
                raise WorkflowDefinitionError(
                    f"DAG {name!r} step {step.id!r} depends on itself; remove {dep!r} from its "
                    "depends_on"
                )
            if dep not in seen:
                raise WorkflowDefinitionError(
                    f"DAG {name!r} step {step.id!r} depends on {dep!r}, which is not a step of "
                    f"this DAG (steps: {', '.join(s.id for s in steps)})"
                )
    cycle = _find_cycle({s.id: list(s.depends_on) for s in steps})
    if cycle:
        raise WorkflowDefinitionError(
            f"DAG {name!r} has a cycle: {' -> '.join(cycle)}; a DAG must be acyclic, remove "
            "one of these dependencies"
        )
    depth: dict[str, int] = {}
    by_id = {s.id: s for s in steps}

    def level(sid: str) -> int:
        if sid not in depth:
            deps = by_id[sid].depends_on
            depth[sid] = 1 + max((level(d) for d in deps), default=-1)
        return depth[sid]

    waves: list[list[DagStep]] = [[] for _ in range(1 + max(level(s.id) for s in steps))]
    for step in steps:
        waves[depth[step.id]].append(step)
    return waves


def _find_cycle(deps: dict[str, list[str]]) -> list[str]:
    """One dependency cycle as ``[a, b, ..., a]`` (in dependency order), or ``[]``."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in deps[node]:
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in deps:
        if node not in state:
            found = visit(node)
            if found:
                found.reverse()  # a -> b reads "a runs before b"
                return found
    return []


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
    """Validate a DAG (see :mod:`celery_flow._dag_checks`) and register its workflow."""
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
        self._mark_compensable([step])

    def _forget(self, sid: str) -> None:
        """The failure path handled ``sid``'s compensation: the engine must not run it again."""
        comp = self.undo.pop(sid, None)
        if comp is not None:
            self.ctx.step.compensations.remove(comp)

    def _mark_compensable(self, steps: list[DagStep]) -> None:
        """Let ``flow.cancel`` of a run that is not running re-queue it to compensate.

        ``cancel.lua`` cancels a waiting or queued run at once unless its hash says
        ``compensable`` (which ``record_step`` sets for ``compensate=`` steps). Set it once per
        run (1 round trip) when a step with a compensation completes, or a wave holding one is
        about to suspend the run.
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
        envelopes = [json.loads(r) for r in raw if r is not None]
        for env in sorted(envelopes, key=lambda e: (e["finished_at"], e["id"])):
            if "error" not in env:
                self._done(env["id"], env["result"])

    def _single(self, step: DagStep) -> tuple[str, dict[str, Any]] | None:
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
        for env in sorted(envelopes, key=lambda e: (e["finished_at"], e["id"])):
            if "error" not in env:
                self._done(env["id"], env["result"])
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


# -- executing steps ----------------------------------------------------------------------------


def call_step(
    flow: Flow, dag: Dag, step_id: str, run_id: str, context: Any, previous: dict[str, Any]
) -> Any:
    """Call one DAG step's handler once: a callable / task in-process, or a signed POST."""
    step = dag.steps[step_id]
    if isinstance(step.handler, str):
        response = post_json(
            step.handler,
            {"run_id": run_id, "step_id": step_id, "context": context, "previous_steps": previous},
            secret=flow.webhook_secret or "",
            timeout=_seconds(step.timeout),
        )
        return _result_field(step.handler, response)
    return step.handler(context, previous)


def _result_field(url: str, response: Any) -> Any:
    if response is None:
        return None
    if isinstance(response, dict):
        return response.get("result")
    raise NonRetriableError(
        f"POST {url} returned {type(response).__qualname__} JSON; expected an object such as "
        '{"result": ...}'
    )


def _seconds(value: timedelta | float | None) -> float | None:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return None if value is None else float(value)


def run_dag_item(item: dict[str, Any]) -> dict[str, Any]:
    """Map fn of a parallel wave: run one DAG step with its own retries and timeout.

    It never raises: a failure comes back as ``{"id", "error", ...}`` so the DAG handler knows
    which step failed (and the siblings' results stay usable for compensation).
    """
    started, attempt = _now_ms(), 0
    flow = current_flow.get()
    envelope: dict[str, Any] = {"id": item["step"], "started_at": started}
    try:
        if flow is None:  # pragma: no cover - only ever called by a map chunk task
            raise RuntimeError("run_dag_item runs inside a celery_flow map chunk")
        dag = flow.dags.get(item["dag"])
        if dag is None:
            raise NonRetriableError(
                f"DAG {item['dag']!r} is not defined in this worker; import the module that "
                "calls flow.dag(...) in the worker too"
            )
        step = dag.steps[item["step"]]
        policy = step.retries or NO_RETRY
        while True:
            attempt += 1
            try:
                args = (flow, dag, step.id, item["run_id"], item["context"], item["previous"])
                result = _call(call_step, args, {}, _seconds(step.timeout), step.id)
                text = _serde.dumps(
                    result, what=f"result of DAG step {step.id!r}", max_bytes=flow.max_payload_bytes
                )
                break
            except Exception as exc:
                if not policy.should_retry(exc, attempt):
                    raise
                time.sleep(policy.delay(attempt))
        envelope["result"] = json.loads(text)
    except Exception as exc:
        envelope["error"] = error_dict(exc)
    envelope.update(finished_at=_now_ms(), attempts=max(attempt, 1))
    return envelope


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- status -------------------------------------------------------------------------------------

WorkflowState = Literal["pending", "running", "waiting", "completed", "failed", "canceled"]
DagStepState = Literal[
    "pending", "running", "waiting", "completed", "failed", "compensated", "skipped"
]
_RUN_STATE: dict[str, WorkflowState] = {
    "scheduled": "pending",
    "queued": "pending",
    "running": "running",
    "waiting": "waiting",
    "succeeded": "completed",
    "failed": "failed",
    "canceled": "canceled",
}
_STEP_STATE: dict[str, DagStepState] = {
    "running": "running",
    "waiting": "waiting",
    "succeeded": "completed",
    "failed": "failed",
    "compensated": "compensated",
}


class DagStepStatus(BaseModel):
    """One step in :class:`WorkflowStatus`.

    ``state`` is ``pending`` (not started), ``running``, ``waiting`` (plain runs: a durable
    wait), ``completed``, ``failed``, ``compensated`` (completed, then undone by the saga) or
    ``skipped`` (never ran: the run ended first). A compensation that failed leaves the step
    ``completed`` with the compensation's ``error``.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    state: DagStepState
    started_at: datetime | None = None
    completed_at: datetime | None = None
    attempts: int = 0
    result: Any = None
    error: ErrorInfo | None = None


class WorkflowStatus(BaseModel):
    """DAG-style view of any run (``flow.get_status(run_id)``).

    ``context`` is the DAG run's context (a plain run's input); ``results`` maps each completed
    step id to its result; ``current_step`` is a step running now (None when none is).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    state: WorkflowState
    started_at: datetime | None = None
    completed_at: datetime | None = None
    current_step: str | None = None
    completed_steps: list[str] = []
    failed_steps: list[str] = []
    context: Any = None
    results: dict[str, Any] = {}
    steps: list[DagStepStatus] = []


def get_status(flow: Flow, run_id: str) -> WorkflowStatus:
    """Status of one run: per DAG step for DAG runs, per recorded step for plain runs."""
    from ._handle import _not_found

    h, raw_steps = flow.store.load(run_id)
    if not h:
        raise RunNotFound(_not_found(run_id))
    info = run_info_from_hash(h, raw_steps)
    dag = flow.dags.get(info.workflow)
    if dag is None:
        steps = [
            DagStepStatus(
                id=s.name,
                state=_STEP_STATE.get(s.status, "pending"),
                started_at=s.started_at,
                completed_at=s.finished_at,
                attempts=s.attempts,
                result=s.output,
                error=s.error,
            )
            for s in info.steps
        ]
        context = info.input
    else:
        records = {k: json.loads(v) for k, v in (raw_steps or {}).items()}
        steps = _dag_steps(flow, dag, info, records)
        context = info.input.get("context") if isinstance(info.input, dict) else info.input
    return _summary(info, steps, context)


def _summary(info: RunInfo, steps: list[DagStepStatus], context: Any) -> WorkflowStatus:
    done = [s for s in steps if s.state in ("completed", "compensated")]
    done.sort(key=lambda s: s.completed_at or datetime.max.replace(tzinfo=UTC))
    running = [s.id for s in steps if s.state in ("running", "waiting")]
    return WorkflowStatus(
        id=info.id,
        state=_RUN_STATE[info.status],
        started_at=info.started_at,
        completed_at=info.finished_at if info.is_terminal else None,
        current_step=None if info.is_terminal else (info.current_step or next(iter(running), None)),
        completed_steps=[s.id for s in done],
        failed_steps=[s.id for s in steps if s.state == "failed"],
        context=context,
        results={s.id: s.result for s in done},
        steps=steps,
    )


def _dag_steps(
    flow: Flow, dag: Dag, info: RunInfo, records: dict[str, dict[str, Any]]
) -> list[DagStepStatus]:
    found: dict[str, dict[str, Any]] = {}
    for name, rec in records.items():
        if name in dag.steps:
            found[name] = {
                "state": _STEP_STATE.get(rec["status"], "pending"),
                "started_at": ms_to_dt(rec.get("started_at")),
                "completed_at": ms_to_dt(rec.get("finished_at")),
                "attempts": rec.get("attempts", 0),
                "result": rec.get("output"),
                "error": rec.get("error"),
            }
        elif name.startswith("wave:") and rec.get("kind") == "map":
            found.update(_wave_steps(flow, info.id, name, rec))
    if info.current_step in dag.steps and info.current_step not in found:
        found[info.current_step] = {"state": "running"}
    for name, rec in records.items():
        sid = name.removeprefix("compensate:")
        if name.startswith("compensate:") and sid in found:
            # "succeeded": the failure path's step; "compensated": the engine's (cancel)
            if rec["status"] in ("succeeded", "compensated"):
                found[sid]["state"] = "compensated"
            elif rec.get("error") or rec.get("compensation_error"):
                error = dict(rec.get("error") or rec["compensation_error"])
                error["message"] = f"compensation failed: {error.get('message', '')}"
                found[sid]["error"] = error
    idle: DagStepState = "skipped" if info.is_terminal else "pending"
    return [
        DagStepStatus(
            id=sid,
            state=found.get(sid, {}).get("state", idle),
            started_at=found.get(sid, {}).get("started_at"),
            completed_at=found.get(sid, {}).get("completed_at"),
            attempts=found.get(sid, {}).get("attempts", 0),
            result=found.get(sid, {}).get("result"),
            error=_error_info(found.get(sid, {}).get("error")),
        )
        for sid in dag.steps
    ]


def _wave_steps(
    flow: Flow, run_id: str, name: str, rec: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per-step detail of a parallel wave, from its map items (also while it is running)."""
    n = int(rec.get("n", 0))
    items = flow.store.map_fields(run_id, name, "i", range(n))
    results = flow.store.map_fields(run_id, name, "r", range(n))
    errors = flow.store.map_fields(run_id, name, "e", range(n))
    out: dict[str, dict[str, Any]] = {}
    for item, result, error in zip(items, results, errors, strict=True):
        if item is None:
            continue
        sid = json.loads(item)["step"]
        if result is not None:
            env = json.loads(result)
            out[sid] = {
                "state": "failed" if "error" in env else "completed",
                "started_at": ms_to_dt(env.get("started_at")),
                "completed_at": ms_to_dt(env.get("finished_at")),
                "attempts": env.get("attempts", 0),
                "result": env.get("result"),
                "error": env.get("error"),
            }
        elif error is not None:
            out[sid] = {"state": "failed", "error": json.loads(error)}
        elif rec["status"] == "waiting":
            out[sid] = {"state": "running", "started_at": ms_to_dt(rec.get("started_at"))}
    return out


def _error_info(error: Any) -> ErrorInfo | None:
    if not isinstance(error, dict):
        return None
    return ErrorInfo(
        type=str(error.get("type", "")),
        message=str(error.get("message", "")),
        traceback=error.get("traceback"),
    )
