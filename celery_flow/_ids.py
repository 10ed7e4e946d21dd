"""Run ids and start times."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime, timedelta

from ._definitions import to_seconds
from .errors import WorkflowDefinitionError

_id_lock = threading.Lock()
_id_last = [0, 0]  # last millisecond, sequence within it


def new_run_id() -> str:
    """32 hex chars: 48-bit ms time, 16-bit sequence, 64 random bits.

    Ids sort by creation time (monotonic within a process), which breaks ties between runs
    created in the same millisecond in ``list_runs``' newest-first order.
    """
    ms = time.time_ns() // 1_000_000
    with _id_lock:
        if ms <= _id_last[0]:
            ms, seq = _id_last[0], _id_last[1] + 1
        else:
            seq = 0
        _id_last[:] = [ms, seq]
    return f"{ms:012x}{seq & 0xFFFF:04x}{secrets.token_hex(8)}"


def run_at_ms(run_at: datetime | None, delay: timedelta | float | None) -> int:
    if run_at is not None and delay is not None:
        raise WorkflowDefinitionError("pass run_at= or delay=, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise WorkflowDefinitionError(f"run_at={run_at!r}: expected a datetime")
        if run_at.tzinfo is None:
            raise WorkflowDefinitionError(
                f"run_at={run_at!r} is naive; pass an aware datetime, e.g. "
                "datetime(..., tzinfo=timezone.utc)"
            )
        return int(run_at.astimezone(UTC).timestamp() * 1000)
    seconds = to_seconds(delay, what="delay")
    return int((time.time() + seconds) * 1000) if seconds else 0
