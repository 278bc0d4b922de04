"""On SQLite, runs of an engine killed on this host go on at once in the next one, not after their lease."""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

import asyncflow as af
from asyncflow.backends import SQLiteBackend
from backends import killed_flows
from backends.killed_flows import CHILD, CONTINUED, LEASE, STARTED_FILE, WORKFLOW

RUNS = 3


async def started_runs(path: Path, count: int, *, within: float = 30.0) -> list[str]:
    """The run ids the child noted in ``path``, once there are ``count`` (fail after ``within`` s)."""
    with anyio.fail_after(within):
        while True:
            file = anyio.Path(path)
            if await file.exists():
                ids = (await file.read_text()).split()
                if len(ids) >= count:
                    return ids
            await anyio.sleep(0.02)


async def engine_process(db_path: Path, started: Path) -> Process:
    """A child process running an engine on ``db_path`` with RUNS runs hanging in it."""
    return await anyio.open_process(
        [sys.executable, "-c", CHILD, str(db_path), str(RUNS)],
        env={**os.environ, STARTED_FILE: str(started)},
    )


@pytest.fixture
async def child(db_path: Path, tmp_path: Path) -> AsyncIterator[tuple[Process, list[str]]]:
    """A live engine process holding RUNS runs on 30 s leases, and their ids (killed after the test)."""
    killed_flows.CONTINUED.clear()
    process = await engine_process(db_path, tmp_path / "started")
    try:
        run_ids = await started_runs(tmp_path / "started", RUNS)
        yield process, run_ids
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await process.aclose()


def next_engine(db_path: Path) -> af.Engine:
    """An engine as the restarted process opens it: the same 30 s lease."""
    engine = af.Engine(f"sqlite:///{db_path}", lease=LEASE, poll_interval=1.0)
    engine.register(WORKFLOW)
    return engine


@pytest.mark.once
async def test_runs_of_a_killed_engine_continue_within_two_seconds(
    db_path: Path, child: tuple[Process, list[str]]
) -> None:
    """After kill -9, every interrupted run goes on within 2 s of the next engine opening (lease: 30 s)."""
    process, run_ids = child
    process.kill()
    await process.wait()
    opened = time.monotonic()
    async with next_engine(db_path) as engine:
        with anyio.fail_after(LEASE / 2):
            results = [await engine.wait(run_id) for run_id in run_ids]
    assert [result.status for result in results] == [af.RunStatus.COMPLETED] * RUNS
    assert all(result.store == {"first": True, "continued": True} for result in results)
    waited = [CONTINUED[run_id] - opened for run_id in run_ids]
    assert max(waited) < 2.0, waited


@pytest.mark.once
async def test_runs_of_a_live_engine_in_another_process_are_left_to_it(
    db_path: Path, child: tuple[Process, list[str]], asyncflow_log: list[dict[str, object]]
) -> None:
    """An engine that opens beside a live one takes none of its runs, though they sit on this host."""
    _, run_ids = child
    async with next_engine(db_path) as engine:  # (opening takes over the runs it may, at once)
        infos = [await engine.get_run(run_id) for run_id in run_ids]
    assert not CONTINUED
    owners = {info.owner for info in infos}
    assert len(owners) == 1
    assert None not in owners
    assert engine.owner not in owners
    assert not [r for r in asyncflow_log if "is gone" in str(r["message"])]


async def held_by(db_path: Path, owner: str) -> None:
    """A file with one running run of ``owner`` on an hour's lease, written as an older engine would."""
    async with SQLiteBackend(db_path):
        pass
    now = time.time()
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.execute(
                "INSERT INTO runs (run_id, workflow_id, status, created_at, updated_at, owner, lease_until) "
                "VALUES ('r1', 'w', 'running', ?, ?, ?, ?)",
                (now, now, owner, now + 3600),
            )
    finally:
        conn.close()


async def test_an_engine_of_this_host_whose_process_is_gone_is_taken_over(db_path: Path) -> None:
    """Without a lock file, a run whose owner names this host and a pid no process has is free at once."""
    gone = await anyio.run_process([sys.executable, "-c", "import os; print(os.getpid())"])
    await held_by(db_path, f"{socket.gethostname()}:{int(gone.stdout)}:older")
    async with SQLiteBackend(db_path) as db:
        now = time.time()
        claimed = await db.claim("me", now=now, lease_until=now + 30, limit=10)
    assert [info.run_id for info in claimed] == ["r1"]


# (the test ids stay the same from one process to the next: make mutate names tests by their ids)
@pytest.mark.parametrize("where", ["other-host", "this-process", "custom"])
async def test_runs_of_engines_not_provably_dead_wait_for_their_lease(db_path: Path, where: str) -> None:
    """Runs of an engine of another host, of this process, or of a custom name without a lock wait."""
    owner = {
        "other-host": "elsewhere:1:abc",
        "this-process": f"{socket.gethostname()}:{os.getpid()}:here",
        "custom": "custom",
    }[where]
    await held_by(db_path, owner)
    async with SQLiteBackend(db_path) as db:
        now = time.time()
        assert await db.claim("me", now=now, lease_until=now + 30, limit=10) == []
        later = await db.claim("me", now=now + 3601, lease_until=now + 3631, limit=10)
    assert [info.run_id for info in later] == ["r1"]
