"""``af.sleep(duration)``: a step that waits, and in a durable run survives restarts."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING

from .actions import Action
from .context import sleep_durably

if TYPE_CHECKING:
    from .context import ActionContext


class Sleep(Action):
    """Wait ``seconds``; in a durable run the wake-up time is stored and kept across restarts.

    The run shows ``SLEEPING`` while it waits. After a crash, the engine that
    recovers the run waits only for what is left (or not at all if the time
    has passed). Outside an engine it simply sleeps on the runner's clock.
    """

    name = "sleep"
    description = "wait, durably"

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"af.sleep takes seconds or a timedelta, got {seconds!r}")
        if not math.isfinite(seconds):
            raise ValueError(f"af.sleep needs a finite number of seconds, got {seconds!r}")
        if seconds < 0:
            raise ValueError(f"af.sleep cannot wait a negative time ({seconds!r} s)")
        self.seconds = float(seconds)

    async def execute(self, ctx: ActionContext) -> None:
        """Wait until the wake-up time."""
        await sleep_durably(ctx, self.seconds)

    def __repr__(self) -> str:
        return f"<Sleep {self.seconds:g}s>"


def sleep(duration: float | timedelta) -> Sleep:
    """A step that waits ``duration`` (seconds or a timedelta).

    ``stage.add_action(af.sleep(timedelta(hours=1)))``: in a durable run the
    wake-up time survives restarts.
    """
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
    return Sleep(seconds)
