"""The engine's one codec: JSON to every backend; the memory backend alone keeps what JSON cannot carry."""

from __future__ import annotations

import json

import anyio
import durable_flows as flows
import pytest

import asyncflow as af
from asyncflow._core.definitions import registry
from asyncflow._core.serial import IN_PROCESS_CODEC, JSON_CODEC, Codec, Live, codec_for
from asyncflow.backends import MemoryBackend, open_backend


class Opaque:
    """A user's own object: JSON cannot carry it."""


@af.action
async def keep_opaque(ctx: af.ActionContext) -> None:
    """Write a tuple and an object JSON cannot carry."""
    ctx.store["pair"] = (1, 2)
    ctx.store.put("thing", Opaque(), tags=["t"], properties={"why": "test"})


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    flows.reset()


def test_every_database_and_the_memory_backend_get_one_codec_each() -> None:
    """SQLite gets the JSON codec and the memory backend the in-process one (the same class)."""
    assert codec_for(open_backend("sqlite:///unused.db")) is JSON_CODEC
    assert codec_for(MemoryBackend()) is IN_PROCESS_CODEC
    assert type(JSON_CODEC) is type(IN_PROCESS_CODEC)


@pytest.mark.parametrize("codec", [JSON_CODEC, IN_PROCESS_CODEC], ids=["json", "in-process"])
def test_a_json_value_is_json_text_for_every_backend(codec: Codec) -> None:
    """A JSON store value (and its properties) reaches every backend as the same JSON text."""
    entry = codec.entry("k", {"a": [1, "x"]}, None)
    assert entry.value == json.dumps({"a": [1, "x"]})
    assert codec.read(entry.value) == {"a": [1, "x"]}


def test_a_value_json_cannot_carry_stays_the_object_only_in_process() -> None:
    """The in-process codec wraps a non-JSON value as it is; the JSON codec refuses it, naming the key."""
    thing = Opaque()
    kept = IN_PROCESS_CODEC.entry("thing", thing, None)
    assert kept.value == Live(thing)
    assert IN_PROCESS_CODEC.read(kept.value) is thing
    with pytest.raises(af.NotSerializable, match="'thing'"):
        JSON_CODEC.entry("thing", thing, None)


def test_plan_changes_are_json_unless_they_hold_an_object_json_cannot_carry() -> None:
    """Plan changes are JSON text on every backend; an inserted closure stays live only in process."""
    ops = [{"op": "disable_stage", "id": "s"}]
    assert IN_PROCESS_CODEC.encode_ops(ops) == JSON_CODEC.encode_ops(ops) == json.dumps(ops)

    @af.action
    async def closure(ctx: af.ActionContext) -> None:
        return None

    ref = IN_PROCESS_CODEC.reference(registry, closure, "in the test")
    encoded = IN_PROCESS_CODEC.encode_ops([{"op": "action", "ref": ref}])
    assert isinstance(encoded, Live)
    assert IN_PROCESS_CODEC.resolve(registry, IN_PROCESS_CODEC.decode_ops(encoded)[0]["ref"], "") is closure
    with pytest.raises(af.NotReferenceable):
        JSON_CODEC.reference(registry, closure, "in the test")


async def test_the_memory_backend_keeps_json_text_and_live_objects_only_where_json_cannot_go() -> None:
    """A memory run's checkpoints hold JSON text for JSON values and the user's object for the rest."""
    backend = MemoryBackend()
    workflow = af.Workflow("opaque", stages=[af.Stage("s", actions=[keep_opaque])])
    async with af.Engine(backend) as engine:
        engine.register(workflow)
        handle = await engine.start(workflow, store={"given": [1]})
        with anyio.fail_after(5):
            result = await handle.result()
        saved = await backend.load(handle.run_id)
        store = await engine.get_store(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert saved is not None
    values = {entry.key: entry.value for entry in saved.store}
    assert values["given"] == "[1]"
    assert values["pair"] == "[1, 2]"
    assert isinstance(values["thing"], Live)
    assert isinstance(values["thing"].value, Opaque)
    # Read back as a database gives it back: the tuple as a list, the object as itself.
    assert store["pair"] == [1, 2]
    assert store["thing"] is values["thing"].value


async def test_a_stage_json_cannot_describe_comes_back_as_itself_when_a_memory_run_resumes() -> None:
    """In memory, a stage inserted with a closure in it is replayed on resume as that very stage."""
    ran: list[str] = []

    @af.action
    async def closure(ctx: af.ActionContext) -> None:
        ran.append("closure")

    @af.action
    async def insert(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("inserted", actions=[closure]))

    @af.action
    async def approve(ctx: af.ActionContext) -> None:
        if not ctx.is_resuming:
            ctx.suspend("waits for a resume")

    workflow = af.Workflow("closure-stage", stages=[af.Stage("s", actions=[insert, approve])])
    async with af.Engine(MemoryBackend()) as engine:
        engine.register(workflow)
        handle = await engine.start(workflow)
        with anyio.fail_after(5):
            assert (await handle.result()).status is af.RunStatus.SUSPENDED
            result = await (await engine.resume(handle.run_id)).result()
    assert result.status is af.RunStatus.COMPLETED
    assert ran == ["closure"]
