"""One fault campaign: many durable runs on a backend whose writes fail, and what must still hold.

:func:`campaign` starts ``runs`` runs of :data:`~.workload.MIXED` (dynamic
stages and actions, a retried action, a durable sleep, a suspension) on an
engine whose backend fails each write with a seeded probability, resumes
every run once it is suspended, waits for every run to end, and checks:

- every run completed;
- no completed action ran again: each step ran once, save the action in
  flight when its run changed hands (given back after a checkpoint that
  would not go through, or taken over after a lost lease), which may run
  once more per such hand-over: the documented bound;
- the store counts are exact: each run's ``count`` is the number of
  counting steps it has, and the database holds exactly ``runs`` runs.

What a user calls (``engine.start``, ``engine.resume``) may raise the
injected errors: the campaign calls again, as a user would, with an
idempotency key and a resume key, so a call that failed changes nothing.
"""

from __future__ import annotations

import errno
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

import anyio
import attrs

import asyncflow as af
from asyncflow.backends import Backend, RunInfo

from . import workload
from .faulty import Faults, FaultyBackend

T = TypeVar("T")

#: what the injected faults raise (see :mod:`.faulty`)
INJECTED = (OSError, TimeoutError, sqlite3.OperationalError)


@attrs.frozen
class Outcome:
    """What a campaign saw: how many writes failed, hand-overs, in-flight re-runs."""

    failed_writes: int
    hand_overs: int
    reruns: int


class CountingClaims(FaultyBackend):
    """A faulty backend that also counts, per run, how often a claim handed it to an engine."""

    def __init__(self, inner: Backend, faults: Faults) -> None:
        super().__init__(inner, faults)
        self.claimed: Counter[str] = Counter()

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
        if run_id is None:  # (a take-over; engine.resume claims the run it resumes by its id)
            self.claimed.update(info.run_id for info in claimed)
        return claimed


async def again(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, called again while it raises an injected fault (as a user retries)."""
    while True:
        try:
            return await call()
        except INJECTED as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, None):
                raise
            await anyio.sleep(0.001)


async def campaign(
    new_backend: Callable[[], Backend],
    *,
    seed: int,
    runs: int = 200,
    probability: float = 0.05,
    outage: bool = False,
    within: float = 120.0,
) -> Outcome:
    """Run the campaign (see the module) and check what must hold; what it saw.

    With ``outage``, every write also fails for 1.5 leases from the 1,000th
    on: held checkpoints give their runs back and runs are taken over.
    """
    workload.reset()
    faults = Faults(seed=seed, probability=probability, outage_at=1_000 if outage else None, outage=0.75)
    backend = CountingClaims(new_backend(), faults)
    engine = af.Engine(backend, lease=0.5, poll_interval=0.05)
    engine.register(workload.MIXED)
    results: dict[str, af.RunResult] = {}
    async with engine:
        faults.arm()
        with anyio.fail_after(within):
            handles = [
                await again(lambda i=i: engine.start(workload.MIXED, idempotency_key=f"{seed}-{i}"))
                for i in range(runs)
            ]
            run_ids = [h.run_id for h in handles]
            assert len(set(run_ids)) == runs

            async def finish(run_id: str) -> None:
                result = await engine.wait(run_id)
                if result.status is af.RunStatus.SUSPENDED:
                    await again(lambda: engine.resume(run_id, {"ok": run_id}, key=f"approve-{run_id}"))
                    result = await engine.wait(run_id)
                results[run_id] = result

            async with anyio.create_task_group() as group:
                for run_id in run_ids:
                    group.start_soon(finish, run_id)
        faults.disarm()
        listed = []
        cursor = None
        while True:
            page = await engine.list_runs(limit=100, cursor=cursor)
            listed.extend(page.runs)
            cursor = page.next_cursor
            if cursor is None:
                break

    statuses = Counter(r.status for r in results.values())
    assert statuses == {af.RunStatus.COMPLETED: runs}, (statuses, faults.failed)
    assert len(listed) == runs
    assert {info.status for info in listed} == {af.RunStatus.COMPLETED}
    reruns = 0
    for run_id, result in results.items():
        assert result.store["count"] == workload.MIXED_COUNT, (run_id, result.store)
        assert result.store["approved"] == {"ok": run_id}
        ran = workload.executions(run_id)
        counted = {key: n for key, n in ran.items() if "#attempt" not in key}
        assert len(counted) == workload.MIXED_COUNT, counted
        extra = sum(n - 1 for n in counted.values())
        # The documented bound: the action in flight runs again at most once per hand-over.
        assert extra <= backend.claimed[run_id], (run_id, counted, backend.claimed[run_id])
        reruns += extra
    return Outcome(faults.total_failed, sum(backend.claimed.values()), reruns)
