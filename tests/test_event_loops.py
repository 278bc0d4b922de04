"""The event loops asyncflow runs on: asyncio's own, and uvloop's (services behind uvicorn run on it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import anyio.lowlevel
import durable_flows as flows
import pytest
from conftest import TEST_LOOP
from durable_flows import query

import asyncflow as af

uvloop = pytest.importorskip("uvloop")


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    flows.reset()


async def test_the_suite_runs_on_the_loop_it_was_asked_for() -> None:
    """ASYNCFLOW_TEST_LOOP picks the loop every async test runs on (asyncio's unless it says uvloop)."""
    loop = asyncio.get_running_loop()
    if TEST_LOOP == "uvloop":
        assert isinstance(loop, uvloop.Loop)
    else:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.BaseEventLoop)


def test_durable_runs_commit_suspend_and_resume_on_uvloop(tmp_path: Path) -> None:
    """On uvloop, concurrent durable runs on SQLite commit, and a suspended run resumes."""
    db_path = tmp_path / "runs.db"

    async def main() -> tuple[list[af.RunResult], af.RunResult]:
        async with af.Engine(f"sqlite:///{db_path}", lease=1.0, poll_interval=0.05) as engine:
            with anyio.fail_after(10):
                handles = await asyncio.gather(*(engine.start(flows.QUICK) for _ in range(20)))
                quick = [await handle.result() for handle in handles]
                approval = await engine.start(flows.APPROVAL)
                suspended = await approval.result()
                assert suspended.status is af.RunStatus.SUSPENDED
                resumed = await engine.resume(approval.run_id, {"by": "ops"})
                return quick, await resumed.result()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        quick, approved = runner.run(main())
    assert [result.status for result in quick] == [af.RunStatus.COMPLETED] * 20
    assert approved.status is af.RunStatus.COMPLETED
    assert approved.store["approved"] == {"by": "ops"}
    [(checkpoints,)] = query(db_path, "SELECT count(*) FROM checkpoints")
    assert checkpoints >= 20


def test_an_engine_refuses_to_open_on_trio() -> None:
    """`async with af.Engine()` on trio raises a RuntimeError saying the engine is asyncio's only."""

    async def open_engine() -> None:
        async with af.Engine():
            pass

    with pytest.raises(RuntimeError, match=r"af\.Engine runs on asyncio's event loop only .* this is trio"):
        anyio.run(open_engine, backend="trio")


def test_the_in_memory_runner_runs_on_trio() -> None:
    """af.run completes a workflow with a dynamic stage on trio's event loop."""

    @af.action
    async def grow(ctx: af.ActionContext) -> None:
        await anyio.lowlevel.checkpoint()
        ctx.add_dynamic_stage(af.Stage("grown", actions=[af.action(name="leaf")(_nothing)]))

    workflow = af.Workflow("on-trio", stages=[af.Stage("s", actions=[grow])])
    result = anyio.run(af.run, workflow, backend="trio")
    assert result.status is af.RunStatus.COMPLETED
    assert result.stage_order() == ["s", "grown"]


async def _nothing(ctx: af.ActionContext) -> None:
    pass
