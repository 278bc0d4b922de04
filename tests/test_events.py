"""Lifecycle events: complete, ordered, timed, delivered to handlers and subscribers without slowing runs."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from helpers import raiser, rss_bytes

import asyncflow as af

K = af.EventKind


def noop(name: str) -> af.Action:
    """An action called ``name`` that does nothing."""

    async def body(ctx: af.ActionContext) -> None:
        pass

    return af.action(name=name)(body)


def shape(events: list[af.Event]) -> list[tuple[Any, ...]]:
    """(kind, stage_id, action_name, status) of each event."""
    return [(e.kind, e.stage_id, e.action_name, e.status) for e in events]


def one_stage(*names: str, workflow_id: str = "wf") -> af.Workflow:
    """A workflow with stage "s" of no-op actions ``names``."""
    return af.Workflow(workflow_id, stages=[af.Stage("s", actions=[noop(n) for n in names])])


async def read_until_run_finished(events: af.EventStream) -> list[af.Event]:
    """Read ``events`` up to and including the first RUN_FINISHED (guarded against hanging)."""
    got: list[af.Event] = []
    with anyio.fail_after(5):
        async for ev in events:
            got.append(ev)
            if ev.kind is K.RUN_FINISHED:
                break
    return got


def eventful_workflow(error: BaseException) -> af.Workflow:
    """A run that inserts an action and a stage, disables a stage, then fails.

    Stage "first": action "a" inserts action "d" and stage "inserted" (action
    "x") and disables stage "off"; then action "b". Stage "off" is skipped.
    Stage "last": "ok", then "broken" raises ``error``; "after" never runs.
    """

    async def a_body(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(noop("d"))
        ctx.add_dynamic_stage(af.Stage("inserted", actions=[noop("x")]))
        ctx.plan.disable_stage("off")

    return af.Workflow(
        "wf",
        stages=[
            af.Stage("first", actions=[af.action(name="a")(a_body), noop("b")]),
            af.Stage("off", actions=[noop("never")]),
            af.Stage("last", actions=[noop("ok"), raiser("broken", error), noop("after")]),
        ],
    )


async def record_failing_run(error: BaseException) -> list[af.Event]:
    """Run eventful_workflow(error) and return every event an on_event handler saw."""
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    with pytest.raises(af.ActionFailed):
        await runner.run(eventful_workflow(error))
    return seen


# ---- order and content ------------------------------------------------------------------


async def test_insertions_of_an_action_with_a_time_limit_are_announced() -> None:
    """An action with a time limit that inserts steps (and writes nothing) sends their inserted events."""
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)

    @af.action(name="grow", timeout=30)
    async def grow(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(noop("d"))
        ctx.add_dynamic_stage(af.Stage("inserted", actions=[noop("e")]))

    await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[grow])]))
    inserts = [
        (e.kind, e.stage_id, e.action_name) for e in seen if e.kind in (K.ACTION_INSERTED, K.STAGE_INSERTED)
    ]
    assert inserts == [(K.ACTION_INSERTED, "s", "d"), (K.STAGE_INSERTED, "inserted", None)]


async def test_event_order_with_insertions_a_skipped_stage_and_a_failure() -> None:
    """Events come in execution order: starts, inserts, finishes, the skip, the failure and the run's end."""
    seen = await record_failing_run(ValueError("broken"))
    assert shape(seen) == [
        (K.RUN_STARTED, None, None, None),
        (K.STAGE_STARTED, "first", None, None),
        (K.ACTION_STARTED, "first", "a", None),
        (K.ACTION_INSERTED, "first", "d", None),
        (K.STAGE_INSERTED, "inserted", None, None),
        (K.ACTION_FINISHED, "first", "a", "completed"),
        (K.ACTION_STARTED, "first", "d", None),
        (K.ACTION_FINISHED, "first", "d", "completed"),
        (K.ACTION_STARTED, "first", "b", None),
        (K.ACTION_FINISHED, "first", "b", "completed"),
        (K.STAGE_FINISHED, "first", None, "completed"),
        (K.STAGE_STARTED, "inserted", None, None),
        (K.ACTION_STARTED, "inserted", "x", None),
        (K.ACTION_FINISHED, "inserted", "x", "completed"),
        (K.STAGE_FINISHED, "inserted", None, "completed"),
        (K.STEP_SKIPPED, "off", None, "skipped"),
        (K.STAGE_STARTED, "last", None, None),
        (K.ACTION_STARTED, "last", "ok", None),
        (K.ACTION_FINISHED, "last", "ok", "completed"),
        (K.ACTION_STARTED, "last", "broken", None),
        (K.ACTION_FINISHED, "last", "broken", "failed"),
        (K.STAGE_FINISHED, "last", None, "failed"),
        (K.RUN_FINISHED, None, None, "failed"),
    ]


async def test_failed_run_events_carry_the_error() -> None:
    """The failed action's ACTION_FINISHED and the RUN_FINISHED (status "failed") carry the original error."""
    error = ValueError("broken")
    seen = await record_failing_run(error)
    failed_action = next(e for e in seen if e.kind is K.ACTION_FINISHED and e.action_name == "broken")
    finished = seen[-1]
    assert failed_action.error is error
    assert finished.kind is K.RUN_FINISHED
    assert finished.status == "failed"
    assert finished.error is error


async def test_the_failed_stage_s_finished_event_carries_the_error() -> None:
    """The STAGE_FINISHED (status "failed") of the stage whose action failed carries the original error."""
    error = ValueError("broken")
    seen = await record_failing_run(error)
    finished = next(e for e in seen if e.kind is K.STAGE_FINISHED and e.stage_id == "last")
    assert (finished.status, finished.error) == ("failed", error)


async def test_completed_steps_carry_no_error() -> None:
    """Finished events of steps that completed carry no error."""
    seen = await record_failing_run(ValueError("broken"))
    completed = [e for e in seen if e.status == "completed"]
    assert completed
    assert all(e.error is None for e in completed)


async def test_inserted_steps_are_marked_dynamic_in_their_events() -> None:
    """Events about inserted stages and actions (an inserted stage's own too) say dynamic; others do not."""
    seen = await record_failing_run(ValueError("broken"))
    dynamic = {(e.kind, e.stage_id, e.action_name) for e in seen if e.dynamic}
    assert dynamic == {
        (K.ACTION_INSERTED, "first", "d"),
        (K.ACTION_STARTED, "first", "d"),
        (K.ACTION_FINISHED, "first", "d"),
        (K.STAGE_INSERTED, "inserted", None),
        (K.STAGE_STARTED, "inserted", None),
        (K.STAGE_FINISHED, "inserted", None),
        (K.ACTION_STARTED, "inserted", "x"),
        (K.ACTION_FINISHED, "inserted", "x"),
    }


async def test_skipped_stage_event_says_why() -> None:
    """The STEP_SKIPPED event of a disabled stage gives a reason."""
    seen = await record_failing_run(ValueError("broken"))
    skipped = next(e for e in seen if e.kind is K.STEP_SKIPPED)
    assert skipped.reason
    assert "disabled" in skipped.reason


async def test_a_stage_inserted_before_a_cancel_is_reported_skipped_because_the_run_was_cancelled() -> None:
    """A stage inserted by a stage that is then cancelled gets STEP_SKIPPED "the run was cancelled"."""
    started = anyio.Event()

    @af.action
    async def insert(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("later", actions=[insert]))

    @af.action
    async def hang(ctx: af.ActionContext) -> None:
        started.set()
        await anyio.sleep_forever()

    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    async with anyio.create_task_group() as group:
        group.start_soon(runner.run, af.Workflow("wf", stages=[af.Stage("s", actions=[insert, hang])]))
        await started.wait()
        group.cancel_scope.cancel()
    skipped = [(e.stage_id, e.reason) for e in seen if e.kind is K.STEP_SKIPPED]
    assert skipped == [("later", "the run was cancelled")]


async def test_disabled_action_is_reported_skipped() -> None:
    """A disabled action gets a STEP_SKIPPED event naming it, in its place, and no start or finish."""

    async def disable_body(ctx: af.ActionContext) -> None:
        ctx.plan.disable_action("skip-me")

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("s", actions=[af.action(name="first")(disable_body), noop("skip-me"), noop("last")])
        ],
    )
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    await runner.run(wf)
    assert [(k, a, st) for k, _, a, st in shape(seen) if a is not None] == [
        (K.ACTION_STARTED, "first", None),
        (K.ACTION_FINISHED, "first", "completed"),
        (K.STEP_SKIPPED, "skip-me", "skipped"),
        (K.ACTION_STARTED, "last", None),
        (K.ACTION_FINISHED, "last", "completed"),
    ]


def stopper(how: str) -> af.Action:
    """An action "stop" that fails (how == "failed") or bails (how == "bailed")."""

    async def body(ctx: af.ActionContext) -> None:
        if how == "bailed":
            ctx.bail("enough")
        raise ValueError("stop")

    return af.action(name="stop")(body)


@pytest.mark.parametrize("how", ["failed", "bailed"])
async def test_stages_inserted_by_a_stage_that_ends_the_run_are_reported_skipped(how: str) -> None:
    """A stage inserted by a stage that then fails or bails is skipped, with a STEP_SKIPPED event."""

    async def insert_body(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("cleanup", actions=[noop("tidy")]))

    wf = af.Workflow(
        "wf", stages=[af.Stage("s", actions=[af.action(name="inserter")(insert_body), stopper(how)])]
    )
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    result: af.RunResult | None
    try:
        result = await runner.run(wf)
    except af.ActionFailed as failure:
        result = failure.result
    assert result is not None
    assert result.status.value == how
    recorded = [(r.stage_id, r.status) for r in result.steps if r.kind == "stage"]
    assert ("cleanup", af.StepStatus.SKIPPED) in recorded
    skipped = [(e.stage_id, e.action_name, e.status) for e in seen if e.kind is K.STEP_SKIPPED]
    assert skipped == [("cleanup", None, "skipped")]


async def test_completed_run_finishes_with_status_completed() -> None:
    """A run whose actions all succeed ends with RUN_FINISHED status "completed" and no error."""
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    await runner.run(one_stage("a"))
    assert seen[-1].kind is K.RUN_FINISHED
    assert seen[-1].status == "completed"
    assert seen[-1].error is None


async def test_bailed_run_finishes_with_status_bailed() -> None:
    """A run that bails ends with RUN_FINISHED status "bailed", the bailing action's finish coming first."""

    @af.action
    async def stop(ctx: af.ActionContext) -> None:
        ctx.bail("enough")

    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    result = await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[stop, noop("never")])]))
    assert result.status is af.RunStatus.BAILED
    assert [(e.kind, e.action_name) for e in seen if e.action_name is not None] == [
        (K.ACTION_STARTED, "stop"),
        (K.ACTION_FINISHED, "stop"),
    ]
    assert (seen[-1].kind, seen[-1].status) == (K.RUN_FINISHED, "bailed")


async def test_every_event_names_its_run_and_workflow() -> None:
    """Each event of a run carries that run's id and workflow id."""
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    with pytest.raises(af.ActionFailed):
        await runner.run(eventful_workflow(ValueError("x")), run_id="run-7")
    assert {(e.run_id, e.workflow_id) for e in seen} == {("run-7", "wf")}


async def test_every_started_action_finishes_even_when_cancelled_by_a_sibling() -> None:
    """In a concurrent stage, a sibling cancelled by a failure still gets ACTION_FINISHED "cancelled"."""
    waiting = anyio.Event()

    @af.action
    async def wait(ctx: af.ActionContext) -> None:
        waiting.set()
        await anyio.sleep_forever()

    @af.action
    async def fail(ctx: af.ActionContext) -> None:
        await waiting.wait()
        raise ValueError("sibling failed")

    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    with pytest.raises(af.ActionFailed):
        await runner.run(af.Workflow("wf", stages=[af.Stage("s", concurrency=2, actions=[wait, fail])]))
    finished = {e.action_name: e.status for e in seen if e.kind is K.ACTION_FINISHED}
    started = [e.action_name or "" for e in seen if e.kind is K.ACTION_STARTED]
    assert sorted(started) == ["fail", "wait"]
    assert finished == {"wait": "cancelled", "fail": "failed"}


# ---- retries and timing ------------------------------------------------------------------------


async def test_action_retry_events_carry_attempt_numbers() -> None:
    """A retried action emits ACTION_RETRY for attempts 2 and 3, each with the error that caused it."""
    errors = [OSError("first"), OSError("second")]

    async def flaky_body(ctx: af.ActionContext) -> None:
        if errors:
            raise errors.pop(0)

    flaky = af.action(name="flaky", retry=af.Retry(attempts=3, backoff=af.backoff.fixed(0)))(flaky_body)
    first, second = errors
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[flaky])]))
    about = [(e.kind, e.attempt, e.status) for e in seen if e.action_name == "flaky"]
    assert about == [
        (K.ACTION_STARTED, 1, None),
        (K.ACTION_RETRY, 2, None),
        (K.ACTION_RETRY, 3, None),
        (K.ACTION_FINISHED, 3, "completed"),
    ]
    retries = [e for e in seen if e.kind is K.ACTION_RETRY]
    assert [e.error for e in retries] == [first, second]


async def test_finished_events_carry_a_duration() -> None:
    """Every STAGE_FINISHED, ACTION_FINISHED and RUN_FINISHED event carries a duration of zero or more."""
    seen = await record_failing_run(ValueError("broken"))
    finished = [e for e in seen if e.kind in (K.STAGE_FINISHED, K.ACTION_FINISHED, K.RUN_FINISHED)]
    assert len(finished) == 10
    for event in finished:
        assert event.duration is not None
        assert event.duration >= 0


async def test_event_timestamps_do_not_go_backwards() -> None:
    """The at timestamps of a run's events are non-decreasing in the order they arrive."""
    seen = await record_failing_run(ValueError("broken"))
    stamps = [e.at for e in seen]
    assert stamps == sorted(stamps)


async def test_timing_middleware_emits_timing_events() -> None:
    """mw.timing() emits a TIMING event per action, inside its start and finish, with a duration."""
    runner = af.Runner(action_middleware=[af.middleware.timing()])
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    result = await runner.run(one_stage("a", "b"))
    about = [(e.kind, e.action_name) for e in seen if e.action_name is not None]
    assert about == [
        (K.ACTION_STARTED, "a"),
        (K.TIMING, "a"),
        (K.ACTION_FINISHED, "a"),
        (K.ACTION_STARTED, "b"),
        (K.TIMING, "b"),
        (K.ACTION_FINISHED, "b"),
    ]
    timings = [e for e in seen if e.kind is K.TIMING]
    assert all(e.stage_id == "s" and e.duration is not None and e.duration >= 0 for e in timings)
    assert [e.duration for e in timings] == [t.seconds for t in result.timings]


# ---- handlers ------------------------------------------------------------------------------


async def test_async_event_handler_is_awaited_before_the_run_goes_on() -> None:
    """An async on_event handler has finished with each event before the step it announces runs."""
    handled: list[af.EventKind] = []
    seen_by_action: list[list[af.EventKind]] = []

    async def handler(event: af.Event) -> None:
        await anyio.lowlevel.checkpoint()
        handled.append(event.kind)

    @af.action
    async def look(ctx: af.ActionContext) -> None:
        seen_by_action.append(list(handled))

    runner = af.Runner()
    runner.on_event(handler)
    await runner.run(af.Workflow("wf", stages=[af.Stage("s", actions=[look])]))
    assert seen_by_action == [[K.RUN_STARTED, K.STAGE_STARTED, K.ACTION_STARTED]]
    assert handled[-1] is K.RUN_FINISHED


async def test_event_handler_returning_an_awaitable_has_it_awaited() -> None:
    """A sync callable returning an awaitable (a lambda around an async function) has the result awaited."""
    seen: list[af.EventKind] = []

    async def record(event: af.Event) -> None:
        seen.append(event.kind)

    runner = af.Runner()
    runner.on_event(lambda event: record(event))
    await runner.run(one_stage("a"))
    assert seen[0] is K.RUN_STARTED
    assert seen[-1] is K.RUN_FINISHED
    assert len(seen) == 6


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_raising_event_handler_does_not_fail_the_run(is_async: bool) -> None:
    """An on_event handler that raises leaves the run completed, and later handlers still get every event."""

    def sync_boom(event: af.Event) -> None:
        raise RuntimeError("handler broke")

    async def async_boom(event: af.Event) -> None:
        raise RuntimeError("handler broke")

    runner = af.Runner()
    runner.on_event(async_boom if is_async else sync_boom)
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    result = await runner.run(one_stage("a", "b"))
    assert result.status is af.RunStatus.COMPLETED
    assert len(seen) == 8
    assert seen[-1].kind is K.RUN_FINISHED


async def test_unregister_stops_event_delivery() -> None:
    """Calling the function on_event returned stops that handler from receiving events."""
    runner = af.Runner()
    seen: list[af.Event] = []
    kept: list[af.Event] = []
    unregister = runner.on_event(seen.append)
    runner.on_event(kept.append)
    await runner.run(one_stage("a"))
    unregister()
    await runner.run(one_stage("a"))
    assert len(seen) == 6
    assert len(kept) == 12


@pytest.mark.parametrize("handler", [None, "print", 3])
def test_on_event_with_non_callable_handler_is_type_error(handler: Any) -> None:
    """on_event refuses a handler that is not callable with a TypeError."""
    with pytest.raises(TypeError):
        af.Runner().on_event(handler)


# ---- subscribers ----------------------------------------------------------------------------------


async def test_subscriber_gets_the_same_events_in_the_same_order_as_handlers() -> None:
    """runner.subscribe() yields exactly the events on_event handlers get, in the same order."""
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    async with runner.subscribe() as events:
        with pytest.raises(af.ActionFailed):
            await runner.run(eventful_workflow(ValueError("broken")))
        streamed = await read_until_run_finished(events)
    assert shape(streamed) == shape(seen)
    assert streamed == seen


async def test_subscriber_for_one_run_gets_only_that_run() -> None:
    """subscribe(run_id=...) yields only the events of that run."""
    runner = af.Runner()
    async with runner.subscribe(run_id="mine") as events:
        await runner.run(one_stage("a"), run_id="theirs")
        await runner.run(one_stage("a", "b"), run_id="mine")
        streamed = await read_until_run_finished(events)
    assert {e.run_id for e in streamed} == {"mine"}
    assert len(streamed) == 8


async def test_subscriber_reads_events_while_the_run_goes_on() -> None:
    """A subscriber in another task receives a run's events as they happen, ending with RUN_FINISHED."""
    runner = af.Runner()
    streamed: list[af.Event] = []
    async with runner.subscribe() as events, anyio.create_task_group() as group:

        async def consume() -> None:
            streamed.extend(await read_until_run_finished(events))

        group.start_soon(consume)
        await runner.run(one_stage("a", "b", "c"))
    assert [e.kind for e in streamed][:2] == [K.RUN_STARTED, K.STAGE_STARTED]
    assert streamed[-1].kind is K.RUN_FINISHED
    assert len(streamed) == 10


def fifty_actions() -> af.Workflow:
    """One stage of 50 no-op actions: 104 events in all."""
    return one_stage(*(f"step-{i}" for i in range(50)))


async def read_until_dropped(events: af.EventStream) -> list[af.Event]:
    """Read ``events`` up to and including the first EVENTS_DROPPED (guarded against hanging)."""
    got: list[af.Event] = []
    with anyio.fail_after(5):
        async for ev in events:
            got.append(ev)
            if ev.kind is K.EVENTS_DROPPED:
                break
    return got


async def test_slow_subscriber_never_blocks_the_run_and_is_told_what_it_missed() -> None:
    """A reader that reads nothing gets some events, one EVENTS_DROPPED for the rest, then RUN_FINISHED."""
    runner = af.Runner()
    emitted: list[af.Event] = []
    runner.on_event(emitted.append)
    async with runner.subscribe(buffer=5) as events:
        result = await runner.run(fifty_actions())
        assert result.status is af.RunStatus.COMPLETED
        received = await read_until_dropped(events)
        finished = await events.__anext__()
    assert len(emitted) == 104
    *kept, marker = received
    assert 1 <= len(kept) <= 5
    assert kept == emitted[: len(kept)]
    assert marker.kind is K.EVENTS_DROPPED
    assert finished == emitted[-1]
    assert finished.kind is K.RUN_FINISHED
    assert len(kept) + marker.dropped + 1 == len(emitted)


async def test_a_stream_holds_1000_events_by_default() -> None:
    """subscribe() without buffer= holds 1,000 events (RUN_FINISHED among them) and the drop marker."""
    runner = af.Runner()
    async with runner.subscribe() as events:
        await runner.run(one_stage(*(f"step-{i}" for i in range(600))))
        received = await read_until_run_finished(events)
    assert len(received) == 1001
    assert [e.kind for e in received[-2:]] == [K.EVENTS_DROPPED, K.RUN_FINISHED]


async def test_slow_subscriber_that_caught_up_gets_the_next_run_in_full() -> None:
    """After reading the EVENTS_DROPPED marker, a subscriber receives the next run's events without loss."""
    runner = af.Runner()
    async with runner.subscribe(buffer=10) as events:
        await runner.run(fifty_actions())
        await read_until_dropped(events)
        assert (await events.__anext__()).kind is K.RUN_FINISHED
        result = await runner.run(one_stage("a"))
        streamed = await read_until_run_finished(events)
    assert [e.kind for e in streamed] == [
        K.RUN_STARTED,
        K.STAGE_STARTED,
        K.ACTION_STARTED,
        K.ACTION_FINISHED,
        K.STAGE_FINISHED,
        K.RUN_FINISHED,
    ]
    assert {e.run_id for e in streamed} == {result.run_id}


async def test_slow_subscriber_always_gets_run_finished() -> None:
    """RUN_FINISHED reaches even a subscriber whose buffer is full, so waiting for the end never hangs."""
    runner = af.Runner()
    async with runner.subscribe(buffer=1) as events:
        result = await runner.run(fifty_actions())
        kinds = []
        async for event in events:
            kinds.append(event.kind)
            if event.kind is K.RUN_FINISHED:
                break
    assert kinds[-1] is K.RUN_FINISHED
    assert K.EVENTS_DROPPED in kinds
    assert result.status is af.RunStatus.COMPLETED


async def test_slow_subscriber_does_not_cost_other_subscribers_events() -> None:
    """One subscriber falling behind does not make another, with room, miss anything."""
    runner = af.Runner()
    async with runner.subscribe(buffer=5) as slow, runner.subscribe() as roomy:
        await runner.run(fifty_actions())
        all_events = await read_until_run_finished(roomy)
        slow_events = await read_until_dropped(slow)
    assert len(all_events) == 104
    assert all(e.kind is not K.EVENTS_DROPPED for e in all_events)
    assert slow_events[-1].dropped == 104 - (len(slow_events) - 1) - 1  # RUN_FINISHED is never dropped


async def drain_closed(events: af.EventStream) -> list[af.Event]:
    """Everything still buffered in ``events``, whose subscription has ended (so reading ends)."""
    with anyio.fail_after(5):
        return [event async for event in events]


async def test_unread_subscriber_holds_at_most_its_buffer_and_one_marker_over_many_runs() -> None:
    """A subscriber never read while 500 runs finish holds at most ``buffer`` events plus one drop marker."""
    runner = af.Runner()
    emitted = 0

    def count(event: af.Event) -> None:
        nonlocal emitted
        emitted += 1

    runner.on_event(count)
    async with runner.subscribe(buffer=20) as events:
        for _ in range(500):
            await runner.run(one_stage("a"))
    held = await drain_closed(events)
    markers = [e for e in held if e.kind is K.EVENTS_DROPPED]
    assert len(held) <= 21
    assert len(markers) == 1
    assert len(held) - 1 + markers[0].dropped == emitted


async def test_unread_subscriber_keeps_the_latest_run_finished_events() -> None:
    """When only RUN_FINISHED events fill the buffer, the oldest make room: the latest run's end is there."""
    runner = af.Runner()
    async with runner.subscribe(buffer=3) as events:
        results = [await runner.run(one_stage("a")) for _ in range(10)]
    held = await drain_closed(events)
    finished = [e.run_id for e in held if e.kind is K.RUN_FINISHED]
    assert finished == [r.run_id for r in results[-len(finished) :]]
    assert results[-1].run_id in finished


async def test_subscriber_for_one_run_always_gets_its_run_finished() -> None:
    """subscribe(run_id=..., buffer=1): the run's RUN_FINISHED is held, with one marker for what was lost."""
    runner = af.Runner()
    async with runner.subscribe(buffer=1, run_id="mine") as events:
        await runner.run(fifty_actions(), run_id="mine")
    held = await drain_closed(events)
    assert [e.kind for e in held] == [K.EVENTS_DROPPED, K.RUN_FINISHED]
    assert held[0].dropped == 103


@pytest.mark.once
async def test_unread_subscriber_keeps_memory_flat_over_100000_runs() -> None:
    """RSS stays flat while 100,000 runs go by a subscriber (buffer=100) that never reads."""
    runner = af.Runner()
    workflow = one_stage("a")

    async def runs(count: int) -> None:
        async def some(n: int) -> None:
            for _ in range(n):
                await runner.run(workflow)

        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(some, count // 20)

    async with runner.subscribe(buffer=100):
        await runs(20_000)
        gc.collect()
        before = rss_bytes()
        await runs(80_000)
        gc.collect()
        after = rss_bytes()
    # 0.5 KB a run held (the defect) is 40 MB over 80,000 runs; allocator noise is a few MB.
    assert after - before < 8 * 2**20, f"RSS grew by {(after - before) / 2**20:.1f} MB over 80,000 runs"


@pytest.mark.parametrize("buffer", [0, -1])
async def test_subscribe_with_a_buffer_below_one_is_value_error(buffer: int) -> None:
    """subscribe(buffer=0) (or less) is a ValueError."""
    runner = af.Runner()
    with pytest.raises(ValueError, match="buffer"):
        async with runner.subscribe(buffer=buffer):
            pass


# ---- cancellation ------------------------------------------------------------------------------------


def hanging_workflow(started: anyio.Event) -> af.Workflow:
    """Stage "s" whose action "hang" signals ``started`` and then waits forever."""

    async def body(ctx: af.ActionContext) -> None:
        started.set()
        await anyio.sleep_forever()

    return af.Workflow("wf", stages=[af.Stage("s", actions=[af.action(name="hang")(body)])])


CANCELLED_ENDING = [
    (K.ACTION_FINISHED, "s", "hang", "cancelled"),
    (K.STAGE_FINISHED, "s", None, "cancelled"),
    (K.RUN_FINISHED, None, None, "cancelled"),
]


async def test_cancelled_run_is_reported_before_cancellation_propagates() -> None:
    """When a run's task is cancelled, handlers get RUN_FINISHED "cancelled" before runner.run re-raises."""
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    started = anyio.Event()
    at_propagation: list[af.Event] = []

    async def run_it() -> None:
        try:
            await runner.run(hanging_workflow(started))
        except asyncio.CancelledError:
            at_propagation.extend(seen)
            raise

    task = asyncio.create_task(run_it())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert shape(at_propagation)[-3:] == CANCELLED_ENDING
    assert at_propagation[-1].duration is not None


async def test_cancelled_run_reaches_subscribers() -> None:
    """A subscriber receives the cancelled action's finish and RUN_FINISHED "cancelled" of a cancelled run."""
    runner = af.Runner()
    started = anyio.Event()
    async with runner.subscribe() as events:
        task = asyncio.create_task(runner.run(hanging_workflow(started)))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        streamed = await read_until_run_finished(events)
    assert shape(streamed)[-3:] == CANCELLED_ENDING


async def test_cancel_scope_cancellation_still_reaches_async_handlers() -> None:
    """Under an anyio cancel scope, async handlers get the cancelled finishes before runner.run re-raises."""
    runner = af.Runner()
    seen: list[af.Event] = []

    async def handler(event: af.Event) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(event)

    runner.on_event(handler)
    started = anyio.Event()
    at_propagation: list[af.Event] = []

    async def run_it() -> None:
        try:
            await runner.run(hanging_workflow(started))
        except anyio.get_cancelled_exc_class():
            at_propagation.extend(seen)
            raise

    async with anyio.create_task_group() as group:
        group.start_soon(run_it)
        await started.wait()
        group.cancel_scope.cancel()
    assert shape(at_propagation)[-3:] == CANCELLED_ENDING


# ---- kinds --------------------------------------------------------------------------------------------


def test_event_kinds_cover_the_lifecycle() -> None:
    """af.EventKind has a member for each lifecycle event the runner documents."""
    names = {k.name for k in af.EventKind}
    assert names >= {
        "RUN_STARTED",
        "STAGE_STARTED",
        "STAGE_FINISHED",
        "ACTION_STARTED",
        "ACTION_FINISHED",
        "ACTION_RETRY",
        "STEP_SKIPPED",
        "STAGE_INSERTED",
        "ACTION_INSERTED",
        "TIMING",
        "RUN_FINISHED",
        "EVENTS_DROPPED",
    }
