"""Welcome placeholders for every active user: the 3-layer batch (process -> paginate -> execute).

Seed: the Upstash Workflow 3-layer guide (``welcome-placeholder``). A new product feature greets
each user with a few suggested prompts that an LLM writes for them. There are many users, so the
job is split into the guide's three layers, which ``flow.batch`` turns into three real
workflows linked parent -> child:

1. ``welcome-placeholder:process`` (max one at a time) counts the active users and those who
   still have no placeholder. With ``dry_run=True`` it only returns these statistics, which is
   how you check a batch before committing to it.
2. ``welcome-placeholder:paginate`` walks the users 50 per page by cursor and fans each page out
   in chunks of 20 (a Celery group) that start one layer-3 run per user; the next page is its
   own run.
3. ``generate-placeholder`` handles exactly ONE user, under its own ``max_concurrency`` and
   ``rate_limit`` (the LLM's quota). Its save is an upsert, so one user has one placeholder.

Run it (a worker: ``celery -A example_project.proj worker``)::

    >>> from example_project.proj.patterns.welcome_batch import seed_users, welcome
    >>> seed_users(75)  # on a fresh database: 75 users, 60 of them active
    75
    >>> welcome.process(dry_run=True).result(timeout=30)["message"]
    '[DryRun] Would process 60 items'
    >>> handle = welcome.process()  # the real run; then poll welcome.progress(handle.id)

or ``celery -A example_project.proj flow batch welcome-placeholder --dry-run``, or start the
``welcome-batch`` example with ``python -m example_project.trigger welcome-batch``.
"""

from __future__ import annotations

import json
from typing import Any

from celery_flow import Context, Page

from .. import db
from ..celery import flow
from .catalog import Example

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS welcome_placeholders (
    user_id INTEGER PRIMARY KEY REFERENCES users (id),
    suggestions TEXT NOT NULL,           -- JSON list written by the LLM
    writes INTEGER NOT NULL DEFAULT 1    -- 1 unless a user was processed twice
);
"""
DEMO_USERS = 75
"""Users the example seeds on a fresh database (every 5th is inactive: 60 are eligible)."""


def seed_users(n: int) -> int:
    """Create ``n`` users if the table is empty (every 5th inactive); returns the user count."""
    with db.connect(SCHEMA) as conn:
        if conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0:
            conn.executemany(
                "INSERT INTO users (id, name, active) VALUES (?, ?, ?)",
                [(i, f"user{i:04d}", int(i % 5 != 0)) for i in range(1, n + 1)],
            )
        return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])


# -- the data source (layer 2) and the filter (layers 1 and 2) -----------------------------------


def active_users_page(cursor: int | None, limit: int) -> Page:
    """One page of active user ids after ``cursor``; a short page is the last one."""
    with db.connect(SCHEMA) as conn:
        rows = conn.execute(
            "SELECT id FROM users WHERE active = 1 AND id > ? ORDER BY id LIMIT ?",
            (cursor or 0, limit),
        ).fetchall()
    ids = [row["id"] for row in rows]
    return Page(ids=ids, next_cursor=ids[-1] if len(ids) == limit else None)


def without_placeholder(ids: list[int]) -> list[int]:
    """The ids among ``ids`` that have no placeholder yet (the guide's "filter existing")."""
    marks = ",".join("?" * len(ids))
    with db.connect(SCHEMA) as conn:
        done = {
            row["user_id"]
            for row in conn.execute(
                f"SELECT user_id FROM welcome_placeholders WHERE user_id IN ({marks})", ids
            )
        }
    return [i for i in ids if i not in done]


# -- fake external service: the LLM that writes the suggestions ----------------------------------


def draft_suggestions(name: str) -> list[str]:
    """What the LLM would answer for this user (deterministic here)."""
    return [
        f"Hi {name}, what should we plan for this week?",
        f"{name}, want a summary of what is new?",
        "Ask me to draft an email.",
    ]


# -- layer 3: exactly one user per run ------------------------------------------------------------


def load_user(user_id: int) -> dict[str, Any] | None:
    """The user row, or None if it was deleted meanwhile."""
    with db.connect(SCHEMA) as conn:
        row = conn.execute("SELECT id, name FROM users WHERE id = ?", (user_id,)).fetchone()
    return dict(row) if row else None


def save_placeholder(user_id: int, suggestions: list[str]) -> None:
    """Upsert the user's placeholder: a second write replaces it (and is counted)."""
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT INTO welcome_placeholders (user_id, suggestions) VALUES (?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET suggestions = excluded.suggestions, "
            "writes = writes + 1",
            (user_id, json.dumps(suggestions)),
        )


@flow.workflow(name="generate-placeholder", max_concurrency=10, rate_limit="25/s")
def generate_placeholder(ctx: Context, user_id: int) -> dict[str, Any]:
    """Write the welcome placeholder of ONE user (the guide runs 5/s; 25/s keeps tests quick)."""
    user = ctx.step.run("get-user", load_user, user_id)
    if user is None:
        return {"success": False, "user_id": user_id, "error": "user not found"}
    suggestions = ctx.step.run("generate", draft_suggestions, user["name"])
    ctx.step.run("save", save_placeholder, user_id, suggestions)
    return {"success": True, "user_id": user_id, "placeholders": len(suggestions)}


# -- layers 1 and 2 -------------------------------------------------------------------------------

welcome = flow.batch(
    "welcome-placeholder",
    execute=generate_placeholder,
    source=active_users_page,
    needs_processing=without_placeholder,
    page_size=50,
    chunk_size=20,
)


def start_input(tag: str) -> dict[str, Any]:
    """Layer 1's input for the trigger; seeds the demo users first (only if there are none)."""
    seed_users(DEMO_USERS)
    return {"dry_run": False}


EXAMPLES = [
    Example(
        key="welcome-batch",
        title="Welcome placeholders for every active user: process -> paginate -> execute",
        workflow="welcome-placeholder:process",
        make_input=start_input,
    )
]
