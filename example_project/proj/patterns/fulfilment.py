"""Parent -> child: an order run starts a fulfilment child run and waits for it.

PLACEHOLDER: being written; see issue 9.
"""

from __future__ import annotations

from .catalog import Example

EXAMPLES: list[Example] = []
