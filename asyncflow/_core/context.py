"""The :class:`ActionContext` handed to each action: its only door to the run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from loguru import logger as _root_logger

from .actions import Action
from .errors import Bail, ContextClosed, DuplicateStageId, InsertionLimitExceeded
from .plan import ActionNode, Plan, StageNode, Undo
from .store import Store
from .workflow import Stage, Workflow

if TYPE_CHECKING:
    from loguru import Logger

    from .runner import RunState


class ActionContext:
    """What an action sees of its run: ids, the store, the plan, a logger.

    One context is made per action execution. ``store``, ``plan`` and
    ``logger`` are built on first use, so an action that does not touch them
    costs nothing for them.
    """

    __slots__ = ("_closed", "_journal", "_logger", "_node", "_overlay", "_plan", "_run", "attempt")

    def __init__(self, run: RunState, node: ActionNode, attempt: int = 1) -> None:
        self._run = run
        self._node = node
        self._overlay: Store | None = None
        self._journal: list[Undo] | None = None
        self._plan: Plan | None = None
        self._logger: Logger | None = None
        self._closed = False
        self.attempt = attempt

    # ---- identity ------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The id of this run."""
        return self._run.run_id

    @property
    def workflow(self) -> Workflow:
        """The workflow definition being run (do not change it)."""
        return self._run.workflow

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
            overlay = self._overlay = self._run.store._overlay()
        return overlay

    @property
    def plan(self) -> Plan:
        """Control over the rest of this run (changes are undone if the action fails)."""
        plan = self._plan
        if plan is None:
            plan = self._plan = Plan(self._run.plan, self._ensure_journal())
        return plan

    @property
    def logger(self) -> Logger:
        """A loguru logger bound with ``run_id``, ``workflow_id``, ``stage_id`` and ``action``."""
        bound = self._logger
        if bound is None:
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
        self._count_insertion()
        parent = self._node
        child = ActionNode(
            action, parent.stage_node, dynamic=True, depth=parent.depth + 1,
            inserted_by=f"{parent.stage_node.id}/{parent.action.name}",
        )
        if parent.children is None:
            parent.children = []
        children = parent.children
        children.append(child)
        self._ensure_journal().append(lambda: children.remove(child))
        self._run.on_insert(child)

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
        child = StageNode(
            stage, stage_id, dynamic=True, depth=current.depth + 1,
            inserted_by=f"{current.id}/{node.action.name}",
        )
        state.by_id[stage_id] = child
        current.inserted.append(child)

        def undo() -> None:
            current.inserted.remove(child)
            del state.by_id[stage_id]

        self._ensure_journal().append(undo)
        self._run.on_insert(child)

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

    def _ensure_journal(self) -> list[Undo]:
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
        self._ensure_journal().append(_decrement(state))

    def _finish(self, ok: bool) -> None:
        """Close the context; commit its effects if ``ok``, else undo them."""
        self._closed = True
        if ok:
            if self._overlay is not None:
                self._overlay._commit()
        elif self._journal:
            for undo in reversed(self._journal):
                undo()
        self._journal = None
        self._overlay = None

    def __repr__(self) -> str:
        return (
            f"<ActionContext run={self._run.run_id} stage={self._node.stage_node.id!r} "
            f"action={self._node.action.name!r}>"
        )


def _decrement(state: Any) -> Undo:
    def undo() -> None:
        state.insertions -= 1

    return undo
