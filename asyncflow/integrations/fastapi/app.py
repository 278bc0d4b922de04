"""The lifespan that opens and closes an engine with a FastAPI app, and the dependency that hands it out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request

from ..._core.engine import Engine

#: Where the lifespan puts the engine: ``app.state.asyncflow_engine``.
STATE_KEY = "asyncflow_engine"

Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[Any]]


def lifespan(
    engine: Engine,
    *,
    log_to_stdlib: bool = False,
    wraps: Lifespan | None = None,
) -> Lifespan:
    """A FastAPI lifespan that opens ``engine`` when the app starts and closes it when the app stops.

    ::

        app = FastAPI(lifespan=lifespan(engine))

    Closing the engine gives runs in flight back (another engine, or the next
    start, takes them over) and ends every ``engine.watch``, so a server's
    graceful shutdown never waits on open event streams.

    Args:
        engine: the engine (its workflows registered).
        log_to_stdlib: send asyncflow's log records to :mod:`logging`
            (:func:`asyncflow.integrations.logging.to_stdlib`), as uvicorn logs.
        wraps: the app's own lifespan, run inside this one (the engine is open
            while it runs); what it yields is the app's state, as FastAPI has it.
            It may be the lifespan of another engine: the outer engine stays the
            one :data:`EngineDep` hands out.
            To run this one inside yours instead: ``async with lifespan(engine)(app): ...``.
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"lifespan takes an af.Engine, got {engine!r}")

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[Mapping[str, Any] | None]:
        if log_to_stdlib:
            from ..logging import to_stdlib

            to_stdlib()
        async with engine:
            # The first engine opened is the app's (EngineDep's): a lifespan of another engine
            # inside this one (wraps=lifespan(other)) opens and closes that one, and changes nothing here.
            mine = getattr(app.state, STATE_KEY, None) is None
            if mine:
                setattr(app.state, STATE_KEY, engine)
            try:
                if wraps is None:
                    yield None
                else:
                    async with wraps(app) as state:
                        yield state
            finally:
                if mine:
                    with contextlib.suppress(AttributeError, KeyError):
                        delattr(app.state, STATE_KEY)

    return run


def get_engine(request: Request) -> Engine:
    """The engine of the app's :func:`lifespan` (503 if the app has none open)."""
    engine = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(engine, Engine):
        raise HTTPException(
            503,
            "no asyncflow engine is open for this app: create it with FastAPI(lifespan=lifespan(engine))",
        )
    return engine


#: A handler's parameter that receives the engine: ``async def h(engine: EngineDep): ...``.
EngineDep = Annotated[Engine, Depends(get_engine)]
