"""Loading a long run back: ``SQLiteBackend.load`` of a run of 10,000 steps, against reading its rows.

Run with ``python benchmarks/load.py`` (``--steps``, ``--repeats``). An engine
runs one durable run of ``--steps`` actions (100 stages), each writing one of
the stage's store keys, into a fresh SQLite file. Then, median of
``--repeats``, in the same process:

- **rows** (the baseline): the statements ``load`` runs, on a plain
  ``sqlite3`` connection to the same file: the run's row and all its
  checkpoint rows, fetched and nothing more;
- **load, in flight**: ``load`` of the run as recovery meets it (no stored
  steps: a copy of the file with the run's ``steps`` cleared);
- **load, finished**: ``load`` of the finished run (its stored steps read too,
  as ``engine.wait`` of a run that ended elsewhere reads them).

Each is printed in ms and as a ratio to the rows of the same run: what
decoding the rows into a store, checkpoints and steps adds to reading them.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncflow as af
from asyncflow.backends import SQLiteBackend


@af.action
async def bump(ctx: af.ActionContext) -> None:
    """Count in the stage's own store key: every checkpoint carries a store change."""
    key = f"count.{ctx.stage.id}"
    ctx.store[key] = ctx.store.get_or(key, 0) + 1


def workflow(steps: int) -> af.Workflow:
    """``steps`` actions in 100 stages."""
    per_stage = max(steps // 100, 1)
    return af.Workflow(
        "long", stages=[af.Stage(f"s{i}", actions=[bump] * per_stage) for i in range(steps // per_stage)]
    )


async def build(path: Path, steps: int) -> str:
    """Run the workflow to its end in a fresh file at ``path``; its run id."""
    async with af.Engine(f"sqlite:///{path}") as engine:
        handle = await engine.start(workflow(steps))
        result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED, result.status
    return handle.run_id


def median_ms(repeats: int, once: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def median_ms_async(repeats: int, once: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await once()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def rows_ms(path: Path, run_id: str, repeats: int) -> float:
    """The baseline: the run's row and its checkpoint rows, fetched on a plain connection."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:

        def read() -> None:
            conn.execute("BEGIN")
            run_no = conn.execute("SELECT run_no, * FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
            conn.execute(
                "SELECT seq, step_key, kind, changes, ops, attempts, at FROM checkpoints "
                "WHERE run_no = ? ORDER BY seq",
                (run_no,),
            ).fetchall()
            conn.execute("COMMIT")

        read()
        return median_ms(repeats, read)
    finally:
        conn.close()


async def load_ms(path: Path, run_id: str, repeats: int) -> tuple[float, int, int]:
    """``SQLiteBackend.load`` of the run; and how many checkpoints and store entries it gave."""
    async with SQLiteBackend(path) as backend:
        saved = await backend.load(run_id)
        assert saved is not None
        return (
            await median_ms_async(repeats, lambda: backend.load(run_id)),
            len(saved.checkpoints),
            len(saved.store),
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        finished = Path(tmp) / "finished.db"
        run_id = await build(finished, args.steps)
        in_flight = Path(tmp) / "in-flight.db"
        shutil.copy(finished, in_flight)
        conn = sqlite3.connect(in_flight)
        with conn:
            conn.execute("UPDATE runs SET steps = NULL WHERE run_id = ?", (run_id,))
        conn.close()
        base = rows_ms(finished, run_id, args.repeats)
        flight, checkpoints, entries = await load_ms(in_flight, run_id, args.repeats)
        done, _, _ = await load_ms(finished, run_id, args.repeats)
    print(f"a run of {checkpoints:,} checkpoints and {entries} store keys, median of {args.repeats}:")
    print(f"  rows (baseline)     {base:8.2f} ms   1.00x")
    print(f"  load, in flight     {flight:8.2f} ms   {flight / base:.2f}x")
    print(f"  load, finished      {done:8.2f} ms   {done / base:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
