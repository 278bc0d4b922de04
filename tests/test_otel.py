"""OpenTelemetry: the span tree of runs, their attributes, events and metrics (asyncflow[otel])."""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import asyncflow as af
from asyncflow.integrations.opentelemetry import Instrumentation, instrument


class Telemetry:
    """An instrumented runner with in-memory span and metric readers."""

    def __init__(self, runner: af.Runner | af.Engine) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.instrumentation: Instrumentation = instrument(runner, self.tracer_provider, self.meter_provider)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def by_name(self, name: str) -> ReadableSpan:
        found = [span for span in self.spans() if span.name == name]
        assert len(found) == 1, [span.name for span in self.spans()]
        return found[0]

    def parent_name(self, span: ReadableSpan) -> str | None:
        if span.parent is None:
            return None
        for other in self.spans():
            if other.context is not None and other.context.span_id == span.parent.span_id:
                return other.name
        return "<not exported>"

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        data = self.reader.get_metrics_data()
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = (point.count, point.sum)  # type: ignore[union-attr]
                        found.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
        return found


@pytest.fixture
def telemetry() -> Iterator[tuple[af.Runner, Telemetry]]:
    runner = af.Runner()
    tel = Telemetry(runner)
    yield runner, tel
    tel.instrumentation.uninstrument()


tries: dict[str, int] = {}


@af.action(name="flaky", retry=af.Retry(attempts=3, backoff=af.backoff.fixed(0)))
async def flaky(ctx: af.ActionContext) -> None:
    tries[ctx.run_id] = tries.get(ctx.run_id, 0) + 1
    if tries[ctx.run_id] == 1:
        raise ConnectionError("try again")


@af.action(name="leaf")
async def leaf(ctx: af.ActionContext) -> None:
    ctx.store["leaf"] = True


@af.action(name="grow")
async def grow(ctx: af.ActionContext) -> None:
    ctx.add_dynamic_action(leaf)
    ctx.add_dynamic_stage(af.Stage("inserted", actions=[flaky]))
    ctx.add_dynamic_stage(af.Stage("switched-off", actions=[leaf]))
    ctx.plan.disable_stage("switched-off")


@af.action(name="boom")
async def boom(ctx: af.ActionContext) -> None:
    raise ValueError("no stock")


def tree_workflow() -> af.Workflow:
    return af.Workflow(
        "traced",
        stages=[af.Stage("first", actions=[grow]), af.Stage("last", actions=[boom])],
    )


async def test_span_tree_nests_runs_stages_and_actions(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """Stages are children of the run, actions of their stage, inserted steps of whoever inserted them."""
    runner, tel = telemetry
    with pytest.raises(af.ActionFailed):
        await runner.run(tree_workflow())
    parents = {span.name: tel.parent_name(span) for span in tel.spans()}
    assert parents == {
        "run traced": None,
        "stage first": "run traced",
        "action grow": "stage first",
        "action leaf": "action grow",
        "stage inserted": "stage first",
        "action flaky": "stage inserted",
        "stage switched-off": "stage first",
        "stage last": "run traced",
        "action boom": "stage last",
    }
    trace_ids = {span.context.trace_id for span in tel.spans() if span.context is not None}
    assert len(trace_ids) == 1


async def test_span_attributes_follow_the_naming(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """Action spans carry run, workflow, stage, action, dynamic, attempt and status attributes."""
    runner, tel = telemetry
    with pytest.raises(af.ActionFailed) as failed:
        await runner.run(tree_workflow())
    attributes = dict(tel.by_name("action leaf").attributes or {})
    assert attributes == {
        "asyncflow.run_id": failed.value.run_id,
        "asyncflow.workflow_id": "traced",
        "asyncflow.stage_id": "first",
        "asyncflow.action": "leaf",
        "asyncflow.dynamic": True,
        "asyncflow.attempt": 1,
        "asyncflow.status": "completed",
    }
    assert tel.by_name("stage inserted").attributes["asyncflow.dynamic"] is True  # type: ignore[index]
    assert tel.by_name("stage first").attributes["asyncflow.dynamic"] is False  # type: ignore[index]


async def test_skipped_stage_is_a_span_with_its_reason(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """A skipped step is a span of no length with status skipped and the skip reason."""
    runner, tel = telemetry
    with pytest.raises(af.ActionFailed):
        await runner.run(tree_workflow())
    span = tel.by_name("stage switched-off")
    assert span.attributes is not None
    assert span.attributes["asyncflow.status"] == "skipped"
    assert span.attributes["asyncflow.skip_reason"] == "disabled"
    assert span.start_time == span.end_time


async def test_retry_is_a_span_event(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """A retried action has one asyncflow.retry event per retry, with the error, and its last attempt."""
    runner, tel = telemetry
    with pytest.raises(af.ActionFailed):
        await runner.run(tree_workflow())
    span = tel.by_name("action flaky")
    assert [event.name for event in span.events] == ["asyncflow.retry"]
    retry = dict(span.events[0].attributes or {})
    assert retry == {
        "asyncflow.attempt": 2,
        "exception.type": "ConnectionError",
        "exception.message": "try again",
    }
    assert span.attributes is not None
    assert span.attributes["asyncflow.attempt"] == 2
    assert span.status.status_code is StatusCode.UNSET


async def test_failure_is_an_exception_with_status_error(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """A failed action, its stage and the run end with status ERROR, the action with the exception."""
    runner, tel = telemetry
    with pytest.raises(af.ActionFailed):
        await runner.run(tree_workflow())
    action = tel.by_name("action boom")
    assert action.status.status_code is StatusCode.ERROR
    assert action.status.description == "ValueError: no stock"
    exceptions = [event for event in action.events if event.name == "exception"]
    assert exceptions[0].attributes is not None
    assert exceptions[0].attributes["exception.type"] == "ValueError"
    assert tel.by_name("stage last").status.status_code is StatusCode.ERROR
    run = tel.by_name("run traced")
    assert run.status.status_code is StatusCode.ERROR
    assert run.attributes is not None
    assert run.attributes["asyncflow.status"] == "failed"


async def test_parent_span_comes_from_the_caller(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """A run started inside the caller's span is a child of it, in its trace."""
    runner, tel = telemetry
    tracer = tel.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        await runner.run(af.Workflow("small", stages=[af.Stage("only", actions=[leaf])]))
    run = tel.by_name("run small")
    assert run.parent is not None
    assert run.parent.span_id == request.get_span_context().span_id
    assert run.context is not None
    assert run.context.trace_id == request.get_span_context().trace_id


@af.action(name="wait-for-approval")
async def approval(ctx: af.ActionContext) -> None:
    if ctx.resume_data is None:
        ctx.suspend("needs approval", {"amount": 3})


async def test_suspended_run_ends_unset_with_an_event(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """A suspended run's span ends with status UNSET and an asyncflow.suspended event with the reason."""
    runner, tel = telemetry
    result = await runner.run(af.Workflow("approve", stages=[af.Stage("gate", actions=[approval])]))
    assert result.status is af.RunStatus.SUSPENDED
    run = tel.by_name("run approve")
    assert run.status.status_code is StatusCode.UNSET
    assert [(event.name, dict(event.attributes or {})) for event in run.events] == [
        ("asyncflow.suspended", {"asyncflow.reason": "needs approval"})
    ]
    assert {span.name for span in tel.spans()} == {"run approve", "stage gate", "action wait-for-approval"}


async def test_metrics_count_runs_and_time_actions(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """Runs started and ended are counted by workflow, actions timed, and in flight goes back to 0."""
    runner, tel = telemetry
    small = af.Workflow("small", stages=[af.Stage("only", actions=[leaf, leaf])])
    await runner.run(small)
    await runner.run(small)
    with pytest.raises(af.ActionFailed):
        await runner.run(tree_workflow())
    metrics = tel.metrics()
    assert sorted(metrics["asyncflow.runs.started"], key=repr) == [
        ({"asyncflow.workflow_id": "small"}, 2),
        ({"asyncflow.workflow_id": "traced"}, 1),
    ]
    assert metrics["asyncflow.runs.completed"] == [({"asyncflow.workflow_id": "small"}, 2)]
    assert metrics["asyncflow.runs.failed"] == [({"asyncflow.workflow_id": "traced"}, 1)]
    assert sorted(value for _, value in metrics["asyncflow.runs.in_flight"]) == [0, 0]
    durations = {
        (attributes["asyncflow.workflow_id"], attributes["asyncflow.action"]): value[0]
        for attributes, value in metrics["asyncflow.action.duration"]
    }
    assert durations[("small", "leaf")] == 4
    assert durations[("traced", "boom")] == 1


async def test_cancelled_run_is_counted(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """A cancelled run ends its span with status cancelled and counts as cancelled."""
    import anyio

    runner, tel = telemetry
    started = anyio.Event()

    @af.action(name="hang")
    async def hang(ctx: af.ActionContext) -> None:
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(runner.run, af.Workflow("hanging", stages=[af.Stage("only", actions=[hang])]))
        with anyio.fail_after(5):
            await started.wait()
        group.cancel_scope.cancel()
    assert tel.metrics()["asyncflow.runs.cancelled"] == [({"asyncflow.workflow_id": "hanging"}, 1)]
    assert tel.by_name("run hanging").attributes["asyncflow.status"] == "cancelled"  # type: ignore[index]


async def test_uninstrument_stops_tracing(telemetry: tuple[af.Runner, Telemetry]) -> None:
    """After uninstrument(), runs make no spans."""
    runner, tel = telemetry
    tel.instrumentation.uninstrument()
    await runner.run(af.Workflow("small", stages=[af.Stage("only", actions=[leaf])]))
    assert tel.spans() == []


def test_instrument_refuses_other_objects() -> None:
    """instrument() of something that is neither a runner nor an engine is a TypeError naming it."""
    with pytest.raises(TypeError, match=r"af\.Runner or an af\.Engine, got 'runner'"):
        instrument("runner")  # type: ignore[arg-type]


async def test_engine_run_is_a_child_of_the_starting_span(tmp_path: Path) -> None:
    """A durable run started inside a request's span is a child of that span."""
    engine = af.Engine(f"sqlite:///{tmp_path / 'runs.db'}")
    tel = Telemetry(engine)
    tracer = tel.tracer_provider.get_tracer("test")
    async with engine:
        with tracer.start_as_current_span("POST /orders") as request:
            handle = await engine.start(af.Workflow("durable", stages=[af.Stage("only", actions=[leaf])]))
        result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    run = tel.by_name("run durable")
    assert run.parent is not None
    assert run.parent.span_id == request.get_span_context().span_id
    assert tel.parent_name(tel.by_name("action leaf")) == "stage only"


TESTS = Path(__file__).parent


@pytest.fixture(params=["sqlite", "postgres"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An engine URL on a real SQLite file, or on the test PostgreSQL server (skipped without one)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _hex(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


async def test_run_resumed_in_another_process_starts_a_new_trace_linked_to_the_first(
    durable_url: str,
) -> None:
    """A run resumed in another process gets a run span in a new trace, with a link to its first run span."""
    import otel_child

    engine = af.Engine(durable_url)
    engine.register(otel_child.WORKFLOW)
    tel = Telemetry(engine)
    async with engine:
        handle = await engine.start(otel_child.WORKFLOW)
        result = await handle.result()
    assert result.status is af.RunStatus.SUSPENDED
    first_trace, first_span = _hex(tel.by_name("run approval"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [sys.executable, str(TESTS / "otel_child.py"), durable_url, handle.run_id], env=env
        )
    spans = {span["name"]: span for span in json.loads(done.stdout)}
    run = spans["run approval"]
    assert run["trace_id"] != first_trace
    assert run["parent"] is None
    assert run["links"] == [[first_trace, first_span]]
    assert spans["action approve"]["trace_id"] == run["trace_id"]
    assert spans["stage gate"]["parent"] == run["span_id"]


class Hold:
    """Whether the ``hold`` action waits forever, and the event it sets when it begins to."""

    on = True
    started = anyio.Event()


@af.action(name="hold")
async def hold_action(ctx: af.ActionContext) -> None:
    if Hold.on:
        Hold.started.set()
        await anyio.sleep_forever()


async def test_run_taken_over_by_another_engine_links_to_its_first_execution(tmp_path: Path) -> None:
    """A run given back by a closing engine and taken over by another gets a run span linked to the first."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    workflow = af.Workflow("held", stages=[af.Stage("only", actions=[hold_action])])
    first = af.Engine(url)
    first_tel = Telemetry(first)
    Hold.on, Hold.started = True, anyio.Event()
    try:
        async with first:
            handle = await first.start(workflow)
            with anyio.fail_after(10):
                await Hold.started.wait()
            Hold.on = False
    finally:
        Hold.on = False
    interrupted = first_tel.by_name("run held")
    assert interrupted.attributes is not None
    assert interrupted.attributes["asyncflow.status"] == "interrupted"
    second = af.Engine(url, poll_interval=0.05)
    second.register(workflow)
    second_tel = Telemetry(second)
    async with second:
        with anyio.fail_after(30):
            result = await second.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    run = second_tel.by_name("run held")
    assert interrupted.context is not None
    assert run.context is not None
    assert [link.context.span_id for link in run.links] == [interrupted.context.span_id]
    assert run.context.trace_id != interrupted.context.trace_id


async def test_spans_made_in_a_child_process_join_the_actions_trace(
    telemetry: tuple[af.Runner, Telemetry],
) -> None:
    """A span that user code makes in an isolated stage's child process is a child of the action's span."""
    import otel_child

    runner, tel = telemetry
    workflow = af.Workflow(
        "isolated", stages=[af.Stage("apart", actions=[otel_child.traced_in_child], isolation="process")]
    )
    result = await runner.run(workflow)
    made = result.store["child_span"]
    assert made["pid"] != os.getpid()
    action = tel.by_name("action traced-in-child")
    assert (made["trace_id"], made["parent"]) == _hex(action)


async def test_spans_made_in_an_action_are_children_of_its_span(
    telemetry: tuple[af.Runner, Telemetry],
) -> None:
    """While an action runs its span is the current one: spans its code makes nest under it."""
    runner, tel = telemetry
    tracer = tel.tracer_provider.get_tracer("user code")

    @af.action(name="calls-out")
    async def calls_out(ctx: af.ActionContext) -> None:
        with tracer.start_as_current_span("HTTP GET"):
            pass

    await runner.run(af.Workflow("outward", stages=[af.Stage("only", actions=[calls_out, leaf])]))
    assert tel.parent_name(tel.by_name("HTTP GET")) == "action calls-out"
    from opentelemetry import trace

    assert not trace.get_current_span().get_span_context().is_valid  # nothing left current after the run


async def test_run_left_for_workers_links_to_the_span_that_started_it(tmp_path: Path) -> None:
    """A run started for workers keeps the caller's context; the worker's run span links to that span."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    workflow = af.Workflow("queued", stages=[af.Stage("only", actions=[leaf])])
    starter = af.Engine(url, concurrency=0)
    starter_tel = Telemetry(starter)
    async with starter:
        with starter_tel.tracer_provider.get_tracer("app").start_as_current_span("POST /queue") as request:
            handle = await starter.start(workflow)
    assert [span.name for span in starter_tel.spans()] == ["POST /queue"]  # (nothing runs here)
    worker = af.Engine(url, poll_interval=0.05)
    worker.register(workflow)
    worker_tel = Telemetry(worker)
    async with worker:
        with anyio.fail_after(30):
            result = await worker.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    run = worker_tel.by_name("run queued")
    assert [link.context.span_id for link in run.links] == [request.get_span_context().span_id]


def spans_left_open(run_ids: set[str]) -> list[Span]:
    """The spans of ``run_ids`` still in memory and never ended (so never exported)."""
    gc.collect()
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, Span)
        and obj.end_time is None
        and (obj.attributes or {}).get("asyncflow.run_id") in run_ids
    ]


async def test_runs_started_for_workers_leave_no_span_in_the_starting_process(tmp_path: Path) -> None:
    """Starting many runs for workers keeps no span for them; the request span they link to is exported."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    workflow = af.Workflow("queued", stages=[af.Stage("only", actions=[leaf])])
    starter = af.Engine(url, concurrency=0)
    starter_tel = Telemetry(starter)
    tracer = starter_tel.tracer_provider.get_tracer("app")
    async with starter:
        run_ids = set()
        for _ in range(200):
            with tracer.start_as_current_span("POST /queue"):
                run_ids.add((await starter.start(workflow)).run_id)
        assert spans_left_open(run_ids) == []
    assert [span.name for span in starter_tel.spans()] == ["POST /queue"] * 200


async def test_a_run_cancelled_before_it_began_ends_its_run_span(tmp_path: Path) -> None:
    """A run cancelled before it began here ends (exports) the span begun by engine.start; none is kept."""
    engine = af.Engine(f"sqlite:///{tmp_path / 'runs.db'}")
    tel = Telemetry(engine)
    workflow = af.Workflow("stopped", stages=[af.Stage("only", actions=[leaf])])
    async with engine:
        run_ids = set()
        for _ in range(20):
            handle = await engine.start(workflow)
            await engine.cancel(handle.run_id)  # before its task began
            run_ids.add(handle.run_id)
        with anyio.fail_after(30):
            for run_id in run_ids:
                assert (await engine.wait(run_id)).status is af.RunStatus.CANCELLED
        assert spans_left_open(run_ids) == []
    runs = [span for span in tel.spans() if span.name == "run stopped"]
    assert {(span.attributes or {}).get("asyncflow.run_id") for span in runs} == run_ids
    assert {(span.attributes or {}).get("asyncflow.status") for span in runs} == {"cancelled"}


async def test_log_lines_from_a_child_process_are_written_in_the_actions_trace_context(
    telemetry: tuple[af.Runner, Telemetry],
) -> None:
    """A log line an isolated action writes in its child is relayed with the action's span current."""
    import otel_child
    from loguru import logger
    from opentelemetry import trace

    runner, tel = telemetry
    seen: list[str] = []

    def sink(message: Any) -> None:
        if message.record["message"] == "working in the child":
            seen.append(f"{trace.get_current_span().get_span_context().span_id:016x}")

    handler = logger.add(sink, level="INFO")
    try:
        actions = [otel_child.traced_in_child, otel_child.logs_in_child]
        await runner.run(
            af.Workflow("isolated", stages=[af.Stage("apart", actions=actions, isolation="process")])
        )
    finally:
        logger.remove(handler)
    assert seen == [_hex(tel.by_name(f"action {name}"))[1] for name in ("traced-in-child", "logs-in-child")]
