"""The docs are tested, so they cannot drift from the code.

* Runnable examples in docs/ are executed: the testing guide as a user's test suite, the
  quickstart as the user's project module against a real Redis and an embedded worker.
* The quickstart's shell commands are the README's, and Makefile targets.
* Reference pages list what they promise: every public name, every Lua script.
* The guides cover every example: its module, its trigger command, and tests that exist.

The site itself is built by ``make test`` (``mkdocs build --strict``: links, anchors, nav,
snippet paths and docstrings, no warning allowed).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import current_app

import celery_flow
from celery_flow.testing import start_flow_worker

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
QUICKSTART_URL = "redis://127.0.0.1:6379/0"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: each line without its comment, blank lines dropped."""
    return [c for line in block.splitlines() if (c := line.split("#", 1)[0].strip())]


def test_the_testing_guide_example_passes_as_a_user_test_suite(tmp_path, flow_redis_url):
    # Given the guide's example saved as a user's test file
    (block,) = python_blocks(DOCS / "testing.md")
    (tmp_path / "test_from_docs.py").write_text(block)
    # When pytest runs it with only the installed plugin (no conftest of ours)
    env = dict(os.environ, CELERY_FLOW_TEST_REDIS_URL=flow_redis_url)
    # a user's suite knows nothing of ours: importing the example's Django site sets this for
    # the rest of the session, and Celery would then load Django settings it cannot import
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:celery",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_from_docs.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then it passes
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_quickstart_commands_are_the_readmes_and_make_targets():
    # Given the README's quickstart block and the quickstart page's bash block
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1]
    (readme_block,) = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)[:1]
    (page_block,) = re.findall(r"```bash\n(.*?)```", (DOCS / "quickstart.md").read_text(), re.S)
    # Then both hold the same two commands, in the same order
    commands = shell_commands(readme_block)
    assert commands == ["make demo", "make test"]
    assert shell_commands(page_block) == commands
    # And each is a target of the Makefile
    makefile = (ROOT / "Makefile").read_text()
    for command in commands:
        target = command.split()[1]
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), target


def calls_at_top_level(source: str, methods: set[str]) -> bool:
    """Whether the block calls ``.<method>(...)`` outside function and class bodies."""

    def walk(node: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield child
                yield from walk(child)

    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in methods
        for n in walk(ast.parse(source))
    )


@pytest.fixture
def user_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """An empty module registered as ``proj.celery`` (with its package ``proj``)."""
    package = types.ModuleType("proj")
    module = types.ModuleType("proj.celery")
    package.celery = module  # type: ignore[attr-defined]
    package.__path__ = []
    monkeypatch.setitem(sys.modules, "proj", package)
    monkeypatch.setitem(sys.modules, "proj.celery", module)
    # the quickstart's project is no Django project (another test may have set this)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    previous_app = current_app._get_current_object()
    try:
        yield module
    finally:
        previous_app.set_current()  # Celery("proj", ...) made itself the current app


def test_the_quickstart_runs_as_written(flow_redis_url, flow_prefix, user_module):
    # Given the quickstart's python blocks, with only the Redis URL and key prefix substituted
    blocks = python_blocks(DOCS / "quickstart.md")
    source = "\n".join(blocks)
    assert source.count(QUICKSTART_URL) == 1 and source.count("Flow(app)") == 1
    blocks = [
        b.replace(QUICKSTART_URL, flow_redis_url).replace(
            "Flow(app)", f"Flow(app, prefix={flow_prefix!r})"
        )
        for b in blocks
    ]
    ns: dict[str, Any] = user_module.__dict__
    # When they run in order as the module proj.celery; a worker serves the blocks that start
    # runs (it starts before the first of them, once every workflow is defined)
    with contextlib.ExitStack() as stack:
        worker = None
        for i, block in enumerate(blocks):
            if "app" in ns:
                ns["app"].conf.task_default_queue = flow_prefix
            if worker is None and calls_at_top_level(block, {"run", "result"}):
                worker = stack.enter_context(start_flow_worker(ns["app"]))
            exec(compile(block, f"docs/quickstart.md (python block {i + 1})", "exec"), ns)
    # Then every assert in them held, and so do the tests they define, with their own worker
    tests = [fn for name, fn in ns.items() if name.startswith("test_") and callable(fn)]
    assert [t.__name__ for t in tests] == ["test_place_order_reserves_then_charges"]
    for test in tests:
        test()
    # And the runs are in the test's prefix: three orders (o-1, o-2 once, o-3)
    flow = ns["flow"]
    runs = flow.list_runs(workflow="place-order").runs
    assert sorted(r.input["order_id"] for r in runs) == ["o-1", "o-2", "o-3"]
    assert {r.status for r in runs} == {"succeeded"}
    flow.store.redis.close()


def test_every_public_name_has_an_api_reference_entry():
    # Given the API reference page
    page = (DOCS / "reference" / "api.md").read_text()
    documented = set(re.findall(r"^::: celery_flow\.(\w+)", page, flags=re.M))
    # Then every name of celery_flow.__all__ has its ::: directive, and so do the helper modules
    public = set(celery_flow.__all__) - {"__version__"}
    assert sorted(public - documented) == []
    assert {"testing", "embedded"} <= documented


def test_the_internals_page_names_every_lua_script():
    # Given the Lua scripts celery_flow ships
    scripts = sorted(p.name for p in (ROOT / "celery_flow" / "_scripts").glob("*.lua"))
    assert len(scripts) > 20
    # Then the internals page names each file
    page = (DOCS / "internals.md").read_text()
    assert [s for s in scripts if f"`{s}`" not in page] == []


PATTERNS = ROOT / "example_project" / "proj" / "patterns"
GUIDE_PAGES = sorted([*(DOCS / "guides").glob("*.md"), *(DOCS / "web").glob("*.md")])


def test_every_pattern_module_and_example_has_a_guide_that_runs_it():
    # Given the pattern modules and the example keys they offer to the trigger
    sources = {p.stem: p.read_text() for p in PATTERNS.glob("*.py")}
    modules = sorted(set(sources) - {"__init__", "catalog"})
    keys = sorted(re.findall(r'key="([\w-]+)"', "".join(sources.values())))
    assert len(modules) == 9 and len(keys) >= len(modules)
    guides = "\n".join(p.read_text() for p in GUIDE_PAGES)
    # Then each module's file is included in a guide (not copied) ...
    included = set(re.findall(r'--8<-- "example_project/proj/patterns/(\w+)\.py"', guides))
    assert sorted(set(modules) - included) == []
    # ... and each example's trigger command is given
    triggers = {
        k
        for line in re.findall(r"python -m example_project\.trigger ([^\n`]*)", guides)
        for k in line.split("#", 1)[0].split()
        if not k.startswith("-")
    }
    assert sorted(set(keys) - triggers) == []


def test_the_tests_each_guide_names_exist_in_the_modules_it_names():
    # Given, on each guide and web page, the test modules it names and the tests it names
    defined = {
        path.name: set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
        for path in (ROOT / "tests" / "examples").glob("*.py")
    }
    named_any = False
    for page in GUIDE_PAGES:
        text = page.read_text()
        files = set(re.findall(r"tests/examples/(\w+\.py)", text))
        names = set(re.findall(r"`(test_\w+)`", text)) | set(re.findall(r"::(test_\w+)", text))
        named_any = named_any or bool(names)
        # Then the modules exist, and define every test the page names
        assert sorted(files - set(defined)) == [], page.name
        in_files = set().union(*(defined[f] for f in files)) if files else set()
        assert sorted(names - in_files) == [], page.name
    assert named_any
