"""``mw.skip_stages(predicate)``: skip stages for which a predicate holds."""

from __future__ import annotations

from collections.abc import Callable

from .._core.context import MiddlewareContext
from .._core.errors import MiddlewareError
from .._core.middleware import CallNext, Middleware
from .._core.store import Store
from .._core.workflow import Stage


def skip_stages(predicate: Callable[[Stage, Store], bool]) -> Middleware:
    """Skip every stage for which ``predicate(stage, store)`` is true (stage level only).

    A skipped stage is recorded ``SKIPPED`` with the reason "skipped by middleware".
    """
    if not callable(predicate):
        raise TypeError(f"mw.skip_stages takes a predicate (stage, store) -> bool, got {predicate!r}")

    async def skip(ctx: MiddlewareContext, call_next: CallNext) -> None:
        stage = ctx.stage
        if ctx.level != "stage" or stage is None:
            raise MiddlewareError(
                f"mw.skip_stages() works at stage level, but it was registered at {ctx.level} level "
                f"({ctx.describe()}); register it with stage_middleware= or Workflow.use()"
            )
        if predicate(stage, ctx.store):
            ctx.logger.info("stage {!r} skipped by predicate", ctx.stage_id)
            return
        await call_next()

    return skip
