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
