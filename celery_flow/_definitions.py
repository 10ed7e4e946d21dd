"""Frozen, validated definitions: Retries, Cron, and the limits parser.

Everything here is checked when the decorator runs, so a typo fails at import
time with a message that names the bad value and the fix, never in a worker.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import NonRetriableError, WorkflowDefinitionError

Backoff = Literal["exponential", "linear", "fixed"]
_BACKOFFS = ("exponential", "linear", "fixed")


@dataclass(frozen=True)
class Retries:
    """Retry policy for a whole run (``@flow.workflow(retries=...)``) or one step.

    Args:
        max_attempts: total attempts including the first (1 = never retry).
        backoff: ``"exponential"`` (base * 2**(n-1)), ``"linear"`` (base * n) or ``"fixed"``.
        base_delay: seconds before the first retry.
        max_delay: upper bound of any delay, in seconds.
        jitter: randomise each delay uniformly in [delay/2, delay] to spread thundering herds.
        non_retriable: exception types that fail at once, in addition to the built-in ones.

    Examples:
        >>> Retries(max_attempts=5, backoff="exponential", base_delay=0.5).delay(3, jitter=False)
        2.0
    """

    max_attempts: int = 1
    backoff: Backoff = "exponential"
    base_delay: float = 1.0
    max_delay: float = 300.0
    jitter: bool = True
    non_retriable: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or (self.max_attempts < 1)
        ):
            raise WorkflowDefinitionError(
                f"Retries(max_attempts={self.max_attempts!r}): must be an int >= 1 "
                "(1 means a single attempt, no retry)."
            )
        if self.backoff not in _BACKOFFS:
            raise WorkflowDefinitionError(
                f"Retries(backoff={self.backoff!r}): must be one of {', '.join(_BACKOFFS)}."
            )
        for label, value in (("base_delay", self.base_delay), ("max_delay", self.max_delay)):
            if not isinstance(value, int | float) or value < 0:
                raise WorkflowDefinitionError(
                    f"Retries({label}={value!r}): must be a number of seconds >= 0."
                )
        nr = self.non_retriable
        if not isinstance(nr, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in nr
        ):
            raise WorkflowDefinitionError(
                f"Retries(non_retriable={nr!r}): must be a tuple of exception classes, "
                "e.g. non_retriable=(PermissionError, KeyError)."
            )

    def delay(self, attempt: int, *, jitter: bool | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        n = max(1, attempt)
        if self.backoff == "exponential":
            d = self.base_delay * (2 ** (n - 1))
        elif self.backoff == "linear":
            d = self.base_delay * n
        else:
            d = self.base_delay
        d = min(d, self.max_delay)
        if self.jitter if jitter is None else jitter:
            d = random.uniform(d / 2, d)
        return float(d)

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether failed attempt ``attempt`` with ``exc`` gets another attempt."""
        return attempt < self.max_attempts and not is_non_retriable(exc, self)


NO_RETRY = Retries()


def is_non_retriable(exc: BaseException, policy: Retries | None = None) -> bool:
    """The exceptions no retry policy ever retries (contract section 2)."""
    from .errors import (
        InputValidationError,
        OutputSerializationError,
        PayloadTooLargeError,
        RunCanceled,
        RunTimeout,
        WorkflowNotFound,
    )

    builtin = (
        NonRetriableError,
        InputValidationError,
        OutputSerializationError,
        PayloadTooLargeError,
        WorkflowNotFound,
        RunCanceled,
        RunTimeout,
    )
    return isinstance(exc, builtin) or bool(policy and isinstance(exc, policy.non_retriable))


@dataclass(frozen=True)
class Cron:
    """A cron schedule that starts one run per tick (run by the workers' leader).

    Args:
        expression: 5-field (minute precision) or 6-field (leading seconds) croniter expression.
        timezone: IANA zone the expression is read in (DST handled by croniter).
        input: the input of every run it starts.
        id: stable id of the entry (default: derived from workflow, expression and timezone).

    Examples:
        >>> Cron("*/5 * * * *", timezone="Europe/Paris", input={"sweep": True}).expression
        '*/5 * * * *'
    """

    expression: str
    timezone: str = "UTC"
    input: Any = None
    id: str | None = None

    def __post_init__(self) -> None:
        from croniter import croniter

        fields = self.expression.split() if isinstance(self.expression, str) else []
        if len(fields) not in (5, 6) or not croniter.is_valid(
            self.expression, second_at_beginning=len(fields) == 6
        ):
            raise WorkflowDefinitionError(
                f"Cron({self.expression!r}): not a valid 5-field ('*/5 * * * *') or 6-field "
                "('*/10 * * * * *', seconds first) cron expression."
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise WorkflowDefinitionError(
                f"Cron(timezone={self.timezone!r}): unknown IANA timezone; use a name such "
                "as 'UTC', 'Europe/Paris' or 'America/New_York'."
            ) from None


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PERIOD_S = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
}


def parse_rate(rate: str | None) -> tuple[int, int] | None:
    """``"10/s"`` -> (10, 1000): count and period in ms. None stays None."""
    if rate is None:
        return None
    m = _RATE.match(rate) if isinstance(rate, str) else None
    if not m or int(m.group(1)) < 1:
        raise WorkflowDefinitionError(
            f"rate_limit={rate!r}: expected 'N/s', 'N/m' or 'N/h' with N >= 1, e.g. '10/s'."
        )
    return int(m.group(1)), _PERIOD_S[m.group(2)] * 1000


def check_max_concurrency(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WorkflowDefinitionError(
            f"max_concurrency={value!r}: must be an int >= 1, or None for unlimited."
        )
    return value


def to_seconds(value: timedelta | float | int | None, *, what: str) -> float | None:
    """Accept seconds or a timedelta; reject negatives and non-numbers with a clear error."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise WorkflowDefinitionError(f"{what}={value!r}: expected seconds or a timedelta.")
    if seconds < 0:
        raise WorkflowDefinitionError(f"{what}={value!r}: must not be negative.")
    return seconds


_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")


def check_name(name: Any, *, what: str = "workflow name") -> str:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 200:
        raise WorkflowDefinitionError(
            f"{what} {name!r}: use 1-200 characters from letters, digits, '-', '_', '.', ':'."
        )
    return name
