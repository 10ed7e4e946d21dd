"""Example project: a Celery app with a few celery_flow workflows.

Importing the package registers everything, so ``celery -A example_project.proj worker``
serves the workflows of :mod:`example_project.proj.workflows`.
"""

from . import workflows
from .celery import app, flow

__all__ = ["app", "flow", "workflows"]
