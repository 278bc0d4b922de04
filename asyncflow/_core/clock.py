"""Time as the runner and the engine see it: a wall clock and a way to sleep.

Everything that waits (retry back-offs, durable sleeps, TTLs, leases) asks a
:class:`Clock`, so tests can swap in :class:`asyncflow.testing.FakeClock`
and advance time instantly.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch, and sleeping."""

    def now(self) -> float:
        """The current time, in seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (honouring cancellation)."""
        ...


class SystemClock:
    """The real clock: ``time.time()`` and ``anyio.sleep``."""

    def now(self) -> float:
        """``time.time()``."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep(seconds)``."""
        await anyio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


async def sleep_until(clock: Clock, deadline: float) -> None:
    """Sleep on ``clock`` until ``deadline`` (a time from ``clock.now()``)."""
    remaining = deadline - clock.now()
    if remaining > 0:
        await clock.sleep(remaining)
