"""A workflow for the take-over tests: its second action hangs in the engine process that is killed.

The child process (:data:`CHILD`) opens an engine on the file with a 30 s
lease, starts runs, notes each run's id in the file :data:`STARTED_FILE`
names once the hanging action has begun, and waits to be killed. An engine
in the test process then takes the runs over; there the action completes
and notes when it ran (:data:`CONTINUED`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

import asyncflow as af

#: the environment variable that names the file the child writes the ids of started runs to
STARTED_FILE = "ASYNCFLOW_TEST_STARTED_FILE"
#: run id -> time.monotonic() when its hanging action ran again in this process
CONTINUED: dict[str, float] = {}
LEASE = 30.0


class HangInChild(af.Action):
    """In the child: note the run, then hang until killed. Elsewhere: note when it ran, and complete."""

    async def execute(self, ctx: af.ActionContext) -> None:
        """Hang (child) or complete (test process)."""
        started = os.environ.get(STARTED_FILE)
        if started:
            fd = os.open(started, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{ctx.run_id}\n".encode())
            finally:
                os.close(fd)
            await anyio.sleep_forever()
        CONTINUED[ctx.run_id] = time.monotonic()
        ctx.store["continued"] = True


@af.action
async def first(ctx: af.ActionContext) -> None:
    """A step that completes before the hang."""
    ctx.store["first"] = True


WORKFLOW = af.Workflow("killed-engine", stages=[af.Stage("s", actions=[first, HangInChild()])])


async def serve(db: str, runs: int) -> None:
    """Start ``runs`` runs on ``db`` with a 30 s lease, and wait (to be killed)."""
    engine = af.Engine(f"sqlite:///{db}", lease=LEASE, poll_interval=1.0)
    engine.register(WORKFLOW)
    async with engine:
        for _ in range(runs):
            await engine.start(WORKFLOW)
        await anyio.sleep_forever()


#: ``python -c CHILD DB RUNS``: the engine process that the tests kill
CHILD = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
import anyio
from backends import killed_flows
anyio.run(killed_flows.serve, sys.argv[1], int(sys.argv[2]))
"""
