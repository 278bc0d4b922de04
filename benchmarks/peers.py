"""Durable asyncflow against its peers, DBOS and LangGraph, each on an SQLite file, in one process.

With ``--postgres`` (a URL, or the tests' server: ``ASYNCFLOW_TEST_POSTGRES`` or
the local socket), asyncflow and DBOS are also measured on one PostgreSQL
server, in a second table: asyncflow in a schema of its own, DBOS in a
database of its own (created and dropped on the server; the role needs
``CREATEDB``), both from one process, with the same shapes.

Run with ``python benchmarks/peers.py`` inside an environment with the ``bench``
extra (``pip install -e '.[bench]'``); a peer that is not installed is listed as
"not installed". The two shapes of ``durable.py``, for every framework:

(a) one sequential run of 1,000 steps: µs per committed step (best of N);
(b) 200 concurrent runs of 50 steps: committed steps per second (best of N).

Every step does the same small work: read a counter from the run's state and
write it back incremented, and every step is checkpointed before the next one
starts:

* asyncflow: an action that reads and writes a store key (as in ``durable.py``);
* DBOS: an async ``@DBOS.step`` returning ``n + 1``, called in a loop by an async
  ``@DBOS.workflow`` (DBOS records each step's output in its SQLite system
  database); runs are started with ``DBOS.start_workflow_async``;
* LangGraph: a ``StateGraph`` with one node per step (a chain of 1,000 or 50
  nodes, each returning ``{"n": n + 1}``), compiled with ``AsyncSqliteSaver``
  and run with ``durability="sync"``, so each step's checkpoint is written
  before the next step starts.

Each framework runs with its own SQLite settings, which differ: asyncflow uses
WAL with ``synchronous=NORMAL`` (a commit survives a crash of the process, not a
power cut, and costs no fsync); LangGraph uses WAL with SQLite's default
``synchronous=FULL`` (an fsync per commit); DBOS uses SQLite's defaults, a
rollback journal with ``synchronous=FULL``. The rows marked "as asyncflow"
rerun a peer with WAL and ``synchronous=NORMAL``, which separates the
framework's own cost from the disk's (``--defaults-only`` skips them).

A peer slower than 1 ms per step in a short probe run is measured on smaller
shapes (200 sequential steps, 50 concurrent runs of 50 steps), and each
framework gets a time budget after its first measurement, so the whole script
stays within about three minutes; the table marks scaled figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import getpass
import importlib.metadata
import sqlite3
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from itertools import count as counter
from pathlib import Path
from typing import Any

import asyncflow as af

#: (database file, concurrent runs, steps per run) -> seconds for all runs to finish.
Measure = Callable[[Path, int, int], Coroutine[Any, Any, float]]

PROBE_STEPS = 100
INSTALL_HINT = "not installed (pip install -e '.[bench]')"


class NotInstalled(Exception):
    """A peer framework is not importable in this environment."""


@dataclass(frozen=True)
class Shape:
    steps: int  # steps of the sequential run
    runs: int  # concurrent runs
    run_steps: int  # steps per concurrent run
    scaled: bool = False


@dataclass
class Row:
    framework: str
    version: str = ""
    settings: str = ""
    shape: Shape | None = None
    us_per_step: float | None = None
    steps_per_s: float | None = None
    note: str = ""


# --- asyncflow ---------------------------------------------------------------------------------


@af.action
async def count(ctx: af.ActionContext) -> None:
    """Read and write one store key, as ``durable.py`` does."""
    ctx.store["n"] = ctx.store.get_or("n", 0) + 1


async def asyncflow_measure(path: Path, runs: int, steps: int) -> float:
    engine = af.Engine(f"sqlite:///{path}")
    flow = engine.register(af.Workflow(f"peers-{steps}", stages=[af.Stage("only", actions=[count] * steps)]))
    async with engine:
        gc.collect()
        started = time.perf_counter()
        handles = [await engine.start(flow) for _ in range(runs)]
        results = [await handle.result() for handle in handles]
        elapsed = time.perf_counter() - started
    assert all(r.status is af.RunStatus.COMPLETED and r.store["n"] == steps for r in results)
    return elapsed


# --- DBOS --------------------------------------------------------------------------------------


@functools.cache
def dbos_workflow() -> Callable[[int], Coroutine[Any, Any, int]]:
    """The DBOS workflow, registered once per process (DBOS keeps a global registry)."""
    try:
        from dbos import DBOS
    except ImportError as exc:
        raise NotInstalled from exc

    @DBOS.step(name="peers_count")
    async def dbos_count(n: int) -> int:
        return n + 1

    @DBOS.workflow(name="peers_chain")
    async def dbos_chain(steps: int) -> int:
        n = 0
        for _ in range(steps):
            n = await dbos_count(n)
        return n

    return dbos_chain


@contextlib.contextmanager
def sqlalchemy_pragmas(enabled: bool) -> Iterator[None]:
    """Give every new SQLAlchemy SQLite connection asyncflow's settings while active."""
    if not enabled:
        yield
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA journal_mode = WAL")
        dbapi_conn.execute("PRAGMA synchronous = NORMAL")

    event.listen(Engine, "connect", on_connect)
    try:
        yield
    finally:
        event.remove(Engine, "connect", on_connect)


async def dbos_run(url: str, chain: Any, runs: int, steps: int) -> tuple[float, list[Any]]:
    """DBOS launched on ``url``: the seconds ``runs`` workflows of ``steps`` took, and their results."""
    from dbos import DBOS

    DBOS(config={"name": "peers", "system_database_url": url, "log_level": "ERROR"})
    try:
        DBOS.launch()
        gc.collect()
        started = time.perf_counter()
        handles = [await DBOS.start_workflow_async(chain, steps) for _ in range(runs)]
        results = [await handle.get_result() for handle in handles]
        return time.perf_counter() - started, results
    finally:
        DBOS.destroy()


def dbos_measure(matched: bool) -> Measure:
    chain = dbos_workflow()

    async def measure(path: Path, runs: int, steps: int) -> float:

        with sqlalchemy_pragmas(matched):
            elapsed, results = await dbos_run(f"sqlite:///{path}", chain, runs, steps)
        assert results == [steps] * runs
        recorded = count_rows(path, "SELECT count(*) FROM operation_outputs")
        assert recorded >= runs * steps, f"DBOS recorded {recorded} step outputs, expected {runs * steps}"
        return elapsed

    return measure


# --- PostgreSQL ----------------------------------------------------------------------------------


def postgres_server(given: str | None) -> str:
    """``given``, else the server the tests use (``ASYNCFLOW_TEST_POSTGRES`` or a local one)."""
    if given:
        return given
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import postgres_server as found

    url = asyncio.run(found.locate())
    if url is None:
        raise SystemExit(found.HOW)
    return url


def in_database(server: str, database: str) -> str:
    """``server``'s URL with ``database`` in place of its database."""
    parts = urllib.parse.urlsplit(server)
    # (SQLAlchemy, which DBOS uses, cannot parse an empty host part: name the user libpq would)
    netloc = parts.netloc or f"{getpass.getuser()}@"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


async def admin(server: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def asyncflow_pg_measure(server: str) -> Measure:
    async def measure(path: Path, runs: int, steps: int) -> float:
        schema = f"peers_{uuid.uuid4().hex[:12]}"
        url = f"{server}{'&' if '?' in server else '?'}schema={schema}"
        try:
            engine = af.Engine(url)
            flow = engine.register(
                af.Workflow(f"peers-{steps}", stages=[af.Stage("only", actions=[count] * steps)])
            )
            async with engine:
                gc.collect()
                started = time.perf_counter()
                handles = [await engine.start(flow) for _ in range(runs)]
                results = [await handle.result() for handle in handles]
                elapsed = time.perf_counter() - started
        finally:
            await admin(server, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        assert all(r.status is af.RunStatus.COMPLETED and r.store["n"] == steps for r in results)
        return elapsed

    return measure


def dbos_pg_measure(server: str) -> Measure:
    chain = dbos_workflow()

    async def measure(path: Path, runs: int, steps: int) -> float:
        import asyncpg

        database = f"peers_dbos_{uuid.uuid4().hex[:12]}"
        await admin(server, f'CREATE DATABASE "{database}"')
        try:
            url = in_database(server, database)
            elapsed, results = await dbos_run(url, chain, runs, steps)
            conn = await asyncpg.connect(url)
            try:
                recorded = await conn.fetchval("SELECT count(*) FROM dbos.operation_outputs")
            finally:
                await conn.close()
        finally:
            await admin(server, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        assert results == [steps] * runs
        assert recorded >= runs * steps, f"DBOS recorded {recorded} step outputs, expected {runs * steps}"
        return elapsed

    return measure


# --- LangGraph ---------------------------------------------------------------------------------


def langgraph_measure(matched: bool) -> Measure:
    try:
        from typing import TypedDict

        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
        from langgraph.graph import END, START, StateGraph
    except ImportError as exc:
        raise NotInstalled from exc

    class State(TypedDict):
        n: int

    async def step(state: State) -> dict[str, int]:
        return {"n": state["n"] + 1}

    @functools.cache
    def graph(steps: int) -> Any:
        builder = StateGraph(State)
        previous = START
        for index in range(steps):
            builder.add_node(f"s{index}", step)
            builder.add_edge(previous, f"s{index}")
            previous = f"s{index}"
        builder.add_edge(previous, END)
        return builder

    async def measure(path: Path, runs: int, steps: int) -> float:
        async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
            await saver.setup()  # creates the tables and sets WAL
            if matched:
                await saver.conn.execute("PRAGMA synchronous = NORMAL")
            app = graph(steps).compile(checkpointer=saver)

            async def one(index: int) -> Any:
                config: Any = {"configurable": {"thread_id": f"t{index}"}, "recursion_limit": steps + 10}
                return await app.ainvoke({"n": 0}, config, durability="sync")

            gc.collect()
            started = time.perf_counter()
            results = await asyncio.gather(*(one(index) for index in range(runs)))
            elapsed = time.perf_counter() - started
        assert all(result["n"] == steps for result in results)
        recorded = count_rows(path, "SELECT count(*) FROM checkpoints")
        assert recorded >= runs * steps, f"LangGraph wrote {recorded} checkpoints, expected {runs * steps}"
        return elapsed

    return measure


# --- harness -----------------------------------------------------------------------------------


def count_rows(path: Path, query: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(query).fetchone()[0])


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


class Bench:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.files = counter()
        self.repeats: int = args.repeats
        self.budget: float = args.budget
        self.slow_us: float = args.slow_us
        self.full = Shape(args.steps, args.runs, args.run_steps)
        self.small = Shape(args.scaled_steps, args.scaled_runs, args.run_steps, scaled=True)

    def once(self, measure: Measure, runs: int, steps: int) -> float:
        path = self.tmp / f"peers-{next(self.files)}.db"
        return asyncio.run(measure(path, runs, steps))

    def run(self, row: Row, make: Callable[[], Measure]) -> Row:
        try:
            measure = make()
        except NotInstalled:
            row.version, row.settings, row.note = "-", "", INSTALL_HINT
            return row
        # A short probe run warms the framework up and tells a slow one from a fast one.
        probe_us = self.once(measure, 1, PROBE_STEPS) / PROBE_STEPS * 1e6
        shape = row.shape = self.small if probe_us > self.slow_us else self.full
        deadline = time.monotonic() + self.budget
        sequential: list[float] = []
        concurrent: list[float] = []
        for attempt in range(self.repeats):
            if attempt and time.monotonic() > deadline:
                row.note = f"best of {attempt}: time budget reached"
                break
            sequential.append(self.once(measure, 1, shape.steps) / shape.steps * 1e6)
            elapsed = self.once(measure, shape.runs, shape.run_steps)
            concurrent.append(shape.runs * shape.run_steps / elapsed)
        row.us_per_step = min(sequential)
        row.steps_per_s = max(concurrent)
        return row


def relative(ratio: float, worse: str, better: str) -> str:
    """``ratio`` > 1 means worse than asyncflow."""
    return f"{ratio:.1f}x {worse}" if ratio >= 1 else f"{1 / ratio:.1f}x {better}"


def print_table(
    rows: list[Row], full: Shape, repeats: int, slow_us: float, settings: str = "SQLite settings"
) -> None:
    reference = rows[0]
    header = ("framework", "version", "µs per committed step", "committed steps/s", settings)
    lines: list[tuple[str, ...]] = []
    for row in rows:
        if row.us_per_step is None or row.steps_per_s is None or row.shape is None:
            lines.append((row.framework, row.version, "-", "-", row.note or row.settings))
            continue
        mark = " *" if row.shape.scaled else ""
        us = f"{row.us_per_step:,.0f} ({row.shape.steps:,}){mark}"
        rate = f"{row.steps_per_s:,.0f} ({row.shape.runs}x{row.shape.run_steps}){mark}"
        if row is not reference and reference.us_per_step and reference.steps_per_s:
            us += f"  {relative(row.us_per_step / reference.us_per_step, 'slower', 'faster')}"
            rate += f"  {relative(reference.steps_per_s / row.steps_per_s, 'fewer', 'more')}"
        lines.append((row.framework, row.version, us, rate, row.settings))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    print("  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip())
    print("  ".join("-" * width for width in widths))
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    print(
        f"\n(n) after a figure: steps of the sequential run; (RxS): R concurrent runs of S steps. "
        f"Best of {repeats}. LangGraph runs with durability=sync."
    )
    for row in rows:
        if row.note and row.note != INSTALL_HINT:
            print(f"{row.framework} ({row.settings}): {row.note}")
    if any(row.shape is not None and row.shape.scaled for row in rows):
        print(
            f"* scaled down: the peer took more than {slow_us:,.0f} µs per step in a {PROBE_STEPS}-step "
            f"probe, so it ran smaller shapes than the {full.steps:,} steps and {full.runs}x{full.run_steps} "
            f"used for the others (the figures are per step, so they still compare, though not exactly)."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="durable asyncflow against DBOS and LangGraph on SQLite")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--steps", type=int, default=1_000, help="steps of the sequential run")
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs")
    parser.add_argument("--run-steps", type=int, default=50, help="steps per concurrent run")
    parser.add_argument("--slow-us", type=float, default=1_000.0, help="µs/step above which to scale down")
    parser.add_argument("--scaled-steps", type=int, default=200, help="sequential steps when scaled down")
    parser.add_argument("--scaled-runs", type=int, default=50, help="concurrent runs when scaled down")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per row before repeats stop")
    parser.add_argument("--defaults-only", action="store_true", help="skip the asyncflow-settings rows")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const="",
        default=None,
        metavar="URL",
        help="also measure asyncflow and DBOS on PostgreSQL (default: the tests' server)",
    )
    parser.add_argument("--postgres-only", action="store_true", help="skip the SQLite table")
    args = parser.parse_args(argv)
    if args.postgres_only and args.postgres is None:
        args.postgres = ""

    matched = "WAL, sync=NORMAL, as asyncflow"
    plans: list[tuple[Row, Callable[[], Measure]]] = [
        (Row("asyncflow", af.__version__, "WAL, sync=NORMAL"), lambda: asyncflow_measure),
        (
            Row("DBOS", version("dbos"), "rollback journal, sync=FULL (default)"),
            lambda: dbos_measure(matched=False),
        ),
        (
            Row("LangGraph", version("langgraph"), "WAL, sync=FULL (default)"),
            lambda: langgraph_measure(matched=False),
        ),
    ]
    if not args.defaults_only:
        plans.insert(2, (Row("DBOS", version("dbos"), matched), lambda: dbos_measure(matched=True)))
        plans.append(
            (
                Row("LangGraph", version("langgraph"), matched),
                lambda: langgraph_measure(matched=True),
            )
        )

    tables: list[tuple[str, str, list[tuple[Row, Callable[[], Measure]]]]] = []
    if not args.postgres_only:
        tables.append(("SQLite", "SQLite settings", plans))
    if args.postgres is not None:
        server = postgres_server(args.postgres)
        same = "PostgreSQL, same server"
        tables.append(
            (
                "PostgreSQL",
                "database",
                [
                    (Row("asyncflow", af.__version__, same), lambda: asyncflow_pg_measure(server)),
                    (Row("DBOS", version("dbos"), same), lambda: dbos_pg_measure(server)),
                ],
            )
        )
    for title, settings, table in tables:
        started = time.monotonic()
        rows: list[Row] = []
        with tempfile.TemporaryDirectory() as tmp:
            bench = Bench(Path(tmp), args)
            if title == "PostgreSQL":  # (every row runs the full shapes: they take seconds there)
                bench.slow_us = float("inf")
            missing: set[str] = set()
            for row, make in table:
                if row.framework in missing:
                    continue  # listed once
                print(f"measuring {row.framework} ({row.settings}) ...", flush=True)
                rows.append(bench.run(row, make))
                if rows[-1].note == INSTALL_HINT:
                    missing.add(row.framework)
        print(f"\nDurable steps on {title}, one process ({time.monotonic() - started:.0f} s in all)\n")
        print_table(rows, bench.full, args.repeats, args.slow_us, settings)
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
