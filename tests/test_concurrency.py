"""Concurrent stages: ``Stage(concurrency=N)`` runs at most N actions at once, and fails as one."""

from __future__ import annotations

import time

import anyio
import pytest

import asyncflow as af


class InFlight:
    """Counts how many of its actions run at once, and the peak."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.done: list[str] = []

    def action(self, name: str, delay: float = 0.1) -> af.Action:
        """An action called ``name`` that sleeps ``delay`` seconds while counted as in flight."""

        async def body(ctx: af.ActionContext) -> None:
            self.now += 1
            self.peak = max(self.peak, self.now)
            try:
                await anyio.sleep(delay)
            finally:
                self.now -= 1
            self.done.append(name)

        return af.action(name=name)(body)


async def test_concurrent_stage_overlaps_its_actions() -> None:
    """Six 0.1 s actions with concurrency=3 finish well under the 0.6 s a sequential run takes."""
    tracker = InFlight()
    stage = af.Stage("fan", concurrency=3, actions=[tracker.action(f"a{i}") for i in range(6)])
    begin = time.perf_counter()
    result = await af.run(af.Workflow("wf", stages=[stage]))
    elapsed = time.perf_counter() - begin
    assert result.status is af.RunStatus.COMPLETED
    assert sorted(tracker.done) == [f"a{i}" for i in range(6)]
    assert elapsed < 0.45


async def test_concurrent_stage_runs_at_most_n_actions_at_once() -> None:
    """A stage with concurrency=3 runs exactly up to three actions at once, never more."""
    tracker = InFlight()
    stage = af.Stage("fan", concurrency=3, actions=[tracker.action(f"a{i}", 0.02) for i in range(6)])
    await af.run(af.Workflow("wf", stages=[stage]))
    assert tracker.peak == 3


async def test_default_concurrency_runs_one_action_at_a_time() -> None:
    """A stage without concurrency= runs its actions one at a time, in order."""
    tracker = InFlight()
    stage = af.Stage("seq", actions=[tracker.action(f"a{i}", 0.01) for i in range(4)])
    assert stage.concurrency == 1
    await af.run(af.Workflow("wf", stages=[stage]))
    assert tracker.peak == 1
    assert tracker.done == ["a0", "a1", "a2", "a3"]


async def test_concurrent_stage_records_every_action_completed() -> None:
    """Every action of a concurrent stage gets a COMPLETED record, and the stage too."""
    tracker = InFlight()
    stage = af.Stage("fan", concurrency=2, actions=[tracker.action(f"a{i}", 0.01) for i in range(4)])
    result = await af.run(af.Workflow("wf", stages=[stage]))
    actions = [s for s in result.steps if s.kind == "action"]
    assert sorted(s.action_name or "" for s in actions) == ["a0", "a1", "a2", "a3"]
    assert all(s.status is af.StepStatus.COMPLETED for s in actions)
    [stage_rec] = [s for s in result.steps if s.kind == "stage"]
    assert stage_rec.status is af.StepStatus.COMPLETED


async def test_dynamic_actions_in_a_concurrent_stage_run_within_the_limit() -> None:
    """Actions inserted in a concurrent stage run too, and the concurrency limit still holds."""
    tracker = InFlight()

    @af.action(name="spawner")
    async def spawner(ctx: af.ActionContext) -> None:
        for i in range(4):
            ctx.add_dynamic_action(tracker.action(f"d{i}", 0.03))

    stage = af.Stage(
        "fan",
        concurrency=2,
        actions=[
            spawner,
            tracker.action("s1", 0.03),
            tracker.action("s2", 0.03),
        ],
    )
    result = await af.run(af.Workflow("wf", stages=[stage]))
    assert sorted(tracker.done) == ["d0", "d1", "d2", "d3", "s1", "s2"]
    assert tracker.peak == 2
    dynamic = [s.action_name for s in result.steps if s.kind == "action" and s.dynamic]
    assert sorted(name or "" for name in dynamic) == ["d0", "d1", "d2", "d3"]


async def test_failure_in_a_concurrent_stage_cancels_running_siblings() -> None:
    """When one action fails, its running siblings are cancelled and recorded CANCELLED."""
    started = [anyio.Event(), anyio.Event()]
    cancelled: list[str] = []

    def sibling(name: str, ready: anyio.Event) -> af.Action:
        async def body(ctx: af.ActionContext) -> None:
            ready.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.append(name)
                raise

        return af.action(name=name)(body)

    @af.action(name="boom")
    async def boom(ctx: af.ActionContext) -> None:
        for event in started:
            await event.wait()
        raise ValueError("broken")

    stage = af.Stage(
        "fan",
        concurrency=3,
        actions=[
            sibling("slow1", started[0]),
            sibling("slow2", started[1]),
            boom,
        ],
    )
    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("wf", stages=[stage]))
    assert sorted(cancelled) == ["slow1", "slow2"]
    result = info.value.result
    assert result is not None
    statuses = {s.action_name: s.status for s in result.steps if s.kind == "action"}
    assert statuses == {
        "slow1": af.StepStatus.CANCELLED,
        "slow2": af.StepStatus.CANCELLED,
        "boom": af.StepStatus.FAILED,
    }


async def test_failure_in_a_concurrent_stage_raises_action_failed_not_a_group() -> None:
    """A failure in a concurrent stage raises af.ActionFailed naming the action, not an ExceptionGroup."""
    error = ValueError("broken")
    started = anyio.Event()

    @af.action(name="slow")
    async def slow(ctx: af.ActionContext) -> None:
        started.set()
        await anyio.sleep_forever()

    @af.action(name="boom")
    async def boom(ctx: af.ActionContext) -> None:
        await started.wait()
        raise error

    stage = af.Stage("fan", concurrency=2, actions=[slow, boom])
    with pytest.raises(af.ActionFailed) as info:
        await af.run(af.Workflow("wf", stages=[stage]))
    failure = info.value
    assert not isinstance(failure, BaseExceptionGroup)
    assert failure.action_name == "boom"
    assert failure.stage_id == "fan"
    assert failure.__cause__ is error
    assert failure.result is not None
    assert failure.result.error is error
    [stage_rec] = [s for s in failure.result.steps if s.kind == "stage"]
    assert stage_rec.status is af.StepStatus.FAILED


async def test_failure_in_a_concurrent_stage_stops_the_run() -> None:
    """After a concurrent stage fails, its unstarted actions and later stages do not run."""
    log: list[str] = []

    def note(name: str) -> af.Action:
        async def body(ctx: af.ActionContext) -> None:
            log.append(name)

        return af.action(name=name)(body)

    @af.action(name="boom")
    async def boom(ctx: af.ActionContext) -> None:
        raise ValueError("broken")

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("fan", concurrency=2, actions=[boom, note("queued1"), note("queued2"), note("queued3")]),
            af.Stage("after", actions=[note("later")]),
        ],
    )
    with pytest.raises(af.ActionFailed) as info:
        await af.run(wf)
    assert "later" not in log
    assert "queued2" not in log
    assert "queued3" not in log
    assert info.value.result is not None
    assert all(s.stage_id != "after" for s in info.value.result.steps)


async def test_action_disabled_by_a_sibling_in_a_concurrent_stage_is_skipped() -> None:
    """Stage(concurrency=2): an action that a running sibling disables before it starts is skipped."""
    ran: list[str] = []
    release = anyio.Event()

    @af.action
    async def disabler(ctx: af.ActionContext) -> None:
        ran.append("disabler")
        ctx.plan.disable_action("late")

    @af.action
    async def holder(ctx: af.ActionContext) -> None:
        ran.append("holder")
        await release.wait()

    @af.action
    async def late(ctx: af.ActionContext) -> None:
        ran.append("late")

    @af.action
    async def releaser(ctx: af.ActionContext) -> None:
        release.set()

    stage = af.Stage("s", actions=[holder, disabler, late, releaser], concurrency=2)
    with anyio.fail_after(5):
        result = await af.run(af.Workflow("wf", stages=[stage]))
    assert result.status is af.RunStatus.COMPLETED
    assert "late" not in ran
    [record] = [s for s in result.steps if s.action_name == "late"]
    assert record.status is af.StepStatus.SKIPPED
    assert record.reason == "disabled"


async def test_a_removed_action_in_a_concurrent_stage_does_not_end_the_stage() -> None:
    """Stage(concurrency=2): the actions after one removed earlier in the run all run."""
    ran: list[str] = []

    def probe(name: str) -> af.Action:
        async def body(ctx: af.ActionContext) -> None:
            ran.append(name)

        return af.action(name=name)(body)

    @af.action
    async def remover(ctx: af.ActionContext) -> None:
        ctx.plan.remove_action("gone")

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[remover]),
            af.Stage("b", actions=[probe("gone"), probe("after-1"), probe("after-2")], concurrency=2),
        ],
    )
    with anyio.fail_after(5):
        result = await af.run(wf)
    assert result.status is af.RunStatus.COMPLETED
    assert sorted(ran) == ["after-1", "after-2"]
