"""Transcode a video: submit a job, poll it with exponential backoff, publish when it is done.

Seed: ``cloudflare-workflows-patterns.md``, "Long-Running Process Patterns / Polling with
Exponential Backoff".

The workflow ``process-video`` submits the upload to a (fake) transcoder, then checks the job
with ``ctx.step.run(f"poll:{i}", ...)`` and, while it is still processing, sleeps with
``ctx.step.sleep(f"backoff:{i}", delay)``; the delay doubles after each poll up to a cap. The
sleeps are durable: the run is ``waiting`` in between (no worker, no slot held), and on
resume the handler replays from the top: ``submit`` and the earlier polls return their
recorded outputs, so the transcoder sees one submission and one request per poll, however many
times the handler ran. After ``max_polls`` checks the run gives up with
:class:`TranscodingTimedOut`; a job the transcoder reports failed (any ``corrupt*`` video)
ends the run too. Both are
``NonRetriableError``: a whole-run retry would replay the same polls and give up again.

The input sets the timing (``processing_seconds`` tells the fake transcoder how long the job
takes), so the tests poll every tenth of a second where production would wait minutes.

Run it: ``python -m example_project.trigger video``; tests:
``tests/examples/test_payment_video.py``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import BaseModel, Field

from celery_flow import Context, NonRetriableError

from .. import db
from ..celery import flow
from .catalog import Example

# -- the fake transcoder: a job row that becomes ready at a given time --------------------------

TRANSCODER_SCHEMA = """
CREATE TABLE IF NOT EXISTS transcoder_jobs (
    job_id TEXT PRIMARY KEY, video_id TEXT NOT NULL, submitted_at REAL NOT NULL,
    ready_at REAL NOT NULL, polls INTEGER NOT NULL DEFAULT 0);
"""


def submit_job(video_id: str, processing_seconds: float) -> str:
    """``POST /jobs``: every call creates a new (billed) job, so it must run once per run."""
    job_id = f"job_{secrets.token_hex(6)}"
    now = time.time()
    with db.connect(TRANSCODER_SCHEMA) as conn:
        conn.execute(
            "INSERT INTO transcoder_jobs (job_id, video_id, submitted_at, ready_at)"
            " VALUES (?, ?, ?, ?)",
            (job_id, video_id, now, now + processing_seconds),
        )
    return job_id


def job_status(job_id: str) -> dict[str, Any]:
    """``GET /jobs/<id>``: ``processing`` (with a percentage), ``complete`` or ``failed``."""
    with db.connect(TRANSCODER_SCHEMA) as conn:
        conn.execute("UPDATE transcoder_jobs SET polls = polls + 1 WHERE job_id = ?", (job_id,))
        job = conn.execute("SELECT * FROM transcoder_jobs WHERE job_id = ?", (job_id,)).fetchone()
    if job["video_id"].startswith("corrupt"):
        return {"state": "failed", "error": "unsupported codec"}
    now, total = time.time(), max(job["ready_at"] - job["submitted_at"], 1e-9)
    if now >= job["ready_at"]:
        return {"state": "complete", "url": f"https://cdn.example/{job['video_id']}/720p.mp4"}
    return {"state": "processing", "percent": int(100 * (now - job["submitted_at"]) / total)}


# -- the workflow --------------------------------------------------------------------------------


class TranscodingTimedOut(NonRetriableError):
    """The job was still processing after the last poll."""


class VideoIn(BaseModel):
    """Input of ``process-video``: the video, and how patiently to poll for it."""

    video_id: str
    processing_seconds: float = Field(default=20.0, ge=0)  # how long the fake job takes
    initial_delay: float = Field(default=2.0, gt=0)  # first backoff, doubled after each poll
    max_delay: float = Field(default=30.0, gt=0)  # cap of one backoff
    max_polls: int = Field(default=10, ge=1)


def publish_video(video_id: str, url: str) -> dict[str, str]:
    """Make the rendition public (a CDN purge and a database update in real life)."""
    return {"video_id": video_id, "url": url, "status": "published"}


@flow.workflow(name="process-video")
def process_video(ctx: Context, video: VideoIn) -> dict[str, Any]:
    """Submit, poll with doubling sleeps until the job completes, publish."""
    job_id = ctx.step.run("submit", submit_job, video.video_id, video.processing_seconds)
    delay = video.initial_delay
    for i in range(video.max_polls):
        status = ctx.step.run(f"poll:{i}", job_status, job_id)
        if status["state"] == "complete":
            published = ctx.step.run("publish", publish_video, video.video_id, status["url"])
            return {**published, "job_id": job_id, "polls": i + 1}
        if status["state"] == "failed":
            raise NonRetriableError(f"transcoder job {job_id} failed: {status['error']}")
        if i + 1 < video.max_polls:
            ctx.step.sleep(f"backoff:{i}", delay)
            delay = min(delay * 2, video.max_delay)
    raise TranscodingTimedOut(
        f"transcoder job {job_id} of video {video.video_id} still processing after "
        f"{video.max_polls} polls; giving up (raise max_polls or max_delay to wait longer)"
    )


EXAMPLES = [
    Example(
        key="video",
        title="Transcode a video: poll the job with durable, doubling sleeps",
        workflow="process-video",
        make_input=lambda tag: {
            "video_id": f"vid-{tag}",
            "processing_seconds": 3.0,
            "initial_delay": 0.5,
            "max_delay": 2.0,
        },
    )
]
