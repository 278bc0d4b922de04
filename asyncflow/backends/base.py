"""The persistence seam: one ABC that every backend (memory, SQLite, PostgreSQL) implements.

A backend stores runs (one row each) and each run's checkpoints (one per
completed step, failed attempt, started stage or sleep, each with the store
changes it made). The engine drives it; a backend has no logic of
its own beyond doing each call atomically. Every method is async and none
may block the event loop.
"""

from __future__ import annotations

import base64
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, Self

import anyio
import attrs

from .._core.errors import DuplicateRunId
from .._core.records import CheckpointKind, RunStatus

#: The schema every backend writes; a database with a newer one is refused.
#: 2: a run's steps are stored as :class:`StepRows` (1 had a dict per step; still read).
#: 3: runs are numbered, and checkpoints refer to the number (SQLite: appended, not scattered).
#: 4: each run names the version of its workflow it started on, and the versions are kept.
#: 5: each run keeps a log of its events (``engine.watch``).
#: 6: an index per filter of list_runs, and auto_vacuum=INCREMENTAL (space given back after a purge).
#: 7: (SQLite) the events of runs in a rowid table, appended in the order written, with an index by run.
#: 8: (SQLite) each run keeps the key it was last resumed with, written with the resume's status change.
SCHEMA_VERSION = 8


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


@attrs.frozen
class RunInfo:
    """What the engine's database knows of a run.

    Attributes:
        run_id, workflow_id: the run.
        status: where it stands (``PENDING``, ``RUNNING``, ``SLEEPING``,
            ``SUSPENDED``, or how it ended).
        created_at, updated_at: seconds since the epoch (``created``/``updated``
            give them as UTC datetimes).
        idempotency_key: the key given to ``engine.start``, if any.
        owner: the engine running it now; ``lease_until``: until when its claim holds.
        wake_at: when a sleeping run wakes.
        suspend_reason, suspend_data: what ``ctx.suspend`` gave.
        suspended_step: the step that suspended (it runs again on resume).
        resume_data: what ``engine.resume`` gave.
        error: ``"Type: message"`` of a failed run; ``failed_stage`` and
            ``failed_action`` say where.
        bail_reason: the reason of a bailed run.
        steps: the run's step records (dicts), once it has ended or suspended
            (``engine.get_run`` gives the plan so far of a run that is running).
        workflow_version: the version of its workflow the run started on
            (see :class:`WorkflowVersion`); ``None`` for a run started before
            asyncflow recorded versions, or in memory.
        resume_key: the key the run was last resumed with (``engine.resume(...,
            key=...)``), set in the same write as the resume's status change (a
            resume without a key leaves it); ``None`` if it never was.
    """

    run_id: str
    workflow_id: str
    status: RunStatus
    created_at: float
    updated_at: float
    idempotency_key: str | None = None
    owner: str | None = None
    lease_until: float | None = None
    wake_at: float | None = None
    suspend_reason: str | None = None
    suspend_data: Any = None
    suspended_step: str | None = None
    resume_data: Any = None
    error: str | None = None
    failed_stage: str | None = None
    failed_action: str | None = None
    bail_reason: str | None = None
    steps: list[dict[str, Any]] | None = None
    workflow_version: str | None = None
    resume_key: str | None = None

    @property
    def created(self) -> datetime:
        """``created_at`` as a UTC datetime."""
        return _utc(self.created_at)

    @property
    def updated(self) -> datetime:
        """``updated_at`` as a UTC datetime."""
        return _utc(self.updated_at)


#: The fields of a run that ``Backend.update_run`` may set (all but its identity and times).
UPDATABLE = frozenset(field.name for field in attrs.fields(RunInfo)) - {
    "run_id",
    "workflow_id",
    "created_at",
    "updated_at",
    "idempotency_key",
    "workflow_version",
}


def run_id_taken(run_id: str) -> DuplicateRunId:
    """The error of ``create_run`` for a run id that a run already has."""
    return DuplicateRunId(
        f"a run with id {run_id!r} exists already; it is left as it is. Give a new run_id (or none, "
        f"for a fresh one), or start with idempotency_key=... to start a run at most once"
    )


def check_updatable(fields: Mapping[str, Any]) -> None:
    """Refuse ``update_run`` fields outside :data:`UPDATABLE` (a programming error)."""
    unknown = set(fields) - UPDATABLE
    if unknown:
        raise TypeError(f"update_run cannot set {sorted(unknown)}")


@attrs.frozen
class RunPage:
    """One page of ``engine.list_runs``: ``runs``, and the cursor of the next page (``None`` at the end)."""

    runs: list[RunInfo]
    next_cursor: str | None


class StoreEntry(NamedTuple):
    """One store key of a run as persisted: its value and properties as JSON text, TTL and tags.

    The engine hands every backend the same encoding; only a backend that keeps
    its records in this process (the memory backend) may also be given a value
    JSON cannot carry, wrapped as it is (the engine's codec reads it back).
    """

    key: str
    value: Any
    expires: float | None = None
    tags: tuple[str, ...] = ()
    properties: Any = None


class Checkpoint(NamedTuple):
    """One step of a run, written in one transaction with the store changes it made.

    (Named tuples, like :class:`StoreEntry`: a busy engine builds one per action.)

    ``kind`` is a :class:`CheckpointKind` (stored as its value): ``ACTION`` (the
    step completed; ``ops`` are its plan changes as JSON), ``STAGE`` (a stage
    started), ``ATTEMPT`` (attempt number ``attempts`` failed; the next is due
    at ``at``) or ``SLEEP`` (a durable sleep wakes at ``at``). ``status``, if set, becomes the run's status in
    the same transaction. ``seq`` numbers the run's checkpoints from 1 (the
    engine counts; only the owner of a run writes to it).
    """

    run_id: str
    owner: str
    step_key: str
    kind: CheckpointKind
    puts: tuple[StoreEntry, ...] = ()
    deletes: tuple[str, ...] = ()
    ops: Any = None
    attempts: int = 0
    at: float | None = None
    status: RunStatus | None = None
    seq: int = 0


@attrs.frozen
class WorkflowVersion:
    """A workflow as runs started on it, kept so that they can go on on it after it changes.

    Attributes:
        version: ``"<shape>.<definition>"``, two hashes: of :attr:`shape` and of
            :attr:`definition`; the version a run records
            (:attr:`RunInfo.workflow_version`). Versions with the same
            :func:`shape_key` have the same actions in the same places.
        workflow_id: the workflow.
        shape: the actions in the places a checkpoint can name:
            ``[[stage_id, [action, ...]], ...]``, each action as its name, or
            ``[name, args, kwargs]`` when it was made with constructor arguments.
        definition: :meth:`Workflow.to_definition` of it (JSON), as the
            engine that saved it wrote it (its registry's names).
    """

    version: str
    workflow_id: str
    shape: list[Any]
    definition: dict[str, Any]


def shape_key(version: str) -> str:
    """The part of a :attr:`WorkflowVersion.version` that its shape decides (the first hash)."""
    return version.partition(".")[0]


@attrs.frozen
class SavedRun:
    """Everything a run needs to continue after a restart: its store and its checkpoints in order."""

    info: RunInfo
    store: list[StoreEntry]
    checkpoints: list[Checkpoint]


def encode_changes(puts: Sequence[StoreEntry], deletes: Sequence[str]) -> str | None:
    """The store changes of a checkpoint as one JSON text (``None`` for none).

    ``{"d": [deleted keys], "p": [[key, value, expires, tags, properties], ...]}``;
    values are already JSON text, so they are spliced in, not encoded again.
    Deletes apply first, so a key deleted and written again moves to the end.
    """
    if not puts and not deletes:
        return None
    # One checkpoint per action: the C string encoder, not json.dumps, for the keys, and
    # the common entry (no expiry, tags or properties) without a test per field.
    quote = encode_basestring_ascii
    items = []
    for e in puts:
        if e.expires is None and not e.tags and not e.properties:
            items.append(f"[{quote(e.key)},{e.value},null,null,null]")
        else:
            items.append(
                f"[{quote(e.key)},{e.value},"
                f"{'null' if e.expires is None else repr(float(e.expires))},"
                f"{json.dumps(list(e.tags)) if e.tags else 'null'},{e.properties or 'null'}]"
            )
    dropped = ",".join([quote(key) for key in deletes]) if deletes else ""
    return f'{{"d":[{dropped}],"p":[{",".join(items)}]}}'


#: The columns :func:`replay` reads, in this order, from each checkpoint row of a run.
CHECKPOINT_ROW = "seq, step_key, kind, changes, ops, attempts, at"

_KINDS = {kind.value: kind for kind in CheckpointKind}


def replay(run_id: str, rows: Sequence[Sequence[Any]]) -> tuple[list[StoreEntry], list[Checkpoint]]:
    """A run's store and checkpoints from its checkpoint rows (:data:`CHECKPOINT_ROW`, in order).

    The store is every row's :func:`encode_changes` applied in turn, in
    insertion order. All the changes are parsed in one ``json.loads``, and only
    the value each key is left with is encoded again: a run of 10,000 steps has
    written its few keys over and over (parsing and re-encoding each change
    took most of a load's time).
    """
    changes = [row[3] for row in rows if row[3] is not None]
    kept: dict[str, list[Any]] = {}
    if changes:
        for change in json.loads(f"[{','.join(changes)}]"):
            for key in change["d"]:
                kept.pop(key, None)
            for put in change["p"]:
                kept[put[0]] = put  # (an existing key keeps its place, as a write to a dict does)
    dumps = json.dumps
    store = [
        StoreEntry(
            key,
            dumps(value),
            expires,
            tuple(tags or ()),
            dumps(properties) if properties is not None else None,
        )
        for key, value, expires, tags, properties in kept.values()
    ]
    kinds, make = _KINDS, Checkpoint._make  # (_make: no keyword parsing per checkpoint)
    checkpoints = [
        make((run_id, "", step_key, kinds[kind], (), (), ops, attempts, at, None, seq))
        for seq, step_key, kind, _, ops, attempts, at in rows
        if kind != "start"
    ]
    return store, checkpoints


def encode_cursor(created_at: float, run_id: str) -> str:
    """An opaque cursor for keyset pagination (newest first)."""
    raw = json.dumps([created_at, run_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (created_at, run_id) a cursor stands for; ValueError for a malformed one."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, run_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return float(created_at), str(run_id)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"malformed list_runs cursor {cursor!r}") from exc


class Backend(ABC):
    """Where an engine keeps its runs. Use it as an async context manager, or ``open()``/``aclose()``."""

    #: whether runs survive the process (store values must then be JSON)
    persistent: ClassVar[bool] = True

    url: str = ""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema (refusing a newer or corrupt one)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Finish pending writes and release the connection."""

    @abstractmethod
    async def create_run(self, info: RunInfo, store: Sequence[StoreEntry]) -> tuple[RunInfo, bool]:
        """Insert a run with its initial store; ``(the run, True)``.

        If ``info.idempotency_key`` is taken, insert nothing and return
        ``(the existing run, False)``. If ``info.run_id`` is taken (and the
        key is not), insert nothing and raise :func:`run_id_taken`'s error.
        """

    @abstractmethod
    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run, or ``None``."""

    @abstractmethod
    async def list_runs(
        self,
        *,
        status: RunStatus | None,
        workflow_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> RunPage:
        """Runs, newest first, filtered, one page at a time."""

    @abstractmethod
    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write one checkpoint atomically, if ``checkpoint.owner`` still owns the run.

        Raises:
            LeaseLost: another engine owns the run now, or it was cancelled elsewhere.
        """

    @abstractmethod
    async def load(self, run_id: str) -> SavedRun | None:
        """The run with its store and checkpoints, or ``None``."""

    @abstractmethod
    async def update_run(
        self,
        run_id: str,
        *,
        holder: str | None = None,
        expect: frozenset[RunStatus] | None = None,
        now: float,
        **fields: Any,
    ) -> bool:
        """Set ``fields`` (names in :data:`UPDATABLE`) and ``updated_at=now``, atomically.

        Only if the run exists, is owned by ``holder`` (when given) and is in one
        of the ``expect`` statuses (when given); returns whether it was updated.
        ``steps`` comes as :class:`StepRows` (the compact form a backend may
        store as it is); :attr:`RunInfo.steps` gives them back as dicts.
        """

    @abstractmethod
    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        limit: int,
        run_id: str | None = None,
        skip_versions: Collection[str] = (),
    ) -> list[RunInfo]:
        """Take runs that nobody holds: pending, or running/sleeping with an expired lease.

        Claimed runs get ``owner``, ``lease_until`` and status ``RUNNING``
        (``SLEEPING`` stays). With ``run_id``, only that run is considered.
        Runs whose ``workflow_version`` is in ``skip_versions`` are not taken
        (versions the engine cannot re-create; with a backend without the
        argument, the engine gives such runs back each time it claims them).
        """

    @abstractmethod
    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], *, now: float, lease_until: float
    ) -> set[str]:
        """Extend the leases of ``owner``'s runs; return the ids it no longer owns."""

    @abstractmethod
    async def delete_run(self, run_id: str) -> bool:
        """Delete a run and everything it stored; whether it existed."""

    @abstractmethod
    async def purge(self, *, finished_before: float) -> int:
        """Delete finished runs last updated before ``finished_before``; how many."""

    def on_notice(self, callback: Callable[[str, str | None], None] | None) -> None:
        """Have ``callback(kind, run_id)`` called when another engine signals something.

        ``kind`` is ``"work"`` (a run may be claimed now: released, resumed or
        created free; ``run_id`` is ``None``) or ``"cancel"`` (``run_id`` was
        cancelled from another process: stop it at once). A backend shared
        between processes may deliver these (PostgreSQL does, with
        LISTEN/NOTIFY); the engine polls anyway, so by default none come.
        """
        return None

    async def save_version(self, version: WorkflowVersion) -> None:
        """Keep ``version`` (nothing changes if one with its ``version`` is kept already).

        An engine saves the version of each workflow registered with it when
        it opens, or before the first run of one registered later. By default
        a backend keeps none: a run whose workflow then has other actions in
        some places waits for an engine with its version registered, instead
        of going on on the version it started on.
        """
        return None

    async def load_versions(self, version: str) -> list[WorkflowVersion]:
        """The versions kept with the :func:`shape_key` of ``version``, ``version`` itself first.

        (The same actions in the same places, saved by engines whose
        registries name them otherwise.) By default, none.
        """
        return []

    # ---- a run's event log (engine.watch) ---------------------------------------------
    # Not abstract: a backend without a log still runs workflows; engine.watch then gives
    # only what the run's row says (its end or suspension).

    #: whether this backend keeps runs' events (``append_events`` stores them)
    keeps_events: ClassVar[bool] = False

    async def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> int | None:
        """Add ``events`` to the end of the run's log in one transaction, numbered on from its last (from 1).

        Each event is a dict of JSON values (persistent backends) as
        :func:`~asyncflow._core.events.event_data` makes it. A run that does
        not exist (deleted meanwhile) takes none. Deleting a run deletes its log.
        Returns the number of the last event added (``None``: none added, or
        not known), so that an engine can hand them to its own watchers without
        reading them back.
        """
        return None

    async def append_events_of_runs(
        self, events: Mapping[str, Sequence[dict[str, Any]]]
    ) -> dict[str, int] | None:
        """:meth:`append_events` for several runs at once (run id -> its events): all or none.

        By default one run after another; a backend whose every commit costs a
        round trip (PostgreSQL), or that can write them in one job (SQLite),
        writes them all in one. Returns the number of the last event added per
        run, where known (``None``: not known), so that an engine can hand them
        to its own watchers without reading them back.
        """
        numbered: dict[str, int] = {}
        for run_id, run_events in events.items():
            last = await self.append_events(run_id, run_events)
            if last is not None:
                numbered[run_id] = last
        return numbered

    async def read_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` events of the run's log numbered after ``after``, in order: ``(number, event)``."""
        return []

    def events_mark(self, run_id: str) -> object:
        """A mark to take before reading the run's events, for :meth:`wait_events`.

        A backend that is told of new events counts them here, so that a
        wait after a read returns at once for events appended between the
        two. The default (no notices) has nothing to count.
        """
        return None

    async def wait_events(self, run_id: str, *, within: float, mark: object = None) -> None:
        """Return when the run may have new events or a new status, or after ``within`` seconds.

        The default polls: it sleeps ``within`` (an engine in this process
        wakes its own watchers at once). A backend that can be told of
        changes (PostgreSQL's LISTEN/NOTIFY) returns as soon as it is, and at
        once if it was told since ``mark`` (:meth:`events_mark`) was taken.
        """
        await anyio.sleep(within)
