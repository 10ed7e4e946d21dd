"""One module per pattern of the seed documents, each a realistic miniature.

Importing this package registers every example workflow on :data:`example_project.proj.flow`.
:data:`EXAMPLES` lists what the trigger command (``python -m example_project.trigger``) and the
web front ends can start.
"""

from __future__ import annotations

from . import (
    approval,
    dependency_graph,
    fulfilment,
    migration,
    order_saga,
    payment,
    sweep,
    video,
    welcome_batch,
)
from .catalog import Example

MODULES = (
    welcome_batch,
    order_saga,
    dependency_graph,
    payment,
    video,
    migration,
    approval,
    fulfilment,
    sweep,
)
EXAMPLES: dict[str, Example] = {
    example.key: example for module in MODULES for example in module.EXAMPLES
}
"""Every runnable example by key, in the order of :data:`MODULES`."""

__all__ = ["EXAMPLES", "MODULES", "Example"]
