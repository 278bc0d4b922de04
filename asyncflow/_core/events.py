"""Messages from actions and lifecycle events of runs, and the hub that delivers them.

Both cost nothing when nobody listens: the runner asks the hub whether
anyone is there before it builds a record.
"""

from __future__ import annotations

import enum
import inspect
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import attrs
from loguru import logger

if TYPE_CHECKING:
    from .tracing import Tracing


class EventKind(enum.StrEnum):
    """What happened, in an :class:`Event`."""

    RUN_STARTED = "run_started"
    STAGE_STARTED = "stage_started"
    STAGE_FINISHED = "stage_finished"
    ACTION_STARTED = "action_started"
    ACTION_FINISHED = "action_finished"
    ACTION_RETRY = "action_retry"
    STEP_SKIPPED = "step_skipped"
    STAGE_INSERTED = "stage_inserted"
    ACTION_INSERTED = "action_inserted"
    RUN_FINISHED = "run_finished"
    RUN_SUSPENDED = "run_suspended"
    RUN_INTERRUPTED = "run_interrupted"
    TIMING = "timing"
    EVENTS_DROPPED = "events_dropped"
    #: (``engine.watch`` only) a run was written down by ``engine.start``
    RUN_CREATED = "run_created"
    #: (``engine.watch`` only) ``engine.resume`` continued a suspended run
    RUN_RESUMED = "run_resumed"
    #: (``engine.watch`` only) an action sent a message with ``ctx.send``
    MESSAGE = "message"


class Event(NamedTuple):
    """One lifecycle event of a run (an immutable record).

    A named tuple rather than an attrs class: a busy run emits two per
    action, and this is the cheapest immutable record Python builds.

    Attributes:
        kind: what happened.
        run_id, workflow_id: the run.
        stage_id, action_name: the step, where the event is about one.
        at: wall-clock time (``time.time()``) of the event.
        status: the step's or run's status for ``*_FINISHED`` and ``STEP_SKIPPED``.
        error: the exception of a failed step or run (or one a middleware recovered from).
        duration: seconds the step or run took, for ``*_FINISHED`` and ``TIMING``.
        dynamic: the step was inserted at run time (by an action, or as an action of an
            inserted stage), as in ``StepRecord``.
        attempt: the attempt number, for action events.
        reason: why a step was skipped; for ``RUN_FINISHED``, why the run suspended or bailed.
        dropped: for ``EVENTS_DROPPED``, how many events this subscriber missed.
        key: an action's place in the plan (``stage/2.0.1``, as in ``StepRecord``), for action events.
        parent_key: for a step an action inserted, the key of that action (its stage is
            the part before the last ``/``); ``None`` for an inserted stage's own actions.
    """

    kind: EventKind
    run_id: str
    workflow_id: str
    stage_id: str | None = None
    action_name: str | None = None
    at: float = 0.0
    status: str | None = None
    error: BaseException | None = None
    duration: float | None = None
    dynamic: bool = False
    attempt: int | None = None
    reason: str | None = None
    dropped: int = 0
    key: str | None = None
    parent_key: str | None = None


@attrs.frozen
class Message:
    """A message an action sent with ``await ctx.send(kind, payload)``.

    ``seq`` increases by one per message within a run, from 1; ``pid`` is the
    sending process; ``from_child`` tells whether it crossed from a child process.
    """

    kind: str
    payload: Any
    run_id: str
    workflow_id: str
    stage_id: str
    action_name: str
    action_index: int
    is_last_action: bool
    seq: int
    pid: int = attrs.field(factory=os.getpid)
    from_child: bool = False


EventHandler = Callable[[Event], Awaitable[None] | None]
MessageHandler = Callable[[Message], Awaitable[None] | None]


def _check_handler(handler: object, what: str) -> None:
    if not callable(handler):
        raise TypeError(f"{what} handler must be callable (sync or async), got {handler!r}")


@attrs.define
class _MessageRoute:
    kind: str
    handler: MessageHandler
    workflow_id: str | None
    stage_id: str | None
    action_name: str | None
    run_id: str | None

    def matches(self, msg: Message) -> bool:
        return (
            (self.kind == "*" or self.kind == msg.kind)
            and (self.workflow_id is None or self.workflow_id == msg.workflow_id)
            and (self.stage_id is None or self.stage_id == msg.stage_id)
            and (self.action_name is None or self.action_name == msg.action_name)
            and (self.run_id is None or self.run_id == msg.run_id)
        )


class _DropMarker:
    """The pending ``EVENTS_DROPPED`` of a stream: where its losses began, and how many so far."""

    __slots__ = ("dropped", "run_id", "workflow_id")

    def __init__(self, run_id: str, workflow_id: str) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.dropped = 0

    def event(self) -> Event:
        return Event(
            EventKind.EVENTS_DROPPED, self.run_id, self.workflow_id, at=time.time(), dropped=self.dropped
        )


#: The events that end a run's stream (kept before any other kind when the buffer is full).
_RUN_ENDS = frozenset({EventKind.RUN_FINISHED, EventKind.RUN_SUSPENDED})


class EventStream:
    """An async iterator of :class:`Event` with a bounded buffer (from ``subscribe()``).

    The stream holds at most ``buffer`` events, plus one ``EVENTS_DROPPED``
    marker, whatever arrives and however long nobody reads. When it is full,
    new events are dropped and counted in the marker, which sits where the
    losses began and carries how many events were missed. ``RUN_FINISHED`` (or
    ``RUN_SUSPENDED``) is
    kept before any other kind: it takes the place of the newest buffered
    event that is not a ``RUN_FINISHED``, and only when the buffer holds
    nothing else does it push out the oldest ``RUN_FINISHED``. So a reader
    waiting for the end of a run (``subscribe(run_id=...)``), or that reads
    now and then, always sees it. The run never waits for a subscriber.
    """

    def __init__(self, buffer: int, run_id: str | None) -> None:
        self._buffer: deque[Event | _DropMarker] = deque()
        self._limit = buffer
        self._run_id = run_id
        #: the marker in the buffer, if one is there (there is never more than one)
        self._marker: _DropMarker | None = None
        #: how many events in the buffer are not RUN_FINISHED (the marker aside)
        self._others = 0
        self._closed = False
        self._wake: anyio.Event | None = None

    def _held(self) -> int:
        return len(self._buffer) - (self._marker is not None)

    def _count_drop(self, event: Event) -> None:
        if self._marker is None:
            self._marker = _DropMarker(event.run_id, event.workflow_id)
            self._buffer.append(self._marker)
        self._marker.dropped += 1

    def _make_room_for_run_finished(self) -> None:
        buffer = self._buffer
        if self._others:
            # The newest event that is not RUN_FINISHED gives way (the oldest are kept, as for any loss).
            for index in range(len(buffer) - 1, -1, -1):
                item = buffer[index]
                if isinstance(item, Event) and item.kind not in _RUN_ENDS:
                    del buffer[index]
                    self._others -= 1
                    self._count_drop(item)
                    return
        # Nothing but RUN_FINISHED events: the oldest gives way, so the latest ends are there.
        for index, item in enumerate(buffer):
            if isinstance(item, Event):
                del buffer[index]
                self._count_drop(item)
                return

    def _push(self, event: Event) -> None:
        if self._run_id is not None and event.run_id != self._run_id:
            return
        finished = event.kind in _RUN_ENDS
        if self._held() >= self._limit:
            if not finished:
                self._count_drop(event)
                return
            self._make_room_for_run_finished()
        self._buffer.append(event)
        if not finished:
            self._others += 1
        if self._wake is not None:
            self._wake.set()

    def _close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wake = anyio.Event()
            try:
                await self._wake.wait()
            finally:
                self._wake = None
        item = self._buffer.popleft()
        if isinstance(item, _DropMarker):
            self._marker = None
            return item.event()
        if item.kind not in _RUN_ENDS:
            self._others -= 1
        return item


class Hub:
    """Routes messages and events of one runner to its handlers and subscribers (internal)."""

    def __init__(self) -> None:
        self.event_handlers: list[EventHandler] = []
        self.streams: list[EventStream] = []
        self.routes: list[_MessageRoute] = []
        #: whether anyone wants events: a plain attribute, read twice per action
        self.listening = False
        #: the tracing integration of this runner's runs, if one is set (see tracing.py)
        self.tracing: Tracing | None = None

    def _refresh(self) -> None:
        self.listening = bool(self.event_handlers or self.streams)

    def on_event(self, handler: EventHandler) -> Callable[[], None]:
        _check_handler(handler, "event")
        self.event_handlers.append(handler)
        self._refresh()

        def unregister() -> None:
            self.event_handlers.remove(handler)
            self._refresh()

        return unregister

    def on_message(
        self,
        kind: str,
        handler: MessageHandler,
        *,
        workflow_id: str | None,
        stage_id: str | None,
        action_name: str | None,
        run_id: str | None,
    ) -> Callable[[], None]:
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"message kind must be a non-empty string ('*' for all), got {kind!r}")
        _check_handler(handler, f"message {kind!r}")
        route = _MessageRoute(kind, handler, workflow_id, stage_id, action_name, run_id)
        self.routes.append(route)
        return lambda: self.routes.remove(route)

    @asynccontextmanager
    async def subscribe(self, buffer: int, run_id: str | None) -> AsyncIterator[EventStream]:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"subscribe buffer must be a positive int, got {buffer!r}")
        stream = EventStream(buffer, run_id)
        self.streams.append(stream)
        self._refresh()
        try:
            yield stream
        finally:
            self.streams.remove(stream)
            self._refresh()
            stream._close()

    async def emit(self, event: Event) -> None:
        for stream in self.streams:
            stream._push(event)
        for handler in list(self.event_handlers):
            try:
                outcome = handler(event)
                if outcome is not None and inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.opt(exception=True).error(
                    "event handler {!r} raised on {} of run {}", handler, event.kind.value, event.run_id
                )

    async def deliver(self, msg: Message) -> int:
        """Hand ``msg`` to every matching handler; return how many raised."""
        failures = 0
        for route in list(self.routes):
            if not route.matches(msg):
                continue
            try:
                outcome = route.handler(msg)
                if outcome is not None and inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                failures += 1
                logger.opt(exception=True).bind(
                    run_id=msg.run_id,
                    workflow_id=msg.workflow_id,
                    stage_id=msg.stage_id,
                    action=msg.action_name,
                ).error(
                    "message handler {!r} raised on message {!r} (seq {}) from action {!r} "
                    "of stage {!r} in run {}",
                    route.handler,
                    msg.kind,
                    msg.seq,
                    msg.action_name,
                    msg.stage_id,
                    msg.run_id,
                )
        return failures


def _error_text(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def event_data(event: Event) -> dict[str, Any]:
    """``event`` as a run's event log keeps it: a dict of JSON values (the error as ``"Type: message"``).

    Fields that hold their default are left out: a busy run logs two events per action.
    """
    data: dict[str, Any] = {"kind": event.kind.value, "at": event.at}
    if event.stage_id is not None:
        data["stage_id"] = event.stage_id
    if event.action_name is not None:
        data["action_name"] = event.action_name
    if event.status is not None:
        data["status"] = event.status
    if event.error is not None:
        data["error"] = _error_text(event.error)
    if event.duration is not None:
        data["duration"] = event.duration
    if event.dynamic:
        data["dynamic"] = True
    if event.attempt is not None:
        data["attempt"] = event.attempt
    if event.reason is not None:
        data["reason"] = event.reason
    if event.key is not None:
        data["key"] = event.key
    if event.parent_key is not None:
        data["parent_key"] = event.parent_key
    return data


def message_data(message: Message) -> dict[str, Any]:
    """``message`` as a run's event log keeps it (kind ``"message"``; its own kind is ``message``)."""
    return {
        "kind": EventKind.MESSAGE.value,
        "at": time.time(),
        "stage_id": message.stage_id,
        "action_name": message.action_name,
        "message": message.kind,
        "payload": message.payload,
        "seq": message.seq,
    }


@attrs.frozen
class RunEvent:
    """One event of a run, as :meth:`Engine.watch <asyncflow.Engine.watch>` gives it, from any process.

    Attributes:
        cursor: where this event is in the run's log: pass it as ``after=`` to
            go on after it (an SSE ``id:``).
        kind: what happened (:class:`EventKind`; ``MESSAGE`` for ``ctx.send``).
        run_id, workflow_id: the run.
        at: wall-clock time of the event (``time.time()``).
        stage_id, action_name: the step, where the event is about one.
        status: the step's or the run's status, for ``*_FINISHED``,
            ``STEP_SKIPPED`` and ``RUN_SUSPENDED``.
        error: ``"Type: message"`` of a failed step or run.
        duration: seconds the step or run took, for ``*_FINISHED``.
        dynamic: the step was inserted at run time (as in :class:`Event`).
        attempt: the attempt number, for action events.
        reason: why a step was skipped.
        message: for ``MESSAGE``, the kind given to ``ctx.send``; ``payload`` its payload.
        key, parent_key: an action's place in the plan, and for a step an action
            inserted the place of that action (as in :class:`Event`).
    """

    cursor: str
    kind: EventKind
    run_id: str
    workflow_id: str
    at: float
    stage_id: str | None = None
    action_name: str | None = None
    status: str | None = None
    error: str | None = None
    duration: float | None = None
    dynamic: bool = False
    attempt: int | None = None
    reason: str | None = None
    message: str | None = None
    payload: Any = None
    key: str | None = None
    parent_key: str | None = None

    @classmethod
    def from_data(cls, seq: int, run_id: str, workflow_id: str, data: dict[str, Any]) -> RunEvent:
        """The event numbered ``seq`` in a run's log, from what :func:`event_data` kept."""
        return cls(
            cursor=str(seq),
            kind=EventKind(data["kind"]),
            run_id=run_id,
            workflow_id=workflow_id,
            at=float(data.get("at") or 0.0),
            stage_id=data.get("stage_id"),
            action_name=data.get("action_name"),
            status=data.get("status"),
            error=data.get("error"),
            duration=data.get("duration"),
            dynamic=bool(data.get("dynamic")),
            attempt=data.get("attempt"),
            reason=data.get("reason"),
            message=data.get("message"),
            payload=data.get("payload"),
            key=data.get("key"),
            parent_key=data.get("parent_key"),
        )

    def to_json(self) -> dict[str, Any]:
        """The event as a dict of its fields (JSON values, if the payload is one)."""
        data = attrs.asdict(self, recurse=False)
        data["kind"] = self.kind.value
        return data
