"""Payment: idempotency key from ctx.idempotency_key, 4xx/5xx error categories, a circuit breaker.

PLACEHOLDER: being written; see issue 9.
"""

from __future__ import annotations

from .catalog import Example

EXAMPLES: list[Example] = []
