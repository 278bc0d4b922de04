"""``mw.timeout(seconds)``: a time limit on each step it wraps."""

from __future__ import annotations

from datetime import timedelta

import anyio

from .._core.context import MiddlewareContext
from .._core.errors import ActionTimeout, StepTimeout
from .._core.middleware import CallNext, Middleware
from .._core.retry import check_timeout


def timeout(seconds: float | timedelta) -> Middleware:
    """Fail a step that runs longer than ``seconds`` (a number, or a ``timedelta``).

    At action level the step fails with :class:`~asyncflow.ActionTimeout`;
    at the other levels with :class:`~asyncflow.StepTimeout`. Both are
    ``TimeoutError`` and name the step and the limit. What the step was
    doing is cancelled through an anyio cancel scope.
    """
    limit = check_timeout(seconds, "mw.timeout")
    if limit is None:
        raise TypeError("mw.timeout needs a number of seconds, got None")

    async def time_limit(ctx: MiddlewareContext, call_next: CallNext) -> None:
        with anyio.move_on_after(limit) as scope:
            await call_next()
        if scope.cancelled_caught:
            action = ctx.action
            if action is not None:
                raise ActionTimeout(
                    run_id=ctx.run_id, stage_id=ctx.stage_id or "", action_name=action.name, seconds=limit
                )
            raise StepTimeout(ctx.describe(), limit)

    return time_limit
