"""asyncflow inside a FastAPI app (``pip install 'asyncflow[fastapi]'``).

::

    from fastapi import Depends, FastAPI
    from asyncflow.integrations.fastapi import EngineDep, lifespan, runs_router

    engine = af.Engine("sqlite:///runs.db")
    engine.register(orders)

    app = FastAPI(lifespan=lifespan(engine, log_to_stdlib=True))
    app.include_router(runs_router(engine, prefix="/runs", dependencies=[Depends(require_api_key)]))

    @app.post("/orders/{order_id}")
    async def place(order_id: str, engine: EngineDep) -> dict[str, str]:
        handle = await engine.start(orders, store={"order": order_id}, idempotency_key=order_id)
        return {"run": handle.run_id}

- :func:`lifespan` opens the engine with the app and closes it with the app
  (``lifespan(engine, wraps=my_lifespan)`` runs the app's own inside it; or
  enter ``lifespan(engine)(app)`` from yours).
- :data:`EngineDep` hands a handler the engine of the app's lifespan.
- :func:`runs_router` serves runs over HTTP, their events as server-sent
  events, and a runs page at ``{prefix}/ui``.
"""

from __future__ import annotations

try:
    import fastapi as _fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "asyncflow.integrations.fastapi needs FastAPI: pip install 'asyncflow[fastapi]'"
    ) from exc

from .app import EngineDep, get_engine, lifespan
from .router import runs_router

__all__ = ["EngineDep", "get_engine", "lifespan", "runs_router"]
