"""Run handles: what ``engine.start`` and ``engine.resume`` give back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..backends.base import RunInfo
from .events import RunEvent
from .executions import ActiveRun
from .records import RunResult

if TYPE_CHECKING:
    from .engine import Engine


class RunHandle:
    """A started run: its id, and ways to wait for it, inspect it and cancel it."""

    __slots__ = ("_active", "_engine", "created", "run_id")

    def __init__(
        self, engine: Engine, run_id: str, active: ActiveRun | None = None, *, created: bool = True
    ) -> None:
        self._engine = engine
        self.run_id = run_id
        #: whether ``engine.start`` started this run (``False``: its idempotency key found it;
        #: for ``engine.resume``, whether this call resumed it)
        self.created = created
        self._active = active  # the execution this handle started, if it runs here

    async def result(self) -> RunResult:
        """Wait until the run has ended (or is suspended) and return its result (same as ``engine.wait``)."""
        active = self._active
        if active is not None:
            await active.done.wait()
            if active.result is not None and not active.lease_lost:
                return active.result
        return await self._engine.wait(self.run_id)

    async def info(self) -> RunInfo:
        """What the database knows of the run now."""
        return await self._engine.get_run(self.run_id)

    async def cancel(self) -> None:
        """Cancel the run (see :meth:`Engine.cancel`)."""
        await self._engine.cancel(self.run_id)

    def watch(self, after: str | None = None) -> AsyncIterator[RunEvent]:
        """The run's events as they happen (see :meth:`Engine.watch`)."""
        return self._engine.watch(self.run_id, after=after)

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"
