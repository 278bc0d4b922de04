"""The workflows of the fault suite, and a ledger of every execution of their actions.

Every action that counts writes the store key ``count`` (read, add one,
write) and records its execution under its idempotency key, so a test can
tell a completed action that ran again (a key executed twice) from the
in-flight re-runs that recovery allows (at most one per time the run was
given back or taken over), and check that the store counted exactly the
steps the run executed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta

import asyncflow as af
from asyncflow import backoff

#: executions of each step (by idempotency key, ``run_id:step``) in this process, by run
EXECUTED: defaultdict[str, Counter[str]] = defaultdict(Counter)


def reset() -> None:
    """Forget every execution (each test starts afresh)."""
    EXECUTED.clear()


def ran(key: str) -> None:
    """Record one execution of the step whose idempotency key (or attempt's key) is ``key``."""
    EXECUTED[key.partition(":")[0]][key] += 1


def executions(run_id: str) -> Counter[str]:
    """The executions of the steps of ``run_id``."""
    return EXECUTED.get(run_id, Counter())


@af.action
async def count(ctx: af.ActionContext) -> None:
    """Record this execution and add one to the store's ``count``."""
    ran(ctx.idempotency_key)
    ctx.store["count"] = ctx.store.get_or("count", 0) + 1


@af.action
async def grow(ctx: af.ActionContext) -> None:
    """Count, then insert a stage of two counting actions and one counting action after this one."""
    ran(ctx.idempotency_key)
    ctx.store["count"] = ctx.store.get_or("count", 0) + 1
    ctx.add_dynamic_stage(af.Stage("grown", actions=[count, count]))
    ctx.add_dynamic_action(count)


@af.action(retry=af.Retry(attempts=3, backoff=backoff.fixed(0.001)))
async def flaky(ctx: af.ActionContext) -> None:
    """Fail on the first attempt (the action's own failure, retried), count on the second."""
    ran(f"{ctx.idempotency_key}#attempt{ctx.attempt}")
    if ctx.attempt == 1:
        raise ConnectionError("the service is not there yet")
    ran(ctx.idempotency_key)
    ctx.store["count"] = ctx.store.get_or("count", 0) + 1


@af.action
async def approval(ctx: af.ActionContext) -> None:
    """Suspend until resumed; then count, keeping what the resume gave."""
    if not ctx.is_resuming:
        ctx.suspend("needs approval", {"run": ctx.run_id})
    ran(ctx.idempotency_key)
    ctx.store["count"] = ctx.store.get_or("count", 0) + 1
    ctx.store["approved"] = ctx.resume_data


#: four counting actions
STEADY = af.Workflow("faults-steady", stages=[af.Stage("s", actions=[count, count, count, count])])

#: dynamic stages and actions, a retried action, a durable sleep, and a suspension
MIXED = af.Workflow(
    "faults-mixed",
    stages=[
        af.Stage("first", actions=[count, grow, flaky]),
        af.Stage("nap", actions=[af.sleep(timedelta(milliseconds=20)), count]),
        af.Stage("approve", actions=[approval, count]),
    ],
)
#: the counting executions of a MIXED run (first: 1 + 1 + 1 inserted + 1; grown: 2; nap: 1; approve: 2)
MIXED_COUNT = 9
