"""A resume that meets a take-over of the same run in the same engine: the resumed run goes on, once.

The engine writes a run's suspension; the write is slow, the run's lease
runs out meanwhile, and the engine's own take-over claims the run again.
The suspension is then written, the user resumes the run, and only then
does the take-over get to launch what it claimed. It leaves a run that
executes here to that execution; what it loaded, if it did, must not start
a second execution that suspends the run again over the resume.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import anyio
import anyio.lowlevel
from backends.storages import Storage
from helpers import eventually

import asyncflow as af
from asyncflow.backends import Backend, RunInfo, SavedRun

from . import workload
from .faulty import Faults, FaultyBackend

APPROVE = af.Workflow("races-approve", stages=[af.Stage("approve", actions=[workload.approval])])


class Gated(FaultyBackend):
    """A backend on which the test holds chosen calls until it lets them go.

    While ``slow`` is set: a run's suspension (``update_run`` to SUSPENDED by its
    holder) waits for ``end_gate``, the run's heartbeats do not get through, and
    the first ``load`` after a take-over's claim waits for ``load_gate``.
    """

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner, Faults())
        self.slow = False
        self.end_gate = anyio.Event()
        self.load_gate = anyio.Event()
        self.ends_waiting = 0
        self.claimed_again = False
        self.load_waiting = False

    async def update_run(self, run_id: str, **options: Any) -> bool:  # type: ignore[override]
        if self.slow and options.get("status") is af.RunStatus.SUSPENDED and options.get("holder"):
            self.ends_waiting += 1
            await self.end_gate.wait()
        return await super().update_run(run_id, **options)

    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], *, now: float, lease_until: float
    ) -> set[str]:
        if self.slow:
            run_ids = []
        return await super().heartbeat(owner, run_ids, now=now, lease_until=lease_until)

    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        limit: int,
        run_id: str | None = None,
        skip_versions: Collection[str] = (),
    ) -> list[RunInfo]:
        claimed = await super().claim(
            owner, now=now, lease_until=lease_until, limit=limit, run_id=run_id, skip_versions=skip_versions
        )
        if claimed and run_id is None and self.slow:
            self.claimed_again = True
        return claimed

    async def load(self, run_id: str) -> SavedRun | None:
        if self.claimed_again and not self.load_gate.is_set():
            self.load_waiting = True
            await self.load_gate.wait()
        return await super().load(run_id)


async def test_a_take_over_that_loads_a_run_resumed_meanwhile_does_not_suspend_it_again(
    storage: Storage,
) -> None:
    """A take-over overtaken by the run's suspension and resume starts nothing: the resumed run completes."""
    backend = Gated(storage.new())
    engine = af.Engine(backend, lease=0.3, poll_interval=0.02)
    engine.register(APPROVE)
    async with engine:
        with anyio.fail_after(30):
            backend.slow = True
            handle = await engine.start(APPROVE)
            # (The take-over claims the run back; it leaves it to the execution here, or loads it.)
            await eventually(
                lambda: backend.ends_waiting == 1 and (backend.load_waiting or backend.claimed_again),
                within=10,
            )
            backend.end_gate.set()  # (the suspension is written: the run is no longer held here)
            assert (await engine.wait(handle.run_id)).status is af.RunStatus.SUSPENDED
            backend.end_gate = anyio.Event()  # (a second execution's suspension would wait here)
            backend.load_gate.set()  # (the take-over loads the run, suspended and held by nobody)
            for _ in range(20):  # (a second execution, if launched, replays to its suspension)
                await anyio.lowlevel.checkpoint()
            await engine.resume(handle.run_id, {"ok": 1})
            backend.slow = False
            backend.end_gate.set()
            result = await engine.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED, result
    assert result.store["approved"] == {"ok": 1}
    assert backend.ends_waiting == 1
