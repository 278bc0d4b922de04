"""A storage error on a checkpoint is the database's trouble, never an action's failure."""

from __future__ import annotations

import re
from typing import Any

import anyio
import durable_flows as flows
import pytest
from backends.storages import Storage
from helpers import eventually

import asyncflow as af
from asyncflow.backends import Backend
from asyncflow.backends.base import Checkpoint

from . import workload
from .faulty import Faults, FaultyBackend, disk_full


def faulty_engine(storage: Storage, faults: Faults, *workflows: af.Workflow, **options: Any) -> af.Engine:
    """An engine on ``storage`` whose writes fail as ``faults`` says, ``workflows`` registered."""
    options.setdefault("lease", 2.0)
    options.setdefault("poll_interval", 0.05)
    engine = af.Engine(FaultyBackend(storage.new(), faults), **options)
    for workflow in workflows:
        engine.register(workflow)
    return engine


async def run_through_failing_checkpoints(storage: Storage, failures: int) -> str:
    """One run whose next ``failures`` checkpoint writes fail, run to its end; its id."""
    faults = Faults(first=failures, only={"checkpoint"})
    async with faulty_engine(storage, faults, workload.STEADY) as engine:
        faults.arm()
        handle = await engine.start(workload.STEADY)
        with anyio.fail_after(30):
            await handle.result()
    return handle.run_id


@pytest.mark.parametrize("failures", [1, 5, 40])
async def test_checkpoints_that_fail_n_times_then_succeed_complete_every_run(
    storage: Storage, failures: int
) -> None:
    """The next N checkpoint writes fail, then succeed: every run completes, no action runs twice."""
    faults = Faults(first=failures, only={"checkpoint"})
    async with faulty_engine(storage, faults, workload.STEADY) as engine:
        faults.arm()
        handles = [await engine.start(workload.STEADY) for _ in range(10)]
        with anyio.fail_after(30):
            results = [await handle.result() for handle in handles]
    assert faults.failed["checkpoint"] == failures
    assert [r.status for r in results] == [af.RunStatus.COMPLETED] * 10
    assert [r.store["count"] for r in results] == [4] * 10
    for handle in handles:
        assert sorted(workload.executions(handle.run_id).values()) == [1, 1, 1, 1]


async def test_a_run_held_by_a_failing_checkpoint_shows_as_running(storage: Storage) -> None:
    """While its checkpoint is written again and again, the run is RUNNING, not failed; then it completes."""
    faults = Faults(first=10**9, only={"checkpoint"})
    async with faulty_engine(storage, faults, workload.STEADY, lease=30.0) as engine:
        faults.arm()
        handle = await engine.start(workload.STEADY)
        await eventually(lambda: faults.failed["checkpoint"] >= 5)
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.RUNNING
        faults.disarm()
        with anyio.fail_after(10):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert sorted(workload.executions(handle.run_id).values()) == [1, 1, 1, 1]


async def test_an_episode_of_failing_writes_is_logged_once_naming_the_database_and_cause(
    storage: Storage, asyncflow_log: list[dict[str, Any]]
) -> None:
    """Six failed checkpoint writes in a row log one warning (database, cause) and one line when over."""
    await run_through_failing_checkpoints(storage, 6)
    failing = [r for r in asyncflow_log if "are failing" in r["message"]]
    recovered = [r for r in asyncflow_log if "go through again" in r["message"]]
    assert len(failing) == 1, [r["message"] for r in failing]
    assert len(recovered) == 1
    assert storage.new().url in failing[0]["message"]
    assert "No space left on device" in failing[0]["message"]
    assert failing[0]["level"].name == "WARNING"


async def test_the_episode_lines_say_what_failed_how_and_how_many_times(
    storage: Storage, asyncflow_log: list[dict[str, Any]]
) -> None:
    """The warning names the database, the error, its cause and the write; the end line counts failures."""
    run_id = await run_through_failing_checkpoints(storage, 6)
    url = storage.new().url
    [failing] = [r["message"] for r in asyncflow_log if "are failing" in r["message"]]
    [recovered] = [r["message"] for r in asyncflow_log if "go through again" in r["message"]]
    assert failing == (
        f"writes to {url} are failing (OSError: [Errno 28] No space left on device, writing the stage "
        f"checkpoint of run {run_id}); checkpoints are kept and written again with back-off, "
        f"and their runs held, not failed"
    )
    seconds = re.fullmatch(
        rf"writes to {re.escape(url)} go through again, after (\S+)s and 6 failed writes", recovered
    )
    assert seconds is not None, recovered
    assert 0 < float(seconds.group(1)) < 30
    assert not any("given back" in r["message"] for r in asyncflow_log)


async def test_each_episode_counts_its_own_failures(
    storage: Storage, asyncflow_log: list[dict[str, Any]]
) -> None:
    """A second episode's end line counts only its own failed writes."""
    faults = Faults(first=3, only={"checkpoint"})
    async with faulty_engine(storage, faults, workload.STEADY) as engine:
        faults.arm()
        with anyio.fail_after(30):
            await (await engine.start(workload.STEADY)).result()
            faults.first = 2
            await (await engine.start(workload.STEADY)).result()
    ends = [r["message"] for r in asyncflow_log if "go through again" in r["message"]]
    assert [m.rsplit(" and ", 1)[1] for m in ends] == ["3 failed writes", "2 failed writes"]


async def test_failing_writes_of_many_runs_at_once_are_one_episode(
    storage: Storage, asyncflow_log: list[dict[str, Any]]
) -> None:
    """Ten runs held by failing checkpoints at once: one warning, and one line when all went through."""
    faults = Faults(first=40, only={"checkpoint"})
    async with faulty_engine(storage, faults, workload.STEADY) as engine:
        faults.arm()
        handles = [await engine.start(workload.STEADY) for _ in range(10)]
        with anyio.fail_after(30):
            for handle in handles:
                await handle.result()
    assert len([r for r in asyncflow_log if "are failing" in r["message"]]) == 1
    assert len([r for r in asyncflow_log if "go through again" in r["message"]]) == 1


async def test_a_checkpoint_that_never_goes_through_gives_the_run_back(
    storage: Storage, asyncflow_log: list[dict[str, Any]]
) -> None:
    """Writes failing for longer than the lease give the run back, saying why; then it completes."""
    faults = Faults(first=10**9, only={"checkpoint"})
    async with faulty_engine(storage, faults, workload.STEADY, lease=0.5, poll_interval=0.05) as engine:
        faults.arm()
        handle = await engine.start(workload.STEADY)

        async def given_back() -> bool:
            return (await engine.get_run(handle.run_id)).owner is None

        await eventually(given_back)
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.RUNNING
        faults.disarm()
        with anyio.fail_after(10):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["count"] == 4
    ran = workload.executions(handle.run_id)
    assert sorted(ran.values())[:3] == [1, 1, 1]
    assert max(ran.values()) <= 2  # the action in flight when it was given back, at most once more
    url = storage.new().url
    given_back = [r["message"] for r in asyncflow_log if "the run is given back" in r["message"]]
    assert given_back
    cause = r"\((OSError: \[Errno 28\]|TimeoutError: the database|OperationalError: database is locked)"
    assert re.search(re.escape(f"to {url} for 0.5s ") + cause, given_back[0]), given_back[0]


async def test_a_write_failing_for_a_whole_lease_is_tried_again_with_back_off(storage: Storage) -> None:
    """A checkpoint failing until its run is given back is tried again a few times, not in a busy loop."""
    faults = Faults(first=10**9, only={"checkpoint"})
    async with faulty_engine(storage, faults, workload.STEADY, lease=0.5, poll_interval=0.05) as engine:
        faults.arm()
        handle = await engine.start(workload.STEADY)

        async def given_back() -> bool:
            return (await engine.get_run(handle.run_id)).owner is None

        await eventually(given_back)
        tries = faults.failed["checkpoint"]
    # Pauses from 10 ms, doubling up to lease/8 (62.5 ms), jittered: about 10 tries in the 0.5 s held.
    assert 2 <= tries <= 100


class FailsForOneRun(FaultyBackend):
    """Checkpoints of ``held`` fail while ``holding``; every other run's first checkpoint fails once."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner, Faults())
        self.held: str | None = None
        self.holding = True
        self.failed_once: set[str] = set()
        self.held_failures = 0

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        run_id = checkpoint.run_id
        if run_id == self.held and self.holding:
            self.held_failures += 1
            raise disk_full()
        if run_id != self.held and run_id not in self.failed_once:
            self.failed_once.add(run_id)
            raise disk_full()
        await self.inner.checkpoint(checkpoint)


async def test_a_run_whose_write_goes_through_does_not_end_the_episode_of_one_still_held(
    storage: Storage, asyncflow_log: list[dict[str, Any]]
) -> None:
    """While run A is held, run B's failed write goes through: still one episode, ended once A's does."""
    backend = FailsForOneRun(storage.new())
    engine = af.Engine(backend, lease=30.0, poll_interval=0.05)
    engine.register(workload.STEADY)
    async with engine:
        a = await engine.start(workload.STEADY, run_id="run-a")
        backend.held = a.run_id
        await eventually(lambda: backend.held_failures >= 3)
        with anyio.fail_after(10):
            b = await (await engine.start(workload.STEADY)).result()
        assert b.status is af.RunStatus.COMPLETED
        held_failures = backend.held_failures
        await eventually(
            lambda: backend.held_failures > held_failures
        )  # A is still held after B went through
        backend.holding = False
        with anyio.fail_after(10):
            assert (await a.result()).status is af.RunStatus.COMPLETED
    assert len([r for r in asyncflow_log if "are failing" in r["message"]]) == 1
    assert len([r for r in asyncflow_log if "go through again" in r["message"]]) == 1


async def test_maintenance_failing_through_an_outage_is_logged_once_and_once_when_it_recovers(
    storage: Storage, asyncflow_log: list[dict[str, Any]]
) -> None:
    """Heartbeats failing for many ticks log one error (database, cause, traceback), then one as they work."""
    faults = Faults(first=8, only={"heartbeat"})
    async with faulty_engine(storage, faults) as engine:
        faults.arm()
        await eventually(lambda: faults.failed["heartbeat"] == 8 and faults.written["heartbeat"] > 0)
        await eventually(lambda: any("works again" in r["message"] for r in asyncflow_log))
    url = engine.backend.url
    failing = [r for r in asyncflow_log if "maintenance" in r["message"] and "is failing" in r["message"]]
    assert [r["message"] for r in failing] == [
        f"engine maintenance against {url} is failing (OSError: [Errno 28] No space left on device); "
        f"heartbeats and looks for runs are tried again every poll interval, logged again only when "
        f"they work"
    ]
    assert failing[0]["level"].name == "ERROR"
    assert failing[0]["exception"].type is OSError  # (with its traceback)
    [recovered] = [r["message"] for r in asyncflow_log if "works again" in r["message"]]
    assert re.fullmatch(
        rf"engine maintenance against {re.escape(url)} works again, after \S+s and 8 failed ticks", recovered
    ), recovered


async def test_a_run_whose_last_events_fail_to_write_ends_here(
    storage: Storage, asyncflow_log: list[dict[str, Any]]
) -> None:
    """Event writes that fail as a run ends are written again: the run ends here, it is not given back."""
    flows.reset()
    faults = Faults(first=5, only={"append_events"})
    async with faulty_engine(storage, faults, flows.BLOCKING) as engine:
        handle = await engine.start(flows.BLOCKING)
        with anyio.fail_after(10):
            await flows.gate("block").wait()
        faults.arm()  # (its last events, written as it ends, fail five times)
        flows.gate("block.release").set()
        with anyio.fail_after(30):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert faults.failed["append_events"] == 5
    assert not [r["message"] for r in asyncflow_log if "stopped here" in r["message"]]
    assert not [r["message"] for r in asyncflow_log if "taking over run" in r["message"]]
