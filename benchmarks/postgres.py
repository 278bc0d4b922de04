"""The PostgreSQL backend: cost per committed action, throughput of workers, latencies, scale.

Run with ``python benchmarks/postgres.py [--url postgresql://...]`` (default: the
tests' server, ``ASYNCFLOW_TEST_POSTGRES`` or the local socket). Every figure is
a ratio to a baseline measured in the same run on the same server:

(a) sequential: µs per committed action of one run of 500 no-op actions,
    against one raw ``INSERT`` + ``COMMIT`` round trip from asyncpg (target <= 3x);
(b) throughput: committed actions/s of 4 ``asyncflow worker`` processes, 200
    concurrent runs each, 50 actions a run, server included on this machine
    (target >= 20,000/s), beside the raw inserts/s of 4 processes x 200 tasks;
(c) latency: from ``engine.start`` in one process to the first action in a
    worker, and of ``engine.cancel`` in one process to the action's cancellation
    in the worker: p50 and p99 over N runs (target p99 <= 20 ms), beside a raw
    round trip;
(d) scale: a claim and a ``list_runs`` page with 1,000 and with 1,000,000
    finished runs in the tables (target: within 2x of each other), and the
    plans (``EXPLAIN``) of the claim and the page.

Each part runs in a schema of its own, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import asyncpg

import asyncflow as af
from asyncflow.backends import RunInfo, open_backend

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@af.action
async def noop(ctx: af.ActionContext) -> None:
    """A committed action and nothing else."""


@af.action
async def stamp(ctx: af.ActionContext) -> None:
    """Writes when it began to the file ``ASYNCFLOW_BENCH_STAMPS`` names (start latency)."""
    _stamp(f"{ctx.run_id} start {time.time()}")


@af.action
async def hold(ctx: af.ActionContext) -> None:
    """Waits to be cancelled, and writes when the cancellation arrived (cancel latency)."""
    _stamp(f"{ctx.run_id} holding {time.time()}")
    try:
        await anyio.sleep(3600)
    finally:
        _stamp(f"{ctx.run_id} cancelled {time.time()}")


def _stamp(line: str) -> None:
    """One line, appended in one write (a few bytes: it does not hold up the loop)."""
    fd = os.open(os.environ["ASYNCFLOW_BENCH_STAMPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def steps(name: str, n: int) -> af.Workflow:
    return af.Workflow(name, stages=[af.Stage("s", actions=[noop] * n)])


FIFTY = steps("bench-50", 50)
FIVE_HUNDRED = steps("bench-500", 500)
STAMP = af.Workflow("bench-stamp", stages=[af.Stage("s", actions=[stamp])])
HOLD = af.Workflow("bench-hold", stages=[af.Stage("s", actions=[hold])])
WORKFLOWS = [FIFTY, FIVE_HUNDRED, STAMP, HOLD]


# ---- helpers ----------------------------------------------------------------------------------


async def find_url() -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    import postgres_server

    url = await postgres_server.locate()
    if url is None:
        raise SystemExit(postgres_server.HOW)
    return url


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


class Schema:
    """A fresh schema for one part, dropped after."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.name = f"bench_{uuid.uuid4().hex[:12]}"
        self.url = with_schema(server, self.name)

    async def __aenter__(self) -> Schema:
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn = await asyncpg.connect(self.server)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
        finally:
            await conn.close()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def workers(
    url: str, n: int, concurrency: int, stamps: Path | None, log: Path
) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    if stamps is not None:
        env["ASYNCFLOW_BENCH_STAMPS"] = str(stamps)
    procs = []
    for i in range(n):
        out = (log.parent / f"{log.name}.{i}").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "asyncflow",
                    "worker",
                    "postgres:WORKFLOWS",
                    "--db",
                    url,
                    "--concurrency",
                    str(concurrency),
                    "--poll",
                    "0.5",
                    "--lease",
                    "30",
                    "--log-level",
                    "INFO",
                ],
                stdout=out,
                stderr=out,
                env=env,
                cwd=HERE,
            )
        )
    return procs


async def ready(log: Path, n: int) -> None:
    with anyio.fail_after(60):
        while True:
            if sum(" ready on " in (log.parent / f"{log.name}.{i}").read_text() for i in range(n)) == n:
                return
            await anyio.sleep(0.05)


async def stamped(stamps: Path, run_id: str, what: str) -> float:
    """When the worker stamped ``what`` for the run (waits for it)."""
    with anyio.fail_after(10):
        while True:
            found = _stamps(stamps).get((run_id, what))
            if found is not None:
                return found
            await anyio.sleep(0.001)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(url: str) -> af.Engine:
    engine = af.Engine(url, concurrency=0)
    for wf in WORKFLOWS:
        engine.register(wf)
    return engine


# ---- (a) sequential ---------------------------------------------------------------------------


async def raw_commit_us(server: str, n: int = 2000) -> float:
    """µs per INSERT + COMMIT round trip (autocommit) from asyncpg."""
    conn = await asyncpg.connect(server)
    try:
        # A logged table, as the checkpoints are: each commit waits for the WAL to reach the disk.
        await conn.execute("DROP TABLE IF EXISTS bench_seq")
        await conn.execute("CREATE TABLE bench_seq (run_no bigint, seq int, step_key text, changes text)")
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(n):
                await conn.execute("INSERT INTO bench_seq VALUES ($1, $2, $3, $4)", 1, i, "s/0", None)
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        return best
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_seq")
        await conn.close()


async def sequential_us(server: str, actions: int = 500) -> float:
    """µs per committed action of one run (best of 3), in this process."""
    async with Schema(server) as schema:
        engine = af.Engine(schema.url)
        engine.register(FIVE_HUNDRED)
        best = float("inf")
        async with engine:
            for _ in range(3):
                t0 = time.perf_counter()
                result = await (await engine.start(FIVE_HUNDRED)).result()
                assert result.status is af.RunStatus.COMPLETED
                best = min(best, (time.perf_counter() - t0) / actions * 1e6)
        return best


# ---- (b) throughput ---------------------------------------------------------------------------


def _raw_inserter(server: str, tasks: int, each: int) -> None:
    async def main() -> None:
        pool = await asyncpg.create_pool(server, min_size=4, max_size=10)

        async def one() -> None:
            for i in range(each):
                async with pool.acquire() as conn:
                    await conn.execute("INSERT INTO bench_raw VALUES ($1, $2, $3)", 1, i, "s/0")

        async with anyio.create_task_group() as group:
            for _ in range(tasks):
                group.start_soon(one)
        await pool.close()

    asyncio.run(main())


def _run_all(commands: list[list[str]]) -> float:
    """Seconds from starting ``commands`` at once until the last one ends."""
    t0 = time.perf_counter()
    children = [subprocess.Popen(command) for command in commands]
    for child in children:
        child.wait()
    return time.perf_counter() - t0


async def raw_throughput(server: str, procs: int = 4, tasks: int = 200, each: int = 25) -> float:
    """Raw autocommitted INSERTs/s from ``procs`` processes of ``tasks`` concurrent tasks each."""
    conn = await asyncpg.connect(server)
    await conn.execute("DROP TABLE IF EXISTS bench_raw; CREATE TABLE bench_raw (a bigint, b int, c text)")
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import postgres; "
        f"postgres._raw_inserter({server!r}, {tasks}, {each})"
    )
    elapsed = await anyio.to_thread.run_sync(_run_all, [[sys.executable, "-c", code]] * procs)
    await conn.execute("DROP TABLE bench_raw")
    await conn.close()
    return procs * tasks * each / elapsed


async def throughput(server: str, procs: int = 4, runs_each: int = 200, actions: int = 50) -> float:
    """Committed actions/s: ``procs`` worker processes take ``procs * runs_each`` runs of ``actions``."""
    async with Schema(server) as schema, client(schema.url) as app:
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "worker"
            pool = workers(schema.url, procs, runs_each, None, log)
            try:
                await ready(log, procs)
                total = procs * runs_each
                conn = await asyncpg.connect(server)
                count = f'SELECT count(*) FROM "{schema.name}".runs WHERE status = $1'
                t0 = time.perf_counter()
                for _ in range(total):
                    await app.start(FIFTY)
                with anyio.fail_after(600):
                    while True:
                        if await conn.fetchval(count, "completed") == total:
                            break
                        await anyio.sleep(0.02)
                elapsed = time.perf_counter() - t0
                await conn.close()
            finally:
                stop(pool)
    return procs * runs_each * actions / elapsed


# ---- (c) latency ---------------------------------------------------------------------------------


async def raw_round_trip_ms(server: str, n: int = 500) -> tuple[float, float]:
    conn = await asyncpg.connect(server)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await conn.fetchval("SELECT 1")
        times.append((time.perf_counter() - t0) * 1e3)
    await conn.close()
    return pct(times, 50), pct(times, 99)


def _stamps(path: Path) -> dict[tuple[str, str], float]:
    found = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        run_id, what, at = line.split()
        found[(run_id, what)] = float(at)
    return found


async def latencies(server: str, n: int = 100) -> dict[str, tuple[float, float]]:
    """p50/p99 ms of start -> first action, and of cancel -> cancellation, across processes."""
    async with Schema(server) as schema, client(schema.url) as app:
        with tempfile.TemporaryDirectory() as tmp:
            stamps = Path(tmp) / "stamps"
            log = Path(tmp) / "worker"
            pool = workers(schema.url, 1, 50, stamps, log)
            try:
                await ready(log, 1)
                starts = []
                for _ in range(n):
                    t0 = time.time()
                    handle = await app.start(STAMP)
                    starts.append((await stamped(stamps, handle.run_id, "start") - t0) * 1e3)
                cancels = []
                for _ in range(n // 2):
                    handle = await app.start(HOLD)
                    await stamped(stamps, handle.run_id, "holding")
                    t0 = time.time()
                    await app.cancel(handle.run_id)
                    cancels.append((await stamped(stamps, handle.run_id, "cancelled") - t0) * 1e3)
            finally:
                stop(pool)
    return {"start": (pct(starts, 50), pct(starts, 99)), "cancel": (pct(cancels, 50), pct(cancels, 99))}


# ---- (d) scale -------------------------------------------------------------------------------------


async def scale(server: str, sizes: tuple[int, ...]) -> tuple[dict[int, tuple[float, float]], str, str]:
    """Median ms of a claim and of a list_runs page with ``size`` finished runs in the tables; the plans."""
    out: dict[int, tuple[float, float]] = {}
    plans = ("", "")
    for size in sizes:
        async with Schema(server) as schema:
            backend = open_backend(schema.url)
            async with backend:
                conn = await asyncpg.connect(server)
                await conn.execute(f'SET search_path TO "{schema.name}"')
                await conn.execute(
                    "INSERT INTO runs (run_id, workflow_id, status, created_at, updated_at) "
                    "SELECT 'done-' || g, 'wf', 'completed', 1000 + g, 1000 + g "
                    "FROM generate_series(1, $1) g",
                    size,
                )
                await conn.execute(
                    "INSERT INTO checkpoints (run_no, seq, step_key, kind, attempts) "
                    "SELECT run_no, 1, 's/0', 'action', 1 FROM runs"
                )
                await conn.execute("ANALYZE")
                claims, pages = [], []
                for i in range(50):
                    now = 10_000_000.0 + i
                    info = RunInfo(f"new-{i}", "wf", af.RunStatus.PENDING, now, now)
                    await backend.create_run(info, [])
                    t0 = time.perf_counter()
                    claimed = await backend.claim("bench", now=now, lease_until=now + 30, limit=1)
                    claims.append((time.perf_counter() - t0) * 1e3)
                    assert len(claimed) == 1
                    await backend.update_run(
                        claimed[0].run_id,
                        now=now,
                        status=af.RunStatus.COMPLETED,
                        owner=None,
                        lease_until=None,
                    )
                    t0 = time.perf_counter()
                    page = await backend.list_runs(status=None, workflow_id=None, limit=50, cursor=None)
                    pages.append((time.perf_counter() - t0) * 1e3)
                    assert len(page.runs) == 50
                out[size] = (statistics.median(claims), statistics.median(pages))
                if size == max(sizes):
                    claim_plan = await conn.fetch(
                        "EXPLAIN SELECT r.run_no FROM runs r "
                        "WHERE r.status IN ('pending', 'running', 'sleeping') "
                        "AND (r.owner IS NULL OR r.lease_until IS NULL OR r.lease_until < 1) "
                        "ORDER BY r.created_at, r.run_no LIMIT 1 FOR UPDATE SKIP LOCKED"
                    )
                    page_plan = await conn.fetch(
                        "EXPLAIN SELECT * FROM runs ORDER BY created_at DESC, run_id DESC LIMIT 51"
                    )
                    plans = ("\n".join(r[0] for r in claim_plan), "\n".join(r[0] for r in page_plan))
                await conn.close()
    return out, plans[0], plans[1]


# ---- main --------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    server = args.url or await find_url()
    print(f"PostgreSQL benchmarks on {server.split('@')[-1]} ({os.cpu_count()} CPUs)")
    if "seq" in args.parts:
        raw = await raw_commit_us(server)
        ours = await sequential_us(server)
        print(
            f"(a) sequential: {ours:.0f} µs per committed action; raw INSERT+COMMIT {raw:.0f} µs: "
            f"{ours / raw:.2f}x (target <= 3x)"
        )
    if "throughput" in args.parts:
        raw_tp = await raw_throughput(server)
        tp = await throughput(server, runs_each=args.runs)
        print(
            f"(b) throughput: {tp:,.0f} committed actions/s with 4 workers x {args.runs} runs x 50 actions; "
            f"raw INSERTs of 4 processes x 200 tasks {raw_tp:,.0f}/s: {tp / raw_tp:.2f}x of raw "
            f"(target >= 20,000/s)"
        )
    if "latency" in args.parts:
        rt50, rt99 = await raw_round_trip_ms(server)
        lat = await latencies(server, n=args.latency_runs)
        print(
            f"(c) latency, ms p50/p99: start -> first action {lat['start'][0]:.1f}/{lat['start'][1]:.1f}, "
            f"cancel -> cancelled {lat['cancel'][0]:.1f}/{lat['cancel'][1]:.1f}; raw SELECT 1 round trip "
            f"{rt50:.2f}/{rt99:.2f} (target p99 <= 20 ms)"
        )
    if "scale" in args.parts:
        sizes = (1_000, args.large)
        figures, claim_plan, page_plan = await scale(server, sizes)
        small, large = figures[sizes[0]], figures[sizes[1]]
        print(
            f"(d) scale, median ms: claim {small[0]:.2f} with {sizes[0]:,} finished runs, "
            f"{large[0]:.2f} with "
            f"{sizes[1]:,} ({large[0] / small[0]:.2f}x); list_runs page {small[1]:.2f} and {large[1]:.2f} "
            f"({large[1] / small[1]:.2f}x) (target within 2x)"
        )
        print("    claim plan:\n      " + claim_plan.replace("\n", "\n      "))
        print("    page plan:\n      " + page_plan.replace("\n", "\n      "))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the server (default: the tests' server)")
    parser.add_argument("--parts", nargs="*", default=["seq", "throughput", "latency", "scale"])
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs per worker (default 200)")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument(
        "--large", type=int, default=1_000_000, help="finished runs for the large scale figure"
    )
    # The workers import this file as `postgres`: use the same module, so actions are named alike.
    sys.path.insert(0, str(HERE))
    import postgres as flows

    asyncio.run(flows.main(parser.parse_args()))
