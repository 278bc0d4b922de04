"""A storage error on a checkpoint is the database's trouble, never an action's failure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from backends.storages import BACKENDS, STORAGES, Storage
from helpers import eventually

import asyncflow as af

from . import workload
from .faulty import Faults, FaultyBackend


@pytest.fixture(autouse=True)
def _fresh_ledger() -> Iterator[None]:
    workload.reset()
    yield
    workload.reset()


@pytest.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A fresh database of each backend in turn."""
    async with STORAGES[request.param](tmp_path) as made:
        yield made


def faulty_engine(storage: Storage, faults: Faults, *workflows: af.Workflow, **options: Any) -> af.Engine:
    """An engine on ``storage`` whose writes fail as ``faults`` says, ``workflows`` registered."""
    options.setdefault("lease", 2.0)
    options.setdefault("poll_interval", 0.05)
    engine = af.Engine(FaultyBackend(storage.new(), faults), **options)
    for workflow in workflows:
        engine.register(workflow)
    return engine


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
    faults = Faults(first=6, only={"checkpoint"})
    async with faulty_engine(storage, faults, workload.STEADY) as engine:
        faults.arm()
        handle = await engine.start(workload.STEADY)
        with anyio.fail_after(30):
            await handle.result()
    failing = [r for r in asyncflow_log if "are failing" in r["message"]]
    recovered = [r for r in asyncflow_log if "go through again" in r["message"]]
    assert len(failing) == 1, [r["message"] for r in failing]
    assert len(recovered) == 1
    assert storage.new().url in failing[0]["message"]
    assert "No space left on device" in failing[0]["message"]
    assert failing[0]["level"].name == "WARNING"


async def test_a_checkpoint_that_never_goes_through_gives_the_run_back(storage: Storage) -> None:
    """Writes that fail for longer than the lease give the run back; once they work, it completes."""
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
