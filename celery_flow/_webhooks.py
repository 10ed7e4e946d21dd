"""Signed outgoing HTTP: URL steps of a DAG and its ``on_complete`` / ``on_error`` webhooks.

Every request is a JSON ``POST`` whose body is signed with the Flow's ``webhook_secret``::

    X-Celery-Flow-Signature: sha256=<hex HMAC-SHA256 of the raw body>

The receiver checks it with :func:`verify_signature`. Only the standard library is used
(``urllib``), redirects are never followed (a redirected POST would lose its body and its
signature would be checked by a host we did not choose), and responses are capped at 1 MiB.

Error classes decide retries: :class:`WebhookRejected` (4xx, 3xx, bad response) is a
:class:`~celery_flow.NonRetriableError`; :class:`WebhookUnavailable` (5xx, network errors,
timeouts) is retried by the step's ``Retries``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from .errors import FlowError, NonRetriableError

SIGNATURE_HEADER = "X-Celery-Flow-Signature"
MAX_RESPONSE_BYTES = 1 << 20


class WebhookRejected(NonRetriableError):
    """The endpoint answered with a status or body that retrying cannot fix (4xx, 3xx)."""


class WebhookUnavailable(FlowError):
    """The endpoint failed in a way that may pass (5xx, connection error, timeout): retried."""


def is_http_url(value: Any) -> bool:
    """Whether ``value`` is an absolute ``http://`` or ``https://`` URL string."""
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def sign(body: bytes, secret: str) -> str:
    """The signature header value for ``body``: ``"sha256=<hex hmac>"``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """Check the ``X-Celery-Flow-Signature`` header of a request celery_flow sent (constant time).

    Args:
        body: the raw request body, exactly as received (before any JSON parsing).
        header: the header's value, ``"sha256=<hex>"``; a missing or malformed one is False.
        secret: the ``webhook_secret`` the sending Flow was built with.

    Examples:
        >>> body = request.get_data()  # Flask; Django: request.body
        >>> if not verify_signature(body, request.headers.get("X-Celery-Flow-Signature"), KEY):
        ...     abort(401)
    """
    if not isinstance(header, str) or not header.startswith("sha256="):
        return False
    if isinstance(body, str):
        body = body.encode()
    expected = sign(bytes(body), secret)
    return hmac.compare_digest(expected.encode(), header.strip().encode())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_opener = urllib.request.build_opener(_NoRedirect)


def post_json(url: str, payload: Any, *, secret: str, timeout: float | None) -> Any:
    """POST ``payload`` as signed JSON to ``url``; return the parsed JSON response (or None).

    Raises:
        WebhookRejected: 4xx / 3xx, a response over 1 MiB, or a body that is not JSON.
        WebhookUnavailable: 5xx, connection refused / reset, DNS failure, timeout.
    """
    body = json.dumps(payload, separators=(",", ":")).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "celery-flow",
            SIGNATURE_HEADER: sign(body, secret),
        },
    )
    try:
        with _opener.open(request, timeout=timeout or None) as response:
            raw = response.read(MAX_RESPONSE_BYTES + 1)
            status = response.status
    except urllib.error.HTTPError as exc:
        detail = _snippet(exc)
        if 500 <= exc.code < 600:
            raise WebhookUnavailable(f"POST {url} answered HTTP {exc.code}{detail}") from None
        hint = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
        raise WebhookRejected(
            f"POST {url} answered HTTP {exc.code}{hint}{detail}; 4xx is not retried: fix the "
            "endpoint or the request, then flow.retry(run_id)"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WebhookUnavailable(f"POST {url} failed: {reason}") from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise WebhookRejected(
            f"POST {url} (HTTP {status}) returned more than {MAX_RESPONSE_BYTES} bytes; "
            'respond with a small JSON body, e.g. {"result": ...}'
        )
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise WebhookRejected(
            f"POST {url} (HTTP {status}) returned a body that is not JSON: {raw[:200]!r}"
        ) from None


def _snippet(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(200).decode(errors="replace").strip()
    except Exception:
        return ""
    return f": {text}" if text else ""
