"""The payment (idempotency, error categories, circuit breaker) and video polling examples.

Each test imports the example project on its own prefix and SQLite file (``tests/examples/
conftest.py``) with a real worker; outcomes are read back from SQLite (the fake gateway's
request log, the transcoder's job rows), from the runs in Redis and from the breaker's Redis
state.
"""

from __future__ import annotations

import itertools
import sqlite3
from typing import Any

import pytest

from celery_flow import RunFailed, RunInfo
from celery_flow.testing import eventually

from .conftest import ExampleProject, wait_result

NON_RETRIABLE = "celery_flow.errors.NonRetriableError"
BREAKER_OPEN = "pybreaker.CircuitBreakerError"


def query(example: ExampleProject, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` against the test's SQLite file."""
    with sqlite3.connect(example.db_path) as conn:
        return [tuple(row) for row in conn.execute(sql, args)]


def gateway_requests(example: ExampleProject, run_id: str) -> list[int]:
    """HTTP statuses the fake gateway answered for the charge of ``run_id``, in order."""
    rows = query(
        example,
        "SELECT status FROM gateway_requests WHERE idempotency_key = ? ORDER BY id",
        f"{run_id}:charge",
    )
    return [status for (status,) in rows]


def charges(example: ExampleProject) -> list[tuple[Any, ...]]:
    return query(example, "SELECT idempotency_key, charge_id FROM gateway_charges")


def step(info: RunInfo, name: str) -> Any:
    return next(s for s in info.steps if s.name == name)


def charge(example: ExampleProject, tag: str, card: str, email: str = "") -> Any:
    return example.flow.run(
        "charge-payment",
        {
            "order_id": f"ord-{tag}",
            "amount_cents": 2500,
            "card": card,
            "email": email or f"{tag}@example.com",
        },
    )


# -- payment -------------------------------------------------------------------------------------


def test_a_charge_calls_the_gateway_once_with_the_run_scoped_idempotency_key(example):
    # When a good card is charged
    handle = charge(example, "ok", "tok_visa")
    out = wait_result(handle)

    # Then the gateway saw one request under "<run_id>:charge" and charged once
    assert gateway_requests(example, handle.id) == [200]
    assert charges(example) == [(f"{handle.id}:charge", out["charge_id"])]
    # and the payment and the receipt are recorded
    assert query(example, "SELECT order_id, charge_id, amount_cents FROM payments") == [
        ("ord-ok", out["charge_id"], 2500)
    ]
    assert query(example, "SELECT outcome FROM mail_log") == [("sent",)]
    assert out["receipt"] == f"<{out['charge_id']}@mail.example>"


def test_a_whole_run_retry_replays_the_charge_instead_of_charging_again(example):
    # Given a receipt address whose mail server greylists the first delivery
    handle = charge(example, "grey", "tok_visa", email="buyer@greylisted.example")

    # When the receipt step fails once and the whole run is retried
    out = wait_result(handle)

    # Then the run succeeded on attempt 2, the charge step replayed from the step cache
    info = handle.info()
    assert info.status == "succeeded" and info.attempt == 2
    assert query(example, "SELECT outcome FROM mail_log") == [("deferred",), ("sent",)]
    assert step(info, "charge").attempts == 1
    # and the gateway was called once: one charge, one row in payments
    assert gateway_requests(example, handle.id) == [200]
    assert charges(example) == [(f"{handle.id}:charge", out["charge_id"])]
    assert query(example, "SELECT count(*) FROM payments") == [(1,)]


def test_a_lost_gateway_answer_is_retried_with_the_same_key_and_charges_once(example):
    # When the gateway charges the card but its answer times out, and the step retries
    handle = charge(example, "slow", "tok_timeout")
    out = wait_result(handle)

    # Then the second request (same idempotency key) got the first charge back
    assert gateway_requests(example, handle.id) == [200, 200]
    assert charges(example) == [(f"{handle.id}:charge", out["charge_id"])]
    assert step(handle.info(), "charge").output["idempotent_replay"] is True


def test_a_declined_card_fails_the_run_after_one_call_without_retries(example):
    # When the gateway answers 402
    handle = charge(example, "no", "tok_declined")
    with pytest.raises(RunFailed) as failed:
        wait_result(handle)

    # Then the run failed at once with NonRetriableError: one request, one attempt
    assert failed.value.error.type == NON_RETRIABLE
    assert "HTTP 402 card_declined" in failed.value.error.message
    info = handle.info()
    assert info.attempt == 1 and step(info, "charge").attempts == 1
    assert gateway_requests(example, handle.id) == [402]
    assert charges(example) == []
    # and a decline is no gateway failure: the breaker counts nothing
    assert example.module("payment").breaker().fail_counter == 0


def test_a_gateway_5xx_twice_is_retried_in_place_then_succeeds(example):
    # When the gateway answers 503 twice, then 200
    handle = charge(example, "flaky", "tok_flaky")
    out = wait_result(handle)

    # Then the step's own retries got through on its third attempt, in the first run attempt
    assert gateway_requests(example, handle.id) == [503, 503, 200]
    info = handle.info()
    assert info.attempt == 1 and step(info, "charge").attempts == 3
    assert charges(example) == [(f"{handle.id}:charge", out["charge_id"])]
    assert example.module("payment").breaker().fail_counter == 0  # reset by the success


def test_the_breaker_opens_after_repeated_5xx_and_then_fails_fast(example):
    payment = example.module("payment")
    state_key = f"{example.prefix}:breaker:payment-gateway:pybreaker:state"

    # Given a gateway that answers 503 to every request
    down = charge(example, "down", "tok_unavailable")

    # When the run retries (3 tries in place, then a whole-run retry)
    eventually(lambda: example.redis.get(state_key) == "open", what="the breaker to open")

    # Then the breaker opened, in Redis under this Flow's prefix, after the 5th failure
    assert payment.breaker().current_state == "open"
    with pytest.raises(RunFailed) as failed:
        wait_result(down)
    assert failed.value.error.type == BREAKER_OPEN
    assert gateway_requests(example, down.id) == [503] * payment.BREAKER_FAIL_MAX
    assert down.info().attempt == 3  # the last attempt failed fast, no request

    # And a charge of a good card now fails fast, without calling the gateway, and waits for
    # its next attempt on a timer (status "scheduled")
    good = charge(example, "good", "tok_visa")
    info = eventually(
        lambda: (i := good.info()).status == "scheduled" and i, what="the run to wait for a retry"
    )
    assert step(info, "charge").error.type == BREAKER_OPEN
    assert step(info, "charge").attempts == 1  # an open breaker is not retried in place
    assert gateway_requests(example, good.id) == []
    assert example.flow.cancel(good.id)


# -- video ---------------------------------------------------------------------------------------


def video(example: ExampleProject, video_id: str, **timing: Any) -> Any:
    return example.flow.run("process-video", {"video_id": video_id, **timing})


def test_video_is_polled_with_durable_doubling_sleeps_until_it_is_ready(example):
    # When the transcoder needs 1 s and polls start 0.1 s apart, doubling up to 0.4 s
    handle = video(
        example, "vid-1", processing_seconds=1.0, initial_delay=0.1, max_delay=0.4, max_polls=10
    )

    # Then the run is "waiting" (no worker held) between polls
    eventually(lambda: handle.status() == "waiting", what="the run to sleep between polls")
    out = wait_result(handle)
    assert out["status"] == "published" and out["url"].endswith("/vid-1/720p.mp4")

    # and it polled several times, each poll step calling the transcoder exactly once
    info = handle.info()
    polls = [s for s in info.steps if s.name.startswith("poll:")]
    sleeps = [s for s in info.steps if s.name.startswith("backoff:")]
    assert out["polls"] == len(polls) >= 3
    assert len(sleeps) == len(polls) - 1 and all(s.kind == "sleep" for s in sleeps)
    assert query(example, "SELECT video_id, polls FROM transcoder_jobs") == [("vid-1", len(polls))]
    # the submit step ran once despite one replay per sleep
    assert step(info, "submit").attempts == 1 and out["job_id"] == step(info, "submit").output
    # and the backoff doubled up to the cap
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(polls)]
    assert gaps[0] >= 0.1 and all(gap >= 0.4 for gap in gaps[2:])


def test_video_gives_up_after_max_polls_or_when_the_job_failed(example):
    # When the job takes a minute but only three polls are allowed
    handle = video(
        example, "vid-2", processing_seconds=60, initial_delay=0.1, max_delay=0.2, max_polls=3
    )
    # (and, alongside, a video the transcoder cannot decode)
    corrupt = video(example, "corrupt-1", processing_seconds=60, initial_delay=0.1)

    # Then the run fails, not retried, after exactly three polls
    with pytest.raises(RunFailed) as failed:
        wait_result(handle)
    assert failed.value.error.type.endswith("video.TranscodingTimedOut")
    assert "still processing after 3 polls" in failed.value.error.message
    assert [s.name for s in handle.info().steps if s.name.startswith("poll:")] == [
        "poll:0",
        "poll:1",
        "poll:2",
    ]
    assert query(example, "SELECT polls FROM transcoder_jobs WHERE video_id = 'vid-2'") == [(3,)]

    # And the corrupt video failed at its first poll, without sleeping
    with pytest.raises(RunFailed) as failed:
        wait_result(corrupt)
    assert failed.value.error.type == NON_RETRIABLE
    assert failed.value.error.message.endswith("failed: unsupported codec")
    assert [s.name for s in corrupt.info().steps] == ["submit", "poll:0"]
