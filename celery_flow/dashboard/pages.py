"""The dashboard's HTML pages and their form actions (Jinja2 templates, no JavaScript needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from .._keys import STATUSES, TERMINAL_STATUSES
from .._models import RunInfo
from ..errors import RunNotFound, RunStateError
from . import queries
from .api import error_status
from .auth import SESSION_COOKIE, SESSION_SECONDS, Signer, cookie_header

if TYPE_CHECKING:
    from .._flow import Flow

TEMPLATES = Path(__file__).parent / "templates"
NOTICES = {
    "canceled": "Cancel requested: the run stops at its next step boundary if it is running.",
    "retried": "The run was queued again under the same id.",
    "event": "Event sent (delivered now, or buffered until the run waits for it).",
}


def make_templates() -> Jinja2Templates:
    """The Jinja2 environment: autoescaping on, with the dashboard's formatting filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["dt"] = _fmt_dt
    env.filters["dur"] = queries.fmt_seconds
    env.filters["num"] = lambda v: f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}".rstrip("0")
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, sort_keys=True)
    env.filters["short"] = lambda s: s if len(s) <= 14 else f"{s[:8]}…{s[-4:]}"
    env.globals["run_seconds"] = _run_seconds
    return Jinja2Templates(env=env)


def _fmt_dt(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _run_seconds(run: RunInfo) -> float | None:
    if run.started_at is None:
        return None
    end = run.finished_at or datetime.now(UTC)
    return max(0.0, (end - run.started_at).total_seconds())


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths (no open redirect through /login?next=)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def page_routes(flow: Flow, templates: Jinja2Templates, signer: Signer) -> list[Route]:
    """The HTML routes: runs list, run detail and its actions, workflows, login/logout."""

    def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(
            root=request.scope.get("root_path", ""),
            csrf_token=request.state.csrf_token,
            auth_enabled=bool(signer.token),
            nav=name,
        )
        return templates.TemplateResponse(request, name, context, status_code=status)

    def failure(request: Request, exc: Exception) -> Response:
        status = error_status(exc)
        if status is None:
            raise exc
        return render(request, "error.html", status, message=str(exc), code=status)

    async def runs(request: Request) -> Response:
        q = request.query_params
        filters = {k: q.get(k, "") for k in ("workflow", "status", "after", "before", "limit")}
        try:
            limit = int(filters["limit"] or 50)
            page = await run_in_threadpool(
                queries.runs_page,
                flow,
                workflow=filters["workflow"] or None,
                status=filters["status"] or None,
                created_after=queries.parse_time(filters["after"], "created after"),
                created_before=queries.parse_time(filters["before"], "created before"),
                limit=limit,
                cursor=q.get("cursor") or None,
            )
            names = await run_in_threadpool(queries.workflow_names, flow)
            counts = await run_in_threadpool(queries.status_counts, flow)
        except Exception as exc:
            return failure(request, exc)
        active = {k: v for k, v in filters.items() if v}
        return render(
            request,
            "runs.html",
            page=page,
            filters=filters,
            workflows=names,
            statuses=STATUSES,
            counts=counts,
            paged=bool(q.get("cursor")),
            next_query=urlencode({**active, "cursor": page.next_cursor or ""}),
            first_query=urlencode(active),
        )

    async def run_page(
        request: Request, *, error: str | None = None, status: int = 200
    ) -> Response:
        run_id = request.path_params["run_id"]
        try:
            detail = await run_in_threadpool(queries.run_detail, flow, run_id)
        except Exception as exc:
            return failure(request, exc)
        run = detail.run
        return render(
            request,
            "run.html",
            status,
            detail=detail,
            run=run,
            timeline=queries.timeline(run),
            terminal=run.status in TERMINAL_STATUSES,
            can_retry=run.status in ("failed", "canceled"),
            notice=NOTICES.get(request.query_params.get("done", "")),
            error=error,
        )

    async def run_detail(request: Request) -> Response:
        return await run_page(request)

    async def act(request: Request, action: str) -> Response:
        run_id = request.path_params["run_id"]
        form = await request.form()
        field = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            await run_in_threadpool(_do, flow, run_id, action, field)
        except Exception as exc:
            status = error_status(exc)
            if status is None or isinstance(exc, RunNotFound):
                return failure(request, exc)
            return await run_page(request, error=str(exc), status=status)
        root = request.scope.get("root_path", "")
        return RedirectResponse(f"{root}/runs/{run_id}?done={action}", status_code=303)

    async def cancel(request: Request) -> Response:
        return await act(request, "canceled")

    async def retry(request: Request) -> Response:
        return await act(request, "retried")

    async def send_event(request: Request) -> Response:
        return await act(request, "event")

    async def workflows(request: Request) -> Response:
        try:
            rows, crons = await run_in_threadpool(queries.workflows_overview, flow)
            leaders = await run_in_threadpool(queries.scheduler_leaders, flow, crons)
        except Exception as exc:
            return failure(request, exc)
        return render(request, "workflows.html", rows=rows, crons=crons, leaders=leaders)

    async def login(request: Request) -> Response:
        if request.method == "POST":
            form = await request.form()
            token, target = form.get("token"), form.get("next")
        else:
            token, target = request.query_params.get("token"), request.query_params.get("next")
        target = _safe_next(target if isinstance(target, str) else None)
        if not signer.token:
            return RedirectResponse(target, status_code=303)
        if token is None:
            return render(request, "login.html", next=target, failed=False)
        if not signer.token_ok(token if isinstance(token, str) else None):
            return render(request, "login.html", 401, next=target, failed=True)
        response = RedirectResponse(request.scope.get("root_path", "") + target, status_code=303)
        secure = request.url.scheme == "https"
        value = cookie_header(
            SESSION_COOKIE, signer.new_session(), max_age=SESSION_SECONDS, secure=secure
        )
        response.headers.append("set-cookie", value)
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse(request.scope.get("root_path", "") + "/login", 303)
        response.headers.append(
            "set-cookie", cookie_header(SESSION_COOKIE, "", max_age=0, secure=False)
        )
        return response

    return [
        Route("/", runs, methods=["GET"]),
        Route("/runs/{run_id}", run_detail, methods=["GET"]),
        Route("/runs/{run_id}/cancel", cancel, methods=["POST"]),
        Route("/runs/{run_id}/retry", retry, methods=["POST"]),
        Route("/runs/{run_id}/events", send_event, methods=["POST"]),
        Route("/workflows", workflows, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


def _do(flow: Flow, run_id: str, action: str, form: dict[str, str]) -> None:
    """Carry out one form action (in a worker thread). Errors map to HTTP statuses."""
    if action == "canceled":
        if not flow.cancel(run_id, form.get("reason") or None):
            status = flow.get_run(run_id).status
            raise RunStateError(f"run {run_id} is already {status}: there is nothing to cancel")
    elif action == "retried":
        flow.retry(
            run_id,
            from_step=form.get("from_step") or None,
            input=_json_field(form.get("input", ""), "input"),
        )
    else:
        event_type = form.get("type", "").strip()
        if not event_type:
            raise ValueError("the event type is required")
        flow.send_event(run_id, event_type, _json_field(form.get("payload", ""), "payload"))


def _json_field(text: str, what: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the {what} is not valid JSON: {exc}") from None
