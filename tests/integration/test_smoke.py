from celery_flow import Retries


def test_a_one_step_workflow_returns_its_output(env):
    # Given a workflow with one step
    @env.flow.workflow()
    def greet(ctx, name: str) -> str:
        return ctx.step.run("hello", lambda: f"hello {name}")

    # When it runs on an embedded worker
    with env.worker():
        out = greet.run("Ada").result(timeout=10)

    # Then the output comes back and the step is recorded
    assert out == "hello Ada"
