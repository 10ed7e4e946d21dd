"""A cron-driven sweep of expired carts.

PLACEHOLDER: being written; see issue 9.
"""

from __future__ import annotations

from .catalog import Example

EXAMPLES: list[Example] = []
