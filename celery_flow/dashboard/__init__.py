"""celery_flow's web dashboard: run list and detail, actions, JSON API, Prometheus ``/metrics``.

Needs the ``dashboard`` extra (``pip install 'celery-flow[dashboard]'``): Starlette, uvicorn,
Jinja2, python-multipart. ``celery -A proj flow dashboard`` calls :func:`serve`; embed the
ASGI app elsewhere with :func:`create_app`. See docs/dashboard.md.

Examples:
    >>> from celery_flow.dashboard import serve
    >>> serve(flow, host="127.0.0.1", port=8155, token=None)   # blocks
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
