"""The SQLite backend: the embedded durable default.

One writer thread owns the connection. Every call becomes a job on its
queue; the thread takes all the jobs that are waiting, writes them in one
transaction (group commit: concurrent runs share commits, so throughput
grows with concurrency), commits, and hands every result back to the event
loop with a single wake-up. Nothing touches SQLite on the event loop.

Calls wait for the end of the event loop's pass before they go to the
writer, so the writer, which needs the GIL to start and after every
statement, finds the loop idle. Checkpoints, one per committed action, take
a shorter road still: the rows of all the runs that moved in one pass are
made on the loop and written by one multi-row statement, its own
transaction, while SQLite's own work runs without the GIL.

The database runs in WAL mode with ``synchronous=NORMAL``: a committed
checkpoint survives the process being killed (``kill -9``); an operating
system crash or power loss may lose the last few commits, never corrupt the
file. Several processes may share one file; runs are divided among them by
leases.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from .._core.errors import BackendError, LeaseLost
from .._core.records import STEP_COLUMNS, RunStatus, StepRows, step_dicts
from .base import (
    SCHEMA_VERSION,
    Backend,
    Checkpoint,
    RunInfo,
    RunPage,
    SavedRun,
    StoreEntry,
    WorkflowVersion,
    apply_changes,
    check_updatable,
    decode_cursor,
    encode_changes,
    encode_cursor,
    run_id_taken,
    shape_key,
)


def _tables(runs: str, checkpoints: str) -> list[str]:
    """The two tables of runs, named ``runs`` and ``checkpoints`` (other names while migrating)."""
    return [
        f"""CREATE TABLE {runs} (
            run_no INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL UNIQUE,
            workflow_id TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            idempotency_key TEXT UNIQUE,
            owner TEXT,
            lease_until REAL,
            wake_at REAL,
            suspend_reason TEXT,
            suspend_data TEXT,
            suspended_step TEXT,
            resume_data TEXT,
            error TEXT,
            failed_stage TEXT,
            failed_action TEXT,
            bail_reason TEXT,
            steps TEXT,
            workflow_version TEXT
        )""",
        f"""CREATE TABLE {checkpoints} (
            run_no INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            step_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            changes TEXT,
            ops TEXT,
            attempts INTEGER NOT NULL,
            at REAL
        )""",
    ]


# Checkpoints go at the end of their table, in the order they are committed, and
# the index that finds a run's checkpoints holds two integers per row. Keyed by
# run id and sequence number (schema 2 and before), the rows of 200 runs that
# share a commit went to 200 places in the table, and each commit rewrote about
# 125 pages of it: three times the work per row.
_INDEXES = [
    "CREATE INDEX runs_by_created ON runs (created_at DESC, run_id DESC)",
    "CREATE INDEX runs_by_status ON runs (status, lease_until)",
    "CREATE UNIQUE INDEX checkpoints_by_run ON checkpoints (run_no, seq)",
]
# The versions of workflows that runs started on (see WorkflowVersion): one row per
# version, however many runs name it, found by the key of its shape.
_VERSIONS_TABLES = [
    """CREATE TABLE workflow_versions (
        version TEXT PRIMARY KEY,
        shape_key TEXT NOT NULL,
        workflow_id TEXT NOT NULL,
        shape TEXT NOT NULL,
        definition TEXT NOT NULL
    )""",
    "CREATE INDEX workflow_versions_by_shape ON workflow_versions (shape_key)",
]
# Each run's events (engine.watch), numbered from 1; they go with their run.
_EVENTS_TABLES = [
    """CREATE TABLE IF NOT EXISTS run_events (
        run_no INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_no, seq)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS run_events_go_with_their_run AFTER DELETE ON runs
    BEGIN
        DELETE FROM run_events WHERE run_no = old.run_no;
    END""",
]
_SCHEMA = [
    "CREATE TABLE asyncflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    *_tables("runs", "checkpoints"),
    *_INDEXES,
    *_VERSIONS_TABLES,
    *_EVENTS_TABLES,
]

_RUN_COLUMNS = tuple(field.name for field in attrs.fields(RunInfo))
_JSON_COLUMNS = frozenset({"suspend_data", "resume_data", "steps"})
_SELECT_RUN = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
_SELECT_NUMBERED_RUN = f"SELECT run_no, {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_id = ?"
_CLAIMABLE = ("pending", "running", "sleeping")

# A run's store is not a table of its own: each checkpoint carries the store
# changes it made (one JSON text), so committing an action is one INSERT, and
# loading a run applies the changes in order.


def _json(value: Any) -> str | None:
    if isinstance(value, StepRows):
        return json.dumps({"columns": STEP_COLUMNS, "rows": value.rows})
    return None if value is None else json.dumps(value)


def _row_to_info(row: Sequence[Any]) -> RunInfo:
    fields = dict(zip(_RUN_COLUMNS, row, strict=True))
    for name in _JSON_COLUMNS:
        if fields[name] is not None:
            fields[name] = json.loads(fields[name])
    steps = fields["steps"]
    if isinstance(steps, dict):  # rows of columns (schema 2); schema 1 stored a list of dicts
        fields["steps"] = step_dicts(steps["columns"], steps["rows"])
    fields["status"] = RunStatus(fields["status"])
    return RunInfo(**fields)


def _tables_in(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _create(conn: sqlite3.Connection) -> set[str]:
    """Create the schema in an empty file; the tables found instead, if another process was quicker."""
    conn.execute("PRAGMA journal_mode = WAL")
    with _atomic(conn):
        tables = _tables_in(conn)
        if not tables:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO asyncflow_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
    return tables


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM asyncflow_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


# The columns of ``runs`` in schema 1 and 2, as the 2 to 3 migration copies them.
_V2_RUN_COLUMNS = (
    "run_id, workflow_id, status, created_at, updated_at, idempotency_key, owner, lease_until, wake_at, "
    "suspend_reason, suspend_data, suspended_step, resume_data, error, failed_stage, failed_action, "
    "bail_reason, steps"
)


class _NotAlone(Exception):
    """The upgrade (or the switch back to WAL after it) needs the file alone; another connection has it."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version  # the file's schema version when it was refused


def _migrate(conn: sqlite3.Connection, version: int, where: str) -> None:
    """Bring a database of schema ``version`` to :data:`SCHEMA_VERSION`, in one transaction.

    Only with the file to itself: an older asyncflow that has it open would fail
    its runs on the new tables. Leaving WAL mode, which SQLite allows only to
    the sole connection, tells; if another is there, :class:`_NotAlone` (the
    caller closes, waits and tries again). The rebuild holds an exclusive lock,
    so an older asyncflow opening the file meanwhile waits, then finds the new
    version and refuses it.

    4 to 5 adds the table of runs' events (runs of before start with none).
    3 to 4 adds the column of a run's workflow version and the table of
    versions (runs of before have none). 2 to 3 rebuilds both tables: runs get
    a number (``run_no``, in the order they were created) and checkpoints
    refer to it; checkpoints of runs that are gone are dropped. 1 to 2 changed
    no table: schema 2 stores a run's steps as rows of columns, and runs
    recorded with a dict per step are still read as they are. Every new
    version keeps an older asyncflow from misreading the file.
    """
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.OperationalError as exc:
        if _locked(exc):
            raise _NotAlone(version) from exc
        raise
    try:
        _rebuild(conn, version, where)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA journal_mode = WAL")  # as it was
        raise


def _rebuild(conn: sqlite3.Connection, version: int, where: str) -> None:
    with _atomic(conn, "BEGIN EXCLUSIVE"):
        found = _version(conn)
        if found > SCHEMA_VERSION:
            raise BackendError(
                f"{where!r} was upgraded by a newer asyncflow (schema version {found}) while this one "
                f"opened it; upgrade asyncflow. Nothing was changed"
            )
        if found == version and version < 3:
            for statement in _tables("runs_v3", "checkpoints_v3"):
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO runs_v3 ({_V2_RUN_COLUMNS}) "
                f"SELECT {_V2_RUN_COLUMNS} FROM runs ORDER BY created_at, run_id"
            )
            conn.execute(
                "INSERT INTO checkpoints_v3 (run_no, seq, step_key, kind, changes, ops, attempts, at) "
                "SELECT r.run_no, c.seq, c.step_key, c.kind, c.changes, c.ops, c.attempts, c.at "
                "FROM checkpoints AS c JOIN runs_v3 AS r ON r.run_id = c.run_id ORDER BY r.run_no, c.seq"
            )
            conn.execute("DROP TABLE checkpoints")
            conn.execute("DROP TABLE runs")
            conn.execute("ALTER TABLE runs_v3 RENAME TO runs")
            conn.execute("ALTER TABLE checkpoints_v3 RENAME TO checkpoints")
            for statement in _INDEXES:
                conn.execute(statement)
        elif found == version and version < 4:
            conn.execute("ALTER TABLE runs ADD COLUMN workflow_version TEXT")
        if found == version and version < 4:
            for statement in _VERSIONS_TABLES:
                conn.execute(statement)
        if found == version and version < 5:
            for statement in _EVENTS_TABLES:
                conn.execute(statement)
        if found == version:
            conn.execute(
                "UPDATE asyncflow_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )


class _Job:
    __slots__ = ("error", "fn", "future", "result", "writes")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any], writes: bool
    ) -> None:
        self.fn = fn
        self.future = future
        self.writes = writes
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = object()  # queued as (_STOP, future) by aclose
_Jobs = queue.SimpleQueue["_Job | _Batch | tuple[object, asyncio.Future[None]]"]


class SQLiteBackend(Backend):
    """Runs in an SQLite file (created, and its schema migrated, on first open).

    Args:
        path: the database file.
        busy_timeout: seconds to wait for another process's write lock.
    """

    keeps_events = True

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._busy_timeout = busy_timeout
        # The queue of the writer thread now open (each thread has its own, so a thread still
        # finishing after a cancelled close cannot take the jobs of the next one).
        self._jobs: _Jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_rows = 2  # rows per statement, set from the SQLite library when it opens
        # Checkpoints and calls waiting on the loop for the end of its pass (see _hand_over).
        self._pending: list[tuple[Checkpoint, asyncio.Future[None]]] = []
        self._pending_jobs: list[_Job] = []
        self._handing_over = False
        # What the writer has done, and the pipe it wakes the loop with (see _hand_back).
        self._done: collections.deque[tuple[list[_Job], list[_Batch]]] = collections.deque()
        self._wake: tuple[int, int] | None = None

    # ---- the writer thread --------------------------------------------------------

    async def open(self) -> None:
        """Start the writer thread, open the file, create or check the schema."""
        if self._thread is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        self._open_wake(loop)
        ready: asyncio.Future[None] = loop.create_future()
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve,
            args=(ready, self._jobs),
            name=f"asyncflow-sqlite:{self.path.name}",
            daemon=True,
        )
        self._thread.start()
        try:
            # Opening takes milliseconds; shielded, so a cancellation cannot leave
            # a thread holding the file behind an object that thinks it is closed.
            with anyio.CancelScope(shield=True):
                await ready
        except BaseException:
            self._thread = None
            self._close_wake(loop, self._wake)
            raise

    def _open_wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """A pipe for the writer to wake the loop with, if the loop can watch one."""
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        try:
            loop.add_reader(read, self._take_done, read)
        except NotImplementedError:  # (Windows' proactor loop): call_soon_threadsafe instead
            os.close(read)
            os.close(write)
        else:
            self._wake = (read, write)

    def _close_wake(self, loop: asyncio.AbstractEventLoop, wake: tuple[int, int] | None) -> None:
        """Deliver what is left and close ``wake``, the pipe of a writer that has stopped."""
        if wake is None:  # (the writer used call_soon_threadsafe)
            return
        self._take_done(wake[0])
        if self._wake == wake:
            self._wake = None
        loop.remove_reader(wake[0])
        os.close(wake[0])
        os.close(wake[1])

    async def aclose(self) -> None:
        """Finish the queued writes, close the connection and stop the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = None
        self._send_pending()  # checkpoints still waiting for the end of a pass go first
        closed: asyncio.Future[None] = loop.create_future()
        wake = self._wake
        # Once the thread has stopped (it writes to the pipe no more), even if this call
        # was cancelled meanwhile: the last results, then the pipe.
        closed.add_done_callback(lambda _: self._close_wake(loop, wake))
        self._jobs.put((_STOP, closed))
        await asyncio.shield(closed)

    def _serve(self, ready: asyncio.Future[None], jobs: _Jobs) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail_future, ready, exc)
            return
        loop.call_soon_threadsafe(_resolve_future, ready, None)
        closed: asyncio.Future[None] | None = None
        try:
            while closed is None:
                batch: list[_Job] = []
                checkpoints: list[_Batch] = []
                job = jobs.get()
                while True:
                    if isinstance(job, tuple):  # (_STOP, future): finish this batch, then stop
                        closed = job[1]
                        break
                    if isinstance(job, _Batch):
                        checkpoints.append(job)
                    else:
                        batch.append(job)
                    if len(batch) + len(checkpoints) >= 1024 or jobs.empty():
                        break  # (this thread alone takes jobs: not empty now, not empty below)
                    job = jobs.get_nowait()
                if batch or checkpoints:
                    try:
                        self._execute(conn, batch, checkpoints)
                    except Exception as exc:  # (a failure SQLite's own handling let through)
                        # From the checkpoints, written first, or from finding which of them
                        # failed: they and the calls after them (not made yet) fail with it,
                        # even a checkpoint that was written, and the writer goes on.
                        _fail_all(batch, checkpoints, _wrap(exc, self.path))
                    self._hand_back(loop, batch, checkpoints)
        finally:
            conn.close()
            if closed is not None:
                loop.call_soon_threadsafe(_resolve_future, closed, None)

    def _hand_back(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Job], checkpoints: list[_Batch]
    ) -> None:
        """Give the results to the loop (on the writer thread).

        A byte down a pipe the loop watches wakes it, and it takes the results in
        its own callback (_take_done): one system call on each side, where
        ``call_soon_threadsafe`` makes a handle and the loop reads its own
        socket twice (the second time to find it empty).
        """
        wake = self._wake
        if wake is None:
            loop.call_soon_threadsafe(_deliver, batch, checkpoints)
            return
        self._done.append((batch, checkpoints))
        with contextlib.suppress(BlockingIOError):  # full of wake-ups the loop has yet to read
            os.write(wake[1], b"\0")

    def _take_done(self, wake: int) -> None:
        """Deliver what the writer has done (on the loop); ``wake``: the pipe it woke the loop by."""
        with contextlib.suppress(BlockingIOError):
            os.read(wake, 4096)
        done = self._done
        while done:
            _deliver(*done.popleft())

    def _connect(self) -> sqlite3.Connection:
        """Open the file (on the writer thread), waiting up to ``busy_timeout`` to have it alone if it must.

        An upgrade needs the file to itself. Two new processes that open an old
        file at once would each wait for the other to close it, so each closes
        its own connection and tries again after a random pause, until one of
        them has upgraded it.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return self._connect_once()
            except _NotAlone as exc:
                if time.monotonic() > deadline:
                    raise self._not_alone(exc.version) from None
                time.sleep(random.uniform(0.01, 0.1))

    def _not_alone(self, version: int) -> BackendError:
        where, patience = str(self.path), self._busy_timeout
        if version < SCHEMA_VERSION:
            return BackendError(
                f"{where!r} has schema version {version} and this asyncflow upgrades it to "
                f"{SCHEMA_VERSION}, but another process kept it open for over {patience:g} s. An "
                f"older asyncflow would fail its runs on the upgraded file: stop every process "
                f"that uses it, then open it again. Nothing was changed"
            )
        return BackendError(
            f"{where!r} is upgraded to schema version {SCHEMA_VERSION}, but another process kept it "
            f"locked for over {patience:g} s, so it could not be put back in WAL mode; open it again"
        )

    def _connect_once(self) -> sqlite3.Connection:
        where = str(self.path)
        try:
            conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open SQLite database {where!r}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            # _create makes the schema in an empty file (and finds no tables), or finds the
            # tables another process made meanwhile.
            tables = _tables_in(conn) or _create(conn)
            if tables:  # (not just created here)
                self._check_schema(conn, tables, where)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA cache_size = -16384")
            # Checkpoint the WAL into the file every 8,000 pages (32 MiB), not every 1,000:
            # concurrent runs rewrite the same hot pages, and a checkpoint copies each once.
            conn.execute("PRAGMA wal_autocheckpoint = 8000")
            # Rows per statement: as many as this SQLite binds (999 parameters before 3.32).
            variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._max_rows = max(size for size in _MANY_SQL if size * _ROW_PARAMS <= variables)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _locked(exc):
                raise BackendError(
                    f"{where!r} stayed locked by another process for over {self._busy_timeout:g} s "
                    f"({exc}); nothing was changed"
                ) from exc
            raise BackendError(
                f"{where!r} is not a usable SQLite database ({exc}); it may be corrupt. Nothing was changed"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection, tables: set[str], where: str) -> None:
        """Refuse a file that is not asyncflow's, or newer; upgrade an older one."""
        if "asyncflow_meta" not in tables:
            raise BackendError(
                f"{where!r} is an SQLite database but not an asyncflow one (tables: {sorted(tables)}); "
                f"nothing was changed"
            )
        version = _version(conn)
        if version > SCHEMA_VERSION:
            raise BackendError(
                f"{where!r} was written by a newer asyncflow (schema version {version}; this "
                f"version reads up to {SCHEMA_VERSION}); upgrade asyncflow. Nothing was changed"
            )
        if version < 1:
            raise BackendError(f"{where!r} has no valid asyncflow schema version; nothing was changed")
        if version < SCHEMA_VERSION:
            _migrate(conn, version, where)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if _locked(exc):  # (leaving DELETE mode waits for no one, either); upgraded by now
                raise _NotAlone(SCHEMA_VERSION) from exc
            raise

    def _execute(self, conn: sqlite3.Connection, batch: list[_Job], checkpoints: list[_Batch]) -> None:
        if batch:
            writes = [job for job in batch if job.writes]
            reads = [job for job in batch if not job.writes]
        else:  # the common case: only checkpoints
            writes = reads = []
        if checkpoints and not writes:
            # One statement, its own transaction, so the writer wins the GIL back once
            # per batch (each SQLite call gives it up).
            _write_batches(conn, checkpoints, self.path, self._max_rows)
        elif writes or checkpoints:
            try:
                conn.execute("BEGIN IMMEDIATE")
                if checkpoints:
                    _write_batches(conn, checkpoints, self.path, self._max_rows)
                for job in writes:
                    _in_savepoint(conn, job)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                error = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                _fail_all(writes, checkpoints, _wrap(error, self.path))
        for job in reads:
            try:
                job.result = job.fn(conn)
            except Exception as exc:
                job.error = exc
        for job in batch:
            if job.error is not None:
                job.error = _wrap(job.error, self.path)

    async def _call(self, fn: Callable[[sqlite3.Connection], Any], *, writes: bool) -> Any:
        loop = self._loop
        if self._thread is None or loop is None:
            raise BackendError(
                f"the SQLite backend for {str(self.path)!r} is not open (use 'async with engine')"
            )
        future: asyncio.Future[Any] = loop.create_future()
        self._pending_jobs.append(_Job(fn, future, writes))
        self._hand_over(loop)
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send what waits to the writer when this pass of the loop ends (at once if nothing else is ready).

        Once every task that is ready now has run, the checkpoints and calls of all
        the runs that moved in this pass share one commit, and the writer, which
        needs the GIL to start and after every statement, finds the loop idle
        instead of fighting it for the GIL. (``_ready`` is asyncio's queue of ready
        callbacks; another loop waits for the end of the pass.)
        """
        if self._handing_over:
            return
        if not getattr(loop, "_ready", True):
            self._send_pending()
        else:
            self._handing_over = True
            loop.call_soon(self._send_pending)

    # ---- the API --------------------------------------------------------------------

    async def create_run(self, info: RunInfo, store: Sequence[StoreEntry]) -> tuple[RunInfo, bool]:
        """Insert the run and its initial store, unless its idempotency key is taken."""

        def create(conn: sqlite3.Connection) -> tuple[RunInfo, bool]:
            if info.idempotency_key is not None:
                row = conn.execute(
                    f"{_SELECT_RUN} WHERE idempotency_key = ?", (info.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return _row_to_info(row), False
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (info.run_id,)).fetchone() is not None:
                raise run_id_taken(info.run_id)
            values = [getattr(info, c) for c in _RUN_COLUMNS]
            values = [
                _json(v) if c in _JSON_COLUMNS else (v.value if isinstance(v, RunStatus) else v)
                for c, v in zip(_RUN_COLUMNS, values, strict=True)
            ]
            run_no = conn.execute(
                f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({', '.join('?' * len(_RUN_COLUMNS))})",
                values,
            ).lastrowid
            changes = encode_changes(store, ())
            if changes is not None:
                conn.execute(_CHECKPOINT_SQL, (run_no, 0, "", "start", changes, None, 0, None))
            return info, True

        result: tuple[RunInfo, bool] = await self._call(create, writes=True)
        return result

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run, or ``None``."""

        def get(conn: sqlite3.Connection) -> RunInfo | None:
            row = conn.execute(f"{_SELECT_RUN} WHERE run_id = ?", (run_id,)).fetchone()
            return _row_to_info(row) if row is not None else None

        result: RunInfo | None = await self._call(get, writes=False)
        return result

    async def list_runs(
        self, *, status: RunStatus | None, workflow_id: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        """Newest first, filtered, with keyset pagination."""
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(workflow_id)
        if cursor is not None:
            created_at, run_id = decode_cursor(cursor)
            where.append("(created_at < ? OR (created_at = ? AND run_id < ?))")
            params.extend([created_at, created_at, run_id])
        sql = f"{_SELECT_RUN} {'WHERE ' + ' AND '.join(where) if where else ''} "
        sql += "ORDER BY created_at DESC, run_id DESC LIMIT ?"
        params.append(limit + 1)

        def page(conn: sqlite3.Connection) -> RunPage:
            infos = [_row_to_info(row) for row in conn.execute(sql, params)]
            more = len(infos) > limit
            infos = infos[:limit]
            nxt = encode_cursor(infos[-1].created_at, infos[-1].run_id) if more and infos else None
            return RunPage(infos, nxt)

        result: RunPage = await self._call(page, writes=False)
        return result

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint in the next group commit."""
        if checkpoint.status is not None or checkpoint.kind == "sleep":
            # Rare (a sleep begins, a run wakes): it changes the run's row too.
            await self._call(_CheckpointJob(checkpoint), writes=True)
            return
        loop = self._loop
        if self._thread is None or loop is None:
            raise BackendError(
                f"the SQLite backend for {str(self.path)!r} is not open (use 'async with engine')"
            )
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((checkpoint, future))
        self._hand_over(loop)
        await future

    def _send_pending(self) -> None:
        self._handing_over = False
        jobs, self._pending_jobs = self._pending_jobs, []
        for job in jobs:
            self._jobs.put(job)
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            batch = _Batch(pending)
        except BaseException as exc:  # a row that cannot be encoded: fail each on its own
            for checkpoint, future in pending:
                self._jobs.put(_Job(_CheckpointJob(checkpoint), future, True))
            if not isinstance(exc, Exception):
                raise
            return
        self._jobs.put(batch)

    async def load(self, run_id: str) -> SavedRun | None:
        """The run, its store in insertion order and its checkpoints in order."""

        def load(conn: sqlite3.Connection) -> SavedRun | None:
            with _atomic(conn, "BEGIN"):  # the run and its checkpoints from one snapshot
                row = conn.execute(_SELECT_NUMBERED_RUN, (run_id,)).fetchone()
                if row is None:
                    return None
                run_no, *fields = row
                rows = conn.execute(
                    "SELECT seq, step_key, kind, changes, ops, attempts, at FROM checkpoints "
                    "WHERE run_no = ? ORDER BY seq",
                    (run_no,),
                ).fetchall()
            store: dict[str, StoreEntry] = {}
            checkpoints = []
            for seq, step_key, kind, changes, ops, attempts, at in rows:
                if changes is not None:
                    apply_changes(store, changes)
                if kind != "start":
                    checkpoints.append(
                        Checkpoint(run_id, "", step_key, kind, ops=ops, attempts=attempts, at=at, seq=seq)
                    )
            return SavedRun(_row_to_info(fields), list(store.values()), checkpoints)

        result: SavedRun | None = await self._call(load, writes=False)
        return result

    async def update_run(
        self,
        run_id: str,
        *,
        holder: str | None = None,
        expect: frozenset[RunStatus] | None = None,
        now: float,
        **fields: Any,
    ) -> bool:
        """Set fields when the conditions hold; whether the run was updated."""
        check_updatable(fields)
        sets = ["updated_at = ?"]
        params: list[Any] = [now]
        for name, value in fields.items():
            sets.append(f"{name} = ?")
            if name in _JSON_COLUMNS:
                value = _json(value)
            elif isinstance(value, RunStatus):
                value = value.value
            params.append(value)
        where = ["run_id = ?"]
        params.append(run_id)
        if holder is not None:
            where.append("owner = ?")
            params.append(holder)
        if expect is not None:
            where.append(f"status IN ({', '.join('?' * len(expect))})")
            params.extend(s.value for s in expect)
        sql = f"UPDATE runs SET {', '.join(sets)} WHERE {' AND '.join(where)}"

        def update(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(sql, params).rowcount)

        result: bool = await self._call(update, writes=True)
        return result

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
        """Take free runs in one statement, so two engines never take the same one."""
        only = "AND run_id = ?" if run_id is not None else ""
        params: list[Any] = [owner, lease_until, now, *_CLAIMABLE, now]
        if run_id is not None:
            params.append(run_id)
        skips = list(skip_versions)
        if skips:
            only += (
                f" AND (workflow_version IS NULL OR workflow_version NOT IN ({', '.join('?' * len(skips))}))"
            )
            params.extend(skips)
        params.append(limit)
        sql = (
            "UPDATE runs SET owner = ?, lease_until = ?, updated_at = ?, "
            "status = CASE status WHEN 'sleeping' THEN 'sleeping' ELSE 'running' END "
            f"WHERE run_id IN (SELECT run_id FROM runs WHERE status IN (?, ?, ?) "
            f"AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?) {only} "
            "ORDER BY created_at LIMIT ?) "
            f"RETURNING {', '.join(_RUN_COLUMNS)}"
        )

        def claim(conn: sqlite3.Connection) -> list[RunInfo]:
            return [_row_to_info(row) for row in conn.execute(sql, params).fetchall()]

        result: list[RunInfo] = await self._call(claim, writes=True)
        return result

    async def heartbeat(
        self, owner: str, run_ids: Sequence[str], *, now: float, lease_until: float
    ) -> set[str]:
        """Extend leases still held by ``owner``; the ids it lost."""
        ids = list(run_ids)
        if not ids:
            return set()

        def beat(conn: sqlite3.Connection) -> set[str]:
            lost = set()
            for run_id in ids:
                changed = conn.execute(
                    "UPDATE runs SET lease_until = ? WHERE run_id = ? AND owner = ?",
                    (lease_until, run_id, owner),
                ).rowcount
                if changed == 0:
                    lost.add(run_id)
            return lost

        result: set[str] = await self._call(beat, writes=True)
        return result

    async def delete_run(self, run_id: str) -> bool:
        """Delete the run, its store and its checkpoints."""

        def delete(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT run_no FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM checkpoints WHERE run_no = ?", row)
            conn.execute("DELETE FROM runs WHERE run_no = ?", row)
            return True

        result: bool = await self._call(delete, writes=True)
        return result

    async def purge(self, *, finished_before: float) -> int:
        """Delete finished runs last updated before the time."""
        finished = [s.value for s in RunStatus if s.finished]
        marks = ", ".join("?" * len(finished))

        def purge(conn: sqlite3.Connection) -> int:
            numbers = conn.execute(
                f"SELECT run_no FROM runs WHERE status IN ({marks}) AND updated_at < ?",
                (*finished, finished_before),
            ).fetchall()
            conn.executemany("DELETE FROM checkpoints WHERE run_no = ?", numbers)
            conn.executemany("DELETE FROM runs WHERE run_no = ?", numbers)
            return len(numbers)

        result: int = await self._call(purge, writes=True)
        return result

    async def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> None:
        """Add the events to the end of the run's log, in the next commit."""
        texts = [json.dumps(data) for data in events]
        if not texts:
            return

        def append(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT r.run_no, (SELECT MAX(seq) FROM run_events WHERE run_no = r.run_no) "
                "FROM runs AS r WHERE r.run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                return
            run_no, last = row[0], row[1] or 0
            conn.executemany(
                "INSERT INTO run_events (run_no, seq, data) VALUES (?, ?, ?)",
                [(run_no, last + i, text) for i, text in enumerate(texts, 1)],
            )

        await self._call(append, writes=True)

    async def read_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[tuple[int, dict[str, Any]]]:
        """The run's events numbered after ``after``, in order."""

        def read(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            return conn.execute(
                "SELECT e.seq, e.data FROM run_events AS e JOIN runs AS r ON r.run_no = e.run_no "
                "WHERE r.run_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
                (run_id, after, limit),
            ).fetchall()

        rows: list[tuple[int, str]] = await self._call(read, writes=False)
        return [(seq, json.loads(text)) for seq, text in rows]

    async def save_version(self, version: WorkflowVersion) -> None:
        """Keep ``version`` unless one with its key is kept."""
        params = (
            version.version,
            shape_key(version.version),
            version.workflow_id,
            json.dumps(version.shape),
            json.dumps(version.definition),
        )

        def save(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR IGNORE INTO workflow_versions VALUES (?, ?, ?, ?, ?)", params)

        await self._call(save, writes=True)

    async def load_versions(self, version: str) -> list[WorkflowVersion]:
        """The versions kept with the shape key of ``version``, ``version`` itself first."""

        def load(conn: sqlite3.Connection) -> list[WorkflowVersion]:
            rows = conn.execute(
                "SELECT version, workflow_id, shape, definition FROM workflow_versions "
                "WHERE shape_key = ? ORDER BY version != ?, version",
                (shape_key(version), version),
            ).fetchall()
            return [WorkflowVersion(row[0], row[1], json.loads(row[2]), json.loads(row[3])) for row in rows]

        result: list[WorkflowVersion] = await self._call(load, writes=False)
        return result

    async def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` (``"ok"`` for a sound file)."""

        def check(conn: sqlite3.Connection) -> str:
            return ", ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))

        result: str = await self._call(check, writes=False)
        return result


class _CheckpointJob:
    """A checkpoint waiting in the queue; written with the others of its batch.

    Called on its own (``job.fn(conn)``) it writes just this checkpoint: the
    fallback when a batch has a run that changed hands or a bad row.
    """

    __slots__ = ("checkpoint",)

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    def __call__(self, conn: sqlite3.Connection) -> None:
        if _write(conn, self.checkpoint) != 1:
            raise _lease_lost(self.checkpoint)


# Every write of a checkpoint checks, in the same statement, that its engine
# still owns the run: a run cancelled or taken over elsewhere takes no more.
_STATUS_SQL = (
    "UPDATE runs SET status = COALESCE(?, status), wake_at = COALESCE(?, wake_at) "
    "WHERE run_id = ? AND owner = ?"
)
_CHECKPOINT_SQL = (
    "INSERT INTO checkpoints (run_no, seq, step_key, kind, changes, ops, attempts, at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_ONE_SQL = (
    "INSERT INTO checkpoints (run_no, seq, step_key, kind, changes, ops, attempts, at) "
    "SELECT run_no, ?, ?, ?, ?, ?, ?, ? FROM runs WHERE run_id = ? AND owner = ?"
)
# The row of _ONE_SQL: 7 columns, then the run's id and its owner. (Plain ``?``: Python 3.12.0-3.12.3
# warn of numbered ``?1`` placeholders bound from a sequence, and a warning made an error fails the run.)
_ROW_PARAMS = 9


def _many_sql(rows: int) -> str:
    """One statement for ``rows`` checkpoints, each of them checked for its run's owner.

    One statement, not one per row, matters: the sqlite3 module gives up the
    GIL for every step of a statement and must win it back from the event
    loop after each one. The rows are bound as parameters (no text to parse
    per row). Batches are padded to a power of two with rows of NULLs, which
    the owner check leaves out, so a handful of statements is ever prepared.
    """
    values = ",".join(["(?,?,?,?,?,?,?,?,?)"] * rows)
    return (
        "INSERT INTO checkpoints (run_no, seq, step_key, kind, changes, ops, attempts, at) "
        "SELECT runs.run_no, column1, column2, column3, column4, column5, column6, column7 "
        f"FROM (VALUES {values}) AS v "
        "CROSS JOIN runs ON runs.run_id = v.column8 AND runs.owner = v.column9"
    )


_MANY_SQL = {size: _many_sql(size) for size in (2**k for k in range(1, 12))}  # 2 .. 2,048 rows


def _write(conn: sqlite3.Connection, cp: Checkpoint) -> int:
    """Write ``cp`` (and its status); 1 if its engine still owned the run, else 0 (nothing written)."""
    if cp.status is not None or cp.kind == "sleep":
        status = cp.status.value if cp.status is not None else None
        wake_at = cp.at if cp.kind == "sleep" else None
        conn.execute(_STATUS_SQL, (status, wake_at, cp.run_id, cp.owner))
    return conn.execute(_ONE_SQL, _row(cp)).rowcount


class _Batch:
    """The checkpoints of one pass of the event loop, with their rows made there.

    The writer thread only runs the statement: making rows is Python work,
    and Python work on the writer would wait for the event loop's GIL.
    """

    __slots__ = ("checkpoints", "errors", "futures", "params")

    def __init__(self, pending: list[tuple[Checkpoint, asyncio.Future[None]]]) -> None:
        self.checkpoints = [cp for cp, _ in pending]
        self.futures = [future for _, future in pending]
        params: list[Any] = []
        for cp in self.checkpoints:
            params += _row(cp)
        self.params = params  # the rows one after another, _ROW_PARAMS values each
        self.errors: list[BaseException | None] | None = None  # None: all written

    def fail(self, error: BaseException) -> None:
        self.errors = [error] * len(self.checkpoints)


def _row(cp: Checkpoint) -> tuple[Any, ...]:
    return (
        cp.seq,
        cp.step_key,
        cp.kind,
        encode_changes(cp.puts, cp.deletes),
        cp.ops,
        cp.attempts,
        cp.at,
        cp.run_id,
        cp.owner,
    )


def _insert_rows(conn: sqlite3.Connection, params: list[Any], max_rows: int) -> int:
    """Insert rows of ``params``; how many their engines still owned."""
    rows = len(params) // _ROW_PARAMS
    if rows == 1:
        return conn.execute(_ONE_SQL, params).rowcount
    written = 0
    for start in range(0, rows, max_rows):
        chunk = params[start * _ROW_PARAMS : (start + max_rows) * _ROW_PARAMS]
        count = len(chunk) // _ROW_PARAMS
        size = 1 << (count - 1).bit_length()  # the next power of two
        chunk += [None] * ((size - count) * _ROW_PARAMS)
        written += conn.execute(_MANY_SQL[size], chunk).rowcount
    return written


def _write_batches(conn: sqlite3.Connection, batches: list[_Batch], path: Path, max_rows: int) -> None:
    """Every checkpoint of ``batches`` in one statement; one at a time only to find which one failed."""
    params = batches[0].params if len(batches) == 1 else [p for batch in batches for p in batch.params]
    expected = len(params) // _ROW_PARAMS
    try:
        if expected > max_rows:  # several statements: all of them or none
            with _atomic(conn):
                written = _insert_rows(conn, params, max_rows)
        else:
            written = _insert_rows(conn, params, max_rows)
    except Exception:  # (sqlite3.Error, or a value the sqlite3 module cannot bind)
        written = -1  # nothing was written: the statement (or the statements) are atomic
    if written == expected:
        return
    # A run changed hands (its checkpoint was left out), or a row is bad (nothing went in).
    for batch in batches:
        errors: list[BaseException | None] = []
        for cp in batch.checkpoints:
            if written >= 0:
                # Still owned now, so owned when the statement ran: written. Not owned: it
                # may have gone in before the run changed hands, or not; either way this
                # engine stops the run, and the new owner goes on from what is recorded.
                errors.append(None if _still_owned(conn, cp) else _lease_lost(cp))
                continue
            try:
                _CheckpointJob(cp)(conn)
            except Exception as exc:
                errors.append(_wrap(exc, path))
            else:
                errors.append(None)
        batch.errors = errors


@contextlib.contextmanager
def _atomic(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """A transaction (begun with ``begin``), or a savepoint inside the one that is open."""
    nested = conn.in_transaction
    conn.execute("SAVEPOINT batch" if nested else begin)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO batch" if nested else "ROLLBACK")
        if nested:
            conn.execute("RELEASE batch")
        raise
    conn.execute("RELEASE batch" if nested else "COMMIT")


def _still_owned(conn: sqlite3.Connection, cp: Checkpoint) -> bool:
    row = conn.execute("SELECT 1 FROM runs WHERE run_id = ? AND owner = ?", (cp.run_id, cp.owner))
    return row.fetchone() is not None


def _lease_lost(cp: Checkpoint) -> LeaseLost:
    return LeaseLost(f"run {cp.run_id!r} is no longer owned by engine {cp.owner!r}")


def _in_savepoint(conn: sqlite3.Connection, job: _Job) -> None:
    conn.execute("SAVEPOINT job")
    try:
        job.result = job.fn(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        job.error = exc
    conn.execute("RELEASE job")


def _fail_all(jobs: list[_Job], checkpoints: list[_Batch], error: BaseException) -> None:
    for job in jobs:
        job.error = error
    for cps in checkpoints:
        cps.fail(error)


def _wrap(exc: BaseException, path: Path) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        return BackendError(f"SQLite error on {str(path)!r}: {exc}")
    return exc


def _deliver(batch: list[_Job], checkpoints: list[_Batch]) -> None:
    for cps in checkpoints:
        errors = cps.errors
        for i, future in enumerate(cps.futures):
            if future.done():
                continue
            error = errors[i] if errors is not None else None
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None)
    for job in batch:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


def _resolve_future(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail_future(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
