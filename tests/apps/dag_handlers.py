"""A real local HTTP endpoint for DAG URL steps and webhooks (http.server in a thread).

Routes map a path to ``fn(body: dict) -> (status, json_body)``; every request is recorded
with its headers and whether its signature verified against the server's secret, the way a
receiving app would check it with ``celery_flow.verify_signature``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery_flow import verify_signature

Route = Callable[[dict[str, Any]], tuple[int, Any]]


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    raw: bytes
    signature: str | None
    verified: bool


@dataclass
class HookServer:
    secret: str
    routes: dict[str, Route] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    base: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base + path

    def calls(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.received]


def _handler_for(server: HookServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            signature = self.headers.get("X-Celery-Flow-Signature")
            verified = verify_signature(raw, signature, server.secret)
            body = json.loads(raw or b"null")
            with server.lock:
                server.received.append(Received(self.path, body, raw, signature, verified))
            if not verified:
                status, payload = 401, {"error": "bad signature"}
            else:
                route = server.routes.get(self.path)
                status, payload = route(body) if route else (404, {"error": "no such route"})
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading (oversized body, timeout): that is the test

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler


@contextmanager
def hook_server(secret: str) -> Iterator[HookServer]:
    """Serve on 127.0.0.1 (a free port) for the duration of the block."""
    server = HookServer(secret)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(server))
    httpd.daemon_threads = True
    server.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def flaky(failures: int, status: int, then: Route) -> Route:
    """A route that answers ``status`` for the first ``failures`` calls, then ``then``."""
    count = {"n": 0}
    lock = threading.Lock()

    def route(body: dict[str, Any]) -> tuple[int, Any]:
        with lock:
            count["n"] += 1
            n = count["n"]
        if n <= failures:
            return status, {"error": f"transient {status}"}
        return then(body)

    return route
