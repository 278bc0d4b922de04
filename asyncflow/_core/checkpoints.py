"""Checkpoints: the durable engine's implementation of the runner's :class:`Durability` seam.

One :class:`RunDurability` per execution of a durable run: it knows what
the run did before (completed actions and their plan changes, started
stages, failed attempts, sleeps) and writes every new checkpoint to the
backend under the engine's lease.

A checkpoint the backend fails to write (a full disk for a moment, a
locked database, a timeout) is never the action's failure: it is kept and
written again with back-off while the run is held, for as long as the
engine's lease lasts; then the run is given back (:class:`~asyncflow._core.trouble.GivenBack`), for
this engine or another to continue it from its last commit. The engine
logs each episode of failing writes once when it begins and once when it
ends (:class:`~asyncflow._core.trouble.WriteTrouble`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..backends.base import Backend, Checkpoint, SavedRun, StoreEntry
from . import faults
from .actions import Action
from .clock import Clock
from .definitions import Registry
from .durable import Durability, Op
from .errors import LeaseLost
from .records import CheckpointKind, RunStatus
from .serial import Codec, codec_for
from .store import Store
from .trouble import WriteTrouble
from .workflow import Stage

if TYPE_CHECKING:
    from .plan import ActionNode, StageNode


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
        codec: Codec | None = None,
    ) -> None:
        self.backend = backend
        #: how values, plan changes and inserted steps reach the backend
        self.codec = codec if codec is not None else codec_for(backend)
        #: the engine's episodes of failing writes, and how long a run is held through one
        self.trouble = trouble if trouble is not None else WriteTrouble(backend.url)
        self.hold = hold
        self.registry = registry
        self.clock = clock
        self.run_id = saved.info.run_id
        self.owner = owner
        self.done: dict[str, list[Op]] = {}
        self.stages: set[str] = set()
        self.retries: dict[str, tuple[int, float]] = {}
        self.sleeps: dict[str, float] = {}
        self.seq = 0
        self.sleeping = saved.info.status is RunStatus.SLEEPING
        #: set when the run was resumed while this execution still ran: it writes nothing more
        self.superseded = False
        #: called with the run's id after each committed action, once set (an engine draining)
        self.after_commit: Callable[[str], None] | None = None
        for checkpoint in saved.checkpoints:
            self.seq = max(self.seq, checkpoint.seq)
            key = checkpoint.step_key
            if checkpoint.kind == CheckpointKind.ACTION:
                ops = checkpoint.ops
                self.done[key] = self.codec.decode_ops(ops) if ops else []
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
        if faults.CRASH_PLAN is not None:
            faults.hit("before_commit")
        try:
            await self._send(checkpoint)
        except LeaseLost:
            raise
        except Exception as exc:
            # The database's trouble, not the action's: held and written again, or given back.
            what = f"the {checkpoint.kind} checkpoint of run {self.run_id}"
            await self.trouble.retry(what, lambda: self._send(checkpoint), exc, self.hold)
        else:
            if self.trouble.since is not None:  # (an episode that ended with runs given back)
                self.trouble.went_through()
        if faults.CRASH_PLAN is not None:
            faults.hit("after_commit")

    async def _send(self, checkpoint: Checkpoint) -> None:
        if self.superseded:
            raise LeaseLost(
                f"run {self.run_id!r} was resumed while this execution of it still ran; it stops here"
            )
        await self.backend.checkpoint(checkpoint)

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    async def commit_stage(self, node: StageNode, initial: dict[str, Any]) -> None:
        entry = self.codec.entry
        puts = tuple(entry(key, value, None) for key, value in initial.items())
        await self._write(Checkpoint(self.run_id, self.owner, node.id, _STAGE, puts=puts, seq=self._next()))
        self.stages.add(node.id)

    async def commit_action(self, node: ActionNode, overlay: Store | None, ops: list[Op] | None) -> None:
        # Once per committed action: kept to the few steps the common case needs.
        puts: tuple[StoreEntry, ...] = ()
        deletes: tuple[str, ...] = ()
        if overlay is not None:
            # Deletes go first, so a key deleted and written again moves to the end, as in memory.
            deleted, values, meta = overlay.changes()
            if deleted:
                deletes = tuple(deleted)
            if values:
                put = self.codec.entry  # (bound once: called per key the action wrote)
                puts = tuple([put(key, value, meta.get(key)) for key, value in values.items()])
        plan_ops = self.codec.encode_ops(ops) if ops else None
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
        return self.codec.reference(self.registry, action, where)

    def stage_definition(self, stage: Stage, where: str) -> dict[str, Any]:
        return self.codec.stage_definition(self.registry, stage, where)

    def resolve(self, ref: dict[str, Any], where: str) -> Action:
        return self.codec.resolve(self.registry, ref, where)

    def stage_from_definition(self, definition: dict[str, Any], where: str) -> Stage:
        return self.codec.stage_from_definition(self.registry, definition, where)
