"""The runner: drives a run's plan, stage by stage and action by action.

The loop is iterative: each level keeps a deque of pending nodes, and what a
node inserted is pushed at the front of that deque when the node completes.
That gives depth-first order for any nesting without recursion, so a chain
of 10,000 nested insertions never touches Python's recursion limit.

Per action, the fast path (no middleware, no retry, no timeout, nobody
listening for events) is one context object, two clock reads and the await
of the action itself (and in a durable run its checkpoint); everything else
is paid only by those who use it.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from functools import partial
from time import perf_counter, time, time_ns
from typing import Any

import anyio
from loguru import logger

from .clock import SYSTEM_CLOCK, Clock, sleep_until
from .context import ActionContext, suspend_data_error
from .durable import Durability, Op
from .errors import (
    ActionFailed,
    ActionTimeout,
    Bail,
    ChildProcessFailed,
    InsertionLimitExceeded,
    RunFailed,
    StageFailed,
    Suspend,
)
from .events import Event, EventHandler, EventKind, EventStream, Hub, MessageHandler
from .isolation.process import ProcessPool
from .isolation.session import run_isolated
from .middleware import (
    Chain,
    Handler,
    Level,
    Middleware,
    MiddlewareContext,
    call_chain,
    called_twice,
    check_middlewares,
    compose,
)
from .plan import _UNDO_ACTION, _UNDO_STAGE, ActionNode, PlanState, StageNode, UndoEntry
from .records import (
    _CANCELLED,
    _COMPLETED,
    _FAILED,
    _PENDING,
    _RUNNING,
    _SKIPPED,
    _SUSPENDED,
    RunResult,
    RunStatus,
    Timing,
)
from .retry import Retry, check_retry, check_timeout
from .store import Store, StoreData
from .workflow import Workflow

DEFAULT_MAX_INSERTIONS = 10_000

#: The reason recorded for a step that completed before a restart or a resume and was replayed.
REPLAYED = "completed in an earlier execution"

_SKIPPED_BY_MIDDLEWARE = "skipped by middleware"


def _check_max_insertions(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_insertions must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"max_insertions must be zero or more, got {value}")
    return value


class RunState:
    """Everything one run owns while it runs (internal)."""

    __slots__ = (
        "clock",
        "durable",
        "failed_node",
        "failed_stage",
        "hub",
        "interrupted",
        "log",
        "message_errors",
        "message_seq",
        "plan",
        "require_json",
        "run_id",
        "stage_chain",
        "store",
        "timings",
        "workflow",
    )

    def __init__(
        self,
        workflow: Workflow,
        run_id: str,
        store: Store,
        max_insertions: int,
        hub: Hub,
        require_json: bool,
        clock: Clock = SYSTEM_CLOCK,
        durable: Durability | None = None,
    ) -> None:
        self.workflow = workflow
        self.clock = clock
        self.durable = durable
        self.run_id = run_id
        self.store = store
        self.plan = PlanState(workflow, run_id, max_insertions)
        self.hub = hub
        self.require_json = require_json
        self.log: list[StageNode | ActionNode] = []
        self.failed_node: ActionNode | None = None
        self.failed_stage: StageNode | None = None
        # Set by an engine that stops while the run is in flight: the run is not
        # over, another engine (or a restart) takes it over.
        self.interrupted = False
        self.stage_chain: Chain | None = None
        self.message_seq = 0
        self.message_errors = 0
        self.timings: list[Timing] = []

    def event(self, kind: EventKind, node: StageNode | ActionNode | None = None, **fields: Any) -> Event:
        """An event of this run about ``node``, stamped now."""
        if node is None:
            return Event(kind, self.run_id, self.workflow.id, at=time(), **fields)
        if isinstance(node, StageNode):
            return Event(
                kind,
                self.run_id,
                self.workflow.id,
                stage_id=node.id,
                at=time(),
                dynamic=node.dynamic,
                **fields,
            )
        return Event(
            kind,
            self.run_id,
            self.workflow.id,
            stage_id=node.stage_node.id,
            action_name=node.action.name,
            at=time(),
            dynamic=node.dynamic,
            **fields,
        )


# How long listeners get to hear of a cancellation or failure while the run is
# being cancelled: long enough for a handler that does real work, bounded so
# that cancelling a run never waits on a slow handler for long.
_GRACE_SECONDS = 0.5


def _grace() -> anyio.CancelScope:
    """A shielded scope with a short deadline, for telling listeners how a step ended."""
    return anyio.CancelScope(shield=True, deadline=anyio.current_time() + _GRACE_SECONDS)


# Ids need to be unique, not secret: a generator seeded once from the OS is
# enough, and much cheaper per run than reading the OS's randomness each time.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker must not repeat its parent's ids


def new_run_id() -> str:
    """A fresh, unique run id: 32 hex digits, the first 12 the creation time in milliseconds.

    Time-ordered ids sort by creation, and the rows of runs created together
    sit together in a database index: concurrent runs then write a few pages
    per commit instead of one page each. The last 20 digits are random.
    """
    return f"{time_ns() // 1_000_000:012x}{_ids.getrandbits(80):020x}"


class Runner:
    """Runs workflows in the current task; holds what its runs share.

    Args:
        middleware: run-level middleware, wrapping each whole run.
        stage_middleware: stage-level middleware, wrapping every stage of every
            workflow (dynamic stages too); a workflow's own (``Workflow.use``)
            nest inside these.
        action_middleware: action-level middleware, wrapping every action;
            ``Workflow.use_action`` and ``Stage.use_action`` nest inside these.
        timeout: default limit per action attempt, in seconds or a ``timedelta``
            (a stage's or action's own wins).
        retry: default :class:`~asyncflow.Retry` for actions (likewise).
        max_insertions: the bound on dynamic insertions per run (default
            10,000); passing it fails the run with
            :class:`~asyncflow.InsertionLimitExceeded` as the cause.
        require_json: reject message payloads that are not JSON-serialisable,
            as durable runs and child processes do. Handy in tests to catch
            them early.
        clock: what back-off sleeps, durable sleeps and TTLs follow (default:
            the system clock; :class:`asyncflow.testing.FakeClock` in tests).
        process_pool: warm child processes for isolated stages
            (``Stage(isolation="process")``); without one, each isolated stage
            starts a fresh child. The caller opens and closes the pool.
    """

    def __init__(
        self,
        *,
        middleware: Sequence[Middleware] = (),
        stage_middleware: Sequence[Middleware] = (),
        action_middleware: Sequence[Middleware] = (),
        timeout: float | timedelta | None = None,
        retry: Retry | None = None,
        max_insertions: int = DEFAULT_MAX_INSERTIONS,
        require_json: bool = False,
        clock: Clock | None = None,
        process_pool: ProcessPool | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        if process_pool is not None and not isinstance(process_pool, ProcessPool):
            raise TypeError(f"process_pool must be an af.ProcessPool, got {process_pool!r}")
        self.process_pool = process_pool
        self.middleware = tuple(check_middlewares(middleware, "the runner (run level)"))
        self.stage_middleware = tuple(check_middlewares(stage_middleware, "the runner (stage level)"))
        self.action_middleware = tuple(check_middlewares(action_middleware, "the runner (action level)"))
        self.timeout = check_timeout(timeout, "the runner")
        self.retry = check_retry(retry, "the runner")
        self.max_insertions = _check_max_insertions(max_insertions)
        self.require_json = require_json
        self._hub = Hub()
        self._run_chain = compose(self.middleware, _entering) if self.middleware else None
        # Composed chains by innermost handler, then by middleware: built once, not per stage.
        self._chains: dict[Callable[[Middleware], Handler], dict[tuple[Middleware, ...], Chain]] = {
            _entering: {},
            _attempting: {},
        }
        self._block_chains = self._chains[_entering]  # looked up once per stage that has a block chain

    # ---- listeners ---------------------------------------------------------------

    def on_message(
        self,
        kind: str,
        handler: MessageHandler,
        *,
        workflow_id: str | None = None,
        stage_id: str | None = None,
        action_name: str | None = None,
        run_id: str | None = None,
    ) -> Callable[[], None]:
        """Deliver messages of ``kind`` (``"*"``: every kind) to ``handler``, sync or async.

        The other arguments narrow the scope to one workflow, stage, action or
        run. A handler that raises does not fail the run: the error is logged
        with the message's context and counted in ``RunResult.message_errors``.
        Returns a function that unregisters the handler.
        """
        return self._hub.on_message(
            kind,
            handler,
            workflow_id=workflow_id,
            stage_id=stage_id,
            action_name=action_name,
            run_id=run_id,
        )

    def on_event(self, handler: EventHandler) -> Callable[[], None]:
        """Call ``handler`` (sync or async) with every lifecycle :class:`~asyncflow.Event`.

        Handlers run inline, in order: a slow handler slows the run (use
        :meth:`subscribe` to consume events at your own pace). Returns a
        function that unregisters the handler.
        """
        return self._hub.on_event(handler)

    def subscribe(
        self, *, buffer: int = 1_000, run_id: str | None = None
    ) -> AbstractAsyncContextManager[EventStream]:
        """An async iterator of events with a bounded buffer; it never slows the runs.

        ::

            async with runner.subscribe() as events:
                async for event in events: ...

        When the subscriber falls behind by ``buffer`` events, further events
        are dropped and it receives one ``EVENTS_DROPPED`` event saying how
        many it missed. ``run_id`` narrows the stream to one run.
        """
        return self._hub.subscribe(buffer, run_id)

    # ---- running -------------------------------------------------------------------

    async def run(
        self,
        workflow: Workflow,
        *,
        store: StoreData | Store | None = None,
        run_id: str | None = None,
        max_insertions: int | None = None,
    ) -> RunResult:
        """Run ``workflow`` to its end and return the :class:`~asyncflow.RunResult`.

        Args:
            store: initial store contents (a mapping, or a Store that is cloned).
            run_id: use this id instead of a fresh one.
            max_insertions: override the runner's bound for this run.

        Raises:
            ActionFailed: an action raised (the result is on ``.result``).
            StageFailed: a stage failed outside its actions (middleware, timeout).

        A bail returns normally with status ``BAILED``. Cancellation
        propagates after the run is recorded cancelled.
        """
        if not isinstance(workflow, Workflow):
            raise TypeError(f"Runner.run takes an af.Workflow, got {workflow!r}")
        limit = self.max_insertions if max_insertions is None else _check_max_insertions(max_insertions)
        if isinstance(store, Store):
            root = store.clone()
        else:
            root = Store(clock=self.clock.now)
            if store is not None:
                root.merge(store)
        run = RunState(
            workflow, run_id or new_run_id(), root, limit, self._hub, self.require_json, self.clock
        )
        return await self._run(run)

    async def _run(self, run: RunState) -> RunResult:
        started = perf_counter()
        hub = self._hub
        logger.debug("run {} of workflow {!r} started", run.run_id, run.workflow.id)
        if hub.listening:
            await hub.emit(run.event(EventKind.RUN_STARTED))
        stage_mws = self.stage_middleware + run.workflow._middleware
        if stage_mws:
            run.stage_chain = self._chain(stage_mws, _entering)
        status = RunStatus.COMPLETED
        bail_reason: str | None = None
        recovered: BaseException | None = None
        suspended: Suspend | None = None
        try:
            if (run_chain := self._run_chain) is not None:
                mctx = _entered("run", run, None, self._drive)
                await call_chain(run_chain, mctx, mctx._enter)
                if not mctx._ran:
                    status = RunStatus.SKIPPED
                else:
                    # A run middleware swallowed a stage's failure: the run completes, the error is kept.
                    failed_stage = run.failed_stage
                    if failed_stage is not None:
                        recovered = failed_stage.error
                        # The stages that never ran because of it stay on record.
                        reason = f"stage {failed_stage.id!r} failed"
                        for stage in run.plan.walk_stages():
                            if stage.status is _PENDING and not stage.removed:
                                await self._skip(run, stage, reason)
            else:
                await self._drive(run)
        except Bail as bail:
            status, bail_reason = RunStatus.BAILED, bail.reason
            logger.info("run {} bailed: {}", run.run_id, bail.reason)
        except Suspend as suspend:
            status, suspended = RunStatus.SUSPENDED, suspend
            logger.info("run {} suspended: {}", run.run_id, suspend.reason)
        except anyio.get_cancelled_exc_class():
            result = self._result(run, started, RunStatus.CANCELLED)
            with _grace():
                if run.interrupted:
                    logger.info("run {} was interrupted; it will be taken over", run.run_id)
                    if self._hub.listening:
                        await self._hub.emit(run.event(EventKind.RUN_INTERRUPTED, status="running"))
                else:
                    logger.info("run {} was cancelled", run.run_id)
                    await self._finished(run, result)
            raise
        except Exception as exc:
            result = self._result(run, started, RunStatus.FAILED, error=exc)
            failure = self._failure(run, exc, result)
            await self._finished(run, result)
            raise failure from exc
        result = self._result(run, started, status, bail_reason=bail_reason, recovered_error=recovered)
        if suspended is not None:
            result.suspend_reason = suspended.reason
            result.suspend_data = suspended.data
        logger.debug("run {} ended {} in {:.6f}s", run.run_id, status.value, result.duration)
        await self._finished(run, result)
        return result

    def _failure(self, run: RunState, exc: Exception, result: RunResult) -> RunFailed:
        node = run.failed_node
        failure: RunFailed
        if node is not None and node.error is exc and isinstance(exc, ChildProcessFailed):
            failure = exc.with_result(result)  # the child died: that is the run's error
        elif node is not None and node.error is exc:
            failure = ActionFailed(
                run_id=run.run_id,
                workflow_id=run.workflow.id,
                stage_id=node.stage_node.id,
                action_name=node.action.name,
                error=exc,
                result=result,
            )
        else:
            stage = run.failed_stage
            if stage is not None:
                failure = StageFailed(
                    run_id=run.run_id,
                    workflow_id=run.workflow.id,
                    stage_id=stage.id,
                    error=exc,
                    result=result,
                )
            else:
                failure = RunFailed(
                    f"run {run.run_id!r} (workflow {run.workflow.id!r}) failed: {type(exc).__name__}: {exc}",
                    run_id=run.run_id,
                    workflow_id=run.workflow.id,
                    error=exc,
                    result=result,
                )
        logger.opt(exception=exc).error("{}", failure)
        return failure

    async def _finished(self, run: RunState, result: RunResult) -> None:
        if self._hub.listening:
            await self._hub.emit(
                run.event(
                    EventKind.RUN_FINISHED,
                    status=result.status.value,
                    error=result.error,
                    duration=result.duration,
                )
            )

    def _result(
        self,
        run: RunState,
        started: float,
        status: RunStatus,
        *,
        bail_reason: str | None = None,
        error: BaseException | None = None,
        recovered_error: BaseException | None = None,
    ) -> RunResult:
        return RunResult(
            run_id=run.run_id,
            workflow_id=run.workflow.id,
            status=status,
            store=run.store.snapshot(),
            log=run.log,
            started=started,
            duration=perf_counter() - started,
            bail_reason=bail_reason,
            error=error,
            message_errors=run.message_errors,
            timings=run.timings,
            recovered_error=recovered_error,
        )

    def _chain(self, mws: tuple[Middleware, ...], innermost: Callable[[Middleware], Handler]) -> Chain:
        """``mws`` composed once per distinct list of middleware (and level)."""
        chains = self._chains[innermost]
        chain = chains.get(mws)
        if chain is None:
            if len(chains) >= 1024:  # middleware made per run: do not grow forever
                chains.clear()
            chain = chains[mws] = compose(mws, innermost)
        return chain

    # ---- stages ------------------------------------------------------------------

    async def _drive(self, run: RunState, wrapped: None = None) -> None:
        """Run the plan's stages in order (``wrapped``: the run level wraps no node)."""
        pending = deque(run.plan.roots)
        while pending:
            node = pending.popleft()
            if node.removed:
                continue
            if not node.enabled:
                await self._skip(run, node, "disabled")
                continue
            await self._run_stage(run, node)
            if node.inserted and node.status is _COMPLETED:
                pending.extendleft(reversed(node.inserted))

    async def _skip(self, run: RunState, node: StageNode | ActionNode, reason: str) -> None:
        node.status = _SKIPPED
        node.reason = reason
        run.log.append(node)
        if run.hub.listening:
            await run.hub.emit(run.event(EventKind.STEP_SKIPPED, node, status="skipped", reason=reason))

    async def _run_stage(self, run: RunState, node: StageNode) -> None:
        hub = run.hub
        node.status = _RUNNING
        run.log.append(node)
        node.started = started = perf_counter()
        if hub.listening:
            await hub.emit(run.event(EventKind.STAGE_STARTED, node))
        try:
            chain = run.stage_chain
            if chain is None:
                await self._stage_body(run, node)
            else:
                mctx = _entered("stage", run, node, self._stage_body)
                await call_chain(chain, mctx, mctx._enter)
                if not mctx._ran:
                    node.status = _SKIPPED
                    node.reason = _SKIPPED_BY_MIDDLEWARE
            failed = run.failed_node
            if failed is not None and failed.stage_node is node:
                # A stage or actions-block middleware swallowed an action's failure:
                # the stage completes, and the error stays on record, as do the
                # actions that never ran because of it.
                node.recovered = failed.error
                run.failed_node = None
                reason = f"action {failed.action.name!r} failed"
                for action in node.walk_actions():
                    if action.status is _PENDING and not action.removed:
                        await self._skip(run, action, reason)
        except BaseException as exc:
            node.duration = perf_counter() - started
            if isinstance(exc, Suspend):
                # The stage goes on when the run is resumed: nothing it inserted is skipped.
                node.status = _SUSPENDED
                raise
            if isinstance(exc, Bail):
                node.status = _COMPLETED
                reason = "the run bailed"
            elif isinstance(exc, anyio.get_cancelled_exc_class()):
                node.status = _CANCELLED
                reason = "the run was cancelled"
            else:
                node.status = _FAILED
                node.error = exc
                run.failed_stage = node
                reason = f"stage {node.id!r} failed"
            # The stages it inserted never run: recorded skipped, not silently dropped.
            inserted = [child for child in node.inserted or () if not child.removed]
            node.inserted = None
            with _grace():
                if hub.listening:
                    await self._finished_event(run, EventKind.STAGE_FINISHED, node, node.error)
                for child in inserted:
                    await self._skip(run, child, reason)
            raise
        node.duration = perf_counter() - started
        if node.status is _RUNNING:
            node.status = _COMPLETED
        if hub.listening:
            await self._finished_event(run, EventKind.STAGE_FINISHED, node, node.recovered)

    async def _finished_event(
        self, run: RunState, kind: EventKind, node: StageNode | ActionNode, error: BaseException | None
    ) -> None:
        """Emit STAGE_FINISHED / ACTION_FINISHED for ``node`` as it ended."""
        attempt = node.attempts if isinstance(node, ActionNode) else None
        await run.hub.emit(
            run.event(
                kind, node, status=node.status.value, error=error, duration=node.duration, attempt=attempt
            )
        )

    async def _stage_body(self, run: RunState, node: StageNode) -> None:
        stage = node.stage
        durable = run.durable
        if durable is None:
            if stage.initial:
                run.store.merge(stage.initial)
        elif not durable.stage_started(node):
            # Merged once: after a restart the store already holds it (and maybe later writes).
            if stage.initial:
                run.store.merge(stage.initial)
            await durable.commit_stage(node, stage.initial)
        # Composed once per stage, not per action call.
        action_mws = self.action_middleware + run.workflow._action_middleware + stage._action_middleware
        if action_mws:
            node.chain = self._chain(action_mws, _attempting)
        node.retry = stage.retry or self.retry
        node.timeout = stage.timeout or self.timeout
        node.fast = node.chain is None and node.retry is None and node.timeout is None
        node.pending = deque(node.actions)
        if stage.isolation is not None:
            await run_isolated(run, node, self.process_pool, self._stage_actions)
        else:
            await self._stage_actions(run, node)

    async def _stage_actions(self, run: RunState, node: StageNode) -> None:
        stage = node.stage
        try:
            if stage._middleware:
                chain = self._block_chains.get(stage._middleware) or self._chain(stage._middleware, _entering)
                mctx = _entered("actions", run, node, self._actions)
                await call_chain(chain, mctx, mctx._enter)
                if not mctx._ran:
                    for action in node.actions:
                        await self._skip(run, action, _SKIPPED_BY_MIDDLEWARE)
            else:
                await self._actions(run, node)
        finally:
            node.pending = None  # done with: a finished stage holds no queue

    async def _actions(self, run: RunState, node: StageNode) -> None:
        if node.stage.concurrency == 1:
            await self._run_sequential(run, node)
        else:
            await self._run_concurrent(run, node, node.stage.concurrency)

    # ---- actions -----------------------------------------------------------------

    async def _run_sequential(self, run: RunState, stage: StageNode) -> None:
        pending = stage.pending
        assert pending is not None
        run_action = self._run_action
        while pending:
            node = pending.popleft()
            if node.removed:
                continue
            if not node.enabled:
                await self._skip(run, node, "disabled")
                continue
            await run_action(run, node)
            if node.children:
                pending.extendleft(reversed(node.children))

    async def _run_concurrent(self, run: RunState, stage: StageNode, limit: int) -> None:
        pending = stage.pending
        assert pending is not None
        running = 0
        wake = anyio.Event()
        outcome: list[BaseException] = []

        async def one(node: ActionNode) -> None:
            nonlocal running
            try:
                await self._run_action(run, node)
            except Exception as exc:
                # Recorded here and re-raised once the group has cancelled the
                # siblings: the caller sees this one exception, not a group.
                if not outcome:
                    outcome.append(exc)
                group.cancel_scope.cancel()
            else:
                if node.children:
                    pending.extendleft(reversed(node.children))
            finally:
                running -= 1
                wake.set()

        async with anyio.create_task_group() as group:
            while True:
                while pending and running < limit and not outcome:
                    node = pending.popleft()
                    if node.removed:
                        continue
                    if not node.enabled:
                        await self._skip(run, node, "disabled")
                        continue
                    running += 1
                    group.start_soon(one, node)
                if running == 0:
                    break
                await wake.wait()
                wake = anyio.Event()
        if outcome:
            raise outcome[0]

    async def _run_action(self, run: RunState, node: ActionNode) -> None:
        hub = run.hub
        stage = node.stage_node
        stage.executed += 1
        node.index = stage.executed - 1
        node.status = _RUNNING
        run.log.append(node)
        node.started = started = perf_counter()
        durable = run.durable
        if durable is not None:
            replayed = durable.completed(node)
            if replayed is not None:
                try:
                    self._replay(run, node, replayed)
                except Exception as exc:
                    # Its plan changes cannot be replayed (an unknown action reference...).
                    node.duration = perf_counter() - started
                    node.status = _FAILED
                    node.error = exc
                    if run.failed_node is None:
                        run.failed_node = node
                    raise
                return
        listening = hub.listening
        if listening:
            await hub.emit(run.event(EventKind.ACTION_STARTED, node, attempt=1))
        action = node.action
        try:
            if stage.fast and action.retry is None and action.timeout is None:
                node.attempts = 1
                ctx = ActionContext(run, node)
                try:
                    await node.call(ctx)
                    if run.plan.over_limit:
                        raise _over_limit(run)
                    if durable is not None:
                        await _commit(durable, node, ctx)
                except BaseException as exc:
                    if durable is not None and isinstance(exc, Bail):
                        await _commit(durable, node, ctx)
                    failure = _attempt_failed(ctx, node, exc)
                    if failure is not exc:
                        raise failure from None
                    raise
                ctx._closed = True
                if ctx._overlay is not None or ctx._journal is not None:
                    journal = ctx._finish(True)
                    if journal is not None and listening:
                        await _emit_inserts(run, journal)
            else:
                # Middleware, a retry policy or a time limit: the attempts run in the frame of
                # the context's own method. Made here, inline, and the outermost middleware
                # called as call_chain does: this is the hottest place that wraps a step.
                mctx: _ActionLevel = _new_object(_ActionLevel)
                mctx._run = run
                mctx._node = node
                mctx._limit = action.timeout or stage.timeout
                retry = mctx._retry = action.retry or stage.retry
                attempt = mctx._attempt if retry is None else mctx._retrying
                chain = stage.chain
                if chain is None:
                    await attempt()
                else:
                    inner = chain.inner
                    await chain.first(mctx, attempt if inner is None else partial(inner, mctx))
                    if node.attempts == 0:
                        node.status = _SKIPPED
                        node.reason = _SKIPPED_BY_MIDDLEWARE
                    elif node.status is _FAILED:
                        # A middleware swallowed the error: completed, and the error is kept.
                        node.recovered = node.error
                        node.error = None
                        node.status = _RUNNING
        except BaseException as exc:
            node.duration = perf_counter() - started
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                # Even between attempts (a retry back-off): the action was cancelled, not failed.
                node.status = _CANCELLED
            elif not isinstance(exc, (Bail, Suspend)) and node.status is not _FAILED:
                node.status = _FAILED
                node.error = exc
            if node.status is _FAILED and run.failed_node is None:
                run.failed_node = node
            if listening:
                with _grace():
                    await self._finished_event(run, EventKind.ACTION_FINISHED, node, node.error)
            raise
        node.duration = perf_counter() - started
        if node.status is _RUNNING:
            node.status = _COMPLETED
        if listening:
            await self._finished_event(run, EventKind.ACTION_FINISHED, node, node.recovered)

    def _replay(self, run: RunState, node: ActionNode, ops: list[Op]) -> None:
        """Re-apply the plan changes of an action that completed before a restart, without running it."""
        durable = run.durable
        assert durable is not None
        ctx = ActionContext(run, node)
        ctx._replaying = True
        where = f"replaying action {node.action.name!r} of stage {node.stage_node.id!r}"
        for op in ops:
            kind = op["op"]
            if kind == "action":
                ctx.add_dynamic_action(durable.resolve(op["ref"], where))
            elif kind == "stage":
                stage = durable.stage_from_definition(op["stage"], where)
                ctx._count_insertion()
                ctx._insert_stage(stage, op["id"], min(op["at"], len(node.stage_node.inserted or ())))
            elif kind in ("disable_stage", "enable_stage", "remove_stage"):
                getattr(ctx.plan, kind)(op["id"])
            elif kind in ("disable_action", "enable_action", "remove_action"):
                getattr(ctx.plan, kind)(op["name"], op["stage_id"])
            else:
                getattr(ctx.plan, kind)(op["tag"])
        ctx._finish(True)
        node.attempts = max(node.attempts, 1)
        node.status = _COMPLETED
        node.reason = REPLAYED


class _ActionLevel(MiddlewareContext):
    """The context of action-level middleware.

    Its bound ``_attempt`` is the innermost ``call_next``: one attempt of the
    action, in the one coroutine frame that must stand around it, to commit
    the attempt's writes (or discard them) before the middleware goes on.
    Retries and time limits without middleware run their attempts through
    one too.
    """

    __slots__ = ("_limit", "_retry")
    level = "action"  # a class attribute: one store less per action

    _limit: float | None
    _retry: Retry | None

    async def _retrying(self) -> None:
        """The attempts of the action under its retry policy, with back-off between them."""
        retry = self._retry
        assert retry is not None
        run: RunState = self._run
        node: ActionNode = self._node
        durable = run.durable
        if durable is not None and node.attempts == 0:
            state = durable.retry_state(node)
            if state is not None:
                # Attempts made before a restart count, and the back-off still runs out.
                node.attempts, due = state
                await sleep_until(run.clock, due)
        while True:
            try:
                await self._attempt()
            except Exception as exc:
                if not retry.should_retry(exc, node.attempts):
                    raise
                delay = retry.backoff(node.attempts)
                if durable is not None:
                    await durable.commit_attempt(node, node.attempts, run.clock.now() + delay)
                logger.info(
                    "action {!r} of stage {!r} in run {} failed on attempt {} ({}: {}); retrying in {:.3f}s",
                    node.action.name,
                    node.stage_node.id,
                    run.run_id,
                    node.attempts,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await run.clock.sleep(delay)
            else:
                return

    async def _attempt(self) -> None:
        run: RunState = self._run
        node: ActionNode = self._node
        limit = self._limit
        node.attempts = attempt = node.attempts + 1
        if attempt > 1:
            node.status = _RUNNING
            if run.hub.listening:
                await run.hub.emit(
                    run.event(
                        EventKind.ACTION_RETRY,
                        node,
                        attempt=attempt,
                        error=node.error,
                    )
                )
            node.error = None
        ctx = ActionContext(run, node, attempt)
        try:
            if limit is None:
                await node.call(ctx)
                if run.plan.over_limit:
                    raise _over_limit(run)
            else:
                with anyio.move_on_after(limit) as scope:
                    await node.call(ctx)
                if run.plan.over_limit:
                    raise _over_limit(run)
                if scope.cancelled_caught:
                    raise ActionTimeout(
                        run_id=run.run_id,
                        stage_id=node.stage_node.id,
                        action_name=node.action.name,
                        seconds=limit,
                    )
            if run.durable is not None:
                await _commit(run.durable, node, ctx)
        except BaseException as exc:
            if isinstance(exc, Bail) and run.durable is not None:
                await _commit(run.durable, node, ctx)
            failure = _attempt_failed(ctx, node, exc)
            if failure is not exc:
                raise failure from None
            raise
        ctx._closed = True
        if ctx._overlay is not None or ctx._journal is not None:
            journal = ctx._finish(True)
            if journal is not None and run.hub.listening:
                await _emit_inserts(run, journal)
        if node.status is _FAILED:  # an earlier attempt failed (a middleware retries)
            node.status = _RUNNING
            node.error = None


_new_object = object.__new__


class _Entering(MiddlewareContext):
    """The context of run, stage and actions-block middleware.

    Its bound ``_enter`` is the innermost ``call_next``: it runs the wrapped
    step (``_step``, the runner's method for the level), once.
    """

    __slots__ = ("_step",)

    _step: Callable[[RunState, Any], Awaitable[None]]

    def _enter(self) -> Awaitable[None]:
        if self._ran:
            raise called_twice(self)
        self._ran = True
        return self._step(self._run, self._node)


def _entered(
    level: Level, run: RunState, node: StageNode | None, step: Callable[[RunState, Any], Awaitable[None]]
) -> _Entering:
    mctx: _Entering = _new_object(_Entering)
    mctx.level = level
    mctx._run = run
    mctx._node = node
    mctx._ran = False
    mctx._step = step
    return mctx


def _entering(mw: Middleware) -> Handler:
    """The innermost of two or more run, stage or actions-block layers: ``call_next`` is ``_enter``."""

    def layer(mctx: Any) -> Awaitable[None]:
        return mw(mctx, mctx._enter)

    return layer


def _commit(durable: Durability, node: ActionNode, ctx: ActionContext) -> Awaitable[None]:
    """The checkpoint of an attempt that ended, before the run moves on.

    Its store changes, plan changes and completion, in one transaction; also
    for a bail, which keeps what the action wrote, in the database too.
    """
    return durable.commit_action(node, ctx._overlay, getattr(ctx, "_ops", None))


def _attempting(mw: Middleware) -> Handler:
    """The innermost of two or more action-level layers: ``call_next`` is the attempt itself."""

    def layer(mctx: Any) -> Awaitable[None]:
        return mw(mctx, mctx._attempt if mctx._retry is None else mctx._retrying)

    return layer


def _over_limit(run: RunState) -> InsertionLimitExceeded:
    # The action swallowed InsertionLimitExceeded: the run fails all the same.
    return InsertionLimitExceeded(run.plan.max_insertions, run_id=run.run_id)


async def _emit_inserts(run: RunState, journal: list[UndoEntry]) -> None:
    for kind, _, child in journal:
        if kind == _UNDO_STAGE:
            await run.hub.emit(run.event(EventKind.STAGE_INSERTED, child))
        elif kind == _UNDO_ACTION:
            await run.hub.emit(run.event(EventKind.ACTION_INSERTED, child))


def _attempt_failed(ctx: ActionContext, node: ActionNode, exc: BaseException) -> BaseException:
    """Record how the attempt ended; the exception to go on with (``exc``, or what replaces it)."""
    if isinstance(exc, Suspend) and (refused := suspend_data_error(ctx, exc.data)) is not None:
        exc = refused  # an af.Suspend raised directly, with data the run cannot keep
    if isinstance(exc, Bail):
        ctx._finish(True)
        node.status = _COMPLETED
        node.reason = f"bailed: {exc.reason}"
    elif isinstance(exc, Suspend):
        ctx._finish(False)
        node.status = _SUSPENDED
        node.reason = f"suspended: {exc.reason}"
        if ctx._run.durable is not None:
            ctx._run.durable.suspended_key = node.key
    elif isinstance(exc, anyio.get_cancelled_exc_class()):
        ctx._finish(False)
        node.status = _CANCELLED
    else:
        ctx._finish(False)
        node.status = _FAILED
        node.error = exc
    return exc


async def run(
    workflow: Workflow,
    *,
    store: StoreData | Store | None = None,
    run_id: str | None = None,
    max_insertions: int | None = None,
    on_message: MessageHandler | Mapping[str, MessageHandler] | None = None,
    runner: Runner | None = None,
) -> RunResult:
    """Run ``workflow`` once and return its result.

    Args:
        store: initial store contents.
        run_id: use this id instead of a fresh one.
        max_insertions: the bound on dynamic insertions for this run.
        on_message: a handler for every message of this run, or a mapping of
            message kind to handler.
        runner: run with this runner (its middleware, defaults and handlers);
            a default one otherwise.

    See :meth:`Runner.run` for what is raised.
    """
    if runner is None:
        runner = Runner(max_insertions=DEFAULT_MAX_INSERTIONS if max_insertions is None else max_insertions)
    unregister: list[Callable[[], None]] = []
    the_id = run_id or new_run_id()
    if on_message is not None:
        routes = on_message.items() if isinstance(on_message, Mapping) else [("*", on_message)]
        for kind, handler in routes:
            unregister.append(runner.on_message(kind, handler, run_id=the_id))
    try:
        return await runner.run(workflow, store=store, run_id=the_id, max_insertions=max_insertions)
    finally:
        for remove in unregister:
            remove()
