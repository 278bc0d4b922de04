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

import asyncio
import contextlib
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import anyio
import attrs
from anyio.abc import TaskGroup
from loguru import logger

from ..backends import Backend, RunInfo, RunPage, SavedRun, open_backend
from . import faults
from .actions import check_text, text_error_at
from .clock import SYSTEM_CLOCK, Clock
from .definitions import Registry
from .definitions import registry as global_registry
from .errors import (
    EngineNotOpen,
    IdempotencyConflict,
    InvalidDefinition,
    NotReferenceable,
    RunStateError,
    UnknownRun,
    UnknownWorkflow,
)
from .events import EventKind, RunEvent
from .executions import ActiveRun, Executions
from .handles import RunHandle
from .isolation.process import ProcessPool
from .records import RunResult, RunStatus, plan_rows
from .runner import Runner
from .serial import codec_for, result_from_info, with_earlier_timings
from .state import new_run_id
from .store import StoreData
from .trouble import GivenBack, WriteTrouble
from .versions import Versions
from .watch import request_fingerprint, steps_from_events
from .workflow import Workflow

_ENDED_OR_PARKED = frozenset({s for s in RunStatus if s.finished} | {RunStatus.SUSPENDED})


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
        poll_interval: seconds between heartbeats and looks for runs to take over
            (default: a second, or a third of the lease if that is shorter; a
            backend that notifies, PostgreSQL, wakes the engine sooner).
        concurrency: at most this many runs taken over at once (runs started
            here with ``engine.start`` are not limited); ``None``: no limit.
            ``0``: this engine runs nothing: ``engine.start`` writes runs down,
            free, for the workers (``asyncflow worker``) to take (a web app
            that starts runs, say).
        watch_interval: how often ``engine.watch`` looks for events written by
            another process (events of runs executing here arrive at once).
        events: keep each run's events in its log for ``engine.watch`` (default
            true). It about doubles the engine's own cost per committed action
            on SQLite (see the CHANGELOG); an engine that runs many short durable
            runs nobody watches may turn it off (``watch`` then gives only the
            events of runs other engines executed).
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
        poll_interval: float | None = None,
        owner: str | None = None,
        concurrency: int | None = None,
        watch_interval: float = 0.2,
        events: bool = True,
        process_pool: ProcessPool | None = None,
    ) -> None:
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 0
        ):
            raise ValueError(f"concurrency must be an int of at least 0, or None, got {concurrency!r}")
        self.concurrency = concurrency
        self.backend = open_backend(url)
        #: how runs reach the backend: JSON, objects JSON cannot carry kept live in memory (serial.Codec)
        self.codec = codec_for(self.backend)
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
        if poll_interval is None:  # (it follows the lease: heartbeats must come well within it)
            poll_interval = min(1.0, lease / 3) if isinstance(lease, (int, float)) and lease > 0 else 1.0
        if not lease > 0 or not poll_interval > 0:
            raise ValueError(f"lease and poll_interval must be positive, got {lease!r} and {poll_interval!r}")
        if not watch_interval > 0:
            raise ValueError(f"watch_interval must be positive, got {watch_interval!r}")
        self.watch_interval = watch_interval
        self.keeps_events = events
        if poll_interval * 2 >= lease:
            raise ValueError(f"poll_interval ({poll_interval}) must be under half the lease ({lease})")
        self.lease = lease
        self.poll_interval = poll_interval
        if owner is not None and owner != "":  # ("" or None: a name of this process is made up)
            _check_name(owner, "owner")
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._workflows: dict[str, Workflow] = {}
        self._definitions: dict[str, dict[str, Any]] = {}  # (of registered workflows, once made)
        self._versions = Versions(self.backend, self.registry, self.clock, self.lease, self.codec)
        trouble = WriteTrouble(self.backend.url)  # (episodes of failing writes, logged once each)
        #: the runs executing here and their leases
        self._runs = Executions(
            self.runner,
            self._workflows,
            self._versions,
            self.backend,
            self.codec,
            self.clock,
            self.registry,
            owner=self.owner,
            lease=self.lease,
            trouble=trouble,
            concurrency=concurrency,
            keep_events=events,
        )
        self._unhook: list[Any] = []
        self._open = False  # between __aenter__ and the end of __aexit__

    # ---- set-up ---------------------------------------------------------------------

    @property
    def workflows(self) -> list[Workflow]:
        """The workflows registered with this engine, in the order they were registered."""
        return list(self._workflows.values())

    def register(self, workflow: Workflow) -> Workflow:
        """Let this engine run (and recover) ``workflow``, by its id; return it.

        A workflow built again with the same definition (a web handler that
        builds it per request, say) is accepted and the registered one is used,
        on every backend: the two definitions are compared.

        Raises:
            InvalidDefinition: a workflow with a different definition is registered under that
                id, or one that cannot be compared with it (an action that cannot be re-created
                from a definition: register one workflow object and start that one).
            NotReferenceable: the backend is persistent and an action cannot be re-created.
        """
        if not isinstance(workflow, Workflow):
            raise TypeError(f"engine.register takes an af.Workflow, got {workflow!r}")
        existing = self._workflows.get(workflow.id)
        if existing is workflow:
            return workflow  # checked when it was registered: start() stays cheap
        if existing is not None:
            try:
                same = self.registry.workflow_definition(workflow) == self._definition_of(existing)
            except NotReferenceable as exc:
                raise InvalidDefinition(
                    f"another workflow is already registered with id {workflow.id!r}, and this one "
                    f"cannot be compared with it ({exc}); register one workflow object and pass that "
                    f"same object to engine.start"
                ) from None
            if same:
                return existing
            raise InvalidDefinition(
                f"another workflow is already registered with id {workflow.id!r} and a different definition"
            )
        definition = self.codec.definition(self.registry, workflow)
        self._workflows[workflow.id] = workflow
        if definition is not None:
            self._definitions[workflow.id] = definition
            self._versions.register(workflow, definition)
        return workflow

    def _definition_of(self, registered: Workflow) -> dict[str, Any]:
        """The definition of a registered workflow, made once."""
        definition = self._definitions.get(registered.id)
        if definition is None:
            definition = self._definitions[registered.id] = self.registry.workflow_definition(registered)
        return definition

    async def __aenter__(self) -> Self:
        _require_asyncio()
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
        self._runs.closing = False
        self._runs.draining = False
        self._runs.wake = anyio.Event()
        self.backend.on_notice(self._runs.notice)
        group = anyio.create_task_group()
        await group.__aenter__()
        self._runs.group = group
        self._runs.new_event_log()
        if self._runs.events.keep:
            self._unhook = [
                self.runner.on_event(self._runs.events.record_event),
                self.runner.on_message("*", self._runs.events.record_message),
            ]
            group.start_soon(self._runs.events.write_forever)
        try:
            # The versions of the workflows registered so far, so that runs of them can go on
            # on them after a change, whichever engine (and registry) started them.
            await self._versions.opened()
            if self.recover:
                await self._runs.take_over()
            group.start_soon(self._runs.maintain, self.poll_interval, self.recover, self.retention)
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
        group = self._runs.group
        self._runs.closing = True
        self._runs.events.close()
        for unhook in self._unhook:
            unhook()
        self._unhook = []
        try:
            if group is not None:
                # Runs still in flight are left for the next engine: their leases are released,
                # and listeners hear RUN_INTERRUPTED, not that the runs were cancelled.
                self._runs.interrupt_all()
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)
                # The events of the runs given back: the engine that takes them over goes on after them.
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self._runs.events.flush()
        finally:
            self._runs.group = None
            self.backend.on_notice(None)
            try:
                with anyio.CancelScope(shield=True):
                    if self.process_pool is not None:
                        await self.process_pool.aclose()
                    await self.backend.aclose()
            finally:
                self._open = False

    async def drain(self, grace: float) -> None:
        """Stop taking runs, and give back each run here after its next checkpoint, waiting up to ``grace`` s.

        Actions in flight finish and are checkpointed; their runs are then
        released at once (another engine takes them without waiting for a
        lease to expire). Runs still busy after ``grace`` seconds are given
        back when the engine closes. Used by ``asyncflow worker`` on SIGTERM.
        """
        self._runs.drain()
        with anyio.move_on_after(grace):
            for active in list(self._runs.active.values()):
                await active.done.wait()

    def _task_group(self) -> TaskGroup:
        if self._runs.group is None or self._runs.closing:
            raise EngineNotOpen(
                "the engine is closing: it starts and resumes no runs now"
                if self._runs.group is not None
                else "the engine is not open: use 'async with engine:' (or a FastAPI lifespan)"
            )
        return self._runs.group

    def _require_open(self) -> None:
        if not self._open:
            raise EngineNotOpen("the engine is not open: use 'async with engine:' (or a FastAPI lifespan)")

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
        starts: the handle of that run is returned, with ``handle.created`` false.

        Raises:
            EngineNotOpen: the engine is not open, or is closing.
            IdempotencyConflict: the key belongs to a run of another workflow or
                with another initial store (that run is left as it is).
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
        entries = self.codec.initial_entries(dict(store or {}))
        version = await self._versions.save(workflow.id)  # (once, if registered since the engine opened)
        now = self.clock.now()
        here = self.concurrency != 0  # (0: for the workers to take)
        info = RunInfo(
            run_id=run_id or new_run_id(),
            workflow_id=workflow.id,
            status=RunStatus.RUNNING if here else RunStatus.PENDING,
            created_at=now,
            updated_at=now,
            idempotency_key=idempotency_key,
            owner=self.owner if here else None,
            lease_until=now + self.lease if here else None,
            workflow_version=version,
        )
        if faults.CRASH_PLAN is not None:
            faults.hit("before_start")
        created_event: dict[str, Any] = {"kind": EventKind.RUN_CREATED.value, "at": now}
        if idempotency_key is not None:
            created_event["request"] = request_fingerprint(
                workflow.id,
                [(e.key, self.codec.read(e.value)) for e in entries],
                self.codec.requires_json,
            )
        tracing = self.runner.hub.tracing
        if tracing is not None:
            # The trace context kept with the run (in its log): later executions link to it.
            trace = tracing.run_created(info.run_id, workflow.id, here)
            if trace is not None:
                created_event["trace"] = trace
        new_id = info.run_id
        created = False
        try:
            info, created = await self.backend.create_run(info, entries)
        finally:
            if not created and tracing is not None:  # (an idempotency key found an earlier run)
                tracing.run_dropped(new_id)
        if created and here:
            # (its events are its log's from now)
            self._runs.active[info.run_id] = active = ActiveRun(info.run_id, fresh=True)
            self._runs.events.add(info.run_id, created_event)
            self._runs.launch(group, SavedRun(info, list(entries), []), active)
        elif created:  # (for the workers: its log begins here)
            await self.backend.append_events(info.run_id, [created_event])
        elif idempotency_key is not None:
            await self._check_same_request(info, workflow, idempotency_key, created_event["request"])
        return RunHandle(self, info.run_id, self._runs.active.get(info.run_id), created=created)

    async def _check_same_request(self, info: RunInfo, workflow: Workflow, key: str, request: Any) -> None:
        """Refuse a start whose idempotency key found a run of another workflow or initial store."""
        why = None
        if info.workflow_id != workflow.id:
            why = f"of workflow {info.workflow_id!r}, not {workflow.id!r}"
        else:
            # (A run written down before its request was logged, by an older asyncflow, say, is
            # compared by its workflow only.)
            await self._runs.events.flush(info.run_id)
            for _, data in await self.backend.read_events(info.run_id, after=0, limit=1):
                if (
                    data.get("kind") == EventKind.RUN_CREATED.value
                    and data.get("request", request) != request
                ):
                    why = "with another initial store"
        if why is not None:
            raise IdempotencyConflict(
                f"idempotency key {key!r} belongs to run {info.run_id!r}, which was started {why}; "
                f"a retry must send the same request (that run is left as it is), and another request "
                f"needs another key",
                run_id=info.run_id,
                idempotency_key=key,
            )

    # ---- managing runs ---------------------------------------------------------------

    async def wait(self, run_id: str) -> RunResult:
        """Wait until the run has ended or is suspended; return its :class:`~asyncflow.RunResult`.

        A failed run is returned too (status ``FAILED``, ``error`` set): check ``result.status``.

        Raises:
            UnknownRun: no such run.
        """
        active = self._runs.active.get(run_id)
        if active is not None:
            await active.done.wait()
            if active.result is not None and not active.lease_lost:
                return active.result
        delay = 0.01
        while True:
            mark = self.backend.events_mark(run_id)
            info = await self._stored_run(run_id)
            if info.status in _ENDED_OR_PARKED:
                return await self._result_from_database(info)
            active = self._runs.active.get(run_id)
            if active is not None and not active.done.is_set():
                await active.done.wait()
                continue
            # Executing elsewhere (in another engine, or taken over from this one): a backend told of
            # its events (PostgreSQL's notices) wakes this at once, and the record is read again soon
            # after each (its end is written just after its last events); otherwise it polls.
            asleep = anyio.current_time()
            await self.backend.wait_events(run_id, within=delay, mark=mark)
            woken = anyio.current_time() - asleep < delay / 2
            delay = 0.01 if woken else min(delay * 2, self.poll_interval)

    async def _result_from_database(self, info: RunInfo) -> RunResult:
        saved = await self.backend.load(info.run_id)
        store = self.codec.restore(saved.store if saved is not None else [], self.clock)
        return result_from_info(info, store)

    async def get_run(self, run_id: str) -> RunInfo:
        """What the database knows of the run; for a run executing, its ``steps`` are the plan so far.

        The plan so far: every stage and action of the run's plan as it
        stands (inserted ones included), each with its status (pending,
        running, completed, failed, skipped...), in plan order. For a run
        executing in another process it is read from the run's event log:
        the steps that were started, finished, skipped or inserted there, then
        the registered workflow's steps not reached yet.

        Raises:
            UnknownRun: no such run.
            EngineNotOpen: the engine is not open.
        """
        info = await self._stored_run(run_id)
        active = self._runs.active.get(run_id)
        if (
            active is not None
            and active.run is not None
            and not active.done.is_set()
            and info.status in (RunStatus.RUNNING, RunStatus.SLEEPING)
        ):
            steps = with_earlier_timings(plan_rows(active.run.plan.walk_stages()), info.steps)
            info = attrs.evolve(info, steps=steps.dicts())
        elif info.status in (RunStatus.RUNNING, RunStatus.SLEEPING) and self.backend.keeps_events:
            # Executing in another process: the plan so far as its event log tells it (read only:
            # nothing of it waits here to be written). A log that cannot be read leaves it out.
            workflow = next((w for w in self.workflows if w.id == info.workflow_id), None)
            static = [(s.id, [a.name for a in s.actions]) for s in workflow.stages] if workflow else []
            try:
                events = [data for _, data in await self.backend.read_events(run_id, limit=100_000)]
            except Exception as exc:
                logger.debug(
                    "the plan so far of run {} was left out: {}: {}", run_id, type(exc).__name__, exc
                )
            else:
                info = attrs.evolve(info, steps=steps_from_events(events, static))
        return info

    async def _stored_run(self, run_id: str) -> RunInfo:
        """The run as the database has it (no plan so far added). UnknownRun, EngineNotOpen."""
        self._require_open()
        info = await self.backend.get_run(run_id) if _could_be_stored(run_id) else None
        if info is None:
            raise UnknownRun(f"no run {run_id!r} in {self.backend.url}")
        return info

    async def get_store(self, run_id: str) -> dict[str, Any]:
        """The run's store as its last committed step left it (a snapshot; expired entries left out).

        Raises:
            UnknownRun: no such run.
            EngineNotOpen: the engine is not open.
        """
        self._require_open()
        saved = await self.backend.load(run_id) if _could_be_stored(run_id) else None
        if saved is None:
            raise UnknownRun(f"no run {run_id!r} in {self.backend.url}")
        return self.codec.restore(saved.store, self.clock).snapshot()

    def watch(self, run_id: str, *, after: str | None = None) -> AsyncIterator[RunEvent]:
        """The run's events, from any process, as they happen; it ends when the run ends or suspends.

        ::

            async for event in engine.watch(run_id):
                print(event.kind, event.stage_id, event.action_name)

        Every stage and action started, finished, skipped or inserted, each
        message sent with ``ctx.send`` (kind ``MESSAGE``), the run's
        suspension (``RUN_SUSPENDED``) and end (``RUN_FINISHED``), whichever
        engine executes the run: they are kept in the run's log. Pass an
        event's ``cursor`` as ``after`` to go on after it (nothing is lost or
        repeated); with none, the watch starts from the run's first event. It
        also ends when this engine closes. Safe to leave at any time (it
        holds no task group across a ``yield``).

        Raises:
            UnknownRun: no such run.
            UnknownCursor: ``after`` is not a cursor this run's events had.
            EngineNotOpen: the engine is not open.
        """
        return self._watch(run_id, after)

    async def _watch(self, run_id: str, after: str | None) -> AsyncIterator[RunEvent]:
        info = await self._stored_run(run_id)
        start = await self._runs.events.check_cursor(run_id, after)
        await self._runs.events.flush(run_id)
        # Closed here when the caller leaves early (a web client that went away), not by the GC later.
        async with contextlib.aclosing(
            self._runs.events.watch(info, start, self._current, self.watch_interval)
        ) as events:
            async for event in events:
                yield event

    async def events(self, run_id: str, *, after: str | None = None, limit: int = 1000) -> list[RunEvent]:
        """The run's events logged so far (at most ``limit``, after the cursor ``after``), without waiting.

        Raises:
            UnknownRun: no such run.
            UnknownCursor: ``after`` is not a cursor this run's events had.
            EngineNotOpen: the engine is not open.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be an int from 1 to 10,000, got {limit!r}")
        info = await self._stored_run(run_id)
        start = await self._runs.events.check_cursor(run_id, after)
        await self._runs.events.flush(run_id)
        return [
            RunEvent.from_data(seq, run_id, info.workflow_id, data)
            for seq, data in await self.backend.read_events(run_id, after=start, limit=limit)
        ]

    async def _current(self, run_id: str) -> RunInfo | None:
        return await self.backend.get_run(run_id)

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
        self._require_open()
        active = self._runs.active.get(run_id)
        if active is not None and not active.done.is_set():
            active.cancel_requested = True
            active.scope.cancel()
            await active.done.wait()
            return
        info = await self._stored_run(run_id)
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
            info = await self._stored_run(run_id)
            raise RunStateError(
                f"run {run_id!r} has already ended ({info.status.value}); it cannot be cancelled"
            )
        await self.backend.append_events(
            run_id,
            [
                {
                    "kind": EventKind.RUN_FINISHED.value,
                    "at": self.clock.now(),
                    "status": RunStatus.CANCELLED.value,
                }
            ],
        )
        self._runs.events.wake(run_id)

    async def resume(self, run_id: str, data: Any = None, *, key: str | None = None) -> RunHandle:
        """Continue a suspended run, here, from the action that suspended it.

        That action runs again with ``ctx.is_resuming`` true and
        ``ctx.resume_data == data``.

        With a ``key`` (an approval's id, say), resuming is idempotent: a call
        with a key this run was already resumed with resumes nothing and
        returns the run's handle (``handle.created`` false), whatever the run
        does now, so a retried approval never fails. The key is written with
        the run's status change (:attr:`RunInfo.resume_key`), so a retry from
        any process finds it, even after a call that failed once the run was
        resumed (its ``RUN_RESUMED`` event not written, say).

        Raises:
            EngineNotOpen: the engine is not open, or is closing.
            UnknownRun: no such run.
            RunStateError: the run is not suspended.
            UnknownWorkflow: its workflow is not registered with this engine, or the run started
                on another version of it that this engine cannot re-create (the run is unchanged).
            NotSerializable: (persistent backends) ``data`` is not JSON.
        """
        group = self._task_group()
        if key is not None:
            if not isinstance(key, str) or not key or key.isspace():
                raise TypeError(f"resume key must be a non-blank string, got {key!r}")
            check_text(key, "resume key")
        info = await self._stored_run(run_id)
        if key is not None and await self._resumed_with(info, key):
            return RunHandle(self, run_id, self._runs.active.get(run_id), created=False)
        self.codec.check_resume_data(run_id, data)
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
        stale = self._runs.active.get(run_id)
        if stale is not None and stale.running:
            # Suspended in the database, its execution here is in its last steps (after the commit
            # that recorded it): let it end, or the run resumed now would find it still executing
            # and not be launched again (its handle would give the suspension).
            with anyio.move_on_after(self.lease):
                await stale.done.wait()
        # The key goes with the status change, in one write: a retry with it finds it, from any
        # process, even if the resume's event below never reaches the log.
        keyed = {} if key is None else {"resume_key": key}
        updated = await self.backend.update_run(
            run_id,
            expect=frozenset({RunStatus.SUSPENDED}),
            now=self.clock.now(),
            status=RunStatus.PENDING,
            resume_data=data,
            owner=None,
            lease_until=None,
            **keyed,
        )
        if not updated:
            if key is not None and await self._resumed_with(await self._stored_run(run_id), key):
                return RunHandle(self, run_id, self._runs.active.get(run_id), created=False)
            raise RunStateError(f"run {run_id!r} is no longer suspended (resumed or cancelled meanwhile)")
        self._runs.supersede(run_id)
        resumed: dict[str, Any] = {"kind": EventKind.RUN_RESUMED.value, "at": self.clock.now()}
        if key is not None:
            resumed["key"] = key
        stale = self._runs.active.get(run_id)
        if stale is not None and stale.done.is_set():  # (its execution up to the suspension)
            del self._runs.active[run_id]
        # The run is resumed already: from here on a write that fails is tried again, not raised.
        now = self.clock.now()
        try:
            claimed = (
                await self.backend.claim(
                    self.owner, now=now, lease_until=now + self.lease, limit=1, run_id=run_id
                )
                if self.concurrency != 0  # (0: the workers take it)
                else []
            )
            saved = await self.backend.load(run_id) if claimed else None
            if saved is not None and not self._runs.holds(saved.info):  # (cancelled meanwhile, say)
                saved = None
        except Exception as exc:  # (resumed: this engine or another takes it at its next look)
            logger.warning(
                "run {} is resumed; taking it here failed ({}: {})", run_id, type(exc).__name__, exc
            )
            saved = None
        what = f"the resume of run {run_id}"
        try:
            if saved is not None and self._runs.events.keep:
                self._runs.events.add(run_id, resumed)  # (before the events of the execution it launches)
                self._runs.launch(group, saved)
                # Written before this returns: a retry with the key, from any process, must find it.
                try:
                    await self._runs.events.flush(run_id)
                except Exception as exc:  # (the events are kept: written again)
                    await self._runs.trouble.retry(
                        what, lambda: self._runs.events.flush(run_id), exc, self.lease
                    )
            else:
                if saved is not None:
                    self._runs.launch(group, saved)
                try:
                    await self.backend.append_events(run_id, [resumed])
                except Exception as exc:
                    await self._runs.trouble.retry(
                        what, lambda: self.backend.append_events(run_id, [resumed]), exc, self.lease
                    )
                self._runs.events.wake(run_id)
        except GivenBack as exc:  # (the run is resumed all the same; only its log misses the resume)
            logger.warning("run {} is resumed, but {}", run_id, exc)
        return RunHandle(self, run_id, self._runs.active.get(run_id))

    async def _resumed_with(self, info: RunInfo, key: str) -> bool:
        """Whether the run was resumed with ``key`` before.

        Its row names the key of its last resume (written with the status
        change); the keys of earlier resumes, and of resumes written before
        runs kept their key, are in its log.
        """
        if info.resume_key == key:
            return True
        return any(
            data.get("kind") == EventKind.RUN_RESUMED.value and data.get("key") == key
            for _, data in await self._runs.events.read_all(info.run_id)
        )

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
        self._require_open()
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
        self._require_open()
        active = self._runs.active.get(run_id)
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


def _require_asyncio() -> None:
    """Refuse to open an engine on an event loop other than asyncio's (uvloop is asyncio's too).

    The durable engine's backends hand work to threads and wake the loop through
    asyncio; the in-memory runner (``af.run``, ``af.Runner``) runs on trio as well.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        trio = sys.modules.get("trio")
        on = "trio" if trio is not None and trio.lowlevel.in_trio_run() else "another event loop"
        raise RuntimeError(
            f"af.Engine runs on asyncio's event loop only (uvloop included), and this is {on}: its "
            f"backends hand work to threads and wake the loop through asyncio. On trio, run workflows "
            f"in memory with af.run or af.Runner"
        ) from None
