"""``flow.dag``'s definitions: ``DagStep``, ``Dag``, ``DagWorkflow``, validation, one step's call.

A DAG is validated when ``flow.dag`` is called (ids, dependencies, cycles, handlers; see
:func:`check_dag`), then compiled onto one regular workflow by :mod:`celery_flow._dag_run`, which
also walks it; :mod:`celery_flow._dag_status` is the status view of a run.

:func:`run_dag_item`, the map fn of a parallel wave, lives here because a wave's map step
stores it by import path (``celery_flow._dag:run_dag_item``): a run in flight across an upgrade,
or a chunk run by a worker of another version, must still find it under that name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import _serde
from ._context import _call, error_dict
from ._definitions import NO_RETRY, Retries, check_name, to_seconds
from ._fanout import current_flow
from ._webhooks import is_http_url, post_json
from ._workflow import Workflow
from .errors import InputValidationError, NonRetriableError, WorkflowDefinitionError

if TYPE_CHECKING:
    from ._flow import Flow
    from ._handle import RunHandle


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
