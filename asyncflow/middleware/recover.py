"""``mw.recover(predicate)``: swallow errors that match, and keep them on record."""

from __future__ import annotations

from collections.abc import Callable

from .._core.context import MiddlewareContext
from .._core.errors import Bail, LeaseLost, Suspend
from .._core.middleware import CallNext, Middleware


def _always(exc: Exception) -> bool:
    return True


def recover(predicate: Callable[[Exception], bool] = _always) -> Middleware:
    """Swallow the errors of a step for which ``predicate(exc)`` is true.

    The step is recorded completed with the error in ``recovered_error``
    (nothing is hidden) and the run goes on. A bail, a suspension, a lost
    lease and cancellation are never swallowed.
    """
    if not callable(predicate):
        raise TypeError(f"mw.recover takes a predicate (exc) -> bool, got {predicate!r}")

    async def recover_step(ctx: MiddlewareContext, call_next: CallNext) -> None:
        try:
            await call_next()
        except (Bail, Suspend, LeaseLost):
            raise
        except Exception as exc:
            if not predicate(exc):
                raise
            ctx.logger.warning("{} recovered from {}: {}", ctx.describe(), type(exc).__name__, exc)

    return recover_step
