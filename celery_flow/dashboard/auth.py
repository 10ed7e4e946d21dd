"""Bearer-token authentication and CSRF protection for the dashboard (one ASGI middleware).

Authentication (only when a token is configured): a request is authenticated by an
``Authorization: Bearer <token>`` header, or by the ``cf_session`` cookie that ``/login``
sets. The cookie holds ``<expiry>.<hmac(sha256(token), expiry)>``: nothing to store on the
server, it survives restarts, and changing the token logs every browser out. Unauthenticated
API and ``/metrics`` requests get 401 JSON; pages redirect to ``/login``.

CSRF (always, token or not): signed double-submit cookie. Every response carries a
``cf_csrf`` cookie ``<nonce>.<hmac(key, nonce)>``; pages embed the same value in their forms
(``csrf_token`` field) and in ``<meta name="csrf-token">``. A state-changing request
(POST/PUT/PATCH/DELETE) passes only if it sends that value back, equal to the cookie and
correctly signed: as the form field, or as the ``X-CSRF-Token`` header. JSON API requests
that carry the right bearer token need no CSRF token (a browser never adds that header on
its own). A cross-site page can neither read the cookie nor set the header, so it cannot
forge either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "cf_session"
CSRF_COOKIE = "cf_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
MAX_FORM_BYTES = 2 << 20
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# reachable without authentication (health checks, the login form and its stylesheet)
OPEN_PATHS = ("/healthz", "/login", "/static/")


def _sign(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


class Signer:
    """Issues and checks the session cookie and CSRF tokens."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        # The session key derives from the token (restarts keep browsers logged in); the CSRF
        # key too when there is a token, else it is random per process.
        self._session_key = hashlib.sha256(b"celery_flow-session:" + (token or "").encode())
        self._csrf_key = (
            hashlib.sha256(b"celery_flow-csrf:" + token.encode()).digest()
            if token
            else secrets.token_bytes(32)
        )

    def bearer_ok(self, header: str | None) -> bool:
        if not self.token or not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(value.strip())

    def token_ok(self, value: str | None) -> bool:
        return bool(self.token) and hmac.compare_digest(
            (value or "").encode(), (self.token or "").encode()
        )

    def new_session(self) -> str:
        expiry = str(int(time.time()) + SESSION_SECONDS)
        return f"{expiry}.{_sign(self._session_key.digest(), expiry)}"

    def session_ok(self, cookie: str | None) -> bool:
        if not self.token or not cookie:
            return False
        expiry, _, sig = cookie.partition(".")
        if not expiry.isdigit() or int(expiry) < time.time():
            return False
        return hmac.compare_digest(sig, _sign(self._session_key.digest(), expiry))

    def new_csrf(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{_sign(self._csrf_key, nonce)}"

    def csrf_ok(self, cookie: str | None, sent: str | None) -> bool:
        if not cookie or not sent or not hmac.compare_digest(cookie, sent):
            return False
        nonce, _, sig = cookie.partition(".")
        return hmac.compare_digest(sig, _sign(self._csrf_key, nonce))


def is_api(path: str) -> bool:
    """JSON endpoints: errors are JSON, a missing login is 401 rather than a redirect."""
    return path.startswith("/api/") or path == "/metrics"


def cookie_header(name: str, value: str, *, max_age: int | None, secure: bool) -> str:
    """A ``Set-Cookie`` value: HttpOnly, SameSite=Lax, Path=/ (Secure over https)."""
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


class Guard:
    """ASGI middleware: authentication, then CSRF on every state-changing request.

    It also publishes ``request.state.csrf_token`` (for templates) and
    ``request.state.authenticated``, and sets the CSRF cookie when the browser has none.
    """

    def __init__(self, app: ASGIApp, signer: Signer) -> None:
        self.app = app
        self.signer = signer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path: str = scope["path"]
        signer = self.signer
        cookie = request.cookies.get(CSRF_COOKIE)
        valid_cookie = cookie if cookie and signer.csrf_ok(cookie, cookie) else None
        csrf = valid_cookie or signer.new_csrf()
        bearer = signer.bearer_ok(request.headers.get("authorization"))
        authed = (
            not signer.token or bearer or signer.session_ok(request.cookies.get(SESSION_COOKIE))
        )
        state = scope.setdefault("state", {})
        state["csrf_token"], state["authenticated"] = csrf, authed

        send = self._with_csrf_cookie(send, csrf, valid_cookie is None, request.url.scheme)
        if not authed and not path.startswith(OPEN_PATHS):
            await self._unauthenticated(request, send)
            return
        if scope["method"] in UNSAFE_METHODS and not (bearer and is_api(path)):
            sent = request.headers.get(CSRF_HEADER)
            if sent is None and not is_api(path):
                body = await _read_body(receive)
                if body is None:
                    await _plain(send, 413, "request body too large", path)
                    return
                sent = _form_field(request, body, CSRF_FIELD)
                receive = _replay(body)
            if not signer.csrf_ok(valid_cookie, sent):
                await _plain(
                    send,
                    403,
                    "CSRF check failed: reload the page and submit the form again (API clients: "
                    "send the bearer token, or the cf_csrf cookie with an X-CSRF-Token header "
                    "of the same value, from GET /api/csrf)",
                    path,
                )
                return
        await self.app(scope, receive, send)

    def _with_csrf_cookie(self, send: Send, csrf: str, needed: bool, scheme: str) -> Send:
        if not needed:
            return send

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                header = cookie_header(CSRF_COOKIE, csrf, max_age=None, secure=scheme == "https")
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", header.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        return wrapped

    async def _unauthenticated(self, request: Request, send: Send) -> None:
        path = request.url.path
        if is_api(path) or request.method != "GET":
            await _plain(
                send,
                401,
                "authentication required: send Authorization: Bearer <token>, or log in at /login",
                path,
                extra=[(b"www-authenticate", b'Bearer realm="celery_flow"')],
            )
            return
        target = path + (f"?{request.url.query}" if request.url.query else "")
        root = request.scope.get("root_path", "")
        location = f"{root}/login?next={quote(target, safe='')}"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _form_field(request: Request, body: bytes, name: str) -> str | None:
    """The field of a urlencoded form (the dashboard's forms are never multipart)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get(name)
    return values[0] if values else None


async def _plain(
    send: Send, status: int, message: str, path: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    if is_api(path):
        body, ctype = json.dumps({"error": message}).encode(), b"application/json"
    else:
        body, ctype = message.encode(), b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
