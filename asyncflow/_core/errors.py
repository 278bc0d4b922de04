"""The exception tree of asyncflow.

Every error the library raises on purpose derives from :class:`WorkflowError`;
each leaf also subclasses the builtin that fits, so ``except KeyError`` keeps
working for a missing store key::

    WorkflowError
    ├── RunFailed                    the run failed (``.result`` holds the record)
    │   ├── ActionFailed             an action raised
    │   │   └── ChildProcessFailed   the child process of an isolated stage died
    │   └── StageFailed              a stage failed outside its actions (middleware, timeout)
    ├── StepTimeout                  (TimeoutError) a step ran past its time limit
    │   └── ActionTimeout            an action ran past its time limit
    ├── MiddlewareError              (RuntimeError) a middleware broke the rules
    ├── InvalidDefinition            (ValueError) a workflow/stage/action is malformed
    │   ├── DuplicateStageId         a stage id already in the plan
    │   ├── UnknownReference         (LookupError) a definition names an action nobody provides
    │   └── UnknownWorkflow          (LookupError) a run names a workflow the engine does not know
    ├── NonRetryable                 raise it (or a subclass) to fail without retries
    │   ├── InsertionLimitExceeded   (RuntimeError) too many dynamic insertions
    │   └── LeaseLost                (RuntimeError) another engine took the run over
    ├── ContextClosed                (RuntimeError) a context used after its action ended
    ├── UnknownStep                  (LookupError) no stage/action with that id or name
    ├── NotSerializable              (TypeError) a value that must be JSON is not
    ├── NotReferenceable             (TypeError) an action a durable run cannot re-create
    ├── RunStateError                (RuntimeError) e.g. resuming a run that is not suspended
    │   └── DuplicateRunId           a run with that id exists already
    ├── EngineNotOpen                (RuntimeError) the engine is not open, or is closing
    ├── IdempotencyConflict          (ValueError) a key reused with another workflow or store
    ├── UnknownCursor                (ValueError) a watch cursor that was never issued
    ├── UnknownRun                   (LookupError) no run with that id
    ├── BackendError                 (RuntimeError) the database cannot be used
    ├── MissingKey                   (KeyError) the store has no such key
    ├── TypeMismatch                 (TypeError) the stored value has another type
    └── StoreConflict                (ValueError) a merge met keys on both sides

:class:`Bail` and :class:`Suspend` are not errors: ``ctx.bail(reason)`` and
``ctx.suspend(reason, data)`` raise them, and the runner turns them into a
result with status ``BAILED`` or ``SUSPENDED``.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import RunResult


class WorkflowError(Exception):
    """Root of every error asyncflow raises on purpose."""


class InvalidDefinition(WorkflowError, ValueError):
    """A workflow, stage or action definition is malformed (empty id, duplicate id...)."""


class DuplicateStageId(InvalidDefinition):
    """A stage was inserted whose id is already in the run's plan.

    Pass ``allow_duplicate=True`` to ``ctx.add_dynamic_stage`` to give the new
    stage a distinct run-time id (``id#2``, ``id#3``...) instead.
    """

    def __init__(self, stage_id: str, *, where: str) -> None:
        self.stage_id = stage_id
        super().__init__(
            f"stage id {stage_id!r} is already in the plan ({where}); "
            f"pass allow_duplicate=True to run it again under a distinct id"
        )


class NonRetryable(WorkflowError):
    """Raise this (or a subclass) from an action to fail at once: it is never retried."""


class LeaseLost(NonRetryable, RuntimeError):
    """Another engine took over this run, or it was cancelled elsewhere; this engine stops running it.

    Never retried, never recovered from by middleware.
    """


class InsertionLimitExceeded(NonRetryable, RuntimeError):
    """A run inserted more dynamic stages/actions than its bound allows."""

    def __init__(self, limit: int, *, run_id: str) -> None:
        self.limit = limit
        self.run_id = run_id
        super().__init__(
            f"run {run_id!r} exceeded its bound of {limit} dynamic insertions; "
            f"this usually means a workflow inserts steps in a loop "
            f"(raise the bound with max_insertions= on af.run or af.Runner)"
        )


class ContextClosed(WorkflowError, RuntimeError):
    """An action context was used after its action finished."""


class UnknownStep(WorkflowError, LookupError):
    """A plan operation named a stage or action that is not in the plan."""


class NotSerializable(WorkflowError, TypeError):
    """A value that must cross a process or reach a database is not JSON-serialisable."""


class MissingKey(WorkflowError, KeyError):
    """The store has no entry for a key (or the entry has expired)."""

    def __init__(self, key: str, *, expired: bool = False) -> None:
        self.key = key
        self.expired = expired
        super().__init__(key)

    def __str__(self) -> str:
        if self.expired:
            return f"store key {self.key!r} has expired"
        return f"store has no key {self.key!r}"


class TypeMismatch(WorkflowError, TypeError):
    """A stored value is not of the type the caller asked for."""

    def __init__(self, key: str, expected: Any, actual: Any) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"store key {key!r} holds {with_article(_type_name(type(actual)))}, not {_a_type(expected)}"
        )


class RunFailed(WorkflowError):
    """The run failed; ``result`` is its :class:`~asyncflow.RunResult` (status ``FAILED``).

    The original exception is ``__cause__`` (and ``.error``).
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str,
        workflow_id: str,
        error: BaseException,
        result: RunResult | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.error = error
        self.result = result
        super().__init__(message)


class StageFailed(RunFailed):
    """A stage failed outside its actions: a stage middleware or a stage timeout raised."""

    def __init__(
        self,
        *,
        run_id: str,
        workflow_id: str,
        stage_id: str,
        error: BaseException,
        result: RunResult | None = None,
    ) -> None:
        self.stage_id = stage_id
        super().__init__(
            f"stage {stage_id!r} of run {run_id!r} (workflow {workflow_id!r}) failed: "
            f"{type(error).__name__}: {error}",
            run_id=run_id,
            workflow_id=workflow_id,
            error=error,
            result=result,
        )


class ActionFailed(RunFailed):
    """An action raised: the run failed.

    ``run_id``, ``stage_id`` and ``action_name`` say where; the original
    exception is ``__cause__``; ``result`` is the run's
    :class:`~asyncflow.RunResult` with status ``FAILED``.
    """

    def __init__(
        self,
        *,
        run_id: str,
        workflow_id: str,
        stage_id: str,
        action_name: str,
        error: BaseException,
        result: RunResult | None = None,
    ) -> None:
        self.stage_id = stage_id
        self.action_name = action_name
        super().__init__(
            f"action {action_name!r} in stage {stage_id!r} of run {run_id!r} "
            f"(workflow {workflow_id!r}) failed: {type(error).__name__}: {error}",
            run_id=run_id,
            workflow_id=workflow_id,
            error=error,
            result=result,
        )

    def __reduce__(self) -> Any:
        return (
            _rebuild_action_failed,
            (self.run_id, self.workflow_id, self.stage_id, self.action_name, self.error),
        )


class ChildProcessFailed(ActionFailed):
    """The child process running an isolated stage (``Stage(isolation="process")``) died or was killed.

    Raised for a crash (a segfault, ``os._exit``, running out of memory) and
    for a child killed because its action ran past its time limit or the run
    was cancelled. ``exit_code`` is the child's exit status (negative: killed
    by signal ``-exit_code``), ``signal_name`` names that signal, and
    ``stderr_tail`` holds the last lines the child wrote to its standard
    error (at most 20). ``pid`` is the child's process id.
    """

    def __init__(
        self,
        *,
        run_id: str,
        workflow_id: str,
        stage_id: str,
        action_name: str,
        pid: int,
        exit_code: int | None,
        stderr_tail: tuple[str, ...] = (),
        why: str = "",
        error: BaseException | None = None,
        result: RunResult | None = None,
    ) -> None:
        self.pid = pid
        self.exit_code = exit_code
        self.stderr_tail = tuple(stderr_tail)
        self.why = why
        self.signal_name = _signal_name(exit_code)
        if exit_code is None:
            ended = "did not exit"
        elif exit_code < 0:
            ended = f"was killed by signal {self.signal_name}"
        else:
            ended = f"exited with code {exit_code}"
        tail = "".join(f"\n    {line}" for line in self.stderr_tail) or " (nothing)"
        text = (
            f"the child process (pid {pid}) running action {action_name!r} of isolated stage "
            f"{stage_id!r} in run {run_id!r} (workflow {workflow_id!r}) {ended}"
            f"{f' ({why})' if why else ''}; the last lines of its stderr:{tail}"
        )
        RunFailed.__init__(
            self,
            text,
            run_id=run_id,
            workflow_id=workflow_id,
            error=self if error is None else error,
            result=result,
        )
        self.stage_id = stage_id
        self.action_name = action_name

    def with_result(self, result: RunResult) -> ChildProcessFailed:
        """The same failure as the run's error, carrying the run's ``result`` (its cause: this one)."""
        return ChildProcessFailed(
            run_id=self.run_id,
            workflow_id=self.workflow_id,
            stage_id=self.stage_id,
            action_name=self.action_name,
            pid=self.pid,
            exit_code=self.exit_code,
            stderr_tail=self.stderr_tail,
            why=self.why,
            error=self,
            result=result,
        )

    def __reduce__(self) -> Any:
        return (
            _rebuild_child_failed,
            (
                self.run_id,
                self.workflow_id,
                self.stage_id,
                self.action_name,
                self.pid,
                self.exit_code,
                self.stderr_tail,
                self.why,
            ),
        )


def _rebuild_child_failed(
    run_id: str,
    workflow_id: str,
    stage_id: str,
    action_name: str,
    pid: int,
    exit_code: int | None,
    stderr_tail: tuple[str, ...],
    why: str,
) -> ChildProcessFailed:
    return ChildProcessFailed(
        run_id=run_id,
        workflow_id=workflow_id,
        stage_id=stage_id,
        action_name=action_name,
        pid=pid,
        exit_code=exit_code,
        stderr_tail=stderr_tail,
        why=why,
    )


def _signal_name(exit_code: int | None) -> str | None:
    if exit_code is None or exit_code >= 0:
        return None
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"


def _rebuild_action_failed(
    run_id: str, workflow_id: str, stage_id: str, action_name: str, error: BaseException
) -> ActionFailed:
    return ActionFailed(
        run_id=run_id,
        workflow_id=workflow_id,
        stage_id=stage_id,
        action_name=action_name,
        error=error,
    )


class StepTimeout(WorkflowError, TimeoutError):
    """A step ran past its time limit."""

    def __init__(self, what: str, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"{what} timed out after {seconds:g}s")


class ActionTimeout(StepTimeout):
    """An action ran past its time limit (``timeout=`` or ``mw.timeout``)."""

    def __init__(self, *, run_id: str, stage_id: str, action_name: str, seconds: float) -> None:
        self.run_id = run_id
        self.stage_id = stage_id
        self.action_name = action_name
        super().__init__(f"action {action_name!r} of stage {stage_id!r} in run {run_id!r}", seconds)


class MiddlewareError(WorkflowError, RuntimeError):
    """A middleware broke the rules (e.g. called ``call_next`` twice outside the action level)."""


class Bail(Exception):
    """Raised by ``ctx.bail(reason)``: stop the run early, deliberately.

    Not a :class:`WorkflowError`: the run ends with status ``BAILED`` and
    ``af.run`` returns normally. Do not catch it in actions.
    """

    def __init__(self, reason: str) -> None:
        if not isinstance(reason, str):
            raise TypeError(f"bail reason must be a string, got {reason!r}")
        self.reason = reason
        super().__init__(reason)


class RecordedError(WorkflowError):
    """An error a run recorded in its database: raised before a restart or in another process.

    ``type_name`` is the original exception's class name; the message is its text.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}" if message else type_name)


class Suspend(Exception):
    """Raised by ``ctx.suspend(reason, data)``: park the run until ``engine.resume``.

    Not an error. The suspending action's writes are discarded; on resume it
    runs again, with ``ctx.is_resuming`` true and ``ctx.resume_data`` set.
    """

    def __init__(self, reason: str, data: Any = None) -> None:
        if not isinstance(reason, str):
            raise TypeError(f"suspend reason must be a string, got {reason!r}")
        self.reason = reason
        self.data = data
        super().__init__(reason)


class RunStateError(WorkflowError, RuntimeError):
    """An operation does not fit the run's state (resuming a run that is not suspended...)."""


class DuplicateRunId(RunStateError):
    """``engine.start(run_id=...)`` was given the id of a run that exists already (it is kept as it is)."""


class EngineNotOpen(WorkflowError, RuntimeError):
    """The engine is not open (before ``async with engine:``) or is closing: it starts and resumes nothing.

    Not a :class:`RunStateError`: no run's state is wrong; try again once the
    engine is open (a web app answers 503).
    """


class IdempotencyConflict(WorkflowError, ValueError):
    """``engine.start`` was given an idempotency key that a run of another workflow or store has.

    The existing run is left as it is; ``run_id`` names it. (Payment APIs answer 409.)
    """

    def __init__(self, message: str, *, run_id: str, idempotency_key: str) -> None:
        self.run_id = run_id
        self.idempotency_key = idempotency_key
        super().__init__(message)


class UnknownCursor(WorkflowError, ValueError):
    """``engine.watch(run_id, after=...)`` was given a cursor that this run's events never had."""


class UnknownRun(WorkflowError, LookupError):
    """No run with that id is known to the engine's backend."""


class BackendError(WorkflowError, RuntimeError):
    """The persistence backend cannot be used (a corrupt file, a newer schema, a bad URL...)."""


class NotReferenceable(WorkflowError, TypeError):
    """An action (or stage) cannot be re-created from a definition, so a durable run cannot take it."""


class UnknownReference(InvalidDefinition, LookupError):
    """A definition names an action that no registry or import path provides."""


class UnknownWorkflow(InvalidDefinition, LookupError):
    """A run names a workflow that was not registered with the engine."""


class StoreConflict(WorkflowError, ValueError):
    """``Store.merge(..., on_conflict="error")`` met keys present on both sides."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(f"merge conflict on store keys {keys!r}; nothing was merged")


# Names starting with a vowel letter that is said as a consonant ("a uuid.UUID").
_SAID_YOU = ("uni", "use", "usu", "uu", "uti", "ur")


def with_article(name: str) -> str:
    """``name`` after its indefinite article: ``an int``, ``a str``."""
    lower = name.lower()
    vowel = lower[:1] in ("a", "e", "i", "o", "u") and not lower.startswith(_SAID_YOU)
    return f"an {name}" if vowel else f"a {name}"


def _a_type(tp: Any) -> str:
    """``tp`` named with its article; each of a tuple of types with its own: ``an int or a str``."""
    if isinstance(tp, tuple):
        return " or ".join(_a_type(t) for t in tp)
    return with_article(_type_name(tp))


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__qualname__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"
    return repr(tp)
