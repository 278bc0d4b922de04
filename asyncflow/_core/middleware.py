"""Middleware chains at the four levels: run, stage, actions block, action.

A middleware is an async callable ``(ctx, call_next)``: code before ``await
call_next()`` runs before the wrapped step, code after runs after. The first
registered is the outermost. A chain is composed once (per run for the run
and stage levels, per stage for the actions block and action levels), never
per action call: calling through a layer costs one small partial and one
coroutine frame.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from .errors import MiddlewareError, with_article

if TYPE_CHECKING:
    from .context import MiddlewareContext


class CallNext(Protocol):
    """``call_next`` as a middleware receives it: await it to run what is wrapped."""

    def __call__(self) -> Awaitable[None]:
        """Run the wrapped step (at action level, once more per call: a retry)."""
        ...


class Middleware(Protocol):
    """An async callable ``(ctx, call_next)`` wrapping a run, a stage, an actions block or an action."""

    def __call__(self, ctx: MiddlewareContext, call_next: CallNext, /) -> Awaitable[None]:
        """Do work before and after ``await call_next()``; skip, retry, time-limit or recover."""
        ...


Level = Literal["run", "stage", "actions", "action"]


def check_middleware(mw: object, where: str) -> Middleware:
    """Return ``mw`` if it is an async callable of ``(ctx, call_next)``, else raise TypeError."""
    target = mw if inspect.isfunction(mw) or inspect.ismethod(mw) else getattr(mw, "__call__", None)  # noqa: B004
    if target is None or not callable(mw):
        raise TypeError(f"middleware for {where} must be an async callable (ctx, call_next), got {mw!r}")
    if not inspect.iscoroutinefunction(target) and not inspect.iscoroutinefunction(mw):
        raise TypeError(
            f"middleware for {where} must be async (async def mw(ctx, call_next)), but {mw!r} is not"
        )
    try:
        inspect.signature(mw).bind(None, None)
    except TypeError:
        raise TypeError(
            f"middleware for {where} must take two arguments (ctx, call_next), but {mw!r} does not"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): trust it
        pass
    return mw


def check_middlewares(mws: Sequence[object], where: str) -> list[Middleware]:
    """Validate every middleware in ``mws``."""
    if isinstance(mws, (str, bytes)) or not isinstance(mws, Sequence):
        raise TypeError(f"middleware for {where} must be a list of middleware, got {mws!r}")
    return [check_middleware(mw, where) for mw in mws]


Handler = Callable[["MiddlewareContext"], Awaitable[None]]


def called_twice(ctx: MiddlewareContext) -> MiddlewareError:
    """The error for a second ``call_next`` where only action-level middleware may call it again.

    Refused at the innermost handler of the run, stage and actions levels, so
    ``call_next`` itself can stay a plain partial or bound method.
    """
    return MiddlewareError(
        f"call_next was called twice by {with_article(ctx.level)}-level middleware of {ctx.describe()}; "
        f"only action-level middleware may call it again (to retry)"
    )


def _layer(mw: Middleware, inner: Handler) -> Handler:
    """One middleware around ``inner``.

    A plain function (cheaper to call than an object) that returns the
    middleware's own coroutine: a layer adds no coroutine frame of its own,
    only one partial per call.
    """
    bind = functools.partial

    def layer(ctx: MiddlewareContext) -> Awaitable[None]:
        return mw(ctx, bind(inner, ctx))

    return layer


class Chain(NamedTuple):
    """Middleware composed once, first registered outermost.

    The runner calls the outermost middleware itself: ``first(ctx,
    call_next)``. With one middleware (``inner`` is ``None``) ``call_next``
    is the context's own bound method that runs the wrapped step; with more,
    it is ``partial(inner, ctx)``, and the innermost layer hands its
    middleware that bound method. A chain holds no runner and no step, so
    one serves every stage and run with the same middleware.
    """

    first: Middleware
    inner: Handler | None


def compose(mws: Sequence[Middleware], innermost: Callable[[Middleware], Handler]) -> Chain:
    """Compose ``mws`` (at least one); ``innermost(mw)`` makes the layer of the innermost of two or more."""
    if not mws:
        raise ValueError("compose needs at least one middleware")
    if len(mws) == 1:
        return Chain(mws[0], None)
    handler = innermost(mws[-1])
    for mw in reversed(mws[1:-1]):
        handler = _layer(mw, handler)
    return Chain(mws[0], handler)


def call_chain(chain: Chain, ctx: MiddlewareContext, call_next: CallNext) -> Awaitable[None]:
    """Run ``chain`` around a step: ``call_next`` is what the innermost middleware gets to run it."""
    inner = chain.inner
    return chain.first(ctx, call_next if inner is None else functools.partial(inner, ctx))
