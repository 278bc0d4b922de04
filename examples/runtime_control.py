"""Runtime control: an action reshapes the rest of its own run through ``ctx.plan``.

A release pipeline has tests tagged ``slow``, a ``deploy-prod`` stage and a
``notify`` stage. Its first action, ``triage``, looks at the change being
released and, for a docs-only change:

- finds the slow actions with ``ctx.plan.find_actions(tag="slow")``,
- switches all of them off at once with ``ctx.plan.disable_by_tag("slow")``,
- takes ``deploy-prod`` out of the plan with ``ctx.plan.remove_stage``.

Disabled steps still appear in the run's record, as skipped; a removed stage
does not appear at all. The same workflow run for a code change keeps every
step: each run owns its plan, and the definition never changes.

Run it with ``python examples/runtime_control.py``.
"""

from __future__ import annotations

import anyio

import asyncflow as af


@af.action
async def triage(ctx: af.ActionContext) -> None:
    """Trim the pipeline for a docs-only change."""
    change: str = ctx.store.get("change.kind", str)
    if change != "docs":
        return
    slow = ctx.plan.find_actions(tag="slow")
    ctx.store["triage.slow"] = [a.name for a in slow]
    ctx.store["triage.disabled"] = ctx.plan.disable_by_tag("slow")
    ctx.store["triage.removed"] = ctx.plan.remove_stage("deploy-prod")


def step(name: str, *, tags: set[str] | None = None) -> af.Action:
    """A placeholder action called ``name`` that just takes a moment."""

    async def work(ctx: af.ActionContext) -> None:
        await anyio.sleep(0.005)

    return af.action(name=name, tags=tags)(work)


workflow = af.Workflow(
    "release",
    stages=[
        af.Stage("triage", actions=[triage]),
        af.Stage(
            "test",
            actions=[
                step("unit-tests"),
                step("integration-tests", tags={"slow"}),
                step("browser-tests", tags={"slow"}),
            ],
        ),
        af.Stage("build-docs", actions=[step("build-docs")]),
        af.Stage("deploy-prod", actions=[step("deploy")], tags={"prod"}),
        af.Stage("notify", actions=[step("post-to-chat")]),
    ],
)


def show(result: af.RunResult) -> None:
    """Print each step of a run with its status."""
    for rec in result.steps:
        label = rec.stage_id if rec.action_name is None else f"  {rec.action_name}"
        why = f" ({rec.reason})" if rec.reason else ""
        print(f"    {label:<22} {rec.status.value}{why}")


async def main() -> None:
    """Run the pipeline for a docs change, then for a code change."""
    docs = await af.run(workflow, store={"change.kind": "docs"})
    print("docs-only change:")
    print(f"  found slow actions: {docs.store['triage.slow']}")
    print(
        f"  disabled by tag 'slow': {docs.store['triage.disabled']} actions;"
        f" removed deploy-prod: {docs.store['triage.removed']}"
    )
    show(docs)
    code = await af.run(workflow, store={"change.kind": "code"})
    print("code change:")
    print(f"  stages that ran: {', '.join(code.stage_order())}")
    print(f"  actions that ran: {', '.join(code.action_order())}")


if __name__ == "__main__":
    anyio.run(main)
