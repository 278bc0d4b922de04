"""An order service in FastAPI: durable order runs, an approval, an inline workflow, and the runs page.

- ``POST /orders`` starts a durable run per order, with the order id as its
  idempotency key (a retried request finds the same run): validate, reserve,
  a stage inserted per line item, charge, then a suspend until someone
  approves, then ship.
- ``POST /orders/{order_id}/approve`` resumes it (the approval id as the
  resume key, so a retried approval is not an error).
- ``POST /quote`` awaits a short in-memory workflow inline and answers its
  result; ``GET /quote/stream`` streams one's events as server-sent events
  with ``engine.watch`` (safe in a streaming response: no task group is held
  across a ``yield``, and a client that leaves stops nothing).
- The runs router is mounted at ``/runs`` and its page at ``/runs/ui``.

``python examples/fastapi_app.py`` serves the app on 127.0.0.1 with uvicorn,
places an order, approves it and prints what happened, then stops;
``python examples/fastapi_app.py --serve`` keeps serving (open
http://127.0.0.1:8000/runs/ui). Needs ``pip install 'asyncflow[fastapi]' uvicorn httpx``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

import asyncflow as af
from asyncflow.integrations.fastapi import EngineDep, lifespan, runs_router

# ---- the order workflow (module level: durable runs re-create actions by import path) -------


@af.action
async def validate(ctx: af.ActionContext) -> None:
    """Refuse an order without lines."""
    if not ctx.store.get("lines", list):
        raise ValueError(f"order {ctx.store.get('order_id')} has no lines")


@af.action
async def reserve(ctx: af.ActionContext) -> None:
    """Insert one stage per line item (each runs after this stage)."""
    for index, line in enumerate(ctx.store.get("lines", list)):
        ctx.add_dynamic_stage(af.Stage(f"line-{index + 1}", actions=[PickLine(line["sku"], line["qty"])]))


class PickLine(af.Action):
    """Reserve one line item (made with JSON arguments, so a durable run can re-create it)."""

    def __init__(self, sku: str, qty: int) -> None:
        self.sku = sku
        self.qty = qty

    async def execute(self, ctx: af.ActionContext) -> None:
        await ctx.send("picked", {"sku": self.sku, "qty": self.qty})
        ctx.store[f"picked.{self.sku}"] = self.qty


@af.action
async def charge(ctx: af.ActionContext) -> None:
    """Charge the order's total (a Decimal kept as text: store values are JSON)."""
    total = sum(Decimal(line["price"]) * line["qty"] for line in ctx.store.get("lines", list))
    ctx.store["charged"] = str(total)
    ctx.store["payment"] = f"pay-{ctx.idempotency_key[-8:]}"  # the same on every execution of the step


@af.action
async def approval(ctx: af.ActionContext) -> None:
    """Wait for a person: suspend with what they need to decide, go on with their answer."""
    if not ctx.is_resuming:
        ctx.suspend(
            "needs approval", {"order_id": ctx.store.get("order_id"), "total": ctx.store.get("charged")}
        )
    ctx.store["approved_by"] = ctx.resume_data["by"]


@af.action
async def ship(ctx: af.ActionContext) -> None:
    """Hand the order to shipping."""
    ctx.store["shipped"] = True


ORDER = af.Workflow(
    "order",
    stages=[
        af.Stage("validate", actions=[validate]),
        af.Stage("reserve", actions=[reserve]),
        af.Stage("charge", actions=[charge]),
        af.Stage("approve", actions=[approval]),
        af.Stage("ship", actions=[ship]),
    ],
)


# ---- a short in-memory workflow, awaited inline ---------------------------------------------------


@af.action
async def price(ctx: af.ActionContext) -> None:
    """Price the items."""
    ctx.store["subtotal"] = str(sum(Decimal(p) for p in ctx.store.get("prices", list)))
    await ctx.send("progress", {"step": "priced"})


@af.action
async def tax(ctx: af.ActionContext) -> None:
    """Add 20% tax."""
    ctx.store["total"] = str(
        (Decimal(ctx.store.get("subtotal", str)) * Decimal("1.2")).quantize(Decimal("0.01"))
    )
    await ctx.send("progress", {"step": "taxed"})


QUOTE = af.Workflow("quote", stages=[af.Stage("price", actions=[price]), af.Stage("tax", actions=[tax])])


# ---- the app ----------------------------------------------------------------------------------------


class Line(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    qty: int = Field(ge=1, le=1000)
    price: str = Field(pattern=r"^\d+(\.\d{1,2})?$")


class Order(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    lines: list[Line] = Field(min_length=1)


class Approval(BaseModel):
    approval_id: str = Field(min_length=1, max_length=64)
    by: str = Field(min_length=1, max_length=64)


class Quote(BaseModel):
    prices: list[str] = Field(min_length=1)


def create_app(db_path: str, *, log_to_stdlib: bool = False) -> FastAPI:
    """The order service on an SQLite file (orders) and an in-memory engine (quotes)."""
    orders = af.Engine(f"sqlite:///{db_path}")
    orders.register(ORDER)
    quotes = af.Engine()  # in memory: short runs, nothing to keep
    quotes.register(QUOTE)

    # Two engines, one lifespan inside the other (lifespan(..., wraps=...) composes with any lifespan).
    app = FastAPI(
        title="orders", lifespan=lifespan(orders, log_to_stdlib=log_to_stdlib, wraps=lifespan(quotes))
    )
    app.include_router(runs_router(orders, prefix="/runs"))

    @app.post("/orders", status_code=202)
    async def place_order(order: Order, engine: EngineDep, response: Response) -> dict[str, Any]:
        handle = await engine.start(
            ORDER,
            store={"order_id": order.order_id, "lines": [line.model_dump() for line in order.lines]},
            idempotency_key=f"order:{order.order_id}",
        )
        response.headers["Location"] = f"/runs/{handle.run_id}"
        return {"run_id": handle.run_id, "created": handle.created, "page": f"/runs/ui#/run/{handle.run_id}"}

    @app.post("/orders/{order_id}/approve", status_code=202)
    async def approve(order_id: str, body: Approval, engine: EngineDep) -> dict[str, Any]:
        page = await engine.list_runs(workflow_id="order", limit=1000)
        run = next((r for r in page.runs if r.idempotency_key == f"order:{order_id}"), None)
        if run is None:
            raise HTTPException(404, f"no order {order_id!r}")
        try:
            handle = await engine.resume(run.run_id, {"by": body.by}, key=body.approval_id)
        except af.RunStateError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"run_id": handle.run_id, "resumed": handle.created}

    @app.post("/quote")
    async def quote(body: Quote) -> dict[str, Any]:
        result = await af.run(QUOTE, store={"prices": body.prices})  # inline, in memory
        return {"total": result.store["total"], "steps": result.action_order()}

    @app.get("/quote/stream")
    async def quote_stream(prices: str = "10.00,5.50") -> StreamingResponse:
        handle = await quotes.start(QUOTE, store={"prices": prices.split(",")})

        async def events() -> AsyncIterator[str]:
            async for event in handle.watch():  # no task group held across this yield
                data = json.dumps(event.to_json())
                yield f"id: {event.cursor}\nevent: {event.kind.value}\ndata: {data}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# ---- running it ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def sse_kinds(client: Any, url: str, after: str | None = None) -> tuple[list[str], str | None]:
    """Read a run's server-sent events until the stream ends (the run ended or suspended): kinds, last id."""
    kinds: list[str] = []
    last = after
    headers = {"Last-Event-ID": after} if after else {}
    async with client.stream("GET", url, headers=headers) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
            elif line.startswith("id: "):
                last = line.removeprefix("id: ")
    return kinds, last


async def demo(app: FastAPI, port: int) -> None:
    """Place an order, watch it until it suspends, approve it (twice: a retry), and get a quote."""
    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        for _ in range(500):  # up to 10 s for the server to listen
            if server.started:
                break
            await anyio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            lines = [{"sku": "mug", "qty": 2, "price": "8.50"}, {"sku": "tea", "qty": 1, "price": "4.00"}]
            order = {"order_id": "A-1001", "lines": lines}
            placed = (await client.post("/orders", json=order)).json()
            again = (await client.post("/orders", json=order)).json()
            print(f"order placed: run {placed['run_id']} (created {placed['created']})")
            print(f"the same order again: created {again['created']}")
            run_url = f"/runs/{placed['run_id']}"
            kinds, cursor = await sse_kinds(client, f"{run_url}/events")  # ends when the run suspends
            print(f"watched {len(kinds)} events up to {kinds[-1]}")
            run = (await client.get(run_url)).json()
            print(f"suspended: {run['suspend_reason']} {run['suspend_data']}")
            print(
                "plan so far:",
                " -> ".join(s["stage_id"] + ("*" if s["dynamic"] else "") for s in run["plan"]),
            )
            for _ in range(2):  # the second is a retried approval: no error, nothing resumed again
                body = {"approval_id": "ap-1", "by": "ann"}
                approved = (await client.post("/orders/A-1001/approve", json=body)).json()
                print(f"approval: resumed {approved['resumed']}")
            kinds, cursor = await sse_kinds(client, f"{run_url}/events", after=cursor)  # goes on after it
            print(f"then {len(kinds)} more events, from {kinds[0]} to {kinds[-1]}")
            run = (await client.get(run_url)).json()
            print(f"order {run['status']}: {' -> '.join(s['stage_id'] for s in run['plan'])}")
            print("quote:", (await client.post("/quote", json={"prices": ["10.00", "5.50"]})).json())
            kinds, _ = await sse_kinds(client, "/quote/stream")
            print("quote events:", ", ".join(kinds))
        server.should_exit = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="keep serving on 127.0.0.1:8000")
    parser.add_argument("--db", default=None, help="the SQLite file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.serve:
            import logging

            import uvicorn
            from loguru import logger

            logger.remove()  # (loguru's own stderr handler: asyncflow's records go through logging now)
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
            uvicorn.run(
                create_app(args.db or os.path.join(tmp, "orders.db"), log_to_stdlib=True),
                host="127.0.0.1",
                port=8000,
            )
        else:
            asyncio.run(demo(create_app(args.db or os.path.join(tmp, "orders.db")), free_port()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
