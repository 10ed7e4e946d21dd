"""The complex dependency graph of the DAG seed: parallel waves and fan-in.

PLACEHOLDER: being written; see issue 9.
"""

from __future__ import annotations

from .catalog import Example

EXAMPLES: list[Example] = []
