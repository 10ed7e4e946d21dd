"""RunHandle: a reference to one run."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import _serde
from ._models import ErrorInfo, RunInfo
from .errors import RunCanceled, RunFailed, RunNotFound

if TYPE_CHECKING:
    from ._flow import Flow


class RunHandle:
    """Handle for one run, returned by ``.run()``, ``flow.run`` and ``flow.handle``.

    Examples:
        >>> h = flow.run("process-order", {"order_id": "o1", "total_cents": 5})
        >>> h.status()
        'queued'
        >>> h.result(timeout=30)
        {'charged': 5}
    """

    def __init__(self, flow: Flow, run_id: str, workflow: str) -> None:
        self._flow = flow
        self.id = run_id
        self.workflow = workflow

    def __repr__(self) -> str:
        return f"<RunHandle {self.workflow} {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def status(self) -> str:
        """Current status. 1 round trip. Raises RunNotFound."""
        status = self._flow.store.status(self.id)
        if status is None:
            raise RunNotFound(_not_found(self.id))
        return status

    def info(self) -> RunInfo:
        """Full state with steps. 1 round trip."""
        return self._flow.get_run(self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end and return its output.

        ``timeout`` bounds only this wait, never the run.

        Raises:
            RunFailed: the run ended failed (``.error`` has the ErrorInfo).
            RunCanceled: the run was canceled.
            TimeoutError: still not terminal after ``timeout`` seconds.
            RunNotFound: no such run.
        """
        store = self._flow.store
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            h, _ = store.load(self.id, with_steps=False)
            if not h:
                raise RunNotFound(_not_found(self.id))
            status = h["status"]
            if status == "succeeded":
                return _serde.loads(h.get("output"))
            if status == "failed":
                raise RunFailed(self.id, ErrorInfo(**_serde.loads(h["error"])))
            if status == "canceled":
                raise RunCanceled(self.id, h.get("cancel_reason") or None)
            remaining = 5.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"run {self.id} ({self.workflow}) is still {status} after waiting "
                    f"{timeout}s; the run itself goes on — call result() again to keep waiting."
                )
            store.wait_done(self.id, remaining)

    def cancel(self, reason: str | None = None) -> bool:
        """Cancel the run; False when it was already terminal. See ``Flow.cancel``."""
        return self._flow.cancel(self.id, reason)


def _not_found(run_id: str) -> str:
    return (
        f"no run {run_id!r} in this Flow's Redis/prefix; check the id and Flow(prefix=...), "
        "or it expired after the retention period."
    )
