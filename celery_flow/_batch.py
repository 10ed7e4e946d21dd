"""``flow.batch``: the process → paginate → execute pattern as three real workflows.

* Layer 1, ``<name>:process`` (max_concurrency 1): walks the source to count eligible items,
  filters the ones that need processing (unless ``force``), returns statistics only on a dry
  run or when nothing needs doing, else starts layer 2 and returns the same statistics.
* Layer 2, ``<name>:paginate``: one run per page. It fetches the page by cursor, filters it,
  fans the ids out in chunks (``ctx.step.map``: a Celery group) that each start one layer-3
  run per item, then starts the next page as its own run.
* Layer 3 is the ``execute`` workflow, one item per run, with its own gate and rate limit.

Runs are linked parent → child, so ``progress(run_id)`` walks the tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ._definitions import check_name
from .errors import NonRetriableError, WorkflowDefinitionError

if TYPE_CHECKING:
    from ._context import Context
    from ._flow import Flow
    from ._handle import RunHandle
    from ._workflow import Workflow


@dataclass(frozen=True)
class Page:
    """One page from a batch ``source``: the item ids and the cursor of the next page.

    ``next_cursor=None`` means this was the last page.

    Examples:
        >>> Page(ids=[1, 2, 3], next_cursor=3)
    """

    ids: Sequence[Any]
    next_cursor: Any = None


class BatchProgress(BaseModel):
    """Items of a batch run: total to process, done (succeeded), failed, still pending."""

    model_config = ConfigDict(frozen=True)

    total: int
    done: int
    failed: int
    pending: int
    pages: int


@dataclass
class Batch:
    """A registered batch (see :meth:`Flow.batch`)."""

    flow: Flow
    name: str
    execute: Workflow[Any]
    source: Callable[[Any, int], Page]
    needs_processing: Callable[[list[Any]], Sequence[Any]] | None
    page_size: int
    chunk_size: int
    process_workflow: Workflow[Any] = field(init=False)
    paginate_workflow: Workflow[Any] = field(init=False)

    def process(self, *, dry_run: bool = False, force: bool = False) -> RunHandle:
        """Start layer 1. Its output is the statistics dict.

        Examples:
            >>> welcome.process(dry_run=True).result(timeout=60)["to_process"]
            80
        """
        return self.process_workflow.run({"dry_run": dry_run, "force": force})

    def progress(self, run_id: str) -> BatchProgress:
        """Items done / failed / pending under a layer-1 run (walks its child runs)."""
        process = self.flow.get_run(run_id)
        total = (
            int((process.output or {}).get("to_process", 0))
            if not (process.output or {}).get("dry_run")
            else 0
        )
        done = failed = pages = 0
        frontier = self.flow.store.children(run_id)
        while frontier:
            child_id = frontier.pop()
            info = self.flow.get_run(child_id)
            if info.workflow == self.paginate_workflow.name:
                pages += 1
                frontier += self.flow.store.children(child_id)
            elif info.status == "succeeded":
                done += 1
            elif info.status in ("failed", "canceled"):
                failed += 1
        return BatchProgress(
            total=total,
            done=done,
            failed=failed,
            pending=max(0, total - done - failed),
            pages=pages,
        )

    # -- the layers -----------------------------------------------------------------------------

    def _fetch(self, cursor: Any) -> dict[str, Any]:
        page = self.source(cursor, self.page_size)
        if not isinstance(page, Page):
            raise NonRetriableError(
                f"batch {self.name!r}: source returned {type(page).__qualname__}, expected "
                "celery_flow.Page(ids=[...], next_cursor=...)"
            )
        if page.next_cursor is not None and page.next_cursor == cursor:
            raise NonRetriableError(
                f"batch {self.name!r}: source returned the same cursor {cursor!r} it was given; "
                "the next page would be this page again. Return the cursor after the last id "
                "(or next_cursor=None on the last page)."
            )
        return {"ids": list(page.ids), "next_cursor": page.next_cursor}

    def _filter(self, ids: list[Any], force: bool) -> list[Any]:
        if force or self.needs_processing is None:
            return ids
        return list(self.needs_processing(ids))

    def _count(self, force: bool) -> dict[str, int]:
        total = pending = 0
        cursor: Any = None
        seen: set[str] = set()
        while True:
            page = self._fetch(cursor)
            total += len(page["ids"])
            pending += len(self._filter(page["ids"], force))
            cursor = page["next_cursor"]
            if cursor is None:
                return {"total_eligible": total, "to_process": pending}
            key = repr(cursor)
            if key in seen:
                raise NonRetriableError(
                    f"batch {self.name!r}: source cursor {cursor!r} came back a second time; "
                    "pagination would loop forever"
                )
            seen.add(key)

    def _process(self, ctx: Context, opts: dict[str, Any]) -> dict[str, Any]:
        dry_run, force = bool(opts.get("dry_run")), bool(opts.get("force"))
        counts = ctx.step.run("count", self._count, force)
        total, to_process = counts["total_eligible"], counts["to_process"]
        stats: dict[str, Any] = {
            "success": True,
            "total_eligible": total,
            "to_process": to_process,
            "already_processed": total - to_process,
            "dry_run": dry_run,
        }
        if dry_run:
            return {**stats, "message": f"[DryRun] Would process {to_process} items"}
        if to_process == 0:
            return {**stats, "message": f"Nothing to process: all {total} items already processed"}
        ctx.step.emit_workflow(
            "paginate",
            self.paginate_workflow,
            {"cursor": None, "force": force, "root": ctx.run_id, "page": 1},
        )
        return {**stats, "message": f"Processing {to_process} items"}

    def _paginate(self, ctx: Context, page_in: dict[str, Any]) -> dict[str, Any]:
        page = ctx.step.run("fetch", self._fetch, page_in["cursor"])
        ids = ctx.step.run("filter", self._filter, page["ids"], bool(page_in.get("force")))
        items = [
            {"batch": self.name, "id": i, "root": page_in["root"], "parent": ctx.run_id}
            for i in ids
        ]
        started = ctx.step.map("start", start_item, items, chunk_size=self.chunk_size)
        if page["next_cursor"] is not None:
            ctx.step.emit_workflow(
                "next-page",
                self.paginate_workflow,
                {**page_in, "cursor": page["next_cursor"], "page": page_in["page"] + 1},
            )
        return {
            "page": page_in["page"],
            "started": len(started),
            "next_cursor": page["next_cursor"],
        }


def start_item(item: dict[str, Any]) -> str:
    """Map fn of layer 2: start the layer-3 run of one item (exactly once per batch run)."""
    from ._fanout import current_flow

    flow = current_flow.get()
    if flow is None:  # pragma: no cover - only ever called by a map chunk task
        raise RuntimeError("start_item runs inside a celery_flow map chunk")
    batch = flow.batches[item["batch"]]
    handle = flow._start(
        batch.execute,
        item["id"],
        idempotency_key=f"{batch.name}:{item['root']}:{item['id']}",
        idempotency_ttl=flow.retention,
        run_at=None,
        delay=None,
        queue=None,
        parent=item["parent"],
    )
    assert handle is not None
    return handle.id


def build_batch(
    flow: Flow,
    name: str,
    *,
    execute: Workflow[Any],
    source: Callable[[Any, int], Page],
    needs_processing: Callable[[list[Any]], Sequence[Any]] | None,
    page_size: int,
    chunk_size: int,
) -> Batch:
    """Validate a batch definition and register its two layer workflows."""
    from ._workflow import Workflow

    check_name(name, what="batch name")
    if name in flow.batches:
        raise WorkflowDefinitionError(f"batch {name!r} is already defined")
    if not isinstance(execute, Workflow):
        raise WorkflowDefinitionError(
            f"batch {name!r}: execute= must be a workflow (decorated with @flow.workflow)"
        )
    if not callable(source):
        raise WorkflowDefinitionError(f"batch {name!r}: source= must be callable(cursor, limit)")
    if needs_processing is not None and not callable(needs_processing):
        raise WorkflowDefinitionError(f"batch {name!r}: needs_processing= must be callable(ids)")
    for label, value in (("page_size", page_size), ("chunk_size", chunk_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WorkflowDefinitionError(f"batch {name!r}: {label}={value!r} must be an int >= 1")
    batch = Batch(flow, name, execute, source, needs_processing, page_size, chunk_size)

    def process(ctx: Context, opts: dict[str, Any]) -> dict[str, Any]:
        return batch._process(ctx, opts)

    def paginate(ctx: Context, page: dict[str, Any]) -> dict[str, Any]:
        return batch._paginate(ctx, page)

    batch.process_workflow = flow.workflow(
        name=f"{name}:process", max_concurrency=1, schema=None, queue=execute.queue
    )(process)
    batch.paginate_workflow = flow.workflow(
        name=f"{name}:paginate", schema=None, queue=execute.queue
    )(paginate)
    flow.batches[name] = batch
    return batch
