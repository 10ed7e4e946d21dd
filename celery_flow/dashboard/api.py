"""The dashboard's JSON API (documented in docs/dashboard.md).

Every error is ``{"error": "<message>"}`` with a status code: 400 bad input, 401 missing
token, 403 CSRF, 404 unknown run or workflow, 409 wrong state, 503 Redis unreachable.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import (
    FlowConnectionError,
    RunNotFound,
    RunStateError,
    WorkflowNotFound,
)
from . import queries

if TYPE_CHECKING:
    from .._flow import Flow

Endpoint = Callable[[Request], Awaitable[Response]]


def error_status(exc: BaseException) -> int | None:
    """The HTTP status for an error the dashboard expects (None: a bug, let it be a 500)."""
    if isinstance(exc, RunNotFound | WorkflowNotFound):
        return 404
    if isinstance(exc, RunStateError):
        return 409
    if isinstance(exc, FlowConnectionError):
        return 503
    if isinstance(exc, ValueError | LookupError):  # InputValidationError, StepNotFound, ...
        return 400
    return None


def json_errors(handler: Endpoint) -> Endpoint:
    """Turn the errors of :func:`error_status` into ``{"error": ...}`` responses."""

    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            status = error_status(exc)
            if status is None:
                raise
            return JSONResponse({"error": str(exc)}, status_code=status)

    return wrapped


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body). ValueError (400) otherwise."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ValueError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string")
    return value or None


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return 50
    if not value.isdigit():
        raise ValueError(f"limit={value!r}: expected an int from 1 to 1000")
    return int(value)


def api_routes(flow: Flow) -> list[Route]:
    """The ``/api/...`` routes and ``/healthz`` for one Flow."""

    @json_errors
    async def list_runs(request: Request) -> Response:
        q = request.query_params
        page = await run_in_threadpool(
            queries.runs_page,
            flow,
            workflow=q.get("workflow") or None,
            status=q.get("status") or None,
            created_after=queries.parse_time(q.get("created_after"), "created_after"),
            created_before=queries.parse_time(q.get("created_before"), "created_before"),
            limit=_limit(q.get("limit")),
            cursor=q.get("cursor") or None,
        )
        return JSONResponse(
            {
                "runs": [r.model_dump(mode="json", exclude={"steps"}) for r in page.runs],
                "next_cursor": page.next_cursor,
            }
        )

    @json_errors
    async def get_run(request: Request) -> Response:
        detail = await run_in_threadpool(queries.run_detail, flow, request.path_params["run_id"])
        return JSONResponse(detail.as_json())

    @json_errors
    async def cancel(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        reason = _optional_str(await json_body(request), "reason")
        if not await run_in_threadpool(flow.cancel, run_id, reason):
            status = (await run_in_threadpool(flow.get_run, run_id)).status
            raise RunStateError(f"run {run_id} is already {status}: there is nothing to cancel")
        return await _run_response(flow, run_id, 202)

    @json_errors
    async def retry(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        body = await json_body(request)
        from_step = _optional_str(body, "from_step")
        await run_in_threadpool(
            lambda: flow.retry(run_id, from_step=from_step, input=body.get("input"))
        )
        return await _run_response(flow, run_id, 202)

    @json_errors
    async def send_event(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        body = await json_body(request)
        event_type = _optional_str(body, "type")
        if not event_type:
            raise ValueError('"type" is required: the event type the run waits for')
        await run_in_threadpool(flow.send_event, run_id, event_type, body.get("payload"))
        return await _run_response(flow, run_id, 202)

    @json_errors
    async def workflows(request: Request) -> Response:
        rows, crons = await run_in_threadpool(queries.workflows_overview, flow)
        leaders = await run_in_threadpool(queries.scheduler_leaders, flow, crons)
        return JSONResponse(
            {
                "workflows": [r.as_json() for r in rows],
                "cron": [c.model_dump(mode="json") for c in crons],
                "scheduler_leaders": leaders,
            }
        )

    async def csrf(request: Request) -> Response:
        return JSONResponse({"csrf_token": request.state.csrf_token})

    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(flow.store.ping)
        except FlowConnectionError as exc:
            return JSONResponse({"status": "error", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    return [
        Route("/api/runs", list_runs, methods=["GET"]),
        Route("/api/runs/{run_id}", get_run, methods=["GET"]),
        Route("/api/runs/{run_id}/cancel", cancel, methods=["POST"]),
        Route("/api/runs/{run_id}/retry", retry, methods=["POST"]),
        Route("/api/runs/{run_id}/events", send_event, methods=["POST"]),
        Route("/api/workflows", workflows, methods=["GET"]),
        Route("/api/csrf", csrf, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]


async def _run_response(flow: Flow, run_id: str, status: int) -> Response:
    run = await run_in_threadpool(flow.get_run, run_id)
    return JSONResponse({"run": run.model_dump(mode="json")}, status_code=status)
