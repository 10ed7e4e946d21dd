"""URL steps and on_complete / on_error webhooks against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery

from celery_flow import DagStep, Flow, Retries, RunFailed, verify_signature
from celery_flow._webhooks import sign
from celery_flow.testing import eventually, start_flow_worker
from tests.apps.dag_handlers import HookServer, flaky, hook_server
from tests.conftest import make_celery

SECRET = "s3cret-webhook-key"
FAST = Retries(max_attempts=3, backoff="fixed", base_delay=0.05, jitter=False)


@dataclass
class WebEnv:
    app: Celery
    flow: Flow
    server: HookServer


@pytest.fixture
def web(flow_redis_url: str, flow_prefix: str) -> Iterator[WebEnv]:
    app = make_celery(flow_redis_url, flow_prefix)
    flow = Flow(
        app, redis_url=flow_redis_url, prefix=flow_prefix, lease_seconds=2.0, webhook_secret=SECRET
    )
    with hook_server(SECRET) as server:
        yield WebEnv(app, flow, server)


def ok(result: Any):
    return lambda body: (200, {"success": True, "result": result})


def test_the_url_order_chain_posts_signed_requests_and_calls_on_complete(web):
    # Given the seed's order-processing workflow with URL steps and both webhooks
    s = web.server
    s.routes.update(
        {
            "/api/jobs/validate-order": ok({"valid": True}),
            "/api/jobs/reserve-inventory": lambda b: (
                200,
                {"result": {"reserved": sum(i["quantity"] for i in b["context"]["items"])}},
            ),
            "/api/jobs/process-payment": flaky(1, 500, ok({"charged": 1200})),
            "/api/jobs/create-shipment": ok({"tracking": "T1"}),
            "/api/jobs/send-confirmation": lambda b: (
                200,
                {"result": f"sent, tracking {b['previous_steps']['create-shipment']['tracking']}"},
            ),
            "/api/webhooks/workflow-complete": flaky(1, 503, lambda b: (204, None)),
        }
    )
    ids = [
        "validate",
        "reserve-inventory",
        "process-payment",
        "create-shipment",
        "send-confirmation",
    ]
    paths = ["validate-order", *ids[1:]]
    steps = [
        DagStep(
            sid,
            s.url(f"/api/jobs/{path}"),
            depends_on=[ids[i - 1]] if i else [],
            retries=Retries(max_attempts=3, backoff="exponential", base_delay=0.05),
        )
        for i, (sid, path) in enumerate(zip(ids, paths, strict=True))
    ]
    order = web.flow.dag(
        "order-processing",
        steps=steps,
        on_complete=s.url("/api/webhooks/workflow-complete"),
        on_error=s.url("/api/webhooks/workflow-error"),
    )
    context = {
        "orderId": "order_123",
        "userId": "user_456",
        "items": [{"sku": "SKU001", "quantity": 2}, {"sku": "SKU002", "quantity": 1}],
    }

    # When it runs
    with start_flow_worker(web.app):
        handle = order.run(context=context)
        results = handle.result(timeout=30)

    # Then every request was signed and carried the run, step, context and previous results
    assert results["send-confirmation"] == "sent, tracking T1"
    assert results["process-payment"] == {"charged": 1200}  # a 500, then success
    assert all(r.verified for r in s.received)
    first = s.calls("/api/jobs/validate-order")[0].body
    assert first == {
        "run_id": handle.id,
        "step_id": "validate",
        "context": context,
        "previous_steps": {},
    }
    assert s.calls("/api/jobs/create-shipment")[0].body["previous_steps"] == {
        "process-payment": {"charged": 1200}
    }
    assert len(s.calls("/api/jobs/process-payment")) == 2
    # and on_complete was delivered (once retried after a 503), never on_error
    done = s.calls("/api/webhooks/workflow-complete")
    assert len(done) == 2 and done[-1].body == {
        "run_id": handle.id,
        "dag": "order-processing",
        "context": context,
        "state": "completed",
        "results": results,
    }
    assert s.calls("/api/webhooks/workflow-error") == []
    payment = next(x for x in web.flow.get_status(handle.id).steps if x.id == "process-payment")
    assert payment.attempts == 2
    hook = next(x for x in web.flow.get_run(handle.id).steps if x.name == "webhook:on_complete")
    assert hook.status == "succeeded" and hook.attempts == 2


def test_a_4xx_is_not_retried_and_on_error_is_delivered_signed(web):
    # Given a step whose endpoint answers 404, with retries allowed
    s = web.server
    s.routes["/api/webhooks/workflow-error"] = flaky(1, 503, lambda b: (200, {}))
    dag = web.flow.dag(
        "missing-endpoint",
        steps=[DagStep("lookup", s.url("/api/jobs/nowhere"), retries=FAST)],
        on_error=s.url("/api/webhooks/workflow-error"),
    )

    # When it runs
    with start_flow_worker(web.app):
        handle = dag.run(context={"id": 1})
        with pytest.raises(RunFailed) as exc:
            handle.result(timeout=30)

    # Then one request only, an error naming the status and the URL, and a signed on_error
    assert len(s.calls("/api/jobs/nowhere")) == 1
    assert "HTTP 404" in exc.value.error.message and "/api/jobs/nowhere" in exc.value.error.message
    errors = s.calls("/api/webhooks/workflow-error")
    assert len(errors) == 2 and all(r.verified for r in errors)
    body = errors[-1].body
    assert body["state"] == "failed" and body["error"]["step"] == "lookup"
    assert "WebhookRejected" in body["error"]["type"] and body["results"] == {}


def test_a_parallel_url_step_retries_a_500_with_its_own_policy(web):
    # Given a fan-out of URL steps, one answering 500 twice before succeeding
    s = web.server
    s.routes["/a"] = ok("a")
    s.routes["/b"] = flaky(2, 500, ok("b"))
    s.routes["/fin"] = lambda b: (200, {"result": sorted(b["previous_steps"].values())})
    dag = web.flow.dag(
        "url-fan-out",
        steps=[
            DagStep("a", s.url("/a")),
            DagStep("b", s.url("/b"), retries=FAST),
            DagStep("fin", s.url("/fin"), depends_on=["a", "b"]),
        ],
    )

    # When it runs
    with start_flow_worker(web.app):
        results = dag.run(context={}).result(timeout=30)

    # Then b took three attempts and the fan-in saw both results
    assert results == {"a": "a", "b": "b", "fin": ["a", "b"]}
    assert len(s.calls("/b")) == 3


def test_a_request_signed_with_another_secret_is_rejected_by_the_receiver(
    web, flow_redis_url, flow_prefix
):
    # Given a Flow whose secret differs from the one the receiver verifies with
    app = make_celery(flow_redis_url, flow_prefix + "-other")
    impostor = Flow(
        app, redis_url=flow_redis_url, prefix=flow_prefix + "-other", webhook_secret="wrong"
    )
    web.server.routes["/api/jobs/x"] = ok(1)
    dag = impostor.dag("forged", steps=[DagStep("x", web.server.url("/api/jobs/x"), retries=FAST)])

    # When it runs
    with start_flow_worker(app), pytest.raises(RunFailed, match="HTTP 401"):
        dag.run(context={}).result(timeout=30)

    # Then verify_signature refused it (401, not retried) and accepts only the right secret
    (request,) = web.server.calls("/api/jobs/x")
    assert not request.verified
    assert verify_signature(request.raw, request.signature, "wrong")
    assert not verify_signature(request.raw, request.signature, SECRET)


@pytest.mark.parametrize(
    ("body", "header", "expected"),
    [
        (b'{"a":1}', sign(b'{"a":1}', SECRET), True),
        (b'{"a":2}', sign(b'{"a":1}', SECRET), False),  # tampered body
        (b'{"a":1}', sign(b'{"a":1}', "other"), False),  # other secret
        (b'{"a":1}', sign(b'{"a":1}', SECRET).removeprefix("sha256="), False),  # no scheme
        (b'{"a":1}', "sha1=" + "0" * 40, False),
        (b'{"a":1}', "", False),
        (b'{"a":1}', None, False),
    ],
)
def test_verify_signature_accepts_only_the_exact_body_and_secret(body, header, expected):
    assert verify_signature(body, header, SECRET) is expected


def test_an_unreachable_endpoint_is_retried_then_fails_the_run(web):
    # Given a URL step pointing at a closed port
    from celery_flow.testing import free_port

    url = f"http://127.0.0.1:{free_port()}/gone"
    calls: list[dict[str, Any]] = []
    dag = web.flow.dag(
        "unreachable", steps=[DagStep("x", url, retries=FAST)], on_error=calls.append
    )

    # When it runs
    with start_flow_worker(web.app):
        handle = dag.run(context={})
        with pytest.raises(RunFailed, match="WebhookUnavailable"):
            handle.result(timeout=30)

    # Then it was attempted three times and on_error (a callable) got the payload
    step = eventually(lambda: web.flow.get_status(handle.id).steps[0], what="status")
    assert step.attempts == 3 and step.state == "failed"
    assert calls and calls[0]["error"]["step"] == "x"


def test_an_oversized_response_and_a_slow_endpoint_fail_clearly(web):
    # Given one endpoint answering more than 1 MiB and one slower than the step timeout
    import time

    def slow(body: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(1.5)
        return 200, {"result": "late"}

    web.server.routes["/huge"] = lambda b: (200, {"result": "x" * (1 << 20)})
    web.server.routes["/slow"] = slow
    huge = web.flow.dag("huge", steps=[DagStep("big", web.server.url("/huge"), retries=FAST)])
    late = web.flow.dag("late", steps=[DagStep("wait", web.server.url("/slow"), timeout=0.5)])

    # When they run
    with start_flow_worker(web.app):
        with pytest.raises(RunFailed, match="more than 1048576 bytes") as big:
            huge.run(context={}).result(timeout=30)
        started = time.monotonic()
        with pytest.raises(RunFailed, match=r"timed out|did not finish within 0\.5s"):
            late.run(context={}).result(timeout=30)

    # Then the oversized answer was not retried and the timeout bounded the request
    assert len(web.server.calls("/huge")) == 1 and "WebhookRejected" in big.value.error.message
    assert time.monotonic() - started < 1.4


def test_a_url_compensation_gets_the_steps_result_when_the_saga_fails(web):
    # Given a saga whose charge step and its refund are URLs, and a failing shipment
    s = web.server
    s.routes["/charge"] = ok({"charge_id": "ch_1"})
    s.routes["/refund"] = lambda b: (200, {})
    s.routes["/ship"] = lambda b: (409, {"error": "address invalid"})
    saga = web.flow.dag(
        "url-saga",
        steps=[
            DagStep("charge", s.url("/charge"), compensation=s.url("/refund")),
            DagStep("ship", s.url("/ship"), depends_on=["charge"]),
        ],
        saga=True,
    )

    # When it runs
    with start_flow_worker(web.app):
        handle = saga.run(context={"order": "o9"})
        with pytest.raises(RunFailed, match=r"HTTP 409.*compensated: charge"):
            handle.result(timeout=30)

    # Then the refund was posted once, signed, with the charge's result
    (refund,) = s.calls("/refund")
    assert refund.verified and refund.body == {
        "run_id": handle.id,
        "step_id": "charge",
        "action": "compensate",
        "context": {"order": "o9"},
        "result": {"charge_id": "ch_1"},
    }
