"""Pure cron maths: the next fire instant of an entry, DST-correct, with an explicit clock.

Also the entries' ids and registry definitions. Nothing here reads the clock or talks to
Redis: every function takes the instant to start from, so the scheduler passes Redis' time
and the tests pass any instant they like.

Instants are UTC epoch seconds (fires are whole seconds). Expressions are read in the
entry's IANA zone, with two rules for the hours a DST change skips or repeats (the ones
Vixie cron uses, so they are what operators expect):

* **Fixed times of day** (the hour field does not match every hour: ``30 2 * * *``,
  ``0 */6 * * *``) fire once per scheduled wall-clock time. A time skipped by
  spring-forward fires at the end of the gap (02:30 in Paris on the last Sunday of March
  fires at 03:00 CEST), so the day is never missed; a time repeated by fall-back fires on
  its first occurrence only (never twice).
* **Hourly or more often** (the hour field matches all 24 hours: ``*/15 * * * *``,
  ``0 * * * *``, per-second ``* * * * * *``) follows the real clock: wall times skipped by
  spring-forward do not exist and do not fire; the repeated hour fires in both passes, so
  the interval between fires stays regular in real time.

The search walks the UTC timeline in segments of constant UTC offset: inside a segment
wall time is ``instant + offset``, so croniter on naive wall times is exact there, and each
DST transition is handled once where the segment ends.
"""

from __future__ import annotations

import calendar
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from croniter import croniter

from . import _serde
from .errors import WorkflowDefinitionError

if TYPE_CHECKING:
    from ._flow import Flow

_EPOCH = datetime(1970, 1, 1)
_STEP_S = 6 * 3600  # probe for a DST transition every 6 h (real zones never have two closer)
_MAX_SEGMENTS = 400  # each pass of the search loop moves past one transition or one match


@dataclass(frozen=True)
class CronSpec:
    """A compiled cron entry: the expression, its zone and its DST rule.

    Attributes:
        expression: the croniter expression (5 fields, or 6 with seconds first).
        timezone: IANA zone name the expression is read in.
        seconds: True for a 6-field expression.
        follows_clock: True when the entry fires every hour (see the module docstring).
    """

    expression: str
    timezone: str
    seconds: bool
    follows_clock: bool

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@lru_cache(maxsize=4096)
def compile_spec(expression: str, timezone: str = "UTC") -> CronSpec:
    """Compile an expression (already validated by ``Cron``) for :func:`next_fire`.

    Examples:
        >>> compile_spec("*/15 * * * *", "Europe/Paris").follows_clock
        True
    """
    expression = " ".join(expression.split())
    seconds = len(expression.split()) == 6
    expanded, _ = croniter.expand(expression, second_at_beginning=seconds)
    # croniter normalises the hour field (index 1 with or without seconds) to ['*'] when it
    # matches all 24 hours, whatever the spelling (*, */1, 0-23).
    return CronSpec(expression, timezone, seconds, expanded[1] == ["*"])


def entry_id(workflow: str, expression: str, timezone: str) -> str:
    """Default id of a cron entry: stable across processes and deploys.

    It is ``<workflow>:<10 hex>``, the hex a digest of the workflow, the expression (with
    whitespace normalised) and the timezone, so the same definition always gets the same id
    and a changed schedule gets a new one.

    Examples:
        >>> entry_id("sweep", "*/5 * * * *", "UTC") == entry_id("sweep", "*/5  * * * *", "UTC")
        True
    """
    canon = "\x1f".join((workflow, " ".join(expression.split()), timezone))
    return f"{workflow}:{hashlib.sha256(canon.encode()).hexdigest()[:10]}"


def _offset(zone: ZoneInfo, t: int) -> int:
    off = datetime.fromtimestamp(t, zone).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def _first_change(zone: ZoneInfo, a: int, b: int, off: int) -> int | None:
    """First instant in [a, b] whose UTC offset differs from ``off`` (the offset at ``a``)."""
    p = a
    while p < b:
        q = min(p + _STEP_S, b)
        if _offset(zone, q) != off:
            lo, hi = p, q  # offset(lo) == off, offset(hi) != off
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == off:
                    lo = mid
                else:
                    hi = mid
            return hi
        p = q
    return None


def _repeat_end(zone: ZoneInfo, t: int) -> int:
    """First instant after ``t`` (in the second pass of a repeated hour) that is not repeated."""
    lo, hi = t, t + 1
    while datetime.fromtimestamp(hi, zone).fold == 1:
        lo, hi = hi, hi + (hi - lo) * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).fold == 1:
            lo = mid
        else:
            hi = mid
    return hi


def _next_wall(spec: CronSpec, wall: int) -> int | None:
    """The first matching wall time strictly after ``wall`` (naive, as epoch-like seconds)."""
    start = _EPOCH + timedelta(seconds=wall)
    try:
        nxt = croniter(spec.expression, start, second_at_beginning=spec.seconds).get_next(datetime)
    except Exception:  # croniter gives up on expressions that never match (Feb 30)
        return None
    return calendar.timegm(nxt.timetuple())


def next_fire(spec: CronSpec, after: float) -> int | None:
    """The first fire instant strictly after ``after`` (UTC epoch seconds), or None if never.

    The caller passes "now": that is how the scheduler avoids a catch-up burst after
    downtime. See the module docstring for the DST rules.

    Examples:
        >>> spec = compile_spec("30 2 * * *", "Europe/Paris")
        >>> datetime.fromtimestamp(next_fire(spec, 1711839600), UTC)  # 2024-03-31 00:00 CET
        datetime.datetime(2024, 3, 31, 1, 0, tzinfo=datetime.timezone.utc)
    """
    zone = spec.zone
    t = int(after // 1)  # fires are whole seconds: > after  <=>  > floor(after)
    for _ in range(_MAX_SEGMENTS):
        off = _offset(zone, t + 1)  # the offset of the first instant we may return
        w = _next_wall(spec, t + off)
        if w is None:
            return None
        cand = w - off
        change = _first_change(zone, t + 1, cand, off)
        if change is None:
            # cand is in t's segment, so its wall time really is w
            if datetime.fromtimestamp(cand, zone).fold == 1 and not spec.follows_clock:
                t = _repeat_end(zone, cand) - 1  # a repeated time: it fired on the first pass
                continue
            return cand
        new_off = _offset(zone, change)
        # walls up to w - 1 did not match; w itself maps past the transition
        if new_off > off and w < change + new_off and not spec.follows_clock:
            return change  # w was skipped by spring-forward: fire at the end of the gap
        t = change - 1  # restart in the next segment (its walls start at change + new_off)
    return None


def fires(spec: CronSpec, after: float, count: int) -> list[int]:
    """The next ``count`` fire instants after ``after`` (a convenience for tests and docs)."""
    out: list[int] = []
    t = after
    for _ in range(count):
        nxt = next_fire(spec, t)
        if nxt is None:
            break
        out.append(nxt)
        t = nxt
    return out


def to_datetime(ms: int) -> datetime:
    """Milliseconds since the epoch to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def cron_definitions(flow: Flow) -> list[tuple[str, str]]:
    """(entry id, definition JSON) of every ``cron=`` entry of the flow, for registry sync.

    Raises:
        WorkflowDefinitionError: two entries share an id (give one of them ``Cron(id=...)``).
    """
    out: dict[str, str] = {}
    for wf in flow.workflows.values():
        for c in wf.cron:
            eid = c.id or entry_id(wf.name, c.expression, c.timezone)
            if eid in out:
                raise WorkflowDefinitionError(
                    f"workflow {wf.name!r}: two cron entries have the id {eid!r} (same "
                    "expression and timezone, or the same id=); give each Cron(..., id='...')."
                )
            out[eid] = _serde.dumps(
                {
                    "id": eid,
                    "workflow": wf.name,
                    "expression": c.expression,
                    "timezone": c.timezone,
                    "input": c.input,
                    "app_id": flow.app_id,
                },
                what=f"cron input of workflow {wf.name!r}",
                max_bytes=flow.max_payload_bytes,
            )
    return sorted(out.items())
