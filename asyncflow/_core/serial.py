"""Records to and from what a backend keeps: store entries, the store, the steps, the run's end.

The durable engine and its checkpoints speak to a backend in these
encodings; nothing here runs anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..backends.base import Backend, RunInfo, StoreEntry
from .actions import Action
from .clock import Clock
from .definitions import Registry
from .durable import Op
from .errors import NotReferenceable, NotSerializable, RecordedError
from .jsonvalues import exact_json, json_value_check
from .records import (
    STEP_COLUMNS,
    RunResult,
    RunStatus,
    StepKind,
    StepNote,
    StepRecord,
    StepRows,
    StepStatus,
    step_reason,
    step_rows,
)
from .store import Meta, Store, typed_name
from .workflow import Stage, Workflow


@attrs.frozen
class Live:
    """A value an in-process backend keeps as the object it is: one that JSON cannot carry.

    Only the codec of a backend that keeps its records in this process makes
    these (the memory backend); it never reaches a database.
    """

    value: Any


class Codec:
    """How one engine's runs reach its backend and come back: one encoding for every backend.

    Store values, their properties and an action's plan changes are JSON
    text, and the actions and stages a run inserts are definitions its
    registry can re-create: what every database keeps, and what the memory
    backend keeps too, so it is a faithful stand-in for one. The one
    difference: a backend that keeps its records in this process
    (``in_process``, the memory backend) keeps the user's own objects that
    JSON cannot carry (a value that is not JSON, an action that is a
    closure) as they are, wrapped in :class:`Live`, where a database refuses
    them (:class:`~asyncflow.NotSerializable`, :class:`~asyncflow.NotReferenceable`).
    :func:`codec_for` makes the one for a backend.
    """

    __slots__ = ("in_process", "requires_json")

    def __init__(self, *, in_process: bool) -> None:
        #: whether the backend keeps records in this process (objects JSON cannot carry stay live)
        self.in_process = in_process
        #: whether what a run keeps (store values, messages, suspend and resume data) must be JSON
        self.requires_json = not in_process

    # ---- store values ------------------------------------------------------------------------

    def value(self, key: str, value: Any) -> Any:
        """One store value as the backend keeps it: its JSON text (or, in process, :class:`Live`)."""
        try:
            return json_value_check(key, value)
        except NotSerializable:
            if self.in_process:
                return Live(value)
            raise

    def read(self, stored: Any) -> Any:
        """A store value (or its properties) as the backend gave it back."""
        if type(stored) is Live:
            return stored.value
        return json.loads(stored)

    def entry(self, key: str, value: Any, meta: Meta | None) -> StoreEntry:
        """One store value (and its TTL, tags and properties) as the backend keeps it."""
        if meta is None:  # the common case, once per key an action writes
            return StoreEntry(key, self.value(key, value))
        return StoreEntry(
            key,
            self.value(key, value),
            meta.expires,
            tuple(sorted(meta.tags)),
            self.value(f"{key} (its properties)", meta.properties) if meta.properties else None,
        )

    def initial_entries(self, values: Mapping[Any, Any]) -> list[StoreEntry]:
        """The initial store of a run, keyed as a run's store is (``str`` or ``af.Key``, else TypeError)."""
        return [self.entry(key, value, None) for key, value in _named(values)]

    def restore(self, entries: list[StoreEntry], clock: Clock) -> Store:
        """A run's store rebuilt from what the backend kept."""
        store = Store(clock=clock.now)
        read = self.read
        for entry in entries:
            meta = None
            if entry.expires is not None or entry.tags or entry.properties:
                props = read(entry.properties) if entry.properties else {}
                meta = Meta(entry.expires, frozenset(entry.tags), dict(props))
            store.load(entry.key, read(entry.value), meta)
        if self.requires_json:
            store.check_values(json_value_check)
        return store

    def check_resume_data(self, run_id: str, data: Any) -> None:
        """Refuse resume ``data`` the backend cannot keep until the run resumes."""
        if not self.requires_json:
            return
        try:
            exact_json(data)
        except (TypeError, ValueError) as exc:
            raise NotSerializable(
                f"resume data for run {run_id!r} is not JSON-serialisable ({exc}); the backend "
                f"keeps it in a database until the run resumes (the run is unchanged)"
            ) from None

    # ---- plan changes ------------------------------------------------------------------------

    def encode_ops(self, ops: list[Op]) -> Any:
        """An action's plan changes as its checkpoint carries them: JSON text (or :class:`Live`)."""
        try:
            return json.dumps(ops)
        except TypeError:  # (in process: an inserted action or stage kept as the object it is)
            if self.in_process:
                return Live(list(ops))
            raise

    def decode_ops(self, stored: Any) -> list[Op]:
        """An action's plan changes as its checkpoint gave them back."""
        ops: list[Op] = stored.value if type(stored) is Live else json.loads(stored)
        return ops

    def reference(self, registry: Registry, action: Action, where: str) -> dict[str, Any]:
        """What a checkpoint keeps of an action a run inserted (raises NotReferenceable)."""
        return self._definition_or_object(lambda: registry.reference(action, where=where), action)

    def stage_definition(self, registry: Registry, stage: Stage, where: str) -> dict[str, Any]:
        """What a checkpoint keeps of a stage a run inserted (raises NotReferenceable)."""
        return self._definition_or_object(lambda: registry.stage_definition(stage, where=where), stage)

    def _definition_or_object(self, define: Callable[[], dict[str, Any]], thing: object) -> dict[str, Any]:
        """``define()``; in process, the object itself where it cannot be defined (a closure, say)."""
        try:
            return define()
        except NotReferenceable:
            if self.in_process:
                return {"object": thing}
            raise

    def resolve(self, registry: Registry, ref: dict[str, Any], where: str) -> Action:
        """The action a checkpoint's reference names."""
        found = ref.get("object")
        if isinstance(found, Action):
            return found
        return registry.resolve(ref, where=where)

    def stage_from_definition(self, registry: Registry, definition: dict[str, Any], where: str) -> Stage:
        """The stage a checkpoint's definition describes."""
        found = definition.get("object")
        if isinstance(found, Stage):
            return found
        return registry.stage_from_definition(definition, where=where)

    # ---- versions ----------------------------------------------------------------------------

    def definition(self, registry: Registry, workflow: Workflow) -> dict[str, Any] | None:
        """The definition of a workflow registered with the engine, if the backend keeps versions.

        A backend in this process keeps none: nothing it holds outlives the process.
        """
        if self.in_process:
            return None
        return registry.workflow_definition(workflow)


#: the codec of every database
JSON_CODEC = Codec(in_process=False)
#: the codec of a backend that keeps its records in this process (the memory backend)
IN_PROCESS_CODEC = Codec(in_process=True)


def codec_for(backend: Backend) -> Codec:
    """The codec of ``backend``: objects JSON cannot carry stay live only in a backend in this process."""
    return JSON_CODEC if backend.persistent else IN_PROCESS_CODEC


def _named(values: Mapping[Any, Any]) -> list[tuple[str, Any]]:
    return [(typed_name(key, value), value) for key, value in values.items()]


def end_fields(info: RunInfo, result: RunResult, suspended_key: str | None) -> dict[str, Any]:
    """The fields of the run's record that its end sets (``Backend.update_run``'s keywords)."""
    fields: dict[str, Any] = {
        "status": result.status,
        "owner": None,
        "lease_until": None,
        "steps": with_earlier_timings(step_rows(result), info.steps),
        "bail_reason": as_text(result.bail_reason),
    }
    if result.status is RunStatus.FAILED and result.error is not None:
        fields["error"] = as_text(f"{type(result.error).__name__}: {result.error}")
        failed = next((s for s in reversed(result.steps) if s.status is StepStatus.FAILED), None)
        if failed is not None:
            fields["failed_stage"] = as_text(failed.stage_id)
            fields["failed_action"] = as_text(failed.action_name)
    if result.status is RunStatus.SUSPENDED:
        fields["suspend_reason"] = as_text(result.suspend_reason)
        fields["suspend_data"] = result.suspend_data
        fields["suspended_step"] = suspended_key
        fields["resume_data"] = None
    return fields


def result_from_info(info: RunInfo, store: Store) -> RunResult:
    """The :class:`RunResult` of a run that ended (or is suspended), from its record and its store."""
    return RunResult(
        run_id=info.run_id,
        workflow_id=info.workflow_id,
        status=info.status,
        store=store.snapshot(),
        duration=max(info.updated_at - info.created_at, 0.0),
        bail_reason=info.bail_reason,
        error=recorded(info.error),
        suspend_reason=info.suspend_reason,
        suspend_data=info.suspend_data,
        steps=[step_from_json(step) for step in info.steps or []],
    )


def with_earlier_timings(steps: StepRows, earlier: list[dict[str, Any]] | None) -> StepRows:
    """``steps`` with each replayed step's duration and attempts taken from the execution that ran it.

    A resumed or recovered run replays what completed before; its record keeps
    what those steps really took, not the 0 s of their replay.
    """
    if not earlier:
        return steps
    ran: dict[tuple[Any, ...], dict[str, Any]] = {}
    seen: dict[tuple[Any, ...], int] = {}
    for step in earlier:
        key = (step["kind"], step["stage_id"], step.get("action_name"))
        seen[key] = seen.get(key, 0) + 1
        ran[(*key, seen[key])] = step
    seen.clear()
    for row in steps.rows:
        key = (row[_KIND], row[_STAGE_ID], row[_ACTION_NAME])
        seen[key] = seen.get(key, 0) + 1
        before = ran.get((*key, seen[key]))
        if row[_REASON] == _REPLAYED and before is not None:
            row[_DURATION_NS] = round(before.get("duration", 0.0) * 1e9)
            row[_ATTEMPTS] = before.get("attempts", row[_ATTEMPTS])
    return steps


_REPLAYED = step_reason(StepNote.REPLAYED)
_KIND, _STAGE_ID, _ACTION_NAME, _REASON, _DURATION_NS, _ATTEMPTS = (
    STEP_COLUMNS.index(name)
    for name in ("kind", "stage_id", "action_name", "reason", "duration_ns", "attempts")
)


def as_text(text: str | None) -> str | None:
    """``text`` as a database can keep it: a lone surrogate (from bytes that are not UTF-8) as ``\\udcff``.

    An error message or a reason may quote a file name that was not UTF-8;
    written as it is, it would fail the very write that records the run's end.
    """
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def recorded(text: str | None) -> RecordedError | None:
    """The error a run recorded as ``"Type: message"``, as a :class:`RecordedError`."""
    if text is None:
        return None
    type_name, _, message = text.partition(": ")
    return RecordedError(type_name, message)


def step_from_json(data: dict[str, Any]) -> StepRecord:
    """A step as :attr:`RunInfo.steps` has it, as a :class:`StepRecord`."""
    return StepRecord(
        kind=StepKind(data["kind"]),
        stage_id=data["stage_id"],
        action_name=data.get("action_name"),
        status=StepStatus(data["status"]),
        dynamic=bool(data.get("dynamic")),
        duration=float(data.get("duration") or 0.0),
        started_at=float(data.get("started_at") or 0.0),
        depth=int(data.get("depth") or 0),
        inserted_by=data.get("inserted_by"),
        inserted_by_stage=data.get("inserted_by_stage"),
        reason=data.get("reason"),
        error=recorded(data.get("error")),
        attempts=int(data.get("attempts") or 0),
        recovered_error=recorded(data.get("recovered_error")),
    )
