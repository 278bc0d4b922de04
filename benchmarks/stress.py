"""Crash stress: land many ``kill -9`` on engine processes, restart them, and check every run survived.

Run with ``make stress`` (500 kills) or ``python benchmarks/stress.py --kills N``.
Kills rotate through the persistence boundaries (before a run's start
record, before a checkpoint's commit, right after it) and random moments
while actions run; the rules checked after each round are those of
``tests/crash_harness.py``. Prints the figures (kills, restarts, runs,
actions executed, re-executions and the most of one step, time from restart
to the first action) and the verdict; exits 1 on any violation, keeping the
files of the rounds for inspection.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from crash_harness import KINDS, RUNS, Figures, run_campaign


def main() -> int:
    """Run the campaign the arguments ask for and print its figures; 1 on any violation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=500, help="kills to land (default 500)")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per round (default {RUNS})")
    parser.add_argument("--seed", type=int, default=None, help="for the kill plan (default: random)")
    parser.add_argument("--keep", action="store_true", help="keep the rounds' files even when all is well")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    workdir = Path(tempfile.mkdtemp(prefix="asyncflow-stress-"))
    print(f"crash stress: {args.kills} kills, {args.runs} runs per round, seed {seed}, in {workdir}")

    def show(figures: Figures) -> None:
        print(
            f"  round {figures.rounds}: {figures.total_kills}/{args.kills} kills, "
            f"{figures.runs} runs, {figures.re_executions} re-executions",
            file=sys.stderr,
            flush=True,
        )

    figures = run_campaign(workdir, kills=args.kills, kinds=KINDS, seed=seed, runs=args.runs, progress=show)
    print(figures.report())
    if figures.violations or args.keep:
        print(f"files kept in {workdir}")
    else:
        shutil.rmtree(workdir)
    return 1 if figures.violations else 0


if __name__ == "__main__":
    sys.exit(main())
