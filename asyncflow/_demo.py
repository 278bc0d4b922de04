"""The workflow behind ``asyncflow demo``: discovery that grows its own plan, run durably.

A ``discover`` stage finds three kinds of resources and inserts one stage per
kind; each of those stages lists its items and inserts one action per item,
and runs them three at a time. A ``report`` stage reads what the
inspections stored; an ``approve`` stage suspends the run until someone
approves the report (``engine.resume(run_id, {"approved_by": ...})``); a
tag-based switch turns the ``publish`` stage off at run time (a dry run),
so the tree shows a skipped step.

The demo runs it on an SQLite file (:data:`WORKFLOW` is what
``asyncflow runs resume --app asyncflow._demo:WORKFLOW`` loads), so every
action is module level and every inserted action is an
:class:`~asyncflow.Action` subclass with JSON constructor arguments: a
durable run re-creates them from their import paths.

It is written against the public API (``import asyncflow as af``), as a user
would write it, and does real async work (short sleeps) so concurrency shows
in the timings. Everything is deterministic: no randomness, same tree on
every run (only the timings move a little).
"""

from __future__ import annotations

import zlib
from typing import Any

import anyio

import asyncflow as af

#: What ``discover`` "finds": resource kind -> item names.
INVENTORY: dict[str, tuple[str, ...]] = {
    "databases": ("orders-db", "users-db", "events-db", "billing-db"),
    "caches": ("sessions", "catalog", "rates"),
    "servers": ("web-1", "web-2", "worker-1", "bastion"),
}

#: Inspections slower than this are reported as slow.
SLOW_MS = 50

SUMMARY = "report.summary"
APPROVED_BY = "report.approved_by"


def latency_ms(item: str) -> int:
    """A stand-in latency for ``item``: 20-60 ms, derived from its name (no randomness)."""
    return 20 + zlib.crc32(item.encode()) % 41


class InspectItem(af.Action):
    """Inspect one discovered item and store what was found."""

    description = "Inspect one discovered resource"

    def __init__(self, kind: str, item: str) -> None:
        self.kind = kind
        self.item = item
        self.name = f"inspect-{item}"

    async def execute(self, ctx: af.ActionContext) -> None:
        """Pretend to probe the item, then record its latency under a tagged key."""
        ms = latency_ms(self.item)
        await anyio.sleep(ms / 1000)
        ctx.store.put(
            f"inventory.{self.kind}.{self.item}",
            {"kind": self.kind, "item": self.item, "latency_ms": ms},
            tags=("inventory",),
            properties={"kind": self.kind},
        )


class ProcessResource(af.Action):
    """List the items of one resource kind and fan out one inspection per item."""

    description = "List one kind of resource and inspect each item"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def execute(self, ctx: af.ActionContext) -> None:
        """Insert an :class:`InspectItem` per item; the stage runs them concurrently."""
        items = INVENTORY[self.kind]
        for item in items:
            ctx.add_dynamic_action(InspectItem(self.kind, item))
        ctx.logger.info("{} {} to inspect", len(items), self.kind)


@af.action(name="find-resources", description="Find the kinds of resources to process")
async def find_resources(ctx: af.ActionContext) -> None:
    """Discover resource kinds and insert one processing stage for each."""
    await anyio.sleep(0.05)
    for kind in INVENTORY:
        ctx.add_dynamic_stage(
            af.Stage(
                f"process-{kind}",
                name=f"Process {kind}",
                description="A dynamically generated stage.",
                actions=[ProcessResource(kind)],
                concurrency=3,
            )
        )
    # A dry run publishes nothing: switch off every step tagged "publish" (the whole stage).
    if ctx.store.get_or("demo.dry_run", True, bool):
        ctx.plan.disable_by_tag("publish")


@af.action(name="summarize", description="Summarize the inspections")
async def summarize(ctx: af.ActionContext) -> None:
    """Read every inspection from the store and write a one-line summary."""
    found: list[dict[str, Any]] = [ctx.store[key] for key in ctx.store.find(tag="inventory")]
    slow = sorted(f["item"] for f in found if f["latency_ms"] > SLOW_MS)
    slow_text = f"{len(slow)} slow (>{SLOW_MS} ms): {', '.join(slow)}" if slow else "none slow"
    ctx.store[SUMMARY] = f"{len(found)} resources inspected, {slow_text}"


@af.action(name="approve", description="Wait until a person approves the report")
async def approve(ctx: af.ActionContext) -> None:
    """Suspend the run with the summary; when resumed with ``{"approved_by": name}``, record the name.

    Resumed without a name, it asks again (the run is suspended again).
    """
    data = ctx.resume_data if ctx.is_resuming else None
    approver = data.get("approved_by") if isinstance(data, dict) else None
    if not approver:
        ctx.suspend("needs approval", {"summary": ctx.store.get_or(SUMMARY, "")})
    ctx.store[APPROVED_BY] = str(approver)


@af.action(name="publish", description="Post the summary to the team channel", tags={"publish"})
async def publish(ctx: af.ActionContext) -> None:
    """Would post the summary somewhere; disabled in a dry run."""
    ctx.store["report.published"] = True


def build_workflow() -> af.Workflow:
    """The demo workflow: discover, report, approve, publish; the rest is inserted at run time."""
    return af.Workflow(
        "resource-discovery",
        name="Resource discovery",
        description="Discover resources, inspect each one, report, get approval, publish.",
        stages=[
            af.Stage("discover", name="Discover", actions=[find_resources]),
            af.Stage("report", name="Report", actions=[summarize]),
            af.Stage("approve", name="Approve", actions=[approve]),
            af.Stage("publish", name="Publish", actions=[publish], tags={"publish"}),
        ],
    )


#: The demo workflow, for ``asyncflow runs resume --app asyncflow._demo:WORKFLOW``.
WORKFLOW = build_workflow()

#: The store a demo run starts with: a dry run, so nothing is published.
START_STORE = {"demo.dry_run": True}
