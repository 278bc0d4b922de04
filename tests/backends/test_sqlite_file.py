"""What only the SQLite backend has: a file shared with other processes, its schema, indexes, free pages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import durable_flows as flows
import pytest

import asyncflow as af
from asyncflow.backends import SQLiteBackend
from asyncflow.backends.base import SCHEMA_VERSION, encode_cursor
from asyncflow.backends.sqlite.backend import list_query

# A neighbour that took the write lock and was stopped before it committed.
HOLD_THE_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO asyncflow_meta (key, value) VALUES ('neighbour', 'uncommitted')")
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    flows.reset()


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process that holds the file's write lock, stopped (SIGSTOP) mid-transaction, until killed."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_WRITE_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "locked\n"
        os.kill(child.pid, signal.SIGSTOP)
        yield child
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


@contextlib.asynccontextmanager
async def engine_on(path: Path, *workflows: af.Workflow, **options: Any) -> AsyncIterator[af.Engine]:
    """An open engine on ``path`` (``busy_timeout`` among the options goes to the backend)."""
    backend = SQLiteBackend(path, busy_timeout=options.pop("busy_timeout", 10.0))
    engine = flows.make_engine(backend, *workflows, **options)  # type: ignore[arg-type]
    async with engine:
        yield engine


async def completed_run(path: Path) -> str:
    """Run QUICK to its end on ``path``; its id."""
    async with engine_on(path, flows.QUICK) as engine:
        handle = await engine.start(flows.QUICK)
        with anyio.fail_after(5):
            await handle.result()
    return handle.run_id


# ---- a neighbour that holds the write lock ----------------------------------------


async def test_an_engine_that_only_reads_opens_while_a_neighbour_holds_the_write_lock(db_path: Path) -> None:
    """An engine with recover=False opens, lists and reads runs while a stopped process holds the lock."""
    run_id = await completed_run(db_path)
    with write_lock_held(db_path):
        with anyio.fail_after(5):  # (busy_timeout is 30 s: nothing waits for the lock)
            async with engine_on(db_path, flows.QUICK, recover=False, busy_timeout=30.0) as engine:
                page = await engine.list_runs()
                result = await engine.wait(run_id)
    assert [info.run_id for info in page.runs] == [run_id]
    assert result.status is af.RunStatus.COMPLETED


async def test_a_held_write_lock_is_named_with_the_file_and_the_wait(db_path: Path) -> None:
    """An engine that must recover says another process holds the file's write lock and for how long."""
    await completed_run(db_path)
    with write_lock_held(db_path), pytest.raises(af.BackendError) as caught:
        async with engine_on(db_path, flows.QUICK, busy_timeout=0.3):
            pass
    message = str(caught.value)
    assert "another process holds the write lock" in message
    assert repr(str(db_path)) in message
    assert "waited 0.3 s" in message


async def test_writes_held_up_are_logged_once_and_again_when_they_go_through(
    db_path: Path, asyncflow_log: list[dict[str, Any]]
) -> None:
    """A running engine logs once that its writes are held up by a neighbour, and once when they go on."""
    await completed_run(db_path)
    async with engine_on(db_path, flows.QUICK, busy_timeout=30.0) as engine:
        handles: list[af.RunHandle] = []

        async def start() -> None:
            handles.append(await engine.start(flows.QUICK))

        async with anyio.create_task_group() as group:
            with write_lock_held(db_path):
                group.start_soon(start)
                await flows.eventually(lambda: any("held up" in r["message"] for r in asyncflow_log))
                assert not handles
            # (the neighbour is killed: its lock goes with it, and the start goes through)
        with anyio.fail_after(10):
            result = await handles[0].result()
    assert result.status is af.RunStatus.COMPLETED
    messages = [r["message"] for r in asyncflow_log if str(db_path) in r["message"]]
    assert len([m for m in messages if "held up" in m]) == 1
    assert len([m for m in messages if "go through again" in m]) == 1
    assert "write lock" in next(m for m in messages if "held up" in m)


# ---- schema 6: indexes and free pages ------------------------------------------------


def pragma(path: Path, statement: str) -> list[tuple[Any, ...]]:
    """Rows of ``statement`` from a plain connection to ``path``."""
    return flows.query(path, statement)


def as_schema_5(path: Path) -> None:
    """Rewrite the file as schema 5 had it: no list indexes, no auto_vacuum, no resume_key."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.executescript(
            """
            BEGIN;
            DROP INDEX runs_by_status_created;
            DROP INDEX runs_by_workflow_created;
            DROP INDEX runs_by_workflow_status_created;
            ALTER TABLE runs DROP COLUMN resume_key;
            UPDATE asyncflow_meta SET value = '5' WHERE key = 'schema_version';
            COMMIT;
            """
        )
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


LIST_INDEXES = {"runs_by_status_created", "runs_by_workflow_created", "runs_by_workflow_status_created"}


def indexes(path: Path) -> set[str]:
    """The names of the file's indexes on runs."""
    return {row[0] for row in pragma(path, "SELECT name FROM sqlite_master WHERE type = 'index'")}


async def test_a_new_file_has_the_list_indexes_and_incremental_vacuum(db_path: Path) -> None:
    """A file created now has the indexes of list_runs' filters and auto_vacuum=INCREMENTAL."""
    await completed_run(db_path)
    assert indexes(db_path) >= LIST_INDEXES
    assert pragma(db_path, "PRAGMA auto_vacuum") == [(2,)]


async def test_a_schema_5_file_is_upgraded_and_its_interrupted_run_recovers(db_path: Path) -> None:
    """A schema-5 file opens at the current schema, with list indexes and auto_vacuum; its run goes on."""
    url = f"sqlite:///{db_path}"
    run_id = await flows.interrupt(url, flows.BASIC)
    as_schema_5(db_path)
    assert pragma(db_path, "PRAGMA auto_vacuum") == [(0,)]
    assert not LIST_INDEXES & indexes(db_path)
    result = await flows.finish(url, run_id, flows.BASIC)
    assert result.status is af.RunStatus.COMPLETED
    assert {label: len(runs) for label, runs in flows.LEDGER.items()} == {
        "step-one": 1,
        "hang": 2,
        "after": 1,
        "s2": 1,
    }
    assert pragma(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert indexes(db_path) >= LIST_INDEXES
    assert pragma(db_path, "PRAGMA auto_vacuum") == [(2,)]
    assert pragma(db_path, "PRAGMA journal_mode") == [("wal",)]


# ---- schema 7: the event log, appended in the order written ----------------------------


def as_schema_6(path: Path) -> None:
    """Rewrite the file as schema 6 had it: events WITHOUT ROWID by (run, number), no resume_key."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(
            """
            BEGIN;
            DROP TRIGGER run_events_go_with_their_run;
            CREATE TABLE run_events_v6 (
                run_no INTEGER NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_no, seq)
            ) WITHOUT ROWID;
            INSERT INTO run_events_v6 SELECT run_no, seq, data FROM run_events;
            DROP TABLE run_events;
            ALTER TABLE run_events_v6 RENAME TO run_events;
            CREATE TRIGGER run_events_go_with_their_run AFTER DELETE ON runs
            BEGIN
                DELETE FROM run_events WHERE run_no = old.run_no;
            END;
            ALTER TABLE runs DROP COLUMN resume_key;
            UPDATE asyncflow_meta SET value = '6' WHERE key = 'schema_version';
            COMMIT;
            """
        )
    finally:
        conn.close()


def event_table_sql(path: Path) -> str:
    """The CREATE TABLE statement of the file's event log."""
    return str(pragma(path, "SELECT sql FROM sqlite_master WHERE name = 'run_events'")[0][0])


async def events_of(path: Path, run_id: str) -> list[tuple[int, dict[str, Any]]]:
    """Every event of the run's log, numbered, read through the backend."""
    async with SQLiteBackend(path) as backend:
        return await backend.read_events(run_id, limit=10_000)


async def test_a_new_file_appends_events_to_a_rowid_table_indexed_by_run(db_path: Path) -> None:
    """A file created now keeps the event log in a rowid table, with a unique index by run and number."""
    await completed_run(db_path)
    assert "WITHOUT ROWID" not in event_table_sql(db_path).upper()
    assert "run_events_by_run" in indexes(db_path)
    plan = pragma_params(
        db_path,
        "EXPLAIN QUERY PLAN SELECT data FROM run_events WHERE run_no = ? AND seq > ? ORDER BY seq",
        [1, 0],
    )
    assert "USING INDEX run_events_by_run" in " / ".join(str(row[3]) for row in plan)


async def test_a_schema_6_file_is_upgraded_and_keeps_its_events_in_order(db_path: Path) -> None:
    """A schema-6 file opens at schema 7 with every event of its runs kept, numbered as before."""
    url = f"sqlite:///{db_path}"
    done = await completed_run(db_path)
    interrupted = await flows.interrupt(url, flows.BASIC)
    before = {run_id: await events_of(db_path, run_id) for run_id in (done, interrupted)}
    assert before[done]
    assert before[interrupted]
    as_schema_6(db_path)
    assert "WITHOUT ROWID" in event_table_sql(db_path).upper()
    result = await flows.finish(url, interrupted, flows.BASIC)
    assert result.status is af.RunStatus.COMPLETED
    assert pragma(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert "WITHOUT ROWID" not in event_table_sql(db_path).upper()
    assert await events_of(db_path, done) == before[done]
    after = await events_of(db_path, interrupted)
    assert after[: len(before[interrupted])] == before[interrupted]
    assert [number for number, _ in after] == list(range(1, len(after) + 1))
    assert after[-1][1]["kind"] == "run_finished"


async def test_events_of_a_purged_run_go_with_it_after_the_upgrade(db_path: Path) -> None:
    """On a file upgraded from schema 6, deleting a run still deletes its events (the trigger is back)."""
    run_id = await completed_run(db_path)
    as_schema_6(db_path)
    async with engine_on(db_path, flows.QUICK) as engine:
        assert await engine.delete_run(run_id)
    assert pragma(db_path, "SELECT COUNT(*) FROM run_events") == [(0,)]


# ---- schema 8: the key of a run's last resume, on its row -----------------------------


def as_schema_7(path: Path) -> None:
    """Rewrite the file as schema 7 had it: runs without the key of their last resume."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(
            """
            BEGIN;
            ALTER TABLE runs DROP COLUMN resume_key;
            UPDATE asyncflow_meta SET value = '7' WHERE key = 'schema_version';
            COMMIT;
            """
        )
    finally:
        conn.close()


async def test_a_schema_7_file_is_upgraded_and_keys_resumed_with_before_are_still_repeats(
    db_path: Path,
) -> None:
    """A schema-7 file gets resume_key; a key used before the upgrade (only in the log) is still a repeat."""
    async with engine_on(db_path, flows.APPROVAL) as engine:
        with anyio.fail_after(10):
            earlier = await engine.start(flows.APPROVAL)
            await earlier.result()
            await (await engine.resume(earlier.run_id, {"ok": 1}, key="k1")).result()
            waiting = await engine.start(flows.APPROVAL)
            assert (await waiting.result()).status is af.RunStatus.SUSPENDED
    as_schema_7(db_path)
    async with engine_on(db_path, flows.APPROVAL) as engine:
        with anyio.fail_after(10):
            repeat = await engine.resume(earlier.run_id, {"ok": 2}, key="k1")
            resumed = await engine.resume(waiting.run_id, {"ok": 3}, key="k2")
            assert (await resumed.result()).status is af.RunStatus.COMPLETED
    assert (repeat.created, resumed.created) == (False, True)
    assert pragma(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert pragma(db_path, "SELECT resume_key FROM runs ORDER BY run_no") == [(None,), ("k2",)]


@pytest.mark.parametrize("status", [None, af.RunStatus.COMPLETED])
@pytest.mark.parametrize("workflow_id", [None, "w"])
@pytest.mark.parametrize("cursor", [None, encode_cursor(1.0, "r")])
async def test_each_list_filter_reads_an_index_in_listing_order(
    db_path: Path, status: af.RunStatus | None, workflow_id: str | None, cursor: str | None
) -> None:
    """Every filter of list_runs, with a cursor or without, is served by an index without sorting."""
    await completed_run(db_path)
    sql, params = list_query(status, workflow_id, cursor, 51)
    plan = " / ".join(str(row[3]) for row in pragma_params(db_path, f"EXPLAIN QUERY PLAN {sql}", params))
    assert "USING INDEX runs_by" in plan
    assert "TEMP B-TREE" not in plan


def pragma_params(path: Path, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Rows of ``statement`` with ``params`` from a plain connection to ``path``."""
    return flows.query(path, statement, *params)


async def test_the_file_shrinks_after_a_purge(db_path: Path) -> None:
    """Purging runs gives their pages back: the file shrinks to a fraction of its size."""
    async with engine_on(db_path, flows.QUICK) as engine:
        handles = [await engine.start(flows.QUICK, store={"blob": "x" * 20_000}) for _ in range(100)]
        with anyio.fail_after(20):
            for handle in handles:
                await handle.result()
    full = (await anyio.Path(db_path).stat()).st_size
    assert full > 2_000_000
    async with engine_on(db_path, flows.QUICK) as engine:
        assert await engine.purge(older_than=timedelta(0)) == 100
    assert (await anyio.Path(db_path).stat()).st_size < full / 5
    assert pragma(db_path, "PRAGMA freelist_count")[0][0] < 256


async def test_the_write_ahead_log_is_cut_back_after_a_big_write(db_path: Path) -> None:
    """A write bigger than the WAL's limit leaves no bigger WAL once it is copied in and writes go on."""
    wal = db_path.with_name(db_path.name + "-wal")
    limit = 8000 * 4096  # (the pages a checkpoint lets the WAL reach)
    async with engine_on(db_path, flows.QUICK) as engine:
        with anyio.fail_after(30):
            # One commit of more than the limit: the WAL holds it all until it is copied in.
            await (await engine.start(flows.QUICK, store={"blob": "x" * (limit + 4 * 2**20)})).result()
            for _ in range(3):  # (the first write after the WAL was copied in starts it over)
                await (await engine.start(flows.QUICK)).result()
        assert (await anyio.Path(wal).stat()).st_size <= limit


def test_a_close_cancelled_before_the_writer_stops_leaves_its_thread_quiet(tmp_path: Path) -> None:
    """A backend whose aclose is cancelled, its loop then closed, ends its writer thread without an error."""

    async def main() -> None:
        backend = SQLiteBackend(tmp_path / "runs.db")
        await backend.__aenter__()
        closing = asyncio.ensure_future(backend.aclose())
        await asyncio.sleep(0)  # the stop is queued; the thread answers after the loop has closed
        closing.cancel()

    asyncio.run(main())
    for thread in threading.enumerate():
        if thread.name.startswith("asyncflow-sqlite"):
            thread.join(10)  # an exception in it would fail this test (warnings are errors)
