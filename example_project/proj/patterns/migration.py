"""Data migration in batches with ctx.progress shown in the dashboard.

PLACEHOLDER: being written; see issue 9.
"""

from __future__ import annotations

from .catalog import Example

EXAMPLES: list[Example] = []
