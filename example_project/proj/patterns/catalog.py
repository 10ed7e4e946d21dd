"""What the trigger command and the web front ends need to start each example."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Example:
    """One runnable example.

    Attributes:
        key: short id used on the command line and in URLs (``order-saga``).
        title: one line for humans.
        workflow: the registered workflow name a run is started with (``flow.run(workflow,
            input)``, or ``POST /start/<workflow>`` on a front end).
        make_input: ``tag -> input``; ``tag`` is a short random string so that reruns against
            the same Redis and database never collide.
        approval: the run waits for an ``approval`` event (the trigger approves it through the
            front end's approval endpoint).
    """

    key: str
    title: str
    workflow: str
    make_input: Callable[[str], Any]
    approval: bool = False
