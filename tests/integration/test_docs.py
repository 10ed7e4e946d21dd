"""Runnable examples in docs/ are executed, so they cannot drift from the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_testing_guide_example_passes_as_a_user_test_suite(tmp_path, flow_redis_url):
    # Given the guide's example saved as a user's test file
    (block,) = python_blocks(ROOT / "docs" / "testing.md")
    (tmp_path / "test_from_docs.py").write_text(block)
    # When pytest runs it with only the installed plugin (no conftest of ours)
    env = dict(os.environ, CELERY_FLOW_TEST_REDIS_URL=flow_redis_url)
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
