"""The PostgreSQL backend against a real server: URLs and their errors, schema, claims, fencing, notices."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import postgres_server as pg
import pytest
from faults.faulty import Faults, FaultyBackend
from helpers import eventually

import asyncflow as af
from asyncflow.backends import Checkpoint, RunInfo
from asyncflow.backends.postgres import PG_SCHEMA_VERSION, PostgresBackend
from asyncflow.backends.postgres.schema import MIGRATIONS, lock_space

ROOT = Path(__file__).resolve().parent.parent


def _info(run_id: str, *, owner: str | None = None, now: float = 1000.0) -> RunInfo:
    return RunInfo(
        run_id=run_id,
        workflow_id="wf",
        status=af.RunStatus.PENDING if owner is None else af.RunStatus.RUNNING,
        created_at=now,
        updated_at=now,
        owner=owner,
        lease_until=None if owner is None else now + 30,
    )


def _schema(url: str) -> str:
    return url.split("schema=")[1].split("&")[0]


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[PostgresBackend]:
    async with PostgresBackend(postgres_url) as opened:
        yield opened


# ---- URLs and errors -----------------------------------------------------------------------------


def test_both_url_schemes_open_the_postgres_backend() -> None:
    """postgresql:// and postgres:// URLs both make a PostgresBackend (nothing connects yet)."""
    for url in ("postgresql://u@127.0.0.1/db", "postgres://u@127.0.0.1/db?schema=mine"):
        assert isinstance(af.Engine(url).backend, PostgresBackend)


def test_unknown_url_parameter_is_named() -> None:
    """An unknown URL parameter is refused with its name."""
    with pytest.raises(af.BackendError, match="'colour'"):
        af.Engine("postgresql://u@127.0.0.1/db?colour=blue")


def test_bad_schema_name_is_refused() -> None:
    """A schema that is not a plain SQL name is refused with the name."""
    with pytest.raises(af.BackendError, match="schema='no-dash'"):
        af.Engine("postgresql://u@127.0.0.1/db?schema=no-dash")


def test_password_is_not_in_the_backend_url() -> None:
    """The backend's url (in messages and listings) hides the password."""
    backend = af.Engine("postgresql://u:secret@127.0.0.1/db").backend
    assert "secret" not in backend.url


async def test_unreachable_server_names_host_and_port() -> None:
    """Opening an engine on a port where nothing listens fails at once, naming host and port."""
    engine = af.Engine("postgresql://u@127.0.0.1:1/db")
    started = time.monotonic()
    with pytest.raises(af.BackendError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:1"):
        async with engine:
            pass
    assert time.monotonic() - started < 10  # (no retry unless asked)


async def test_wrong_password_is_named(postgres_server: str, postgres_url: str) -> None:
    """A wrong password fails with an error saying the password was refused, and for which user."""
    conn = await asyncpg.connect(postgres_server)
    role = f"af_pw_{os.getpid()}"
    try:
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right'")
        database = await conn.fetchval("SELECT current_database()")
        with pytest.raises(af.BackendError, match=f"refused the password of user '{role}'"):
            async with af.Engine(f"postgresql://{role}:wrong@127.0.0.1:5432/{database}"):
                pass
    finally:
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
        await conn.close()


async def test_missing_database_is_named(postgres_server: str) -> None:
    """A database that does not exist fails with an error naming it."""
    base = postgres_server.split("?")[0].rsplit("/", 1)[0]
    query = "?" + postgres_server.split("?", 1)[1] if "?" in postgres_server else ""
    with pytest.raises(af.BackendError, match="database 'no_such_db_af' does not exist"):
        async with af.Engine(f"{base}/no_such_db_af{query}"):
            pass


async def test_calls_wait_for_a_connection_when_the_server_has_no_more(postgres_server: str) -> None:
    """At the server's connection limit (here the role's), calls wait with back-off instead of failing."""
    conn = await asyncpg.connect(postgres_server)
    role = f"af_limit_{os.getpid()}"
    schema = f"t_limit_{os.getpid()}"
    database = await conn.fetchval("SELECT current_database()")
    try:
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
        # The pool's first 2 connections and the session's: no room for the pool to grow.
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' CONNECTION LIMIT 3")
        await conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO {role}')
        url = f"postgresql://{role}:pw@127.0.0.1:5432/{database}?schema={schema}&pool_size=8"
        async with PostgresBackend(url, reconnect_timeout=30) as backend:
            await backend.create_run(_info("r1"), [])
            with anyio.fail_after(30):  # (16 at once: the pool would open more connections)
                infos = await asyncio.gather(*(backend.get_run("r1") for _ in range(16)))
            assert {info.run_id for info in infos if info is not None} == {"r1"}
    finally:
        try:
            await pg.drop_role(conn, role)
        finally:
            await conn.close()


def test_missing_extra_names_it() -> None:
    """Without asyncpg, import asyncflow works and a postgres URL names the extra to install."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["asyncpg"] = None  # as if the extra were not installed
        import asyncflow as af
        try:
            af.Engine("postgresql://u@127.0.0.1/db")
        except af.BackendError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'asyncflow[postgres]'" in done.stdout


# ---- schema -------------------------------------------------------------------------------------


async def test_tables_live_in_the_schema_the_url_names(postgres_server: str, postgres_url: str) -> None:
    """The tables are created in the URL's schema, with the schema version recorded."""
    async with PostgresBackend(postgres_url) as backend:
        schema = backend.schema
    conn = await asyncpg.connect(postgres_server)
    try:
        tables = {
            r[0]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
            )
        }
        version = await conn.fetchval(f'SELECT value FROM "{schema}".meta WHERE key = $1', "schema_version")
    finally:
        await conn.close()
    assert {"runs", "checkpoints", "workflow_versions", "workers", "meta"} <= tables
    assert version == str(PG_SCHEMA_VERSION)


async def test_engines_opening_at_once_migrate_once(postgres_url: str) -> None:
    """Eight backends opening a fresh schema at once all open it, and it is migrated once."""
    backends = [PostgresBackend(postgres_url) for _ in range(8)]
    try:
        async with anyio.create_task_group() as group:
            for b in backends:
                group.start_soon(b.open)
        created, _ = await backends[0].create_run(_info("r1"), [])
        assert await backends[7].get_run("r1") == created
    finally:
        for b in backends:
            await b.aclose()


async def test_newer_schema_is_refused(postgres_server: str, postgres_url: str) -> None:
    """A schema a newer asyncflow wrote is refused with an error naming its version."""
    async with PostgresBackend(postgres_url) as backend:
        schema = backend.schema
    conn = await asyncpg.connect(postgres_server)
    try:
        await conn.execute(f"UPDATE \"{schema}\".meta SET value = '999' WHERE key = 'schema_version'")
    finally:
        await conn.close()
    with pytest.raises(af.BackendError, match=r"newer asyncflow.*schema version 999"):
        async with PostgresBackend(postgres_url):
            pass


@pytest.mark.parametrize("version", range(1, PG_SCHEMA_VERSION))
async def test_a_schema_of_each_older_version_is_migrated_and_its_runs_resume_with_a_key(
    postgres_server: str, postgres_url: str, version: int
) -> None:
    """A schema of each older version opens at the current one; its suspended run resumes with a key."""
    schema = _schema(postgres_url)
    conn = await asyncpg.connect(postgres_server)
    try:
        async with conn.transaction():
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            await conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
            for statements in MIGRATIONS[:version]:
                for statement in statements:
                    await conn.execute(statement)
            await conn.execute("INSERT INTO meta VALUES ('schema_version', $1)", str(version))
            await conn.execute(
                "INSERT INTO runs (run_id, workflow_id, status, created_at, updated_at, suspend_reason) "
                "VALUES ('old', 'wf', 'suspended', 1000, 1000, 'needs approval')"
            )
    finally:
        await conn.close()
    async with PostgresBackend(postgres_url) as backend:
        info = await backend.get_run("old")
        assert info is not None
        assert (info.status, info.suspend_reason, info.resume_key) == (
            af.RunStatus.SUSPENDED,
            "needs approval",
            None,
        )
        expect = frozenset({af.RunStatus.SUSPENDED})
        assert await backend.update_run(
            "old", expect=expect, now=1001, status=af.RunStatus.PENDING, resume_key="k1"
        )
        resumed = await backend.get_run("old")
    assert resumed is not None
    assert (resumed.status, resumed.resume_key) == (af.RunStatus.PENDING, "k1")
    conn = await asyncpg.connect(postgres_server)
    try:
        found = await conn.fetchval(f"SELECT value FROM \"{schema}\".meta WHERE key = 'schema_version'")
    finally:
        await conn.close()
    assert found == str(PG_SCHEMA_VERSION)


# ---- claims, leases and fencing ---------------------------------------------------------------------


async def test_claims_take_the_oldest_first(backend: PostgresBackend) -> None:
    """Free runs are claimed oldest first."""
    for i in range(5):
        await backend.create_run(_info(f"r{i}", now=1000.0 + i), [])
    claimed = await backend.claim("a", now=2000.0, lease_until=2030.0, limit=2)
    assert [info.run_id for info in claimed] == ["r0", "r1"]


async def test_concurrent_claims_never_share_a_run(postgres_url: str) -> None:
    """Four engines claiming at once take 200 runs between them, each exactly once."""
    backends = [PostgresBackend(postgres_url) for _ in range(4)]
    for b in backends:
        await b.open()
    try:
        for i in range(200):
            await backends[0].create_run(_info(f"r{i:03}", now=1000.0 + i), [])
        taken: dict[str, list[str]] = {}

        async def take(b: PostgresBackend, owner: str) -> None:
            while True:
                claimed = await b.claim(owner, now=2000.0, lease_until=2030.0, limit=7)
                if not claimed:
                    return
                taken.setdefault(owner, []).extend(info.run_id for info in claimed)

        async with anyio.create_task_group() as group:
            for n, b in enumerate(backends):
                group.start_soon(take, b, f"owner{n}")
        every = [run_id for ids in taken.values() for run_id in ids]
        assert sorted(every) == [f"r{i:03}" for i in range(200)]
    finally:
        for b in backends:
            await b.aclose()


async def test_a_checkpoint_after_a_takeover_is_refused(postgres_url: str) -> None:
    """An engine whose run was claimed by another (its lease expired) has its checkpoint refused."""
    async with PostgresBackend(postgres_url) as a, PostgresBackend(postgres_url) as b:
        await a.create_run(_info("r1"), [])
        assert [i.run_id for i in await a.claim("a", now=1000.0, lease_until=1001.0, limit=1)] == ["r1"]
        await a.checkpoint(Checkpoint("r1", "a", "s/0", "action", seq=1))
        assert [i.run_id for i in await b.claim("b", now=1002.0, lease_until=1030.0, limit=1)] == ["r1"]
        with pytest.raises(af.LeaseLost):
            await a.checkpoint(Checkpoint("r1", "a", "s/1", "action", seq=2))
        await b.checkpoint(Checkpoint("r1", "b", "s/1", "action", seq=2))
        saved = await b.load("r1")
        assert saved is not None
        assert [cp.step_key for cp in saved.checkpoints] == ["s/0", "s/1"]


async def test_the_fencing_token_refuses_a_stale_claim_of_the_same_owner(postgres_url: str) -> None:
    """A write fenced by an older claim is refused even when the owner's name is the same."""
    async with PostgresBackend(postgres_url) as old, PostgresBackend(postgres_url) as new:
        await old.create_run(_info("r1"), [])
        await old.claim("same", now=1000.0, lease_until=1001.0, limit=1)
        await new.claim("same", now=1002.0, lease_until=1030.0, limit=1)  # token 2
        with pytest.raises(af.LeaseLost):
            await old.checkpoint(Checkpoint("r1", "same", "s/0", "action", seq=1))
        assert not await old.update_run("r1", holder="same", now=1003.0, error="stale")
        await new.checkpoint(Checkpoint("r1", "same", "s/0", "action", seq=1))


async def test_a_heartbeat_crossing_a_new_claim_of_the_run_does_not_lose_it(
    backend: PostgresBackend, postgres_server: str, postgres_url: str
) -> None:
    """A heartbeat sent before the engine claimed the run again does not drop the new claim's token."""
    for run_id in ("r1", "r2"):
        await backend.create_run(_info(run_id), [])
    await backend.claim("a", now=1000.0, lease_until=1030.0, limit=2)
    await backend.update_run("r1", holder="a", now=1001.0, owner=None, lease_until=None)  # (suspended, say)
    blocker = await asyncpg.connect(postgres_server)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        # (the beat waits for r2's row, so that it returns after the claim below)
        await blocker.execute(
            f"SELECT 1 FROM \"{_schema(postgres_url)}\".runs WHERE run_id = 'r2' FOR UPDATE"
        )
        beat = asyncio.ensure_future(backend.heartbeat("a", ["r1", "r2"], now=1002.0, lease_until=1032.0))

        async def beat_waits_for_the_row() -> bool:  # (on its way, without a token for r1)
            blocked: int = await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                blocker.get_server_pid(),
            )
            return blocked > 0

        await eventually(beat_waits_for_the_row, within=10)
        assert [i.run_id for i in await backend.claim("a", now=1002.0, lease_until=1032.0, limit=1)] == ["r1"]
        await transaction.commit()
        with anyio.fail_after(10):
            assert await beat == set()
    finally:
        await blocker.close()
    await backend.checkpoint(Checkpoint("r1", "a", "s/0", "action", seq=1))


async def test_a_checkpoint_in_flight_survives_its_engine_claiming_the_run_again(
    backend: PostgresBackend, postgres_server: str, postgres_url: str
) -> None:
    """An engine that claims again its own run (its lease ran out) keeps its token: writes in flight go in."""
    await backend.create_run(_info("r1"), [])
    await backend.claim("a", now=1000.0, lease_until=1001.0, limit=1)
    blocker = await asyncpg.connect(postgres_server)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(f'LOCK TABLE "{_schema(postgres_url)}".checkpoints IN ACCESS EXCLUSIVE MODE')
        before = backend.batches
        write = asyncio.ensure_future(backend.checkpoint(Checkpoint("r1", "a", "s/0", "action", seq=1)))
        await eventually(lambda: backend.batches > before, within=10)  # (its token taken, it waits)
        claimed = await backend.claim("a", now=1002.0, lease_until=1030.0, limit=1)
        assert [i.run_id for i in claimed] == ["r1"]
        await transaction.commit()
        with anyio.fail_after(10):
            await write
    finally:
        await blocker.close()
    await backend.checkpoint(Checkpoint("r1", "a", "s/1", "action", seq=2))
    saved = await backend.load("r1")
    assert saved is not None
    assert [cp.step_key for cp in saved.checkpoints] == ["s/0", "s/1"]


async def test_clocks_that_disagree_between_machines_take_no_run_early(postgres_url: str) -> None:
    """Leases are reckoned on the server's clock: a machine an hour ahead does not take a held run."""
    behind = PostgresBackend(postgres_url, clock=lambda: time.time() - 3600)
    ahead = PostgresBackend(postgres_url, clock=lambda: time.time() + 3600)
    async with behind, ahead, PostgresBackend(postgres_url) as level:
        assert abs(behind.clock_offset - 3600) < 5
        assert abs(ahead.clock_offset + 3600) < 5
        assert level.clock_offset == 0.0
        now = time.time() - 3600  # (the machine behind's clock)
        await behind.create_run(_info("r1"), [])
        (claimed,) = await behind.claim("behind", now=now, lease_until=now + 30, limit=1)
        assert abs(claimed.lease_until - (now + 30)) < 5  # (its own clock's reading)
        for other, skew in ((level, 0), (ahead, 3600)):
            later = time.time() + skew
            assert await other.claim("other", now=later, lease_until=later + 30, limit=1) == []
        await behind.checkpoint(Checkpoint("r1", "behind", "s/0", "action", seq=1))
        assert await behind.heartbeat("behind", ["r1"], now=now, lease_until=now + 30) == set()
        row = await level.get_run("r1")
        assert row is not None
        assert abs(row.lease_until - (time.time() + 30)) < 5


async def test_engines_sharing_a_backend_keep_their_tokens_apart(backend: PostgresBackend) -> None:
    """When one engine of a shared backend loses a run to another, the new holder's writes go in."""
    await backend.create_run(_info("r1"), [])
    await backend.claim("a", now=1000.0, lease_until=1001.0, limit=1)
    assert [i.run_id for i in await backend.claim("b", now=1002.0, lease_until=1030.0, limit=1)] == ["r1"]
    assert await backend.heartbeat("a", ["r1"], now=1003.0, lease_until=1033.0) == {"r1"}
    with pytest.raises(af.LeaseLost):
        await backend.checkpoint(Checkpoint("r1", "a", "s/0", "action", seq=1))
    await backend.checkpoint(Checkpoint("r1", "b", "s/0", "action", seq=1))
    assert await backend.update_run("r1", holder="b", now=1004.0, error="b's")


async def test_concurrent_checkpoints_share_round_trips(backend: PostgresBackend) -> None:
    """Checkpoints of 200 runs made at once are written in far fewer batches than checkpoints."""
    for i in range(200):
        await backend.create_run(_info(f"r{i}"), [])
    await backend.claim("a", now=1000.0, lease_until=1030.0, limit=200)
    before = backend.batches

    async with anyio.create_task_group() as group:
        for i in range(200):
            group.start_soon(backend.checkpoint, Checkpoint(f"r{i}", "a", "s/0", "action", seq=1))
    assert backend.batches - before <= 10
    saved = await backend.load("r199")
    assert saved is not None
    assert len(saved.checkpoints) == 1


async def test_a_bad_checkpoint_fails_alone(backend: PostgresBackend) -> None:
    """A checkpoint the server refuses (a NUL in text) fails on its own; its batch's others are written."""
    for i in range(3):
        await backend.create_run(_info(f"r{i}"), [])
    await backend.claim("a", now=1000.0, lease_until=1030.0, limit=3)
    results: dict[int, BaseException | None] = {}

    async def write(i: int) -> None:
        try:
            await backend.checkpoint(
                Checkpoint(f"r{i}", "a", "bad\0key" if i == 1 else "s/0", "action", seq=1)
            )
        except Exception as exc:
            results[i] = exc
        else:
            results[i] = None

    async with anyio.create_task_group() as group:
        for i in range(3):
            group.start_soon(write, i)
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], af.BackendError)


# ---- the order in which runs' rows are locked ---------------------------------------------------------


async def waiting_behind(monitor: Any, pid: int) -> int:
    """How many sessions wait for a lock of session ``pid``, or for one of a session that does."""
    count: int = await monitor.fetchval(
        "WITH first AS (SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))) "
        "SELECT (SELECT count(*) FROM first) + (SELECT count(*) FROM pg_stat_activity "
        "WHERE pid NOT IN (SELECT pid FROM first) AND pg_blocking_pids(pid) && ARRAY(SELECT pid FROM first))",
        pid,
    )
    return count


@pytest.mark.parametrize("beaten", [["r0", "r1", "r2"], ["r2", "r1", "r0"]], ids=["ascending", "descending"])
async def test_a_heartbeat_and_a_group_commit_of_the_same_runs_never_deadlock(
    backend: PostgresBackend, postgres_server: str, postgres_url: str, beaten: list[str]
) -> None:
    """A heartbeat and a group commit (a run's status too) of the same runs, held up together, both go in."""
    for i in range(3):
        await backend.create_run(_info(f"r{i}", now=1000.0 + i), [])
    await backend.claim("a", now=1100.0, lease_until=1130.0, limit=3)
    blocker, monitor = await asyncpg.connect(postgres_server), await asyncpg.connect(postgres_server)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        # A third session holds the middle run: the heartbeat (of the runs in either order) waits
        # there, and the group commit, which locks all three and changes r2's status, waits too.
        await blocker.execute(
            f"SELECT 1 FROM \"{_schema(postgres_url)}\".runs WHERE run_id = 'r1' FOR UPDATE"
        )
        beat = asyncio.ensure_future(backend.heartbeat("a", beaten, now=1101.0, lease_until=1131.0))
        await eventually(lambda: waiting_behind(monitor, blocker.get_server_pid()), within=10)
        before = backend.batches
        commits = [
            asyncio.ensure_future(backend.checkpoint(Checkpoint("r0", "a", "s/0", "action", seq=1))),
            asyncio.ensure_future(backend.checkpoint(Checkpoint("r1", "a", "s/0", "action", seq=1))),
            asyncio.ensure_future(
                backend.checkpoint(
                    Checkpoint("r2", "a", "s/0", "sleep", at=1200.0, status=af.RunStatus.SLEEPING, seq=1)
                )
            ),
        ]

        async def both_wait() -> bool:
            return await waiting_behind(monitor, blocker.get_server_pid()) == 2

        await eventually(both_wait, within=10)
        await transaction.rollback()
        with anyio.fail_after(20):
            lost = await beat
            await asyncio.gather(*commits)
    finally:
        await blocker.close()
        await monitor.close()
    assert lost == set()
    # One group commit: a deadlock would have failed it, and its checkpoints gone in one by one.
    assert backend.batches - before == 1
    info = await backend.get_run("r2")
    assert info is not None
    assert (info.status, info.wake_at, info.lease_until) == (af.RunStatus.SLEEPING, 1200.0, 1131.0)


# ---- engines sharing a database --------------------------------------------------------------------


def spawn(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """A child process whose stdout the test reads line by line."""
    return subprocess.Popen(args, stdout=subprocess.PIPE, cwd=cwd, text=True)


WORKER = textwrap.dedent(
    """
    import sys, anyio
    import asyncflow as af

    @af.action
    async def hold(ctx):
        print("holding", flush=True)
        await anyio.sleep(3600)

    wf = af.Workflow("held", stages=[af.Stage("s", actions=[hold])])

    async def main():
        engine = af.Engine(sys.argv[1], lease=60.0, poll_interval=0.2)
        engine.register(wf)
        async with engine:
            handle = await engine.start(wf, run_id="victim")
            await anyio.sleep(3600)

    anyio.run(main)
    """
)


async def test_a_killed_worker_is_taken_over_within_two_seconds(postgres_url: str, tmp_path: Path) -> None:
    """A worker killed with SIGKILL loses its session; another engine takes its run within 2 s."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    child = spawn([sys.executable, str(script), postgres_url], tmp_path)
    try:
        assert child.stdout is not None
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(child.stdout.readline)
        assert line.strip() == "holding"
        engine = af.Engine(postgres_url, lease=60.0, poll_interval=0.2, recover=False)
        async with engine:
            killed = time.monotonic()
            child.kill()
            await anyio.to_thread.run_sync(child.wait)
            with anyio.fail_after(10):
                while True:
                    claimed = await engine.backend.claim(
                        "taker", now=time.time(), lease_until=time.time() + 60, limit=1
                    )
                    if claimed:
                        break
                    await anyio.sleep(0.05)
            taken = time.monotonic() - killed
        assert claimed[0].run_id == "victim"
        assert taken < 2.0, f"took {taken:.2f} s"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


NAMESAKE = textwrap.dedent(
    """
    import sys, anyio
    import asyncflow as af

    async def main():
        async with af.Engine(sys.argv[1], owner=sys.argv[2], lease=60.0, poll_interval=0.2):
            print("open", flush=True)
            await anyio.sleep(3600)

    anyio.run(main)
    """
)


async def test_a_killed_engine_does_not_free_the_runs_of_a_live_namesake(
    postgres_server: str, postgres_url: str, tmp_path: Path
) -> None:
    """Live engines of one owner name each have a liveness lock: one killed frees none of the other's runs."""
    script = tmp_path / "namesake.py"
    script.write_text(NAMESAKE)
    space = lock_space(_schema(postgres_url))

    async def liveness_locks() -> int:
        conn = await asyncpg.connect(postgres_server)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objsubid = 2 AND classid = $1::oid",
                    space,
                )
            )
        finally:
            await conn.close()

    async with PostgresBackend(postgres_url) as alive, PostgresBackend(postgres_url) as taker:
        await alive.create_run(_info("r1"), [])
        now = time.time()
        assert len(await alive.claim("same", now=now, lease_until=now + 60, limit=1)) == 1
        child = spawn([sys.executable, str(script), postgres_url, "same"], tmp_path)
        try:
            assert child.stdout is not None
            with anyio.fail_after(60):
                assert (await anyio.to_thread.run_sync(child.stdout.readline)).strip() == "open"
            assert await liveness_locks() == 3
            child.kill()
            await anyio.to_thread.run_sync(child.wait)

            async def gone() -> bool:  # (the server has seen its session end)
                return await liveness_locks() == 2

            await eventually(gone, within=10)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        now = time.time()
        assert await taker.claim("taker", now=now, lease_until=now + 60, limit=1) == []
        assert (await taker.workers())["same"]["alive"]


async def test_a_live_worker_keeps_its_runs_past_no_lease(postgres_url: str) -> None:
    """A run held by an engine whose session lives is not claimed while its lease holds."""
    async with PostgresBackend(postgres_url) as a, PostgresBackend(postgres_url) as b:
        await a.create_run(_info("r1", owner="a"), [])
        assert await b.claim("b", now=1000.0, lease_until=1030.0, limit=1) == []


_STARTED: dict[str, anyio.Event] = {}


@af.action
async def wait_long(ctx: af.ActionContext) -> None:
    _STARTED["event"].set()
    await anyio.sleep(3600)


@af.action
async def noop(ctx: af.ActionContext) -> None:
    pass


async def test_a_cancel_from_another_process_stops_the_run_at_once(postgres_url: str) -> None:
    """A cancel made by another engine reaches the engine running the run by a notice, well before polling."""
    started = _STARTED["event"] = anyio.Event()
    wf = af.Workflow("cancel-me", stages=[af.Stage("s", actions=[wait_long])])
    runner_engine = af.Engine(postgres_url, poll_interval=5.0, lease=30.0)
    runner_engine.register(wf)
    other = af.Engine(postgres_url, poll_interval=5.0, lease=30.0, recover=False)
    async with runner_engine, other:
        handle = await runner_engine.start(wf)
        with anyio.fail_after(10):
            await started.wait()
        t0 = time.monotonic()
        await other.cancel(handle.run_id)
        with anyio.fail_after(4):  # (polling would take 5 s)
            result = await handle.result()
        assert result.status is af.RunStatus.CANCELLED
        assert time.monotonic() - t0 < 4


async def test_a_released_run_is_taken_at_once_by_notice(postgres_url: str) -> None:
    """A run given back by one engine is taken by another at once (a notice), not at its next poll."""
    async with PostgresBackend(postgres_url) as a:
        await a.create_run(_info("r1", owner="a"), [])
        engine = af.Engine(postgres_url, poll_interval=5.0, lease=30.0)
        engine.register(af.Workflow("wf", stages=[af.Stage("s", actions=[noop])]))
        async with engine:  # (opening, it looked for runs to take, and found none free)
            t0 = time.monotonic()
            await a.update_run("r1", holder="a", now=1001.0, owner=None, lease_until=None)
            with anyio.fail_after(4):
                result = await engine.wait("r1")
            assert result.status is af.RunStatus.COMPLETED
            assert time.monotonic() - t0 < 4


#: the executions of ``follow_gated``, and the gates they wait on (the first, then every other one)
GATED: list[str] = []
GATES: dict[str, anyio.Event] = {}


@af.action
async def follow_gated(ctx: af.ActionContext) -> None:
    """Waits for the gate of its execution: ``first`` for the first one, ``later`` for the others."""
    GATED.append(ctx.run_id)
    await GATES["first" if len(GATED) == 1 else "later"].wait()


class Ahead:
    """A clock 100 s ahead of this machine's: to its engine, every lease of this machine's has run out."""

    def now(self) -> float:
        return time.time() + 100

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


async def test_wait_follows_a_run_taken_over_by_another_engine_to_its_end(postgres_url: str) -> None:
    """A wait on a run this engine lost returns when the new holder ends it, woken by its notices."""

    class CountedReads(FaultyBackend):
        reads = 0

        async def get_run(self, run_id: str) -> RunInfo | None:
            self.reads += 1
            return await super().get_run(run_id)

    GATED.clear()
    GATES.update(first=anyio.Event(), later=anyio.Event())
    flow = af.Workflow("lost-and-followed", stages=[af.Stage("s", actions=[follow_gated])])
    backend = CountedReads(PostgresBackend(postgres_url), Faults())
    here = af.Engine(backend, lease=30.0, poll_interval=5.0)
    there = af.Engine(postgres_url, clock=Ahead(), lease=30.0, poll_interval=0.05)
    for engine in (here, there):
        engine.register(flow)
    returned: list[float] = []
    async with here:
        handle = await here.start(flow)
        await eventually(lambda: len(GATED) == 1)
        async with there:  # (it takes the run: to its clock, the lease here has run out)
            await eventually(lambda: len(GATED) == 2, within=20)
            GATES["first"].set()  # (the action here ends; its checkpoint is refused: the run stops here)

            async def wait() -> None:
                result = await here.wait(handle.run_id)
                returned.append(time.monotonic())
                assert result.status is af.RunStatus.COMPLETED

            async with anyio.create_task_group() as group:
                before = backend.reads
                group.start_soon(wait)
                # (eleven reads: a wait that only polled would now sleep 5 s before the next)
                await eventually(lambda: backend.reads >= before + 11, within=20)
                released = time.monotonic()
                GATES["later"].set()
    assert returned[0] - released < 1.5, f"returned {returned[0] - released:.2f} s after the run ended"


async def test_workers_lists_engines_and_their_liveness(backend: PostgresBackend) -> None:
    """backend.workers() lists each engine that claimed here, alive while its session lives."""
    await backend.claim("me", now=1000.0, lease_until=1030.0, limit=1)
    workers: dict[str, Any] = await backend.workers()
    assert workers["me"]["alive"] is True
    assert workers["me"]["pid"] == os.getpid()


_GATE: dict[str, anyio.Event] = {}


@af.action
async def gated(ctx: af.ActionContext) -> None:
    await _GATE["open"].wait()
    await ctx.send("progress", {"done": True})


async def test_a_watcher_in_another_engine_wakes_on_a_notice(postgres_url: str) -> None:
    """engine.watch in an engine that does not run the run gets its events by a notice, well before a poll."""
    gate = _GATE["open"] = anyio.Event()
    wf = af.Workflow("watched", stages=[af.Stage("s", actions=[gated])])
    runner_engine = af.Engine(postgres_url, lease=30.0)
    runner_engine.register(wf)
    watcher = af.Engine(postgres_url, recover=False, watch_interval=30.0)
    async with runner_engine, watcher:
        handle = await runner_engine.start(wf)
        kinds: list[af.EventKind] = []
        with anyio.fail_after(8):  # (polling would take 30 s a look)
            async with contextlib.aclosing(watcher.watch(handle.run_id)) as events:
                async for event in events:
                    kinds.append(event.kind)
                    if event.kind is af.EventKind.ACTION_STARTED:
                        gate.set()
        assert kinds[-1] is af.EventKind.RUN_FINISHED
        assert af.EventKind.MESSAGE in kinds
