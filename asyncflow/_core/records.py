"""What a run leaves behind: statuses, one :class:`StepRecord` per step, the :class:`RunResult`."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

if TYPE_CHECKING:
    from .plan import ActionNode, StageNode


def short_run_id(run_id: str) -> str:
    """The last 8 characters of a run id: its random part, enough to tell runs apart in a table."""
    return run_id[-8:]


class RunStatus(enum.StrEnum):
    """How a run ended (or where it stands)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    BAILED = "bailed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    SUSPENDED = "suspended"
    SLEEPING = "sleeping"

    @property
    def finished(self) -> bool:
        """Whether a run in this status will not run again (completed, failed, bailed, cancelled, skipped)."""
        return self in _FINISHED


class StepStatus(enum.StrEnum):
    """Where a stage or action of a run's plan stands."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"


# StepStatus members as module constants, for the hot paths (the runner's and the plan's):
# in Python 3.11 every lookup such as StepStatus.RUNNING goes through EnumType.__getattr__'s
# slow path, about as long as a plain await, and the runner makes several per action.
STEP_CANCELLED = StepStatus.CANCELLED
STEP_COMPLETED = StepStatus.COMPLETED
STEP_FAILED = StepStatus.FAILED
STEP_PENDING = StepStatus.PENDING
STEP_RUNNING = StepStatus.RUNNING
STEP_SKIPPED = StepStatus.SKIPPED
STEP_SUSPENDED = StepStatus.SUSPENDED


class StepKind(enum.StrEnum):
    """What a :class:`StepRecord` is of: a stage or an action."""

    STAGE = "stage"
    ACTION = "action"


class CheckpointKind(enum.StrEnum):
    """What a durable run's checkpoint records (``Checkpoint.kind``; stored as its value)."""

    #: an action completed: its store changes and plan changes
    ACTION = "action"
    #: a stage started: its initial data merged into the store
    STAGE = "stage"
    #: an attempt of an action failed; the next is due at ``at``
    ATTEMPT = "attempt"
    #: a durable sleep wakes at ``at``
    SLEEP = "sleep"


class StepNote(enum.StrEnum):
    """The recorded reasons of a step that code reads back (``StepRecord.reason`` is their text).

    ``BAILED`` and ``SUSPENDED`` are prefixes of the reason the action gave
    (``"bailed: out of stock"``); the others are whole reasons. Write them
    with :func:`step_reason`, read them with :func:`read_step_reason`: the
    text is what runs already stored, so it stays as it is.
    """

    BAILED = "bailed: "
    SUSPENDED = "suspended: "
    REPLAYED = "completed in an earlier execution"
    SKIPPED_BY_MIDDLEWARE = "skipped by middleware"
    DISABLED = "disabled"


_WITH_DETAIL = (StepNote.BAILED, StepNote.SUSPENDED)


def step_reason(note: StepNote, detail: str = "") -> str:
    """The recorded reason for ``note`` (with the action's own ``detail`` for a bail or a suspension)."""
    return f"{note.value}{detail}" if note in _WITH_DETAIL else note.value


def read_step_reason(reason: str | None) -> tuple[StepNote | None, str]:
    """The :class:`StepNote` a recorded reason holds (``None`` for any other) and its detail."""
    if reason is None:
        return None, ""
    for note in _WITH_DETAIL:
        if reason.startswith(note.value):
            return note, reason.removeprefix(note.value)
    try:
        return StepNote(reason), ""
    except ValueError:
        return None, reason


# StepKind.STAGE as a module constant, for the same reason.
_STAGE: Final = StepKind.STAGE

_FINISHED = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.BAILED, RunStatus.CANCELLED, RunStatus.SKIPPED}
)


@attrs.frozen
class StepRecord:
    """One stage or action of a run, executed or skipped, as it ended.

    Attributes:
        kind: :attr:`StepKind.STAGE` or :attr:`StepKind.ACTION` (equal to
            ``"stage"`` and ``"action"``).
        stage_id: the stage's id in this run (``"id#2"`` for a duplicate inserted
            with ``allow_duplicate=True``).
        action_name: the action's name; ``None`` for a stage record.
        status: completed, failed, skipped or cancelled.
        dynamic: inserted at run time: by an action, or as an action of an
            inserted stage.
        duration: seconds from start to end (0 for a skipped step).
        started_at: seconds from the start of the run.
        depth: nesting: 0 for static steps, +1 for each dynamic insertion level
            (the actions of an inserted stage are at its depth).
        inserted_by: ``"stage/action"``: the action that inserted this step.
        inserted_by_stage: the id of the stage of that action.
        reason: why a step was skipped (``"disabled"``, ``"stage 'x' failed"``...).
        error: the exception a failed step raised.
        attempts: how many times an action was tried (retries count).
        recovered_error: an error that a middleware swallowed: the step
            counts as completed, and nothing is hidden.
    """

    kind: StepKind
    stage_id: str
    action_name: str | None
    status: StepStatus
    dynamic: bool
    duration: float
    started_at: float
    depth: int = 0
    inserted_by: str | None = None
    inserted_by_stage: str | None = None
    reason: str | None = None
    error: BaseException | None = None
    attempts: int = 0
    recovered_error: BaseException | None = None


_STEP_FIELDS = tuple(field.name for field in attrs.fields(StepRecord))


def _step_values(node: StageNode | ActionNode, run_start: float) -> tuple[Any, ...]:
    """The fields of ``node``'s :class:`StepRecord`, in their order."""
    kind = node.kind
    if node.kind is _STAGE:
        inserter, stage_id, action_name, attempts = node.inserter, node.id, None, 0
    else:
        inserter, stage_id = node.parent, node.stage_node.id
        action_name, attempts = node.action.name, node.attempts
    started = node.started
    return (
        kind,
        stage_id,
        action_name,
        node.status,
        node.dynamic,
        node.duration,
        started - run_start if started else 0.0,
        node.depth,
        f"{inserter.stage_node.id}/{inserter.action.name}" if inserter is not None else None,
        inserter.stage_node.id if inserter is not None else None,
        node.reason,
        node.error,
        attempts,
        node.recovered,
    )


def is_insertion(record: StepRecord) -> bool:
    """Whether an action inserted this very step: a dynamic stage, or a dynamic action with an inserter.

    The actions an inserted stage brings with it are dynamic too, but drawings
    mark only the stage: they are drawn inside it, and a mark on each would
    say again what the stage says.
    """
    return record.dynamic and (record.kind is _STAGE or record.inserted_by is not None)


def _record(node: StageNode | ActionNode, run_start: float) -> StepRecord:
    return StepRecord(*_step_values(node, run_start))


def _error_text(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


# Stored steps keep their times as integer nanoseconds: JSON writes an int in a
# fraction of the time of a float's shortest repr, and a run's end writes two per step.
_SECONDS = {"duration": "duration_ns", "started_at": "started_at_ns"}
_FROM_NS = {stored: name for name, stored in _SECONDS.items()}

#: The columns of :class:`StepRows`: a :class:`StepRecord`'s fields, times in nanoseconds.
STEP_COLUMNS = tuple(_SECONDS.get(name, name) for name in _STEP_FIELDS)


@attrs.frozen
class StepRows:
    """A run's steps as the durable engine stores them: one row of JSON values per step.

    Rows of :data:`STEP_COLUMNS`, not a dict per step: ``json.dumps`` spends
    most of its time on a dict's keys, and a durable run writes all its steps
    when it ends. Errors are ``"Type: message"``; times are integer nanoseconds.
    """

    rows: list[list[Any]]

    def dicts(self) -> list[dict[str, Any]]:
        """The steps as :attr:`RunInfo.steps <asyncflow.backends.RunInfo.steps>` has them."""
        return step_dicts(STEP_COLUMNS, self.rows)


def step_dicts(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Stored step ``rows`` of ``columns`` as dicts of :class:`StepRecord` field names, times in seconds."""
    names = [_FROM_NS.get(column, column) for column in columns]
    in_ns = [name for column, name in zip(columns, names, strict=True) if column in _FROM_NS]
    steps = []
    # (A dict made by zip in C, then the two times fixed: a dict comprehension testing each
    # field took most of the time of loading a finished run of 10,000 steps.)
    for row in rows:
        step = dict(zip(names, row, strict=True))
        for name in in_ns:
            step[name] /= 1e9
        step["status"] = str(step["status"])  # plain strings, as JSON gives them back
        step["kind"] = str(step["kind"])
        steps.append(step)
    return steps


def _row(values: tuple[Any, ...]) -> list[Any]:
    (kind, stage_id, action_name, status, dynamic, duration, started_at, *rest) = values
    depth, inserted_by, inserted_by_stage, reason, error, attempts, recovered = rest
    return [
        kind,
        stage_id,
        action_name,
        status,  # a StrEnum: JSON writes its value
        dynamic,
        round(duration * 1e9),
        round(started_at * 1e9),
        depth,
        inserted_by,
        inserted_by_stage,
        reason,
        None if error is None else _error_text(error),
        attempts,
        None if recovered is None else _error_text(recovered),
    ]


def step_rows(result: RunResult) -> StepRows:
    """Every step of ``result`` as the durable engine stores it.

    Straight from the plan's nodes when the steps were not built yet: a
    durable run writes its record at the end of every run, and most callers
    never look at ``result.steps``.
    """
    if result._steps is not None or not result._log:
        return StepRows([_row(attrs.astuple(step, recurse=False)) for step in result.steps])
    run_start = result._started
    return StepRows([_row(_step_values(node, run_start)) for node in result._log])


def plan_rows(stages: Iterable[StageNode]) -> StepRows:
    """The plan so far of a run that is running: every stage (``stages``, in plan order) and its actions.

    Steps not started yet are ``pending``; removed ones are left out. Times are
    from the start of the first step.
    """
    nodes: list[StageNode | ActionNode] = []
    for stage in stages:
        if stage.removed:
            continue
        nodes.append(stage)
        nodes.extend(node for node in stage.walk_actions() if not node.removed)
    run_start = min((node.started for node in nodes if node.started), default=0.0)
    return StepRows([_row(_step_values(node, run_start)) for node in nodes])


@attrs.frozen
class Timing:
    """A duration measured by the timing middleware (``mw.timing()``)."""

    level: str
    stage_id: str | None
    action_name: str | None
    seconds: float


class RunResult:
    """The outcome of one run.

    Attributes:
        run_id: unique per run.
        workflow_id: the id of the workflow that ran.
        status: completed, failed, bailed or cancelled.
        store: a dict snapshot of the run's store at the end.
        bail_reason: the reason given to ``ctx.bail``, else ``None``.
        error: the exception that failed the run, else ``None``.
        duration: seconds the run took.
        steps: one :class:`StepRecord` per stage and action executed or
            skipped, in execution order (built on first access).
        message_errors: how many times a message handler raised.
        timings: durations measured by ``mw.timing()``, in the order they ended.
        recovered_error: an error a run-level middleware swallowed.
        suspend_reason, suspend_data: what ``ctx.suspend`` gave, for a
            ``SUSPENDED`` run.
    """

    __slots__ = (
        "_log",
        "_started",
        "_steps",
        "bail_reason",
        "duration",
        "error",
        "message_errors",
        "recovered_error",
        "run_id",
        "status",
        "store",
        "suspend_data",
        "suspend_reason",
        "timings",
        "workflow_id",
    )

    def __init__(
        self,
        *,
        run_id: str,
        workflow_id: str,
        status: RunStatus,
        store: dict[str, Any],
        log: list[StageNode | ActionNode] | None = None,
        started: float = 0.0,
        duration: float,
        bail_reason: str | None = None,
        error: BaseException | None = None,
        message_errors: int = 0,
        timings: list[Timing] | None = None,
        recovered_error: BaseException | None = None,
        suspend_reason: str | None = None,
        suspend_data: Any = None,
        steps: list[StepRecord] | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.status = status
        self.store = store
        self.bail_reason = bail_reason
        self.error = error
        self.duration = duration
        self.message_errors = message_errors
        self.timings: list[Timing] = timings if timings is not None else []
        self.recovered_error = recovered_error
        self.suspend_reason = suspend_reason
        self.suspend_data = suspend_data
        self._log = log if log is not None else []
        self._started = started
        self._steps: list[StepRecord] | None = steps

    @property
    def steps(self) -> list[StepRecord]:
        """Every stage and action executed or skipped, in execution order."""
        if self._steps is None:
            self._steps = [_record(node, self._started) for node in self._log]
        return list(self._steps)

    def to_mermaid(self) -> str:
        """A Mermaid flowchart of the run as executed.

        Steps appear in execution order; inserted stages are drawn inside the
        stage that inserted them; dynamic, skipped, failed and cancelled steps
        carry classes (``dynamic``, ``skipped``...) with their own styles.
        """
        from .mermaid import run_to_mermaid

        return run_to_mermaid(self)

    def stage_order(self) -> list[str]:
        """Ids of the stages that ran (not skipped), in execution order."""
        return [s.stage_id for s in self.steps if s.kind == StepKind.STAGE and s.status != StepStatus.SKIPPED]

    def action_order(self) -> list[str]:
        """Names of the actions that ran (not skipped), in execution order."""
        return [
            s.action_name for s in self.steps if s.action_name is not None and s.status != StepStatus.SKIPPED
        ]

    def __repr__(self) -> str:
        return (
            f"<RunResult {self.run_id} workflow={self.workflow_id!r} status={self.status.value} "
            f"steps={len(self._log) if self._steps is None else len(self._steps)}>"
        )
