"""A backend wrapper whose writes fail: ``FaultyBackend(any_backend, faults)``.

It wraps any :class:`~asyncflow.backends.Backend` (memory, SQLite,
PostgreSQL: a backend joins the fault suite through ``backends.storages``)
and passes every call through, except that a write may fail *before* it
reaches the database, as a :class:`Faults` plan says: with the errors a real
database gives for a moment (a full disk, a timeout, "database is locked").
A failed write changes nothing, so writing it again is safe; that is the
contract of a backend's atomic writes that the engine relies on.

Reads never fail: the faults are in the writes, where the engine holds runs.
"""

from __future__ import annotations

import errno
import random
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from asyncflow.backends import Backend, RunInfo, RunPage, SavedRun
from asyncflow.backends.base import Checkpoint, StoreEntry, WorkflowVersion

#: the backend methods that write
WRITES = (
    "create_run",
    "checkpoint",
    "update_run",
    "claim",
    "heartbeat",
    "delete_run",
    "purge",
    "save_version",
    "append_events",
)


def disk_full() -> Exception:
    """The error of a write to a full disk."""
    return OSError(errno.ENOSPC, "No space left on device")


def timed_out() -> Exception:
    """The error of a write that waited too long for the database."""
    return TimeoutError("the database did not answer in time")


def locked() -> Exception:
    """SQLite's error when another connection holds the write lock for too long."""
    return sqlite3.OperationalError("database is locked")


ERRORS: tuple[Callable[[], Exception], ...] = (disk_full, timed_out, locked)


class Faults:
    """Which writes fail: none until :meth:`arm` is called, then as the plan says.

    Args:
        seed: seeds the choice of which writes fail and with which error.
        probability: the chance that each write fails.
        first: the first ``first`` writes after :meth:`arm` fail, whatever ``probability`` says.
        only: the write methods that may fail (default: every one of :data:`WRITES`).
        outage_at: at this write after :meth:`arm` (counting every write), an outage begins:
            every write fails for ``outage`` seconds, as when a disk stays full for a while.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        probability: float = 0.0,
        first: int = 0,
        only: Collection[str] = WRITES,
        outage_at: int | None = None,
        outage: float = 0.0,
    ) -> None:
        unknown = set(only) - set(WRITES)
        if unknown:
            raise ValueError(f"not backend writes: {sorted(unknown)}")
        self.random = random.Random(seed)
        self.probability = probability
        self.first = first
        self.only = frozenset(only)
        self.armed = False
        self.outage_at = outage_at
        self.outage = outage
        self.outage_until: float | None = None
        self.writes = 0
        #: how many writes of each method failed, and how many went through
        self.failed: dict[str, int] = dict.fromkeys(WRITES, 0)
        self.written: dict[str, int] = dict.fromkeys(WRITES, 0)

    def arm(self) -> None:
        """From now on, writes fail as planned."""
        self.armed = True

    def disarm(self) -> None:
        """From now on, no write fails."""
        self.armed = False

    def check(self, method: str) -> None:
        """Raise the planned error for this call of ``method``, or count it written."""
        if self.armed and method in self.only:
            self.writes += 1
            error: Exception | None = None
            if self.writes == self.outage_at:
                self.outage_until = time.monotonic() + self.outage
            if self.outage_until is not None and time.monotonic() < self.outage_until:
                error = disk_full()
            elif self.first > 0:
                self.first -= 1
                error = ERRORS[self.failed[method] % len(ERRORS)]()
            elif self.probability and self.random.random() < self.probability:
                error = self.random.choice(ERRORS)()
            if error is not None:
                self.failed[method] += 1
                raise error
        self.written[method] += 1

    @property
    def total_failed(self) -> int:
        """How many writes failed, of every method."""
        return sum(self.failed.values())


class FaultyBackend(Backend):
    """``inner`` with writes that fail as ``faults`` plans (before they reach the database)."""

    def __init__(self, inner: Backend, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults
        self.url = inner.url
        self.persistent = inner.persistent  # type: ignore[misc]  # (as the wrapped backend)

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def create_run(self, info: RunInfo, store: Sequence[StoreEntry]) -> tuple[RunInfo, bool]:
        self.faults.check("create_run")
        return await self.inner.create_run(info, store)

    async def get_run(self, run_id: str) -> RunInfo | None:
        return await self.inner.get_run(run_id)

    async def list_runs(self, **options: Any) -> RunPage:  # type: ignore[override]
        return await self.inner.list_runs(**options)

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        self.faults.check("checkpoint")
        await self.inner.checkpoint(checkpoint)

    async def load(self, run_id: str) -> SavedRun | None:
        return await self.inner.load(run_id)

    async def update_run(self, run_id: str, **options: Any) -> bool:  # type: ignore[override]
        self.faults.check("update_run")
        return await self.inner.update_run(run_id, **options)

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
        self.faults.check("claim")
        return await self.inner.claim(
            owner, now=now, lease_until=lease_until, limit=limit, run_id=run_id, skip_versions=skip_versions
        )

    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], *, now: float, lease_until: float
    ) -> set[str]:
        self.faults.check("heartbeat")
        return await self.inner.heartbeat(owner, run_ids, now=now, lease_until=lease_until)

    async def delete_run(self, run_id: str) -> bool:
        self.faults.check("delete_run")
        return await self.inner.delete_run(run_id)

    async def purge(self, *, finished_before: float) -> int:
        self.faults.check("purge")
        return await self.inner.purge(finished_before=finished_before)

    def on_notice(self, callback: Callable[[str, str | None], None] | None) -> None:
        self.inner.on_notice(callback)

    async def save_version(self, version: WorkflowVersion) -> None:
        self.faults.check("save_version")
        await self.inner.save_version(version)

    async def load_versions(self, version: str) -> list[WorkflowVersion]:
        return await self.inner.load_versions(version)

    @property  # type: ignore[override]
    def keeps_events(self) -> bool:  # (as the wrapped backend)
        return self.inner.keeps_events

    async def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> int | None:
        self.faults.check("append_events")
        return await self.inner.append_events(run_id, events)

    async def append_events_of_runs(
        self, events: Mapping[str, Sequence[dict[str, Any]]]
    ) -> dict[str, int] | None:
        # One write, all or none, as the wrapped backend makes it (the default would write run
        # after run, so that a fault in the middle left the first runs' events written).
        self.faults.check("append_events")
        return await self.inner.append_events_of_runs(events)

    async def read_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]:
        return await self.inner.read_events(run_id, after=after, limit=limit)

    def events_mark(self, run_id: str) -> object:
        return self.inner.events_mark(run_id)

    async def wait_events(self, run_id: str, *, within: float, mark: object = None) -> None:
        await self.inner.wait_events(run_id, within=within, mark=mark)
