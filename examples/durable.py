"""Durable runs on SQLite: a run outlives the process that ran it, and waits for a person.

1. A child process starts an order run on an SQLite file and is killed (``os._exit``,
   as hard as ``kill -9``) in the middle of its second action, ``reserve-stock``.
2. This process opens an engine on the same file. Once the dead process's lease on the
   run has run out (2 s here, ``Engine(lease=...)``; 30 s by default), the engine takes
   the run over: ``charge-card``, committed before the kill, is not run again; ``reserve-stock``,
   in flight at the kill, runs again with the same ``ctx.idempotency_key`` (so a real
   action can tell its own earlier attempt apart).
3. ``approve`` suspends the run (``ctx.suspend``): it is ``SUSPENDED`` in the database,
   with its reason and data, and the engine closes.
4. A new engine resumes it with the approver's answer (``engine.resume``), and the run
   ends with ``ship``.

Every action appends a line to a ledger file before it returns, so the output shows
what ran, and how often, across both processes.

Run it with ``python examples/durable.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import anyio

import asyncflow as af


async def ledger(ctx: af.ActionContext, line: str) -> None:
    """Append ``line`` to the ledger file (in a worker thread: the event loop never waits on a disk)."""
    async with await anyio.open_file(ctx.store.get("ledger", str), "a") as file:
        await file.write(f"{line}\n")


@af.action(name="charge-card")
async def charge_card(ctx: af.ActionContext) -> None:
    """Charge the customer (once: it committed before the crash)."""
    await ledger(ctx, f"charge-card    pid {os.getpid()}")
    ctx.store["charged"] = 42.0


@af.action(name="reserve-stock")
async def reserve_stock(ctx: af.ActionContext) -> None:
    """Reserve the items; the first process dies in the middle of it."""
    await ledger(ctx, f"reserve-stock  pid {os.getpid()}  key {ctx.idempotency_key[:20]}...")
    if ctx.store.get_or("crash", False) and os.environ.get("DURABLE_EXAMPLE_CHILD"):
        os._exit(137)  # no cleanup, no commit: as kill -9
    ctx.store["reserved"] = ["mug", "tea"]


@af.action(name="approve")
async def approve(ctx: af.ActionContext) -> None:
    """Wait for a person: suspend, and carry on with their answer when resumed."""
    if not ctx.is_resuming:
        await ledger(ctx, "approve        suspends")
        ctx.suspend("order over 40 needs a manager", {"amount": ctx.store.get("charged", float)})
    await ledger(ctx, f"approve        resumed with {ctx.resume_data}")
    ctx.store["approved_by"] = ctx.resume_data["by"]


@af.action(name="ship")
async def ship(ctx: af.ActionContext) -> None:
    """Ship the order."""
    await ledger(ctx, f"ship           pid {os.getpid()}")


#: Claims on runs last 2 s without a heartbeat (every 0.5 s): a dead process's runs are taken
#: over within seconds.
LEASE = {"lease": 2.0, "poll_interval": 0.5}

ORDER = af.Workflow("order", stages=[af.Stage("fulfil", actions=[charge_card, reserve_stock, approve, ship])])


async def child(url: str, ledger_path: str) -> None:
    """The first process: start the order, and die in reserve-stock."""
    async with af.Engine(url, **LEASE) as engine:
        handle = await engine.start(ORDER, store={"ledger": ledger_path, "crash": True})
        await handle.result()  # never returns: the process dies first


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'orders.db'}"
        ledger_path = str(Path(tmp) / "ledger.txt")
        killed = await anyio.run_process(
            [sys.executable, __file__, "child", url, ledger_path],
            check=False,
            env={**os.environ, "DURABLE_EXAMPLE_CHILD": "1"},
        )
        print(f"1. the first process died (exit status {killed.returncode})")

        engine = af.Engine(url, **LEASE)
        engine.register(ORDER)
        async with engine:  # takes the interrupted run over
            [info] = (await engine.list_runs()).runs
            result = await engine.wait(info.run_id)
        print(f"2-3. taken over in pid {os.getpid()}: {result.status.value} ({result.suspend_reason!r})")

        engine = af.Engine(url, **LEASE)
        engine.register(ORDER)
        async with engine:
            handle = await engine.resume(info.run_id, {"by": "Ada"})
            result = await handle.result()
        print(f"4. resumed: {result.status.value}, approved by {result.store['approved_by']}\n")
        print("ledger:")
        print((await anyio.Path(ledger_path).read_text()).rstrip())


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        anyio.run(child, sys.argv[2], sys.argv[3])
    else:
        anyio.run(main)
