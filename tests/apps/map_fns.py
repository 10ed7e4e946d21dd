"""Module-level functions for ctx.step.map tests (chunks import fn by name).

They count calls in Redis under ``<prefix>:probe:...``; the prefix and URL come from
``configure()`` (in-process workers) or the CF_TEST_* environment (subprocess workers).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

_conf: dict[str, Any] = {}


def configure(url: str, prefix: str) -> None:
    _conf.update(client=redis.Redis.from_url(url), prefix=prefix)


def _probe() -> tuple[redis.Redis, str]:
    if "client" not in _conf:
        configure(os.environ["CF_TEST_REDIS"], os.environ["CF_TEST_PREFIX"])
    return _conf["client"], _conf["prefix"]


def square(n: int) -> int:
    return n * n


def counted_square(n: int) -> int:
    client, prefix = _probe()
    client.incr(f"{prefix}:probe:item:{n}")
    return n * n


def fails_on_seven(n: int) -> int:
    client, prefix = _probe()
    client.incr(f"{prefix}:probe:item:{n}")
    if n == 7 and not client.get(f"{prefix}:probe:fixed"):
        raise ValueError("seven is broken")
    return n * n


def slow_once_on_five(n: int) -> int:
    """Item 5 hangs on its first call (the worker is killed there); others are quick."""
    client, prefix = _probe()
    calls = client.incr(f"{prefix}:probe:item:{n}")
    if n == 5 and calls == 1:
        time.sleep(120)
    return n * n
