"""The schema of an SQLite file of runs: creating it, checking it, upgrading an older one.

Every upgrade is numbered (:data:`~asyncflow.backends.base.SCHEMA_VERSION`)
and runs in one transaction, with the file to itself.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..._core.errors import BackendError
from ..base import SCHEMA_VERSION


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
            workflow_version TEXT,
            resume_key TEXT
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
# Schema 6: an index for each filter of list_runs, in the order it lists runs (newest first), so
# that a filtered page reads its rows and no others, however many runs the file holds.
_LIST_INDEXES = [
    "CREATE INDEX IF NOT EXISTS runs_by_status_created ON runs (status, created_at DESC, run_id DESC)",
    "CREATE INDEX IF NOT EXISTS runs_by_workflow_created ON runs (workflow_id, created_at DESC, run_id DESC)",
    "CREATE INDEX IF NOT EXISTS runs_by_workflow_status_created "
    "ON runs (workflow_id, status, created_at DESC, run_id DESC)",
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
# Each run's events (engine.watch), numbered from 1; they go with their run. A row holds the
# events an engine wrote at once, as a JSON array, and seq is the number of its last.
# Schema 7: rows go at the end of their table in the order they are written (a rowid table), found
# by a small index of two integers per row. Keyed by (run_no, seq) without a rowid (schema 5 and 6),
# the rows of the 200 runs of one write went to 200 places among rows of hundreds of bytes, and
# each write rewrote a leaf page per run: about 16 µs a row against under 7.
_EVENTS_TABLE = """CREATE TABLE {name} (
    event_no INTEGER PRIMARY KEY,
    run_no INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL
)"""
_EVENTS_TRIGGER = """CREATE TRIGGER run_events_go_with_their_run AFTER DELETE ON runs
BEGIN
    DELETE FROM run_events WHERE run_no = old.run_no;
END"""
_EVENTS_TABLES = [
    _EVENTS_TABLE.format(name="run_events"),
    "CREATE UNIQUE INDEX run_events_by_run ON run_events (run_no, seq)",
    _EVENTS_TRIGGER,
]
# Schema 5's table, as the upgrade from 4 makes it (the upgrade to 7 rebuilds it). ("IF NOT EXISTS":
# the upgrade from schema 3 or 4 adds them to a file that may have had them, made by a test.)
_EVENTS_TABLES_5 = [
    """CREATE TABLE IF NOT EXISTS run_events (
        run_no INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_no, seq)
    ) WITHOUT ROWID""",
    _EVENTS_TRIGGER.replace("CREATE TRIGGER", "CREATE TRIGGER IF NOT EXISTS"),
]
_SCHEMA = [
    "CREATE TABLE asyncflow_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    *_tables("runs", "checkpoints"),
    *_INDEXES,
    *_VERSIONS_TABLES,
    *_EVENTS_TABLES,
    *_LIST_INDEXES,
]


def _tables_in(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _create(conn: sqlite3.Connection) -> set[str]:
    """Create the schema in an empty file; the tables found instead, if another process was quicker."""
    # Pages freed by a purge go back to the file system in small steps (see reclaim_space); this
    # is fixed when the first table is made (an existing file changes it with a VACUUM, schema 6).
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    with atomic(conn):
        tables = _tables_in(conn)
        if not tables:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO asyncflow_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
    return tables


def locked(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (another connection holds the lock it needs)."""
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
    caller closes, waits and tries again). The upgrade holds an exclusive lock,
    so an older asyncflow opening the file meanwhile waits, then finds the new
    version and refuses it. Each version's step is in :data:`_UPGRADES`; every
    new version keeps an older asyncflow from misreading the file.
    """
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.OperationalError as exc:
        if locked(exc):
            raise _NotAlone(version) from exc
        raise
    try:
        if version < 6 and conn.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
            # (A VACUUM cannot run inside a transaction: before the upgrade's. It rewrites the
            # whole file once, so that later purges can give its space back.)
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            try:
                conn.execute("VACUUM")
            except sqlite3.OperationalError as exc:
                if locked(exc):
                    raise _NotAlone(version) from exc
                raise
        _upgrade(conn, version, where)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA journal_mode = WAL")  # as it was
        raise


_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def _upgrade(conn: sqlite3.Connection, version: int, where: str) -> None:
    with atomic(conn, "BEGIN EXCLUSIVE"):
        found = _version(conn)
        if found > SCHEMA_VERSION:
            raise BackendError(
                f"{where!r} was upgraded by a newer asyncflow (schema version {found}) while this one "
                f"opened it; upgrade asyncflow. Nothing was changed"
            )
        if found != version:  # (another process upgraded it meanwhile; it is at SCHEMA_VERSION now)
            return
        for target in range(version + 1, SCHEMA_VERSION + 1):
            _UPGRADES[target](conn)
        conn.execute(
            "UPDATE asyncflow_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )


def _to_2(conn: sqlite3.Connection) -> None:
    """Schema 2 changed no table: it stores a run's steps as rows of columns (dicts per step still read)."""


def _to_3(conn: sqlite3.Connection) -> None:
    """Rebuild both tables: runs get a number (``run_no``, in the order they were created).

    Checkpoints refer to it; checkpoints of runs that are gone are dropped.
    (The tables are made as they are now: later steps add only what is missing.)
    """
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


def _to_4(conn: sqlite3.Connection) -> None:
    """The column of a run's workflow version (runs of before have none) and the table of versions."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    if "workflow_version" not in columns:
        conn.execute("ALTER TABLE runs ADD COLUMN workflow_version TEXT")
    for statement in _VERSIONS_TABLES:
        conn.execute(statement)


def _to_5(conn: sqlite3.Connection) -> None:
    """The table of runs' events (runs of before start with none)."""
    for statement in _EVENTS_TABLES_5:
        conn.execute(statement)


def _to_6(conn: sqlite3.Connection) -> None:
    """The indexes of list_runs' filters (and, before the upgrade, auto_vacuum: see _migrate)."""
    for statement in _LIST_INDEXES:
        conn.execute(statement)


def _to_7(conn: sqlite3.Connection) -> None:
    """Rebuild the table of runs' events as a rowid table with an index by run (events kept, in order)."""
    conn.execute("DROP TRIGGER IF EXISTS run_events_go_with_their_run")
    conn.execute(_EVENTS_TABLE.format(name="run_events_v7"))
    conn.execute(
        "INSERT INTO run_events_v7 (run_no, seq, data) "
        "SELECT run_no, seq, data FROM run_events ORDER BY run_no, seq"
    )
    conn.execute("DROP TABLE run_events")
    conn.execute("ALTER TABLE run_events_v7 RENAME TO run_events")
    for statement in _EVENTS_TABLES[1:]:
        conn.execute(statement)


def _to_8(conn: sqlite3.Connection) -> None:
    """The column of the key a run was last resumed with (runs of before have none: their log has it)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    if "resume_key" not in columns:  # (a file upgraded from schema 2 or before has it: see _to_3)
        conn.execute("ALTER TABLE runs ADD COLUMN resume_key TEXT")


#: version -> the step that brings a file of the version before to it, in the upgrade's transaction
_UPGRADES: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _to_2,
    3: _to_3,
    4: _to_4,
    5: _to_5,
    6: _to_6,
    7: _to_7,
    8: _to_8,
}


@contextlib.contextmanager
def atomic(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
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


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open the file (on the writer thread), waiting up to ``busy_timeout`` to have it alone if it must.

    An upgrade needs the file to itself. Two new processes that open an old
    file at once would each wait for the other to close it, so each closes
    its own connection and tries again after a random pause, until one of
    them has upgraded it.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return _connect_once(path, busy_timeout)
        except _NotAlone as exc:
            if time.monotonic() > deadline:
                raise _not_alone(path, busy_timeout, exc.version) from None
            time.sleep(random.uniform(0.01, 0.1))


def _not_alone(path: Path, busy_timeout: float, version: int) -> BackendError:
    where, patience = str(path), busy_timeout
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


#: Pages (of 4 KiB) the write-ahead log holds before it is copied into the file (32 MiB).
WAL_PAGES = 8000


def _connect_once(path: Path, busy_timeout: float) -> sqlite3.Connection:
    where = str(path)
    try:
        conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise BackendError(f"cannot open SQLite database {where!r}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # _create makes the schema in an empty file (and finds no tables), or finds the
        # tables another process made meanwhile.
        tables = _tables_in(conn) or _create(conn)
        if tables:  # (not just created here)
            _check_schema(conn, tables, where)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -16384")
        # Checkpoint the WAL into the file every 8,000 pages (32 MiB), not every 1,000:
        # concurrent runs rewrite the same hot pages, and a checkpoint copies each once.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
        # SQLite keeps the WAL file at the largest size it ever reached (a big purge, say) unless
        # told otherwise: once a checkpoint has copied it all, the next write that starts it over
        # cuts it back to this (the size the checkpoint lets it reach anyway).
        conn.execute(f"PRAGMA journal_size_limit = {WAL_PAGES * 4096}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if locked(exc):
            raise BackendError(
                f"another process holds the write lock of {where!r}: this one waited {busy_timeout:g} s "
                f"for it to open the file ({exc}); nothing was changed"
            ) from exc
        raise BackendError(
            f"{where!r} is not a usable SQLite database ({exc}); it may be corrupt. Nothing was changed"
        ) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _check_schema(conn: sqlite3.Connection, tables: set[str], where: str) -> None:
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
        if locked(exc):  # (leaving DELETE mode waits for no one, either); upgraded by now
            raise _NotAlone(SCHEMA_VERSION) from exc
        raise
