"""Writes that fail for a while: held and tried again with back-off, each episode logged once.

A database may fail a write for a moment (a full disk, a timeout, a locked
file) and take the next. What the engine writes then is kept and written
again (:meth:`WriteTrouble.retry`): a run's checkpoint is the database's
trouble, never the action's failure. A run held longer than its lease is
given back (:class:`GivenBack`), to continue from its last commit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from loguru import logger

from .errors import LeaseLost

T = TypeVar("T")

#: the first pause before a failed write is tried again, and the longest
FIRST_RETRY_DELAY = 0.01
LONGEST_RETRY_DELAY = 1.0


class GivenBack(LeaseLost):
    """A checkpoint could not be written while the lease lasted: the engine gives the run back.

    Nothing of the run is recorded as failed: it continues from its last
    commit, here after the lease runs out or in another engine. A
    :class:`LeaseLost`, so it is never retried nor recovered from.
    """


class Episodes:
    """Stretches of failures against one database: each counted and timed from its first failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: when the episode on began (``time.monotonic()``), or None between episodes
        self.since: float | None = None
        self.failures = 0

    def count(self) -> bool:
        """Count one failure; true for the first of an episode (the one to log)."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            return True
        return False

    def end(self) -> tuple[float, int] | None:
        """End the episode on, if any: how long it lasted and how many failures it counted."""
        if self.since is None:
            return None
        ended = (time.monotonic() - self.since, self.failures)
        self.since = None
        self.failures = 0
        return ended


class WriteTrouble(Episodes):
    """One engine's episodes of failing writes: each logged once as it begins and once as it ends.

    An episode begins with the first write that fails and ends when no write
    is waiting to be tried again; the lines name the database and the cause.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.waiting = 0

    def failed(self, what: str, exc: BaseException) -> None:
        """``what`` failed with ``exc`` and will be tried again."""
        if self.count():
            logger.warning(
                "writes to {} are failing ({}: {}, writing {}); checkpoints are kept and written "
                "again with back-off, and their runs held, not failed",
                self.url,
                type(exc).__name__,
                exc,
                what,
            )

    async def retry(self, what: str, write: Callable[[], Awaitable[T]], exc: Exception, hold: float) -> T:
        """Call ``write`` again (it failed with ``exc``) with back-off until it goes through.

        Raises:
            GivenBack: it still failed after ``hold`` seconds.
            LeaseLost: the backend says the run is no longer this engine's.
        """
        self.waiting += 1
        try:
            started = time.monotonic()
            delay = FIRST_RETRY_DELAY
            # At least a few tries while the run is held, however short the lease.
            longest = min(LONGEST_RETRY_DELAY, hold / 8)
            while True:
                self.failed(what, exc)
                if time.monotonic() - started >= hold:
                    raise GivenBack(
                        f"could not write {what} to {self.url} for {hold:g}s ({type(exc).__name__}: "
                        f"{exc}); the run is given back, to continue from its last commit"
                    ) from exc
                # Jittered, so runs held together do not all try again at once.
                await anyio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, longest)
                try:
                    written = await write()
                except LeaseLost:
                    raise
                except Exception as again:
                    exc = again
                else:
                    self.waiting -= 1
                    self.went_through()
                    self.waiting += 1  # (taken off again below)
                    return written
        finally:
            self.waiting -= 1

    def went_through(self) -> None:
        """A write went through: the episode ends, unless other writes still wait to be tried again."""
        if self.waiting == 0 and (ended := self.end()) is not None:
            logger.info("writes to {} go through again, after {:.2f}s and {} failed writes", self.url, *ended)


class MaintenanceTrouble(Episodes):
    """Episodes of an engine's maintenance (heartbeats, looks for runs) failing, each logged once.

    During a database outage every tick fails the same way: the first failure
    logs one error (the database, the cause, with its traceback), the ticks
    after it are quiet, and the first tick that works again logs how long the
    episode lasted and how many ticks failed.
    """

    def failed(self, exc: Exception) -> None:
        """A tick failed with ``exc``; the next tick tries again."""
        if self.count():
            logger.opt(exception=exc).error(
                "engine maintenance against {} is failing ({}: {}); heartbeats and looks for runs are "
                "tried again every poll interval, logged again only when they work",
                self.url,
                type(exc).__name__,
                exc,
            )

    def worked(self) -> None:
        """A tick went through: an episode of failures, if one was on, ends."""
        if (ended := self.end()) is not None:
            logger.info(
                "engine maintenance against {} works again, after {:.2f}s and {} failed ticks",
                self.url,
                *ended,
            )
