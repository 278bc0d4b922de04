"""The engine on every backend: runs outlive their engine, are taken over, suspend, sleep and wake alike."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import durable_flows as flows
import pytest

import asyncflow as af
from asyncflow.testing import FakeClock
from backends.storages import Storage

START = 1_800_000_000.0


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    flows.reset()


async def test_a_run_completes_and_another_engine_reads_its_result(backend: Storage) -> None:
    """A completed run's status, store and steps are read back by another engine on the same database."""
    async with backend.engine(flows.QUICK) as engine:
        handle = await engine.start(flows.QUICK, store={"given": [1, "two"]})
        with anyio.fail_after(5):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    async with backend.engine(flows.QUICK) as other:
        with anyio.fail_after(5):
            again = await other.wait(handle.run_id)
    assert again.status is af.RunStatus.COMPLETED
    assert again.store == result.store == {"given": [1, "two"], "one": 1}
    assert [(s.kind, s.stage_id, s.action_name) for s in again.steps] == [
        (s.kind, s.stage_id, s.action_name) for s in result.steps
    ]


async def test_store_values_read_back_from_every_backend_as_json_gives_them(backend: Storage) -> None:
    """The engine speaks JSON to every backend: a tuple in a run's store reads back as a list on each."""
    async with backend.engine(flows.QUICK) as engine:
        handle = await engine.start(flows.QUICK, store={"pair": (1, 2), "nested": {"a": (3,)}})
        with anyio.fail_after(5):
            await handle.result()
    async with backend.engine(flows.QUICK) as other:
        assert await other.get_store(handle.run_id) == {"pair": [1, 2], "nested": {"a": [3]}, "one": 1}


async def test_an_interrupted_run_is_taken_over_without_repeating_completed_actions(backend: Storage) -> None:
    """A run left mid-action by a closed engine is finished by the next; completed actions do not rerun."""
    async with backend.engine(flows.BASIC) as first:
        handle = await first.start(flows.BASIC)
        with anyio.fail_after(5):
            await flows.gate("hang").wait()
    async with backend.engine(flows.BASIC) as second:
        with anyio.fail_after(5):
            result = await second.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("step-one") == 1
    assert flows.runs_of("hang") == 2  # the action in flight runs again (at least once)
    assert flows.runs_of("after") == 1
    assert flows.runs_of("s2") == 1


async def test_a_run_suspends_in_one_engine_and_resumes_in_another(backend: Storage) -> None:
    """A suspended run is recorded with its reason and data; another engine resumes it with data."""
    async with backend.engine(flows.APPROVAL) as first:
        handle = await first.start(flows.APPROVAL)
        with anyio.fail_after(5):
            suspended = await handle.result()
        info = await first.get_run(handle.run_id)
    assert suspended.status is af.RunStatus.SUSPENDED
    assert (info.status, info.suspend_reason, info.suspend_data) == (
        af.RunStatus.SUSPENDED,
        "needs approval",
        {"amount": 5},
    )
    async with backend.engine(flows.APPROVAL) as second:
        resumed = await second.resume(handle.run_id, {"by": "ann"})
        with anyio.fail_after(5):
            result = await resumed.result()
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["approved"] == {"by": "ann"}
    assert [(resuming, data) for resuming, data, _ in flows.LEDGER["approve"]] == [
        (False, None),
        (True, {"by": "ann"}),
    ]
    assert flows.runs_of("step-one") == 1


async def test_a_sleeping_run_wakes_on_time_in_a_new_engine(backend: Storage) -> None:
    """A run that sleeps is recorded SLEEPING with its wake time, and a later engine wakes it when due."""
    clock = FakeClock(START)
    async with backend.engine(flows.SLEEPY, clock=clock) as first:
        handle = await first.start(flows.SLEEPY)
        await flows.eventually(lambda: clock.sleepers == 1)
        info = await first.get_run(handle.run_id)
    assert (info.status, info.wake_at) == (af.RunStatus.SLEEPING, START + 100)
    later = FakeClock(START + 60)
    async with backend.engine(flows.SLEEPY, clock=later) as second:
        await flows.eventually(lambda: later.sleepers == 1)
        assert flows.runs_of("woke") == 0
        await later.advance(40)
        with anyio.fail_after(5):
            result = await second.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert (flows.runs_of("before"), flows.runs_of("woke")) == (1, 1)


async def test_an_engine_that_lost_its_lease_stops_the_run(backend: Storage) -> None:
    """When another owner takes a run over, the engine running it stops it and records nothing more."""
    clock = FakeClock(START)
    async with backend.engine(flows.BLOCKING, clock=clock) as engine:
        handle = await engine.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        # Another engine claims the run as if this one's lease had run out.
        async with backend.new() as thief:
            taken = await thief.claim("thief", now=START + 10, lease_until=START + 100, limit=10)
        assert [info.run_id for info in taken] == [handle.run_id]
        await flows.eventually(lambda: flows.runs_of("block.cancelled") == 1)
        # (What is recorded: engine.get_run would add the plan so far of a running run.)
        info = await engine.backend.get_run(handle.run_id)
    assert info is not None
    assert (info.owner, info.status) == ("thief", af.RunStatus.RUNNING)
    assert info.steps is None


async def test_an_end_refused_after_a_take_over_is_not_the_runs_result(
    backend: Storage, asyncflow_log: list[dict[str, Any]]
) -> None:
    """A run that ends here after another owner took it over: wait gives what the database records."""
    clock = FakeClock(START)
    # (No heartbeat comes during the test: the take-over is seen only when the end is refused.)
    options = {"clock": clock, "lease": 30.0, "poll_interval": 10.0}
    async with backend.engine(flows.SUSPENDS_WHEN_RELEASED, **options) as engine:
        handle = await engine.start(flows.SUSPENDS_WHEN_RELEASED)
        with anyio.fail_after(5):
            await flows.gate("suspender").wait()
        async with backend.new() as thief:
            taken = await thief.claim("thief", now=START + 40, lease_until=START + 100, limit=10)
            assert [info.run_id for info in taken] == [handle.run_id]
            flows.gate("suspender.release").set()  # it suspends here; its end is refused

            def refused() -> bool:
                return any("its end was not recorded" in r["message"] for r in asyncflow_log)

            await flows.eventually(refused)
            # The owner that took it over ends it otherwise.
            await thief.update_run(
                handle.run_id,
                holder="thief",
                now=START + 41,
                status=af.RunStatus.COMPLETED,
                owner=None,
                lease_until=None,
            )
        with anyio.fail_after(5):
            result = await engine.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED


async def test_a_cancel_from_another_engine_stops_the_run(backend: Storage) -> None:
    """A run cancelled through another engine ends CANCELLED, and the engine running it stops it."""
    async with backend.engine(flows.BLOCKING) as engine:
        handle = await engine.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        async with backend.engine(recover=False) as other:
            await other.cancel(handle.run_id)
        await flows.eventually(lambda: flows.runs_of("block.cancelled") == 1)
        info = await engine.get_run(handle.run_id)
    assert info.status is af.RunStatus.CANCELLED
    assert "block" not in (await engine_store(backend, handle.run_id))


async def test_a_drained_engine_gives_a_run_back_after_its_next_checkpoint(backend: Storage) -> None:
    """engine.drain lets the action in flight finish, then gives its run back (interrupted) for others."""
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    async with backend.engine(flows.BLOCK_THEN_RECORD, runner=runner) as first:
        handle = await first.start(flows.BLOCK_THEN_RECORD)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        await first.drain(0)  # (draining from here on; waits for nothing)
        flows.gate("block.release").set()
        with anyio.fail_after(5):
            await first.drain(5)  # returns once the run has stopped here
        info = await first.get_run(handle.run_id)
        assert (info.status, info.owner, flows.runs_of("after")) == (af.RunStatus.RUNNING, None, 0)
    kinds = [event.kind for event in seen if event.run_id == handle.run_id]
    assert kinds[-1] is af.EventKind.RUN_INTERRUPTED
    assert af.EventKind.RUN_FINISHED not in kinds
    async with backend.engine(flows.BLOCK_THEN_RECORD) as second:
        with anyio.fail_after(5):
            result = await second.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert result.store == {"block": "released", "after": True}
    assert (flows.runs_of("block"), flows.runs_of("block.cancelled"), flows.runs_of("after")) == (1, 0, 1)


async def engine_store(backend: Storage, run_id: str) -> dict[str, object]:
    """The store of ``run_id`` as a new engine reads it."""
    async with backend.engine(recover=False) as engine:
        with anyio.fail_after(5):
            return (await engine.wait(run_id)).store


async def test_list_runs_delete_and_purge_through_the_engine(backend: Storage) -> None:
    """Runs started by an engine are listed by status, deleted one by one, and purged once ended."""
    async with backend.engine(flows.QUICK, flows.APPROVAL) as engine:
        quick = [await engine.start(flows.QUICK) for _ in range(3)]
        approval = await engine.start(flows.APPROVAL)
        with anyio.fail_after(5):
            for handle in [*quick, approval]:
                await handle.result()
        page = await engine.list_runs(status="completed", limit=2)
        assert len(page.runs) == 2
        assert page.next_cursor is not None
        rest = await engine.list_runs(status="completed", limit=2, cursor=page.next_cursor)
        listed = [info.run_id for info in [*page.runs, *rest.runs]]
        assert sorted(listed) == sorted(handle.run_id for handle in quick)
        assert [i.run_id for i in (await engine.list_runs(workflow_id="approval")).runs] == [approval.run_id]
        assert await engine.delete_run(quick[0].run_id)
        assert await engine.purge(older_than=timedelta(0)) == 2
        left = await engine.list_runs()
    assert [info.run_id for info in left.runs] == [approval.run_id]


async def test_a_workflow_rebuilt_per_request_runs_and_a_different_one_is_refused(backend: Storage) -> None:
    """engine.start takes an equal workflow built anew; one of another definition is InvalidDefinition."""

    def build(*actions: af.Action) -> af.Workflow:
        return af.Workflow("per-request", stages=[af.Stage("s", actions=list(actions))])

    async with backend.engine(build(flows.step_one)) as engine:
        handle = await engine.start(build(flows.step_one))
        with anyio.fail_after(5):
            result = await handle.result()
        with pytest.raises(af.InvalidDefinition, match="'per-request' and a different definition"):
            await engine.start(build(flows.step_one, flows.step_one))
    assert result.status is af.RunStatus.COMPLETED
    assert result.action_order() == ["step-one"]


async def test_runs_of_a_workflow_not_registered_wait_for_an_engine_that_has_it(backend: Storage) -> None:
    """An engine leaves runs of workflows it has not registered: they wait, unfailed, for one with them."""
    async with backend.engine(flows.BASIC) as first:
        handle = await first.start(flows.BASIC)
        with anyio.fail_after(5):
            await flows.gate("hang").wait()

    async with backend.engine(flows.QUICK) as other:

        async def waiting() -> bool:
            info = await other.get_run(handle.run_id)
            return info.status is af.RunStatus.PENDING and info.owner is None

        await flows.eventually(waiting)
        listed = await other.list_runs(status="pending")
        info = await other.get_run(handle.run_id)
    assert [i.run_id for i in listed.runs] == [handle.run_id]
    assert info.error is None
    assert flows.runs_of("hang") == 1
    async with backend.engine(flows.BASIC) as again:
        with anyio.fail_after(5):
            result = await again.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("step-one") == 1
