"""The celery_flow error tree. Every public error subclasses :class:`FlowError`.

::

    FlowError
    ├── NonRetriableError            raise it in a step or handler to fail without retrying
    ├── WorkflowDefinitionError      (ValueError)   bad decorator / definition arguments
    ├── InputValidationError         (ValueError)   input fails the schema or is not JSON
    ├── OutputSerializationError     (TypeError)    a step or run output is not JSON
    ├── PayloadTooLargeError         (ValueError)   input/output over ``max_payload_bytes``
    ├── WorkflowNotFound             (LookupError)
    ├── RunNotFound                  (LookupError)
    ├── RunStateError                (RuntimeError) the run's status forbids the operation
    ├── DuplicateStepError           (ValueError)
    ├── StepNotFound                 (LookupError)  retry(from_step=...) names no step
    ├── StepTimeout                  (TimeoutError)
    ├── EventTimeout                 (TimeoutError)
    ├── RunTimeout                   (TimeoutError)
    ├── ChildRunFailed
    ├── MapFailed
    ├── RunFailed                    ``.error`` holds the run's ErrorInfo
    ├── RunCanceled
    ├── FlowConnectionError          (ConnectionError) Redis unreachable
    └── ConfigurationError           (ValueError)   Flow(...) misconfigured

Usage errors also subclass the matching builtin, so ``except ValueError`` keeps
working for callers that do not know celery_flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import ErrorInfo


class FlowError(Exception):
    """Root of every error celery_flow raises."""


class NonRetriableError(FlowError):
    """Fail the step (and the run) without consulting any retry policy.

    Examples:
        >>> def charge():
        ...     raise NonRetriableError("card declined: retrying will not help")
    """


class WorkflowDefinitionError(FlowError, ValueError):
    """A workflow, cron or retry definition is invalid (raised at decoration time)."""


class InputValidationError(FlowError, ValueError):
    """The run input does not validate against the workflow's schema or is not JSON."""


class OutputSerializationError(FlowError, TypeError):
    """A step or run returned a value that cannot be stored as JSON."""


class PayloadTooLargeError(FlowError, ValueError):
    """An input or output is larger than ``Flow(max_payload_bytes=...)``."""


class WorkflowNotFound(FlowError, LookupError):
    """No workflow with that name is registered on this Flow."""


class RunNotFound(FlowError, LookupError):
    """No run with that id exists (or it expired after ``retention``)."""


class RunStateError(FlowError, RuntimeError):
    """The operation is not allowed in the run's current status."""


class DuplicateStepError(FlowError, ValueError):
    """Two steps of one execution used the same name."""


class StepTimeout(FlowError, TimeoutError):
    """One attempt of a step ran longer than its ``timeout=``."""


class EventTimeout(FlowError, TimeoutError):
    """``wait_for_event`` reached its timeout before an event arrived."""


class RunTimeout(FlowError, TimeoutError):
    """The whole run exceeded its workflow ``timeout=`` (never retried)."""


class ChildRunFailed(FlowError):
    """A child run started with ``run_workflow`` ended failed."""

    def __init__(self, message: str, error: ErrorInfo | None = None) -> None:
        super().__init__(message)
        self.error = error


class DagStepFailed(NonRetriableError):
    """A DAG step failed after its retries; its compensations (``saga=True``) already ran.

    The run's ``ErrorInfo.message`` names the step, its error and the compensated steps.
    """


class MapFailed(FlowError):
    """Items of ``ctx.step.map`` failed after their retries."""

    def __init__(self, message: str, failed_indexes: list[int] | None = None) -> None:
        super().__init__(message)
        self.failed_indexes = failed_indexes or []


class RunFailed(FlowError):
    """Raised by ``RunHandle.result()`` when the run ended ``failed``.

    Attributes:
        run_id: the run's id.
        error: the run's :class:`~celery_flow.ErrorInfo` (type, message, traceback).
    """

    def __init__(self, run_id: str, error: ErrorInfo) -> None:
        super().__init__(f"run {run_id} failed: {error.type}: {error.message}")
        self.run_id = run_id
        self.error = error


class RunCanceled(FlowError):
    """Raised by ``RunHandle.result()`` when the run was canceled."""

    def __init__(self, run_id: str, reason: str | None = None) -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"run {run_id} was canceled{detail}")
        self.run_id = run_id
        self.reason = reason


class FlowConnectionError(FlowError, ConnectionError):
    """Redis could not be reached (raised within a few seconds, never a hang)."""


def describe(exc: BaseException) -> dict[str, Any]:
    """Type name and message of an exception, as stored in ErrorInfo."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return {"type": name, "message": str(exc)}


class ConfigurationError(FlowError, ValueError):
    """Flow(...) is misconfigured (no Redis URL, bad lease or retention)."""


class StepNotFound(FlowError, LookupError):
    """A step name given to ``flow.retry(from_step=...)`` is not a step of that run."""
