"""Griffe extension for the docs build: read celery_flow's ``Example:`` sections as examples.

celery_flow's docstrings title their doctest sections ``Example:`` (Napoleon's spelling);
griffe's Google parser only knows ``Examples:`` and renders ``Example:`` as a plain admonition,
where ``>>>`` lines become nested block quotes and an output such as ``[('a', ...)]`` is read
as a Markdown link (an autorefs warning that fails ``mkdocs build --strict``). This extension
renames the section header before griffe parses the docstring, so the examples render as
highlighted code. Once the docstrings say ``Examples:`` it changes nothing and can be removed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADER = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.M)


class GoogleExampleSections(griffe.Extension):
    """Rewrite ``Example:`` section headers to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE_HEADER.sub(r"\1Examples:", obj.docstring.value)
