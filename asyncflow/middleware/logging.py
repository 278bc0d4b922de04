"""``mw.logging()``: a log line when a step starts, ends or fails."""

from __future__ import annotations

from time import perf_counter

from .._core.context import MiddlewareContext
from .._core.errors import Bail, Suspend
from .._core.middleware import CallNext, Middleware


def logging(*, level: str = "INFO") -> Middleware:
    """Log the start, the end (with its duration) and any failure of each step it wraps.

    Works at every level. Lines go through ``ctx.logger`` (bound with the
    run's and the step's ids) at ``level``; failures at ``ERROR``. Like all
    of asyncflow's log lines they appear once ``logger.enable("asyncflow")``
    has been called.
    """
    if not isinstance(level, str) or not level:
        raise TypeError(f"mw.logging level must be a loguru level name, got {level!r}")

    async def log_step(ctx: MiddlewareContext, call_next: CallNext) -> None:
        what = ctx.describe()
        ctx.logger.log(level, "{} started", what)
        started = perf_counter()
        try:
            await call_next()
        except (Bail, Suspend) as stop:
            verb = "bailed" if isinstance(stop, Bail) else "suspended"
            ctx.logger.log(
                level, "{} {} after {:.3f}s: {}", what, verb, perf_counter() - started, stop.reason
            )
            raise
        except Exception as exc:
            ctx.logger.error(
                "{} failed after {:.3f}s: {}: {}", what, perf_counter() - started, type(exc).__name__, exc
            )
            raise
        ctx.logger.log(level, "{} finished in {:.3f}s", what, perf_counter() - started)

    return log_step
