"""Middleware at the four levels, and the built-in middleware, in one run.

A middleware is an async callable ``(ctx, call_next)``: what it does before
``await call_next()`` happens before the step it wraps, what it does after
happens after. This example registers one of its own at each level and
prints where each enters and leaves, so the nesting shows:

- run level (``af.Runner(middleware=...)``): a timer around the whole run;
- stage level (``Workflow.use``): a logger around every stage of the workflow;
- actions block (``Stage.use``): around the block of one stage's actions;
- action level (``af.Runner(action_middleware=...)``): around every action.

It also uses the built-ins from ``asyncflow.middleware``:

- ``mw.inject_store`` puts the deployment region into the store for the run;
- ``mw.skip_stages`` skips the stage tagged ``nightly`` (recorded skipped);
- ``mw.recover`` swallows a ``ConnectionError`` of one action (kept on record);
- ``mw.timing`` measures every stage; the durations land in ``result.timings``.

Run it with ``python examples/middleware.py``.
"""

from __future__ import annotations

import time

import anyio

import asyncflow as af
from asyncflow import middleware as mw


class Trace:
    """Prints one indented line per middleware entry and exit, to show the nesting.

    Shared by the middleware of this example only (the stages run one at a
    time, so one depth counter is enough).
    """

    def __init__(self) -> None:
        self.depth = 0

    def enter(self, what: str) -> None:
        """Print ``> what`` one level deeper than the enclosing middleware."""
        print(f"{'  ' * self.depth}> {what}")
        self.depth += 1

    def leave(self, what: str) -> None:
        """Print ``< what`` at the level of the matching ``enter``."""
        self.depth -= 1
        print(f"{'  ' * self.depth}< {what}")


trace = Trace()


async def run_timer(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    """Run level: time the whole run."""
    trace.enter(f"run       {ctx.workflow.id}")
    started = time.perf_counter()
    try:
        await call_next()
    finally:
        trace.leave(f"run       {ctx.workflow.id} ({(time.perf_counter() - started) * 1000:.1f} ms)")


async def stage_logger(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    """Stage level (``Workflow.use``): log each stage of this workflow."""
    trace.enter(f"stage     {ctx.stage_id}")
    try:
        await call_next()
    finally:
        trace.leave(f"stage     {ctx.stage_id}")


async def actions_block(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    """Actions block (``Stage.use``): wraps all the actions of one stage at once."""
    count = len(ctx.stage.actions) if ctx.stage is not None else 0
    trace.enter(f"actions   of {ctx.stage_id} ({count} defined)")
    try:
        await call_next()
    finally:
        trace.leave(f"actions   of {ctx.stage_id}")


async def action_tracer(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    """Action level (``Runner(action_middleware=...)``): wraps every action of every workflow."""
    name = ctx.action.name if ctx.action is not None else "?"
    trace.enter(f"action    {name} (attempt {ctx.attempt})")
    try:
        await call_next()
    finally:
        trace.leave(f"action    {name}")


@af.action
async def compile_assets(ctx: af.ActionContext) -> None:
    """Pretend to build something."""
    await anyio.sleep(0.005)
    ctx.store["build.artifact"] = "app-1.4.2.tar.gz"


@af.action
async def warm_cache(ctx: af.ActionContext) -> None:
    """A best-effort step whose failure should not fail the run."""
    raise ConnectionError("cache node 10.0.0.7 refused the connection")


@af.action
async def build_docs(ctx: af.ActionContext) -> None:
    """Slow, so it only runs in the nightly build."""
    await anyio.sleep(0.005)


@af.action
async def upload(ctx: af.ActionContext) -> None:
    """Ship the artifact to the region that ``mw.inject_store`` put into the store."""
    region: str = ctx.store.get("deploy.region", str)
    ctx.store["deploy.url"] = f"https://{region}.example.com/{ctx.store.get('build.artifact', str)}"


def build_workflow() -> af.Workflow:
    """The release workflow, with its own stage-level and actions-block middleware."""
    build = af.Stage("build", actions=[compile_assets, warm_cache])
    build.use(actions_block)
    # Only this stage's actions may fail softly: recover is scoped with use_action.
    build.use_action(mw.recover(lambda exc: isinstance(exc, ConnectionError)))
    workflow = af.Workflow(
        "release",
        stages=[
            build,
            af.Stage("docs", actions=[build_docs], tags={"nightly"}),
            af.Stage("ship", actions=[upload]),
        ],
    )
    workflow.use(stage_logger)
    return workflow


def not_tonight(stage: af.Stage, store: af.Store) -> bool:
    """Skip the stages tagged ``nightly`` unless the store says this is the nightly build."""
    return "nightly" in stage.tags and not store.get_or("nightly", False, bool)


async def main() -> None:
    """Run the release once and show the nesting, the skipped stage, the recovery and the timings."""
    runner = af.Runner(
        middleware=[run_timer, mw.inject_store({"deploy.region": "eu-west-1"})],
        stage_middleware=[mw.skip_stages(not_tonight), mw.timing()],
        action_middleware=[action_tracer],
    )
    print("nesting (first registered is outermost; runner > workflow > stage):")
    print("(docs never reaches stage_logger: the runner's mw.skip_stages is outside it)")
    result = await runner.run(build_workflow())
    print(f"\nstatus: {result.status.value}; uploaded to {result.store['deploy.url']}")
    print("steps:")
    for rec in result.steps:
        label = rec.stage_id if rec.action_name is None else f"  {rec.action_name}"
        notes = []
        if rec.reason:
            notes.append(rec.reason)
        if rec.recovered_error is not None:
            notes.append(f"recovered from {type(rec.recovered_error).__name__}: {rec.recovered_error}")
        print(f"  {label:<16} {rec.status.value:<10} {'; '.join(notes)}".rstrip())
    print("timings (mw.timing at stage level):")
    for timing in result.timings:
        print(f"  {timing.level:<6} {timing.stage_id or '':<8} {timing.seconds * 1000:6.2f} ms")


if __name__ == "__main__":
    anyio.run(main)
