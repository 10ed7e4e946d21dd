"""The dashboard ASGI app (Starlette): pages, JSON API, ``/metrics``, static files."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .api import api_routes
from .auth import Guard, Message, Receive, Scope, Send, Signer, is_api
from .metrics import build_registry
from .pages import make_templates, page_routes

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from .._flow import Flow

TOKEN_ENV = "CELERY_FLOW_DASHBOARD_TOKEN"
STATIC = Path(__file__).parent / "static"
logger = logging.getLogger("celery_flow")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
]


class SecurityHeaders:
    """Adds anti-framing / no-sniff / CSP headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, wrapped if scope["type"] == "http" else send)


def create_app(flow: Flow, token: str | None = None) -> Starlette:
    """Build the dashboard's ASGI app for ``flow``.

    Args:
        flow: the Flow to show; its registry fills the workflows page, and retries validate
            input against its schemas (so import the module defining your workflows).
        token: require ``Authorization: Bearer <token>`` (or a login cookie from
            ``/login?token=...``). Default: the ``CELERY_FLOW_DASHBOARD_TOKEN`` environment
            variable; unset or empty means no authentication (CSRF checks stay on).

    Examples:
        >>> app = create_app(flow, token="s3cret")
        >>> uvicorn.run(app, host="127.0.0.1", port=8155)
    """
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    signer = Signer(token or None)
    registry = build_registry(flow)

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        code, detail = getattr(exc, "status_code", 500), getattr(exc, "detail", "error")
        if is_api(request.url.path):
            return JSONResponse({"error": detail}, status_code=code)
        return PlainTextResponse(f"{code} {detail}", status_code=code)

    routes: list[Any] = [
        *page_routes(flow, make_templates(), signer),
        *api_routes(flow),
        Route("/metrics", metrics, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(Guard, signer=signer)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.flow = flow
    app.state.auth_enabled = signer.token is not None
    return app


def serve(flow: Flow, host: str = "127.0.0.1", port: int = 8155, token: str | None = None) -> None:
    """Serve the dashboard with uvicorn until interrupted (blocking).

    Args:
        flow: the Flow to show.
        host / port: where to listen; keep the loopback default unless a token is set.
        token: bearer token (default: ``CELERY_FLOW_DASHBOARD_TOKEN``); see :func:`create_app`.

    Examples:
        >>> serve(flow, port=8155)   # then open http://127.0.0.1:8155/
    """
    import uvicorn

    app = create_app(flow, token=token)
    if not app.state.auth_enabled and not _is_loopback(host):
        logger.warning(
            "celery_flow dashboard listens on %s without a token: anyone who can reach it can "
            "cancel and retry runs. Pass --token or set %s.",
            host,
            TOKEN_ENV,
        )
    logger.info("celery_flow dashboard on http://%s:%s/", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
