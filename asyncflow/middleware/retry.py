"""``mw.retry(...)``: try an action again when it raises."""

from __future__ import annotations

from loguru import logger

from .._core.context import MiddlewareContext
from .._core.errors import MiddlewareError
from .._core.middleware import CallNext, Middleware
from .._core.retry import Retry, RetryOn
from ..backoff import Backoff, exponential


def retry(
    attempts: int = 3,
    *,
    backoff: Backoff | None = None,
    retry_on: RetryOn = (Exception,),
) -> Middleware:
    """Retry each action it wraps, at action level only.

    Each retry is a fresh attempt: the failed attempt's store writes and
    plan insertions are discarded, and ``ctx.attempt`` counts up.
    :class:`~asyncflow.NonRetryable`, a bail and cancellation are never
    retried; back-off sleeps honour cancellation.

    Args:
        attempts: tries in all, the first included (at least 1).
        backoff: seconds to wait after a failed attempt (default
            ``backoff.exponential(0.1)``).
        retry_on: exception types to retry, or a predicate ``(exc) -> bool``.
    """
    policy = Retry(attempts=attempts, backoff=backoff or exponential(0.1), retry_on=retry_on)

    async def retry_action(ctx: MiddlewareContext, call_next: CallNext) -> None:
        if ctx.level != "action":
            raise MiddlewareError(
                f"mw.retry() can only wrap actions, but it was registered at {ctx.level} level "
                f"({ctx.describe()}); register it with action_middleware= or use_action()"
            )
        attempt = 1
        while True:
            try:
                await call_next()
                return
            except Exception as exc:
                if not policy.should_retry(exc, attempt):
                    raise
                delay = policy.backoff(attempt)
                logger.info(
                    "{} failed on attempt {} ({}: {}); retrying in {:.3f}s",
                    ctx.describe(),
                    attempt,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await ctx.clock.sleep(delay)  # the run's clock: FakeClock in tests
                attempt += 1

    return retry_action
