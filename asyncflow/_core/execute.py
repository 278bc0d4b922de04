"""Executing one action: the fast path, retries, time limits, middleware, the checkpoint, replay.

The runner hands each action node of a stage to :func:`run_action`. Per
action, the fast path (no middleware, no retry, no timeout, nobody listening
for events) is one context object, two clock reads and the await of the
action itself (and in a durable run its checkpoint); everything else is paid
only by those who use it.

The context is closed through :func:`~asyncflow._core.context.close_context`
(its state stays private to ``context.py``), and :class:`ActionLevel` fills
its inherited ``MiddlewareContext`` slots in its own ``__init__``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from functools import partial
from time import perf_counter
from typing import Any

import anyio
from loguru import logger

from .clock import sleep_until
from .context import (
    ActionContext,
    MiddlewareContext,
    close_context,
    commit_checkpoint,
    end_attempt,
    replay_plan_changes,
)
from .durable import Op
from .errors import ActionTimeout, Bail, InsertionLimitExceeded, Suspend
from .events import EventKind
from .middleware import Handler, Middleware
from .plan import UNDO_ACTION, UNDO_STAGE, ActionNode, StageNode, UndoEntry
from .records import (
    STEP_CANCELLED,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_RUNNING,
    STEP_SKIPPED,
    StepNote,
    step_reason,
)
from .retry import Retry
from .state import RunState, grace

# Whole reasons, as text once: a step's reason is stored as text (see StepNote).
REPLAYED = step_reason(StepNote.REPLAYED)
SKIPPED_BY_MIDDLEWARE = step_reason(StepNote.SKIPPED_BY_MIDDLEWARE)
DISABLED = step_reason(StepNote.DISABLED)


async def skip_step(run: RunState, node: StageNode | ActionNode, reason: str) -> None:
    """Record ``node`` skipped for ``reason`` (and tell listeners)."""
    node.status = STEP_SKIPPED
    node.reason = reason
    run.log.append(node)
    if run.hub.listening:
        await run.hub.emit(run.event(EventKind.STEP_SKIPPED, node, status="skipped", reason=reason))


async def emit_finished(
    run: RunState, kind: EventKind, node: StageNode | ActionNode, error: BaseException | None
) -> None:
    """Emit STAGE_FINISHED / ACTION_FINISHED for ``node`` as it ended."""
    attempt = node.attempts if isinstance(node, ActionNode) else None
    await run.hub.emit(
        run.event(kind, node, status=node.status.value, error=error, duration=node.duration, attempt=attempt)
    )


async def run_action(run: RunState, node: ActionNode) -> None:
    """Execute one action of the plan: replayed, on the fast path, or through its middleware and policies."""
    hub = run.hub
    stage = node.stage_node
    stage.executed += 1
    node.index = stage.executed - 1
    node.status = STEP_RUNNING
    run.log.append(node)
    node.started = started = perf_counter()
    durable = run.durable
    if durable is not None:
        replayed = durable.completed(node)
        if replayed is not None:
            try:
                replay(run, node, replayed)
            except Exception as exc:
                # Its plan changes cannot be replayed (an unknown action reference...).
                node.duration = perf_counter() - started
                node.status = STEP_FAILED
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
                    await commit_checkpoint(durable, node, ctx)
            except BaseException as exc:
                if durable is not None and isinstance(exc, Bail):
                    await commit_checkpoint(durable, node, ctx)
                failure = end_attempt(ctx, node, exc)
                if failure is not exc:
                    raise failure from None
                raise
            journal = close_context(ctx)
            if journal is not None and listening:
                await _emit_inserts(run, journal)
        else:
            # Middleware, a retry policy or a time limit: the attempts run in the frame of
            # the context's own method. Made here, inline, and the outermost middleware
            # called as call_chain does: this is the hottest place that wraps a step.
            retry = action.retry or stage.retry
            mctx = ActionLevel(run, node, action.timeout or stage.timeout, retry)
            attempt = mctx._attempt if retry is None else mctx._retrying
            chain = stage.chain
            if chain is None:
                await attempt()
            else:
                inner = chain.inner
                await chain.first(mctx, attempt if inner is None else partial(inner, mctx))
                if node.attempts == 0:
                    node.status = STEP_SKIPPED
                    node.reason = SKIPPED_BY_MIDDLEWARE
                elif node.status is STEP_FAILED:
                    # A middleware swallowed the error: completed, and the error is kept.
                    node.recovered = node.error
                    node.error = None
                    node.status = STEP_RUNNING
    except BaseException as exc:
        node.duration = perf_counter() - started
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            # Even between attempts (a retry back-off): the action was cancelled, not failed.
            node.status = STEP_CANCELLED
        elif not isinstance(exc, (Bail, Suspend)) and node.status is not STEP_FAILED:
            node.status = STEP_FAILED
            node.error = exc
        if node.status is STEP_FAILED and run.failed_node is None:
            run.failed_node = node
        if listening:
            with grace():
                await emit_finished(run, EventKind.ACTION_FINISHED, node, node.error)
        raise
    node.duration = perf_counter() - started
    if node.status is STEP_RUNNING:
        node.status = STEP_COMPLETED
    if listening:
        await emit_finished(run, EventKind.ACTION_FINISHED, node, node.recovered)


def replay(run: RunState, node: ActionNode, ops: list[Op]) -> None:
    """Re-apply the plan changes of an action that completed before a restart, without running it."""
    durable = run.durable
    assert durable is not None
    replay_plan_changes(run, node, ops, durable)
    node.attempts = max(node.attempts, 1)
    node.status = STEP_COMPLETED
    node.reason = REPLAYED


class ActionLevel(MiddlewareContext):
    """The context of action-level middleware.

    Its bound ``_attempt`` is the innermost ``call_next``: one attempt of the
    action, in the one coroutine frame that must stand around it, to commit
    the attempt's writes (or discard them) before the middleware goes on.
    Retries and time limits without middleware run their attempts through
    one too.
    """

    __slots__ = ("_limit", "_retry")
    level = "action"  # a class attribute: one store less per action

    def __init__(self, run: RunState, node: ActionNode, limit: float | None, retry: Retry | None) -> None:
        # (MiddlewareContext.__init__ is not called: this is the hottest place that wraps a step.)
        self._run = run
        self._node = node
        self._limit = limit
        self._retry = retry

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
            node.status = STEP_RUNNING
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
                await commit_checkpoint(run.durable, node, ctx)
        except BaseException as exc:
            if isinstance(exc, Bail) and run.durable is not None:
                await commit_checkpoint(run.durable, node, ctx)
            failure = end_attempt(ctx, node, exc)
            if failure is not exc:
                raise failure from None
            raise
        journal = close_context(ctx)
        if journal is not None and run.hub.listening:
            await _emit_inserts(run, journal)


def attempting(mw: Middleware) -> Handler:
    """The innermost of two or more action-level layers: ``call_next`` is the attempt itself."""

    def layer(mctx: Any) -> Awaitable[None]:
        return mw(mctx, mctx._attempt if mctx._retry is None else mctx._retrying)

    return layer


def _over_limit(run: RunState) -> InsertionLimitExceeded:
    # The action swallowed InsertionLimitExceeded: the run fails all the same.
    return InsertionLimitExceeded(run.plan.max_insertions, run_id=run.run_id)


async def _emit_inserts(run: RunState, journal: list[UndoEntry]) -> None:
    for kind, _, child in journal:
        if kind == UNDO_STAGE:
            await run.hub.emit(run.event(EventKind.STAGE_INSERTED, child))
        elif kind == UNDO_ACTION:
            await run.hub.emit(run.event(EventKind.ACTION_INSERTED, child))
