"""Order saga: a DAG with compensations (flow.dag, saga=True).

PLACEHOLDER: being written; see issue 9.
"""

from __future__ import annotations

from .catalog import Example

EXAMPLES: list[Example] = []
