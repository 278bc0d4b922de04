"""The per-run plan: the run's own copy of the execution order, and the control API over it.

Every run owns a plan built from the workflow definition, which the run
never changes. Each stage node keeps the ordered list of stages inserted
while it ran, and each action node the actions it inserted; the runner
drains those lists depth first before moving to the next sibling, so the
tree order *is* the execution order.

Plan changes made by an action (insertions, enables, disables, removals) are
journaled on that action's execution: when the action fails, they are
undone, just as its store writes are discarded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from loguru import logger

from .actions import Action, FunctionAction
from .errors import UnknownStep
from .records import STEP_PENDING, StepKind, StepStatus
from .workflow import Stage, Workflow

if TYPE_CHECKING:
    from .context import ActionContext


class ActionNode:
    """One action in a run's plan (internal)."""

    kind: ClassVar[Literal[StepKind.ACTION]] = StepKind.ACTION  # its StepRecord's kind

    __slots__ = (
        "_key",
        "action",
        "attempts",
        "call",
        "children",
        "depth",
        "duration",
        "dynamic",
        "enabled",
        "error",
        "index",
        "parent",
        "pos",
        "reason",
        "recovered",
        "removed",
        "stage_node",
        "started",
        "status",
    )

    def __init__(
        self,
        action: Action,
        stage_node: StageNode,
        dynamic: bool = False,
        depth: int = 0,
        parent: ActionNode | None = None,
        pos: int = 0,
        key: str | None = None,
    ) -> None:
        self.action = action
        self._key = key  # (given: a child process rebuilds a node its parent keyed; else made on use)
        self.parent = parent  # the action that inserted this one, if it is dynamic
        self.pos = pos
        # Calling the function straight away saves a coroutine frame per action.
        # In a stage isolated in a child process, every action (inserted ones too) is
        # called through the stage's session, which runs it in the child.
        remote = stage_node.remote
        self.call: Callable[[ActionContext], Any] = (
            remote if remote is not None else action.fn if type(action) is FunctionAction else action.execute
        )
        self.stage_node = stage_node
        self.dynamic = dynamic
        self.depth = depth
        self.enabled = True
        self.removed = False
        self.status = STEP_PENDING
        self.children: list[ActionNode] | None = None
        self.started = 0.0
        self.duration = 0.0
        self.error: BaseException | None = None
        self.reason: str | None = None
        self.recovered: BaseException | None = None
        self.attempts = 0
        self.index = 0

    @property
    def key(self) -> str:
        """This step's place in the plan, stable across re-executions: ``stage/2.0.1``.

        The static position in the stage, then the position among the
        children of each inserting action. A recovered run rebuilds the same
        plan, so the same step gets the same key.
        """
        key = self._key
        if key is None:
            if self.parent is None:  # a static action: most of them
                key = self._key = f"{self.stage_node.id}/{self.pos}"
                return key
            parts = []
            node: ActionNode | None = self
            while node is not None:
                parts.append(str(node.pos))
                node = node.parent
            key = self._key = f"{self.stage_node.id}/{'.'.join(reversed(parts))}"
        return key

    def walk(self) -> Iterator[ActionNode]:
        """This node, then its inserted children depth first (no recursion)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            if node.children:
                stack.extend(reversed(node.children))


class StageNode:
    """One stage in a run's plan (internal)."""

    kind: ClassVar[Literal[StepKind.STAGE]] = StepKind.STAGE  # its StepRecord's kind

    __slots__ = (
        "_actions",
        "chain",
        "depth",
        "duration",
        "dynamic",
        "enabled",
        "error",
        "executed",
        "fast",
        "id",
        "inserted",
        "inserter",
        "pending",
        "reason",
        "recovered",
        "remote",
        "removed",
        "retry",
        "stage",
        "started",
        "status",
        "timeout",
    )

    def __init__(
        self,
        stage: Stage,
        run_id: str,
        dynamic: bool = False,
        depth: int = 0,
        inserter: ActionNode | None = None,
    ) -> None:
        self.stage = stage
        self.id = run_id
        self.dynamic = dynamic
        self.depth = depth
        self.inserter = inserter  # the action that inserted this stage, if it is dynamic
        self.enabled = True
        self.removed = False
        self.status = STEP_PENDING
        self.inserted: list[StageNode] | None = None
        self._actions: list[ActionNode] | None = None
        self.started = 0.0
        self.duration = 0.0
        self.error: BaseException | None = None
        self.reason: str | None = None
        self.recovered: BaseException | None = None
        self.executed = 0
        self.pending: deque[ActionNode] | None = None
        # Set when the stage starts: its action chain and its actions' default options.
        self.chain: Any = None
        self.retry: Any = None
        self.timeout: float | None = None
        # No chain and no stage/runner retry or timeout: actions may take the fast path.
        self.fast = False
        # Set while an isolated stage runs: how its action nodes are called (in the child).
        self.remote: Callable[[ActionContext], Any] | None = None

    @property
    def actions(self) -> list[ActionNode]:
        """The stage's own action nodes (not those its actions insert), created on first use.

        They came into the run with the stage: in an inserted stage they are
        dynamic and at its depth.
        """
        nodes = self._actions
        if nodes is None:
            dynamic, depth = self.dynamic, self.depth
            nodes = self._actions = [
                ActionNode(a, self, dynamic, depth, pos=index) for index, a in enumerate(self.stage.actions)
            ]
        return nodes

    def walk_actions(self) -> Iterator[ActionNode]:
        """Every action node of the stage, dynamic ones included, in plan order."""
        for node in self.actions:
            yield from node.walk()


# A journal entry undoes one plan change: (kind, node, detail). Tuples, not
# closures: an insertion-heavy run makes thousands and the GC sees each object.
UndoEntry = tuple[int, Any, Any]
#: the kinds of journal entries (read by the contexts, which write the insertions' entries)
UNDO_ENABLED = 0
UNDO_REMOVED = 1
UNDO_ACTION = 2
UNDO_STAGE = 3


def undo(state: PlanState, journal: list[UndoEntry]) -> None:
    """Revert the plan changes in ``journal``, newest first."""
    for kind, node, detail in reversed(journal):
        if kind == UNDO_ENABLED:
            node.enabled = detail
        elif kind == UNDO_REMOVED:
            node.removed = False
        elif kind == UNDO_ACTION:
            _remove_newest(node.children, detail)
            state.insertions -= 1
        else:
            _remove_newest(node.inserted, detail)
            del state.by_id[detail.id]
            state.insertions -= 1


def _remove_newest(nodes: list[Any], node: Any) -> None:
    # Undo runs newest first, so the node is almost always the last one: O(1).
    if nodes and nodes[-1] is node:
        nodes.pop()
    else:
        nodes.remove(node)


class PlanState:
    """The nodes of one run's plan and its insertion accounting (internal)."""

    __slots__ = ("by_id", "id_counts", "insertions", "max_insertions", "over_limit", "roots", "run_id")

    def __init__(self, workflow: Workflow, run_id: str, max_insertions: int) -> None:
        self.run_id = run_id
        self.roots = [StageNode(stage, stage.id) for stage in workflow.stages]
        self.by_id: dict[str, StageNode] = {node.id: node for node in self.roots}
        self.id_counts: dict[str, int] = {}
        self.insertions = 0
        self.max_insertions = max_insertions
        self.over_limit = False

    def walk_stages(self) -> Iterator[StageNode]:
        """Every stage node in execution order (static and inserted), removed ones too."""
        stack = list(reversed(self.roots))
        while stack:
            node = stack.pop()
            yield node
            if node.inserted:
                stack.extend(reversed(node.inserted))

    def distinct_id(self, stage_id: str) -> str:
        """A run-time id for another copy of ``stage_id``: ``id#2``, ``id#3``..."""
        count = self.id_counts.get(stage_id, 1)
        while True:
            count += 1
            candidate = f"{stage_id}#{count}"
            if candidate not in self.by_id:
                self.id_counts[stage_id] = count
                return candidate


def _matches(obj: Stage | Action, tag: str | None, name: str | None) -> bool:
    if tag is not None and tag not in obj.tags:
        return False
    return name is None or obj.name == name


class Plan:
    """Control over the rest of a run: enable, disable, remove and find steps.

    ``ctx.plan`` hands one to each action. Changes an action makes through it
    are undone if the action fails. Names of actions need not be unique: an
    action operation applies to every action of that name (in ``stage_id``
    only, when given).
    """

    __slots__ = ("_journal", "_ops", "_state")

    def __init__(
        self,
        state: PlanState,
        journal: list[UndoEntry] | None = None,
        ops: list[dict[str, Any]] | None = None,
    ) -> None:
        self._state = state
        self._journal = journal
        # In a durable run, every change is also written down, to be replayed after a restart.
        self._ops = ops

    def _note(self, op: str, **args: Any) -> None:
        if self._ops is not None:
            self._ops.append({"op": op, **args})

    # ---- reading -------------------------------------------------------------

    def stage_ids(self) -> list[str]:
        """Stage ids in execution order as known now (static + inserted so far)."""
        return [node.id for node in self._state.walk_stages() if not node.removed]

    def _stage(self, stage_id: str) -> StageNode:
        node = self._state.by_id.get(stage_id)
        if node is None or node.removed:
            raise UnknownStep(
                f"run {self._state.run_id!r} has no stage {stage_id!r} in its plan "
                f"(stages: {self.stage_ids()!r})"
            )
        return node

    def _actions(self, name: str, stage_id: str | None) -> list[ActionNode]:
        stages = [self._stage(stage_id)] if stage_id is not None else self._live_stages()
        found = [
            node
            for stage in stages
            for node in stage.walk_actions()
            if node.action.name == name and not node.removed
        ]
        if not found:
            where = f"stage {stage_id!r}" if stage_id is not None else "any stage"
            raise UnknownStep(f"run {self._state.run_id!r} has no action {name!r} in {where}")
        return found

    def _live_stages(self) -> list[StageNode]:
        return [node for node in self._state.walk_stages() if not node.removed]

    def stage_status(self, stage_id: str) -> StepStatus:
        """Where the stage stands: pending, running, completed, failed, skipped or cancelled."""
        return self._stage(stage_id).status

    def action_status(self, name: str, stage_id: str | None = None) -> StepStatus:
        """Where the (first) action of that name stands."""
        return self._actions(name, stage_id)[0].status

    def is_stage_enabled(self, stage_id: str) -> bool:
        """Whether the stage will run when its turn comes."""
        return self._stage(stage_id).enabled

    def is_action_enabled(self, name: str, stage_id: str | None = None) -> bool:
        """Whether every action of that name (in ``stage_id`` if given) is enabled."""
        return all(node.enabled for node in self._actions(name, stage_id))

    def find_stages(
        self,
        tag: str | None = None,
        name: str | None = None,
        where: Callable[[Stage], bool] | None = None,
    ) -> list[Stage]:
        """Stages of the plan (static and inserted) matching every criterion given."""
        return [
            node.stage
            for node in self._live_stages()
            if _matches(node.stage, tag, name) and (where is None or where(node.stage))
        ]

    def find_actions(
        self,
        tag: str | None = None,
        name: str | None = None,
        type: type[Action] | None = None,
        where: Callable[[Action], bool] | None = None,
    ) -> list[Action]:
        """Actions of the plan (static and inserted) matching every criterion given."""
        return [
            node.action
            for stage in self._live_stages()
            for node in stage.walk_actions()
            if not node.removed
            and _matches(node.action, tag, name)
            and (type is None or isinstance(node.action, type))
            and (where is None or where(node.action))
        ]

    # ---- changing ------------------------------------------------------------

    def _set_enabled(self, node: StageNode | ActionNode, enabled: bool, what: str) -> bool:
        if node.enabled == enabled:
            return False
        if node.status is not STEP_PENDING:
            logger.info(
                "{} is already {}; {} it has no effect on this execution",
                what,
                node.status.value,
                "enabling" if enabled else "disabling",
            )
            return False
        node.enabled = enabled
        if self._journal is not None:
            self._journal.append((UNDO_ENABLED, node, not enabled))
        return True

    def disable_stage(self, stage_id: str) -> bool:
        """Skip the stage when its turn comes; return whether anything changed.

        Disabling the stage that is running is a no-op for this execution (logged).
        """
        node = self._stage(stage_id)
        changed = self._set_enabled(node, False, f"stage {stage_id!r}")
        self._note("disable_stage", id=stage_id)
        return changed

    def enable_stage(self, stage_id: str) -> bool:
        """Run the stage when its turn comes; return whether anything changed."""
        node = self._stage(stage_id)
        changed = self._set_enabled(node, True, f"stage {stage_id!r}")
        self._note("enable_stage", id=stage_id)
        return changed

    def disable_action(self, name: str, stage_id: str | None = None) -> int:
        """Skip every pending action of that name; return how many changed."""
        changed = sum(
            self._set_enabled(node, False, f"action {name!r} of stage {node.stage_node.id!r}")
            for node in self._actions(name, stage_id)
        )
        self._note("disable_action", name=name, stage_id=stage_id)
        return changed

    def enable_action(self, name: str, stage_id: str | None = None) -> int:
        """Enable every pending action of that name; return how many changed."""
        changed = sum(
            self._set_enabled(node, True, f"action {name!r} of stage {node.stage_node.id!r}")
            for node in self._actions(name, stage_id)
        )
        self._note("enable_action", name=name, stage_id=stage_id)
        return changed

    def _by_tag(self, tag: str, enabled: bool) -> int:
        changed = 0
        for stage in self._live_stages():
            if tag in stage.stage.tags:
                changed += self._set_enabled(stage, enabled, f"stage {stage.id!r}")
            for node in stage.walk_actions():
                if tag in node.action.tags and not node.removed:
                    changed += self._set_enabled(
                        node, enabled, f"action {node.action.name!r} of stage {stage.id!r}"
                    )
        return changed

    def disable_by_tag(self, tag: str) -> int:
        """Disable every pending stage and action carrying ``tag``; return how many changed."""
        changed = self._by_tag(tag, False)
        self._note("disable_by_tag", tag=tag)
        return changed

    def enable_by_tag(self, tag: str) -> int:
        """Enable every pending stage and action carrying ``tag``; return how many changed."""
        changed = self._by_tag(tag, True)
        self._note("enable_by_tag", tag=tag)
        return changed

    def remove_stage(self, stage_id: str) -> bool:
        """Take a stage that has not started out of the plan; return whether it was removed.

        Returns ``False`` for a stage that has already started or ended.

        Raises:
            UnknownStep: no stage with that id is in the plan.
        """
        node = self._stage(stage_id)
        if node.status is not STEP_PENDING:
            return False
        node.removed = True
        if self._journal is not None:
            self._journal.append((UNDO_REMOVED, node, None))
        self._note("remove_stage", id=stage_id)
        return True

    def remove_action(self, name: str, stage_id: str | None = None) -> int:
        """Take every pending action of that name out of the plan; return how many."""
        removed = 0
        for node in self._actions(name, stage_id):
            if node.status is STEP_PENDING:
                node.removed = True
                removed += 1
                if self._journal is not None:
                    self._journal.append((UNDO_REMOVED, node, None))
        self._note("remove_action", name=name, stage_id=stage_id)
        return removed
