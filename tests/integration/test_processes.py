"""Real `celery worker` subprocesses: every pool, both brokers, and SIGKILL recovery."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("CELERY_FLOW_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def amqp_available() -> bool:
    host_port = AMQP_URL.split("@")[-1].split("/")[0]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 5672)), timeout=1):
            return True
    except OSError:
        return False


def ensure_amqp() -> None:
    """Use the local RabbitMQ; try to start one if installed; else skip with the reason."""
    if amqp_available():
        return
    if subprocess.run(["which", "rabbitmq-server"], capture_output=True).returncode == 0:
        subprocess.run(["rabbitmq-server", "-detached"], capture_output=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not amqp_available():
            time.sleep(1)
    if not amqp_available():
        pytest.skip(
            f"no RabbitMQ reachable at {AMQP_URL} and none could be started here; "
            "set CELERY_FLOW_TEST_AMQP_URL to run the amqp:// broker tests"
        )


@contextmanager
def celery_worker(
    broker: str, redis_url: str, prefix: str, pool: str, concurrency: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(
        os.environ,
        CF_TEST_BROKER=broker,
        CF_TEST_REDIS=redis_url,
        CF_TEST_PREFIX=prefix,
        PYTHONPATH=str(ROOT),
    )
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"{prefix}-{pool}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.apps.proc_app",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{prefix}-{pool}-{time.monotonic_ns()}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(4)  # amqp warm shutdown idles ~10 s in solo/threads pools
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


@pytest.fixture
def proc_flow(flow_redis_url, flow_prefix, monkeypatch):
    """Import the subprocess app in this process too (same prefix) to start runs."""

    def load(broker: str):
        monkeypatch.setenv("CF_TEST_BROKER", broker)
        monkeypatch.setenv("CF_TEST_REDIS", flow_redis_url)
        monkeypatch.setenv("CF_TEST_PREFIX", flow_prefix)
        sys.modules.pop("tests.apps.proc_app", None)
        import tests.apps.proc_app as mod

        return mod

    yield load
    sys.modules.pop("tests.apps.proc_app", None)


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_runs_retry_and_replay_under_every_pool_and_broker(
    broker, pool, proc_flow, flow_redis_url, flow_prefix
):
    if broker == "amqp":
        ensure_amqp()
    broker_url = flow_redis_url if broker == "redis" else AMQP_URL
    mod = proc_flow(broker_url)
    try:
        with celery_worker(broker_url, flow_redis_url, flow_prefix, pool):
            handles = [mod.two_steps.run(n) for n in range(4)]
            outs = [h.result(timeout=60) for h in handles]
        # every run retried once, and its step "a" ran exactly once across both attempts
        assert [(o["b"], o["attempt"], o["a"]) for o in outs] == [(n * 2, 2, 1) for n in range(4)]
        assert all(o["pid"] != os.getpid() for o in outs)
        probe = redis.Redis.from_url(flow_redis_url)
        assert [int(probe.get(f"{flow_prefix}:probe:a:{n}")) for n in range(4)] == [1, 1, 1, 1]
    finally:
        if broker == "amqp":
            with mod.app.connection() as conn:
                conn.default_channel.queue_delete(flow_prefix)


def test_a_sigkilled_prefork_worker_loses_no_run_and_repeats_no_finished_step(
    proc_flow, flow_redis_url, flow_prefix
):
    mod = proc_flow(flow_redis_url)
    probe = redis.Redis.from_url(flow_redis_url, decode_responses=True)
    # Given a run inside its long second step on a prefork worker
    with celery_worker(flow_redis_url, flow_redis_url, flow_prefix, "prefork") as first:
        handle = mod.slow_second_step.run()
        deadline = time.monotonic() + 30
        while probe.get(f"{flow_prefix}:probe:second") != "1":
            assert time.monotonic() < deadline, "the run never reached its second step"
            time.sleep(0.05)
        # When the whole worker (parent and children) is SIGKILLed
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    assert handle.status() == "running"  # nobody is left to say otherwise

    # Then a new worker recovers it once the lease expires
    started = time.monotonic()
    with celery_worker(flow_redis_url, flow_redis_url, flow_prefix, "prefork"):
        out = handle.result(timeout=60)
    recovery = time.monotonic() - started
    assert out == {"first": 1, "second": 2}
    assert probe.get(f"{flow_prefix}:probe:first") == "1"  # succeeded step ran exactly once
    info = handle.info()
    assert info.status == "succeeded" and info.attempt == 1
    assert probe.hget(mod.flow.store.keys.run(handle.id), "recoveries") == "1"
    assert recovery < 30
