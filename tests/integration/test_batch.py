"""flow.batch over a real SQLite table: dry run, exact processing, idempotent second call."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from celery_flow import Page, RunFailed, WorkflowDefinitionError


class Users:
    """A 1,000-row users table; 300 rows already have their placeholder (done = 1)."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        with self.connect() as db:
            db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, done INTEGER NOT NULL)")
            db.executemany(
                "INSERT INTO users VALUES (?, ?)",
                [(i, 1 if i % 10 < 3 else 0) for i in range(1, 1001)],
            )

    def connect(self):
        return sqlite3.connect(self.path, timeout=30)

    def page(self, cursor, limit):
        with self.connect() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM users WHERE id > ? ORDER BY id LIMIT ?", (cursor or 0, limit)
                )
            ]
        return Page(ids=ids, next_cursor=ids[-1] if len(ids) == limit else None)

    def pending(self, ids):
        marks = ",".join("?" * len(ids))
        with self.connect() as db:
            return [
                r[0]
                for r in db.execute(
                    f"SELECT id FROM users WHERE done = 0 AND id IN ({marks}) ORDER BY id", ids
                )
            ]

    def mark(self, user_id):
        with self.lock, self.connect() as db:
            db.execute("UPDATE users SET done = done + 1 WHERE id = ?", (user_id,))

    def counts(self):
        with self.connect() as db:
            return dict(db.execute("SELECT done, COUNT(*) FROM users GROUP BY done").fetchall())


@pytest.fixture
def users(tmp_path):
    return Users(tmp_path / "users.db")


def define(env, users, **limits):
    @env.flow.workflow(name="generate-placeholder", **limits)
    def generate(ctx, user_id: int):
        ctx.step.run("placeholder", users.mark, user_id)
        return user_id

    return env.flow.batch(
        "welcome",
        execute=generate,
        source=users.page,
        needs_processing=users.pending,
        page_size=50,
        chunk_size=20,
    )


def test_a_batch_dry_run_counts_exactly_and_writes_nothing(env, users):
    welcome = define(env, users)
    with env.worker():
        stats = welcome.process(dry_run=True).result(timeout=60)
    assert stats == {
        "success": True,
        "total_eligible": 1000,
        "to_process": 700,
        "already_processed": 300,
        "dry_run": True,
        "message": "[DryRun] Would process 700 items",
    }
    assert users.counts() == {0: 700, 1: 300}
    assert env.flow.list_runs(workflow="generate-placeholder").runs == []


def test_a_batch_processes_each_pending_row_once_then_has_nothing_left(env, users):
    welcome = define(env, users, max_concurrency=8)
    with env.worker(concurrency=4):
        handle = welcome.process()
        stats = handle.result(timeout=60)
        assert stats["to_process"] == 700 and stats["dry_run"] is False
        # wait for every layer-3 run (each page is its own layer-2 run)
        from celery_flow.testing import eventually

        progress = eventually(
            lambda: (p := welcome.progress(handle.id)).done == 700 and p,
            timeout=90,
            what="700 placeholders",
        )
        # 20 full pages, then an empty 21st: a full page cannot know it was the last
        assert progress.failed == 0 and progress.pending == 0 and progress.pages == 21
        assert users.counts() == {1: 1000}  # every pending row exactly once, no row twice
        again = welcome.process().result(timeout=60)
    assert again["to_process"] == 0 and again["already_processed"] == 1000
    assert again["message"] == "Nothing to process: all 1000 items already processed"
    assert len(env.flow.list_runs(workflow="generate-placeholder", limit=1000).runs) == 700
    # every layer is a real run linked to its parent
    pages = env.flow.list_runs(workflow="welcome:paginate", limit=100).runs
    assert len(pages) == 21 and all(p.parent_run_id for p in pages)


def test_bad_batch_definitions_and_sources_fail_clearly(env, users):
    @env.flow.workflow()
    def one(ctx, item: int):
        return item

    with pytest.raises(WorkflowDefinitionError, match="chunk_size=0"):
        env.flow.batch("b1", execute=one, source=users.page, chunk_size=0)
    with pytest.raises(WorkflowDefinitionError, match="execute="):
        env.flow.batch("b2", execute=users.mark, source=users.page)

    not_a_page = env.flow.batch("b3", execute=one, source=lambda cursor, limit: [1, 2])
    stuck = env.flow.batch("b4", execute=one, source=lambda cursor, limit: Page([1], "same"))
    with env.worker():
        with pytest.raises(RunFailed, match=r"expected celery_flow\.Page"):
            not_a_page.process().result(timeout=30)
        with pytest.raises(RunFailed, match=r"loop forever|same cursor"):
            stuck.process().result(timeout=30)
