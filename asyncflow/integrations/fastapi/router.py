"""The runs router: start, list, inspect, resume, cancel, delete and watch runs over HTTP; the runs page."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from html import escape
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.routing import APIRoute
from loguru import logger

from ..._core.engine import Engine
from ..._core.errors import (
    BackendError,
    EngineNotOpen,
    IdempotencyConflict,
    InvalidDefinition,
    NotSerializable,
    RunStateError,
    UnknownCursor,
    UnknownRun,
    WorkflowError,
)
from ..._core.events import RunEvent
from ..._core.records import RunResult, RunStatus
from ..._core.serial import step_from_json
from .models import (
    MAX_KEY_LENGTH,
    Accepted,
    Problem,
    ResumeRequest,
    RunList,
    RunView,
    StartRequest,
    summary,
    view,
)

PROBLEM = "application/problem+json"

_TITLES = {
    404: "Not Found",
    409: "Conflict",
    422: "Unprocessable Content",
    503: "Service Unavailable",
}


def problem(status: int, detail: str, instance: str | None = None) -> JSONResponse:
    """An ``application/problem+json`` response."""
    body = Problem(title=_TITLES.get(status, "Error"), status=status, detail=detail, instance=instance)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM)


def status_of(error: BaseException) -> int | None:
    """The HTTP status an asyncflow error maps to (``None``: not one the router knows)."""
    if isinstance(error, UnknownRun):
        return 404
    if isinstance(error, (EngineNotOpen, BackendError)):
        return 503
    if isinstance(error, (RunStateError, IdempotencyConflict)):
        return 409
    if isinstance(error, (InvalidDefinition, NotSerializable, UnknownCursor)):
        return 422
    if isinstance(error, WorkflowError) and isinstance(error, (ValueError, TypeError, LookupError)):
        return 422
    return None


class _ProblemRoute(APIRoute):
    """A route whose errors are problem+json: asyncflow's errors, bad input, and HTTP errors.

    (A router cannot install exception handlers on the app that includes it,
    so its routes turn their own errors into responses.)
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return problem(422, _validation_detail(exc), request.url.path)
            except HTTPException as exc:
                return problem(exc.status_code, str(exc.detail), request.url.path)
            except WorkflowError as exc:
                code = status_of(exc)
                if code is None:
                    raise
                return problem(code, str(exc), request.url.path)

        return handle


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request is not valid"


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM: {}}, "description": _TITLES[code]}
    for code in (404, 409, 422, 503)
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: _ERRORS[code] for code in (*codes, 422, 503)}


RunId = Annotated[str, Path(min_length=1, max_length=500, description="The run's id.")]


def runs_router(
    engine: Engine,
    *,
    prefix: str = "/runs",
    dependencies: Sequence[Depends] = (),
    expose_store: bool = False,
    tags: Sequence[str] = ("runs",),
) -> APIRouter:
    """An :class:`fastapi.APIRouter` for ``engine``'s runs, and the runs page at ``{prefix}/ui``.

    ::

        app = FastAPI(lifespan=lifespan(engine))
        app.include_router(runs_router(engine, dependencies=[Depends(require_api_key)]))

    Routes (JSON; errors are ``application/problem+json``): ``POST {prefix}``
    starts a run of a workflow *registered* with the engine (``{"workflow_id",
    "store"}``, optional ``Idempotency-Key`` header) and answers 202 with its
    URL; ``GET {prefix}`` lists runs (``status``, ``workflow_id``, ``limit``,
    ``cursor``); ``GET {prefix}/{run_id}`` gives a run with its plan so far;
    ``POST .../resume`` (``{"data", "key"}``), ``POST .../cancel``, ``DELETE``;
    ``GET .../mermaid`` draws the run; ``GET .../events`` streams its events
    as server-sent events (``id:`` is the cursor; ``Last-Event-ID`` resumes).

    Errors: an unknown run, or a workflow id not registered, is 404; a run in the
    wrong state, or an idempotency key reused for another request, 409; an
    invalid payload, store or cursor 422; an engine that is not open (or is closing) 503.

    Args:
        engine: the engine whose runs the routes manage (open it with :func:`lifespan`).
        prefix: where the routes go.
        dependencies: applied to every route, the page included (authentication).
        expose_store: show each run's store in ``GET {prefix}/{run_id}`` (off:
            stores often hold what only the workflow should see).
        tags: OpenAPI tags of the routes.
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"runs_router takes an af.Engine, got {engine!r}")
    prefix = prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ValueError(f"prefix must start with '/', got {prefix!r}")
    for name in ("index.html", *_ASSETS):  # read now, not in a request (no file I/O on the loop)
        _static(name)
    router = APIRouter(
        prefix=prefix, dependencies=list(dependencies), tags=list(tags), route_class=_ProblemRoute
    )

    def url_of(run_id: str) -> str:
        return f"{prefix}/{run_id}"

    # ---- the page (before /{run_id}, so "ui" is never taken for a run id) ----------------

    @router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    async def runs_page() -> HTMLResponse:
        html = (
            _static("index.html")
            .replace("__PREFIX__", json.dumps(prefix).replace("<", "\\u003c"))
            .replace("__BASE__", escape(prefix))
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @router.get("/ui/{asset}", include_in_schema=False)
    async def runs_page_asset(asset: str) -> Response:
        media = _ASSETS.get(asset)
        if media is None:
            return problem(404, f"no file {asset!r} in the runs page")
        return Response(_static(asset), media_type=media)

    # ---- the API ------------------------------------------------------------------------------

    @router.post(
        "",
        status_code=202,
        response_model=Accepted,
        summary="Start a run of a registered workflow",
        responses=_errors(404, 409),
    )
    async def start_run(
        body: StartRequest,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=MAX_KEY_LENGTH,
                description="Start at most once per key; the same key with another request is 409.",
            ),
        ] = None,
    ) -> Accepted:
        registered = {workflow.id: workflow for workflow in engine.workflows}
        workflow = registered.get(body.workflow_id)
        if workflow is None:
            raise HTTPException(
                404,
                f"no workflow {body.workflow_id!r} is registered with the engine; this API starts only "
                f"registered workflows (registered: {sorted(registered)})",
            )
        handle = await engine.start(workflow, store=body.store, idempotency_key=idempotency_key)
        response.headers["Location"] = url_of(handle.run_id)
        return Accepted(run_id=handle.run_id, url=url_of(handle.run_id), created=handle.created)

    @router.get("", response_model=RunList, summary="List runs, newest first", responses=_errors())
    async def list_runs(
        status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
        workflow_id: Annotated[str | None, Query(max_length=500, description="Only this workflow's.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Runs per page.")] = 50,
        cursor: Annotated[str | None, Query(max_length=1000, description="next_cursor of a page.")] = None,
    ) -> RunList:
        try:
            page = await engine.list_runs(status=status, workflow_id=workflow_id, limit=limit, cursor=cursor)
        except ValueError as exc:  # a cursor that was never issued
            raise HTTPException(422, str(exc)) from None
        return RunList(
            runs=[summary(info, url_of(info.run_id)) for info in page.runs], next_cursor=page.next_cursor
        )

    @router.get(
        "/{run_id}", response_model=RunView, summary="A run and its plan so far", responses=_errors(404)
    )
    async def get_run(run_id: RunId) -> RunView:
        info = await engine.get_run(run_id)
        store = await engine.get_store(run_id) if expose_store else None
        return view(info, url_of(run_id), store)

    @router.post(
        "/{run_id}/resume",
        status_code=202,
        response_model=Accepted,
        summary="Resume a suspended run",
        responses=_errors(404, 409),
    )
    async def resume_run(run_id: RunId, body: ResumeRequest) -> Accepted:
        handle = await engine.resume(run_id, body.data, key=body.key)
        return Accepted(run_id=run_id, url=url_of(run_id), created=handle.created)

    @router.post(
        "/{run_id}/cancel", response_model=RunView, summary="Cancel a run", responses=_errors(404, 409)
    )
    async def cancel_run(run_id: RunId) -> RunView:
        await engine.cancel(run_id)
        return view(await engine.get_run(run_id), url_of(run_id), None)

    @router.delete(
        "/{run_id}",
        status_code=204,
        response_class=Response,
        summary="Delete a run that is not running here",
        responses=_errors(404, 409),
    )
    async def delete_run(run_id: RunId) -> Response:
        if not await engine.delete_run(run_id):
            raise UnknownRun(f"no run {run_id!r}")
        return Response(status_code=204)

    @router.get(
        "/{run_id}/mermaid",
        response_class=PlainTextResponse,
        summary="The run as a Mermaid flowchart",
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(404)},
    )
    async def run_mermaid(run_id: RunId) -> PlainTextResponse:
        info = await engine.get_run(run_id)
        result = RunResult(
            run_id=info.run_id,
            workflow_id=info.workflow_id,
            status=info.status,
            store={},
            duration=max(info.updated_at - info.created_at, 0.0),
            steps=[step_from_json(step) for step in info.steps or []],
        )
        return PlainTextResponse(result.to_mermaid())

    @router.get(
        "/{run_id}/events",
        summary="The run's events as server-sent events",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "One event per run event: id is its cursor, event its kind, data its JSON.",
            },
            **_errors(404),
        },
    )
    async def run_events(
        run_id: RunId,
        last_event_id: Annotated[
            str | None,
            Header(alias="Last-Event-ID", max_length=40, description="Go on after this event (a reconnect)."),
        ] = None,
        after: Annotated[
            str | None, Query(max_length=40, description="Go on after this cursor (as Last-Event-ID).")
        ] = None,
    ) -> StreamingResponse:
        cursor = last_event_id if last_event_id is not None else after
        # Checked here, before the response starts: an unknown run or cursor is a problem, not a stream.
        await engine.events(run_id, after=cursor, limit=1)
        return StreamingResponse(
            _sse(engine.watch(run_id, after=cursor)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router


async def _sse(events: AsyncIterator[RunEvent]) -> AsyncIterator[str]:
    """A watch as server-sent events; it ends with the run, or when the client goes away."""
    try:
        async for event in events:
            key = (event.run_id, event.cursor)
            text = _ENCODED.get(key)
            if text is None:  # (encoded once for all the watchers of a run)
                data = json.dumps(event.to_json(), default=repr)
                text = f"id: {event.cursor}\nevent: {event.kind.value}\ndata: {data}\n\n"
                if len(_ENCODED) >= 4096:
                    _ENCODED.clear()
                _ENCODED[key] = text
            yield text
    except WorkflowError as exc:  # (the run was deleted meanwhile, the database went away...)
        logger.warning("the event stream ended early: {}: {}", type(exc).__name__, exc)
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


#: Recent events as server-sent text, by (run id, cursor): an event's text never changes.
_ENCODED: dict[tuple[str, str], str] = {}
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
_CACHE: dict[str, str] = {}


def _static(name: str) -> str:
    text = _CACHE.get(name)
    if text is None:
        text = _CACHE[name] = resources.files(__package__).joinpath("static", name).read_text("utf-8")
    return text
