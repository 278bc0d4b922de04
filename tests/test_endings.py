"""How a run ends: completed, failed, bailed or cancelled, and what each leaves behind."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from helpers import raiser, recorder

import asyncflow as af


def bailer(name: str, reason: str) -> af.Action:
    """An action called ``name`` that bails with ``reason``."""

    async def body(ctx: af.ActionContext) -> None:
        ctx.bail(reason)

    return af.action(name=name)(body)


def failing_workflow(log: list[str], error: BaseException) -> af.Workflow:
    return af.Workflow(
        "orders",
        stages=[
            af.Stage("prepare", actions=[recorder("setup", log)]),
            af.Stage(
                "charge", actions=[recorder("before", log), raiser("pay", error), recorder("after", log)]
            ),
            af.Stage("ship", actions=[recorder("send", log)]),
        ],
    )


# ---- completed -------------------------------------------------------------------


async def test_completed_run_has_status_completed_and_no_error() -> None:
    """A run whose actions all succeed ends COMPLETED with no bail reason and no error."""
    log: list[str] = []
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[recorder("a", log), recorder("b", log)])])
    result = await af.run(wf)
    assert result.status is af.RunStatus.COMPLETED
    assert result.bail_reason is None
    assert result.error is None
    assert log == ["a", "b"]


# ---- failed ----------------------------------------------------------------------


async def test_failed_run_raises_action_failed_with_its_context() -> None:
    """A raising action makes af.run raise af.ActionFailed carrying run id, stage id and action name."""
    error = ValueError("card declined")
    with pytest.raises(af.ActionFailed) as info:
        await af.run(failing_workflow([], error), run_id="run-42")
    failure = info.value
    assert isinstance(failure, af.WorkflowError)
    assert failure.run_id == "run-42"
    assert failure.stage_id == "charge"
    assert failure.action_name == "pay"


async def test_failed_run_keeps_the_original_exception_as_cause() -> None:
    """af.ActionFailed.__cause__ is the exception the action raised."""
    error = ValueError("card declined")
    with pytest.raises(af.ActionFailed) as info:
        await af.run(failing_workflow([], error))
    assert info.value.__cause__ is error


async def test_failed_run_message_names_run_stage_and_action() -> None:
    """The af.ActionFailed message names the run, the stage, the action and the original error."""
    error = ValueError("card declined")
    with pytest.raises(af.ActionFailed) as info:
        await af.run(failing_workflow([], error), run_id="run-42")
    message = str(info.value)
    assert "run-42" in message
    assert "charge" in message
    assert "pay" in message
    assert "card declined" in message


async def test_a_result_s_repr_names_its_run_workflow_status_and_step_count() -> None:
    """repr of a RunResult shows the run id, the workflow, the status and how many steps it recorded."""
    wf = af.Workflow("orders", stages=[af.Stage("s", actions=[recorder("a", []), recorder("b", [])])])
    result = await af.run(wf, run_id="run-7")
    assert repr(result) == "<RunResult run-7 workflow='orders' status=completed steps=3>"


async def test_failed_run_result_has_status_failed_and_the_error() -> None:
    """af.ActionFailed.result is the run's result with status FAILED and the original error."""
    error = ValueError("card declined")
    with pytest.raises(af.ActionFailed) as info:
        await af.run(failing_workflow([], error), run_id="run-42")
    result = info.value.result
    assert result is not None
    assert result.status is af.RunStatus.FAILED
    assert result.error is error
    assert result.run_id == "run-42"
    assert result.bail_reason is None


async def test_failed_run_stops_at_once() -> None:
    """After an action fails, no later action of its stage and no later stage runs."""
    log: list[str] = []
    with pytest.raises(af.ActionFailed):
        await af.run(failing_workflow(log, ValueError("no")))
    assert log == ["setup", "before"]


async def test_failed_run_records_the_failed_action_and_stage() -> None:
    """The failed action's record has status FAILED and its error; later steps have no record."""
    error = ValueError("card declined")
    with pytest.raises(af.ActionFailed) as info:
        await af.run(failing_workflow([], error))
    result = info.value.result
    assert result is not None
    [failed] = [s for s in result.steps if s.action_name == "pay"]
    assert failed.status is af.StepStatus.FAILED
    assert failed.error is error
    [stage] = [s for s in result.steps if s.kind == "stage" and s.stage_id == "charge"]
    assert stage.status is af.StepStatus.FAILED
    assert [s.action_name or s.stage_id for s in result.steps] == [
        "prepare",
        "setup",
        "charge",
        "before",
        "pay",
    ]


async def test_a_failed_stage_s_duration_is_within_the_run_s() -> None:
    """The recorded duration of the stage that failed is measured from its start: no longer than the run."""
    with pytest.raises(af.ActionFailed) as info:
        await af.run(failing_workflow([], ValueError("card declined")))
    result = info.value.result
    assert result is not None
    [stage] = [s for s in result.steps if s.kind == "stage" and s.stage_id == "charge"]
    assert 0 <= stage.duration <= result.duration


async def test_a_completed_stage_s_duration_is_within_the_run_s() -> None:
    """The recorded duration of a stage that completed is measured from its start: no longer than the run."""
    result = await af.run(af.Workflow("orders", stages=[af.Stage("s", actions=[recorder("a", [])])]))
    [stage] = [s for s in result.steps if s.kind == "stage"]
    assert 0 <= stage.duration <= result.duration


async def test_the_stage_of_a_suspending_action_is_recorded_suspended() -> None:
    """When an action suspends the run, the stage around it is recorded SUSPENDED, as the action is."""

    @af.action
    async def approve(ctx: af.ActionContext) -> None:
        ctx.suspend("needs approval")

    result = await af.run(af.Workflow("orders", stages=[af.Stage("s", actions=[approve])]))
    assert [(s.kind, s.status) for s in result.steps] == [
        ("stage", af.StepStatus.SUSPENDED),
        ("action", af.StepStatus.SUSPENDED),
    ]


async def test_failure_of_a_custom_action_class_uses_its_kebab_case_name() -> None:
    """A failing Action subclass without a name is reported under its class name in kebab-case."""

    class ProcessResource(af.Action):
        async def execute(self, ctx: af.ActionContext) -> None:
            raise KeyError("resource")

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[ProcessResource()])])
    with pytest.raises(af.ActionFailed) as info:
        await af.run(wf)
    assert info.value.action_name == "process-resource"
    assert "process-resource" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


# ---- bailed ----------------------------------------------------------------------


async def test_bail_ends_the_run_bailed_with_its_reason() -> None:
    """ctx.bail(reason) returns a result with status BAILED and the reason, not an error."""
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[bailer("stop", "nothing to do")])])
    result = await af.run(wf)
    assert result.status is af.RunStatus.BAILED
    assert result.bail_reason == "nothing to do"
    assert result.error is None


async def test_the_bailing_step_records_the_bail_and_its_reason() -> None:
    """The bailing action's step record reads "bailed: <reason>"."""
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[bailer("stop", "nothing to do")])])
    result = await af.run(wf)
    [record] = [s for s in result.steps if s.action_name == "stop"]
    assert record.reason == "bailed: nothing to do"


@pytest.mark.parametrize("reason", [123, None])
async def test_bail_reason_must_be_a_string(reason: object) -> None:
    """ctx.bail(123) fails the action with a TypeError naming the reason; the run does not bail."""
    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[bailer("stop", reason)])])  # type: ignore[arg-type]
    with pytest.raises(af.ActionFailed) as info:
        await af.run(wf)
    assert isinstance(info.value.__cause__, TypeError)
    assert f"bail reason must be a string, got {reason!r}" in str(info.value.__cause__)


async def test_suspend_raised_directly_needs_a_string_reason() -> None:
    """af.Suspend(123), raised without ctx.suspend, is a TypeError as ctx.suspend(123) is."""
    with pytest.raises(TypeError, match="suspend reason must be a string, got 123"):
        af.Suspend(123)  # type: ignore[arg-type]


async def test_bail_stops_everything_after_it() -> None:
    """After a bail, no later action of the stage and no later stage runs."""
    log: list[str] = []
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage(
                "a", actions=[recorder("first", log), bailer("stop", "done early"), recorder("next", log)]
            ),
            af.Stage("b", actions=[recorder("later", log)]),
        ],
    )
    result = await af.run(wf)
    assert result.status is af.RunStatus.BAILED
    assert log == ["first"]
    assert all(s.stage_id != "b" for s in result.steps)


async def test_bail_keeps_store_writes_of_earlier_actions() -> None:
    """A bailed run's result still carries the store as it stood when the run stopped."""

    @af.action
    async def write(ctx: af.ActionContext) -> None:
        ctx.store["written"] = 1

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[write, bailer("stop", "enough")])])
    result = await af.run(wf)
    assert result.status is af.RunStatus.BAILED
    assert result.store["written"] == 1


async def test_bail_in_a_concurrent_stage_ends_the_run_bailed() -> None:
    """A bail inside a concurrent stage cancels its siblings and ends the run BAILED."""
    started = anyio.Event()
    sibling_cancelled: list[bool] = []
    log: list[str] = []

    @af.action(name="slow")
    async def slow(ctx: af.ActionContext) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            sibling_cancelled.append(True)
            raise

    @af.action(name="stop")
    async def stop(ctx: af.ActionContext) -> None:
        await started.wait()
        ctx.bail("concurrent stop")

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("fan", concurrency=2, actions=[slow, stop]),
            af.Stage("after", actions=[recorder("later", log)]),
        ],
    )
    result = await af.run(wf)
    assert result.status is af.RunStatus.BAILED
    assert result.bail_reason == "concurrent stop"
    assert sibling_cancelled == [True]
    assert log == []


# ---- cancelled -------------------------------------------------------------------


def blocking_workflow(started: anyio.Event, seen: list[str], log: list[str]) -> af.Workflow:
    """A workflow whose first action waits forever and notes in ``seen`` that it was cancelled."""

    @af.action(name="wait")
    async def wait(ctx: af.ActionContext) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise

    return af.Workflow(
        "wf",
        stages=[
            af.Stage("s", actions=[wait, recorder("next", log)]),
            af.Stage("t", actions=[recorder("later", log)]),
        ],
    )


async def test_cancel_scope_cancellation_propagates_out_of_run() -> None:
    """Cancelling the scope around af.run cancels the running action and the scope exits cancelled."""
    started = anyio.Event()
    seen: list[str] = []
    log: list[str] = []
    returned: list[af.RunResult] = []
    scope = anyio.CancelScope()

    async def caller() -> None:
        with scope:
            returned.append(await af.run(blocking_workflow(started, seen, log)))

    async with anyio.create_task_group() as group:
        group.start_soon(caller)
        await started.wait()
        scope.cancel()

    assert scope.cancelled_caught
    assert returned == []
    assert seen == ["cancelled"]
    assert log == []


async def test_move_on_after_cancels_the_run() -> None:
    """anyio.move_on_after around af.run cancels it: the action sees cancellation, nothing returns."""
    started = anyio.Event()
    seen: list[str] = []
    log: list[str] = []
    returned: list[af.RunResult] = []
    with anyio.move_on_after(0.05) as scope:
        returned.append(await af.run(blocking_workflow(started, seen, log)))
    assert scope.cancelled_caught
    assert started.is_set()
    assert returned == []
    assert seen == ["cancelled"]
    assert log == []


@pytest.mark.asyncio_only
async def test_asyncio_task_cancel_propagates_cancelled_error() -> None:
    """task.cancel() on the task awaiting af.run raises asyncio.CancelledError out of it."""
    started = anyio.Event()
    seen: list[str] = []
    log: list[str] = []
    task = asyncio.create_task(af.run(blocking_workflow(started, seen, log)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert seen == ["cancelled"]
    assert log == []


@pytest.mark.asyncio_only
async def test_asyncio_task_cancel_propagates_from_a_concurrent_stage() -> None:
    """Cancelling a run inside a concurrent stage cancels every running action and propagates."""
    seen: list[str] = []
    both_started = anyio.Event()
    count = 0

    def waiter(name: str) -> af.Action:
        async def body(ctx: af.ActionContext) -> None:
            nonlocal count
            count += 1
            if count == 2:
                both_started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                seen.append(name)
                raise

        return af.action(name=name)(body)

    wf = af.Workflow("wf", stages=[af.Stage("fan", concurrency=2, actions=[waiter("w1"), waiter("w2")])])
    task = asyncio.create_task(af.run(wf))
    await both_started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(seen) == ["w1", "w2"]


# ---- closed context ------------------------------------------------------------------


async def kept_context(limit: float | None = None) -> af.ActionContext:
    """Run a one-action workflow whose action (time limit ``limit``) hands its ctx out; return that ctx."""
    kept: list[af.ActionContext] = []

    @af.action(name="keeper", timeout=limit)
    async def keeper(ctx: af.ActionContext) -> None:
        kept.append(ctx)

    await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[keeper])]))
    return kept[0]


async def test_add_dynamic_stage_after_the_action_finished_raises_context_closed() -> None:
    """ctx.add_dynamic_stage after the action finished raises af.ContextClosed naming the action."""
    ctx = await kept_context()
    with pytest.raises(af.ContextClosed, match="keeper"):
        ctx.add_dynamic_stage(af.Stage("late", actions=[recorder("x", [])]))


async def test_the_context_of_an_action_with_a_time_limit_closes_when_it_ends() -> None:
    """An action with a time limit (its attempts take another path): its ctx is closed once it ended too."""
    ctx = await kept_context(limit=30)
    with pytest.raises(af.ContextClosed, match="keeper"):
        ctx.add_dynamic_action(recorder("x", []))


async def test_add_dynamic_action_after_the_action_finished_raises_context_closed() -> None:
    """ctx.add_dynamic_action after the action finished raises af.ContextClosed naming the action."""
    ctx = await kept_context()
    with pytest.raises(af.ContextClosed, match="keeper") as info:
        ctx.add_dynamic_action(recorder("x", []))
    assert isinstance(info.value, af.WorkflowError)


async def test_bailing_actions_own_store_writes_are_in_the_result() -> None:
    """A bailing action's own store writes are in the in-memory RunResult.store."""

    @af.action
    async def write_then_bail(ctx: af.ActionContext) -> None:
        ctx.store["found"] = 3
        ctx.bail("nothing more to do")

    result = await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[write_then_bail])]))
    assert result.status is af.RunStatus.BAILED
    assert result.store["found"] == 3
