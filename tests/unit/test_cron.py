"""Cron maths, table-driven with an injected clock: DST in Paris and New York, ids, bad input.

Transitions used (2024): Europe/Paris springs forward on 31 March at 01:00 UTC (02:00 CET ->
03:00 CEST) and falls back on 27 October at 01:00 UTC (03:00 CEST -> 02:00 CET);
America/New_York springs forward on 10 March at 07:00 UTC (02:00 EST -> 03:00 EDT) and falls
back on 3 November at 06:00 UTC (02:00 EDT -> 01:00 EST).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from croniter import croniter

from celery_flow import Cron, Flow, WorkflowDefinitionError
from celery_flow._cron import compile_spec, cron_definitions, entry_id, fires, next_fire


def ts(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp())


def iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize(
    ("expression", "tz", "after", "expected"),
    [
        # Paris, spring forward: a fixed time in the gap fires at the end of the gap, once
        (
            "30 2 * * *",
            "Europe/Paris",
            "2024-03-30T12:00:00",
            ["2024-03-31T01:00:00", "2024-04-01T00:30:00", "2024-04-02T00:30:00"],
        ),
        # ...an hourly entry follows the real clock: 01:00 CET, then 03:00 and 04:00 CEST
        (
            "0 * * * *",
            "Europe/Paris",
            "2024-03-30T23:30:00",
            ["2024-03-31T00:00:00", "2024-03-31T01:00:00", "2024-03-31T02:00:00"],
        ),
        # ...and a per-second entry does not miss a beat (01:59:59 CET -> 03:00:00 CEST)
        (
            "* * * * * *",
            "Europe/Paris",
            "2024-03-31T00:59:58",
            ["2024-03-31T00:59:59", "2024-03-31T01:00:00", "2024-03-31T01:00:01"],
        ),
        # Paris, fall back: a fixed time in the repeated hour fires on its first pass only
        (
            "30 2 * * *",
            "Europe/Paris",
            "2024-10-26T12:00:00",
            ["2024-10-27T00:30:00", "2024-10-28T01:30:00"],
        ),
        (
            "*/20 2 * * *",
            "Europe/Paris",
            "2024-10-27T00:00:00",
            ["2024-10-27T00:20:00", "2024-10-27T00:40:00", "2024-10-28T01:00:00"],
        ),
        # ...an hourly entry fires in both passes: 02:00 CEST, 02:00 CET, 03:00 CET
        (
            "0 * * * *",
            "Europe/Paris",
            "2024-10-26T23:30:00",
            ["2024-10-27T00:00:00", "2024-10-27T01:00:00", "2024-10-27T02:00:00"],
        ),
        (
            "* * * * * *",
            "Europe/Paris",
            "2024-10-27T00:59:58",
            ["2024-10-27T00:59:59", "2024-10-27T01:00:00", "2024-10-27T01:00:01"],
        ),
        # New York, spring forward
        (
            "30 2 * * *",
            "America/New_York",
            "2024-03-09T12:00:00",
            ["2024-03-10T07:00:00", "2024-03-11T06:30:00"],
        ),
        (
            "*/30 * * * *",
            "America/New_York",
            "2024-03-10T06:15:00",
            ["2024-03-10T06:30:00", "2024-03-10T07:00:00", "2024-03-10T07:30:00"],
        ),
        # New York, fall back: 01:30 happens twice and fires once; 02:00 happens once
        (
            "30 1 * * *",
            "America/New_York",
            "2024-11-02T12:00:00",
            ["2024-11-03T05:30:00", "2024-11-04T06:30:00"],
        ),
        (
            "0 2 * * *",
            "America/New_York",
            "2024-11-02T12:00:00",
            ["2024-11-03T07:00:00", "2024-11-04T07:00:00"],
        ),
        (
            "*/30 * * * *",
            "America/New_York",
            "2024-11-03T04:45:00",
            [
                "2024-11-03T05:00:00",  # 01:00 EDT
                "2024-11-03T05:30:00",  # 01:30 EDT
                "2024-11-03T06:00:00",  # 01:00 EST
                "2024-11-03T06:30:00",  # 01:30 EST
                "2024-11-03T07:00:00",  # 02:00 EST
            ],
        ),
        # UTC, seconds, leap days, and a yearly entry that crosses two transitions
        ("*/5 * * * *", "UTC", "2024-01-01T00:02:30", ["2024-01-01T00:05:00"]),
        ("*/10 * * * * *", "UTC", "2024-01-01T00:00:00", ["2024-01-01T00:00:10"]),
        ("0 0 29 2 *", "UTC", "2024-03-01T00:00:00", ["2028-02-29T00:00:00"]),
        (
            "30 2 27 10 *",
            "Europe/Paris",
            "2024-02-01T00:00:00",
            ["2024-10-27T00:30:00", "2025-10-27T01:30:00"],
        ),
    ],
)
def test_next_fire_times(expression, tz, after, expected):
    # Given a compiled entry and an injected "now"
    spec = compile_spec(expression, tz)
    # When the next fire times are computed one after the other
    got = fires(spec, ts(after), len(expected))
    # Then they are the expected UTC instants
    assert [iso(t) for t in got] == expected


def _matcher(expression: str) -> Callable[[datetime], bool]:
    """Minute/hour matcher for 5-field expressions whose day fields are all '*'."""
    (minutes, hours, *days), _ = croniter.expand(expression)
    assert days == [["*"], ["*"], ["*"]]

    def match(wall: datetime) -> bool:
        return (minutes == ["*"] or wall.minute in minutes) and (
            hours == ["*"] or wall.hour in hours
        )

    return match


def _reference(expression: str, tz: str, start: int, end: int) -> list[int]:
    """The DST rules restated by brute force over every minute (a second implementation)."""
    zone = ZoneInfo(tz)
    spec = compile_spec(expression, tz)
    matches = _matcher(expression)
    out: set[int] = set()
    prev_off = None
    for t in range(start, end, 60):
        local = datetime.fromtimestamp(t, zone)
        off = local.utcoffset()
        if prev_off is not None and off > prev_off and not spec.follows_clock:
            # spring forward at t: a skipped wall time that matches fires at t
            wall = (local - (off - prev_off)).replace(tzinfo=None)
            while wall < local.replace(tzinfo=None):
                if matches(wall):
                    out.add(t)
                wall += timedelta(minutes=1)
        prev_off = off
        if matches(local) and (spec.follows_clock or local.fold == 0):
            out.add(t)
    return sorted(out)


@pytest.mark.parametrize(
    ("tz", "day"),
    [
        ("Europe/Paris", "2024-03-30"),
        ("Europe/Paris", "2024-10-26"),
        ("America/New_York", "2024-03-09"),
        ("America/New_York", "2024-11-02"),
    ],
)
@pytest.mark.parametrize(
    "expression",
    ["30 2 * * *", "0 1,2,3 * * *", "*/20 1-3 * * *", "15 * * * *", "*/10 * * * *", "0 */2 * * *"],
)
def test_two_days_around_each_transition_match_a_brute_force_reference(tz, day, expression):
    # Given a 2-day window that contains a DST transition
    start = ts(f"{day}T00:00:00")
    end = start + 2 * 86400
    spec = compile_spec(expression, tz)
    # When every fire in the window is listed
    got = [t for t in fires(spec, start - 1, 300) if t < end]
    # Then it equals the brute-force reading of the rules: nothing twice, nothing missed
    assert got == _reference(expression, tz, start, end)
    assert len(got) == len(set(got))


@pytest.mark.parametrize(
    ("expression", "tz"),
    [("30 2 * * *", "Europe/Paris"), ("30 2 * * *", "America/New_York"), ("0 2 * * *", "UTC")],
)
def test_a_daily_entry_fires_once_every_day_across_a_whole_year(expression, tz):
    # Given a daily entry at a time that DST skips once and repeats once a year
    spec = compile_spec(expression, tz)
    # When a year of fires is computed
    got = fires(spec, ts("2024-01-01T00:00:00"), 366)
    # Then there is exactly one per local calendar day (never missed, never doubled)
    days = [datetime.fromtimestamp(t, ZoneInfo(tz)).date() for t in got]
    assert len(set(days)) == 366
    assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(days))


@pytest.mark.parametrize("after", [0.0, 0.5, 0.999, 1.0])
def test_the_next_fire_is_strictly_after_now_so_there_is_no_catch_up(after):
    # Given "now" just at or after a matching second
    base = ts("2024-06-01T12:00:00")
    spec = compile_spec("* * * * * *")
    # When the next fire is computed from now
    nxt = next_fire(spec, base + after)
    # Then it is the first whole second strictly after now
    assert nxt == base + (1 if after < 1 else 2)


def test_an_expression_that_never_matches_has_no_next_fire():
    assert next_fire(compile_spec("0 0 30 2 *"), ts("2024-01-01T00:00:00")) is None


@pytest.mark.parametrize(
    ("expression", "follows_clock"),
    [
        ("*/15 * * * *", True),
        ("0 * * * *", True),
        ("0 0-23 * * *", True),
        ("* * * * * *", True),
        ("30 2 * * *", False),
        ("0 */2 * * *", False),
        ("* 2 * * *", False),
        ("0 30 2 * * *", False),
    ],
)
def test_entries_that_fire_every_hour_follow_the_clock(expression, follows_clock):
    assert compile_spec(expression).follows_clock is follows_clock


def test_default_entry_ids_are_stable_and_change_with_the_schedule():
    a = entry_id("sweep", "*/5 * * * *", "UTC")
    assert a == entry_id("sweep", " */5  * * * * ", "UTC")  # whitespace does not matter
    assert a.startswith("sweep:") and len(a) == len("sweep:") + 10
    others = {
        entry_id("sweep", "*/5 * * * *", "Europe/Paris"),
        entry_id("sweep", "*/6 * * * *", "UTC"),
        entry_id("sweep2", "*/5 * * * *", "UTC"),
    }
    assert a not in others and len(others) == 3


def _flow() -> Flow:
    return Flow(Celery("t", broker="memory://", set_as_current=False), redis_url="redis://x:1/0")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Cron("61 * * * *"), r"Cron\('61 \* \* \* \*'\): not a valid 5-field"),
        (lambda: Cron("* * *"), "not a valid 5-field"),
        (lambda: Cron("* * * * * * *"), "not a valid 5-field"),
        (lambda: Cron("every day"), "not a valid 5-field"),
        (lambda: Cron("* * * * *", timezone="Mars/Olympus"), "unknown IANA timezone"),
        (lambda: Cron("* * * * *", timezone="CEST+2"), "unknown IANA timezone"),
        (lambda: "*/5 * * * *", r"cron= takes Cron\(...\) objects"),
    ],
)
def test_bad_cron_definitions_fail_at_decoration_with_a_clear_error(make, match):
    # Given a flow
    flow = _flow()
    # When a workflow is decorated with a bad cron definition
    # Then the decoration fails, naming the bad value and the fix
    with pytest.raises(WorkflowDefinitionError, match=match):

        @flow.workflow(cron=[make()])
        def job(ctx) -> None:
            return None


def test_two_entries_with_the_same_id_are_rejected_with_the_fix():
    # Given a workflow with the same schedule twice (different inputs)
    flow = _flow()

    @flow.workflow(cron=[Cron("0 * * * *", input=1), Cron("0 * * * *", input=2)])
    def job(ctx, n: int) -> None:
        return None

    # When its definitions are built for the registry, Then the error says to give ids
    with pytest.raises(WorkflowDefinitionError, match=r"Cron\(\.\.\., id="):
        cron_definitions(flow)
