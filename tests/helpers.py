"""What the tests build on: small actions that record, raise or sleep, and waits with a deadline.

Tests wait for a state or an event, never for a fixed time: :func:`eventually`
polls a condition until it holds and fails the test after a generous
deadline, so a slow machine only makes a test slower, never wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

import asyncflow as af


def recorder(name: str, log: list[str]) -> af.Action:
    """An action called ``name`` that appends its name to ``log``."""

    async def body(ctx: af.ActionContext) -> None:
        log.append(name)

    return af.action(name=name)(body)


def raiser(name: str, error: BaseException) -> af.Action:
    """An action called ``name`` that raises ``error``."""

    async def body(ctx: af.ActionContext) -> None:
        raise error

    return af.action(name=name)(body)


def sleeper(name: str, seconds: float) -> af.Action:
    """An action called ``name`` that sleeps ``seconds``."""

    async def body(ctx: af.ActionContext) -> None:
        await anyio.sleep(seconds)

    return af.action(name=name)(body)


def rss_bytes() -> int:
    """The resident set size of this process, in bytes (Linux: from /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within: float = 5.0, every: float = 0.005
) -> None:
    """Poll ``check`` (sync or async) every ``every`` s until it is true; fail after ``within`` s."""
    with anyio.fail_after(within):
        while True:
            outcome = check()
            if not isinstance(outcome, bool):
                outcome = await outcome
            if outcome:
                return
            await anyio.sleep(every)


@af.action
async def approval(ctx: af.ActionContext) -> None:
    """Suspend the run ("needs approval", ``{"amount": 5}``) until resumed; then keep the resume data."""
    if not ctx.is_resuming:
        ctx.suspend("needs approval", {"amount": 5})
    ctx.store["approved"] = ctx.resume_data


#: label -> an event: an action of the test sets or waits for it (a module's fixture clears them)
GATES: dict[str, anyio.Event] = {}


def gate(label: str) -> anyio.Event:
    """The event of ``label`` (made on first use)."""
    event = GATES.get(label)
    if event is None:
        event = GATES[label] = anyio.Event()
    return event


#: the example scripts, ``examples/*.py``
EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def run_example(name: str) -> str:
    """The stdout of ``python examples/NAME``, which must exit 0."""
    path = next(path for path in EXAMPLES if path.name == name)
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
