"""Daily sales report: a dependency graph with a parallel wave, a side branch and two fan-ins.

Seed: the "complex dependency graph", fan-out and fan-in examples of the DAG platform guide
(``dag-saga-platform-workflows.txt``), as a report that pulls yesterday's sales from three
regional shops::

                ┌── fetch-eu ────┐
    prepare ────┼── fetch-us ────┼── merge ─────┐
                └── fetch-apac ──┘              ├── publish
                        └────── audit-apac ─────┘

* The three ``fetch-*`` steps depend only on ``prepare``, so they run at the same time (one
  Celery task each, while the run itself holds no worker).
* ``audit-apac`` depends on ``fetch-apac`` alone (the APAC feed is reconciled with its
  settlement file); ``merge`` is the fan-in of the three fetches: its ``previous_steps`` holds
  every dependency's result. ``publish`` waits for both branches and writes the report to SQLite.

Steps run in *waves* by dependency depth (``docs/dag.md``): prepare; the fetches; audit-apac and
merge together; publish.

Run it with a worker (``celery -A example_project.proj worker``)::

    >>> from example_project.proj.patterns.dependency_graph import sales_report
    >>> handle = sales_report.run(context={"report_id": "r1", "report_date": "2025-01-31"})
    >>> handle.result(timeout=30)["merge"]["total_usd_cents"]

or start the ``sales-report`` example with ``python -m example_project.trigger sales-report``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from celery_flow import DagStep, NonRetriableError

from .. import db
from ..celery import flow
from .catalog import Example

SCHEMA = """
CREATE TABLE IF NOT EXISTS sales_reports (
    report_id TEXT PRIMARY KEY, report_date TEXT NOT NULL, total_usd_cents INTEGER NOT NULL,
    body TEXT NOT NULL  -- JSON: revenue by region, order count, audit
);
"""
CURRENCIES = {"eu": "EUR", "us": "USD", "apac": "JPY"}
"""Each regional shop reports in its own currency (minor units: cents, or yen)."""

StepHandler = Callable[[dict[str, Any], dict[str, Any]], Any]

# -- fake external services ---------------------------------------------------------------------


def regional_orders(region: str, date: str, latency: float) -> list[int]:
    """A regional shop's API: the amounts of that day's orders (deterministic per day)."""
    time.sleep(latency)  # a slow remote call: this is why the fetches run in parallel
    rng = random.Random(f"{region}:{date}")
    return [rng.randint(500, 20_000) for _ in range(rng.randint(5, 12))]


def fx_rates(date: str) -> dict[str, float]:
    """US cents per minor unit of each currency that day (a rates API)."""
    return {"EUR": 1.08, "USD": 1.0, "JPY": 0.66}


# -- the steps ------------------------------------------------------------------------------------


def prepare(context: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """Fix the day and its exchange rates, so every branch converts alike."""
    return {"date": context["report_date"], "rates": fx_rates(context["report_date"])}


def fetch(region: str) -> StepHandler:
    """The step handler that fetches one region and converts it to US cents."""

    def fetch_region(context: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
        day = previous["prepare"]
        amounts = regional_orders(region, day["date"], context.get("latency_seconds", 0.3))
        rate = day["rates"][CURRENCIES[region]]
        return {
            "region": region,
            "orders": len(amounts),
            "revenue_local": sum(amounts),
            "revenue_usd_cents": round(sum(amounts) * rate),
        }

    return fetch_region


def audit_apac(context: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """Reconcile the APAC feed with its settlement file (it has sent duplicates before)."""
    settled = sum(regional_orders("apac", context["report_date"], 0.0))
    if settled != previous["fetch-apac"]["revenue_local"]:
        raise NonRetriableError(f"APAC feed does not match its settlement file ({settled})")
    return {"region": "apac", "reconciled": True}


def merge(context: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """Fan-in: one total from every fetch (``previous`` holds all three results)."""
    return {
        "sources": sorted(previous),
        "by_region": {r["region"]: r["revenue_usd_cents"] for r in previous.values()},
        "orders": sum(r["orders"] for r in previous.values()),
        "total_usd_cents": sum(r["revenue_usd_cents"] for r in previous.values()),
    }


def publish(context: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """Fan-in of both branches: write the report (a rerun replaces it)."""
    totals, audit = previous["merge"], previous["audit-apac"]
    body = {**totals, "audit": audit}
    with db.connect(SCHEMA) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO sales_reports VALUES (?, ?, ?, ?)",
            (
                context["report_id"],
                context["report_date"],
                totals["total_usd_cents"],
                json.dumps(body),
            ),
        )
    return {"report_id": context["report_id"], "inputs": sorted(previous)}


# -- the DAG ------------------------------------------------------------------------------------

sales_report = flow.dag(
    "daily-sales-report",
    steps=[
        DagStep("prepare", prepare),
        # parallel=True as in the seed: steps run in parallel whenever their dependencies allow
        *(
            DagStep(f"fetch-{r}", fetch(r), depends_on=["prepare"], parallel=True)
            for r in CURRENCIES
        ),
        DagStep("audit-apac", audit_apac, depends_on=["fetch-apac"]),
        DagStep("merge", merge, depends_on=[f"fetch-{r}" for r in CURRENCIES]),
        DagStep("publish", publish, depends_on=["merge", "audit-apac"]),
    ],
    timeout=600,
)


def report_context(report_id: str, *, latency_seconds: float = 0.3) -> dict[str, Any]:
    """The context of yesterday's (UTC) report."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    return {"report_id": report_id, "report_date": yesterday, "latency_seconds": latency_seconds}


EXAMPLES = [
    Example(
        key="sales-report",
        title="Dependency graph (DAG): three regions in parallel, an audit branch, two fan-ins",
        workflow="daily-sales-report",
        make_input=lambda tag: {"context": report_context(f"sales-{tag}")},
    )
]
