"""Upstash 3-layer batch: process -> paginate -> execute over a SQLite users table, dry run first.

PLACEHOLDER: being written; see issue 9.
"""

from __future__ import annotations

from .catalog import Example

EXAMPLES: list[Example] = []
