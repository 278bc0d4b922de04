"""Checkpoints: the durable engine's implementation of the runner's :class:`Durability` seam.

One :class:`RunDurability` per execution of a durable run: it knows what
the run did before (completed actions and their plan changes, started
stages, failed attempts, sleeps) and writes every new checkpoint to the
backend under the engine's lease.

A checkpoint the backend fails to write (a full disk for a moment, a
locked database, a timeout) is never the action's failure: it is kept and
written again with back-off while the run is held, for as long as the
engine's lease lasts; then the run is given back (:class:`GivenBack`), for
this engine or another to continue it from its last commit. The engine
logs each episode of failing writes once when it begins and once when it
ends (:class:`WriteTrouble`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
from loguru import logger

from ..backends.base import Backend, Checkpoint, SavedRun, StoreEntry
from . import faults
from .actions import Action
from .clock import Clock
from .definitions import Registry
from .durable import Durability, Op
from .errors import LeaseLost
from .jsonvalues import json_value_check
from .records import CheckpointKind, RunStatus
from .serial import store_entry
from .store import Store, _Meta
from .workflow import Stage

if TYPE_CHECKING:
    from .plan import ActionNode, StageNode

T = TypeVar("T")

#: the first pause before a failed write is tried again, and the longest
FIRST_RETRY_DELAY = 0.01
LONGEST_RETRY_DELAY = 1.0


class GivenBack(LeaseLost):
    """A checkpoint could not be written while the lease lasted: the engine gives the run back.

    Nothing of the run is recorded as failed: it continues from its last
    commit, here after the lease runs out or in another engine. A
    :class:`LeaseLost`, so it is never retried nor recovered from.
    """


class WriteTrouble:
    """One engine's episodes of failing writes: each logged once as it begins and once as it ends.

    An episode begins with the first write that fails and ends when no write
    is waiting to be tried again; the lines name the database and the cause.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.waiting = 0
        self.since: float | None = None
        self.failures = 0

    def failed(self, what: str, exc: BaseException) -> None:
        """``what`` failed with ``exc`` and will be tried again."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            logger.warning(
                "writes to {} are failing ({}: {}, writing {}); checkpoints are kept and written "
                "again with back-off, and their runs held, not failed",
                self.url,
                type(exc).__name__,
                exc,
                what,
            )

    async def retry(self, what: str, write: Callable[[], Awaitable[T]], exc: Exception, hold: float) -> T:
        """Call ``write`` again (it failed with ``exc``) with back-off until it goes through.

        Raises:
            GivenBack: it still failed after ``hold`` seconds.
            LeaseLost: the backend says the run is no longer this engine's.
        """
        self.waiting += 1
        try:
            started = time.monotonic()
            delay = FIRST_RETRY_DELAY
            # At least a few tries while the run is held, however short the lease.
            longest = min(LONGEST_RETRY_DELAY, hold / 8)
            while True:
                self.failed(what, exc)
                if time.monotonic() - started >= hold:
                    raise GivenBack(
                        f"could not write {what} to {self.url} for {hold:g}s ({type(exc).__name__}: "
                        f"{exc}); the run is given back, to continue from its last commit"
                    ) from exc
                # Jittered, so runs held together do not all try again at once.
                await anyio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, longest)
                try:
                    written = await write()
                except LeaseLost:
                    raise
                except Exception as again:
                    exc = again
                else:
                    self.waiting -= 1
                    self.went_through()
                    self.waiting += 1  # (taken off again below)
                    return written
        finally:
            self.waiting -= 1

    def went_through(self) -> None:
        """A write went through: the episode ends, unless other writes still wait to be tried again."""
        if self.waiting == 0 and self.since is not None:
            logger.info(
                "writes to {} go through again, after {:.2f}s and {} failed writes",
                self.url,
                time.monotonic() - self.since,
                self.failures,
            )
            self.since = None
            self.failures = 0


# Module constants for the per-action path (an enum member lookup costs about a plain await).
_ACTION = CheckpointKind.ACTION
_STAGE = CheckpointKind.STAGE


class RunDurability(Durability):
    """The engine's side of one durable run: what was done before, and where checkpoints go.

    Given only what it needs: the backend the checkpoints go to, the registry
    that names the actions a run inserts, the clock of durable sleeps, the
    owner whose lease the checkpoints are written under, and the saved run.
    """

    def __init__(
        self,
        backend: Backend,
        registry: Registry,
        clock: Clock,
        owner: str,
        saved: SavedRun,
        trouble: WriteTrouble | None = None,
        hold: float = 10.0,
    ) -> None:
        self.backend = backend
        #: the engine's episodes of failing writes, and how long a run is held through one
        self.trouble = trouble if trouble is not None else WriteTrouble(backend.url)
        self.hold = hold
        self.registry = registry
        self.clock = clock
        self.persistent = backend.persistent
        self.run_id = saved.info.run_id
        self.owner = owner
        self.done: dict[str, list[Op]] = {}
        self.stages: set[str] = set()
        self.retries: dict[str, tuple[int, float]] = {}
        self.sleeps: dict[str, float] = {}
        self.seq = 0
        self.sleeping = saved.info.status is RunStatus.SLEEPING
        #: called with the run's id after each committed action, once set (an engine draining)
        self.after_commit: Callable[[str], None] | None = None
        for checkpoint in saved.checkpoints:
            self.seq = max(self.seq, checkpoint.seq)
            key = checkpoint.step_key
            if checkpoint.kind == CheckpointKind.ACTION:
                ops = checkpoint.ops
                self.done[key] = (json.loads(ops) if self.persistent else ops) if ops else []
            elif checkpoint.kind == CheckpointKind.STAGE:
                self.stages.add(key)
            elif checkpoint.kind == CheckpointKind.ATTEMPT:
                self.retries[key] = (checkpoint.attempts, checkpoint.at or 0.0)
            elif checkpoint.kind == CheckpointKind.SLEEP:
                self.sleeps[key] = checkpoint.at or 0.0
        if saved.info.suspended_step is not None and saved.info.status is not RunStatus.SUSPENDED:
            self.resume_step = saved.info.suspended_step
            self.resume_data = saved.info.resume_data

    # ---- what happened before ------------------------------------------------------------

    def completed(self, node: ActionNode) -> list[Op] | None:
        return self.done.get(node.key)

    def stage_started(self, node: StageNode) -> bool:
        return node.id in self.stages

    def retry_state(self, node: ActionNode) -> tuple[int, float] | None:
        return self.retries.get(node.key)

    # ---- checkpoints ------------------------------------------------------------------------

    async def _write(self, checkpoint: Checkpoint) -> None:
        if faults._PLAN is not None:
            faults.hit("before_commit")
        try:
            await self.backend.checkpoint(checkpoint)
        except LeaseLost:
            raise
        except Exception as exc:
            # The database's trouble, not the action's: held and written again, or given back.
            what = f"the {checkpoint.kind} checkpoint of run {self.run_id}"
            await self.trouble.retry(what, lambda: self.backend.checkpoint(checkpoint), exc, self.hold)
        else:
            if self.trouble.since is not None:  # (an episode that ended with runs given back)
                self.trouble.went_through()
        if faults._PLAN is not None:
            faults.hit("after_commit")

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _put(self, key: str, value: Any, meta: _Meta | None) -> StoreEntry:
        if meta is None and self.persistent:  # the common case, once per key an action writes
            return StoreEntry(key, json_value_check(key, value))
        return store_entry(key, value, meta, self.persistent)

    async def commit_stage(self, node: StageNode, initial: dict[str, Any]) -> None:
        puts = tuple(self._put(key, value, None) for key, value in initial.items())
        await self._write(Checkpoint(self.run_id, self.owner, node.id, _STAGE, puts=puts, seq=self._next()))
        self.stages.add(node.id)

    async def commit_action(self, node: ActionNode, overlay: Store | None, ops: list[Op] | None) -> None:
        # Once per committed action: kept to the few steps the common case needs.
        puts: tuple[StoreEntry, ...] = ()
        deletes: tuple[str, ...] = ()
        if overlay is not None:
            # Deletes go first, so a key deleted and written again moves to the end, as in memory.
            if overlay._deleted:
                deletes = tuple(overlay._deleted)
            values = overlay._values
            if values:
                put, meta = self._put, overlay._meta
                puts = tuple([put(key, value, meta.get(key)) for key, value in values.items()])
        plan_ops = (json.dumps(ops) if self.persistent else list(ops)) if ops else None
        status = RunStatus.RUNNING if self.sleeping else None
        self.sleeping = False
        self.seq = seq = self.seq + 1
        checkpoint = Checkpoint(
            self.run_id,
            self.owner,
            node.key,
            _ACTION,
            puts,
            deletes,
            plan_ops,
            node.attempts,
            None,
            status,
            seq,
        )
        await self._write(checkpoint)
        if self.after_commit is not None:
            self.after_commit(self.run_id)
            await anyio.lowlevel.checkpoint()  # (a stop it asked for comes here, before the next step)

    async def commit_attempt(self, node: ActionNode, attempts: int, retry_at: float) -> None:
        await self._write(
            Checkpoint(
                self.run_id,
                self.owner,
                node.key,
                CheckpointKind.ATTEMPT,
                attempts=attempts,
                at=retry_at,
                seq=self._next(),
            )
        )

    async def begin_sleep(self, node: ActionNode, seconds: float) -> float:
        key = node.key
        wake_at = self.sleeps.get(key)
        if wake_at is None:
            wake_at = self.clock.now() + seconds
            await self._write(
                Checkpoint(
                    self.run_id,
                    self.owner,
                    key,
                    CheckpointKind.SLEEP,
                    at=wake_at,
                    status=RunStatus.SLEEPING,
                    seq=self._next(),
                )
            )
            self.sleeps[key] = wake_at
        self.sleeping = True
        return wake_at

    # ---- references -----------------------------------------------------------------------

    def reference(self, action: Action, where: str) -> dict[str, Any]:
        if not self.persistent:
            return {"object": action}
        return self.registry.reference(action, where=where)

    def stage_definition(self, stage: Stage, where: str) -> dict[str, Any]:
        if not self.persistent:
            return {"object": stage}
        return self.registry.stage_definition(stage, where=where)

    def resolve(self, ref: dict[str, Any], where: str) -> Action:
        found = ref.get("object")
        if isinstance(found, Action):
            return found
        return self.registry.resolve(ref, where=where)

    def stage_from_definition(self, definition: dict[str, Any], where: str) -> Stage:
        found = definition.get("object")
        if isinstance(found, Stage):
            return found
        return self.registry.stage_from_definition(definition, where=where)
