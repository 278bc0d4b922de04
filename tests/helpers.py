"""Small actions the tests build on: they record, raise or sleep, under a given name."""

from __future__ import annotations

import os

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
