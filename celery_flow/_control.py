"""Internal control-flow signals.

They subclass BaseException, not Exception, so a user's ``except Exception``
inside a workflow cannot swallow them.
"""

from __future__ import annotations


class ControlSignal(BaseException):
    """Base of the engine's internal signals; never escapes celery_flow."""


class LostOwnership(ControlSignal):
    """A fenced write was rejected: another execution owns the run now. Stop, write nothing."""


class Cancelled(ControlSignal):
    """Cancellation was requested; raised at the next step boundary."""


class StopReplay(ControlSignal):
    """Compensation replay reached a step with no recorded result: stop the handler there."""


class Suspend(ControlSignal):
    """The run is parked on a waiting step (already recorded in Redis): end this execution."""
