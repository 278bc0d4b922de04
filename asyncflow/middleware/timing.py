"""``mw.timing()``: durations into the run record and as events."""

from __future__ import annotations

from time import perf_counter

from .._core.context import MiddlewareContext
from .._core.middleware import CallNext, Middleware


def timing() -> Middleware:
    """Measure each step it wraps, at any level.

    Every duration lands in ``RunResult.timings`` (an :class:`~asyncflow.Timing`
    per step, failed ones included) and is sent as a ``TIMING`` event.
    """

    async def time_step(ctx: MiddlewareContext, call_next: CallNext) -> None:
        started = perf_counter()
        try:
            await call_next()
        finally:
            await ctx.record_timing(perf_counter() - started)

    return time_step
