"""``mw.inject_store(values)``: put values into the run's store before a step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._core.context import MiddlewareContext
from .._core.middleware import CallNext, Middleware


def inject_store(values: Mapping[str, Any]) -> Middleware:
    """Put ``values`` into the run's store (overwriting) before each step it wraps.

    Works at every level; at run level the values are there before the first stage.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"mw.inject_store takes a mapping of store keys to values, got {values!r}")
    items = dict(values)
    for key in items:
        if not isinstance(key, str):
            raise TypeError(f"mw.inject_store keys must be strings, got {key!r}")

    async def inject(ctx: MiddlewareContext, call_next: CallNext) -> None:
        for key, value in items.items():
            ctx.store.put(key, value)
        await call_next()

    return inject
