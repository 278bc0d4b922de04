"""Usage that mypy --strict checks, so the public types stay honest (not collected by pytest)."""

from __future__ import annotations

from datetime import timedelta

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


USER_NAME = af.Key("user.name", str)


def store_api(store: af.Store) -> None:
    store.put(USER_NAME, "Alice", ttl=timedelta(minutes=5), tags={"user"}, properties={"pii": True})
    store.put("plain", [1, 2], ttl=0.5)
    name: str = store[USER_NAME]
    maybe: str = store.get_or(USER_NAME, "nobody")
    count: int = store.get_or("count", 0, int)
    anything: object = store["plain"]
    removed: bool = store.delete(USER_NAME)
    found: list[str] = store.find(tag="user", any_tags={"a", "b"}, all_tags=["a"], property=("pii", True))
    tags: frozenset[str] = store.tags_of(USER_NAME)
    props: dict[str, object] = store.properties_of("plain")
    snap: dict[str, object] = store.snapshot()
    copy: af.Store = store.clone()
    copy.merge(store, on_conflict="keep")
    copy.merge({"a": 1}, on_conflict="error")
    keys: list[str] = list(store)
    present: bool = USER_NAME in store and "plain" in store
    size: int = len(store)
    del store[USER_NAME]
    print(name, maybe, count, anything, removed, found, tags, props, snap, keys, present, size)


def store_errors(store: af.Store, other: af.Store) -> str:
    try:
        store.merge(other, on_conflict="error")
        return store.get(USER_NAME)
    except af.StoreConflict as conflict:
        return ", ".join(conflict.keys)
    except af.MissingKey as missing:
        return missing.key
    except af.TypeMismatch as mismatch:
        return mismatch.key


def typed_key_rejects_wrong_value(store: af.Store) -> None:
    # mypy --strict warns on unused ignores, so these lines prove the Key types bite.
    store[USER_ID] = "three"  # type: ignore[misc]
    wrong: str = store[USER_ID]  # type: ignore[assignment]
    print(wrong)


async def middleware_types() -> af.Runner:
    from datetime import timedelta

    from asyncflow import backoff
    from asyncflow import middleware as mw

    async def timing(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        attempt: int = ctx.attempt
        await call_next()
        ctx.logger.info("{} {}", ctx.describe(), attempt)

    events: list[af.Event] = []
    runner = af.Runner(
        middleware=[mw.logging()],
        stage_middleware=[timing, mw.timing()],
        action_middleware=[mw.retry(3, backoff=backoff.exponential(0.1, maximum=1.0)), mw.timeout(5.0)],
        retry=af.Retry(attempts=2, backoff=backoff.fixed(0.5)),
        timeout=timedelta(seconds=3).total_seconds(),
    )
    runner.on_event(events.append)
    runner.on_message("progress", lambda message: print(message.payload, message.seq))
    async with runner.subscribe(buffer=100) as stream:
        async for event in stream:
            kind: af.EventKind = event.kind
            print(kind)
            break
    return runner


async def engine_types(wf: af.Workflow) -> af.RunStatus:
    from datetime import timedelta

    engine = af.Engine("sqlite:///runs.db", retention=timedelta(days=7), clock=af.testing.FakeClock())
    engine.register(wf)
    async with engine:
        handle: af.RunHandle = await engine.start(wf, store={"order": 42}, idempotency_key="order-42")
        result: af.RunResult = await handle.result()
        info: af.RunInfo = await engine.get_run(handle.run_id)
        page: af.RunPage = await engine.list_runs(status=af.RunStatus.SUSPENDED, limit=10)
        if info.status is af.RunStatus.SUSPENDED:
            await engine.resume(handle.run_id, {"approved_by": "ann"})
        removed: int = await engine.purge(older_than=timedelta(days=30))
        print(page.next_cursor, removed)
        return result.status


async def typed_initial_stores(engine: af.Engine, wf: af.Workflow) -> None:
    """Initial stores keyed by af.Key objects (or by both kinds) type-check without a cast."""
    from typing import Any

    from asyncflow.testing import run_action

    await af.run(wf, store={USER_ID: 3})
    await engine.start(wf, store={USER_ID: 3})
    await engine.start(wf, store={"user.name": "Alice"})
    both: dict[str | af.Key[Any], Any] = {USER_ID: 3, "user.name": "Alice"}
    await engine.start(wf, store=both)
    await run_action(bare, store={USER_ID: 3})
    af.Store({USER_NAME: "Alice"}).merge({USER_ID: 4})


def timeouts_as_timedeltas() -> af.Stage:
    """Timeouts take a timedelta where they take seconds."""
    from asyncflow import middleware as mw

    @af.action(timeout=timedelta(seconds=30))
    async def slow(ctx: af.ActionContext) -> None: ...

    af.Runner(timeout=timedelta(minutes=1), action_middleware=[mw.timeout(timedelta(seconds=5))])
    return af.Stage("s", actions=[slow], timeout=timedelta(seconds=10))


async def isolated_stages(wf: af.Workflow) -> None:
    """Process isolation: the isolation literal, the pool, and what a dead child's error carries."""
    stage = af.Stage("parse", actions=[bare], isolation="process")
    wf.add_stage(stage)
    async with af.ProcessPool(
        size=2, max_tasks_per_child=100, kill_grace=timedelta(seconds=1).total_seconds()
    ) as pool:
        runner = af.Runner(process_pool=pool)
        engine = af.Engine(process_pool=pool)
        print(engine.process_pool, pool.pids)
        try:
            await runner.run(wf)
        except af.ChildProcessFailed as failed:
            code: int | None = failed.exit_code
            signal_name: str | None = failed.signal_name
            tail: tuple[str, ...] = failed.stderr_tail
            print(code, signal_name, tail, failed.pid, failed.stage_id, failed.action_name)
