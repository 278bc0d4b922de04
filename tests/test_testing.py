"""The helpers in asyncflow.testing: running one action or one stage alone, and the fake clock."""

from __future__ import annotations

import math

import anyio
import pytest

import asyncflow as af
from asyncflow.testing import FakeClock, run_action, run_stage


@af.action
async def greet(ctx: af.ActionContext) -> None:
    ctx.store["greeting"] = f"hello, {ctx.store['user.name']}"


@af.action
async def explode(ctx: af.ActionContext) -> None:
    raise ValueError("boom")


@af.action
async def fan_out(ctx: af.ActionContext) -> None:
    ctx.add_dynamic_action(greet)


async def test_run_action_starts_from_the_given_store() -> None:
    """run_action runs one action on the store it is given and returns the run's result."""
    result = await run_action(greet, store={"user.name": "Ann"})
    assert result.store["greeting"] == "hello, Ann"
    assert result.action_order() == ["greet"]


async def test_run_action_runs_what_the_action_inserts() -> None:
    """Actions inserted by the action under test run right after it."""
    result = await run_action(fan_out, store={"user.name": "Bo"})
    assert result.action_order() == ["fan-out", "greet"]


async def test_run_action_raises_action_failed_like_af_run() -> None:
    """A failing action raises af.ActionFailed naming it, with the original error as the cause."""
    with pytest.raises(af.ActionFailed, match="explode") as failure:
        await run_action(explode)
    assert isinstance(failure.value.__cause__, ValueError)


async def test_run_stage_runs_a_stage_alone_with_a_runner() -> None:
    """run_stage runs one stage with the given runner's middleware."""
    order: list[str] = []

    async def trace(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        order.append(ctx.action.name if ctx.action else "?")
        await call_next()

    stage = af.Stage("greeting", actions=[greet, greet])
    result = await run_stage(stage, store={"user.name": "Cy"}, runner=af.Runner(action_middleware=[trace]))
    assert order == ["greet", "greet"]
    assert result.status is af.RunStatus.COMPLETED


async def test_run_helpers_reject_what_is_not_an_action_or_stage() -> None:
    """run_action and run_stage say what they take when given something else."""
    with pytest.raises(TypeError, match=r"af\.Action"):
        await run_action("greet")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"af\.Stage"):
        await run_stage(greet)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "message"), [(-1, "back in time"), (math.nan, "finite"), (math.inf, "finite")]
)
async def test_fake_clock_advances_by_a_finite_forward_step_only(seconds: float, message: str) -> None:
    """advance(-1), advance(nan) and advance(inf) are ValueErrors, and the clock shows what it showed."""
    clock = FakeClock(100.0)
    with pytest.raises(ValueError, match=message):
        await clock.advance(seconds)
    assert clock.now() == 100.0


@pytest.mark.parametrize("start", [math.nan, math.inf])
def test_fake_clock_starts_at_a_finite_time(start: float) -> None:
    """FakeClock(nan) or FakeClock(inf) is a ValueError."""
    with pytest.raises(ValueError, match="finite"):
        FakeClock(start)


async def test_fake_clock_wakes_sleepers_when_advanced() -> None:
    """A sleep on a FakeClock ends when the clock is advanced past it, not before."""
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(10)
        woke.append(clock.now())

    async with anyio.create_task_group() as group:
        group.start_soon(sleeper)
        with anyio.fail_after(5):
            await clock.wait_for_sleepers(1)
        await clock.advance(5)
        assert woke == []
        await clock.advance(5)
    assert woke == [clock.now()]


async def test_fake_clock_refuses_to_go_back() -> None:
    """Advancing a FakeClock by a negative time is a ValueError."""
    with pytest.raises(ValueError, match="back in time"):
        await FakeClock().advance(-1)
