"""A process the isolation tests kill with SIGKILL while its isolated stage's child works.

Run as ``python tests/isolation_parent.py DB LEDGER``: it starts (or, on a
restart, finds) the durable run ``isolated`` on the SQLite file ``DB`` and
waits for it. The run's one stage is isolated in a child process; see
:mod:`isolation_flows` for what its actions write to ``LEDGER``.
"""

from __future__ import annotations

import sys

import anyio
import isolation_flows as flows

import asyncflow as af

WORKFLOW = af.Workflow(
    "isolated-durable",
    stages=[af.Stage("work", actions=[flows.durable_first], isolation="process")],
)


async def main(db: str, ledger: str) -> int:
    """Run the workflow to its end; 0 when it completed."""
    engine = af.Engine(f"sqlite:///{db}", lease=1.0, poll_interval=0.2)
    engine.register(WORKFLOW)
    async with engine:
        handle = await engine.start(WORKFLOW, idempotency_key="isolated", store={"ledger": ledger})
        result = await handle.result()
    return 0 if result.status is af.RunStatus.COMPLETED else 3


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1], sys.argv[2]))
