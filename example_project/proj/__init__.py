"""Example project: one Celery app with celery_flow workflows, used by two web front ends.

Importing the package registers everything, so ``celery -A example_project.proj worker``
serves the tour workflows of :mod:`example_project.proj.workflows` and one module per seed
pattern in :mod:`example_project.proj.patterns`.
"""

from . import patterns, workflows
from .celery import app, flow

__all__ = ["app", "flow", "patterns", "workflows"]
