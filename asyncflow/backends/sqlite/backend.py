"""The methods of the SQLite backend: one SQL statement (or a few) per call, run by the writer."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from loguru import logger

from ..._core.records import STEP_COLUMNS, RunStatus, StepRows, step_dicts
from ..base import (
    CHECKPOINT_ROW,
    Backend,
    Checkpoint,
    RunInfo,
    RunPage,
    SavedRun,
    StoreEntry,
    WorkflowVersion,
    check_updatable,
    decode_cursor,
    encode_changes,
    encode_cursor,
    replay,
    run_id_taken,
    shape_key,
)
from .liveness import Liveness
from .schema import atomic
from .writer import CHECKPOINT_SQL, Writer

_RUN_COLUMNS = tuple(field.name for field in attrs.fields(RunInfo))
_JSON_COLUMNS = frozenset({"suspend_data", "resume_data", "steps"})
_SELECT_RUN = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
_SELECT_NUMBERED_RUN = f"SELECT run_no, {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_id = ?"
_CLAIMABLE = ("pending", "running", "sleeping")
_PURGE_CHUNK = 1000


# The events of runs, a JSON object of run id -> its events (a JSON array), one row per run
# numbered by its last event, on from the run's last row; a run that is gone joins nothing (its
# events are dropped with it). One text for every run: one json.dumps on the loop, and SQLite
# splits it without the GIL.
_APPEND_EVENTS_SQL = (
    "INSERT INTO run_events (run_no, seq, data) "
    "SELECT r.run_no, COALESCE((SELECT MAX(e.seq) FROM run_events AS e WHERE e.run_no = r.run_no), 0) "
    "+ json_array_length(j.value), j.value FROM json_each(?) AS j JOIN runs AS r ON r.run_id = j.key"
)
# The numbers the rows of that statement were given (found by their rowids), as one JSON object.
_NUMBERED_SQL = (
    "SELECT json_group_object(r.run_id, e.seq) FROM run_events AS e JOIN runs AS r ON r.run_no = e.run_no "
    "WHERE e.event_no BETWEEN ? AND ?"
)
# The engines other than the claimer that hold runs on a live lease (their liveness is checked).
_HELD_BY_OTHERS = (
    "SELECT DISTINCT owner FROM runs WHERE status IN ('running', 'sleeping') "
    "AND lease_until >= ? AND owner IS NOT NULL AND owner != ?"
)  # runs deleted per transaction by purge

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


def list_query(
    status: RunStatus | None, workflow_id: str | None, cursor: str | None, limit: int
) -> tuple[str, list[Any]]:
    """The statement of one page of ``list_runs``, and its parameters (``benchmarks/scale.py`` shows plans).

    Each filter has an index in the listing's order (schema 6), so a page reads
    its rows and no others, however many runs the file holds.
    """
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
        # (A row value, which SQLite reads as a range of the index in the listing's order.)
        where.append("(created_at, run_id) < (?, ?)")
        params.extend([created_at, run_id])
    sql = f"{_SELECT_RUN} {'WHERE ' + ' AND '.join(where) if where else ''} "
    sql += "ORDER BY created_at DESC, run_id DESC LIMIT ?"
    params.append(limit)
    return sql, params


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
        self._writer = Writer(self.path, busy_timeout)
        self._liveness = Liveness(self.path)

    async def open(self) -> None:
        """Start the writer thread, open the file, create or check the schema."""
        await self._writer.open()

    async def aclose(self) -> None:
        """Finish the queued writes, let the engines' locks go, close the connection and stop the thread."""
        try:
            if self._liveness.mine:
                with contextlib.suppress(Exception):
                    await self._writer.submit(lambda conn: self._liveness.release(), writes=False)
        finally:
            await self._writer.aclose()

    async def create_run(self, info: RunInfo, store: Sequence[StoreEntry]) -> tuple[RunInfo, bool]:
        """Insert the run and its initial store, unless its idempotency key is taken."""

        def create(conn: sqlite3.Connection) -> tuple[RunInfo, bool]:
            if info.owner is not None:
                self._liveness.hold(info.owner)
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
                conn.execute(CHECKPOINT_SQL, (run_no, 0, "", "start", changes, None, 0, None))
            return info, True

        result: tuple[RunInfo, bool] = await self._writer.submit(create, writes=True)
        return result

    async def get_run(self, run_id: str) -> RunInfo | None:
        """The run, or ``None``."""

        def get(conn: sqlite3.Connection) -> RunInfo | None:
            row = conn.execute(f"{_SELECT_RUN} WHERE run_id = ?", (run_id,)).fetchone()
            return _row_to_info(row) if row is not None else None

        result: RunInfo | None = await self._writer.submit(get, writes=False)
        return result

    async def list_runs(
        self, *, status: RunStatus | None, workflow_id: str | None, limit: int, cursor: str | None
    ) -> RunPage:
        """Newest first, filtered, with keyset pagination."""
        sql, params = list_query(status, workflow_id, cursor, limit + 1)

        def page(conn: sqlite3.Connection) -> RunPage:
            infos = [_row_to_info(row) for row in conn.execute(sql, params)]
            more = len(infos) > limit
            infos = infos[:limit]
            nxt = encode_cursor(infos[-1].created_at, infos[-1].run_id) if more and infos else None
            return RunPage(infos, nxt)

        result: RunPage = await self._writer.submit(page, writes=False)
        return result

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint in the next group commit."""
        await self._writer.submit_checkpoint(checkpoint)

    async def load(self, run_id: str) -> SavedRun | None:
        """The run, its store in insertion order and its checkpoints in order."""

        def load(conn: sqlite3.Connection) -> SavedRun | None:
            with atomic(conn, "BEGIN"):  # the run and its checkpoints from one snapshot
                row = conn.execute(_SELECT_NUMBERED_RUN, (run_id,)).fetchone()
                if row is None:
                    return None
                run_no, *fields = row
                rows = conn.execute(
                    f"SELECT {CHECKPOINT_ROW} FROM checkpoints WHERE run_no = ? ORDER BY seq", (run_no,)
                ).fetchall()
            store, checkpoints = replay(run_id, rows)
            return SavedRun(_row_to_info(fields), store, checkpoints)

        result: SavedRun | None = await self._writer.submit(load, writes=False)
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

        result: bool = await self._writer.submit(update, writes=True)
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
        """Take free runs in one statement, so two engines never take the same one.

        Free: nobody holds them, their lease ran out, or their owner is provably
        dead (see :mod:`.liveness`): the runs of an engine killed on this host
        are taken over at once, not when their lease runs out.
        """
        only = "AND run_id = ?" if run_id is not None else ""
        tail: list[Any] = []
        if run_id is not None:
            tail.append(run_id)
        skips = list(skip_versions)
        if skips:
            only += (
                f" AND (workflow_version IS NULL OR workflow_version NOT IN ({', '.join('?' * len(skips))}))"
            )
            tail.extend(skips)
        tail.append(limit)
        liveness = self._liveness

        def claim(conn: sqlite3.Connection) -> list[RunInfo]:
            liveness.hold(owner)
            others = conn.execute(_HELD_BY_OTHERS, (now, owner)).fetchall()
            dead = [other for (other,) in others if liveness.dead(other)]
            of_dead = f" OR owner IN ({', '.join('?' * len(dead))})" if dead else ""
            sql = (
                "UPDATE runs SET owner = ?, lease_until = ?, updated_at = ?, "
                "status = CASE status WHEN 'sleeping' THEN 'sleeping' ELSE 'running' END "
                f"WHERE run_id IN (SELECT run_id FROM runs WHERE status IN (?, ?, ?) "
                f"AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?{of_dead}) {only} "
                "ORDER BY created_at LIMIT ?) "
                f"RETURNING {', '.join(_RUN_COLUMNS)}"
            )
            params = [owner, lease_until, now, *_CLAIMABLE, now, *dead, *tail]
            claimed = [_row_to_info(row) for row in conn.execute(sql, params).fetchall()]
            for other in dead:
                logger.info(
                    "engine {!r} of {!r} is gone (its lock is free, or its process): its runs are taken "
                    "over at once, without waiting for their leases",
                    other,
                    str(self.path),
                )
                if conn.execute("SELECT 1 FROM runs WHERE owner = ? LIMIT 1", (other,)).fetchone() is None:
                    liveness.forget(other)
            return claimed

        result: list[RunInfo] = await self._writer.submit(claim, writes=True)
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

        result: set[str] = await self._writer.submit(beat, writes=True)
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

        result: bool = await self._writer.submit(delete, writes=True)
        return result

    async def purge(self, *, finished_before: float) -> int:
        """Delete finished runs last updated before the time; give the space back (:meth:`reclaim_space`).

        Runs go a thousand at a time, each thousand in its own transaction, so
        the engine's other writes go on in between.
        """
        finished = [s.value for s in RunStatus if s.finished]
        marks = ", ".join("?" * len(finished))

        def purge(conn: sqlite3.Connection) -> int:
            # A few statements, each for the whole chunk (a statement per run would wait for the
            # loop's GIL after each); the trigger deletes their events.
            with atomic(conn):
                numbers = conn.execute(
                    "SELECT json_group_array(run_no) FROM (SELECT run_no FROM runs "
                    f"WHERE status IN ({marks}) AND updated_at < ? LIMIT ?)",
                    (*finished, finished_before, _PURGE_CHUNK),
                ).fetchone()[0]
                conn.execute(
                    "DELETE FROM checkpoints WHERE run_no IN (SELECT value FROM json_each(?))", (numbers,)
                )
                deleted = conn.execute(
                    "DELETE FROM runs WHERE run_no IN (SELECT value FROM json_each(?))", (numbers,)
                ).rowcount
            return int(deleted)

        total = 0
        while True:
            deleted: int = await self._writer.submit(purge, writes=True, alone=True)
            total += deleted
            if deleted < _PURGE_CHUNK:
                break
        if total:
            await self.reclaim_space()
        return total

    async def reclaim_space(self, *, step: int = 256) -> int:
        """Give the pages that deleted runs left free back to the file system; how many.

        ``step`` pages (of 4 KiB) at a time, each step a short transaction of
        its own, so writes of running runs go on in between. :meth:`purge`
        (and so ``engine.purge`` and an engine's ``retention``) calls it. The
        file shrinks when SQLite next copies its write-ahead log into it
        (every 32 MiB of writes, and when the last connection closes).
        """
        if step < 1:
            raise ValueError(f"step must be at least 1 page, got {step!r}")

        def give_back(conn: sqlite3.Connection) -> int:
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            pages = min(free, step)
            if pages:
                # incremental_vacuum gives back one page per step of its statement; executescript
                # steps it to the end in one call (execute would step it once: one page), its own
                # transaction (this job runs outside any: see Writer.submit).
                conn.executescript(f"PRAGMA incremental_vacuum({pages})")
            return free - int(conn.execute("PRAGMA freelist_count").fetchone()[0])

        total = 0
        while True:
            freed: int = await self._writer.submit(give_back, writes=True, alone=True)
            total += freed
            if freed < step:
                return total

    async def append_events(self, run_id: str, events: Sequence[dict[str, Any]]) -> int | None:
        """Add the events to the end of the run's log, in the next commit."""
        if not events:
            return None

        numbered = await self.append_events_of_runs({run_id: events})
        return (numbered or {}).get(run_id)

    async def append_events_of_runs(self, events: Mapping[str, Sequence[dict[str, Any]]]) -> dict[str, int]:
        """Add the events of several runs to their logs, by one statement for all of them.

        One row per run and call: its events as one JSON array, keyed by the number of
        the last (a busy engine writes a few events per run each time, and a row costs
        more than its bytes). The writer thread runs that statement, then one that reads
        the numbers it gave back as one JSON text (the rows it added are the last rowids:
        no other writer can come between). Next to checkpoints alone, these go after the
        checkpoints' results are handed back, outside a transaction (see
        ``Writer.submit``): every statement on the writer waits for the loop's GIL.
        """
        batches = {run_id: batch for run_id, batch in events.items() if batch}
        if not batches:
            return {}
        text = json.dumps(batches, separators=(",", ":"))

        def append(conn: sqlite3.Connection) -> str | None:
            cursor = conn.execute(_APPEND_EVENTS_SQL, (text,))  # one statement: atomic by itself
            added, last = cursor.rowcount, cursor.lastrowid
            if added <= 0 or last is None:  # (every run gone)
                return None
            return str(conn.execute(_NUMBERED_SQL, (last - added + 1, last)).fetchone()[0])

        numbers: str | None = await self._writer.submit(append, writes=True, alone=True)
        return {} if numbers is None else {run_id: int(n) for run_id, n in json.loads(numbers).items()}

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

        rows: list[tuple[int, str]] = await self._writer.submit(read, writes=False)
        # Each row holds the events numbered up to its seq: a JSON array (one event: an object).
        events: list[tuple[int, dict[str, Any]]] = []
        for last, text in rows:
            data = json.loads(text)
            batch = data if isinstance(data, list) else [data]
            first = last - len(batch) + 1
            events.extend((first + i, item) for i, item in enumerate(batch) if first + i > after)
            if len(events) >= limit:
                break
        return events[:limit]

    async def save_version(self, version: WorkflowVersion) -> None:
        """Keep ``version`` unless one with its key is kept."""
        params = (
            version.version,
            shape_key(version.version),
            version.workflow_id,
            json.dumps(version.shape),
            json.dumps(version.definition),
        )

        def kept(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("SELECT 1 FROM workflow_versions WHERE version = ?", params[:1]).fetchone()
                is not None
            )

        def save(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR IGNORE INTO workflow_versions VALUES (?, ?, ?, ?, ?)", params)

        # Read first: an engine that opens with its versions kept already needs no write lock.
        if not await self._writer.submit(kept, writes=False):
            await self._writer.submit(save, writes=True)

    async def load_versions(self, version: str) -> list[WorkflowVersion]:
        """The versions kept with the shape key of ``version``, ``version`` itself first."""

        def load(conn: sqlite3.Connection) -> list[WorkflowVersion]:
            rows = conn.execute(
                "SELECT version, workflow_id, shape, definition FROM workflow_versions "
                "WHERE shape_key = ? ORDER BY version != ?, version",
                (shape_key(version), version),
            ).fetchall()
            return [WorkflowVersion(row[0], row[1], json.loads(row[2]), json.loads(row[3])) for row in rows]

        result: list[WorkflowVersion] = await self._writer.submit(load, writes=False)
        return result

    async def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` (``"ok"`` for a sound file)."""

        def check(conn: sqlite3.Connection) -> str:
            return ", ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))

        result: str = await self._writer.submit(check, writes=False)
        return result
