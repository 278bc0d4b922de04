"""The in-memory backend: runs live as long as the process (the default for tests)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import attrs

from .._core.errors import LeaseLost
from .._core.records import RunStatus, StepRows
from .base import (
    Backend,
    Checkpoint,
    RunInfo,
    RunPage,
    SavedRun,
    StoreEntry,
    WorkflowVersion,
    check_updatable,
    decode_cursor,
    encode_cursor,
    run_id_taken,
    shape_key,
)

_CLAIMABLE = frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SLEEPING})


class _Run:
    __slots__ = ("checkpoints", "events", "info", "store")

    def __init__(self, info: RunInfo, store: Sequence[StoreEntry]) -> None:
        self.info = info
        self.store: dict[str, StoreEntry] = {entry.key: entry for entry in store}
        self.checkpoints: list[Checkpoint] = []
        self.events: list[dict[str, Any]] = []


class MemoryBackend(Backend):
    """Keeps runs in a dict. Nothing survives the process, so store values need not be JSON."""

    persistent = False
    keeps_events = True

    def __init__(self) -> None:
        self.url = "memory://"
        self._runs: dict[str, _Run] = {}
        self._by_key: dict[str, str] = {}
        self._versions: dict[str, WorkflowVersion] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to close (the runs stay while the object lives)."""

    async def create_run(self, info: RunInfo, store: Sequence[StoreEntry]) -> tuple[RunInfo, bool]:
        """Insert the run unless its idempotency key is taken."""
        key = info.idempotency_key
        if key is not None and key in self._by_key:
            return self._runs[self._by_key[key]].info, False
        if info.run_id in self._runs:
            raise run_id_taken(info.run_id)
        self._runs[info.run_id] = _Run(info, store)
        if key is not None:
            self._by_key[key] = info.run_id
        return info, True

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run, or ``None``."""
        run = self._runs.get(run_id)
        return run.info if run is not None else None

    async def list_runs(
        self, *, status: RunStatus | None, workflow_id: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        """Newest first, filtered, paginated by (created_at, run_id)."""
        infos = sorted(
            (run.info for run in self._runs.values()), key=lambda i: (i.created_at, i.run_id), reverse=True
        )
        if cursor is not None:
            after = decode_cursor(cursor)
            infos = [i for i in infos if (i.created_at, i.run_id) < after]
        infos = [
            i
            for i in infos
            if (status is None or i.status is status)
            and (workflow_id is None or i.workflow_id == workflow_id)
        ]
        page = infos[:limit]
        more = len(infos) > limit
        return RunPage(page, encode_cursor(page[-1].created_at, page[-1].run_id) if more and page else None)

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Apply the checkpoint if the owner still holds the run."""
        run = self._runs.get(checkpoint.run_id)
        if run is None or run.info.owner != checkpoint.owner:
            raise LeaseLost(f"run {checkpoint.run_id!r} is no longer owned by engine {checkpoint.owner!r}")
        for key in checkpoint.deletes:
            run.store.pop(key, None)
        for entry in checkpoint.puts:
            run.store[entry.key] = entry
        run.checkpoints.append(checkpoint)
        if checkpoint.status is not None:
            run.info = attrs.evolve(run.info, status=checkpoint.status)
        if checkpoint.kind == "sleep":
            run.info = attrs.evolve(run.info, wake_at=checkpoint.at)

    async def load(self, run_id: str) -> SavedRun | None:
        """The run with its store and checkpoints."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        return SavedRun(run.info, list(run.store.values()), list(run.checkpoints))

    async def update_run(
        self,
        run_id: str,
        *,
        holder: str | None = None,
        expect: frozenset[RunStatus] | None = None,
        now: float,
        **fields: Any,
    ) -> bool:
        """Set fields when the conditions hold."""
        check_updatable(fields)
        run = self._runs.get(run_id)
        if run is None or (holder is not None and run.info.owner != holder):
            return False
        if expect is not None and run.info.status not in expect:
            return False
        steps = fields.get("steps")
        if isinstance(steps, StepRows):
            fields["steps"] = steps.dicts()
        run.info = attrs.evolve(run.info, updated_at=now, **fields)
        return True

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
        """Take free runs (pending, or with an expired lease), but none of ``skip_versions``."""
        candidates = (
            [self._runs[run_id]]
            if run_id is not None and run_id in self._runs
            else ([] if run_id is not None else list(self._runs.values()))
        )
        free = [
            run
            for run in candidates
            if run.info.status in _CLAIMABLE
            and (run.info.owner is None or (run.info.lease_until or 0.0) < now)
            and run.info.workflow_version not in skip_versions
        ]
        claimed = []
        for run in sorted(free, key=lambda run: run.info.created_at)[:limit]:  # the oldest first
            info = run.info
            status = RunStatus.SLEEPING if info.status is RunStatus.SLEEPING else RunStatus.RUNNING
            run.info = attrs.evolve(info, owner=owner, lease_until=lease_until, status=status, updated_at=now)
            claimed.append(run.info)
        return claimed

    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], *, now: float, lease_until: float
    ) -> set[str]:
        """Extend leases still held by ``owner``."""
        lost = set()
        for run_id in run_ids:
            run = self._runs.get(run_id)
            if run is None or run.info.owner != owner:
                lost.add(run_id)
            else:
                run.info = attrs.evolve(run.info, lease_until=lease_until)
        return lost

    async def delete_run(self, run_id: str) -> bool:
        """Forget the run."""
        run = self._runs.pop(run_id, None)
        if run is None:
            return False
        if run.info.idempotency_key is not None:
            self._by_key.pop(run.info.idempotency_key, None)
        return True

    async def purge(self, *, finished_before: float) -> int:
        """Forget finished runs last updated before the time."""
        old = [
            r.info.run_id
            for r in self._runs.values()
            if r.info.status.finished and r.info.updated_at < finished_before
        ]
        for run_id in old:
            await self.delete_run(run_id)
        return len(old)

    async def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> int | None:
        """Add the events to the run's log (kept as they are: payloads need not be JSON)."""
        run = self._runs.get(run_id)
        if run is None or not events:
            return None
        run.events.extend(events)
        return len(run.events)

    async def read_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]:
        """The run's events numbered after ``after``."""
        run = self._runs.get(run_id)
        if run is None:
            return []
        start = max(after, 0)
        return [(start + i + 1, data) for i, data in enumerate(run.events[start : start + limit])]

    async def save_version(self, version: WorkflowVersion) -> None:
        """Keep ``version`` unless one with its key is kept."""
        self._versions.setdefault(version.version, version)

    async def load_versions(self, version: str) -> list[WorkflowVersion]:
        """The versions kept with the shape key of ``version``, ``version`` itself first."""
        key = shape_key(version)
        same = [v for v in self._versions.values() if shape_key(v.version) == key]
        return sorted(same, key=lambda v: v.version != version)
