"""A resume's key is written with its status change: a retry with the key is always the repeat it is.

``engine.resume(run_id, data, key=...)`` makes the run pending again, then
logs its ``RUN_RESUMED`` event. When the log's write gives up (the database
refusing writes for the lease's worth of tries) after the status changed, a
caller that retries with the same key, here or from another process, gets
the idempotent answer (``created`` false), not ``RunStateError``; a caller
with another key still gets ``RunStateError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from backends.storages import Storage

import asyncflow as af

from . import workload
from .faulty import Faults, FaultyBackend

APPROVE = af.Workflow("resume-key-approve", stages=[af.Stage("approve", actions=[workload.approval])])


@asynccontextmanager
async def resumed_without_its_event(storage: Storage) -> AsyncIterator[tuple[af.Engine, af.Engine, str]]:
    """An engine, a second one on the same database, and a run resumed with key "approval-1" by the first.

    The resume changed the run's status, but every write of the run's log
    fails (until the block ends), so its ``RUN_RESUMED`` event, with the key,
    was never written: the resume gave up on it after the lease.
    """
    faults = Faults(only={"append_events"}, probability=1.0)
    engine = af.Engine(FaultyBackend(storage.new(), faults), lease=0.3, poll_interval=0.02)
    engine.register(APPROVE)
    other = storage.engine(APPROVE, concurrency=0)
    async with engine, other:
        with anyio.fail_after(30):
            handle = await engine.start(APPROVE)
            assert (await engine.wait(handle.run_id)).status is af.RunStatus.SUSPENDED
            faults.arm()
            first = await engine.resume(handle.run_id, {"ok": 1}, key="approval-1")
            assert first.created
            assert faults.failed["append_events"] > 0
            yield engine, other, handle.run_id
            faults.disarm()
            result = await engine.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["approved"] == {"ok": 1}


async def test_a_retry_with_the_key_from_another_engine_is_the_repeat_when_the_event_was_lost(
    storage: Storage,
) -> None:
    """The same key from another engine, after the resume's event write gave up: the run, created false."""
    async with resumed_without_its_event(storage) as (_, other, run_id):
        again = await other.resume(run_id, {"ok": 2}, key="approval-1")
        assert (again.run_id, again.created) == (run_id, False)


async def test_a_retry_with_the_key_in_the_same_engine_is_the_repeat_while_the_log_cannot_be_written(
    storage: Storage,
) -> None:
    """The same key in the engine whose log writes still fail returns the run (created false), no error."""
    async with resumed_without_its_event(storage) as (engine, _, run_id):
        again = await engine.resume(run_id, {"ok": 2}, key="approval-1")
        assert (again.run_id, again.created) == (run_id, False)


async def test_another_key_on_a_run_resumed_without_its_event_is_a_run_state_error(storage: Storage) -> None:
    """Another key on the run resumed with "approval-1" (its event lost) is still af.RunStateError."""
    async with resumed_without_its_event(storage) as (_, other, run_id):
        with pytest.raises(af.RunStateError, match="not suspended"):
            await other.resume(run_id, {"ok": 2}, key="approval-2")
