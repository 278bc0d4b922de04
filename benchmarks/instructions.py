"""Middleware costs counted in machine instructions, not seconds (valgrind's callgrind).

Run with ``make bench-instructions`` (or ``python benchmarks/instructions.py``);
needs ``valgrind`` on the PATH (Debian: ``apt-get install valgrind``).

A shared VM's clock swings by tens of percent from one minute to the next,
so a sub-microsecond figure such as one middleware layer is lost in the
noise of ``middleware.py``. An instruction count does not depend on what
else the machine is doing. Each figure is the difference between two runs
of a child process that differ only in the middleware (so start-up, imports
and building the workflow cancel out), divided by the number of wrapped
steps, and set against a plain ``await`` of a no-op coroutine counted the
same way.

Every child runs with ``PYTHONHASHSEED=0`` and with the collector off while
it runs the case. With the collector on, figures moved by 6-7% when nothing
but ``PYTHONPATH`` changed, and whole runs of this script gave figures up to
6% apart: a collection costs what the whole process holds, and one side of a
difference triggers more of them than the other. With it off, the same
comparison moved the figures by less than 0.4%.

Figures: instructions per wrapped step for the first and for a further
empty layer at the action, stage, actions-block and run levels (the shapes
of ``middleware.py``). Target (issue 3): 0.5 µs per layer, which is 5.6
plain awaits on the machine the target was set on (a plain await took
0.09 µs there).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from middleware import _noop_fn, empty, noop  # the shapes of middleware.py, beside this file

import asyncflow as af

TARGET_AWAITS = 0.5 / 0.09  # the target in plain awaits: 0.5 µs where a plain await took 0.09 µs


def _workflow(level: str, layers: int, steps: int) -> af.Workflow:
    if level == "action":
        return af.Workflow("w", stages=[af.Stage("only", actions=[noop] * steps)])
    if level == "run":
        return af.Workflow("w", stages=[af.Stage("only", actions=[noop])])
    stages = []
    for index in range(steps):
        stage = af.Stage(f"s{index}", actions=[noop])
        for _ in range(layers if level == "actions" else 0):
            stage.use(empty)
        stages.append(stage)
    return af.Workflow("w", stages=stages)


def _runner(level: str, layers: int) -> af.Runner:
    option = {"action": "action_middleware", "stage": "stage_middleware", "run": "middleware"}.get(level)
    return af.Runner(**{option: [empty] * layers}) if option else af.Runner()


async def _child(case: str, steps: int, run: bool) -> None:
    """What one counted child process does: build the case, and run it if ``run``.

    The collector is off from there on, as ``timeit`` has it: what a collection
    costs depends on everything the process holds, not on what is measured,
    and the collections one side triggers and the other does not moved figures
    by several percent with nothing but ``PYTHONPATH`` changed.
    """
    if case == "plain":
        gc.disable()
        if run:
            for _ in range(steps):
                await _noop_fn(None)
        return
    level, layers = case.split(":")
    workflow = _workflow(level, int(layers), steps)
    runner = _runner(level, int(layers))
    gc.disable()
    if not run:
        return
    for _ in range(steps if level == "run" else 1):
        await runner.run(workflow)


def _count(case: str, steps: int, run: bool) -> int:
    """Instructions callgrind counts for one child process."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={os.path.join(tmp, 'out')}",
            sys.executable,
            __file__,
            "--child",
            case,
            str(steps),
            "run" if run else "build",
        ]
        # A fixed hash seed: start-up then takes the same instructions every time, so the
        # difference of two counts is the measured steps' alone.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def counts(jobs: list[tuple[str, bool]], steps: int) -> dict[tuple[str, bool], int]:
    """Count each ``(case, run)`` in its own process, two at a time (counts do not depend on timing)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {job: pool.submit(_count, job[0], steps, job[1]) for job in jobs}
        return {job: future.result() for job, future in futures.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="asyncflow middleware costs in instructions (callgrind)")
    parser.add_argument("--steps", type=int, default=2_000, help="wrapped steps per count (default 2,000)")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "STEPS", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, steps, run = args.child
        asyncio.run(_child(case, int(steps), run == "run"))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not on the PATH (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2

    steps = args.steps
    print(f"asyncflow {af.__version__}: middleware costs in instructions (callgrind), {steps:,} steps\n")
    levels = ("action", "stage", "actions", "run")
    jobs = [("plain", True), ("plain", False)]
    jobs += [(f"{level}:{layers}", True) for level in levels for layers in (0, 1, 2)]
    # Only an actions-block layer is added while building (stage.use); the others cancel out.
    jobs += [(f"actions:{layers}", False) for layers in (0, 1, 2)]
    found = counts(jobs, steps)

    def ran(case: str) -> int:
        built = found.get((case, False), 0)
        return found[(case, True)] - built

    plain = ran("plain") / steps
    print(f"    plain await    {plain:8,.0f} instructions   (1 plain await)\n")
    print(f"(a) empty middleware layers, per wrapped step   (target <= {TARGET_AWAITS:.1f} plain awaits)")
    print("    level          first layer                  each further layer")
    for level in levels:
        none, one, two = (ran(f"{level}:{layers}") / steps for layers in (0, 1, 2))
        first, further = one - none, two - one
        name = "actions block" if level == "actions" else level
        a = f"{first:7,.0f} ({first / plain:4.1f} awaits)"
        b = f"{further:7,.0f} ({further / plain:4.1f} awaits)"
        print(f"    {name:<14} {a}    {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
