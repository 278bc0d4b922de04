"""The cost of running a stage in a child process, against the same stage in process, in the same run.

Run with ``python benchmarks/isolation.py`` (``make bench`` runs it too; ``--quick``: fewer
repeats). Figures:

(a) one stage of one no-op action, per run: in process (the baseline), in
    a fresh child each time, and in a warm child of an ``af.ProcessPool``
    (target: at most 1 ms per stage round trip with the pool);
(b) messages from a child to the parent's handler, per second, against the
    same action sending in process (target: at least 50,000 messages/s);
(c) a CPU-bound stage in two runs at once: in process (one core, the GIL)
    against isolated in a pool of 2 children (two cores), as a speed-up: the
    median of the ratios of pairs timed back to back, with the machine's load
    average (on a machine that other work keeps busy, two children cannot
    have two cores).

Every figure is the median of its repeats, and each isolated figure is
given as a ratio against its in-process baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import asyncflow as af

LOOPS = 3_000_000  # (c): about half a second of pure Python on the 2-vCPU VM


@af.action
async def noop(ctx: af.ActionContext) -> None:
    """Nothing: what is measured is the stage around it."""


@af.action
async def talk(ctx: af.ActionContext) -> None:
    """Send ``count`` messages (from the store) as fast as it can."""
    send = ctx.send
    for n in range(ctx.store.get("count", int)):
        await send("tick", n)


class Burn(af.Action):
    """Spin the CPU for ``loops`` iterations of pure Python."""

    def __init__(self, loops: int) -> None:
        self.loops = loops

    async def execute(self, ctx: af.ActionContext) -> None:
        """Burn, and keep the result (so that nothing is optimised away)."""
        total = 0
        for n in range(self.loops):
            total += n * n % 7
        ctx.store["total"] = total


def _workflow(action: af.Action, isolated: bool) -> af.Workflow:
    return af.Workflow(
        "bench", stages=[af.Stage("s", actions=[action], isolation="process" if isolated else None)]
    )


async def _median_run(runner: af.Runner, workflow: af.Workflow, repeats: int, **store: object) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await runner.run(workflow, store=store)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def round_trip(repeats: int, fresh_repeats: int) -> dict[str, float]:
    """(a): seconds per run of a one-action stage: in process, fresh child, warm pool."""
    runner = af.Runner()
    here = await _median_run(runner, _workflow(noop, False), repeats)
    fresh = await _median_run(runner, _workflow(noop, True), fresh_repeats)
    async with af.ProcessPool(size=1) as pool:
        pooled = af.Runner(process_pool=pool)
        await pooled.run(_workflow(noop, True))  # the child imports this module once
        warm = await _median_run(pooled, _workflow(noop, True), repeats)
    return {"in process": here, "fresh child": fresh, "warm pool": warm}


async def throughput(count: int, repeats: int) -> dict[str, float]:
    """(b): messages per second reaching a handler, in process and from a warm child."""
    received = 0

    def handler(message: af.Message) -> None:
        nonlocal received
        received += 1

    rates = {}
    async with af.ProcessPool(size=1) as pool:
        for label, isolated in (("in process", False), ("from a child", True)):
            runner = af.Runner(process_pool=pool)
            runner.on_message("tick", handler)
            workflow = _workflow(talk, isolated)
            await runner.run(workflow, store={"count": 10})
            empty = await _median_run(runner, workflow, repeats, count=0)
            received = 0
            full = await _median_run(runner, workflow, repeats, count=count)
            assert received == count * repeats, (received, count, repeats)
            rates[label] = count / max(full - empty, 1e-9)
    return rates


async def cpu_bound(repeats: int) -> dict[str, float]:
    """(c): seconds for two runs of a CPU-bound stage at once, in process and over 2 children.

    The two are timed back to back, ``repeats`` times: the speed-up is the median of
    the ratios of each pair, so a change in what else the machine runs between pairs
    moves both sides of a ratio.
    """
    times: dict[str, list[float]] = {"in process": [], "2 children": []}
    ratios = []
    async with af.ProcessPool(size=2) as pool:
        runner = af.Runner(process_pool=pool)
        workflows = {"in process": _workflow(Burn(LOOPS), False), "2 children": _workflow(Burn(LOOPS), True)}
        await _pair(runner, workflows["2 children"])  # both children import this module first
        for _ in range(repeats):
            for label, workflow in workflows.items():
                times[label].append(await _pair(runner, workflow))
            ratios.append(times["in process"][-1] / times["2 children"][-1])
    figures = {label: statistics.median(values) for label, values in times.items()}
    figures["speed-up"] = statistics.median(ratios)
    return figures


async def _pair(runner: af.Runner, workflow: af.Workflow) -> float:
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        group.create_task(runner.run(workflow))
        group.create_task(runner.run(workflow))
    return time.perf_counter() - started


async def main(quick: bool) -> None:
    """Print the three figures, each with its in-process baseline."""
    trips = await round_trip(50 if quick else 400, 3 if quick else 10)
    here = trips["in process"]
    print("(a) one isolated stage of one no-op action, per run (median)")
    for label, seconds in trips.items():
        ratio = "" if label == "in process" else f"   {seconds / here:8.1f}x in process"
        print(f"    {label:<13} {seconds * 1e3:9.3f} ms{ratio}")
    extra = (trips["warm pool"] - here) * 1e3
    print(f"    warm pool round trip over in process: {extra:.3f} ms (target <= 1 ms)")

    rates = await throughput(5_000 if quick else 50_000, 3 if quick else 5)
    print("(b) messages to a handler, per second (median)")
    for label, rate in rates.items():
        ratio = "" if label == "in process" else f"   {rate / rates['in process']:8.2f}x in process"
        print(f"    {label:<13} {rate:12,.0f} /s{ratio}")
    print("    target from a child: >= 50,000 /s")

    cpu = await cpu_bound(3 if quick else 9)
    print(f"(c) two runs at once of a stage of {LOOPS:,} loops of pure Python (median)")
    for label in ("in process", "2 children"):
        print(f"    {label:<13} {cpu[label]:9.3f} s")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"    speed-up over 2 children: {cpu['speed-up']:.2f}x (median of pairs; load average {load})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test)")
    asyncio.run(main(parser.parse_args().quick))
