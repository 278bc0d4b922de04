"""Records to and from what a backend keeps: store entries, the store, the steps, the run's end.

The durable engine and its checkpoints speak to a backend in these
encodings; nothing here runs anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..backends.base import RunInfo, StoreEntry
from .clock import Clock
from .errors import RecordedError
from .jsonvalues import json_value_check
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
from .store import Store, _Meta, typed_name


def initial_entries(values: Mapping[Any, Any], persistent: bool) -> list[StoreEntry]:
    """The initial store of a run, keyed as a run's store is (``str`` or ``af.Key``, else TypeError)."""
    named = [(typed_name(key, value), value) for key, value in values.items()]
    if not persistent:
        return [StoreEntry(key, value) for key, value in named]
    return [StoreEntry(key, json_value_check(key, value)) for key, value in named]


def store_entry(key: str, value: Any, meta: _Meta | None, persistent: bool) -> StoreEntry:
    """One store value (and its TTL, tags and properties) as a backend keeps it."""
    if meta is None and persistent:  # the common case, once per key an action writes
        return StoreEntry(key, json_value_check(key, value))
    if not persistent:
        return StoreEntry(
            key,
            value,
            meta.expires if meta else None,
            tuple(meta.tags) if meta else (),
            meta.properties if meta else None,
        )
    return StoreEntry(
        key,
        json_value_check(key, value),
        meta.expires if meta is not None else None,
        tuple(sorted(meta.tags)) if meta is not None else (),
        json.dumps(meta.properties) if meta is not None and meta.properties else None,
    )


def restore_store(entries: list[StoreEntry], clock: Clock, persistent: bool) -> Store:
    """A run's store rebuilt from what the backend kept (values checked as JSON on write, if persistent)."""
    store = Store(clock=clock.now)
    for entry in entries:
        value = json.loads(entry.value) if persistent else entry.value
        store._values[entry.key] = value
        if entry.expires is not None or entry.tags or entry.properties:
            props = (
                json.loads(entry.properties) if persistent and entry.properties else (entry.properties or {})
            )
            store._meta[entry.key] = _Meta(entry.expires, frozenset(entry.tags), dict(props))
    if persistent:
        store._check = json_value_check
    return store


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
