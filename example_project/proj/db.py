"""The SQLite database of the examples that need data (users, customers, carts, payments).

The file is ``EXAMPLE_DB`` (read on every :func:`connect`, so tests can point each test at its
own file), default ``example.sqlite3`` in the system temp directory. Every example creates its
own tables with ``CREATE TABLE IF NOT EXISTS`` through :func:`connect`'s ``schema`` argument.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def path() -> Path:
    """The SQLite file in use."""
    return Path(os.environ.get("EXAMPLE_DB") or Path(tempfile.gettempdir()) / "example.sqlite3")


@contextmanager
def connect(schema: str = "") -> Iterator[sqlite3.Connection]:
    """A connection (rows as :class:`sqlite3.Row`) that commits on success, rolls back on error.

    ``schema`` is SQL run first (``CREATE TABLE IF NOT EXISTS ...``). Workers run steps in
    several threads and processes at once, so the connection waits up to 30 s for a lock.
    """
    conn = sqlite3.connect(path(), timeout=30.0)
    conn.row_factory = sqlite3.Row
    try:
        if schema:
            conn.executescript(schema)
        with conn:
            yield conn
    finally:
        conn.close()
