"""Orchestration overhead of asyncflow, measured against a plain ``await`` chain in the same process.

Run with ``make bench`` (or ``python benchmarks/overhead.py``). Figures:

(a) per-action cost of one stage of 2,000 no-op actions, best of 7, against
    2,000 plain awaits of the same no-op coroutine;
(b) 5,000 concurrent runs of a 10-action workflow: runs/s and peak RSS,
    against 5,000 concurrent tasks of 10 plain awaits;
(c) cost per dynamic stage insertion, for 1,000 and 10,000 insertions in one
    run (the ratio shows whether the cost grows with the plan).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import time
from collections.abc import Awaitable, Callable

import asyncflow as af

ACTIONS = 2_000
CONCURRENT_RUNS = 5_000
ACTIONS_PER_RUN = 10


async def _noop_fn(ctx: af.ActionContext | None) -> None:
    return None


noop = af.action(name="noop")(_noop_fn)


def _best_of(repeats: int, measure: Callable[[], Awaitable[float]]) -> float:
    async def loop() -> float:
        best = float("inf")
        for _ in range(repeats):
            gc.collect()
            best = min(best, await measure())
        return best

    return asyncio.run(loop())


def per_action(repeats: int) -> tuple[float, float]:
    """(asyncflow µs/action, plain await µs/call), best of ``repeats``."""
    workflow = af.Workflow("overhead", stages=[af.Stage("only", actions=[noop] * ACTIONS)])

    async def flow() -> float:
        started = time.perf_counter()
        await af.run(workflow)
        return time.perf_counter() - started

    async def plain() -> float:
        started = time.perf_counter()
        for _ in range(ACTIONS):
            await _noop_fn(None)
        return time.perf_counter() - started

    return (
        _best_of(repeats, flow) / ACTIONS * 1e6,
        _best_of(repeats, plain) / ACTIONS * 1e6,
    )


def concurrent_runs(repeats: int) -> tuple[float, float, float]:
    """(asyncflow runs/s, plain runs/s, peak RSS MiB) for 5,000 concurrent 10-action runs."""
    workflow = af.Workflow("ten", stages=[af.Stage("only", actions=[noop] * ACTIONS_PER_RUN)])

    async def flow() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(af.run(workflow) for _ in range(CONCURRENT_RUNS)))
        return time.perf_counter() - started

    async def one_plain() -> None:
        for _ in range(ACTIONS_PER_RUN):
            await _noop_fn(None)

    async def plain() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(one_plain() for _ in range(CONCURRENT_RUNS)))
        return time.perf_counter() - started

    flow_s = _best_of(repeats, flow)
    plain_s = _best_of(repeats, plain)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return CONCURRENT_RUNS / flow_s, CONCURRENT_RUNS / plain_s, peak_mib


def insertion_cost(count: int, repeats: int, *, collect: bool = True) -> float:
    """µs per dynamic stage insertion in one run that inserts ``count`` stages.

    ``collect=False`` pauses Python's cyclic garbage collector during the run,
    which separates the library's own cost from the collector's, whose passes
    grow with the number of live objects.
    """

    @af.action(name="insert")
    async def insert(ctx: af.ActionContext) -> None:
        for index in range(count):
            ctx.add_dynamic_stage(af.Stage(f"dyn-{index}", actions=[noop]))

    workflow = af.Workflow("inserts", stages=[af.Stage("root", actions=[insert])])

    async def flow() -> float:
        if not collect:
            gc.disable()
        try:
            started = time.perf_counter()
            await af.run(workflow, max_insertions=count)
            return time.perf_counter() - started
        finally:
            gc.enable()

    return _best_of(repeats, flow) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=7, help="best of N (default 7)")
    args = parser.parse_args(argv)
    repeats: int = args.repeats

    print(f"asyncflow {af.__version__} on Python {sys.version.split()[0]}, best of {repeats}\n")

    flow_us, plain_us = per_action(repeats)
    print(f"(a) one stage of {ACTIONS:,} no-op actions")
    print(f"    plain await      {plain_us:8.3f} µs/call")
    print(
        f"    asyncflow        {flow_us:8.3f} µs/action   ({flow_us / plain_us:5.1f}x plain)   target <= 2 µs"
    )

    runs_s, plain_runs_s, peak = concurrent_runs(max(1, repeats // 2))
    print(f"\n(b) {CONCURRENT_RUNS:,} concurrent runs of {ACTIONS_PER_RUN} actions")
    print(f"    plain await      {plain_runs_s:10,.0f} runs/s")
    print(
        f"    asyncflow        {runs_s:10,.0f} runs/s   ({plain_runs_s / runs_s:5.1f}x plain)   "
        f"target >= 15,000; peak RSS {peak:.0f} MiB"
    )

    small = insertion_cost(1_000, repeats)
    large = insertion_cost(10_000, max(1, repeats // 2))
    growth = (large * 10_000) / (small * 1_000)
    print("\n(c) dynamic stage insertions in one run (each stage runs one no-op action)")
    print(f"    1,000 insertions   {small:8.2f} µs/insertion")
    print(f"    10,000 insertions  {large:8.2f} µs/insertion")
    print(f"    10,000 cost {growth:.1f}x what 1,000 cost   (target <= 12x: linear growth)")
    small_nogc = insertion_cost(1_000, repeats, collect=False)
    large_nogc = insertion_cost(10_000, max(1, repeats // 2), collect=False)
    print(
        f"    with the garbage collector paused: {small_nogc:.2f} and {large_nogc:.2f} µs/insertion, "
        f"{large_nogc * 10 / small_nogc:.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
