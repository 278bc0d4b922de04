"""Workflows for the tests of ``asyncflow worker`` on PostgreSQL, importable by the worker processes.

Each action appends a line to the ledger file named by ``ASYNCFLOW_TEST_LEDGER``
(``run_id step key`` and ``start`` or ``done``) so a test can check what ran,
how often, and that nothing completed ran again.
"""

from __future__ import annotations

import os

import anyio

import asyncflow as af


def _ledger(ctx: af.ActionContext, what: str) -> None:
    path = os.environ.get("ASYNCFLOW_TEST_LEDGER")
    if not path:
        return
    # One short write of a whole line with O_APPEND: lines of processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.run_id} {ctx.idempotency_key} {what} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def _pause() -> float:
    return float(os.environ.get("ASYNCFLOW_TEST_STEP_SECONDS", "0.01"))


@af.action
async def step(ctx: af.ActionContext) -> None:
    """One step: records its start, takes a moment, writes its own store key, records its end."""
    _ledger(ctx, "start")
    await anyio.sleep(_pause())
    ctx.store[f"k.{ctx.idempotency_key}"] = 1
    _ledger(ctx, "done")


@af.action
async def fan_out(ctx: af.ActionContext) -> None:
    """Inserts a dynamic stage of three steps."""
    _ledger(ctx, "start")
    ctx.add_dynamic_stage(af.Stage("dynamic", actions=[step, step, step]))
    ctx.store[f"k.{ctx.idempotency_key}"] = 1
    _ledger(ctx, "done")


@af.action
async def slow(ctx: af.ActionContext) -> None:
    """A step that takes ``ASYNCFLOW_TEST_SLOW_SECONDS`` (default 1 s)."""
    _ledger(ctx, "start")
    await anyio.sleep(float(os.environ.get("ASYNCFLOW_TEST_SLOW_SECONDS", "1")))
    _ledger(ctx, "done")


def steps(n: int) -> list[af.Action]:
    """``n`` steps."""
    return [step] * n


#: Two stages of steps, one of them concurrent, and a stage inserted at run time (20 actions in all).
CHAOS = af.Workflow(
    "pg-chaos",
    stages=[
        af.Stage("first", actions=[*steps(6), fan_out]),
        af.Stage("concurrent", actions=steps(5), concurrency=5),
        af.Stage("last", actions=steps(5)),
    ],
)

#: Three slow steps (graceful shutdown).
SLOW = af.Workflow("pg-slow", stages=[af.Stage("s", actions=[slow, slow, slow])])

#: One step (races for many runs).
ONE = af.Workflow("pg-one", stages=[af.Stage("s", actions=[step])])

#: What a worker of the tests runs.
WORKFLOWS = [CHAOS, SLOW, ONE]

#: Only the slow workflow (pools split by workflow).
ONLY_SLOW = [SLOW]
