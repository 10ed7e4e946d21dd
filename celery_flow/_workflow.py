"""The Workflow object returned by ``@flow.workflow``."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from . import _serde
from ._definitions import (
    Cron,
    Retries,
    check_max_concurrency,
    check_name,
    parse_rate,
    to_seconds,
)
from .errors import InputValidationError, WorkflowDefinitionError

if TYPE_CHECKING:
    from ._engine import FailureContext
    from ._flow import Flow
    from ._handle import RunHandle

R = TypeVar("R")
UNSET: Any = object()  # "schema= not given": infer it from the handler's annotation


def infer_schema(fn: Callable[..., Any], name: str) -> Any:
    """The annotation of the handler's 2nd parameter, or None when absent / Any."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 1:
        raise WorkflowDefinitionError(
            f"workflow {name!r}: the handler must accept (ctx) or (ctx, input), "
            f"got {fn.__name__}{inspect.signature(fn)}."
        )
    if len(params) < 2:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise WorkflowDefinitionError(
            f"workflow {name!r}: cannot resolve the type hints of {fn.__qualname__} ({exc}); "
            "import the annotated types at module level or pass schema= explicitly."
        ) from None
    hint = hints.get(params[1].name)
    return None if hint in (None, Any) else hint


class Workflow(Generic[R]):
    """A registered workflow. Start runs with :meth:`run`; call it directly for unit tests.

    Examples:
        >>> handle = process_order.run({"order_id": "o1", "total_cents": 500})
        >>> handle.result(timeout=30)
    """

    def __init__(
        self,
        flow: Flow,
        fn: Callable[..., R],
        *,
        name: str,
        queue: str | None,
        max_concurrency: int | None,
        rate_limit: str | None,
        limit_key: str | Callable[[Any], str] | None,
        retries: Retries,
        timeout: float | None,
        cron: tuple[Cron, ...],
        schema: Any,
        on_failure: Callable[[FailureContext], Any] | None,
    ) -> None:
        self.flow = flow
        self.fn = fn
        self.name = name
        self.queue = queue
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.limit_key = limit_key
        self.retries = retries
        self.timeout = timeout
        self.cron = cron
        self.schema = schema
        self.on_failure = on_failure
        self.takes_input = len(inspect.signature(fn).parameters) >= 2
        self.is_async = inspect.iscoroutinefunction(fn)
        self._adapter: TypeAdapter[Any] | None = TypeAdapter(schema) if schema is not None else None
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def task_name(self) -> str:
        """Name of the Celery task that executes this workflow's runs."""
        return f"celery_flow.{self.name}"

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} queue={self.queue!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Call the handler directly (no durability): handy in unit tests."""
        return self.fn(*args, **kwargs)

    # -- input --------------------------------------------------------------------------------

    def validate_input(self, value: Any, run_id: str | None = None) -> Any:
        """The validated input (a model instance when a schema applies)."""
        if self._adapter is None:
            return value
        try:
            return self._adapter.validate_python(value)
        except ValidationError as exc:
            where = f" of run {run_id}" if run_id else ""
            raise InputValidationError(
                f"input{where} for workflow {self.name!r} does not match its schema "
                f"{_type_name(self.schema)}:\n{exc}"
            ) from None

    def dump_input(self, value: Any) -> tuple[Any, str]:
        """Validate and encode input for storage: (validated value, JSON)."""
        validated = self.validate_input(value)
        if self._adapter is not None:
            try:
                plain = self._adapter.dump_python(validated, mode="json")
            except Exception as exc:
                raise InputValidationError(
                    f"input for workflow {self.name!r} cannot be dumped to JSON: {exc}"
                ) from None
        else:
            plain = validated
        text = _serde.dumps(
            plain,
            what=f"input for workflow {self.name!r} (a {type(value).__qualname__})",
            max_bytes=self.flow.max_payload_bytes,
            is_input=True,
        )
        return validated, text

    def resolve_limit_key_static(self) -> str | None:
        """The limit key when it does not depend on the input (None for a callable)."""
        if callable(self.limit_key):
            return None
        return self.limit_key or self.name

    def resolve_limit_key(self, validated: Any) -> str:
        """The gate / rate scope of a run with this (validated) input."""
        if self.limit_key is None:
            return self.name
        if callable(self.limit_key):
            key = self.limit_key(validated)
            if not isinstance(key, str) or not key or any(c in key for c in " {}"):
                raise InputValidationError(
                    f"limit_key of workflow {self.name!r} returned {key!r} for this input; it "
                    "must return a non-empty string without spaces or braces, e.g. a tenant id."
                )
            return key
        return self.limit_key

    # -- execution ----------------------------------------------------------------------------

    def call(self, ctx: Any, value: Any) -> Any:
        """Invoke the handler for one execution (``async def`` handlers run on a fresh loop)."""
        args = (ctx, value) if self.takes_input else (ctx,)
        if self.is_async:
            return asyncio.run(self.fn(*args))  # type: ignore[arg-type]
        return self.fn(*args)

    def run(
        self,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        idempotency_ttl: timedelta = timedelta(days=7),
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        queue: str | None = None,
    ) -> RunHandle:
        """Start a run: one atomic Redis script and one broker publish.

        Args:
            input: the handler's input; validated against the schema now (nothing is written
                when it fails).
            idempotency_key: a second call with the same key within ``idempotency_ttl`` returns
                the first run's handle and starts nothing.
            run_at: keep the run ``scheduled`` until this time (a Redis timer, not an ETA).
            delay: keep the run ``scheduled`` this long (seconds or timedelta); give ``run_at``
                or ``delay``, not both.
            queue: route this run's task to another Celery queue.

        Raises:
            InputValidationError: the input does not match the schema or is not JSON.
            PayloadTooLargeError: the input is over ``max_payload_bytes``.
            FlowConnectionError: Redis is unreachable.
        """
        handle = self.flow._start(
            self,
            input,
            idempotency_key=idempotency_key,
            idempotency_ttl=idempotency_ttl,
            run_at=run_at,
            delay=delay,
            queue=queue,
        )
        assert handle is not None  # only skip_if_full (cron ticks) can skip
        return handle


def _type_name(schema: Any) -> str:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.__name__
    return repr(schema)


def build_workflow(
    flow: Flow,
    fn: Callable[..., R],
    name: str,
    opts: dict[str, Any],
    cls: type[Workflow[Any]] = Workflow,
) -> Workflow[R]:
    """Validate the decorator's options (naming the workflow in every error) and build it."""
    retries = opts["retries"] if opts["retries"] is not None else Retries()
    if not isinstance(retries, Retries):
        raise WorkflowDefinitionError(f"workflow {name!r}: retries= must be a Retries(...)")
    cron = opts["cron"] or ()
    cron = (cron,) if isinstance(cron, Cron) else tuple(cron)
    if not all(isinstance(c, Cron) for c in cron):
        raise WorkflowDefinitionError(f"workflow {name!r}: cron= takes Cron(...) objects")
    queue = opts["queue"]
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise WorkflowDefinitionError(f"workflow {name!r}: queue= must be a non-empty string")
    on_failure = opts["on_failure"]
    if on_failure is not None and not callable(on_failure):
        raise WorkflowDefinitionError(f"workflow {name!r}: on_failure= must be callable")
    limit_key = opts["limit_key"]
    if limit_key is not None and not (
        (isinstance(limit_key, str) and check_name(limit_key, what="limit_key"))
        or callable(limit_key)
    ):
        raise WorkflowDefinitionError(
            f"workflow {name!r}: limit_key= must be a string or a callable(input) -> str"
        )
    schema = opts["schema"]
    return cls(
        flow,
        fn,
        name=name,
        queue=queue,
        max_concurrency=check_max_concurrency(opts["max_concurrency"]),
        rate_limit=opts["rate_limit"] if parse_rate(opts["rate_limit"]) else None,
        limit_key=limit_key,
        retries=retries,
        timeout=to_seconds(opts["timeout"], what=f"workflow {name!r} timeout"),
        cron=cron,
        schema=infer_schema(fn, name) if schema is UNSET else schema,
        on_failure=on_failure,
    )
