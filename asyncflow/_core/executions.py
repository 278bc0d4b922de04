"""The runs executing in one engine: launching them, recording their ends, and their leases.

:class:`Executions` is the engine's room where runs execute: it builds each
run's :class:`~asyncflow._core.checkpoints.RunDurability` and
:class:`~asyncflow._core.state.RunState`, hands the run to the runner,
records its end, and gives back what this engine holds and cannot finish (a
workflow not registered here, a version it cannot re-create, an engine that
closes or drains). It also keeps the leases: heartbeats for the runs here,
take-overs of runs left by engines that died, and retention. The
:class:`~asyncflow._core.engine.Engine` is the API on top of it.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup
from loguru import logger

from ..backends.base import Backend, RunInfo, SavedRun
from .checkpoints import RunDurability
from .clock import Clock
from .definitions import Registry
from .errors import LeaseLost, RunFailed
from .events import EventKind
from .records import RunResult, RunStatus
from .runner import Runner
from .serial import Codec, end_fields
from .state import RunState
from .trouble import GivenBack, MaintenanceTrouble, WriteTrouble
from .versions import Versions
from .watch import EventLog
from .workflow import Workflow


@attrs.define
class ActiveRun:
    """A run executing in this engine."""

    run_id: str
    # Made with the record, so a cancel that comes before the task starts still counts.
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    done: anyio.Event = attrs.field(factory=anyio.Event)
    result: RunResult | None = None
    cancel_requested: bool = False
    lease_lost: bool = False
    #: whether the lease was lost to a cancel made elsewhere (``None``: not known yet)
    cancelled_elsewhere: bool | None = None
    drained: bool = False  # stopped by Engine.drain after a checkpoint, and given back
    #: the run was resumed (here) while this execution of it still ran: it writes nothing more
    superseded: bool = False
    durability: RunDurability | None = None
    run: RunState | None = None
    #: launched by the engine.start that wrote it down (its first execution, in the starter's context)
    fresh: bool = False

    @property
    def running(self) -> bool:
        """Whether its execution has not ended yet."""
        return not self.done.is_set()


class Executions:
    """The runs one engine executes, and the leases it holds on them.

    Given what it needs: the backend, the registry and clock of the runs'
    checkpoints, the engine's owner name and lease, the codec of its backend,
    the runner that executes the runs, the engine's versions and episodes of
    failing writes, whether it keeps run events, and its registered workflows (by id; the
    engine adds to them).
    """

    def __init__(
        self,
        runner: Runner,
        workflows: dict[str, Workflow],
        versions: Versions,
        backend: Backend,
        codec: Codec,
        clock: Clock,
        registry: Registry,
        *,
        owner: str,
        lease: float,
        trouble: WriteTrouble,
        concurrency: int | None,
        keep_events: bool,
    ) -> None:
        self.runner, self.workflows, self.versions = runner, workflows, versions
        self.backend, self.codec, self.trouble = backend, codec, trouble
        self.owner, self.lease, self.clock, self.registry = owner, lease, clock, registry
        self.concurrency, self.keep_events = concurrency, keep_events
        #: episodes of failing maintenance ticks (heartbeats, looks for runs), logged once each
        self.maintenance = MaintenanceTrouble(backend.url)
        #: the event logs of the runs here (made again each time the engine opens)
        self.events = EventLog(backend, self.executes, keep_events, trouble)
        #: the runs executing here (and those that ended here since the last heartbeat), by id
        self.active: dict[str, ActiveRun] = {}
        #: the engine's task group while it is open
        self.group: TaskGroup | None = None
        self.closing = False
        self.draining = False  # (drain): runs stop after their next checkpoint and are given back
        self.wake: anyio.Event | None = None  # set by a backend's notice: look for runs now
        self._foreign: set[str] = set()  # workflows of runs left here for other engines (warned once)

    def new_event_log(self) -> EventLog:
        """Make the event log of the engine's next opening (a closed one takes no more events)."""
        self.events = EventLog(self.backend, self.executes, self.keep_events, self.trouble)
        return self.events

    def executes(self, run_id: str) -> bool:
        """Whether the run executes in this engine now (its events go to its log from here)."""
        return run_id in self.active

    def busy(self) -> list[str]:
        """The ids of the runs whose execution here has not ended."""
        return [run_id for run_id, active in self.active.items() if active.running]

    # ---- launching and executing ----------------------------------------------------------

    def launch(self, group: TaskGroup, saved: SavedRun, active: ActiveRun | None = None) -> None:
        """Execute ``saved`` here, in ``group`` (unless it executes here already)."""
        if active is None:
            active = self.active.get(saved.info.run_id)
            if active is not None and active.running:
                if active.superseded:  # (it stops at once: the run goes on here after it)
                    group.start_soon(self._launch_after, group, saved, active)
                return
            active = ActiveRun(saved.info.run_id)
            self.active[saved.info.run_id] = active
        group.start_soon(self.execute, saved, active)

    async def _launch_after(self, group: TaskGroup, saved: SavedRun, stale: ActiveRun) -> None:
        await stale.done.wait()
        if self.active.get(saved.info.run_id) is stale:
            del self.active[saved.info.run_id]
        self.launch(group, saved)

    def supersede(self, run_id: str) -> None:
        """The run was resumed here: an execution of it still running here (it missed that) stops now.

        (Say its lease ran out while it wrote its suspension, and a take-over
        here claimed the run again before that write went through.) It writes
        nothing more: the resumed run's execution begins once it has stopped.
        """
        active = self.active.get(run_id)
        if active is None or not active.running:
            return
        active.superseded = True
        active.lease_lost = True
        active.cancelled_elsewhere = False
        if active.durability is not None:
            active.durability.superseded = True
        active.scope.cancel()

    def holds(self, info: RunInfo) -> bool:
        """Whether the record says this engine holds the run (as a claim leaves it)."""
        return info.owner == self.owner and info.status in (RunStatus.RUNNING, RunStatus.SLEEPING)

    async def execute(self, saved: SavedRun, active: ActiveRun) -> None:
        """Execute one run to its end (or suspension), record it, and set ``active.done``."""
        info = saved.info
        try:
            workflow = self.workflows.get(info.workflow_id)
            if workflow is None:
                await self._leave_unknown_workflow(info)
                return
            if self.versions.differs(info):
                try:
                    workflow, why = await self.versions.workflow_for(info, workflow, saved)
                    if workflow is None:
                        if active.cancel_requested:  # (cancelled while this engine looked at it)
                            await self.release(info.run_id, status=RunStatus.CANCELLED)
                        else:
                            self.versions.leave(info, why)
                            await self.release(info.run_id)  # for an engine that can take it
                        return
                except anyio.get_cancelled_exc_class():
                    if self.closing:  # (given back, as a run in flight is)
                        with anyio.CancelScope(shield=True):
                            await self.release(info.run_id)
                    raise
            durability = active.durability = RunDurability(
                self.backend,
                self.registry,
                self.clock,
                self.owner,
                saved,
                self.trouble,
                self.lease,
                self.codec,
            )
            if self.draining:
                durability.after_commit = self.stop_after_checkpoint
            run = active.run = RunState(
                workflow,
                info.run_id,
                self.codec.restore(saved.store, self.clock),
                self.runner.max_insertions,
                self.runner.hub,
                # Durable runs carry messages as JSON, like child processes.
                self.runner.require_json or self.codec.requires_json,
                self.clock,
                durability,
            )
            tracing = self.runner.hub.tracing
            if tracing is not None and not active.fresh:
                tracing.run_continues(info.run_id, await self._trace_origin(info.run_id))
            result: RunResult | None = None
            with active.scope:
                try:
                    if active.cancel_requested:
                        # Cancelled before it began (the scope is cancelled): not one action runs.
                        await anyio.lowlevel.checkpoint()
                    result = await self.runner.execute(run)
                except RunFailed as failure:
                    result = failure.result
                    if isinstance(failure.error, GivenBack):
                        logger.warning("run {} stopped here: {}", info.run_id, failure.error)
                        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                            await self.release(info.run_id)
                        return
                    if isinstance(failure.error, LeaseLost):
                        active.lease_lost = True
                except anyio.get_cancelled_exc_class():
                    if (self.closing or active.drained) and not active.cancel_requested:
                        with anyio.CancelScope(shield=True):
                            await self.release(info.run_id)
                    raise
            if active.drained:
                return
            if active.lease_lost:
                if active.cancelled_elsewhere is None:  # (a checkpoint found the lease gone)
                    with anyio.CancelScope(shield=True):
                        active.cancelled_elsewhere = await self.cancelled_elsewhere(info.run_id)
                if active.superseded:
                    logger.info(
                        "run {} was resumed while an earlier execution of it still ran here; "
                        "that execution stopped",
                        info.run_id,
                    )
                elif active.cancelled_elsewhere:
                    logger.info(
                        "run {} was cancelled elsewhere (by another engine or process); "
                        "this engine stopped it",
                        info.run_id,
                    )
                else:
                    logger.warning(
                        "run {} was taken over by another engine; this engine stopped it", info.run_id
                    )
                return
            if result is None:  # cancelled through engine.cancel
                result = RunResult(
                    run_id=info.run_id,
                    workflow_id=info.workflow_id,
                    status=RunStatus.CANCELLED,
                    store=run.store.snapshot(),
                    log=run.log,
                    duration=0.0,
                )
            with anyio.CancelScope(shield=True):
                # The run's events first: a watcher that sees the end has seen all before it.
                try:
                    await self.events.flush(info.run_id)
                except Exception as exc:  # (kept: written again, as a checkpoint is; GivenBack if never)
                    run_id = info.run_id
                    what = f"the last events of run {run_id}"
                    await self.trouble.retry(what, lambda: self.events.flush(run_id), exc, self.lease)
                recorded = await self._record_end(info, result, durability)
            self.events.wake(info.run_id)
            if recorded:  # (else it is not the run's result: engine.wait reads the database's)
                active.result = result
        except Exception as exc:
            # One run's trouble (its database row, say) must not stop the engine's other runs:
            # this run is given back, for a restart or another engine to take over.
            logger.opt(exception=exc).error(
                "run {} stopped here: {}: {}; it is left for another engine to take over",
                info.run_id,
                type(exc).__name__,
                exc,
            )
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.release(info.run_id)
        finally:
            self.events.forget(info.run_id)
            tracing = self.runner.hub.tracing
            if tracing is not None:  # (before done: another execution of the run may begin after it)
                tracing.run_left(info.run_id, None if active.result is None else active.result.status.value)
            active.done.set()

    async def _trace_origin(self, run_id: str) -> dict[str, str] | None:
        """The trace context kept when the run was created (its log's first event), if any."""
        try:
            first = await self.backend.read_events(run_id, after=0, limit=1)
        except Exception as exc:  # (only a span link is missing: the run goes on)
            logger.warning(
                "run {}: its trace context could not be read ({}: {})", run_id, type(exc).__name__, exc
            )
            return None
        for _, data in first:
            trace = data.get("trace")
            if data.get("kind") == EventKind.RUN_CREATED.value and isinstance(trace, dict):
                return {str(key): str(value) for key, value in trace.items()}
        return None

    async def _leave_unknown_workflow(self, info: RunInfo) -> None:
        """Give back a run of a workflow not registered here, for an engine that has it (pools by workflow).

        It waits (``PENDING``, held by nobody) instead of failing; this engine's
        claims skip its version for ten leases.
        """
        if info.workflow_id not in self._foreign:
            self._foreign.add(info.workflow_id)
            logger.warning(
                "run {} is of workflow {!r}, which is not registered with this engine; it is left "
                "for an engine that has it (engine.register(workflow) to run it here)",
                info.run_id,
                info.workflow_id,
            )
        if info.workflow_version is not None:
            self.versions.leave(info, f"workflow {info.workflow_id!r} is not registered here")
        fields: dict[str, Any] = {}
        if info.status in (RunStatus.RUNNING, RunStatus.PENDING):
            fields["status"] = RunStatus.PENDING
        await self.release(info.run_id, **fields)

    async def _record_end(self, info: RunInfo, result: RunResult, durability: RunDurability) -> bool:
        """Record the run's end (or suspension); whether it was recorded (still this engine's run)."""
        fields = end_fields(info, result, durability.suspended_key)

        async def record() -> bool:
            if durability.superseded:  # (resumed meanwhile: the run is no longer this execution's)
                return False
            return await self.backend.update_run(
                info.run_id, holder=self.owner, now=self.clock.now(), **fields
            )

        try:
            updated = await record()
        except Exception as exc:
            # Held and written again as a checkpoint is; given back (GivenBack) if it never goes through.
            what = f"the end of run {info.run_id}"
            updated = await self.trouble.retry(what, record, exc, self.lease)
        if not updated:
            logger.warning(
                "run {} ended here but another engine owns it now; its end was not recorded", info.run_id
            )
        return updated

    async def release(self, run_id: str, **fields: Any) -> None:
        """Give a run this engine holds back (setting ``fields`` too): another engine may take it at once."""
        await self.backend.update_run(
            run_id, holder=self.owner, now=self.clock.now(), owner=None, lease_until=None, **fields
        )

    # ---- stopping runs here -----------------------------------------------------------------

    def drain(self) -> None:
        """Stop taking runs, and stop each run here after its next checkpoint (it is given back)."""
        self.draining = True
        for active in self.active.values():
            if active.durability is not None:
                active.durability.after_commit = self.stop_after_checkpoint

    def stop_after_checkpoint(self, run_id: str) -> None:
        """(Draining) stop the run here now that its last step is checkpointed; it is given back."""
        active = self.active.get(run_id)
        if active is not None and active.run is not None and not active.cancel_requested:
            active.run.interrupted = True
            active.drained = True
            active.scope.cancel()

    def interrupt_all(self) -> None:
        """(Closing) the runs in flight are left for the next engine: listeners hear RUN_INTERRUPTED."""
        for active in self.active.values():
            if active.run is not None and not active.cancel_requested:
                active.run.interrupted = True

    def notice(self, kind: str, run_id: str | None) -> None:
        """A backend's notice from another engine (see :meth:`Backend.on_notice`)."""
        if kind == "cancel" and run_id is not None:
            active = self.active.get(run_id)
            if active is not None and active.running and not active.cancel_requested:
                # Cancelled elsewhere (recorded there): stop at once, record nothing.
                active.lease_lost = True
                active.cancelled_elsewhere = True
                active.scope.cancel()
        elif kind == "work" and self.wake is not None:
            self.wake.set()

    async def cancelled_elsewhere(self, run_id: str) -> bool:
        """Whether a run this engine lost the lease of was cancelled (rather than taken over)."""
        try:
            info = await self.backend.get_run(run_id)
        except Exception:  # (only for the log line: a database error here changes nothing)
            return False
        return info is not None and info.status is RunStatus.CANCELLED

    # ---- leases -------------------------------------------------------------------------------

    async def take_over(self) -> None:
        """Claim runs free to take (new, given back, or of engines whose leases ran out) and launch them."""
        group = self.group
        if group is None or self.closing:
            return
        while True:
            limit = 100
            if self.concurrency is not None:
                limit = min(limit, self.concurrency - len(self.busy()))
                if limit <= 0:
                    return
            now = self.clock.now()
            # Shielded: runs claimed are launched (and, if the engine is closing, released
            # again at once), never left owned but idle until their lease runs out.
            with anyio.CancelScope(shield=True):
                claimed = await self.versions.claim(
                    self.owner, now=now, lease_until=now + self.lease, limit=limit
                )
                given_back = False
                # The executions here as the claim left them. A run claimed back while it executes
                # here (its lease ran out: the engine was starved) goes on in that execution, which
                # may change the run (end it, give it back) while it is loaded: not launched again.
                here = {info.run_id: self.active.get(info.run_id) for info in claimed}
                for info in claimed:
                    if self.versions.held(info):  # left before: for another engine to take
                        await self.release(info.run_id)
                        given_back = True
                        continue
                    earlier = here[info.run_id]
                    if earlier is not None and earlier.running:
                        continue
                    saved = await self.backend.load(info.run_id)
                    if self.active.get(info.run_id) is not earlier:
                        continue  # (executed here meanwhile, resumed say: what was loaded is out of date)
                    if saved is not None and not self.holds(saved.info):
                        # Changed since the claim (its execution here recorded its end, or it was
                        # resumed or cancelled meanwhile): not this engine's to run now.
                        continue
                    if saved is not None:
                        logger.info(
                            "taking over run {} of workflow {!r} ({})",
                            info.run_id,
                            info.workflow_id,
                            info.status,
                        )
                        self.launch(group, saved)
            if len(claimed) < limit or given_back:  # (runs given back would come back at once)
                return

    async def maintain(self, poll_interval: float, recover: bool, retention: timedelta | None) -> None:
        """Heartbeats, take-overs (if ``recover``) and retention, every ``poll_interval``, until cancelled."""
        ticks = 0
        beat_at = anyio.current_time()  # when the next heartbeat is due
        while True:
            with anyio.move_on_after(max(beat_at + poll_interval - anyio.current_time(), 0)):
                if self.wake is not None:
                    await self.wake.wait()
                    # (a burst of notices wakes the engine once)
                    await anyio.sleep(0.005)
            self.wake = anyio.Event()
            if anyio.current_time() < beat_at + poll_interval:
                # Woken by a notice (a run to take): only look for runs; heartbeats keep their pace.
                if recover and not self.draining:
                    try:
                        await self.take_over()
                    except Exception as exc:
                        self.maintenance.failed(exc)
                    else:
                        self.maintenance.worked()
                continue
            beat_at = anyio.current_time()
            ticks += 1
            try:
                now = self.clock.now()
                lost = await self.backend.heartbeat(
                    self.owner, self.busy(), now=now, lease_until=now + self.lease
                )
                for run_id in lost:
                    active = self.active.get(run_id)
                    if active is not None and active.running:
                        active.cancelled_elsewhere = await self.cancelled_elsewhere(run_id)
                        if not active.cancelled_elsewhere:
                            logger.warning("lost the lease of run {}; stopping it here", run_id)
                        active.lease_lost = True
                        active.scope.cancel()
                for run_id in [r for r, a in self.active.items() if not a.running]:
                    del self.active[run_id]
                if recover and not self.draining:
                    await self.take_over()
                if retention is not None and ticks % 60 == 1:
                    await self.backend.purge(finished_before=self.clock.now() - retention.total_seconds())
            except Exception as exc:
                # Heartbeats go on next time: a passing database error must not stop the engine
                # (nor fill its log: one line as an outage begins, one as it ends).
                self.maintenance.failed(exc)
            else:
                self.maintenance.worked()
