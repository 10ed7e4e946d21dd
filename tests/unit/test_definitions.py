"""Pure logic, table-driven: backoff, rate parsing, names, cron validation, the public API."""

from __future__ import annotations

from datetime import timedelta

import pytest

import celery_flow
from celery_flow import Cron, NonRetriableError, Retries, RunTimeout, WorkflowDefinitionError
from celery_flow._definitions import check_name, is_non_retriable, parse_rate, to_seconds
from celery_flow._keys import Keys


@pytest.mark.parametrize(
    ("policy", "attempt", "expected"),
    [
        (Retries(backoff="exponential", base_delay=1), 1, 1),
        (Retries(backoff="exponential", base_delay=1), 4, 8),
        (Retries(backoff="exponential", base_delay=1, max_delay=5), 10, 5),
        (Retries(backoff="linear", base_delay=2), 3, 6),
        (Retries(backoff="fixed", base_delay=3), 7, 3),
    ],
)
def test_backoff_delays(policy, attempt, expected):
    assert policy.delay(attempt, jitter=False) == expected


def test_jitter_stays_within_half_to_full_delay():
    policy = Retries(base_delay=4, jitter=True)
    samples = [policy.delay(1) for _ in range(200)]
    assert all(2 <= s <= 4 for s in samples) and len(set(samples)) > 1


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (NonRetriableError("x"), True),
        (RunTimeout("x"), True),
        (celery_flow.InputValidationError("x"), True),
        (celery_flow.OutputSerializationError("x"), True),
        (celery_flow.WorkflowNotFound("x"), True),
        (celery_flow.RunCanceled("r"), True),
        (ValueError("x"), False),
        (celery_flow.StepTimeout("x"), False),
    ],
)
def test_never_retried_errors(exc, expected):
    assert is_non_retriable(exc) is expected
    assert Retries(max_attempts=3).should_retry(exc, 1) is not expected


def test_retry_stops_at_max_attempts():
    assert Retries(max_attempts=3).should_retry(ValueError(), 2)
    assert not Retries(max_attempts=3).should_retry(ValueError(), 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"backoff": "quadratic"},
        {"base_delay": -1},
        {"non_retriable": [ValueError]},
        {"non_retriable": ("ValueError",)},
    ],
)
def test_bad_retries_are_rejected(kwargs):
    with pytest.raises(WorkflowDefinitionError):
        Retries(**kwargs)


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("10/s", (10, 1000)),
        ("5/m", (5, 60_000)),
        ("3/h", (3, 3_600_000)),
        (" 7 / sec ", (7, 1000)),
        (None, None),
    ],
)
def test_rate_limits_parse(rate, expected):
    assert parse_rate(rate) == expected


@pytest.mark.parametrize("rate", ["10", "10/d", "-1/s", "0/s", "ten/s", 10])
def test_bad_rate_limits_are_rejected(rate):
    with pytest.raises(WorkflowDefinitionError, match="rate_limit"):
        parse_rate(rate)


@pytest.mark.parametrize(
    ("expr", "tz", "ok"),
    [
        ("*/5 * * * *", "UTC", True),
        ("*/10 * * * * *", "Europe/Paris", True),
        ("61 * * * *", "UTC", False),
        ("* * *", "UTC", False),
        ("* * * * *", "Mars/Olympus", False),
    ],
)
def test_cron_validation(expr, tz, ok):
    if ok:
        assert Cron(expr, timezone=tz).expression == expr
    else:
        with pytest.raises(WorkflowDefinitionError):
            Cron(expr, timezone=tz)


def test_durations_and_names():
    assert to_seconds(timedelta(minutes=1), what="t") == 60
    assert to_seconds(None, what="t") is None
    assert check_name("welcome:process") == "welcome:process"
    for bad in ("", "a b", "{x}", "x" * 201, 5):
        with pytest.raises(WorkflowDefinitionError):
            check_name(bad)


def test_run_keys_share_a_hash_tag_and_follow_the_prelude_order():
    keys = Keys("p").run_keys("abc", "tenant-1")
    assert keys[:2] == ["p:run:{abc}", "p:run:{abc}:steps"]
    assert keys[5] == "p:run:{abc}:done" and len(keys) == 21
    assert keys[13:17] == [
        "p:gate:tenant-1",
        "p:gate:tenant-1:waiting",
        "p:gates",
        "p:rate:tenant-1",
    ]
    assert keys[17:] == [
        "p:run:{abc}:events",
        "p:run:{abc}:children",
        "p:run:{abc}:maps",
        "p:run:{abc}:mapdone",
    ]
    assert keys[6:13] == [
        f"p:runs:status:{s}"
        for s in ("scheduled", "queued", "running", "waiting", "succeeded", "failed", "canceled")
    ]


def test_the_public_api_is_frozen():
    assert sorted(celery_flow.__all__) == sorted(
        [
            "Batch",
            "BatchProgress",
            "Page",
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
    )
    for name in celery_flow.__all__:
        obj = getattr(celery_flow, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, celery_flow.FlowError), name
            assert obj.__doc__, f"{name} needs a docstring"


def test_the_key_pattern_lua_rebuilds_from_the_prefix_matches_keys():
    # _prelude.lua builds another run's keys as <prefix>:run:{<id>} (and ..':steps'), and
    # recovers the prefix by cutting len(id) + 7 characters off KEYS[1]
    keys = Keys("my:prefix")
    run = keys.run("01ab")
    assert run == "my:prefix:run:{01ab}" and run[: len(run) - len("01ab") - 7] == "my:prefix"
    assert keys.steps("01ab") == run + ":steps"


def test_every_per_run_script_declares_the_fixed_key_layout():
    # A layout change (a new fixed run key) must reach every script header, and scripts must
    # address script-specific keys as KEYS[EXTRA + i], never by a literal index past it.
    import re
    from importlib import resources

    scripts = resources.files("celery_flow") / "_scripts"
    n_fixed = len(Keys("p").run_keys("r", "k"))
    prelude = (scripts / "_prelude.lua").read_text()
    assert f"local EXTRA = {n_fixed + 1}" in prelude
    for script in scripts.iterdir():
        text = script.read_text()
        if script.name.startswith("_") or "run keys" not in text:
            continue
        assert f"KEYS[1..{n_fixed}] run keys" in text, script.name
        code = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
        literal = [int(i) for i in re.findall(r"KEYS\[(\d+)\]", code)]
        assert all(i <= n_fixed for i in literal), (script.name, literal)
