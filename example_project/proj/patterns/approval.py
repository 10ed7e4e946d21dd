"""Approval: wait up to 48 h for a decision event, escalate on timeout.

PLACEHOLDER: being written; see issue 9.
"""

from __future__ import annotations

from .catalog import Example

EXAMPLES: list[Example] = []
