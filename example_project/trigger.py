"""Start every example through a running front end: ``python -m example_project.trigger``.

Run it in a second terminal while ``make demo`` serves (or against any front end of the example
project). For each example of :data:`example_project.proj.patterns.EXAMPLES` it posts
``/examples/<key>/start``, follows the run's JSON status page, approves runs that wait for an
``approval`` event through ``/runs/<id>/approval`` (as a person would with the page's button),
and prints one line per status change, then a summary. Exit status 1 if any run did not
succeed.

    python -m example_project.trigger                       # every example, Flask front end
    python -m example_project.trigger order-saga approval   # some of them
    python -m example_project.trigger --url http://127.0.0.1:8157   # through Django

Only the standard library talks HTTP here: this is what any client of the front end does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8156"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class FrontEndError(Exception):
    """The front end answered with an error status, or not at all."""


def call(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    """One JSON request; returns the decoded JSON body (None when empty)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Accept": "application/json", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise FrontEndError(f"{method} {url} -> HTTP {exc.code}: {detail[:300]}") from None
    except OSError as exc:
        raise FrontEndError(f"{method} {url} failed: {exc} (is `make demo` running?)") from None
    return json.loads(raw) if raw.strip() else None


@dataclass
class Tracked:
    """One example run being followed."""

    key: str
    run_id: str
    workflow: str
    status_url: str
    approval: bool
    status: str = "queued"
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    approved: bool = False
    detail: str = ""


def start(base: str, key: str, approval: bool) -> Tracked:
    """Start one example through the front end."""
    reply = call("POST", f"{base}/examples/{key}/start")
    status_url = reply.get("status_url") or f"/runs/{reply['run_id']}"
    if status_url.startswith("/"):
        status_url = base + status_url
    return Tracked(key, reply["run_id"], reply["workflow"], status_url, approval)


def describe(info: dict[str, Any]) -> str:
    """The interesting part of a finished run: its output or its error."""
    if info.get("error"):
        error = info["error"]
        return f"{error.get('type', '').rsplit('.', 1)[-1]}: {error.get('message', '')}"
    return json.dumps(info.get("output"), default=str)[:100]


def waits_for_approval(info: dict[str, Any]) -> bool:
    """The run (JSON of ``GET /runs/<id>``) is parked in ``wait_for_event(..., "approval")``."""
    return info["status"] == "waiting" and any(
        s["kind"] == "event" and s["status"] == "waiting" and s.get("event_type") == "approval"
        for s in info.get("steps", [])
    )


def follow(base: str, runs: list[Tracked], timeout: float, poll: float = 0.25) -> None:
    """Poll every run until all are terminal (or ``timeout``), approving waiting approvals."""
    deadline = time.monotonic() + timeout
    while any(r.finished is None for r in runs):
        if time.monotonic() > deadline:
            for r in runs:
                if r.finished is None:
                    r.detail = f"still {r.status} after {timeout:.0f}s"
            return
        for r in runs:
            if r.finished is not None:
                continue
            info = call("GET", f"{base}/runs/{r.run_id}?format=json")
            status = info["status"]
            progress = info.get("progress")
            if status != r.status:
                extra = ""
                if progress and progress.get("total"):
                    extra = f" ({progress['current']:g}/{progress['total']:g})"
                print(f"  {r.key:<18} {r.run_id}  {r.status} -> {status}{extra}", flush=True)
                r.status = status
            if r.approval and not r.approved and waits_for_approval(info):
                call(
                    "POST", f"{base}/runs/{r.run_id}/approval", {"approved": True, "by": "trigger"}
                )
                r.approved = True
                print(f"  {r.key:<18} {r.run_id}  approved through the front end", flush=True)
            if status in TERMINAL:
                r.finished = time.monotonic()
                r.detail = describe(info)
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    """Start the chosen examples (default: all), follow them, print a summary."""
    from example_project.proj.patterns import EXAMPLES  # no Redis is touched by the import

    parser = argparse.ArgumentParser(prog="python -m example_project.trigger", description=__doc__)
    parser.add_argument("keys", nargs="*", metavar="EXAMPLE", help=", ".join(EXAMPLES))
    parser.add_argument("--url", default=DEFAULT_URL, help=f"front end (default {DEFAULT_URL})")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for runs")
    args = parser.parse_args(argv)
    unknown = [k for k in args.keys if k not in EXAMPLES]
    if unknown:
        parser.error(f"unknown example(s) {', '.join(unknown)}; choose from {', '.join(EXAMPLES)}")
    keys = args.keys or list(EXAMPLES)
    base = args.url.rstrip("/")
    try:
        runs = [start(base, key, EXAMPLES[key].approval) for key in keys]
        for r in runs:
            print(f"started {r.key:<18} {r.workflow:<28} {r.status_url}", flush=True)
        follow(base, runs, args.timeout)
    except FrontEndError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\nsummary")
    for r in runs:
        took = f"{r.finished - r.started:5.1f}s" if r.finished is not None else "   -  "
        print(f"  {r.key:<18} {r.status:<10} {took}  {r.detail}")
    return 0 if all(r.status == "succeeded" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
