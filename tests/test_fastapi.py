"""The FastAPI integration: lifespan, EngineDep, and every route of runs_router over httpx's ASGITransport."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from helpers import GATES, approval, gate

import asyncflow as af
from asyncflow.integrations.fastapi import EngineDep, lifespan, runs_router
from asyncflow.integrations.logging import to_stdlib

PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def _fresh_gates() -> None:
    GATES.clear()


@af.action
async def note(ctx: af.ActionContext) -> None:
    """Write a store key and send a message."""
    ctx.store["noted"] = ctx.store.get_or("n", 0)
    ctx.logger.info("noted")
    await ctx.send("progress", {"pct": 100})


@af.action
async def branch(ctx: af.ActionContext) -> None:
    """Insert a stage."""
    ctx.add_dynamic_stage(af.Stage("inserted", actions=[note]))


@af.action
async def hold(ctx: af.ActionContext) -> None:
    """Wait until the test lets it go."""
    gate("hold").set()
    await gate("hold.go").wait()


GROWING = af.Workflow(
    "growing", stages=[af.Stage("first", actions=[branch]), af.Stage("last", actions=[note])]
)
APPROVAL = af.Workflow("approval", stages=[af.Stage("s", actions=[note, approval])])
HOLDING = af.Workflow("holding", stages=[af.Stage("s", actions=[hold])])


@pytest.fixture(params=[pytest.param("memory", id="memory"), pytest.param("sqlite", id="sqlite")])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> af.Engine:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'runs.db'}"
    engine = af.Engine(url, lease=1.0)
    for workflow in (GROWING, APPROVAL, HOLDING):
        engine.register(workflow)
    return engine


def make_app(engine: af.Engine, **options: Any) -> FastAPI:
    app = FastAPI(lifespan=lifespan(engine))
    app.include_router(runs_router(engine, **options))
    return app


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` with its lifespan entered (ASGITransport does not run it)."""
    assert app.router.lifespan_context is not None
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def start(client: httpx.AsyncClient, workflow_id: str, **body: Any) -> str:
    response = await client.post("/runs", json={"workflow_id": workflow_id, **body})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def until(client: httpx.AsyncClient, run_id: str, *statuses: str) -> dict[str, Any]:
    """Poll the run until its status is one of ``statuses`` (fails after a generous 10 s)."""
    with anyio.fail_after(10):
        while True:
            body: dict[str, Any] = (await client.get(f"/runs/{run_id}")).json()
            if body["status"] in statuses:
                return body
            await anyio.sleep(0.01)


def assert_problem(response: httpx.Response, status: int, match: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert match in body["detail"], body


def sse(text: str) -> list[dict[str, Any]]:
    """The events of a server-sent events body: id, event and the JSON of data."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append({"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])})
    return events


# ---- starting ---------------------------------------------------------------------------------


async def test_post_starts_a_registered_workflow_and_answers_202_with_its_url(engine: af.Engine) -> None:
    """POST /runs answers 202 with the run's id, URL (also as Location) and created true."""
    async with serving(make_app(engine)) as client:
        response = await client.post("/runs", json={"workflow_id": "growing", "store": {"n": 3}})
        body = response.json()
        assert response.status_code == 202
        assert body["url"] == f"/runs/{body['run_id']}" == response.headers["location"]
        assert body["created"] is True
        run = await until(client, body["run_id"], "completed")
    assert run["workflow_id"] == "growing"


async def test_idempotency_key_returns_the_same_run_and_a_different_request_is_409(engine: af.Engine) -> None:
    """The same Idempotency-Key finds the run (created false); with another store it is a 409 problem."""
    async with serving(make_app(engine)) as client:
        first = await client.post(
            "/runs", json={"workflow_id": "growing"}, headers={"Idempotency-Key": "o-1"}
        )
        again = await client.post(
            "/runs", json={"workflow_id": "growing"}, headers={"Idempotency-Key": "o-1"}
        )
        other = await client.post(
            "/runs", json={"workflow_id": "growing", "store": {"n": 1}}, headers={"Idempotency-Key": "o-1"}
        )
        await until(client, first.json()["run_id"], "completed")
    assert (first.json()["created"], again.json()["created"]) == (True, False)
    assert again.json()["run_id"] == first.json()["run_id"]
    assert_problem(other, 409, "another initial store")


async def test_start_of_an_unregistered_workflow_is_404_and_names_the_registered(engine: af.Engine) -> None:
    """A workflow id the engine does not know (an import path, say) is a 404 problem; nothing starts."""
    async with serving(make_app(engine)) as client:
        response = await client.post("/runs", json={"workflow_id": "os:system"})
        listed = (await client.get("/runs")).json()
    assert_problem(response, 404, "no workflow 'os:system' is registered")
    assert "growing" in response.json()["detail"]
    assert listed["runs"] == []


@pytest.mark.parametrize("store", [[1, 2], "text", 3, None])
async def test_a_store_that_is_not_a_json_object_is_422(engine: af.Engine, store: Any) -> None:
    """A store that is not a JSON object is a 422 problem naming the store."""
    async with serving(make_app(engine)) as client:
        response = await client.post("/runs", json={"workflow_id": "growing", "store": store})
    assert_problem(response, 422, "store")


async def test_an_idempotency_key_over_200_characters_is_422(engine: af.Engine) -> None:
    """An Idempotency-Key header over 200 characters is a 422 problem."""
    async with serving(make_app(engine)) as client:
        response = await client.post(
            "/runs", json={"workflow_id": "growing"}, headers={"Idempotency-Key": "k" * 201}
        )
    assert_problem(response, 422, "Idempotency-Key")


# ---- listing and reading ------------------------------------------------------------------------


async def test_list_filters_by_status_and_pages_with_a_cursor(engine: af.Engine) -> None:
    """GET /runs filters by status and workflow, and next_cursor gives the next page without repeats."""
    async with serving(make_app(engine)) as client:
        done = [await start(client, "growing") for _ in range(3)]
        for run_id in done:
            await until(client, run_id, "completed")
        parked = await start(client, "approval")
        await until(client, parked, "suspended")
        suspended = (await client.get("/runs", params={"status": "suspended"})).json()
        first = (await client.get("/runs", params={"workflow_id": "growing", "limit": 2})).json()
        second = (
            await client.get(
                "/runs", params={"workflow_id": "growing", "limit": 2, "cursor": first["next_cursor"]}
            )
        ).json()
    assert [r["run_id"] for r in suspended["runs"]] == [parked]
    assert len(first["runs"]) == 2
    assert len(second["runs"]) == 1
    assert second["next_cursor"] is None
    assert {r["run_id"] for r in first["runs"] + second["runs"]} == set(done)


async def test_a_list_cursor_never_issued_is_422(engine: af.Engine) -> None:
    """GET /runs with a cursor that no page gave is a 422 problem naming the cursor."""
    async with serving(make_app(engine)) as client:
        response = await client.get("/runs", params={"cursor": "not-a-cursor"})
    assert_problem(response, 422, "cursor")


async def test_an_unknown_status_filter_is_422(engine: af.Engine) -> None:
    """GET /runs?status=unknown is a 422 problem."""
    async with serving(make_app(engine)) as client:
        response = await client.get("/runs", params={"status": "sideways"})
    assert_problem(response, 422, "status")


async def test_get_run_gives_the_plan_as_a_tree_with_dynamic_steps_marked(engine: af.Engine) -> None:
    """GET /runs/{id} gives status, timings and the plan: stages with their actions, inserted ones marked."""
    async with serving(make_app(engine)) as client:
        run_id = await start(client, "growing")
        run = await until(client, run_id, "completed")
    assert [(s["stage_id"], s["dynamic"], s["status"]) for s in run["plan"]] == [
        ("first", False, "completed"),
        ("inserted", True, "completed"),
        ("last", False, "completed"),
    ]
    assert [a["action_name"] for a in run["plan"][1]["actions"]] == ["note"]
    assert run["plan"][1]["inserted_by"] == "first/branch"
    assert run["duration"] >= 0
    assert run["created_at"] <= run["updated_at"]
    assert run["store"] is None


async def test_get_run_gives_the_plan_so_far_while_it_runs(engine: af.Engine) -> None:
    """While a run executes, GET /runs/{id} shows its running and pending steps."""
    async with serving(make_app(engine)) as client:
        run_id = await start(client, "holding")
        with anyio.fail_after(5):
            await gate("hold").wait()
        run = (await client.get(f"/runs/{run_id}")).json()
        gate("hold.go").set()
        await until(client, run_id, "completed")
    assert run["status"] == "running"
    assert [(s["stage_id"], s["status"]) for s in run["plan"]] == [("s", "running")]
    assert run["plan"][0]["actions"][0]["status"] == "running"


async def test_store_is_shown_only_with_expose_store(engine: af.Engine) -> None:
    """The run's store appears in GET /runs/{id} only when the router was made with expose_store=True."""
    async with serving(make_app(engine, expose_store=True)) as client:
        run_id = await start(client, "growing", store={"n": 7})
        run = await until(client, run_id, "completed")
    assert run["store"] == {"n": 7, "noted": 7}


async def test_an_unknown_run_is_404_on_every_run_route(engine: af.Engine) -> None:
    """Every route about one run answers 404 with a problem body for a run that does not exist."""
    async with serving(make_app(engine)) as client:
        responses = [
            await client.get("/runs/nope"),
            await client.post("/runs/nope/resume", json={}),
            await client.post("/runs/nope/cancel"),
            await client.delete("/runs/nope"),
            await client.get("/runs/nope/mermaid"),
            await client.get("/runs/nope/events"),
        ]
    for response in responses:
        assert_problem(response, 404, "nope")


# ---- resume, cancel, delete -----------------------------------------------------------------------


async def test_resume_continues_a_suspended_run_and_a_retried_key_is_not_an_error(engine: af.Engine) -> None:
    """POST .../resume answers 202; the same key again answers 202 with created false."""
    async with serving(make_app(engine, expose_store=True)) as client:
        run_id = await start(client, "approval")
        parked = await until(client, run_id, "suspended")
        first = await client.post(f"/runs/{run_id}/resume", json={"data": {"ok": True}, "key": "a-1"})
        run = await until(client, run_id, "completed")
        again = await client.post(f"/runs/{run_id}/resume", json={"data": {"ok": True}, "key": "a-1"})
    assert parked["suspend_reason"] == "needs approval"
    assert parked["suspend_data"] == {"amount": 5}
    assert (first.status_code, first.json()["created"]) == (202, True)
    assert (again.status_code, again.json()["created"]) == (202, False)
    assert run["store"]["approved"] == {"ok": True}


async def test_a_run_resumed_with_a_key_shows_it(engine: af.Engine) -> None:
    """GET /runs/{id} gives resume_key: null while suspended, the key once resumed with one."""
    async with serving(make_app(engine)) as client:
        run_id = await start(client, "approval")
        parked = await until(client, run_id, "suspended")
        await client.post(f"/runs/{run_id}/resume", json={"data": {"ok": True}, "key": "approval-7"})
        run = await until(client, run_id, "completed")
    assert (parked["resume_key"], run["resume_key"]) == (None, "approval-7")


async def test_a_blank_resume_key_is_a_422_problem(engine: af.Engine) -> None:
    """A resume key of whitespace only ("\\x1d" too) is refused as bad input, not a server error."""
    async with serving(make_app(engine)) as client:
        run_id = await start(client, "approval")
        await until(client, run_id, "suspended")
        response = await client.post(f"/runs/{run_id}/resume", json={"data": 1, "key": "\x1d"})
    assert_problem(response, 422, "blank")


async def test_resume_of_a_run_that_is_not_suspended_is_409(engine: af.Engine) -> None:
    """Resuming a completed run is a 409 problem saying it is not suspended."""
    async with serving(make_app(engine)) as client:
        run_id = await start(client, "growing")
        await until(client, run_id, "completed")
        response = await client.post(f"/runs/{run_id}/resume", json={"data": 1})
    assert_problem(response, 409, "not suspended")


async def test_cancel_ends_a_suspended_run_and_a_second_cancel_is_409(engine: af.Engine) -> None:
    """POST .../cancel answers the cancelled run; cancelling it again is a 409 problem."""
    async with serving(make_app(engine)) as client:
        run_id = await start(client, "approval")
        await until(client, run_id, "suspended")
        cancelled = await client.post(f"/runs/{run_id}/cancel")
        again = await client.post(f"/runs/{run_id}/cancel")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert_problem(again, 409, "already ended")


async def test_delete_removes_a_run_and_refuses_one_running_here(engine: af.Engine) -> None:
    """DELETE answers 204 and the run is gone (404 after); a run running here is a 409 problem."""
    async with serving(make_app(engine)) as client:
        done = await start(client, "growing")
        await until(client, done, "completed")
        deleted = await client.delete(f"/runs/{done}")
        gone = await client.get(f"/runs/{done}")
        running = await start(client, "holding")
        with anyio.fail_after(5):
            await gate("hold").wait()
        refused = await client.delete(f"/runs/{running}")
        gate("hold.go").set()
        await until(client, running, "completed")
    assert deleted.status_code == 204
    assert gone.status_code == 404
    assert_problem(refused, 409, "cancel it before deleting")


# ---- pictures and events ---------------------------------------------------------------------------


async def test_mermaid_draws_the_run_as_plain_text(engine: af.Engine) -> None:
    """GET .../mermaid answers a Mermaid flowchart of the run, its inserted stage marked dynamic."""
    async with serving(make_app(engine)) as client:
        run_id = await start(client, "growing")
        await until(client, run_id, "completed")
        response = await client.get(f"/runs/{run_id}/mermaid")
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("flowchart")
    assert "inserted" in response.text
    assert "dynamic" in response.text


async def test_events_stream_as_sse_and_last_event_id_goes_on_after_it(engine: af.Engine) -> None:
    """GET .../events streams the run's events (id = cursor); Last-Event-ID gives exactly the rest."""
    async with serving(make_app(engine)) as client:
        run_id = await start(client, "growing")
        await until(client, run_id, "completed")
        response = await client.get(f"/runs/{run_id}/events")
        events = sse(response.text)
        rest = sse(
            (await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": events[3]["id"]})).text
        )
        by_query = sse((await client.get(f"/runs/{run_id}/events", params={"after": events[3]["id"]})).text)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[0]["event"] == "run_created"
    assert events[-1]["event"] == "run_finished"
    assert ("stage_inserted", "inserted") in [(e["event"], e["data"]["stage_id"]) for e in events]
    assert [e["data"]["payload"] for e in events if e["event"] == "message"] == [{"pct": 100}, {"pct": 100}]
    assert rest == by_query == events[4:]


async def test_an_events_cursor_never_issued_is_422(engine: af.Engine) -> None:
    """A Last-Event-ID that the run's events never had is a 422 problem, not a stream."""
    async with serving(make_app(engine)) as client:
        run_id = await start(client, "growing")
        await until(client, run_id, "completed")
        response = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "12345"})
    assert_problem(response, 422, "never issued")


# ---- the page, the engine, dependencies -------------------------------------------------------------


async def test_the_runs_page_and_its_files_are_served_under_the_prefix(engine: af.Engine) -> None:
    """GET {prefix}/ui serves the page naming its prefix, and its script and style from the package."""
    async with serving(make_app(engine, prefix="/admin/runs")) as client:
        page = await client.get("/admin/runs/ui")
        script = await client.get("/admin/runs/ui/app.js")
        style = await client.get("/admin/runs/ui/style.css")
        missing = await client.get("/admin/runs/ui/other.js")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'window.ASYNCFLOW_PREFIX = "/admin/runs"' in page.text
    assert 'src="/admin/runs/ui/app.js"' in page.text
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text
    assert "prefers-color-scheme: dark" in style.text
    assert_problem(missing, 404, "other.js")


async def test_routes_answer_503_while_the_engine_is_not_open(engine: af.Engine) -> None:
    """With the engine not open, the routes answer 503 with a problem body."""
    app = FastAPI()
    app.include_router(runs_router(engine))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        started = await client.post("/runs", json={"workflow_id": "growing"})
        listed = await client.get("/runs")
        one = await client.get("/runs/x")
    assert_problem(started, 503, "not open")
    assert_problem(listed, 503, "not open")
    assert_problem(one, 503, "not open")


async def require_key(x_api_key: str | None = Header(default=None)) -> None:
    if x_api_key != "secret":
        raise HTTPException(401, "a valid X-API-Key is needed")


async def test_dependencies_protect_every_route_the_page_included(engine: af.Engine) -> None:
    """A dependency given to runs_router guards every route: without the key each answers 401."""
    app = make_app(engine, dependencies=[Depends(require_key)])
    async with serving(app) as client:
        refused = [
            await client.post("/runs", json={"workflow_id": "growing"}),
            await client.get("/runs"),
            await client.get("/runs/x"),
            await client.post("/runs/x/resume", json={}),
            await client.post("/runs/x/cancel"),
            await client.delete("/runs/x"),
            await client.get("/runs/x/mermaid"),
            await client.get("/runs/x/events"),
            await client.get("/runs/ui"),
            await client.get("/runs/ui/app.js"),
        ]
        allowed = await client.get("/runs", headers={"X-API-Key": "secret"})
    assert [r.status_code for r in refused] == [401] * len(refused)
    assert allowed.status_code == 200


async def test_lifespan_runs_the_apps_own_inside_and_engine_dep_hands_out_the_engine(
    engine: af.Engine,
) -> None:
    """lifespan(engine, wraps=own) runs the app's lifespan with the engine open; EngineDep hands it out."""
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await engine.list_runs(limit=1)  # (af.EngineNotOpen unless the engine is open)
        seen.append("own start, engine open: True")
        yield {"greeting": "hi"}
        seen.append("own stop")

    app = FastAPI(lifespan=lifespan(engine, wraps=own))

    @app.post("/inline")
    async def inline(engine: EngineDep) -> dict[str, str]:
        handle = await engine.start(GROWING)
        result = await handle.result()
        return {"status": result.status.value}

    async with serving(app) as client:
        response = await client.post("/inline")
    assert response.json() == {"status": "completed"}
    assert seen == ["own start, engine open: True", "own stop"]
    with pytest.raises(af.EngineNotOpen):
        await engine.start(GROWING)


async def test_engine_dep_without_the_lifespan_is_503() -> None:
    """A handler taking EngineDep in an app without the lifespan answers 503 saying what to do."""
    app = FastAPI()

    @app.get("/x")
    async def handler(engine: EngineDep) -> dict[str, str]:
        return {}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/x")
    assert response.status_code == 503
    assert "lifespan" in response.json()["detail"]


def test_runs_router_refuses_a_prefix_without_a_slash(engine: af.Engine) -> None:
    """runs_router(prefix="runs") is a ValueError naming the prefix."""
    with pytest.raises(ValueError, match="'runs'"):
        runs_router(engine, prefix="runs")


# ---- logging ---------------------------------------------------------------------------------------


async def test_to_stdlib_sends_records_with_their_bound_fields(caplog: pytest.LogCaptureFixture) -> None:
    """After to_stdlib(), asyncflow's records reach logging with run_id and workflow_id as attributes."""
    from loguru import logger

    handler_id = to_stdlib()
    try:
        with caplog.at_level(logging.DEBUG):
            result = await af.run(GROWING)
    finally:
        logger.remove(handler_id)
        logger.disable("asyncflow")
    noted = [r for r in caplog.records if r.getMessage() == "noted"]
    assert len(noted) == 2, [r.getMessage() for r in caplog.records]
    assert {(r.levelname, getattr(r, "run_id", None), getattr(r, "stage_id", None)) for r in noted} == {
        ("INFO", result.run_id, "inserted"),
        ("INFO", result.run_id, "last"),
    }
    assert all(r.asyncflow["workflow_id"] == "growing" for r in noted)  # type: ignore[attr-defined]
    assert any(r.name.startswith("asyncflow._core") for r in caplog.records)
