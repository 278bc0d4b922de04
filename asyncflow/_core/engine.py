"""The durable engine: runs that survive crashes, suspend and resume, sleep, and are managed.

An :class:`Engine` runs workflows against a backend. Each run is written
down before it starts; after each action, the action's store changes, plan
changes and completion are committed in one transaction before the run
moves on. An engine that opens a database with interrupted runs takes them
over: it rebuilds each run's plan from the registered workflow, replays the
recorded plan changes, skips the actions that completed and runs the one
that was in flight again (at least once: ``ctx.idempotency_key`` lets an
action deduplicate its side effects).

Each run records the version of its workflow it started on (which action
is in each place its checkpoints can name), and the backend keeps each
version's definition; a run whose workflow changed since goes on on the
right one (see :class:`~asyncflow._core.versions.Versions`).

Runs are claimed with a lease that the engine renews while it runs them, so
two engines on one database never run the same run at once; the runs of an
engine that died are taken over once its leases expire.

What is checkpointed is the work of actions. Middleware wraps each execution
of a run and runs again after a restart or a resume; what it writes to the
store is not checkpointed, so keep lasting data in actions, ``Stage(initial=)``
or ``engine.start(store=)``, and let middleware write only what it can write
again (``mw.inject_store`` included).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Awaitable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import attrs
from anyio.abc import TaskGroup
from loguru import logger

from ..backends import Backend, Checkpoint, RunInfo, RunPage, SavedRun, StoreEntry, open_backend
from . import faults
from .actions import Action, check_text, text_error_at
from .clock import SYSTEM_CLOCK, Clock
from .definitions import Registry
from .definitions import registry as global_registry
from .durable import Durability, Op, exact_json, json_value_check
from .errors import (
    InvalidDefinition,
    LeaseLost,
    NotSerializable,
    RecordedError,
    RunFailed,
    RunStateError,
    UnknownRun,
)
from .isolation.process import ProcessPool
from .records import STEP_COLUMNS, RunResult, RunStatus, StepRecord, StepRows, StepStatus, step_rows
from .runner import REPLAYED, Runner, RunState, new_run_id
from .store import Store, StoreData, _Meta, typed_name
from .versions import Versions
from .workflow import Stage, Workflow

if TYPE_CHECKING:
    from .plan import ActionNode, StageNode

_ENDED_OR_PARKED = frozenset({s for s in RunStatus if s.finished} | {RunStatus.SUSPENDED})


class UnknownWorkflow(InvalidDefinition, LookupError):
    """A run names a workflow that was not registered with the engine."""


@attrs.define
class _Active:
    """A run executing in this engine."""

    run_id: str
    # Made with the record, so a cancel that comes before the task starts still counts.
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    done: anyio.Event = attrs.field(factory=anyio.Event)
    result: RunResult | None = None
    cancel_requested: bool = False
    lease_lost: bool = False
    run: RunState | None = None


class RunHandle:
    """A started run: its id, and ways to wait for it, inspect it and cancel it."""

    __slots__ = ("_active", "_engine", "run_id")

    def __init__(self, engine: Engine, run_id: str, active: _Active | None = None) -> None:
        self._engine = engine
        self.run_id = run_id
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

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"


class Engine:
    """Runs workflows durably against a backend.

    ::

        engine = af.Engine("sqlite:///runs.db")
        engine.register(workflow)
        async with engine:                       # opens the database, recovers interrupted runs
            handle = await engine.start(workflow, store={"order": 42})
            result = await handle.result()

    Args:
        url: ``None``/``"memory://"`` (in memory), ``"sqlite:///path.db"``, or a
            :class:`~asyncflow.backends.Backend`.
        runner: the :class:`~asyncflow.Runner` whose middleware, defaults and
            listeners the runs use (a default one otherwise).
        registry: names for actions (looked up before :data:`asyncflow.registry`).
        recover: take over interrupted runs when opening, and runs of dead
            engines while open (default true).
        retention: delete finished runs this long after they ended.
        clock: time for leases, sleeps, back-offs and TTLs (a
            :class:`~asyncflow.testing.FakeClock` in tests).
        lease: seconds a claim on a run holds without a heartbeat.
        poll_interval: seconds between heartbeats and looks for runs to take over.
        process_pool: warm child processes for the isolated stages of its runs
            (``Stage(isolation="process")``), set on its runner; the engine
            ends the pool's children when it closes.
    """

    def __init__(
        self,
        url: str | Backend | None = None,
        *,
        runner: Runner | None = None,
        registry: Registry | None = None,
        recover: bool = True,
        retention: timedelta | None = None,
        clock: Clock | None = None,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        owner: str | None = None,
        process_pool: ProcessPool | None = None,
    ) -> None:
        self.backend = open_backend(url)
        self.clock: Clock = clock or (runner.clock if runner is not None else SYSTEM_CLOCK)
        self.runner = runner if runner is not None else Runner(clock=self.clock)
        if process_pool is not None:
            if not isinstance(process_pool, ProcessPool):
                raise TypeError(f"process_pool must be an af.ProcessPool, got {process_pool!r}")
            if self.runner.process_pool not in (None, process_pool):
                raise ValueError("the runner given to the engine has another process_pool; pass one of them")
            self.runner.process_pool = process_pool
        self.process_pool = self.runner.process_pool
        self.registry = registry if registry is not None else global_registry
        self.recover = recover
        if retention is not None:
            if not isinstance(retention, timedelta):
                raise TypeError(f"retention must be a timedelta, got {retention!r}")
            if retention < timedelta(0):
                raise ValueError(f"retention must not be negative, got {retention!r}")
        self.retention = retention
        if not lease > 0 or not poll_interval > 0:
            raise ValueError(f"lease and poll_interval must be positive, got {lease!r} and {poll_interval!r}")
        if poll_interval * 2 >= lease:
            raise ValueError(f"poll_interval ({poll_interval}) must be under half the lease ({lease})")
        self.lease = lease
        self.poll_interval = poll_interval
        if owner is not None and owner != "":  # ("" or None: a name of this process is made up)
            _check_name(owner, "owner")
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._workflows: dict[str, Workflow] = {}
        self._versions = Versions(self.backend, self.registry, self.clock, self.lease)
        self._active: dict[str, _Active] = {}
        self._group: TaskGroup | None = None
        self._open = False  # between __aenter__ and the end of __aexit__
        self._closing = False

    # ---- set-up ---------------------------------------------------------------------

    def register(self, workflow: Workflow) -> Workflow:
        """Let this engine run (and recover) ``workflow``, by its id; return it.

        A workflow built again with the same definition (a web handler that
        builds it per request, say) is accepted and the registered one is used;
        with a persistent backend the definitions are compared.

        Raises:
            InvalidDefinition: a different workflow is registered under that id.
            NotReferenceable: the backend is persistent and an action cannot be re-created.
        """
        if not isinstance(workflow, Workflow):
            raise TypeError(f"engine.register takes an af.Workflow, got {workflow!r}")
        existing = self._workflows.get(workflow.id)
        if existing is workflow:
            return workflow  # checked when it was registered: start() stays cheap
        definition = self.registry.workflow_definition(workflow) if self.backend.persistent else None
        if existing is not None:
            if definition is not None and definition == self.registry.workflow_definition(existing):
                return existing
            raise InvalidDefinition(
                f"another workflow is already registered with id {workflow.id!r}"
                + (" and a different definition" if definition is not None else "")
            )
        self._workflows[workflow.id] = workflow
        if definition is not None:
            self._versions.register(workflow, definition)
        return workflow

    async def __aenter__(self) -> Self:
        if self._open:
            raise RunStateError(
                "this engine is open already: enter 'async with engine:' once at a time (it can be "
                "opened again once it is closed; for a second one at once, make another af.Engine)"
            )
        self._open = True
        try:
            await self.backend.open()
        except BaseException:
            self._open = False
            raise
        self._closing = False
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        try:
            # The versions of the workflows registered so far, so that runs of them can go on
            # on them after a change, whichever engine (and registry) started them.
            await self._versions.opened()
            if self.recover:
                await self._take_over()
            group.start_soon(self._maintain)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group = self._group
        self._closing = True
        try:
            if group is not None:
                # Runs still in flight are left for the next engine: their leases are released,
                # and listeners hear RUN_INTERRUPTED, not that the runs were cancelled.
                for active in self._active.values():
                    if active.run is not None and not active.cancel_requested:
                        active.run.interrupted = True
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)
        finally:
            self._group = None
            try:
                with anyio.CancelScope(shield=True):
                    if self.process_pool is not None:
                        await self.process_pool.aclose()
                    await self.backend.aclose()
            finally:
                self._open = False

    def _task_group(self) -> TaskGroup:
        if self._group is None:
            raise RunStateError("the engine is not open: use 'async with engine:'")
        return self._group

    # ---- starting and running --------------------------------------------------------

    async def start(
        self,
        workflow: Workflow,
        *,
        store: StoreData | None = None,
        idempotency_key: str | None = None,
        run_id: str | None = None,
    ) -> RunHandle:
        """Write the run down and start it; return at once with its handle.

        With an ``idempotency_key`` that an earlier run already has, nothing
        starts: the handle of that run is returned.

        Raises:
            NotReferenceable: (persistent backends) an action cannot be re-created.
            NotSerializable: (persistent backends) a store value is not JSON.
            ValueError: ``run_id`` is blank, or ``run_id`` or ``idempotency_key`` is not
                Unicode text (it holds a lone surrogate).
        """
        group = self._task_group()
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str):
                raise TypeError(f"idempotency_key must be a string, got {idempotency_key!r}")
            check_text(idempotency_key, "idempotency_key")
        if run_id is not None and run_id != "":  # ("" or None: a fresh id)
            _check_name(run_id, "run_id")
        workflow = self.register(workflow)
        entries = self._entries(dict(store or {}))
        version = await self._versions.save(workflow.id)  # (once, if registered since the engine opened)
        now = self.clock.now()
        info = RunInfo(
            run_id=run_id or new_run_id(),
            workflow_id=workflow.id,
            status=RunStatus.RUNNING,
            created_at=now,
            updated_at=now,
            idempotency_key=idempotency_key,
            owner=self.owner,
            lease_until=now + self.lease,
            workflow_version=version,
        )
        if faults._PLAN is not None:
            faults.hit("before_start")
        info, created = await self.backend.create_run(info, entries)
        if created:
            self._launch(group, SavedRun(info, list(entries), []))
        return RunHandle(self, info.run_id, self._active.get(info.run_id))

    def _entries(self, values: Mapping[Any, Any]) -> list[StoreEntry]:
        """The initial store of a run, keyed as a run's store is (``str`` or ``af.Key``, else TypeError)."""
        named = [(typed_name(key, value), value) for key, value in values.items()]
        if not self.backend.persistent:
            return [StoreEntry(key, value) for key, value in named]
        return [StoreEntry(key, json_value_check(key, value)) for key, value in named]

    def _launch(self, group: TaskGroup, saved: SavedRun) -> None:
        active = self._active.get(saved.info.run_id)
        if active is not None and not active.done.is_set():
            return
        active = _Active(saved.info.run_id)
        self._active[saved.info.run_id] = active
        group.start_soon(self._execute, saved, active)

    async def _execute(self, saved: SavedRun, active: _Active) -> None:
        info = saved.info
        try:
            workflow = self._workflows.get(info.workflow_id)
            if workflow is None:
                await self._finish_unknown_workflow(info)
                return
            if self._versions.differs(info):
                try:
                    workflow, why = await self._versions.workflow_for(info, workflow, saved)
                    if workflow is None:
                        if active.cancel_requested:  # (cancelled while this engine looked at it)
                            await self._release(info.run_id, status=RunStatus.CANCELLED)
                        else:
                            self._versions.leave(info, why)
                            await self._release(info.run_id)  # for an engine that can take it
                        return
                except anyio.get_cancelled_exc_class():
                    if self._closing:  # (given back, as a run in flight is)
                        with anyio.CancelScope(shield=True):
                            await self._release(info.run_id)
                    raise
            durability = _RunDurability(self, saved)
            run = active.run = RunState(
                workflow,
                info.run_id,
                self._restore_store(saved.store),
                self.runner.max_insertions,
                self.runner._hub,
                # Durable runs carry messages as JSON, like child processes.
                self.runner.require_json or self.backend.persistent,
                self.clock,
                durability,
            )
            result: RunResult | None = None
            with active.scope:
                try:
                    if active.cancel_requested:
                        # Cancelled before it began (the scope is cancelled): not one action runs.
                        await anyio.lowlevel.checkpoint()
                    result = await self.runner._run(run)
                except RunFailed as failure:
                    result = failure.result
                    if isinstance(failure.error, LeaseLost):
                        active.lease_lost = True
                except anyio.get_cancelled_exc_class():
                    if self._closing and not active.cancel_requested:
                        with anyio.CancelScope(shield=True):
                            await self._release(info.run_id)
                    raise
            if active.lease_lost:
                logger.warning("run {} was taken over by another engine; this engine stopped it", info.run_id)
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
                await self._record_end(info, result, durability)
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
                await self._release(info.run_id)
        finally:
            active.done.set()

    async def _finish_unknown_workflow(self, info: RunInfo) -> None:
        message = (
            f"workflow {info.workflow_id!r} is not registered with this engine; register it with "
            f"engine.register(workflow) before opening the engine"
        )
        logger.error("run {} cannot continue: {}", info.run_id, message)
        await self.backend.update_run(
            info.run_id,
            holder=self.owner,
            now=self.clock.now(),
            status=RunStatus.FAILED,
            error=f"UnknownWorkflow: {message}",
            owner=None,
            lease_until=None,
        )

    def _restore_store(self, entries: list[StoreEntry]) -> Store:
        store = Store(clock=self.clock.now)
        persistent = self.backend.persistent
        for entry in entries:
            value = json.loads(entry.value) if persistent else entry.value
            store._values[entry.key] = value
            if entry.expires is not None or entry.tags or entry.properties:
                props = (
                    json.loads(entry.properties)
                    if persistent and entry.properties
                    else (entry.properties or {})
                )
                store._meta[entry.key] = _Meta(entry.expires, frozenset(entry.tags), dict(props))
        if persistent:
            store._check = json_value_check
        return store

    async def _record_end(self, info: RunInfo, result: RunResult, durability: _RunDurability) -> None:
        fields: dict[str, Any] = {
            "status": result.status,
            "owner": None,
            "lease_until": None,
            "steps": _with_earlier_timings(step_rows(result), info.steps),
            "bail_reason": _as_text(result.bail_reason),
        }
        if result.status is RunStatus.FAILED and result.error is not None:
            fields["error"] = _as_text(f"{type(result.error).__name__}: {result.error}")
            failed = next((s for s in reversed(result.steps) if s.status is StepStatus.FAILED), None)
            if failed is not None:
                fields["failed_stage"] = _as_text(failed.stage_id)
                fields["failed_action"] = _as_text(failed.action_name)
        if result.status is RunStatus.SUSPENDED:
            fields["suspend_reason"] = _as_text(result.suspend_reason)
            fields["suspend_data"] = result.suspend_data
            fields["suspended_step"] = durability.suspended_key
            fields["resume_data"] = None
        updated = await self.backend.update_run(
            info.run_id, holder=self.owner, now=self.clock.now(), **fields
        )
        if not updated:
            logger.warning(
                "run {} ended here but another engine owns it now; its end was not recorded", info.run_id
            )

    async def _release(self, run_id: str, **fields: Any) -> None:
        """Give a run this engine holds back (setting ``fields`` too): another engine may take it at once."""
        await self.backend.update_run(
            run_id, holder=self.owner, now=self.clock.now(), owner=None, lease_until=None, **fields
        )

    async def _take_over(self) -> None:
        group = self._group
        if group is None or self._closing:
            return
        while True:
            now = self.clock.now()
            # Shielded: runs claimed are launched (and, if the engine is closing, released
            # again at once), never left owned but idle until their lease runs out.
            with anyio.CancelScope(shield=True):
                claimed = await self._versions.claim(
                    self.owner, now=now, lease_until=now + self.lease, limit=100
                )
                given_back = False
                for info in claimed:
                    if self._versions.held(info):  # left before: for another engine to take
                        await self._release(info.run_id)
                        given_back = True
                        continue
                    saved = await self.backend.load(info.run_id)
                    if saved is not None:
                        logger.info(
                            "taking over run {} of workflow {!r} ({})",
                            info.run_id,
                            info.workflow_id,
                            info.status,
                        )
                        self._launch(group, saved)
            if len(claimed) < 100 or given_back:  # (runs given back would come back at once)
                return

    async def _maintain(self) -> None:
        """Heartbeats, take-overs and retention, every ``poll_interval``."""
        ticks = 0
        while True:
            await anyio.sleep(self.poll_interval)
            ticks += 1
            try:
                running = [run_id for run_id, a in self._active.items() if not a.done.is_set()]
                now = self.clock.now()
                lost = await self.backend.heartbeat(
                    self.owner, running, now=now, lease_until=now + self.lease
                )
                for run_id in lost:
                    active = self._active.get(run_id)
                    if active is not None and not active.done.is_set():
                        logger.warning("lost the lease of run {}; stopping it here", run_id)
                        active.lease_lost = True
                        active.scope.cancel()
                for run_id in [r for r, a in self._active.items() if a.done.is_set()]:
                    del self._active[run_id]
                if self.recover:
                    await self._take_over()
                if self.retention is not None and ticks % 60 == 1:
                    await self.purge(older_than=self.retention)
            except Exception as exc:
                # Heartbeats go on next time: a passing database error must not stop the engine.
                logger.opt(exception=exc).error("engine maintenance failed: {}: {}", type(exc).__name__, exc)

    # ---- managing runs ---------------------------------------------------------------

    async def wait(self, run_id: str) -> RunResult:
        """Wait until the run has ended or is suspended; return its :class:`~asyncflow.RunResult`.

        A failed run is returned too (status ``FAILED``, ``error`` set): check ``result.status``.

        Raises:
            UnknownRun: no such run.
        """
        active = self._active.get(run_id)
        if active is not None:
            await active.done.wait()
            if active.result is not None and not active.lease_lost:
                return active.result
        delay = 0.01
        while True:
            info = await self.get_run(run_id)
            if info.status in _ENDED_OR_PARKED:
                return await self._result_from_database(info)
            active = self._active.get(run_id)
            if active is not None and not active.done.is_set():
                await active.done.wait()
                continue
            await anyio.sleep(delay)
            delay = min(delay * 2, self.poll_interval)

    async def _result_from_database(self, info: RunInfo) -> RunResult:
        saved = await self.backend.load(info.run_id)
        store = self._restore_store(saved.store if saved is not None else []).snapshot()
        error = _recorded(info.error)
        return RunResult(
            run_id=info.run_id,
            workflow_id=info.workflow_id,
            status=info.status,
            store=store,
            duration=max(info.updated_at - info.created_at, 0.0),
            bail_reason=info.bail_reason,
            error=error,
            suspend_reason=info.suspend_reason,
            suspend_data=info.suspend_data,
            steps=[_step_from_json(step) for step in info.steps or []],
        )

    async def get_run(self, run_id: str) -> RunInfo:
        """What the database knows of the run.

        Raises:
            UnknownRun: no such run.
        """
        info = await self.backend.get_run(run_id) if _could_be_stored(run_id) else None
        if info is None:
            raise UnknownRun(f"no run {run_id!r} in {self.backend.url}")
        return info

    async def cancel(self, run_id: str) -> None:
        """Cancel a run.

        A run executing in this engine is cancelled through its cancel scope
        (the action in flight sees the cancellation); a suspended, sleeping,
        pending or elsewhere-running run is marked cancelled. An engine running
        it in another process loses its lease: it stops the run at its next
        heartbeat (within ``poll_interval``) and does not record its steps.

        Raises:
            UnknownRun: no such run.
            RunStateError: the run has already ended.
        """
        active = self._active.get(run_id)
        if active is not None and not active.done.is_set():
            active.cancel_requested = True
            active.scope.cancel()
            await active.done.wait()
            return
        info = await self.get_run(run_id)
        if info.status.finished:
            raise RunStateError(
                f"run {run_id!r} has already ended ({info.status.value}); it cannot be cancelled"
            )
        updated = await self.backend.update_run(
            run_id,
            expect=frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SLEEPING, RunStatus.SUSPENDED}),
            now=self.clock.now(),
            status=RunStatus.CANCELLED,
            owner=None,
            lease_until=None,
        )
        if not updated:
            info = await self.get_run(run_id)
            raise RunStateError(
                f"run {run_id!r} has already ended ({info.status.value}); it cannot be cancelled"
            )

    async def resume(self, run_id: str, data: Any = None) -> RunHandle:
        """Continue a suspended run, here, from the action that suspended it.

        That action runs again with ``ctx.is_resuming`` true and
        ``ctx.resume_data == data``.

        Raises:
            UnknownRun: no such run.
            RunStateError: the run is not suspended.
            UnknownWorkflow: its workflow is not registered with this engine, or the run started
                on another version of it that this engine cannot re-create (the run is unchanged).
            NotSerializable: (persistent backends) ``data`` is not JSON.
        """
        group = self._task_group()
        if self.backend.persistent:
            try:
                exact_json(data)
            except (TypeError, ValueError) as exc:
                raise NotSerializable(
                    f"resume data for run {run_id!r} is not JSON-serialisable ({exc}); the backend "
                    f"keeps it in a database until the run resumes (the run is unchanged)"
                ) from None
        info = await self.get_run(run_id)
        if info.status is not RunStatus.SUSPENDED:
            raise RunStateError(
                f"run {run_id!r} is {info.status.value}, not suspended; only a suspended run resumes"
            )
        registered = self._workflows.get(info.workflow_id)
        if registered is None:
            raise UnknownWorkflow(
                f"run {run_id!r} belongs to workflow {info.workflow_id!r}, which is not registered with "
                f"this engine; register it with engine.register(workflow) before resuming (the run is "
                f"unchanged)"
            )
        workflow, why = await self._versions.workflow_for(info, registered)
        if workflow is None:
            raise UnknownWorkflow(
                f"run {run_id!r} started on another version of workflow {info.workflow_id!r} than the one "
                f"registered with this engine, and {why}; resume it with an engine that can re-create "
                f"that version (the run is unchanged)"
            )
        updated = await self.backend.update_run(
            run_id,
            expect=frozenset({RunStatus.SUSPENDED}),
            now=self.clock.now(),
            status=RunStatus.PENDING,
            resume_data=data,
            owner=None,
            lease_until=None,
        )
        if not updated:
            raise RunStateError(f"run {run_id!r} is no longer suspended (resumed or cancelled meanwhile)")
        now = self.clock.now()
        claimed = await self.backend.claim(
            self.owner, now=now, lease_until=now + self.lease, limit=1, run_id=run_id
        )
        if claimed:
            saved = await self.backend.load(run_id)
            if saved is not None:
                self._launch(group, saved)
        return RunHandle(self, run_id, self._active.get(run_id))

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        workflow_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs, newest first, filtered by status and workflow, ``limit`` per page.

        Pass ``page.next_cursor`` back as ``cursor`` for the next page.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValueError(f"limit must be an int from 1 to 1000, got {limit!r}")
        wanted = RunStatus(status) if status is not None else None
        return await self.backend.list_runs(
            status=wanted, workflow_id=workflow_id, limit=limit, cursor=cursor
        )

    async def delete_run(self, run_id: str) -> bool:
        """Delete a run that is not executing here, with its store and checkpoints; whether it existed.

        Raises:
            RunStateError: the run is executing in this engine (cancel it first).
        """
        active = self._active.get(run_id)
        if active is not None and not active.done.is_set():
            raise RunStateError(f"run {run_id!r} is running in this engine; cancel it before deleting it")
        return await self.backend.delete_run(run_id) if _could_be_stored(run_id) else False

    async def purge(self, *, older_than: timedelta) -> int:
        """Delete runs that ended more than ``older_than`` ago; return how many."""
        if not isinstance(older_than, timedelta):
            raise TypeError(f"older_than must be a timedelta, got {older_than!r}")
        if older_than < timedelta(0):
            # (It would reach into the future: every run that has ended, however recently.)
            raise ValueError(f"older_than must not be negative, got {older_than!r}; nothing was deleted")
        return await self.backend.purge(finished_before=self.clock.now() - older_than.total_seconds())


class _RunDurability(Durability):
    """The engine's side of one durable run: what was done before, and where checkpoints go."""

    def __init__(self, engine: Engine, saved: SavedRun) -> None:
        self.engine = engine
        self.backend = engine.backend
        self.persistent = engine.backend.persistent
        self.run_id = saved.info.run_id
        self.owner = engine.owner
        self.done: dict[str, list[Op]] = {}
        self.stages: set[str] = set()
        self.retries: dict[str, tuple[int, float]] = {}
        self.sleeps: dict[str, float] = {}
        self.seq = 0
        self.sleeping = saved.info.status is RunStatus.SLEEPING
        for checkpoint in saved.checkpoints:
            self.seq = max(self.seq, checkpoint.seq)
            key = checkpoint.step_key
            if checkpoint.kind == "action":
                ops = checkpoint.ops
                self.done[key] = (json.loads(ops) if self.persistent else ops) if ops else []
            elif checkpoint.kind == "stage":
                self.stages.add(key)
            elif checkpoint.kind == "attempt":
                self.retries[key] = (checkpoint.attempts, checkpoint.at or 0.0)
            elif checkpoint.kind == "sleep":
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

    def _write(self, checkpoint: Checkpoint) -> Awaitable[None]:
        # The backend's own coroutine: no frame of ours per committed action, unless a
        # crash test has planted faults around the commit.
        if faults._PLAN is None:
            return self.backend.checkpoint(checkpoint)
        return self._write_with_faults(checkpoint)

    async def _write_with_faults(self, checkpoint: Checkpoint) -> None:
        faults.hit("before_commit")
        await self.backend.checkpoint(checkpoint)
        faults.hit("after_commit")

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _put(self, key: str, value: Any, meta: _Meta | None) -> StoreEntry:
        if meta is None and self.persistent:  # the common case, once per key an action writes
            return StoreEntry(key, json_value_check(key, value))
        if not self.persistent:
            return StoreEntry(
                key,
                value,
                meta.expires if meta else None,
                tuple(meta.tags) if meta else (),
                meta.properties if meta else None,
            )
        return StoreEntry(
            key,
            json_value_check(key, value),
            meta.expires if meta is not None else None,
            tuple(sorted(meta.tags)) if meta is not None else (),
            json.dumps(meta.properties) if meta is not None and meta.properties else None,
        )

    async def commit_stage(self, node: StageNode, initial: dict[str, Any]) -> None:
        puts = tuple(self._put(key, value, None) for key, value in initial.items())
        await self._write(Checkpoint(self.run_id, self.owner, node.id, "stage", puts=puts, seq=self._next()))
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
            "action",
            puts,
            deletes,
            plan_ops,
            node.attempts,
            None,
            status,
            seq,
        )
        await self._write(checkpoint)

    async def commit_attempt(self, node: ActionNode, attempts: int, retry_at: float) -> None:
        await self._write(
            Checkpoint(
                self.run_id, self.owner, node.key, "attempt", attempts=attempts, at=retry_at, seq=self._next()
            )
        )

    async def begin_sleep(self, node: ActionNode, seconds: float) -> float:
        key = node.key
        wake_at = self.sleeps.get(key)
        if wake_at is None:
            wake_at = self.engine.clock.now() + seconds
            await self._write(
                Checkpoint(
                    self.run_id,
                    self.owner,
                    key,
                    "sleep",
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
        return self.engine.registry.reference(action, where=where)

    def stage_definition(self, stage: Stage, where: str) -> dict[str, Any]:
        if not self.persistent:
            return {"object": stage}
        return self.engine.registry.stage_definition(stage, where=where)

    def resolve(self, ref: dict[str, Any], where: str) -> Action:
        found = ref.get("object")
        if isinstance(found, Action):
            return found
        return self.engine.registry.resolve(ref, where=where)

    def stage_from_definition(self, definition: dict[str, Any], where: str) -> Stage:
        found = definition.get("object")
        if isinstance(found, Stage):
            return found
        return self.engine.registry.stage_from_definition(definition, where=where)


def _with_earlier_timings(steps: StepRows, earlier: list[dict[str, Any]] | None) -> StepRows:
    """``steps`` with each replayed step's duration and attempts taken from the execution that ran it.

    A resumed or recovered run replays what completed before; its record keeps
    what those steps really took, not the 0 s of their replay.
    """
    if not earlier:
        return steps
    ran: dict[tuple[Any, ...], dict[str, Any]] = {}
    seen: dict[tuple[Any, ...], int] = {}
    for step in earlier:
        key = (step["kind"], step["stage_id"], step.get("action_name"))
        seen[key] = seen.get(key, 0) + 1
        ran[(*key, seen[key])] = step
    seen.clear()
    for row in steps.rows:
        key = (row[_KIND], row[_STAGE_ID], row[_ACTION_NAME])
        seen[key] = seen.get(key, 0) + 1
        before = ran.get((*key, seen[key]))
        if row[_REASON] == REPLAYED and before is not None:
            row[_DURATION_NS] = round(before.get("duration", 0.0) * 1e9)
            row[_ATTEMPTS] = before.get("attempts", row[_ATTEMPTS])
    return steps


_KIND, _STAGE_ID, _ACTION_NAME, _REASON, _DURATION_NS, _ATTEMPTS = (
    STEP_COLUMNS.index(name)
    for name in ("kind", "stage_id", "action_name", "reason", "duration_ns", "attempts")
)


def _could_be_stored(run_id: object) -> bool:
    """Whether ``run_id`` could name a stored run: a string that is Unicode text."""
    return isinstance(run_id, str) and text_error_at(run_id) is None


def _check_name(value: object, what: str) -> None:
    """Refuse a run id or an owner that a database could not keep as text, naming ``what``."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {value!r}")
    if value.isspace():
        raise ValueError(f"{what} must not be blank, got {value!r}")
    check_text(value, what)


def _as_text(text: str | None) -> str | None:
    """``text`` as a database can keep it: a lone surrogate (from bytes that are not UTF-8) as ``\\udcff``.

    An error message or a reason may quote a file name that was not UTF-8;
    written as it is, it would fail the very write that records the run's end.
    """
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _recorded(text: str | None) -> RecordedError | None:
    if text is None:
        return None
    type_name, _, message = text.partition(": ")
    return RecordedError(type_name, message)


def _step_from_json(data: dict[str, Any]) -> StepRecord:
    return StepRecord(
        kind=data["kind"],
        stage_id=data["stage_id"],
        action_name=data.get("action_name"),
        status=StepStatus(data["status"]),
        dynamic=bool(data.get("dynamic")),
        duration=float(data.get("duration") or 0.0),
        started_at=float(data.get("started_at") or 0.0),
        depth=int(data.get("depth") or 0),
        inserted_by=data.get("inserted_by"),
        inserted_by_stage=data.get("inserted_by_stage"),
        reason=data.get("reason"),
        error=_recorded(data.get("error")),
        attempts=int(data.get("attempts") or 0),
        recovered_error=_recorded(data.get("recovered_error")),
    )
