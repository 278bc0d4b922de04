"""Listing runs as they pile up: a filtered page of ``list_runs`` against an unfiltered one, same run.

Run with ``python benchmarks/scale.py`` (``--sizes 1000,1000000``). For each
size, a fresh SQLite file is filled with that many finished runs (written
straight into the file, as an engine would have left them: 98% completed,
1% failed, 1% cancelled, over ten workflows of which one has 1% of the
runs), then each of these is timed through ``SQLiteBackend.list_runs``,
50 runs a page, median of ``--repeats``:

- the first page, unfiltered (the baseline), and with each filter: a
  common status, a rare status, a rare workflow, a workflow and a status;
- a page deep in the listing (after a cursor from the middle of the file).

Each figure is printed as a ratio to the unfiltered page of the same size.
Target (issue 16): every filtered page within 3x of an unfiltered one, at
1,000 and at 1,000,000 runs. ``--plans`` prints SQLite's ``EXPLAIN QUERY
PLAN`` of every statement; ``--compare`` then drops the indexes that schema 6
added and times the same pages again (the listing as it was before).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import asyncflow as af
from asyncflow.backends import SQLiteBackend
from asyncflow.backends.base import encode_cursor
from asyncflow.backends.sqlite.backend import list_query

T0 = 1_800_000_000.0
PAGE = 50
CASES: list[tuple[str, af.RunStatus | None, str | None]] = [
    ("unfiltered", None, None),
    ("status=completed (98%)", af.RunStatus.COMPLETED, None),
    ("status=failed (1%)", af.RunStatus.FAILED, None),
    ("workflow=rare (1%)", None, "rare"),
    ("workflow=w7, failed", af.RunStatus.FAILED, "w7"),
]


def status_of(i: int) -> str:
    """98% completed, 1% failed, 1% cancelled, spread through the file."""
    return "failed" if i % 100 == 7 else "cancelled" if i % 100 == 53 else "completed"


def workflow_of(i: int) -> str:
    """Nine common workflows and one with 1% of the runs."""
    return "rare" if i % 100 == 11 else f"w{i % 9}"


@af.action
async def step(ctx: af.ActionContext) -> None:
    """One step of the runs the file is filled with."""
    ctx.store["n"] = ctx.store.get_or("n", 0) + 1


async def create(path: Path) -> str:
    """A file at this asyncflow's schema with one real run of five steps; that run's recorded steps."""
    flow = af.Workflow("scale", stages=[af.Stage("s", actions=[step] * 5)])
    engine = af.Engine(SQLiteBackend(path))
    engine.register(flow)
    async with engine:
        handle = await engine.start(flow)
        await handle.result()
    conn = sqlite3.connect(path)
    try:
        (steps,) = conn.execute("SELECT steps FROM runs").fetchone()
        conn.execute("DELETE FROM runs")
        conn.commit()
    finally:
        conn.close()
    return str(steps)


def fill(path: Path, runs: int, steps: str) -> None:
    """``runs`` finished runs, one second apart, each with ``steps`` (as the engine records them)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO runs (run_id, workflow_id, status, created_at, updated_at, steps) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            ((f"run-{i:08d}", workflow_of(i), status_of(i), T0 + i, T0 + i + 1, steps) for i in range(runs)),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()


async def page_time(
    backend: SQLiteBackend,
    status: af.RunStatus | None,
    workflow: str | None,
    cursor: str | None,
    repeats: int,
) -> float:
    """Median µs of one page of ``list_runs``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        page = await backend.list_runs(status=status, workflow_id=workflow, limit=PAGE, cursor=cursor)
        times.append(time.perf_counter() - started)
        assert page.runs, "a page of the benchmark came back empty"
    return statistics.median(times) * 1e6


def plans(path: Path, cursor: str) -> list[str]:
    """EXPLAIN QUERY PLAN of each case's statement, without and with a cursor."""
    conn = sqlite3.connect(path)
    lines = []
    try:
        for name, status, workflow in CASES:
            for after in (None, cursor):
                sql, params = list_query(status, workflow, after, PAGE + 1)
                plan = " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
                lines.append(f"    {name + (', after a cursor' if after else ''):<40} {plan}")
    finally:
        conn.close()
    return lines


async def timings(path: Path, size: int, repeats: int, lines: list[str]) -> None:
    """Time every case on ``path`` (first page and a mid-file page), as ratios to the unfiltered ones."""
    middle = encode_cursor(T0 + size // 2, f"run-{size // 2:08d}")
    async with SQLiteBackend(path) as backend:
        base = base_deep = 0.0
        for name, status, workflow in CASES:
            first = await page_time(backend, status, workflow, None, repeats)
            deep = await page_time(backend, status, workflow, middle, repeats)
            if status is None and workflow is None:
                base, base_deep = first, deep
            lines.append(
                f"    {name:<26} first page {first:9.0f} µs ({first / base:5.1f}x)   "
                f"mid-file page {deep:9.0f} µs ({deep / base_deep:5.1f}x)"
            )


async def measure(size: int, repeats: int, show_plans: bool, compare: bool, tmp: Path) -> list[str]:
    path = tmp / f"scale-{size}.db"
    steps = await create(path)
    started = time.perf_counter()
    fill(path, size, steps)
    lines = [
        f"{size:,} runs (filled in {time.perf_counter() - started:.1f} s, {path.stat().st_size / 1e6:.0f} MB)"
    ]
    await timings(path, size, repeats, lines)
    if show_plans:
        lines.append("  query plans:")
        lines.extend(plans(path, encode_cursor(T0 + size // 2, f"run-{size // 2:08d}")))
    if compare:
        # The same file as schema 5 had it: only the index in creation order, and the claims' index.
        conn = sqlite3.connect(path)
        try:
            for index in (
                "runs_by_status_created",
                "runs_by_workflow_created",
                "runs_by_workflow_status_created",
            ):
                conn.execute(f"DROP INDEX {index}")
            conn.execute("ANALYZE")
        finally:
            conn.close()
        lines.append("  without the indexes of schema 6 (as schema 5 was):")
        await timings(path, size, repeats, lines)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="list_runs with many runs in the file")
    parser.add_argument("--sizes", default="1000,1000000", help="comma-separated run counts")
    parser.add_argument("--repeats", type=int, default=21, help="median of N pages (default 21)")
    parser.add_argument("--plans", action="store_true", help="print EXPLAIN QUERY PLAN of each statement")
    parser.add_argument(
        "--compare", action="store_true", help="then drop schema 6's indexes and time the same pages again"
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    print(
        f"asyncflow {af.__version__}: list_runs, {PAGE} runs a page, median of {args.repeats}; "
        "ratios to the unfiltered page\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            for line in asyncio.run(measure(size, args.repeats, args.plans, args.compare, Path(tmp))):
                print(line)
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
