"""Usage that mypy --strict checks, so the public types stay honest (not collected by pytest)."""

from __future__ import annotations

import asyncflow as af

USER_ID = af.Key("user.id", int)


async def typed_store(ctx: af.ActionContext) -> None:
    ctx.store[USER_ID] = 3
    user_id: int = ctx.store[USER_ID]
    same: int = ctx.store.get(USER_ID)
    name: str = ctx.store.get("user.name", str)
    fallback: int = ctx.store.get_or("retries", 0, int)
    ctx.logger.info("{} {} {} {}", user_id, same, name, fallback)


@af.action
async def bare(ctx: af.ActionContext) -> None:
    await typed_store(ctx)


@af.action(name="load", tags={"io"})
async def load(ctx: af.ActionContext) -> None:
    ctx.add_dynamic_action(bare)
    ctx.add_dynamic_stage(af.Stage("more", actions=[bare]), allow_duplicate=True)


async def run_it() -> af.RunStatus:
    wf = af.Workflow("w", stages=[af.Stage("s", actions=[bare, load])])
    result: af.RunResult = await af.run(wf, store={"user.name": "Alice"})
    return result.status
