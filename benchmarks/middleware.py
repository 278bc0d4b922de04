"""Cost of middleware layers and of event emission, against the same runs without them.

Run with ``make bench`` (or ``python benchmarks/middleware.py``). Figures:

(a) cost of one empty middleware layer at each level, per wrapped step:
    action level (2,000 actions in one stage), stage and actions-block level
    (2,000 one-action stages), run level (2,000 one-action runs); each
    figure is the median of many pairs of runs timed back to back, with the
    collector off while a pair runs (as ``timeit`` does);
(b) a run of 2,000 actions with 3 action-level middlewares against none;
(c) event emission with one subscriber draining as it goes, per action,
    against no listener; and the no-listener path against a plain await.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio

import asyncflow as af

STEPS = 2_000


async def _noop_fn(ctx: af.ActionContext | None) -> None:
    return None


noop = af.action(name="noop")(_noop_fn)


async def empty(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    await call_next()


def best(repeats: int, measure: Callable[[], Awaitable[float]]) -> float:
    async def loop() -> float:
        result = float("inf")
        for _ in range(repeats):
            gc.collect()
            result = min(result, await measure())
        return result

    return asyncio.run(loop())


def timed_run(runner: af.Runner, workflow: af.Workflow, runs: int = 1) -> Callable[[], Awaitable[float]]:
    async def measure() -> float:
        started = time.perf_counter()
        for _ in range(runs):
            await runner.run(workflow)
        return time.perf_counter() - started

    return measure


def one_stage() -> af.Workflow:
    return af.Workflow("one-stage", stages=[af.Stage("only", actions=[noop] * STEPS)])


def many_stages(block_mw: int = 0) -> af.Workflow:
    stages = []
    for index in range(STEPS):
        stage = af.Stage(f"s{index}", actions=[noop])
        for _ in range(block_mw):
            stage.use(empty)
        stages.append(stage)
    return af.Workflow("many-stages", stages=stages)


def paired(pairs: int, base: Callable[[], Awaitable[float]], other: Callable[[], Awaitable[float]]) -> float:
    """The median of ``pairs`` differences ``other - base``, each pair timed back to back.

    A shared VM changes speed from one second to the next by more than one
    layer costs; two runs timed one right after the other see the same
    speed, and the median of many such pairs ignores the pairs a change of
    speed fell into. (The difference of the best of N runs of each side
    came out with either sign.)
    """

    async def loop() -> float:
        differences = []
        for _ in range(pairs):
            gc.collect()
            # As timeit does: with the collector off, a pair does not also time a collection
            # of the whole heap that one side happened to trigger and the other did not.
            gc.disable()
            try:
                first = await base()
                differences.append(await other() - first)
            finally:
                gc.enable()
        return statistics.median(differences)

    return asyncio.run(loop())


def layer_costs(pairs: int) -> dict[str, tuple[float, float]]:
    """µs per wrapped step at each level: (the first empty layer, each further one).

    The first layer also pays for leaving the no-middleware fast path (a
    context object per step); a further layer pays for itself only.
    """
    bare = af.Runner()
    single = af.Workflow("single", stages=[af.Stage("only", actions=[noop])])

    def runners(option: str) -> tuple[af.Runner, af.Runner, af.Runner]:
        return bare, af.Runner(**{option: [empty]}), af.Runner(**{option: [empty, empty]})

    def per_level(
        runner_set: tuple[af.Runner, af.Runner, af.Runner], flows: tuple[af.Workflow, ...], runs: int = 1
    ) -> tuple[float, float]:
        zero, one, two = (timed_run(r, f, runs=runs) for r, f in zip(runner_set, flows, strict=True))
        return paired(pairs, zero, one) / STEPS * 1e6, paired(pairs, one, two) / STEPS * 1e6

    stages = many_stages()
    return {
        "action": per_level(runners("action_middleware"), (one_stage(),) * 3),
        "stage": per_level(runners("stage_middleware"), (stages,) * 3),
        "actions block": per_level(
            (bare, bare, bare), (stages, many_stages(block_mw=1), many_stages(block_mw=2))
        ),
        "run": per_level(runners("middleware"), (single,) * 3, runs=STEPS),
    }


def three_layers(repeats: int) -> tuple[float, float]:
    """(µs/action with none, µs/action with 3 action-level middlewares)."""
    none = best(repeats, timed_run(af.Runner(), one_stage())) / STEPS * 1e6
    three = best(repeats, timed_run(af.Runner(action_middleware=[empty, empty, empty]), one_stage()))
    return none, three / STEPS * 1e6


def events(repeats: int) -> tuple[float, float, float]:
    """(plain await µs, no-listener µs/action, one-subscriber µs/action)."""
    workflow = one_stage()
    quiet = best(repeats, timed_run(af.Runner(), workflow)) / STEPS * 1e6

    async def with_subscriber() -> float:
        runner = af.Runner()
        received = 0
        async with runner.subscribe(buffer=100_000) as stream:

            async def drain() -> None:
                nonlocal received
                async for event in stream:
                    received += 1
                    if event.kind is af.EventKind.RUN_FINISHED:
                        return

            async with anyio.create_task_group() as group:
                group.start_soon(drain)
                started = time.perf_counter()
                await runner.run(workflow)
                elapsed = time.perf_counter() - started
        assert received >= 2 * STEPS
        return elapsed

    listened = best(repeats, with_subscriber) / STEPS * 1e6
    return plain_await(repeats), quiet, listened


async def _plain() -> float:
    started = time.perf_counter()
    for _ in range(STEPS):
        await _noop_fn(None)
    return time.perf_counter() - started


def plain_await(repeats: int) -> float:
    """µs per plain ``await`` of the no-op coroutine: the baseline of this run."""
    return best(repeats, _plain) / STEPS * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="asyncflow middleware and event costs")
    parser.add_argument("--repeats", type=int, default=7, help="best of N for (b) and (c) (default 7)")
    parser.add_argument(
        "--pairs", type=int, default=60, help="timed pairs per layer figure of (a), median (default 60)"
    )
    args = parser.parse_args(argv)
    repeats: int = args.repeats

    print(
        f"asyncflow {af.__version__}: middleware and events, "
        f"best of {repeats}, medians of {args.pairs} pairs\n"
    )
    base_before = plain_await(repeats)
    costs = layer_costs(args.pairs)
    base = min(base_before, plain_await(repeats))
    print(f"    plain await    {base:7.3f} µs/call   (the baseline of this run; x = times a plain await)\n")
    print(
        "(a) empty middleware layers, cost per wrapped step, median of timed pairs"
        "   (target <= 0.5 µs per layer)"
    )
    print("    level          first layer          each further layer")
    for level, (first, further) in costs.items():
        first_x, further_x = first / base, further / base
        print(f"    {level:<14} {first:8.3f} µs ({first_x:4.1f}x)   {further:8.3f} µs ({further_x:4.1f}x)")

    none, three = three_layers(repeats)
    print(f"\n(b) {STEPS:,} actions, 3 action-level middlewares")
    print(f"    none           {none:7.3f} µs/action")
    print(f"    three          {three:7.3f} µs/action   (+{(three - none) / 3:.3f} µs per layer)")

    plain, quiet, listened = events(repeats)
    print(f"\n(c) events, {STEPS:,} actions")
    print(f"    plain await    {plain:7.3f} µs/call")
    print(f"    no listener    {quiet:7.3f} µs/action   (target <= 2 µs: nobody listening costs nothing)")
    print(f"    1 subscriber   {listened:7.3f} µs/action   (+{listened - quiet:.3f} µs for 2 events)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
