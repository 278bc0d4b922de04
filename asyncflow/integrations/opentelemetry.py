"""OpenTelemetry traces and metrics of runs (``pip install 'asyncflow[otel]'``).

One call turns it on, for a :class:`~asyncflow.Runner` or an
:class:`~asyncflow.Engine` (its runner)::

    from asyncflow.integrations.opentelemetry import instrument

    instrumentation = instrument(engine)          # the global tracer and meter providers
    ...
    instrumentation.uninstrument()               # off again

It listens to the runner's lifecycle events (it is not a middleware), so a
runner that is not instrumented pays nothing.

**Spans.** One span per run (``run <workflow id>``), a child of the span that
was current where the run started (``runner.run`` or ``engine.start`` inside a
traced request); one per stage (``stage <stage id>``), a child of the run, or,
for a stage inserted at run time, of the stage whose action inserted it; one
per action (``action <name>``), a child of its stage, or, for an action added
at run time, of the action that added it. A skipped step is a span of no
length with its reason. Attributes: ``asyncflow.run_id``,
``asyncflow.workflow_id``, ``asyncflow.stage_id``, ``asyncflow.action``,
``asyncflow.dynamic``, ``asyncflow.attempt``, ``asyncflow.status``,
``asyncflow.skip_reason``. A failure is recorded as an exception with status
ERROR; each retry is an ``asyncflow.retry`` event on the action's span; a
suspended run's span ends with status UNSET and an ``asyncflow.suspended``
event (its reason). A durable run resumed later (or taken over after a crash)
gets a new run span, in the trace of whoever resumed it. The run span that
``engine.start`` begins for a run that then never begins executing here
(cancelled first, or given back) is ended at once, with ``asyncflow.status``
``cancelled`` or ``given back``: nothing is kept for runs executing elsewhere.

**Metrics.** Counters ``asyncflow.runs.started``, ``.completed``,
``.failed``, ``.cancelled``, ``.bailed`` and ``.suspended`` (attribute
``asyncflow.workflow_id``); a histogram ``asyncflow.action.duration`` in
seconds (``asyncflow.workflow_id``, ``asyncflow.action``); an up-down counter
``asyncflow.runs.in_flight``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from .._core.engine import Engine
from .._core.events import Event, EventKind
from .._core.runner import Runner
from .._core.tracing import Carrier, Tracing

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["Instrumentation", "instrument"]

_EXTRA = "pip install 'asyncflow[otel]'"
_NS = 1_000_000_000


def _import_otel() -> Any:
    try:
        from opentelemetry import context, metrics, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError as exc:  # pragma: no cover - exercised without the extra only
        raise ImportError(
            f"asyncflow.integrations.opentelemetry needs OpenTelemetry: {_EXTRA} ({exc})"
        ) from None
    return context, metrics, trace, TraceContextTextMapPropagator()


@attrs.define(slots=True)
class _RunSpans:
    """The open (and parent-to-be) spans of one run."""

    run: Span
    workflow_id: str
    #: the run span as a parent (made once per run, not per stage)
    run_parent: Context
    #: what every step span of the run carries
    base: dict[str, Any]
    stages: dict[str, Span] = attrs.field(factory=dict)
    #: each stage span as a parent (made once per stage, not per action)
    stage_parents: dict[str, Context] = attrs.field(factory=dict)
    #: the actions running now, by key: their span, made current for their code until they end
    running: dict[str, tuple[Span, Token[Context]]] = attrs.field(factory=dict)
    #: the spans (as parents) of the actions that added actions; no other action span is kept
    #: once ended: a run of 10,000 actions would otherwise hold 10,000 spans for the collector to walk
    inserters: dict[str, Context] = attrs.field(factory=dict)
    open: set[int] = attrs.field(factory=set)  # ids of the stage spans not yet ended


class Instrumentation:
    """Traces and metrics of one runner's runs, from :func:`instrument`; ``uninstrument()`` stops them."""

    def __init__(self, runner: Runner, tracer_provider: Any, meter_provider: Any) -> None:
        from .. import __version__

        context, metrics, trace, propagator = _import_otel()
        self._context = context
        self._trace = trace
        self._propagator = propagator
        self._status_error = trace.Status(trace.StatusCode.ERROR)
        self.tracer: Tracer = trace.get_tracer("asyncflow", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("asyncflow", __version__, meter_provider=meter_provider)
        self._ended = {
            status: meter.create_counter(
                f"asyncflow.runs.{status}", unit="{run}", description=f"Runs that ended {status}."
            )
            for status in ("completed", "failed", "cancelled", "bailed", "suspended")
        }
        self._started = meter.create_counter(
            "asyncflow.runs.started", unit="{run}", description="Runs started (resumed runs again)."
        )
        self._in_flight = meter.create_up_down_counter(
            "asyncflow.runs.in_flight", unit="{run}", description="Runs executing now."
        )
        self._duration = meter.create_histogram(
            "asyncflow.action.duration", unit="s", description="How long actions took, retries included."
        )
        self._runs: dict[str, _RunSpans] = {}
        # Run spans begun by engine.start (their context is kept with the run), until the run starts.
        self._created: dict[str, Span] = {}
        # Runs that continue (resumed, woken, recovered): the context to link their new span to.
        self._continuing: dict[str, Carrier | None] = {}
        # The attributes of each (workflow, action)'s measurements, and span names, made once.
        self._measured: dict[tuple[str, str], dict[str, str]] = {}
        self._names: dict[str | None, str] = {}
        self._runner = runner
        self._previous: Tracing | None = runner.hub.tracing
        runner.hub.tracing = self
        self._unregister: Callable[[], None] | None = runner.on_event(self._on_event)

    def uninstrument(self) -> None:
        """Stop tracing this runner's runs (spans already open are ended as they are); again: nothing."""
        if self._unregister is None:
            return
        self._unregister()
        self._unregister = None
        if self._runner.hub.tracing is self:
            self._runner.hub.tracing = self._previous
        for run_id in list(self._runs):
            self._end_run(run_id, None, None)
        for span in self._created.values():
            span.end()
        self._created.clear()
        self._continuing.clear()

    # ---- trace contexts for the engine and child processes (tracing.Tracing) ----------

    def _carrier(self, context: Context | None) -> Carrier | None:
        carrier: Carrier = {}
        self._propagator.inject(carrier, context=context)
        return carrier or None

    def current(self) -> Carrier | None:
        """The context current here (the running action's span) as W3C headers, for a child process."""
        return self._carrier(None)

    def run_created(self, run_id: str, workflow_id: str, executes_here: bool) -> Carrier | None:
        """``engine.start`` writes a run down: begin its span now, and keep its context with the run.

        A run that workers execute (``executes_here`` false) keeps the
        caller's context instead (their spans link to it).
        """
        if not executes_here:
            return self._carrier(None)
        span = self.tracer.start_span(
            f"run {workflow_id}",
            attributes={"asyncflow.run_id": run_id, "asyncflow.workflow_id": workflow_id},
        )
        self._created[run_id] = span
        return self._carrier(self._trace.set_span_in_context(span))

    def run_dropped(self, run_id: str) -> None:
        """The run was not written down: its span is dropped, never ended (so never exported)."""
        self._created.pop(run_id, None)

    def run_continues(self, run_id: str, origin: Carrier | None) -> None:
        """A later execution of a run begins: its run span will link to ``origin``."""
        stale = self._created.pop(run_id, None)
        if stale is not None:  # (its first execution here never began: given back)
            stale.set_attribute("asyncflow.status", "given back")
            stale.end()
        self._continuing[run_id] = origin

    def run_left(self, run_id: str, status: str | None) -> None:
        """The run's execution here is over or never began: nothing is kept for it any longer."""
        self._continuing.pop(run_id, None)
        span = self._created.pop(run_id, None)
        if span is not None:  # (never began here: cancelled first, or given back)
            span.set_attribute("asyncflow.status", status or "given back")
            span.end()
        if run_id in self._runs:  # (began, and stopped without a last event)
            self._end_run(run_id, None, None)

    # ---- the events -------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.ACTION_STARTED:
            self._action_started(event)
        elif kind is EventKind.ACTION_FINISHED:
            self._action_finished(event)
        elif kind is EventKind.STAGE_STARTED:
            self._stage_started(event)
        elif kind is EventKind.STAGE_FINISHED:
            self._stage_finished(event)
        elif kind is EventKind.ACTION_INSERTED:
            self._action_inserted(event)
        elif kind is EventKind.ACTION_RETRY:
            self._retry(event)
        elif kind is EventKind.STEP_SKIPPED:
            self._skipped(event)
        elif kind is EventKind.RUN_STARTED:
            self._run_started(event)
        elif kind is EventKind.RUN_FINISHED or kind is EventKind.RUN_SUSPENDED:
            self._end_run(event.run_id, event, event.status or "suspended")
        elif kind is EventKind.RUN_INTERRUPTED:
            self._end_run(event.run_id, event, None)

    def _run_started(self, event: Event) -> None:
        run_id = event.run_id
        span = self._created.pop(run_id, None)
        if span is None:
            links = None
            origin = self._continuing.pop(run_id, None)
            if origin is not None:
                linked = self._trace.get_current_span(self._propagator.extract(origin)).get_span_context()
                if linked.is_valid:
                    links = [self._trace.Link(linked, {"asyncflow.link": "earlier execution"})]
            # The current context is the caller's: runner.run runs in its task, and the engine
            # starts a run's task from engine.start (or engine.resume), which copies it.
            span = self.tracer.start_span(
                f"run {event.workflow_id}",
                attributes={"asyncflow.run_id": run_id, "asyncflow.workflow_id": event.workflow_id},
                links=links,
                start_time=int(event.at * _NS),
            )
        old = self._runs.pop(run_id, None)
        if old is not None:  # (a run id reused by hand while the first is still open)
            self._close_all(old, event.at)
        self._runs[run_id] = _RunSpans(
            span,
            event.workflow_id,
            self._trace.set_span_in_context(span),
            {"asyncflow.run_id": run_id, "asyncflow.workflow_id": event.workflow_id},
        )
        workflow = {"asyncflow.workflow_id": event.workflow_id}
        self._started.add(1, workflow)
        self._in_flight.add(1, workflow)

    def _stage_parent(self, spans: _RunSpans, event: Event) -> Context:
        parent_key = event.parent_key
        if parent_key is not None:  # inserted by an action of another stage: a child of that stage
            inserter = parent_key.rpartition("/")[0]
            found = spans.stage_parents.get(inserter)
            if found is not None:
                return found
        return spans.run_parent

    def _action_parent(self, spans: _RunSpans, event: Event) -> Context:
        parent_key = event.parent_key
        if parent_key is not None:  # added by an action: a child of that action
            found = spans.inserters.get(parent_key)
            if found is not None:
                return found
        return spans.stage_parents.get(event.stage_id or "", spans.run_parent)

    def _stage_span(self, spans: _RunSpans, event: Event) -> Span:
        attributes = {
            **spans.base,
            "asyncflow.stage_id": event.stage_id,
            "asyncflow.dynamic": event.dynamic,
        }
        span = self.tracer.start_span(
            f"stage {event.stage_id}",
            context=self._stage_parent(spans, event),
            attributes=attributes,
            start_time=int(event.at * _NS),
        )
        stage_id = event.stage_id or ""
        spans.stages[stage_id] = span
        spans.stage_parents[stage_id] = self._trace.set_span_in_context(span)
        return span

    def _stage_started(self, event: Event) -> None:
        spans = self._runs.get(event.run_id)
        if spans is not None:
            spans.open.add(id(self._stage_span(spans, event)))

    def _stage_finished(self, event: Event) -> None:
        spans = self._runs.get(event.run_id)
        if spans is None:
            return
        span = spans.stages.get(event.stage_id or "")
        if span is None or id(span) not in spans.open:
            return
        spans.open.discard(id(span))
        self._end(span, event)

    def _action_name(self, name: str | None) -> str:
        found = self._names.get(name)
        if found is None:
            found = self._names[name] = f"action {name}"
        return found

    def _action_span(self, spans: _RunSpans, event: Event, attempt: int) -> Span:
        attributes = {
            **spans.base,
            "asyncflow.stage_id": event.stage_id,
            "asyncflow.action": event.action_name,
            "asyncflow.dynamic": event.dynamic,
            "asyncflow.attempt": attempt,
        }
        return self.tracer.start_span(
            self._action_name(event.action_name),
            context=self._action_parent(spans, event),
            attributes=attributes,
            start_time=int(event.at * _NS),
        )

    def _action_started(self, event: Event) -> None:
        spans = self._runs.get(event.run_id)
        if spans is None:
            return
        span = self._action_span(spans, event, 1)
        # Current for the action's own code (and its middleware): spans it makes are its children,
        # and a child process it runs in gets its context.
        spans.running[event.key or ""] = (span, self._context.attach(self._trace.set_span_in_context(span)))

    def _action_inserted(self, event: Event) -> None:
        spans = self._runs.get(event.run_id)
        parent_key = event.parent_key
        if spans is None or parent_key is None or parent_key in spans.inserters:
            return
        running = spans.running.get(parent_key)
        if running is not None:  # (the inserting action is still running: it reports its insertions)
            spans.inserters[parent_key] = self._trace.set_span_in_context(running[0])

    def _action_finished(self, event: Event) -> None:
        spans = self._runs.get(event.run_id)
        if spans is None:
            return
        running = spans.running.pop(event.key or "", None)
        if running is None:
            return
        span, token = running
        self._context.detach(token)
        attempt = event.attempt
        if attempt is not None and attempt != 1:
            span.set_attribute("asyncflow.attempt", attempt)
        self._end(span, event)
        if event.duration is not None:
            which = (event.workflow_id, event.action_name or "")
            attributes = self._measured.get(which)
            if attributes is None:
                attributes = self._measured[which] = {
                    "asyncflow.workflow_id": which[0],
                    "asyncflow.action": which[1],
                }
            self._duration.record(event.duration, attributes)

    def _end(self, span: Span, event: Event) -> None:
        status = event.status
        if status is not None:
            span.set_attribute("asyncflow.status", status)
        error = event.error
        if error is not None:
            span.record_exception(error, timestamp=int(event.at * _NS))
            if status == "failed":
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, _describe(error)))
        elif status == "failed":
            span.set_status(self._status_error)
        span.end(end_time=int(event.at * _NS))

    def _retry(self, event: Event) -> None:
        spans = self._runs.get(event.run_id)
        running = None if spans is None else spans.running.get(event.key or "")
        if running is None:
            return
        span = running[0]
        attributes: dict[str, Any] = {"asyncflow.attempt": event.attempt or 0}
        if event.error is not None:
            attributes["exception.type"] = _qualified(event.error)
            attributes["exception.message"] = str(event.error)
        span.add_event("asyncflow.retry", attributes, timestamp=int(event.at * _NS))

    def _skipped(self, event: Event) -> None:
        spans = self._runs.get(event.run_id)
        if spans is None:
            return
        if event.action_name is None:
            span = self._stage_span(spans, event)
        else:
            span = self._action_span(spans, event, 0)
        span.set_attribute("asyncflow.status", "skipped")
        if event.reason is not None:
            span.set_attribute("asyncflow.skip_reason", event.reason)
        span.end(end_time=int(event.at * _NS))

    def _end_run(self, run_id: str, event: Event | None, status: str | None) -> None:
        spans = self._runs.pop(run_id, None)
        if spans is None:
            return
        workflow = {"asyncflow.workflow_id": spans.workflow_id}
        self._in_flight.add(-1, workflow)
        at = event.at if event is not None else None
        self._close_all(spans, at)
        span = spans.run
        if status is not None and event is not None:
            counter = self._ended.get(status)
            if counter is not None:
                counter.add(1, workflow)
            if status == "suspended":
                attributes = {} if event.reason is None else {"asyncflow.reason": event.reason}
                span.add_event("asyncflow.suspended", attributes, timestamp=int(event.at * _NS))
                event = event._replace(error=None)
            elif status == "bailed" and event.reason is not None:
                span.set_attribute("asyncflow.bail_reason", event.reason)
            self._end(span, event)
        elif event is not None:  # interrupted: another engine (or a restart) takes it over
            span.set_attribute("asyncflow.status", "interrupted")
            span.end(end_time=int(event.at * _NS))
        else:
            span.end()

    def _close_all(self, spans: _RunSpans, at: float | None) -> None:
        """End the run's step spans still open (a suspended run's stage and action), newest first."""
        end_time = None if at is None else int(at * _NS)
        for span, token in reversed(list(spans.running.values())):
            self._context.detach(token)
            span.end(end_time=end_time)
        spans.running.clear()
        for span in reversed(list(spans.stages.values())):
            if id(span) in spans.open:
                spans.open.discard(id(span))
                span.end(end_time=end_time)


def _qualified(error: BaseException) -> str:
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def instrument(
    runner_or_engine: Runner | Engine,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Instrumentation:
    """Trace and measure the runs of ``runner_or_engine`` with OpenTelemetry; return the handle.

    Args:
        runner_or_engine: a :class:`~asyncflow.Runner`, or an :class:`~asyncflow.Engine`
            (its runner is instrumented).
        tracer_provider: where spans go (default: the global one, ``trace.set_tracer_provider``).
        meter_provider: where metrics go (default: the global one).

    Raises:
        ImportError: OpenTelemetry is not installed (``pip install 'asyncflow[otel]'``).
        TypeError: ``runner_or_engine`` is neither a runner nor an engine.
    """
    if isinstance(runner_or_engine, Engine):
        runner = runner_or_engine.runner
    elif isinstance(runner_or_engine, Runner):
        runner = runner_or_engine
    else:
        raise TypeError(f"instrument() takes an af.Runner or an af.Engine, got {runner_or_engine!r}")
    return Instrumentation(runner, tracer_provider, meter_provider)
