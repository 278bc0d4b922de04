"""``asyncflow worker`` processes on a real PostgreSQL server: runs, graceful shutdown, pools by workflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import pg_flows
import postgres_server as pg
import pytest
from helpers import eventually
from pg_workers import TESTS, Ledger, Worker, client

import asyncflow as af


def worker(url: str, tmp: Path, name: str, started: list[Worker], *args: str, **kw: object) -> Worker:
    made = Worker(url, tmp, name, args=("--poll", "0.2", "--lease", "5", *args), **kw)  # type: ignore[arg-type]
    started.append(made)
    made.start()
    return made


async def test_a_worker_runs_the_runs_an_app_starts(
    postgres_url: str, tmp_path: Path, ledger: Ledger, workers: list[Worker]
) -> None:
    """Runs started by an engine with concurrency=0 are run by the worker, each step once."""
    w = worker(postgres_url, tmp_path, "w1", workers)
    await w.ready()
    async with client(postgres_url, poll_interval=0.1) as app:
        handles = [await app.start(pg_flows.CHAOS) for _ in range(5)]
        with anyio.fail_after(30):
            results = [await h.result() for h in handles]
    assert all(r.status is af.RunStatus.COMPLETED for r in results)
    assert all(len(r.store) == 20 for r in results)
    done = ledger.done()
    assert len(done) == 5 * 20
    assert set(done.values()) == {1}


async def test_sigterm_finishes_the_action_in_flight_gives_back_and_exits_0(
    postgres_url: str, tmp_path: Path, ledger: Ledger, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SIGTERM the worker lets the action in flight finish, gives its run back at once, exits 0."""
    monkeypatch.setenv("ASYNCFLOW_TEST_SLOW_SECONDS", "1")
    first = worker(postgres_url, tmp_path, "first", workers, "--grace", "10")
    await first.ready()
    async with client(postgres_url, poll_interval=0.1) as app:
        handle = await app.start(pg_flows.SLOW)
        await eventually(lambda: len(ledger.started()) == 1, within=20)
        first.signal(signal.SIGTERM)
        assert await first.wait(15) == 0
        info = await app.get_run(handle.run_id)
        assert info.owner is None  # given back, not left to a lease
        assert info.status is af.RunStatus.RUNNING
        assert len(ledger.done()) == 1  # the action in flight finished
        second = worker(postgres_url, tmp_path, "second", workers)
        await second.ready()
        with anyio.fail_after(20):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert set(ledger.done().values()) == {1}
    assert set(ledger.started().values()) == {1}  # nothing ran twice
    assert "drained" in first.log()


async def test_a_second_signal_stops_the_worker_at_once(
    postgres_url: str, tmp_path: Path, ledger: Ledger, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second SIGTERM stops a worker waiting out its grace at once; the run is given back."""
    monkeypatch.setenv("ASYNCFLOW_TEST_SLOW_SECONDS", "60")
    w = worker(postgres_url, tmp_path, "w", workers, "--grace", "60")
    await w.ready()
    async with client(postgres_url, poll_interval=0.1) as app:
        handle = await app.start(pg_flows.SLOW)
        await eventually(lambda: len(ledger.started()) == 1, within=20)
        w.signal(signal.SIGTERM)
        await eventually(lambda: "taking no more runs" in w.log(), within=10)
        w.signal(signal.SIGTERM)
        assert await w.wait(10) == 0
        info = await app.get_run(handle.run_id)
    assert info.owner is None


async def test_a_worker_leaves_runs_of_workflows_it_has_not(
    postgres_url: str, tmp_path: Path, ledger: Ledger, workers: list[Worker]
) -> None:
    """A worker without a run's workflow leaves the run waiting (not failed) for a worker that has it."""
    slow_only = worker(postgres_url, tmp_path, "slow-only", workers, app="pg_flows:ONLY_SLOW")
    await slow_only.ready()
    async with client(postgres_url, poll_interval=0.1) as app:
        handle = await app.start(pg_flows.CHAOS)
        # (the worker took the run, found its workflow missing and gave it back, waiting)
        await eventually(lambda: "which is not registered with this engine" in slow_only.log(), within=20)

        async def given_back() -> bool:  # (it logs that before its write of the run goes through)
            found = await app.get_run(handle.run_id)
            return found.status is af.RunStatus.PENDING and found.owner is None

        await eventually(given_back, within=20)
        info = await app.get_run(handle.run_id)
        assert info.status is af.RunStatus.PENDING
        assert info.error is None
        page = await app.list_runs(status="pending")
        assert [i.run_id for i in page.runs] == [handle.run_id]
        both = worker(postgres_url, tmp_path, "both", workers)
        await both.ready()
        with anyio.fail_after(30):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED


async def test_runs_list_shows_the_worker_that_holds_each_run(
    postgres_url: str, tmp_path: Path, ledger: Ledger, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`asyncflow runs list --db URL` names the worker that holds a running run."""
    monkeypatch.setenv("ASYNCFLOW_TEST_SLOW_SECONDS", "60")
    w = worker(postgres_url, tmp_path, "holder", workers)
    await w.ready()
    async with client(postgres_url, poll_interval=0.1) as app:
        await app.start(pg_flows.SLOW)
        await eventually(lambda: len(ledger.started()) == 1, within=20)
        done = await anyio.run_process(
            [sys.executable, "-m", "asyncflow", "runs", "list", "--db", postgres_url],
            cwd=TESTS,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "held by" in out
    assert str(w.process.pid if w.process else "") in out


async def test_a_worker_waits_for_a_server_with_no_connection_to_spare(
    postgres_server: str, postgres_url: str, tmp_path: Path, ledger: Ledger, workers: list[Worker]
) -> None:
    """A worker whose role is at its connection limit waits with back-off, and starts once there is room."""
    conn = await asyncpg.connect(postgres_server)
    role = f"af_full_{os.getpid()}"
    database = await conn.fetchval("SELECT current_database()")
    query = "&".join(p for p in postgres_url.split("?", 1)[1].split("&") if not p.startswith("host="))
    url = f"postgresql://{role}:pw@127.0.0.1:5432/{database}?{query}"
    try:
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' CONNECTION LIMIT 0")
        await conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO {role}')
        w = worker(url, tmp_path, "full", workers)
        await eventually(lambda: "retrying with back-off until it answers" in w.log(), within=30)
        assert w.process is not None
        assert w.process.poll() is None
        await conn.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")
        await w.ready()
        w.stop()
    finally:
        try:
            await pg.drop_role(conn, role)
        finally:
            await conn.close()


def test_worker_with_a_bad_app_exits_2(postgres_url: str) -> None:
    """A MODULE:ATTR that names no workflow is a one-line error and exit code 2."""
    done = subprocess.run(
        [sys.executable, "-m", "asyncflow", "worker", "pg_flows:nothing", "--db", postgres_url],
        capture_output=True,
        text=True,
        cwd=TESTS,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("asyncflow: ")
    assert "nothing" in done.stderr
