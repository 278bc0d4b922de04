"""examples/fastapi_app.py, the order service: through its routes in process, and as the script it is."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import fastapi_app  # noqa: E402

ORDER = {"order_id": "B-7", "lines": [{"sku": "mug", "qty": 2, "price": "8.50"}]}


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the example app, its lifespan entered (in the test's own task, as anyio wants)."""
    app = fastapi_app.create_app(str(tmp_path / "orders.db"))
    assert app.router.lifespan_context is not None
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def status_of(client: httpx.AsyncClient, run_id: str, wanted: str) -> dict[str, Any]:
    with anyio.fail_after(10):
        while True:
            run: dict[str, Any] = (await client.get(f"/runs/{run_id}")).json()
            if run["status"] == wanted:
                return run
            await anyio.sleep(0.01)


async def test_an_order_runs_to_approval_then_ships_once_approved(tmp_path: Path) -> None:
    """POST /orders suspends for approval after a stage per line; approving ships it; a retry is no error."""
    async with serving(tmp_path) as client:
        placed = (await client.post("/orders", json=ORDER)).json()
        run = await status_of(client, placed["run_id"], "suspended")
        assert [s["stage_id"] for s in run["plan"]] == ["validate", "reserve", "line-1", "charge", "approve"]
        assert run["suspend_data"] == {"order_id": "B-7", "total": "17.00"}
        first = await client.post("/orders/B-7/approve", json={"approval_id": "ap-9", "by": "bo"})
        again = await client.post("/orders/B-7/approve", json={"approval_id": "ap-9", "by": "bo"})
        done = await status_of(client, placed["run_id"], "completed")
        assert (first.json()["resumed"], again.json()["resumed"]) == (True, False)
        assert done["plan"][-1]["stage_id"] == "ship"


async def test_the_same_order_twice_is_one_run(tmp_path: Path) -> None:
    """The order id is the idempotency key: placing it again returns the same run, created false."""
    async with serving(tmp_path) as client:
        first = (await client.post("/orders", json=ORDER)).json()
        again = (await client.post("/orders", json=ORDER)).json()
        await status_of(client, first["run_id"], "suspended")
        assert again == {**first, "created": False}


async def test_an_unknown_order_cannot_be_approved(tmp_path: Path) -> None:
    """Approving an order that was never placed is a 404."""
    async with serving(tmp_path) as client:
        response = await client.post("/orders/nope/approve", json={"approval_id": "a", "by": "b"})
        assert response.status_code == 404


async def test_a_quote_is_computed_inline_and_streamed_as_events(tmp_path: Path) -> None:
    """POST /quote answers the in-memory workflow's result; GET /quote/stream streams a run's events."""
    async with serving(tmp_path) as client:
        quote = (await client.post("/quote", json={"prices": ["10.00", "5.50"]})).json()
        stream = await client.get("/quote/stream", params={"prices": "1.00,2.00"})
        kinds = [
            line.removeprefix("event: ") for line in stream.text.splitlines() if line.startswith("event: ")
        ]
        assert quote == {"total": "18.60", "steps": ["price", "tax"]}
        assert kinds[0] == "run_created"
        assert kinds[-1] == "run_finished"
        assert kinds.count("message") == 2


def test_the_script_places_approves_and_ships_an_order_over_http() -> None:
    """``python examples/fastapi_app.py`` serves on 127.0.0.1, and its order completes after one approval."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "fastapi_app.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "the same order again: created False" in done.stdout
    assert "approval: resumed True\napproval: resumed False" in done.stdout
    assert (
        "order completed: validate -> reserve -> line-1 -> line-2 -> charge -> approve -> ship" in done.stdout
    )
