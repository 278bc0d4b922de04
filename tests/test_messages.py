"""Messages: ctx.send delivers an af.Message with its full context to the handlers whose scope matches."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import asyncflow as af


def sender(name: str, kind: str = "progress", payload: Any = None) -> af.Action:
    """An action called ``name`` that sends one message of ``kind`` with ``payload``."""

    async def body(ctx: af.ActionContext) -> None:
        await ctx.send(kind, payload)

    return af.action(name=name)(body)


def three_senders() -> af.Workflow:
    """Workflow "wf" with stage "s" of actions a, b, c, each sending one "progress" message."""
    return af.Workflow(
        "wf",
        stages=[
            af.Stage("s", actions=[sender("a", payload=1), sender("b", payload=2), sender("c", payload=3)])
        ],
    )


def collector() -> tuple[list[af.Message], Callable[[af.Message], None]]:
    """A list and a sync handler that appends every message it gets to it."""
    got: list[af.Message] = []
    return got, got.append


# ---- delivery and fields --------------------------------------------------------------


async def test_message_carries_kind_payload_and_run_context() -> None:
    """Each message names its kind, payload, run, workflow, stage and action."""
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("progress", handler)
    result = await runner.run(three_senders())
    assert [(m.kind, m.payload, m.action_name) for m in got] == [
        ("progress", 1, "a"),
        ("progress", 2, "b"),
        ("progress", 3, "c"),
    ]
    assert all(isinstance(m, af.Message) for m in got)
    assert {m.run_id for m in got} == {result.run_id}
    assert {m.workflow_id for m in got} == {"wf"}
    assert {m.stage_id for m in got} == {"s"}


async def test_message_action_index_and_is_last_action() -> None:
    """action_index counts the stage's actions from 0 and only the stage's last action is is_last_action."""
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("progress", handler)
    await runner.run(three_senders())
    assert [(m.action_index, m.is_last_action) for m in got] == [(0, False), (1, False), (2, True)]


async def test_message_pid_is_this_process_and_not_from_a_child() -> None:
    """A message sent in-process carries this process's pid and from_child False."""
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("progress", handler)
    await runner.run(three_senders())
    assert [(m.pid, m.from_child) for m in got] == [(os.getpid(), False)] * 3


async def test_message_seq_increases_per_run_from_one() -> None:
    """seq is 1, 2, 3 within a run and starts again at 1 for the next run."""
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("progress", handler)
    first = await runner.run(three_senders())
    second = await runner.run(three_senders())
    assert [(m.run_id, m.seq) for m in got] == [
        (first.run_id, 1),
        (first.run_id, 2),
        (first.run_id, 3),
        (second.run_id, 1),
        (second.run_id, 2),
        (second.run_id, 3),
    ]


async def test_message_seq_counts_across_stages_and_kinds() -> None:
    """seq counts every message of the run, whatever its stage or kind."""

    @af.action
    async def chatty(ctx: af.ActionContext) -> None:
        await ctx.send("one")
        await ctx.send("two")

    wf = af.Workflow(
        "wf",
        stages=[af.Stage("s1", actions=[chatty]), af.Stage("s2", actions=[sender("x", kind="three")])],
    )
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("*", handler)
    await runner.run(wf)
    assert [(m.kind, m.stage_id, m.seq) for m in got] == [
        ("one", "s1", 1),
        ("two", "s1", 2),
        ("three", "s2", 3),
    ]


async def test_seq_counts_messages_sent_while_nobody_listened() -> None:
    """seq numbers every message of the run, also those sent before any handler was registered."""
    runner = af.Runner()
    got, handler = collector()

    @af.action
    async def register(ctx: af.ActionContext) -> None:
        runner.on_message("progress", handler)

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[sender("early"), register, sender("late")])])
    await runner.run(wf)
    assert [(m.action_name, m.seq) for m in got] == [("late", 2)]


async def test_message_seq_is_per_run_when_runs_interleave() -> None:
    """Two runs of one runner at the same time each number their own messages 1, 2, 3."""
    gate = anyio.Event()

    async def body(ctx: af.ActionContext) -> None:
        await ctx.send("progress")
        await gate.wait()
        await ctx.send("progress")
        await ctx.send("progress")

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[af.action(name="talk")(body)])])
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("progress", handler)
    async with anyio.create_task_group() as group:
        group.start_soon(functools.partial(runner.run, wf, run_id="one"))
        group.start_soon(functools.partial(runner.run, wf, run_id="two"))
        while len(got) < 2:
            await anyio.lowlevel.checkpoint()
        gate.set()
    assert [m.seq for m in got if m.run_id == "one"] == [1, 2, 3]
    assert [m.seq for m in got if m.run_id == "two"] == [1, 2, 3]


async def test_message_from_a_dynamic_action() -> None:
    """A dynamic action's message names it, its stage, its place in the stage and whether it is last."""

    async def parent_body(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(sender("child", payload="hi"))
        await ctx.send("progress", "parent")

    parent = af.action(name="parent")(parent_body)
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[parent])])
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("progress", handler)
    await runner.run(wf)
    assert [(m.action_name, m.stage_id, m.payload, m.action_index, m.is_last_action, m.seq) for m in got] == [
        ("parent", "s", "parent", 0, False, 1),
        ("child", "s", "hi", 1, True, 2),
    ]


async def test_message_from_a_dynamic_stage_names_that_stage() -> None:
    """A message from an action of an inserted stage carries the inserted stage's id."""

    @af.action
    async def inserter(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("extra", actions=[sender("late")]))

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[inserter])])
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("progress", handler)
    await runner.run(wf)
    assert [(m.stage_id, m.action_name, m.action_index, m.is_last_action) for m in got] == [
        ("extra", "late", 0, True)
    ]


# ---- handlers -------------------------------------------------------------------------


async def test_sync_handler_receives_messages() -> None:
    """A plain function registered with on_message is called with each message."""
    runner = af.Runner()
    got: list[Any] = []

    def handler(msg: af.Message) -> None:
        got.append(msg.payload)

    runner.on_message("progress", handler)
    await runner.run(three_senders())
    assert got == [1, 2, 3]


async def test_async_handler_is_awaited_before_send_returns() -> None:
    """An async handler has finished with a message by the time ctx.send returns."""
    got: list[Any] = []
    seen_after_send: list[list[Any]] = []

    async def handler(msg: af.Message) -> None:
        got.append(msg.payload)

    @af.action
    async def act(ctx: af.ActionContext) -> None:
        await ctx.send("progress", "first")
        seen_after_send.append(list(got))

    runner = af.Runner()
    runner.on_message("progress", handler)
    await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[act])]))
    assert seen_after_send == [["first"]]


async def test_handler_gets_only_its_kind() -> None:
    """A handler registered for one kind does not receive messages of another kind."""

    @af.action
    async def act(ctx: af.ActionContext) -> None:
        await ctx.send("progress", 1)
        await ctx.send("done", 2)

    runner = af.Runner()
    got, handler = collector()
    runner.on_message("done", handler)
    await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[act])]))
    assert [(m.kind, m.payload) for m in got] == [("done", 2)]


async def test_star_handler_gets_every_kind() -> None:
    """A handler registered for kind "*" receives messages of every kind."""

    @af.action
    async def act(ctx: af.ActionContext) -> None:
        await ctx.send("progress", 1)
        await ctx.send("done", 2)
        await ctx.send("*weird kind*", 3)

    runner = af.Runner()
    got, handler = collector()
    runner.on_message("*", handler)
    await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[act])]))
    assert [m.kind for m in got] == ["progress", "done", "*weird kind*"]


async def test_object_with_async_call_is_awaited_as_a_handler() -> None:
    """An object whose __call__ is async is awaited like an async function handler."""

    class Collect:
        def __init__(self) -> None:
            self.got: list[Any] = []

        async def __call__(self, msg: af.Message) -> None:
            self.got.append(msg.payload)

    handler = Collect()
    runner = af.Runner()
    runner.on_message("progress", handler)
    await runner.run(three_senders())
    assert handler.got == [1, 2, 3]


async def test_handler_returning_an_awaitable_has_it_awaited() -> None:
    """A sync callable returning an awaitable (a lambda around an async function) has the result awaited."""
    got: list[Any] = []

    async def record(msg: af.Message) -> None:
        got.append(msg.payload)

    runner = af.Runner()
    runner.on_message("progress", lambda msg: record(msg))
    await runner.run(three_senders())
    assert got == [1, 2, 3]


async def test_several_handlers_of_one_kind_all_receive_in_registration_order() -> None:
    """Every handler registered for a kind receives each message, in the order they were registered."""
    runner = af.Runner()
    order: list[str] = []
    runner.on_message("progress", lambda m: order.append(f"first:{m.payload}"))
    runner.on_message("*", lambda m: order.append(f"star:{m.payload}"))
    runner.on_message("progress", lambda m: order.append(f"second:{m.payload}"))
    await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[sender("a", payload=1)])]))
    assert order == ["first:1", "star:1", "second:1"]


# ---- scoping ----------------------------------------------------------------------------


def two_stage_workflow(workflow_id: str = "wf") -> af.Workflow:
    """Stages "s1" (actions a, b) and "s2" (action c), each action sending one message."""
    return af.Workflow(
        workflow_id,
        stages=[
            af.Stage("s1", actions=[sender("a", payload="a"), sender("b", payload="b")]),
            af.Stage("s2", actions=[sender("c", payload="c")]),
        ],
    )


@pytest.mark.parametrize(
    ("scope", "other", "expected"),
    [
        pytest.param({"workflow_id": "wf"}, {"workflow_id": "other-wf"}, ["a", "b", "c"], id="workflow_id"),
        pytest.param({"stage_id": "s1"}, {"stage_id": "nope"}, ["a", "b"], id="stage_id"),
        pytest.param({"action_name": "b"}, {"action_name": "nope"}, ["b"], id="action_name"),
        pytest.param({"run_id": "mine"}, {"run_id": "theirs"}, ["a", "b", "c"], id="run_id"),
    ],
)
async def test_scoped_handler_gets_only_messages_in_its_scope(
    scope: dict[str, str], other: dict[str, str], expected: list[str]
) -> None:
    """A handler scoped by workflow, stage, action or run gets its messages; one scoped elsewhere, none."""
    runner = af.Runner()
    inside, inside_handler = collector()
    outside, outside_handler = collector()
    runner.on_message("progress", inside_handler, **scope)
    runner.on_message("progress", outside_handler, **other)
    await runner.run(two_stage_workflow(), run_id="mine")
    assert [m.payload for m in inside] == expected
    assert outside == []


async def test_run_scoped_handler_ignores_other_runs() -> None:
    """A handler scoped to one run id receives nothing from another run of the same workflow."""
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("progress", handler, run_id="mine")
    await runner.run(two_stage_workflow(), run_id="theirs")
    await runner.run(two_stage_workflow(), run_id="mine")
    assert {m.run_id for m in got} == {"mine"}
    assert len(got) == 3


async def test_scopes_combine() -> None:
    """A handler scoped by stage and action gets only messages matching both."""
    runner = af.Runner()
    got, handler = collector()
    runner.on_message("*", handler, stage_id="s1", action_name="c")
    both, both_handler = collector()
    runner.on_message("*", both_handler, stage_id="s2", action_name="c")
    await runner.run(two_stage_workflow())
    assert got == []
    assert [m.payload for m in both] == ["c"]


async def test_unregister_stops_delivery() -> None:
    """Calling the function on_message returned stops that handler from receiving further messages."""
    runner = af.Runner()
    got, handler = collector()
    kept, kept_handler = collector()
    unregister = runner.on_message("progress", handler)
    runner.on_message("progress", kept_handler)
    await runner.run(three_senders())
    unregister()
    await runner.run(three_senders())
    assert len(got) == 3
    assert len(kept) == 6


# ---- handlers that raise --------------------------------------------------------------------


def boom(msg: af.Message) -> None:
    raise RuntimeError("handler broke")


async def test_raising_handler_does_not_fail_the_run() -> None:
    """A message handler that raises leaves the run completed and the sending action unaware."""
    runner = af.Runner()
    runner.on_message("progress", boom)
    result = await runner.run(three_senders())
    assert result.status is af.RunStatus.COMPLETED
    assert [s.status for s in result.steps if s.kind == "action"] == [af.StepStatus.COMPLETED] * 3


async def test_raising_async_handler_does_not_fail_the_run() -> None:
    """An async message handler that raises leaves the run completed."""

    async def async_boom(msg: af.Message) -> None:
        raise RuntimeError("async handler broke")

    runner = af.Runner()
    runner.on_message("progress", async_boom)
    result = await runner.run(three_senders())
    assert result.status is af.RunStatus.COMPLETED
    assert result.message_errors == 3


async def test_raising_handler_does_not_stop_other_handlers() -> None:
    """Handlers registered after one that raises still receive the message."""
    runner = af.Runner()
    runner.on_message("progress", boom)
    got, handler = collector()
    runner.on_message("progress", handler)
    await runner.run(three_senders())
    assert [m.payload for m in got] == [1, 2, 3]


async def test_raising_handler_is_counted_in_message_errors() -> None:
    """RunResult.message_errors counts each time a handler raised, and is 0 for a run without errors."""
    runner = af.Runner()
    remove = runner.on_message("progress", boom, action_name="b")
    result = await runner.run(three_senders())
    assert result.message_errors == 1
    remove()
    clean = await runner.run(three_senders())
    assert clean.message_errors == 0


async def test_message_errors_are_kept_on_a_failed_run() -> None:
    """A run that fails after a handler raised still counts the handler error in its result."""

    @af.action
    async def send_then_fail(ctx: af.ActionContext) -> None:
        await ctx.send("progress")
        raise ValueError("then fail")

    runner = af.Runner()
    runner.on_message("progress", boom)
    with pytest.raises(af.ActionFailed) as info:
        await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[send_then_fail])]))
    assert info.value.result is not None
    assert info.value.result.message_errors == 1


async def test_raising_handler_is_logged_with_kind_and_action(asyncflow_log: list[dict[str, Any]]) -> None:
    """The log line for a raising handler names the message kind and the sending action, and binds the run."""
    runner = af.Runner()
    runner.on_message("progress", boom)
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[sender("reporter", kind="progress")])])
    result = await runner.run(wf)
    errors = [r for r in asyncflow_log if r["level"].name == "ERROR"]
    assert len(errors) == 1
    line = errors[0]
    assert "progress" in line["message"]
    assert "reporter" in line["message"]
    assert line["extra"]["run_id"] == result.run_id
    assert line["extra"]["stage_id"] == "s"
    assert line["extra"]["action"] == "reporter"
    assert line["exception"] is not None
    assert isinstance(line["exception"].value, RuntimeError)


# ---- af.run(on_message=...) -------------------------------------------------------------------


async def test_run_on_message_handler_gets_every_kind() -> None:
    """af.run(on_message=handler) delivers messages of every kind to the handler."""

    @af.action
    async def act(ctx: af.ActionContext) -> None:
        await ctx.send("progress", 1)
        await ctx.send("done", 2)

    got, handler = collector()
    result = await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[act])]), on_message=handler)
    assert [(m.kind, m.payload, m.run_id) for m in got] == [
        ("progress", 1, result.run_id),
        ("done", 2, result.run_id),
    ]


async def test_run_on_message_mapping_routes_by_kind() -> None:
    """af.run(on_message={kind: handler}) sends each kind to its own handler only."""

    @af.action
    async def act(ctx: af.ActionContext) -> None:
        await ctx.send("progress", 1)
        await ctx.send("done", 2)
        await ctx.send("ignored", 3)

    progress, progress_handler = collector()
    done: list[Any] = []

    async def done_handler(msg: af.Message) -> None:
        done.append(msg.payload)

    await af.run(
        af.Workflow("wf", stages=[af.Stage("s", actions=[act])]),
        on_message={"progress": progress_handler, "done": done_handler},
    )
    assert [m.payload for m in progress] == [1]
    assert done == [2]


async def test_run_on_message_is_only_for_that_run() -> None:
    """A handler given to af.run(runner=..., on_message=...) is gone once that run ends."""
    runner = af.Runner()
    got, handler = collector()
    await af.run(three_senders(), runner=runner, on_message=handler)
    await runner.run(three_senders())
    assert len(got) == 3


async def test_run_on_message_hears_nothing_of_another_run_of_its_runner_at_the_same_time() -> None:
    """A handler given to af.run(runner=..., on_message=...) hears no other run of the runner meanwhile."""
    waiting, gate = anyio.Event(), anyio.Event()

    async def body(ctx: af.ActionContext) -> None:
        waiting.set()
        await gate.wait()
        await ctx.send("progress", "mine")

    mine = af.Workflow("mine", stages=[af.Stage("s", actions=[af.action(name="wait")(body)])])
    runner = af.Runner()
    got, handler = collector()
    async with anyio.create_task_group() as group:
        group.start_soon(functools.partial(af.run, mine, runner=runner, run_id="mine", on_message=handler))
        await waiting.wait()
        await runner.run(three_senders(), run_id="other")
        gate.set()
    assert [(m.run_id, m.payload) for m in got] == [("mine", "mine")]


async def test_run_on_message_counts_handler_errors() -> None:
    """A raising handler given to af.run is counted in the result and does not fail the run."""
    result = await af.run(three_senders(), on_message={"progress": boom})
    assert result.status is af.RunStatus.COMPLETED
    assert result.message_errors == 3


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("handler", [None, "print", 42])
def test_on_message_with_non_callable_handler_is_type_error(handler: Any) -> None:
    """on_message refuses a handler that is not callable with a TypeError."""
    runner = af.Runner()
    with pytest.raises(TypeError):
        runner.on_message("progress", handler)


@pytest.mark.parametrize("kind", ["", None, 3])
def test_on_message_with_empty_or_non_string_kind_is_type_error(kind: Any) -> None:
    """on_message refuses an empty or non-string kind with a TypeError."""
    runner = af.Runner()
    with pytest.raises(TypeError):
        runner.on_message(kind, lambda m: None)


async def test_send_with_empty_kind_fails_the_action() -> None:
    """ctx.send("") raises TypeError in the action, so the run fails with it as the cause."""
    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[sender("a", kind="")])]))
    assert isinstance(info.value.__cause__, TypeError)


async def test_non_json_payload_is_delivered_as_is_in_memory() -> None:
    """With a default Runner a payload that is not JSON (an object, a set) reaches handlers unchanged."""
    thing = object()
    numbers = {1, 2}

    @af.action
    async def act(ctx: af.ActionContext) -> None:
        await ctx.send("thing", thing)
        await ctx.send("numbers", numbers)

    runner = af.Runner()
    got, handler = collector()
    runner.on_message("*", handler)
    result = await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[act])]))
    assert result.status is af.RunStatus.COMPLETED
    assert got[0].payload is thing
    assert got[1].payload is numbers


@pytest.mark.parametrize("payload", [object(), {1, 2}], ids=["object", "set"])
async def test_non_json_payload_with_require_json_fails_the_run(payload: Any) -> None:
    """Runner(require_json=True) fails the run with af.NotSerializable (a TypeError) naming the kind."""
    runner = af.Runner(require_json=True)
    got, handler = collector()
    runner.on_message("*", handler)
    wf = af.Workflow(
        "wf", stages=[af.Stage("s", actions=[sender("a", kind="report-ready", payload=payload)])]
    )
    with pytest.raises(af.ActionFailed) as info:
        await runner.run(wf)
    cause = info.value.__cause__
    assert isinstance(cause, af.NotSerializable)
    assert isinstance(cause, TypeError)
    assert "report-ready" in str(cause)
    assert info.value.action_name == "a"
    assert got == []


async def test_json_payload_with_require_json_is_delivered() -> None:
    """Runner(require_json=True) delivers a JSON-serialisable payload normally."""
    runner = af.Runner(require_json=True)
    got, handler = collector()
    runner.on_message("*", handler)
    payload = {"pct": 50, "items": [1, "two", None, True, 2.5]}
    result = await runner.run(
        af.Workflow("wf", stages=[af.Stage("s", actions=[sender("a", payload=payload)])])
    )
    assert result.status is af.RunStatus.COMPLETED
    assert [m.payload for m in got] == [payload]
