"""Video processing: submit a job, then poll it with exponential backoff sleeps.

PLACEHOLDER: being written; see issue 9.
"""

from __future__ import annotations

from .catalog import Example

EXAMPLES: list[Example] = []
