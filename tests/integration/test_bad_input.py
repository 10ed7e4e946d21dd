"""Bad input gets a clear FlowError subclass and changes nothing in Redis."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from celery import Celery
from pydantic import BaseModel

from celery_flow import (
    ConfigurationError,
    Flow,
    FlowConnectionError,
    InputValidationError,
    PayloadTooLargeError,
    RunNotFound,
    WorkflowDefinitionError,
    WorkflowNotFound,
)
from celery_flow.testing import free_port
from tests.conftest import make_celery


class OrderIn(BaseModel):
    order_id: str
    total_cents: int


def test_input_failing_the_schema_is_rejected_at_run_time_and_nothing_is_written(env):
    @env.flow.workflow()
    def order(ctx, o: OrderIn):
        return o.total_cents

    before = env.keys()
    with pytest.raises(InputValidationError) as exc:
        order.run({"order_id": "o1", "total_cents": "lots"})
    assert "OrderIn" in str(exc.value) and "total_cents" in str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert env.keys() == before


def test_non_json_input_is_rejected_naming_the_type(env):
    @env.flow.workflow()
    def anything(ctx, value):
        return value

    before = env.keys()
    with pytest.raises(InputValidationError, match="datetime"):
        anything.run({"when": datetime.now()})
    assert env.keys() == before


def test_input_over_max_payload_bytes_is_rejected(flow_redis_url, flow_prefix):
    app = make_celery(flow_redis_url, flow_prefix)
    flow = Flow(app, redis_url=flow_redis_url, prefix=flow_prefix, max_payload_bytes=100)

    @flow.workflow()
    def big(ctx, value):
        return value

    with pytest.raises(PayloadTooLargeError, match="max_payload_bytes=100"):
        big.run("x" * 200)
    assert not list(flow.store.redis.scan_iter(f"{flow_prefix}:*"))


def test_a_step_output_over_max_payload_bytes_fails_the_run(flow_redis_url, flow_prefix):
    app = make_celery(flow_redis_url, flow_prefix)
    flow = Flow(app, redis_url=flow_redis_url, prefix=flow_prefix, max_payload_bytes=100)

    @flow.workflow()
    def big_step(ctx):
        return ctx.step.run("blob", lambda: "x" * 500)

    from celery_flow import RunFailed
    from celery_flow.testing import start_flow_worker

    with start_flow_worker(app), pytest.raises(RunFailed) as exc:
        big_step.run().result(timeout=10)
    assert exc.value.error.type == "celery_flow.errors.PayloadTooLargeError"
    assert "step 'blob'" in exc.value.error.message


def test_unknown_workflow_and_unknown_run_ids_raise_lookups_with_hints(env):
    @env.flow.workflow()
    def known(ctx):
        return 1

    with pytest.raises(WorkflowNotFound, match="registered: known"):
        env.flow.run("unknown")
    for call in (env.flow.get_run, env.flow.handle, env.flow.cancel):
        with pytest.raises(RunNotFound, match="nope"):
            call("nope")
    handle = known.run()
    env.redis.delete(env.flow.store.keys.run(handle.id))
    with pytest.raises(RunNotFound):
        handle.result(timeout=1)
    with pytest.raises(RunNotFound):
        handle.status()


def test_unreachable_redis_raises_flow_connection_error_quickly():
    port = free_port()  # nothing listens there
    app = Celery("down", broker=f"redis://127.0.0.1:{port}/0", set_as_current=False)
    flow = Flow(app)

    @flow.workflow()
    def wf(ctx):
        return 1

    started = time.monotonic()
    with pytest.raises(FlowConnectionError, match=f"127.0.0.1:{port}"):
        wf.run()
    with pytest.raises(FlowConnectionError):
        flow.get_run("x")
    assert time.monotonic() - started < 10  # each call well within ~5 s


def test_a_password_in_the_url_never_appears_in_errors():
    port = free_port()
    app = Celery("down", broker="amqp://", set_as_current=False)
    flow = Flow(app, redis_url=f"redis://:s3cret@127.0.0.1:{port}/0")
    with pytest.raises(FlowConnectionError) as exc:
        flow.get_run("x")
    assert "s3cret" not in str(exc.value) and "***" in str(exc.value)


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("redis+sentinel://:pw@sentinel-1:26379/mymaster", "Sentinel URLs are not supported"),
        ("sentinel://sentinel-1:26379", "Sentinel URLs are not supported"),
        ("http://127.0.0.1:6379/0", "redis_url='redis://host:6379/0'"),
    ],
)
def test_a_redis_url_of_another_scheme_is_a_configuration_error_naming_the_fix(url, hint):
    flow = Flow(Celery("odd-url", broker="amqp://", set_as_current=False), redis_url=url)
    with pytest.raises(ConfigurationError, match="redis://, rediss:// or unix://") as exc:
        flow.get_run("x")
    assert hint in str(exc.value) and ":pw@" not in str(exc.value)


def test_a_redis_socket_url_in_kombus_spelling_is_accepted(tmp_path):
    from celery_flow._store import make_client

    client = make_client(f"redis+socket://{tmp_path}/redis.sock")
    assert client.connection_pool.connection_kwargs["path"] == f"{tmp_path}/redis.sock"


def test_a_non_redis_broker_without_a_redis_url_is_a_configuration_error():
    app = Celery("amqp-only", broker="amqp://guest@127.0.0.1//", set_as_current=False)
    flow = Flow(app)

    @flow.workflow()
    def wf(ctx):
        return 1

    with pytest.raises(ConfigurationError, match="CELERY_FLOW_REDIS_URL"):
        wf.run()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency=0"),
        ({"max_concurrency": -2}, "max_concurrency=-2"),
        ({"max_concurrency": 1.5}, "max_concurrency=1.5"),
        ({"rate_limit": "10/fortnight"}, "rate_limit='10/fortnight'"),
        ({"rate_limit": "0/s"}, "rate_limit='0/s'"),
        ({"timeout": -1}, "must not be negative"),
        ({"timeout": "1h"}, "expected seconds or a timedelta"),
        ({"queue": ""}, "queue="),
        ({"name": "has space"}, "'has space'"),
        ({"retries": 3}, "Retries"),
        ({"on_failure": "notify"}, "on_failure"),
        ({"limit_key": 42}, "limit_key"),
        ({"cron": ["* * * * *"]}, "Cron"),
    ],
)
def test_bad_decorator_arguments_fail_at_decoration_time(env, kwargs, message):
    def handler(ctx):
        return None

    with pytest.raises(WorkflowDefinitionError) as exc:
        env.flow.workflow(**kwargs)(handler)
    assert message in str(exc.value)
    assert env.flow.workflows == {}


def test_a_second_workflow_with_the_same_name_is_rejected(env):
    @env.flow.workflow(name="twin")
    def one(ctx):
        return 1

    with pytest.raises(WorkflowDefinitionError, match="already registered"):
        env.flow.workflow(name="twin")(one.fn)


def test_naive_run_at_and_negative_delay_are_rejected(env):
    @env.flow.workflow()
    def wf(ctx):
        return 1

    with pytest.raises(WorkflowDefinitionError, match="naive"):
        wf.run(run_at=datetime(2030, 1, 1))
    with pytest.raises(WorkflowDefinitionError, match="negative"):
        wf.run(delay=-1)
    assert env.keys() == []
