"""Helpers for testing code that uses asyncflow.

``run_action`` and ``run_stage`` run one action or one stage alone, with a
store to start from, and hand back the :class:`~asyncflow.RunResult` to assert
on (``result.store``, ``result.steps``, ``result.action_order()``)::

    result = await run_action(greet, store={"user.name": "Ann"})
    assert result.store["greeting"] == "hello, Ann"

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
import math

import anyio

from ._core.actions import Action
from ._core.records import RunResult
from ._core.runner import Runner
from ._core.store import StoreData
from ._core.workflow import Stage, Workflow

__all__ = ["FakeClock", "run_action", "run_stage"]


class FakeClock:
    """A clock that stands still until :meth:`advance` moves it.

    Args:
        start: the time it shows at first, in seconds since the epoch.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"FakeClock starts at a finite time, got {start!r}")
        self._now = float(start)
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()
        self._new_sleeper = anyio.Event()

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
        self._new_sleeper.set()
        await woken.wait()

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting on this clock."""
        return sum(1 for _, _, event in self._sleepers if not event.is_set())

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` sleeps wait on this clock: then advancing it wakes them."""
        while self.sleepers < count:
            self._new_sleeper = anyio.Event()
            await self._new_sleeper.wait()

    async def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` and wake every sleep that is due.

        Returns after the woken tasks have had a chance to run.
        """
        if not math.isfinite(seconds):
            raise ValueError(f"a clock advances by a finite number of seconds, got advance({seconds!r})")
        if seconds < 0:
            raise ValueError(f"a clock cannot go back in time (advance({seconds!r}))")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, woken = heapq.heappop(self._sleepers)
            woken.set()
        # Let the woken tasks run up to their next wait.
        for _ in range(5):
            await anyio.lowlevel.checkpoint()


async def run_stage(
    stage: Stage,
    *,
    store: StoreData | None = None,
    runner: Runner | None = None,
) -> RunResult:
    """Run ``stage`` alone (with whatever it inserts) and return the result.

    Args:
        store: what the store holds when the stage starts.
        runner: a runner with the middleware, clock or listeners the test needs.

    Raises:
        ActionFailed: an action raised (``.result`` holds the record), as with ``af.run``.
    """
    if not isinstance(stage, Stage):
        raise TypeError(f"run_stage takes an af.Stage, got {stage!r}")
    workflow = Workflow(f"test-{stage.id}", stages=[stage])
    return await (runner or Runner()).run(workflow, store=store)


async def run_action(
    action: Action,
    *,
    store: StoreData | None = None,
    runner: Runner | None = None,
    stage_id: str = "test",
) -> RunResult:
    """Run ``action`` alone, in a stage of its own (``stage_id``), and return the result.

    What it inserts runs too: dynamic actions right after it, dynamic stages after its stage.

    Raises:
        ActionFailed: the action raised (``.result`` holds the record), as with ``af.run``.
    """
    if not isinstance(action, Action):
        raise TypeError(f"run_action takes an af.Action, got {action!r}")
    return await run_stage(Stage(stage_id, actions=[action]), store=store, runner=runner)
