"""celery_flow: durable workflows for the Celery apps people already run.

Public API only; everything else lives in ``_private`` modules. The export
list is frozen by ``tests/unit/test_public_api.py``.
"""

from ._batch import Batch, BatchProgress, Page
from ._context import Context, Steps
from ._dag import DagStep
from ._dag_status import DagStepStatus, WorkflowStatus
from ._definitions import Cron, Retries
from ._engine import FailureContext
from ._flow import Flow
from ._handle import RunHandle
from ._models import (
    CronStatus,
    ErrorInfo,
    GateStatus,
    ProgressInfo,
    RunInfo,
    RunPage,
    StepInfo,
)
from ._webhooks import verify_signature
from ._workflow import Workflow
from .errors import (
    ChildRunFailed,
    ConfigurationError,
    DagStepFailed,
    DuplicateStepError,
    EventTimeout,
    FlowConnectionError,
    FlowError,
    InputValidationError,
    MapFailed,
    NonRetriableError,
    OutputSerializationError,
    PayloadTooLargeError,
    RunCanceled,
    RunFailed,
    RunNotFound,
    RunStateError,
    RunTimeout,
    StepNotFound,
    StepTimeout,
    WorkflowDefinitionError,
    WorkflowNotFound,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "Batch",
    "BatchProgress",
    "ChildRunFailed",
    "ConfigurationError",
    "Context",
    "Cron",
    "CronStatus",
    "DagStep",
    "DagStepFailed",
    "DagStepStatus",
    "DuplicateStepError",
    "ErrorInfo",
    "EventTimeout",
    "FailureContext",
    "Flow",
    "FlowConnectionError",
    "FlowError",
    "GateStatus",
    "InputValidationError",
    "MapFailed",
    "NonRetriableError",
    "OutputSerializationError",
    "Page",
    "PayloadTooLargeError",
    "ProgressInfo",
    "Retries",
    "RunCanceled",
    "RunFailed",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "RunPage",
    "RunStateError",
    "RunTimeout",
    "StepInfo",
    "StepNotFound",
    "StepTimeout",
    "Steps",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowNotFound",
    "WorkflowStatus",
    "__version__",
    "verify_signature",
]
