"""Helpers for testing code that uses asyncflow.

:class:`FakeClock` is a clock that only moves when told to: give it to a
:class:`~asyncflow.Runner` or :class:`~asyncflow.Engine` (``clock=``) and
sleeps, retry back-offs, durable sleeps and TTLs all follow it::

    clock = FakeClock()
    engine = af.Engine(clock=clock)
    ...
    await clock.advance(3600)      # an hour passes at once
"""

from __future__ import annotations

import heapq
import itertools

import anyio

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that stands still until :meth:`advance` moves it.

    Args:
        start: the time it shows at first, in seconds since the epoch.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        """The time the clock shows."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds`` (returns at once for 0 or less)."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), woken))
        await woken.wait()

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting on this clock."""
        return sum(1 for _, _, event in self._sleepers if not event.is_set())

    async def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` and wake every sleep that is due.

        Returns after the woken tasks have had a chance to run.
        """
        if seconds < 0:
            raise ValueError(f"a clock cannot go back in time (advance({seconds!r}))")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, woken = heapq.heappop(self._sleepers)
            woken.set()
        # Let the woken tasks run up to their next wait.
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
