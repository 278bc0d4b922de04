"""Actions the isolation tests run in child processes: module-level, so a child can import them."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import anyio

import asyncflow as af


@af.action
async def chatty(ctx: af.ActionContext) -> None:
    """Send a message, log a line, send another: the parent must see them in this order."""
    await ctx.send("step", {"n": 1, "pid": os.getpid()})
    ctx.logger.bind(part="middle").info("working in {}", os.getpid())
    await ctx.send("step", {"n": 2})


@af.action
async def count_up(ctx: af.ActionContext) -> None:
    """Read ``n`` from the store, write ``n + 1`` and where it ran, with a tag on the entry."""
    ctx.store.put("n", ctx.store.get("n", int) + 1, tags=("counted",))
    ctx.store["where"] = os.getpid()
    ctx.store.delete("scratch")


@af.action
async def write_then_fail(ctx: af.ActionContext) -> None:
    """Write to the store, then raise: its writes must not reach the run."""
    ctx.store["half"] = "written"
    raise ValueError("bad record 7")


@af.action
async def insert_children(ctx: af.ActionContext) -> None:
    """Insert two actions and two stages, in that order."""
    ctx.add_dynamic_action(child_a)
    ctx.add_dynamic_action(child_b)
    ctx.add_dynamic_stage(af.Stage("later-1", actions=[mark_pid]))
    ctx.add_dynamic_stage(af.Stage("later-2", actions=[mark_pid], isolation="process"))


@af.action
async def child_a(ctx: af.ActionContext) -> None:
    """A dynamic action that inserts one of its own."""
    ctx.store["a"] = os.getpid()
    ctx.add_dynamic_action(child_a1)


@af.action
async def child_a1(ctx: af.ActionContext) -> None:
    """A dynamic action two levels down."""
    ctx.store["a1"] = os.getpid()


@af.action
async def child_b(ctx: af.ActionContext) -> None:
    """A second dynamic action."""
    ctx.store["b"] = os.getpid()


@af.action
async def mark_pid(ctx: af.ActionContext) -> None:
    """Record the process it ran in, under its stage's id."""
    ctx.store[f"pid:{ctx.stage_id}"] = os.getpid()


@af.action
async def segfault(ctx: af.ActionContext) -> None:
    """Tell the parent its pid, then crash the interpreter."""
    await ctx.send("pid", os.getpid())
    ctypes.string_at(0)


@af.action
async def exit_three(ctx: af.ActionContext) -> None:
    """Say goodbye on stderr and exit at once with status 3."""
    await ctx.send("pid", os.getpid())
    print("leaving with 3", flush=True)
    os._exit(3)


@af.action
async def hang(ctx: af.ActionContext) -> None:
    """Tell the parent its pid, then block the child's whole event loop."""
    await ctx.send("pid", os.getpid())
    time.sleep(120)  # noqa: ASYNC251 (on purpose: a child stuck where no cancellation reaches)


@af.action
async def crash_on_first_attempt(ctx: af.ActionContext) -> None:
    """Exit the child on attempt 1; on attempt 2, complete."""
    if ctx.attempt == 1:
        os._exit(7)
    ctx.store["survived"] = ctx.attempt


@af.action
async def not_json(ctx: af.ActionContext) -> None:
    """Send a payload that cannot cross to the parent."""
    await ctx.send("bad", {1, 2, 3})


@af.action
async def whoami(ctx: af.ActionContext) -> None:
    """Record the pid of the process it ran in, under ``pids``."""
    ctx.store["pids"] = [*ctx.store.get_or("pids", []), os.getpid()]


@af.action
async def bail_out(ctx: af.ActionContext) -> None:
    """Write, then bail: the write stays, the run ends BAILED."""
    ctx.store["before-bail"] = True
    ctx.bail("enough")


@af.action
async def flood(ctx: af.ActionContext) -> None:
    """Send ``count`` messages (from the store) as fast as it can."""
    for n in range(ctx.store.get("count", int)):
        await ctx.send("tick", n)


class Burn(af.Action):
    """Spin the CPU for ``loops`` iterations (a CPU-bound step), recording the result."""

    def __init__(self, loops: int) -> None:
        self.loops = loops

    async def execute(self, ctx: af.ActionContext) -> None:
        """Burn."""
        total = 0
        for n in range(self.loops):
            total += n * n % 7
        ctx.store[f"burn:{ctx.stage_id}"] = total


def _ledger(ctx: af.ActionContext) -> Path:
    return Path(ctx.store.get("ledger", str))


@af.action
async def durable_first(ctx: af.ActionContext) -> None:
    """Append to the ledger that it ran; insert the second action."""
    with _ledger(ctx).open("a") as out:
        out.write(f"first {os.getpid()}\n")
    ctx.store["first"] = True
    ctx.add_dynamic_action(durable_second)


@af.action
async def durable_second(ctx: af.ActionContext) -> None:
    """Append to the ledger; the first time, wait there to be killed (a ``hold`` file says so)."""
    ledger = _ledger(ctx)
    with ledger.open("a") as out:
        out.write(f"second {os.getpid()}\n")
    hold = ledger.with_name("hold")
    while hold.exists():  # noqa: ASYNC110 (another process removes the file)
        await anyio.sleep(0.02)
    ctx.store["second"] = True


@af.action
async def binds_child_pid(ctx: af.ActionContext) -> None:
    """Log a line whose own bound context already has a ``child_pid``."""
    ctx.logger.bind(child_pid="mine").info("bound by the action")


class Meet(af.Action):
    """Wait (up to 10 s) until ``others`` other Meet actions have started, then record its pid."""

    def __init__(self, name: str, others: int) -> None:
        self.name = name
        self.others = others

    async def execute(self, ctx: af.ActionContext) -> None:
        """Meet the others in the same child process, then write down where."""
        _MET.append(self.name)
        with anyio.fail_after(10):
            while len(_MET) <= self.others:  # noqa: ASYNC110 (the others are tasks of this process)
                await anyio.sleep(0.005)
        ctx.store[f"pid:{self.name}"] = os.getpid()


_MET: list[str] = []


@af.action
async def orphan_maker(ctx: af.ActionContext) -> None:
    """Start a long ``sleep`` process, tell the parent its pid, then crash."""
    import subprocess

    sleeper = subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220 (a process the crash leaves behind)
    await ctx.send("pid", sleeper.pid)
    os._exit(1)
