"""Runs' event logs: what the engine writes down as its runs go, and how a watcher reads it back.

The engine that executes a run keeps its lifecycle events and the messages
its actions send in the backend, in the run's log, numbered from 1. A
watcher, in this process or any other, reads the log after a cursor (the
number of the last event it saw), so that it can stop and go on later
without losing or repeating an event: the base of server-sent events with
``Last-Event-ID``.

Events are buffered and written by one task per engine, all runs' at once
(on SQLite they share the commit of the checkpoints of the same moment), so
a run never waits for its log; a run's last events are written before its
end is recorded, so a watcher that sees the end has seen everything before.

A watch holds no task group across a ``yield``: it is an async generator that
only awaits between its yields, safe inside a web framework's streaming
response that a client may leave at any moment.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio

from ..backends import Backend, RunInfo
from .errors import UnknownCursor
from .events import Event, EventKind, Message, RunEvent, event_data, message_data
from .records import RunStatus
from .trouble import WriteTrouble

#: Events read from the log per call.
_PAGE = 500
#: The latest events kept in memory per run executing here.
_RECENT = 1000
#: Seconds the writer task gathers events before it writes them (a run's last events are
#: written at its end without waiting: see flush(run_id)).
_GATHER = 0.01


class EventLog:
    """The event logs of the runs one engine executes: buffered, written by one task, watched.

    Args:
        backend: where the logs are kept.
        owns: whether a run id belongs to a run executing in this engine (only
            those runs' events are written: a runner shared by two engines hears both).
        keep: whether events are kept at all (``Engine(events=False)`` keeps none).
    """

    def __init__(
        self,
        backend: Backend,
        owns: Callable[[str], bool],
        keep: bool = True,
        trouble: WriteTrouble | None = None,
    ) -> None:
        self.backend = backend
        self.trouble = trouble if trouble is not None else WriteTrouble(backend.url)
        self._owns = owns
        self.keep = keep and backend.keeps_events
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._wanted = anyio.Event()
        # Watchers in this process wait on these: set when a run's events are written.
        self._news: dict[str, anyio.Event] = {}
        self._writing: anyio.Lock = anyio.Lock()
        # The latest events written of the runs executing here, numbered: watchers in this
        # process read them here, not from the database (200 watchers, one read).
        self._recent: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.closed = False

    # ---- writing -------------------------------------------------------------------

    def record_event(self, event: Event) -> None:
        """A hub handler: keep one event of a run that executes here."""
        if event.kind is EventKind.EVENTS_DROPPED or event.kind is EventKind.TIMING:
            return
        if self._owns(event.run_id):
            self.add(event.run_id, event_data(event))

    def record_message(self, message: Message) -> None:
        """A message handler: keep one message of a run that executes here."""
        if self._owns(message.run_id):
            self.add(message.run_id, message_data(message))

    def add(self, run_id: str, data: dict[str, Any]) -> None:
        """Keep ``data`` for the run's log; the writer task writes it soon."""
        if not self.keep:
            return
        pending = self._pending.get(run_id)
        if pending is None:
            self._pending[run_id] = [data]
        else:
            pending.append(data)
        self._wanted.set()

    async def write_forever(self) -> None:
        """The writer task: write what was kept whenever there is something."""
        while True:
            await self._wanted.wait()
            await anyio.sleep(_GATHER)  # one write for the events of many actions and runs
            self._wanted = anyio.Event()
            try:
                await self.flush()
            except Exception as exc:
                # The database's trouble: the events are kept, and written again with back-off
                # (a run's events never stop the engine, nor its runs).
                await self.trouble.retry("the events of runs", self.flush, exc, math.inf)

    async def flush(self, run_id: str | None = None) -> None:
        """Write what is kept (of one run, or of all) now; then wake the watchers here.

        Writes go one at a time (a lock), so a run's events reach the log in
        the order they happened, whoever flushes.
        """
        async with self._writing:
            if run_id is None:
                batches, self._pending = self._pending, {}
            else:
                batch = self._pending.pop(run_id, None)
                batches = {run_id: batch} if batch else {}
            try:
                numbered = (await self.backend.append_events_of_runs(batches) if batches else None) or {}
            except BaseException:
                # Kept for the next flush, before what the runs added meanwhile (one transaction:
                # none of them was written).
                for kept_rid, kept in batches.items():
                    self._pending[kept_rid] = kept + self._pending.get(kept_rid, [])
                raise
            for rid, events in batches.items():
                last = numbered.get(rid)
                if last is not None:
                    recent = self._recent.setdefault(rid, [])
                    recent.extend(zip(range(last - len(events) + 1, last + 1), events, strict=True))
                    if len(recent) > _RECENT:
                        del recent[: len(recent) - _RECENT]
        for rid in batches:
            self.wake(rid)

    def forget(self, run_id: str) -> None:
        """Drop the latest events kept of a run that stopped executing here (watchers read the database)."""
        self._recent.pop(run_id, None)

    def _cached(self, run_id: str, after: int) -> list[tuple[int, dict[str, Any]]] | None:
        """The run's events after ``after`` from the latest kept here, if they reach back that far."""
        recent = self._recent.get(run_id)
        if not recent or recent[0][0] > after + 1 or recent[-1][0] < after:
            return None
        return [item for item in recent if item[0] > after][:_PAGE]

    def wake(self, run_id: str) -> None:
        """Wake the watchers of ``run_id`` in this process."""
        news = self._news.pop(run_id, None)
        if news is not None:
            news.set()

    def close(self) -> None:
        """Wake every watcher here: the engine is closing, their watches end."""
        self.closed = True
        news, self._news = self._news, {}
        for event in news.values():
            event.set()

    # ---- reading -------------------------------------------------------------------

    async def read_all(self, run_id: str) -> list[tuple[int, dict[str, Any]]]:
        """Every event of the run's log (after writing what this engine kept of it)."""
        await self.flush(run_id)
        events: list[tuple[int, dict[str, Any]]] = []
        while True:
            page = await self.backend.read_events(run_id, after=events[-1][0] if events else 0, limit=_PAGE)
            events.extend(page)
            if len(page) < _PAGE:
                return events

    async def check_cursor(self, run_id: str, cursor: str | None) -> int:
        """The event number ``cursor`` stands for (0 for none).

        Raises:
            UnknownCursor: the run's log never had an event of that cursor.
        """
        if cursor is None:
            return 0
        number = int(cursor) if isinstance(cursor, str) and cursor.isascii() and cursor.isdigit() else 0
        if number > 0:
            await self.flush(run_id)
            found = await self.backend.read_events(run_id, after=number - 1, limit=1)
            if found and found[0][0] == number:
                return number
        raise UnknownCursor(
            f"cursor {cursor!r} was never issued for run {run_id!r}: pass the cursor of an event that "
            f"engine.watch gave for this run (an SSE Last-Event-ID), or none to start from its first event"
        )

    async def watch(
        self,
        info: RunInfo,
        after: int,
        get_run: Callable[[str], Any],
        interval: float,
    ) -> AsyncGenerator[RunEvent, None]:
        """The run's events after number ``after``, as they are written, until the run ends or suspends.

        ``get_run`` reads the run's row (``None`` once it is deleted);
        ``interval`` is how often another process's writes are looked for.
        """
        run_id, workflow_id = info.run_id, info.workflow_id
        backend = self.backend
        while True:
            if self.closed:
                return
            # Taken before reading: events written after the read set it, so none is missed.
            news = self._news.get(run_id)
            if news is None:
                news = self._news[run_id] = anyio.Event()
            mark = backend.events_mark(run_id)  # (likewise for other processes' writes)
            page = self._cached(run_id, after)
            if page:
                # Written by this engine just now: no database read, unless the run ended.
                for seq, data in page:
                    after = seq
                    yield RunEvent.from_data(seq, run_id, workflow_id, data)
                if page[-1][1].get("kind") not in _ENDS:
                    await _first_of(
                        news.wait, functools.partial(backend.wait_events, run_id, within=interval, mark=mark)
                    )
                    continue
            # The status first, then the events: a run whose end is recorded has its
            # events written, so what this read finds is all there is when it has ended.
            current = await get_run(run_id)
            page = await backend.read_events(run_id, after=after, limit=_PAGE)
            for seq, data in page:
                after = seq
                yield RunEvent.from_data(seq, run_id, workflow_id, data)
            if page and page[-1][1].get("kind") in _ENDS:
                return  # (its end may be in the log before it is in the run's record)
            if len(page) == _PAGE:
                continue
            if current is None or current.status.finished or current.status is RunStatus.SUSPENDED:
                return
            if not page:
                await _first_of(
                    news.wait, functools.partial(backend.wait_events, run_id, within=interval, mark=mark)
                )


_ENDS = frozenset({EventKind.RUN_FINISHED.value, EventKind.RUN_SUSPENDED.value})


async def _first_of(*waits: Callable[[], Any]) -> None:
    """Return when the first of ``waits`` returns (the others are cancelled)."""
    async with anyio.create_task_group() as group:

        async def wait(fn: Callable[[], Any]) -> None:
            await fn()
            group.cancel_scope.cancel()

        for fn in waits:
            group.start_soon(wait, fn)


def request_fingerprint(workflow_id: str, entries: list[tuple[str, Any]], persistent: bool) -> Any:
    """What identifies a start request, to tell a retry from another request with the same key.

    A hash of the workflow id and the store as JSON for persistent backends;
    the pairs themselves in memory (values need not be JSON there).
    """
    ordered = sorted(entries, key=lambda pair: pair[0])
    if not persistent:
        return [workflow_id, ordered]
    text = json.dumps([workflow_id, ordered], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def steps_from_events(events: list[dict[str, Any]], stages: Any = ()) -> list[dict[str, Any]]:
    """The plan so far of a run executing elsewhere, from its event log: steps as ``RunInfo.steps`` has them.

    Stages in the order they appeared (an inserted stage when it was inserted),
    each followed by its actions; then ``stages`` (the registered workflow's, as
    ``(stage_id, [action names])``) that no event named yet, pending. An action
    that appears twice in one stage is one step here (the latest).
    """
    order: list[str] = []
    stage_steps: dict[str, dict[str, Any]] = {}
    action_steps: dict[str, dict[str, dict[str, Any]]] = {}
    started = min(
        (float(e["at"]) for e in events if e.get("kind") == EventKind.RUN_STARTED.value), default=0.0
    )

    def stage(stage_id: str, dynamic: bool = False) -> dict[str, Any]:
        step = stage_steps.get(stage_id)
        if step is None:
            order.append(stage_id)
            step = stage_steps[stage_id] = _step("stage", stage_id, None, dynamic)
            action_steps[stage_id] = {}
        return step

    def action(stage_id: str, name: str, dynamic: bool = False) -> dict[str, Any]:
        stage(stage_id)
        step = action_steps[stage_id].get(name)
        if step is None:
            step = action_steps[stage_id][name] = _step("action", stage_id, name, dynamic)
        return step

    for data in events:
        kind, stage_id, name = data.get("kind"), data.get("stage_id"), data.get("action_name")
        if stage_id is None:
            continue
        dynamic = bool(data.get("dynamic"))
        step = action(stage_id, name, dynamic) if name is not None else stage(stage_id, dynamic)
        step["dynamic"] = step["dynamic"] or dynamic
        if kind in (EventKind.STAGE_STARTED.value, EventKind.ACTION_STARTED.value):
            step["status"], step["started_at"] = "running", max(float(data.get("at") or 0.0) - started, 0.0)
            step["attempts"] = max(step["attempts"], int(data.get("attempt") or 0))
        elif kind == EventKind.ACTION_RETRY.value:
            step["attempts"] = max(step["attempts"], int(data.get("attempt") or 0))
        elif kind in (
            EventKind.STAGE_FINISHED.value,
            EventKind.ACTION_FINISHED.value,
            EventKind.STEP_SKIPPED.value,
        ):
            step["status"] = data.get("status") or step["status"]
            step["duration"] = float(data.get("duration") or 0.0)
            step["error"] = data.get("error")
            step["reason"] = data.get("reason")
    for stage_id, names in stages:
        if stage_id not in stage_steps:
            stage(stage_id)
        for name in names:
            action(stage_id, name)
    steps: list[dict[str, Any]] = []
    for stage_id in order:
        steps.append(stage_steps[stage_id])
        steps.extend(action_steps[stage_id].values())
    return steps


def _step(kind: str, stage_id: str, action_name: str | None, dynamic: bool) -> dict[str, Any]:
    return {
        "kind": kind,
        "stage_id": stage_id,
        "action_name": action_name,
        "status": "pending",
        "dynamic": dynamic,
        "duration": 0.0,
        "started_at": 0.0,
        "depth": 0,
        "inserted_by": None,
        "inserted_by_stage": None,
        "reason": None,
        "error": None,
        "attempts": 0,
        "recovered_error": None,
    }
