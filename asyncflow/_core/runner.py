"""The runner: drives a run's plan, stage by stage and action by action.

The loop is iterative: each level keeps a deque of pending nodes, and what a
node inserted is pushed at the front of that deque when the node completes.
That gives depth-first order for any nesting without recursion, so a chain
of 10,000 nested insertions never touches Python's recursion limit.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping
from time import perf_counter
from typing import Any

import anyio
from loguru import logger

from .context import ActionContext
from .errors import ActionFailed, Bail, InsertionLimitExceeded
from .plan import ActionNode, PlanState, StageNode
from .records import RunResult, RunStatus, StepStatus
from .store import Store
from .workflow import Workflow

DEFAULT_MAX_INSERTIONS = 10_000


def _check_max_insertions(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_insertions must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"max_insertions must be zero or more, got {value}")
    return value


class RunState:
    """Everything one run owns while it runs (internal)."""

    __slots__ = ("failed_node", "log", "plan", "run_id", "store", "workflow")

    def __init__(self, workflow: Workflow, run_id: str, store: Store, max_insertions: int) -> None:
        self.workflow = workflow
        self.run_id = run_id
        self.store = store
        self.plan = PlanState(workflow, run_id, max_insertions)
        self.log: list[StageNode | ActionNode] = []
        self.failed_node: ActionNode | None = None

    def on_insert(self, node: StageNode | ActionNode) -> None:
        """Hook called when an action inserts a stage or an action."""


def new_run_id() -> str:
    """A fresh, unique run id."""
    return uuid.uuid4().hex


class Runner:
    """Runs workflows in the current task; holds settings shared by its runs.

    Args:
        max_insertions: the bound on dynamic insertions per run (default
            10,000); passing it fails the run with
            :class:`~asyncflow.InsertionLimitExceeded` as the cause.
    """

    def __init__(self, *, max_insertions: int = DEFAULT_MAX_INSERTIONS) -> None:
        self.max_insertions = _check_max_insertions(max_insertions)

    async def run(
        self,
        workflow: Workflow,
        *,
        store: Mapping[str, Any] | Store | None = None,
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

        A bail returns normally with status ``BAILED``. Cancellation
        propagates after the run is recorded cancelled.
        """
        if not isinstance(workflow, Workflow):
            raise TypeError(f"Runner.run takes an af.Workflow, got {workflow!r}")
        limit = self.max_insertions if max_insertions is None else _check_max_insertions(max_insertions)
        if isinstance(store, Store):
            root = store.clone()
        else:
            root = Store()
            if store is not None:
                root.merge(store)
        run = RunState(workflow, run_id or new_run_id(), root, limit)
        return await self._run(run)

    async def _run(self, run: RunState) -> RunResult:
        started = perf_counter()
        logger.debug("run {} of workflow {!r} started", run.run_id, run.workflow.id)
        try:
            await self._drive(run)
        except Bail as bail:
            result = self._result(run, started, RunStatus.BAILED, bail_reason=bail.reason)
            logger.info("run {} bailed: {}", run.run_id, bail.reason)
            return result
        except anyio.get_cancelled_exc_class():
            self._result(run, started, RunStatus.CANCELLED)
            logger.info("run {} was cancelled", run.run_id)
            raise
        except Exception as exc:
            result = self._result(run, started, RunStatus.FAILED, error=exc)
            node = run.failed_node
            if node is None:
                raise
            failure = ActionFailed(
                run_id=run.run_id,
                workflow_id=run.workflow.id,
                stage_id=node.stage_node.id,
                action_name=node.action.name,
                error=exc,
                result=result,
            )
            logger.opt(exception=exc).error("{}", failure)
            raise failure from exc
        result = self._result(run, started, RunStatus.COMPLETED)
        logger.debug("run {} completed in {:.6f}s", run.run_id, result.duration)
        return result

    def _result(
        self,
        run: RunState,
        started: float,
        status: RunStatus,
        *,
        bail_reason: str | None = None,
        error: BaseException | None = None,
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
        )

    # ---- stages ------------------------------------------------------------------

    async def _drive(self, run: RunState) -> None:
        pending = deque(run.plan.roots)
        log = run.log
        while pending:
            node = pending.popleft()
            if node.removed:
                continue
            if not node.enabled:
                node.status = StepStatus.SKIPPED
                node.reason = "disabled"
                log.append(node)
                continue
            await self._run_stage(run, node)
            if node.inserted:
                pending.extendleft(reversed(node.inserted))

    async def _run_stage(self, run: RunState, node: StageNode) -> None:
        stage = node.stage
        node.status = StepStatus.RUNNING
        run.log.append(node)
        node.started = started = perf_counter()
        try:
            if stage.initial:
                run.store.merge(stage.initial)
            if stage.concurrency == 1:
                await self._run_sequential(run, node)
            else:
                await self._run_concurrent(run, node, stage.concurrency)
        except BaseException as exc:
            node.duration = perf_counter() - started
            if isinstance(exc, Bail):
                node.status = StepStatus.COMPLETED
                reason = "the run bailed"
            elif isinstance(exc, anyio.get_cancelled_exc_class()):
                node.status = StepStatus.CANCELLED
                reason = "the run was cancelled"
            else:
                node.status = StepStatus.FAILED
                node.error = exc
                reason = f"stage {node.id!r} failed"
            self._skip_inserted(run, node, reason)
            raise
        node.duration = perf_counter() - started
        node.status = StepStatus.COMPLETED

    def _skip_inserted(self, run: RunState, node: StageNode, reason: str) -> None:
        for child in node.inserted:
            if not child.removed:
                child.status = StepStatus.SKIPPED
                child.reason = reason
                run.log.append(child)

    # ---- actions -----------------------------------------------------------------

    async def _run_sequential(self, run: RunState, stage: StageNode) -> None:
        pending = deque(stage.actions)
        run_action = self._run_action
        while pending:
            node = pending.popleft()
            if node.removed:
                continue
            if not node.enabled:
                self._skip_action(run, node)
                continue
            await run_action(run, node)
            if node.children:
                pending.extendleft(reversed(node.children))

    async def _run_concurrent(self, run: RunState, stage: StageNode, limit: int) -> None:
        pending = deque(stage.actions)
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
                        self._skip_action(run, node)
                        continue
                    running += 1
                    group.start_soon(one, node)
                if running == 0:
                    break
                await wake.wait()
                wake = anyio.Event()
        if outcome:
            raise outcome[0]

    def _skip_action(self, run: RunState, node: ActionNode) -> None:
        node.status = StepStatus.SKIPPED
        node.reason = "disabled"
        run.log.append(node)

    async def _run_action(self, run: RunState, node: ActionNode) -> None:
        ctx = ActionContext(run, node)
        node.status = StepStatus.RUNNING
        run.log.append(node)
        node.started = started = perf_counter()
        try:
            await node.call(ctx)
        except BaseException as exc:
            node.duration = perf_counter() - started
            if isinstance(exc, Bail):
                ctx._finish(True)
                node.status = StepStatus.COMPLETED
                node.reason = f"bailed: {exc.reason}"
            elif isinstance(exc, anyio.get_cancelled_exc_class()):
                ctx._finish(False)
                node.status = StepStatus.CANCELLED
            else:
                ctx._finish(False)
                self._fail(run, node, exc)
            raise
        ctx._finish(True)
        node.duration = perf_counter() - started
        if run.plan.over_limit:
            # The action swallowed InsertionLimitExceeded; the run still fails.
            over = InsertionLimitExceeded(run.plan.max_insertions, run_id=run.run_id)
            self._fail(run, node, over)
            raise over
        node.status = StepStatus.COMPLETED

    def _fail(self, run: RunState, node: ActionNode, exc: BaseException) -> None:
        node.status = StepStatus.FAILED
        node.error = exc
        if run.failed_node is None:
            run.failed_node = node


async def run(
    workflow: Workflow,
    *,
    store: Mapping[str, Any] | Store | None = None,
    run_id: str | None = None,
    max_insertions: int = DEFAULT_MAX_INSERTIONS,
) -> RunResult:
    """Run ``workflow`` once with a default :class:`Runner` and return its result.

    See :meth:`Runner.run` for the arguments and what is raised.
    """
    return await Runner(max_insertions=max_insertions).run(workflow, store=store, run_id=run_id)
