"""What only the SQLite backend has: a file shared with other processes, its schema, indexes, free pages."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
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
    """Rewrite the file as schema 5 had it: no indexes of list_runs' filters, no auto_vacuum."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.executescript(
            """
            BEGIN;
            DROP INDEX runs_by_status_created;
            DROP INDEX runs_by_workflow_created;
            DROP INDEX runs_by_workflow_status_created;
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
