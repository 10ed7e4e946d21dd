"""DAG definitions are validated when flow.dag is called: table-driven, no Redis needed."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_flow import DagStep, Flow, Retries, WorkflowDefinitionError
from celery_flow._dag import check_dag


def noop(context: dict[str, Any], previous: dict[str, Any]) -> None:
    return None


def S(sid: str, *deps: str, **kw: Any) -> DagStep:
    return DagStep(sid, kw.pop("handler", noop), depends_on=list(deps), **kw)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([S("a"), S("a")], "duplicate step id 'a'"),
        ([S("a"), S("b", "nope")], "step 'b' depends on 'nope', which is not a step"),
        ([S("a", "a")], "step 'a' depends on itself"),
        ([S("a", "c"), S("b", "a"), S("c", "b")], "has a cycle: a -> b -> c -> a"),
        ([S("x"), S("a", "b"), S("b", "a")], "has a cycle: a -> b -> a"),
        ([S("a", handler=42)], "step 'a': handler=42 is neither callable"),
        ([S("a", handler="ftp://host/job")], "the scheme 'ftp' is not supported"),
        ([S("a", handler="/api/jobs/validate")], "not an absolute URL"),
        ([S("a", compensation="release")], "compensation='release'"),
        ([S("a", compensation=3)], "compensation=3 is neither callable"),
        ([S("a", retries=3)], "retries=3 must be a Retries"),
        ([S("a", timeout=-1)], "must not be negative"),
        ([S("a", timeout=0)], "timeout=0"),
        ([S("wave:1")], "reserved"),
        ([S("has space")], "'has space'"),
        ([], "non-empty list"),
        (["a"], "takes DagStep"),
    ],
)
def test_bad_definitions_name_the_ids_and_the_fix(steps, message):
    with pytest.raises(WorkflowDefinitionError) as exc:
        check_dag("shop", steps)
    assert message in str(exc.value) and "'shop'" in str(exc.value)


@pytest.mark.parametrize(
    ("steps", "waves"),
    [
        ([S("a")], [["a"]]),
        ([S("a"), S("b", "a"), S("c", "b")], [["a"], ["b"], ["c"]]),
        ([S("p"), S("x", "p"), S("y", "p"), S("f", "x", "y")], [["p"], ["x", "y"], ["f"]]),
        (
            [
                S("prepare"),
                S("a", "prepare"),
                S("b", "prepare"),
                S("c", "prepare"),
                S("validate", "c"),
                S("aggregate", "a", "b", "c"),
                S("notify", "aggregate", "validate"),
            ],
            [["prepare"], ["a", "b", "c"], ["validate", "aggregate"], ["notify"]],
        ),
        ([S("late", "early"), S("early")], [["early"], ["late"]]),  # any definition order
    ],
)
def test_waves_group_steps_by_dependency_depth(steps, waves):
    assert [[s.id for s in w] for w in check_dag("g", steps)] == waves


def test_depends_on_accepts_one_id_and_drops_repeats():
    assert DagStep("b", noop, depends_on="a").depends_on == ("a",)
    assert DagStep("b", noop, depends_on=["a", "a", "c"]).depends_on == ("a", "c")
    with pytest.raises(WorkflowDefinitionError, match="depends_on=3"):
        DagStep("b", noop, depends_on=3)  # type: ignore[arg-type]


def flow(secret: str | None = None) -> Flow:
    app = Celery("dag-validation", broker="redis://127.0.0.1:1/0", set_as_current=False)
    return Flow(app, webhook_secret=secret)


def test_url_steps_and_webhooks_need_a_webhook_secret_at_definition_time():
    with pytest.raises(
        WorkflowDefinitionError, match=r"step 'a', on_error call URLs.*webhook_secret"
    ):
        flow().dag("d", [S("a", handler="https://x.example/a")], on_error="https://x.example/e")
    with pytest.raises(WorkflowDefinitionError, match="on_complete call URLs"):
        flow().dag("d", [S("a")], on_complete="https://x.example/done")
    f = flow("key")
    dag = f.dag("d", [S("a", handler="https://x.example/a", retries=Retries(max_attempts=2))])
    assert dag.name == "d" and f.workflows["d"] is dag


def test_bad_webhooks_and_a_taken_name_fail_and_register_nothing():
    f = flow("key")
    with pytest.raises(WorkflowDefinitionError, match="on_complete='mailto:ops'"):
        f.dag("d", [S("a")], on_complete="mailto:ops")
    with pytest.raises(WorkflowDefinitionError, match="has a cycle"):
        f.dag("d", [S("a", "b"), S("b", "a")])
    assert dict(f.workflows) == {}
    f.dag("d", [S("a")])
    with pytest.raises(WorkflowDefinitionError, match="already registered"):
        f.dag("d", [S("a")])
