"""The contexts: :class:`ActionContext` handed to each action, :class:`MiddlewareContext` to middleware."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
from loguru import logger as _root_logger

from .actions import Action
from .clock import Clock, sleep_until
from .durable import Durability, Op
from .errors import Bail, ContextClosed, DuplicateStageId, InsertionLimitExceeded, NotSerializable, Suspend
from .events import EventKind, Message
from .jsonvalues import exact_json
from .middleware import Level
from .plan import UNDO_ACTION, UNDO_STAGE, ActionNode, Plan, StageNode, UndoEntry, undo
from .records import (
    STEP_CANCELLED,
    STEP_COMPLETED,
    STEP_FAILED,
    STEP_SUSPENDED,
    StepNote,
    Timing,
    step_reason,
)
from .store import Store
from .workflow import Stage, Workflow, check_action_name

if TYPE_CHECKING:
    from loguru import Logger

    from .state import RunState


class _RunView:
    """What both contexts read of their run the same way: its id and its workflow."""

    __slots__ = ("_run",)

    _run: RunState

    @property
    def run_id(self) -> str:
        """The id of this run."""
        return self._run.run_id

    @property
    def workflow(self) -> Workflow:
        """The workflow definition being run (do not change it)."""
        return self._run.workflow


class ActionContext(_RunView):
    """What an action sees of its run: ids, the store, the plan, a logger.

    One context is made per action execution. ``store``, ``plan`` and
    ``logger`` are built on first use, so an action that does not touch them
    costs nothing for them.
    """

    __slots__ = (
        "_closed",
        "_journal",
        "_logger",
        "_node",
        "_ops",
        "_overlay",
        "_plan",
        "_replaying",
        "attempt",
    )
    # Set only in durable runs (read with getattr): the plan changes this
    # execution made, as JSON ops, and whether they are being replayed.
    _ops: list[Op]
    _replaying: bool
    # Set on first use only: most actions never touch them.
    _plan: Plan
    _logger: Logger

    def __init__(self, run: RunState, node: ActionNode, attempt: int = 1) -> None:
        self._run = run
        self._node = node
        self._overlay: Store | None = None
        self._journal: list[UndoEntry] | None = None
        self._closed = False
        self.attempt = attempt

    # ---- identity (``run_id`` and ``workflow`` too) ------------------------------

    @property
    def stage(self) -> Stage:
        """The stage this action runs in."""
        return self._node.stage_node.stage

    @property
    def stage_id(self) -> str:
        """The id of the current stage in this run (``id#2`` for an inserted duplicate)."""
        return self._node.stage_node.id

    @property
    def action(self) -> Action:
        """The action being run."""
        return self._node.action

    # ---- doors -----------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The run's store as this action sees it.

        Writes are visible to this action at once and to the rest of the run
        when the action completes; if the action fails they are discarded.
        """
        overlay = self._overlay
        if overlay is None:
            self._check_open("store")
            overlay = self._overlay = self._run.store.overlay()
        return overlay

    @property
    def plan(self) -> Plan:
        """Control over the rest of this run (changes are undone if the action fails)."""
        try:
            return self._plan
        except AttributeError:
            plan = self._plan = Plan(self._run.plan, self._ensure_journal(), self._durable_ops())
            return plan

    # ---- durable runs ------------------------------------------------------------

    @property
    def idempotency_key(self) -> str:
        """A key for this step, the same on every execution of it (retries, recovery, resume).

        Use it to make side effects idempotent: pass it to the payment API,
        or record it next to what the step wrote.
        """
        return f"{self._run.run_id}:{self._node.key}"

    @property
    def is_resuming(self) -> bool:
        """Whether this action suspended the run and is now running again after ``engine.resume``."""
        durable = self._run.durable
        return durable is not None and durable.resume_step == self._node.key

    @property
    def resume_data(self) -> Any:
        """The data given to ``engine.resume``, in the action that suspended (else ``None``)."""
        durable = self._run.durable
        return durable.resume_data if durable is not None and self.is_resuming else None

    def suspend(self, reason: str, data: Any = None) -> NoReturn:
        """Park the run until ``engine.resume(run_id, data)``; the run becomes ``SUSPENDED``.

        ``data`` is kept for the outside world (``RunInfo.suspend_data``). This
        action's writes are discarded; on resume it runs again from its start,
        with :attr:`is_resuming` true and :attr:`resume_data` set. Durable runs
        need ``data`` to be JSON.
        """
        self._check_open("suspend")
        if not isinstance(reason, str):
            raise TypeError(f"suspend reason must be a string, got {reason!r}")
        refused = suspend_data_error(self, data)
        if refused is not None:
            raise refused
        raise Suspend(reason, data)

    def _durable_ops(self) -> list[Op] | None:
        """This execution's op list in a durable run (``None`` otherwise, or while replaying)."""
        if self._run.durable is None or getattr(self, "_replaying", False):
            return None
        ops = getattr(self, "_ops", None)
        if ops is None:
            ops = self._ops = []
        return ops

    @property
    def logger(self) -> Logger:
        """A loguru logger bound with ``run_id``, ``workflow_id``, ``stage_id`` and ``action``."""
        try:
            return self._logger
        except AttributeError:
            bound = self._logger = _root_logger.bind(
                run_id=self._run.run_id,
                workflow_id=self._run.workflow.id,
                stage_id=self._node.stage_node.id,
                action=self._node.action.name,
            )
            return bound

    # ---- reshaping the run ----------------------------------------------------------

    def add_dynamic_action(self, action: Action) -> None:
        """Run ``action`` right after this one, in the order of calls, before the next action.

        Raises:
            TypeError: ``action`` is not an :class:`~asyncflow.Action`.
            ContextClosed: this action has already finished.
            InsertionLimitExceeded: the run's bound on insertions is reached.
        """
        self._check_open("add_dynamic_action")
        if not isinstance(action, Action):
            raise TypeError(
                f"add_dynamic_action takes an af.Action, got {action!r} "
                f"(in action {self._node.action.name!r} of stage {self._node.stage_node.id!r})"
            )
        check_action_name(
            action,
            f"the action inserted by {self._node.action.name!r} of stage {self._node.stage_node.id!r}",
        )
        ops = self._durable_ops()
        durable = self._run.durable
        if ops is not None and durable is not None:
            node = self._node
            ref = durable.reference(
                action, f"inserted by action {node.action.name!r} of stage {node.stage_node.id!r}"
            )
        self._count_insertion()
        if ops is not None:
            ops.append({"op": "action", "ref": ref})
        parent = self._node
        child = ActionNode(
            action,
            parent.stage_node,
            dynamic=True,
            depth=parent.depth + 1,
            parent=parent,
            pos=len(parent.children) if parent.children is not None else 0,
        )
        if parent.children is None:
            parent.children = []
        parent.children.append(child)
        self._ensure_journal().append((UNDO_ACTION, parent, child))

    def add_dynamic_stage(self, stage: Stage, *, allow_duplicate: bool = False) -> None:
        """Run ``stage`` right after the current stage, after stages inserted before it.

        Args:
            allow_duplicate: if a stage with this id is already in the plan,
                run this one under a distinct id (``id#2``) instead of failing.

        Raises:
            TypeError: ``stage`` is not an :class:`~asyncflow.Stage`.
            DuplicateStageId: the id is already in the plan and ``allow_duplicate`` is false.
            ContextClosed: this action has already finished.
            InsertionLimitExceeded: the run's bound on insertions is reached.
        """
        self._check_open("add_dynamic_stage")
        node = self._node
        if not isinstance(stage, Stage):
            raise TypeError(
                f"add_dynamic_stage takes an af.Stage, got {stage!r} "
                f"(in action {node.action.name!r} of stage {node.stage_node.id!r})"
            )
        ops = self._durable_ops()
        durable = self._run.durable
        if ops is not None and durable is not None:
            defn = durable.stage_definition(
                stage,
                f"stage {stage.id!r} inserted by action {node.action.name!r} of stage {node.stage_node.id!r}",
            )
        state = self._run.plan
        stage_id = stage.id
        if stage_id in state.by_id:
            if not allow_duplicate:
                raise DuplicateStageId(
                    stage_id,
                    where=f"inserted by action {node.action.name!r} of stage "
                    f"{node.stage_node.id!r} in run {self._run.run_id!r}",
                )
            stage_id = state.distinct_id(stage_id)
        self._count_insertion()
        current = node.stage_node
        position = len(current.inserted) if current.inserted is not None else 0
        if ops is not None:
            # The run-time id and place are written down: a replay must give the same
            # stage the same id, whatever order concurrent actions are replayed in.
            ops.append({"op": "stage", "stage": defn, "id": stage_id, "at": position})
        self._insert_stage(stage, stage_id, position)

    def _insert_stage(self, stage: Stage, stage_id: str, position: int) -> None:
        """Put ``stage`` in the plan as ``stage_id``, ``position``-th among this stage's insertions."""
        node = self._node
        current = node.stage_node
        state = self._run.plan
        child = StageNode(stage, stage_id, dynamic=True, depth=current.depth + 1, inserter=node)
        state.by_id[stage_id] = child
        if current.inserted is None:
            current.inserted = []
        current.inserted.insert(position, child)
        self._ensure_journal().append((UNDO_STAGE, current, child))

    async def send(self, kind: str, payload: Any = None) -> None:
        """Send a message to the handlers registered with ``runner.on_message``.

        Handlers run before this returns; one that raises does not fail the
        run (it is logged and counted in ``RunResult.message_errors``). In
        memory any payload goes; durable runs and child processes need it to
        be JSON-serialisable, and so does a ``Runner(require_json=True)``.

        Raises:
            NotSerializable: the payload is not JSON and JSON is required.
        """
        self._check_open("send")
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"message kind must be a non-empty string, got {kind!r}")
        run = self._run
        node = self._node
        stage = node.stage_node
        if run.require_json:
            try:
                exact_json(payload)
            except (TypeError, ValueError) as exc:
                raise NotSerializable(
                    f"payload of message {kind!r} from action {node.action.name!r} of stage "
                    f"{stage.id!r} is not JSON-serialisable ({exc}); durable runs and child "
                    f"processes can only carry JSON values"
                ) from exc
        run.message_seq += 1
        if not run.hub.routes:
            return
        message = Message(
            kind=kind,
            payload=payload,
            run_id=run.run_id,
            workflow_id=run.workflow.id,
            stage_id=stage.id,
            action_name=node.action.name,
            action_index=node.index,
            is_last_action=not stage.pending and not node.children,
            seq=run.message_seq,
        )
        run.message_errors += await run.hub.deliver(message)

    def bail(self, reason: str) -> NoReturn:
        """Stop the run early, deliberately: it ends with status ``BAILED`` and ``reason``."""
        raise Bail(reason)

    # ---- internals ----------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ContextClosed(
                f"ctx.{what} was used after action {self._node.action.name!r} of stage "
                f"{self._node.stage_node.id!r} in run {self._run.run_id!r} finished; "
                f"a context is only valid while its action runs"
            )

    def _ensure_journal(self) -> list[UndoEntry]:
        journal = self._journal
        if journal is None:
            journal = self._journal = []
        return journal

    def _count_insertion(self) -> None:
        state = self._run.plan
        if state.insertions >= state.max_insertions:
            state.over_limit = True
            raise InsertionLimitExceeded(state.max_insertions, run_id=self._run.run_id)
        state.insertions += 1

    def _finish(self, ok: bool) -> list[UndoEntry] | None:
        """Close the context; commit its effects if ``ok``, else undo them.

        Returns the journal of committed plan changes (``None`` if there were none).
        """
        self._closed = True
        journal = self._journal
        if ok:
            if self._overlay is not None:
                self._overlay.commit()
        elif journal:
            undo(self._run.plan, journal)
            journal = None
        self._journal = None
        self._overlay = None
        return journal

    def __repr__(self) -> str:
        return (
            f"<ActionContext run={self._run.run_id} stage={self._node.stage_node.id!r} "
            f"action={self._node.action.name!r}>"
        )


# ---- the package's door into an action's context ------------------------------------------
# (The execution of an action, the runner and process isolation work on a context through
# these functions: its state stays in its slots, and an action sees only the public API.)


def context_run(ctx: ActionContext) -> RunState:
    """The run state behind ``ctx``."""
    return ctx._run


def context_node(ctx: ActionContext) -> ActionNode:
    """The plan node of the action ``ctx`` was made for."""
    return ctx._node


def context_changes(ctx: ActionContext) -> tuple[Store | None, list[Op] | None]:
    """What the action of ``ctx`` did so far: its store overlay (if it touched the store), its plan ops."""
    return ctx._overlay, getattr(ctx, "_ops", None)


def finish_context(ctx: ActionContext, ok: bool) -> list[UndoEntry] | None:
    """Close ``ctx``; commit its effects if ``ok``, else undo them; the journal of committed plan changes."""
    return ctx._finish(ok)


def close_context(ctx: ActionContext) -> list[UndoEntry] | None:
    """Close the context of an attempt that completed and commit its effects (the per-action fast path).

    Returns the journal of its plan changes, ``None`` if it made none.
    """
    ctx._closed = True
    if ctx._overlay is None and ctx._journal is None:
        return None
    return ctx._finish(True)


def replay_plan_changes(run: RunState, node: ActionNode, ops: list[Op], durable: Durability) -> None:
    """Re-apply the plan changes ``ops`` that ``node`` made in an earlier execution, without running it."""
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


def commit_checkpoint(durable: Durability, node: ActionNode, ctx: ActionContext) -> Awaitable[None]:
    """The checkpoint of an attempt that ended, before the run moves on.

    Its store changes, plan changes and completion, in one transaction; also
    for a bail, which keeps what the action wrote, in the database too.
    """
    return durable.commit_action(node, ctx._overlay, getattr(ctx, "_ops", None))


def end_attempt(ctx: ActionContext, node: ActionNode, exc: BaseException) -> BaseException:
    """Record how the attempt ended; the exception to go on with (``exc``, or what replaces it)."""
    if isinstance(exc, Suspend) and (refused := suspend_data_error(ctx, exc.data)) is not None:
        exc = refused  # an af.Suspend raised directly, with data the run cannot keep
    if isinstance(exc, Bail):
        ctx._finish(True)
        node.status = STEP_COMPLETED
        node.reason = step_reason(StepNote.BAILED, exc.reason)
    elif isinstance(exc, Suspend):
        ctx._finish(False)
        node.status = STEP_SUSPENDED
        node.reason = step_reason(StepNote.SUSPENDED, exc.reason)
        if ctx._run.durable is not None:
            ctx._run.durable.suspended_key = node.key
    elif isinstance(exc, anyio.get_cancelled_exc_class()):
        ctx._finish(False)
        node.status = STEP_CANCELLED
    else:
        ctx._finish(False)
        node.status = STEP_FAILED
        node.error = exc
    return exc


async def sleep_durably(ctx: ActionContext, seconds: float) -> None:
    """Wait ``seconds`` on the run's clock; in a durable run, until a wake-up time stored once.

    After a restart the stored time stands: the action waits only for what is left.
    """
    run = ctx._run
    if run.durable is None:
        await run.clock.sleep(seconds)
        return
    wake_at = await run.durable.begin_sleep(ctx._node, seconds)
    await sleep_until(run.clock, wake_at)


def suspend_data_error(ctx: ActionContext, data: Any) -> NotSerializable | None:
    """The error for suspend ``data`` that the run cannot keep (not JSON, in a run that needs JSON)."""
    if not ctx._run.require_json:
        return None
    try:
        exact_json(data)
    except (TypeError, ValueError) as exc:
        return NotSerializable(
            f"suspend data of action {ctx._node.action.name!r} is not JSON-serialisable ({exc})"
        )
    return None


class MiddlewareContext(_RunView):
    """What a middleware sees of the step it wraps.

    Attributes:
        level: ``"run"``, ``"stage"``, ``"actions"`` or ``"action"``.
        attempt: at action level, the number of the attempt the next
            ``call_next()`` makes (1-based); 1 elsewhere.

    ``run_id``, ``workflow``, ``store`` (the run's own: writes here are
    visible at once), ``plan``, ``logger``, and ``stage`` / ``stage_id`` /
    ``action`` where the level has them (``None`` otherwise).
    """

    # Made once per wrapped step, so it holds only what it must; the rest is derived.
    __slots__ = ("_logger", "_node", "level")

    _logger: Logger

    def __init__(self, level: Level, run: RunState, node: Any = None) -> None:
        self.level = level
        self._run = run
        self._node: Any = node  # the stage node, or the action node at action level

    @property
    def _stage_node(self) -> Any:
        node = self._node
        return node.stage_node if self.level == "action" else node

    @property
    def attempt(self) -> int:
        """At action level, the number of the attempt the next ``call_next()`` makes (1-based)."""
        return self._node.attempts + 1 if self.level == "action" else 1

    @property
    def store(self) -> Store:
        """The run's store (writes are visible to the run at once)."""
        return self._run.store

    @property
    def plan(self) -> Plan:
        """Control over the rest of the run."""
        return Plan(self._run.plan)

    @property
    def clock(self) -> Clock:
        """The run's clock (the runner's or the engine's: a FakeClock in tests)."""
        return self._run.clock

    @property
    def stage(self) -> Stage | None:
        """The stage, at stage, actions and action level."""
        node = self._stage_node
        return node.stage if node is not None else None

    @property
    def stage_id(self) -> str | None:
        """The stage's id in this run, at stage, actions and action level."""
        node = self._stage_node
        return node.id if node is not None else None

    @property
    def action(self) -> Action | None:
        """The action, at action level."""
        return self._node.action if self.level == "action" else None

    @property
    def logger(self) -> Logger:
        """A loguru logger bound with the run's and the step's ids."""
        try:
            return self._logger
        except AttributeError:  # bound on first use only
            action = self.action
            bound = self._logger = _root_logger.bind(
                run_id=self.run_id,
                workflow_id=self.workflow.id,
                stage_id=self.stage_id,
                action=action.name if action is not None else None,
            )
            return bound

    async def record_timing(self, seconds: float) -> None:
        """Record a duration of this step in the run record (``RunResult.timings``) and as an event."""
        action = self.action
        run = self._run
        run.timings.append(Timing(self.level, self.stage_id, action.name if action else None, seconds))
        if run.hub.listening:
            await run.hub.emit(
                run.event(
                    EventKind.TIMING,
                    stage_id=self.stage_id,
                    action_name=action.name if action else None,
                    duration=seconds,
                )
            )

    def describe(self) -> str:
        """``action 'x' of stage 'y' in run 'r'`` (or the stage, or the run)."""
        action = self.action
        if action is not None:
            return f"action {action.name!r} of stage {self.stage_id!r} in run {self.run_id!r}"
        if self.stage_id is not None:
            return f"stage {self.stage_id!r} in run {self.run_id!r}"
        return f"run {self.run_id!r} of workflow {self.workflow.id!r}"
