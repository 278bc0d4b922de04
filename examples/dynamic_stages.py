"""Dynamic stages: a discovery stage inserts one stage per kind of resource it finds.

This is the discovery pattern from gostage's "Dynamic Stages" page, the
asyncflow way. The workflow defines only ``discover`` and ``report``; while
``discover`` runs, its action finds three kinds of resources and calls
``ctx.add_dynamic_stage`` once per kind. The inserted stages run right after
``discover``, in the order they were added, before ``report``:

    discover -> process-databases -> process-caches -> process-servers -> report

Run it with ``python examples/dynamic_stages.py``.
"""

from __future__ import annotations

import anyio

import asyncflow as af


class ProcessResource(af.Action):
    """Process every resource of one kind (here: count them into the store)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def execute(self, ctx: af.ActionContext) -> None:
        """Pretend to process the resources of ``self.kind``."""
        await anyio.sleep(0.01)
        found: list[str] = ctx.store.get(f"discovered.{self.kind}", list)
        ctx.store[f"processed.{self.kind}"] = len(found)


class DiscoverResources(af.Action):
    """Inspect the environment and insert one processing stage per resource kind."""

    name = "discover-resources"

    async def execute(self, ctx: af.ActionContext) -> None:
        """Find resource kinds, store what was found, insert a stage for each kind."""
        await anyio.sleep(0.01)
        discovered = {
            "databases": ["orders-db", "users-db"],
            "caches": ["sessions"],
            "servers": ["web-1", "web-2", "worker-1"],
        }
        for kind, items in discovered.items():
            ctx.store[f"discovered.{kind}"] = items
            ctx.add_dynamic_stage(
                af.Stage(
                    f"process-{kind}",
                    name=f"Process {kind}",
                    description="A dynamically generated stage.",
                    actions=[ProcessResource(kind)],
                )
            )


@af.action
async def report(ctx: af.ActionContext) -> None:
    """Sum up what the inserted stages processed."""
    ctx.store["report"] = {
        key.removeprefix("processed."): ctx.store[key] for key in ctx.store if key.startswith("processed.")
    }


workflow = af.Workflow(
    "discovery",
    stages=[
        af.Stage("discover", actions=[DiscoverResources()]),
        af.Stage("report", actions=[report]),
    ],
)


async def main() -> None:
    """Run the workflow and show the order the stages ran in."""
    result = await af.run(workflow)
    print(f"defined stages: {[stage.id for stage in workflow.stages]}")
    print(f"stages that ran: {' -> '.join(result.stage_order())}")
    for step in result.steps:
        if step.kind == "stage":
            origin = f"inserted by {step.inserted_by}" if step.dynamic else "defined in the workflow"
            print(f"  {step.stage_id:<18} {origin}")
    print(f"report: {result.store['report']}")
    # Running never changes the definition: the next run starts from two stages again.
    assert [stage.id for stage in workflow.stages] == ["discover", "report"]


if __name__ == "__main__":
    anyio.run(main)
