"""The runner: drives a run's plan, stage by stage and action by action.

The loop is iterative: each level keeps a deque of pending nodes, and what a
node inserted is pushed at the front of that deque when the node completes.
That gives depth-first order for any nesting without recursion, so a chain
of 10,000 nested insertions never touches Python's recursion limit.

Executing one action is :func:`~asyncflow._core.execute.run_action`'s job;
the runner drives runs and stages, and runs the middleware around them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from time import perf_counter
from typing import Any

import anyio
from loguru import logger

from .clock import SYSTEM_CLOCK, Clock
from .context import MiddlewareContext
from .errors import ActionFailed, Bail, ChildProcessFailed, RunFailed, StageFailed, Suspend
from .events import EventHandler, EventKind, EventStream, Hub, MessageHandler
from .execute import DISABLED, SKIPPED_BY_MIDDLEWARE, attempting, emit_finished, run_action, skip_step
from .isolation.process import ProcessPool
from .isolation.session import run_isolated
from .middleware import (
    Chain,
    Handler,
    Level,
    Middleware,
    call_chain,
    called_twice,
    check_middlewares,
    compose,
)
from .plan import ActionNode, StageNode
from .records import (
    STEP_CANCELLED,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_PENDING,
    STEP_RUNNING,
    STEP_SKIPPED,
    STEP_SUSPENDED,
    RunResult,
    RunStatus,
)
from .retry import Retry, check_retry, check_timeout
from .state import DEFAULT_MAX_INSERTIONS, RunState, check_max_insertions, grace, new_run_id
from .store import Store, StoreData
from .workflow import Workflow


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
        self.max_insertions = check_max_insertions(max_insertions)
        self.require_json = require_json
        #: the listeners of this runner's runs (events and messages), shared with the engine's runs
        self.hub = Hub()
        self._run_chain = compose(self.middleware, _entering) if self.middleware else None
        # Composed chains by innermost handler, then by middleware: built once, not per stage.
        self._chains: dict[Callable[[Middleware], Handler], dict[tuple[Middleware, ...], Chain]] = {
            _entering: {},
            attempting: {},
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
        return self.hub.on_message(
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
        return self.hub.on_event(handler)

    def subscribe(
        self, *, buffer: int = 1_000, run_id: str | None = None
    ) -> AbstractAsyncContextManager[EventStream]:
        """An async iterator of events with a bounded buffer; it never slows the runs.

        ::

            async with runner.subscribe() as events:
                async for event in events: ...

        When the subscriber falls behind by ``buffer`` events, further events
        are dropped and it receives one ``EVENTS_DROPPED`` event saying how
        many it missed. A stream never holds more than ``buffer`` events and
        that one marker, however long nobody reads it; ``RUN_FINISHED`` is
        kept before any other kind (see :class:`~asyncflow.EventStream`).
        ``run_id`` narrows the stream to one run.
        """
        return self.hub.subscribe(buffer, run_id)

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
        limit = self.max_insertions if max_insertions is None else check_max_insertions(max_insertions)
        if isinstance(store, Store):
            root = store.clone()
        else:
            root = Store(clock=self.clock.now)
            if store is not None:
                root.merge(store)
        run = RunState(workflow, run_id or new_run_id(), root, limit, self.hub, self.require_json, self.clock)
        return await self.execute(run)

    async def execute(self, run: RunState) -> RunResult:
        """Run ``run`` (a run state made by the caller: the engine's entry point) to its end."""
        started = perf_counter()
        hub = self.hub
        logger.debug("run {} of workflow {!r} started", run.run_id, run.workflow.id)
        if hub.listening:
            await hub.emit(run.event(EventKind.RUN_STARTED))
        stage_mws = self.stage_middleware + run.workflow.middleware
        if stage_mws:
            run.stage_chain = self._chain(stage_mws, _entering)
        status = RunStatus.COMPLETED
        bail_reason: str | None = None
        recovered: BaseException | None = None
        suspended: Suspend | None = None
        try:
            if (run_chain := self._run_chain) is not None:
                mctx = _Entering("run", run, None, self._drive)
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
                            if stage.status is STEP_PENDING and not stage.removed:
                                await skip_step(run, stage, reason)
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
            with grace():
                if run.interrupted:
                    logger.info("run {} was interrupted; it will be taken over", run.run_id)
                    if self.hub.listening:
                        await self.hub.emit(run.event(EventKind.RUN_INTERRUPTED, status="running"))
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
        if self.hub.listening:
            await self.hub.emit(
                run.event(
                    EventKind.RUN_SUSPENDED
                    if result.status is RunStatus.SUSPENDED
                    else EventKind.RUN_FINISHED,
                    status=result.status.value,
                    error=result.error,
                    duration=result.duration,
                    reason=result.suspend_reason or result.bail_reason,
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
                await skip_step(run, node, DISABLED)
                continue
            await self._run_stage(run, node)
            if node.inserted and node.status is STEP_COMPLETED:
                pending.extendleft(reversed(node.inserted))

    async def _run_stage(self, run: RunState, node: StageNode) -> None:
        hub = run.hub
        node.status = STEP_RUNNING
        run.log.append(node)
        node.started = started = perf_counter()
        if hub.listening:
            await hub.emit(run.event(EventKind.STAGE_STARTED, node))
        try:
            chain = run.stage_chain
            if chain is None:
                await self._stage_body(run, node)
            else:
                mctx = _Entering("stage", run, node, self._stage_body)
                await call_chain(chain, mctx, mctx._enter)
                if not mctx._ran:
                    node.status = STEP_SKIPPED
                    node.reason = SKIPPED_BY_MIDDLEWARE
            failed = run.failed_node
            if failed is not None and failed.stage_node is node:
                # A stage or actions-block middleware swallowed an action's failure:
                # the stage completes, and the error stays on record, as do the
                # actions that never ran because of it.
                node.recovered = failed.error
                run.failed_node = None
                reason = f"action {failed.action.name!r} failed"
                for action in node.walk_actions():
                    if action.status is STEP_PENDING and not action.removed:
                        await skip_step(run, action, reason)
        except BaseException as exc:
            node.duration = perf_counter() - started
            if isinstance(exc, Suspend):
                # The stage goes on when the run is resumed: nothing it inserted is skipped.
                node.status = STEP_SUSPENDED
                raise
            if isinstance(exc, Bail):
                node.status = STEP_COMPLETED
                reason = "the run bailed"
            elif isinstance(exc, anyio.get_cancelled_exc_class()):
                node.status = STEP_CANCELLED
                reason = "the run was cancelled"
            else:
                node.status = STEP_FAILED
                node.error = exc
                run.failed_stage = node
                reason = f"stage {node.id!r} failed"
            # The stages it inserted never run: recorded skipped, not silently dropped.
            inserted = [child for child in node.inserted or () if not child.removed]
            node.inserted = None
            with grace():
                if hub.listening:
                    await emit_finished(run, EventKind.STAGE_FINISHED, node, node.error)
                for child in inserted:
                    await skip_step(run, child, reason)
            raise
        node.duration = perf_counter() - started
        if node.status is STEP_RUNNING:
            node.status = STEP_COMPLETED
        if hub.listening:
            await emit_finished(run, EventKind.STAGE_FINISHED, node, node.recovered)

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
        action_mws = self.action_middleware + run.workflow.action_middleware + stage.action_middleware
        if action_mws:
            node.chain = self._chain(action_mws, attempting)
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
            block_mws = stage.middleware
            if block_mws:
                chain = self._block_chains.get(block_mws) or self._chain(block_mws, _entering)
                mctx = _Entering("actions", run, node, self._actions)
                await call_chain(chain, mctx, mctx._enter)
                if not mctx._ran:
                    for action in node.actions:
                        await skip_step(run, action, SKIPPED_BY_MIDDLEWARE)
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

        while pending:
            node = pending.popleft()
            if node.removed:
                continue
            if not node.enabled:
                await skip_step(run, node, DISABLED)
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
                await run_action(run, node)
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
                        await skip_step(run, node, DISABLED)
                        continue
                    running += 1
                    group.start_soon(one, node)
                if running == 0:
                    break
                await wake.wait()
                wake = anyio.Event()
        if outcome:
            raise outcome[0]


class _Entering(MiddlewareContext):
    """The context of run, stage and actions-block middleware.

    Its bound ``_enter`` is the innermost ``call_next``: it runs the wrapped
    step (``_step``, the runner's method for the level), once.
    """

    __slots__ = ("_ran", "_step")

    def __init__(
        self,
        level: Level,
        run: RunState,
        node: StageNode | None,
        step: Callable[[RunState, Any], Awaitable[None]],
    ) -> None:
        super().__init__(level, run, node)
        self._ran = False  # set by _enter: the wrapped step ran
        self._step = step

    def _enter(self) -> Awaitable[None]:
        if self._ran:
            raise called_twice(self)
        self._ran = True
        return self._step(self._run, self._node)


def _entering(mw: Middleware) -> Handler:
    """The innermost of two or more run, stage or actions-block layers: ``call_next`` is ``_enter``."""

    def layer(mctx: Any) -> Awaitable[None]:
        return mw(mctx, mctx._enter)

    return layer


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
