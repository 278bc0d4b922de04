"""The process that crash tests kill: durable runs of a 10-stage workflow on an SQLite file.

Run as ``python tests/crash_child.py DB LEDGER N_RUNS [--cycle C]``. It opens
an engine on ``DB`` (taking over the runs of a killed predecessor once their
leases expire), starts runs with idempotency keys ``run-0`` .. ``run-{N-1}``
(a restart finds the existing runs instead of starting new ones), waits for
all of them and exits 0; 3 if a run did not complete.

Every execution of an action appends to ``LEDGER`` a ``begin`` line when it
starts and an ``end`` line just before it returns (``fail`` when it raises)::

    phase cycle run_id stage action attempt idempotency_key

and writes ``done:<step key>@<cycle>`` to the store, which is committed with
the checkpoint of its completion: the run's final store names each execution
that was committed. :mod:`crash_harness` reads both.

The workflow exercises what recovery must replay: a concurrent stage, an
action that inserts a dynamic action which inserts another (one a class
re-created from its constructor arguments), an action that disables a later
one, and a retried action whose first attempt always fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys

import asyncflow as af

#: how many actions of one run may be in flight at once (the widest stage)
MAX_IN_FLIGHT = 3

#: the action that ``plan/0`` disables: it must never run
DISABLED = ("audit", "audit-skipped")

_ledger_fd = -1
_cycle = 0


def _record(ctx: af.ActionContext, phase: str) -> None:
    # One write(2) of one short line to an O_APPEND file: the line is whole or
    # absent after a kill -9 (a killed process loses nothing already written, so
    # no fsync). Synchronous on purpose: the line must be down before the action
    # returns, and it costs microseconds.
    line = (
        f"{phase} {_cycle} {ctx.run_id} {ctx.stage_id} {ctx.action.name} {ctx.attempt} "
        f"{ctx.idempotency_key}\n"
    )
    os.write(_ledger_fd, line.encode())


async def _work(ctx: af.ActionContext) -> None:
    """What every action does: record the start, work a little, mark the store, record the end."""
    _record(ctx, "begin")
    # 0-3 ms, so that kills at random moments often land inside an action.
    await asyncio.sleep(random.uniform(0.0, 0.003))
    # One key per execution: the final store holds a mark for each execution whose
    # completion was committed, and only for those (an uncommitted one's writes vanish).
    ctx.store[f"done:{ctx.idempotency_key.partition(':')[2]}@{_cycle}"] = ctx.attempt
    _record(ctx, "end")


class Step(af.Action):
    """A plain step called ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, ctx: af.ActionContext) -> None:
        """Do the common work."""
        await _work(ctx)


class Extra(af.Action):
    """A dynamic step; at ``depth`` 1 it inserts its own follow-up at depth 2."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.name = f"extra-{depth}"

    async def execute(self, ctx: af.ActionContext) -> None:
        """Do the common work, and insert ``Extra(2)`` at depth 1."""
        if self.depth == 1:
            ctx.add_dynamic_action(Extra(2))
        await _work(ctx)


@af.action
async def decide(ctx: af.ActionContext) -> None:
    """Reshape the run: insert a dynamic action here, disable one in a later stage."""
    ctx.add_dynamic_action(Extra(1))
    ctx.plan.disable_action(DISABLED[1], DISABLED[0])
    await _work(ctx)


class FirstAttemptFails(Exception):
    """Raised by the first attempt of ``charge``."""


@af.action(retry=af.Retry(attempts=3, backoff=af.backoff.fixed(0.002)))
async def charge(ctx: af.ActionContext) -> None:
    """Fail the first attempt, succeed on the second (the attempt count survives restarts)."""
    if ctx.attempt == 1:
        _record(ctx, "begin")
        _record(ctx, "fail")
        raise FirstAttemptFails("the first attempt of charge always fails")
    await _work(ctx)


def _steps(*names: str) -> list[af.Action]:
    return [Step(name) for name in names]


WORKFLOW = af.Workflow(
    "crash-order",
    stages=[
        af.Stage("receive", actions=_steps("receive")),
        af.Stage("validate", actions=_steps("check-schema", "check-limits")),
        af.Stage("enrich", actions=_steps("lookup-customer", "lookup-prices", "lookup-stock")),
        af.Stage(
            "fanout",
            concurrency=MAX_IN_FLIGHT,
            actions=_steps("notify-a", "notify-b", "notify-c", "notify-d"),
        ),
        af.Stage("plan", actions=[decide]),
        af.Stage("charge", actions=[charge]),
        af.Stage("ship", actions=_steps("pack", "label")),
        af.Stage("audit", actions=_steps("audit", DISABLED[1])),
        af.Stage("notify", actions=_steps("email")),
        af.Stage("close", actions=_steps("close")),
    ],
)

#: every step of a run that must execute, by step key (``stage/position``), with its action's name
EXPECTED_STEPS: dict[str, str] = {
    "receive/0": "receive",
    "validate/0": "check-schema",
    "validate/1": "check-limits",
    "enrich/0": "lookup-customer",
    "enrich/1": "lookup-prices",
    "enrich/2": "lookup-stock",
    "fanout/0": "notify-a",
    "fanout/1": "notify-b",
    "fanout/2": "notify-c",
    "fanout/3": "notify-d",
    "plan/0": "decide",
    "plan/0.0": "extra-1",
    "plan/0.0.0": "extra-2",
    "charge/0": "charge",
    "ship/0": "pack",
    "ship/1": "label",
    "audit/0": "audit",
    "notify/0": "email",
    "close/0": "close",
}


async def main(db: str, runs: int, lease: float, poll_interval: float) -> int:
    """Run (or finish) the ``runs`` runs; 0 when all completed."""
    engine = af.Engine(f"sqlite:///{db}", lease=lease, poll_interval=poll_interval)
    engine.register(WORKFLOW)
    async with engine:
        handles = [
            await engine.start(WORKFLOW, idempotency_key=f"run-{i}", store={"run": f"run-{i}"})
            for i in range(runs)
        ]
        results = [await handle.result() for handle in handles]
    failed = [r for r in results if r.status is not af.RunStatus.COMPLETED]
    for result in failed:
        print(f"run {result.run_id} ended {result.status.value}: {result.error!r}", file=sys.stderr)
    return 3 if failed else 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("db")
    parser.add_argument("ledger")
    parser.add_argument("runs", type=int)
    parser.add_argument("--cycle", type=int, default=0, help="this process's number, written to the ledger")
    parser.add_argument("--lease", type=float, default=0.5)
    parser.add_argument("--poll-interval", type=float, default=0.2)
    return parser.parse_args()


if __name__ == "__main__":
    args = _arguments()
    _cycle = args.cycle
    _ledger_fd = os.open(args.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.exit(asyncio.run(main(args.db, args.runs, args.lease, args.poll_interval)))
