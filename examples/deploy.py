"""Changing a workflow while runs of it are unfinished: each run goes on on its own version.

1. Version 1 of ``invoice`` (``draft``, ``approve``, ``send``) starts a run, which
   suspends at ``approve`` until a person answers; its engine closes.
2. A deploy changes the workflow under the same id: version 2 checks the customer's
   credit first (``check-credit``, a new step in front).
3. An engine with version 2 registered resumes the waiting run. Its checkpoints name
   steps by their place (``invoice/0`` is ``draft`` in version 1, ``check-credit`` in
   version 2), so the run goes on on version 1, which the database keeps: ``draft`` does
   not run again, and ``check-credit``, which the run never had, is not run for it.
4. A new run on the same engine runs version 2 (and waits at ``approve`` in its turn).

``RunInfo.workflow_version`` (and ``asyncflow runs show``) tells which version a run
started on.

Run it with ``python examples/deploy.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

import asyncflow as af

RAN: list[str] = []  # what each execution of an action did, in order


@af.action(name="check-credit")
async def check_credit(ctx: af.ActionContext) -> None:
    """New in version 2: check the customer's credit."""
    RAN.append("check-credit")


@af.action
async def draft(ctx: af.ActionContext) -> None:
    """Draft the invoice."""
    RAN.append("draft")
    ctx.store["total"] = 120.0


@af.action
async def approve(ctx: af.ActionContext) -> None:
    """Wait for a person's approval."""
    RAN.append("approve (resumed)" if ctx.is_resuming else "approve (suspends)")
    if not ctx.is_resuming:
        ctx.suspend("invoices need an approval", {"total": ctx.store.get("total", float)})


@af.action
async def send(ctx: af.ActionContext) -> None:
    """Send the invoice."""
    RAN.append("send")


def invoice(version: int) -> af.Workflow:
    """The workflow as each deploy has it."""
    actions = [draft, approve, send] if version == 1 else [check_credit, draft, approve, send]
    return af.Workflow("invoice", stages=[af.Stage("invoice", actions=actions)])


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'invoices.db'}"

        engine = af.Engine(url)
        engine.register(invoice(1))
        async with engine:
            waiting = await (await engine.start(invoice(1))).result()
            started_on = (await engine.get_run(waiting.run_id)).workflow_version
        print(f"1. version 1 ran {RAN} and the run is {waiting.status.value}")

        RAN.clear()
        engine = af.Engine(url)
        engine.register(invoice(2))  # 2. the deploy
        async with engine:
            resumed = await (await engine.resume(waiting.run_id, {"by": "Grace"})).result()
            print(f"3. resumed with version 2 registered: ran {RAN}, {resumed.status.value}")
            RAN.clear()
            fresh = await (await engine.start(invoice(2))).result()
            print(f"4. a new run ran {RAN}, {fresh.status.value}")
            now = (await engine.get_run(fresh.run_id)).workflow_version
        print(f"\nversions: the first run started on {started_on}, the new one on {now}")


if __name__ == "__main__":
    anyio.run(main)
