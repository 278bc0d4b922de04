"""What OpenTelemetry instrumentation costs per action, against the same runs without it, in one process.

Run with ``python benchmarks/otel.py`` (needs ``asyncflow[otel]``). One stage
of 2,000 no-op actions, best of 7, on the runners measured in turns:

- off: a runner that is not instrumented (what every user pays: nothing more);
- on: ``instrument(runner)`` with the SDK's tracer provider (always-on
  sampler), a simple span processor and an exporter that drops the spans,
  and the SDK's meter provider (an in-memory reader, never collected);
- events: a runner with one event handler that does nothing (what building
  and delivering the lifecycle events costs, whoever listens);
- the plain ``await`` of the same no-op coroutine, as the floor.

The figure is the difference on - off in µs per action (target: at most 10).
For scale, the same run also times the SDK alone, in a loop: a bare span
(started and ended, no attributes: the floor under any per-action span), and
the SDK calls that instrumenting one action makes (a span with its parent and
six attributes, made current and back, its status set, ended and handed to
the processor, and one histogram record).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Sequence

from opentelemetry import context, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

import asyncflow as af
from asyncflow.integrations.opentelemetry import instrument

ACTIONS = 2_000


class DropSpans(SpanExporter):
    """An exporter that takes the spans and keeps none: the cost of making them, not of sending them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _noop_fn(ctx: af.ActionContext | None) -> None:
    return None


noop = af.action(name="noop")(_noop_fn)


async def _time_run(runner: af.Runner, workflow: af.Workflow) -> float:
    gc.collect()
    started = time.perf_counter()
    await runner.run(workflow)
    return (time.perf_counter() - started) / ACTIONS * 1e6


async def _time_plain() -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(ACTIONS):
        await _noop_fn(None)
    return (time.perf_counter() - started) / ACTIONS * 1e6


def _sdk_bare(tracer_provider: TracerProvider) -> float:
    """µs for one bare SDK span (a parent, no attributes), started and ended."""
    tracer = tracer_provider.get_tracer("floor")
    parent = trace.set_span_in_context(tracer.start_span("parent"))
    gc.collect()
    started = time.perf_counter()
    for _ in range(ACTIONS):
        tracer.start_span("action noop", context=parent).end()
    return (time.perf_counter() - started) / ACTIONS * 1e6


def _sdk_action(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> float:
    """µs for the SDK calls that instrumenting one action makes, without asyncflow."""
    tracer = tracer_provider.get_tracer("floor")
    histogram = meter_provider.get_meter("floor").create_histogram("floor")
    parent = trace.set_span_in_context(tracer.start_span("parent"))
    base = {"a.run_id": "r", "a.workflow_id": "w"}
    measured = {"a.workflow_id": "w", "a.action": "noop"}
    attach, detach, in_context = context.attach, context.detach, trace.set_span_in_context
    gc.collect()
    started = time.perf_counter()
    for _ in range(ACTIONS):
        attributes = {**base, "a.stage_id": "s", "a.action": "noop", "a.dynamic": False, "a.attempt": 1}
        span = tracer.start_span("action noop", context=parent, attributes=attributes, start_time=1)
        token = attach(in_context(span))
        detach(token)
        span.set_attribute("a.status", "completed")
        span.end(end_time=2)
        histogram.record(0.1, measured)
    return (time.perf_counter() - started) / ACTIONS * 1e6


async def measure(repeats: int) -> dict[str, float]:
    """Best µs/action of ``repeats`` alternating rounds of each figure."""
    workflow = af.Workflow("otel-bench", stages=[af.Stage("only", actions=[noop] * ACTIONS)])
    off = af.Runner()
    on = af.Runner()
    events = af.Runner()
    events.on_event(lambda event: None)
    tracer_provider = TracerProvider(sampler=ALWAYS_ON)
    tracer_provider.add_span_processor(SimpleSpanProcessor(DropSpans()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrument(on, tracer_provider=tracer_provider, meter_provider=meter_provider)
    best = dict.fromkeys(("off", "on", "events", "plain", "bare", "sdk"), float("inf"))
    for runner in (on, off, events):  # warm them up once
        await _time_run(runner, workflow)
    for _ in range(repeats):
        best["off"] = min(best["off"], await _time_run(off, workflow))
        best["on"] = min(best["on"], await _time_run(on, workflow))
        best["events"] = min(best["events"], await _time_run(events, workflow))
        best["plain"] = min(best["plain"], await _time_plain())
        best["bare"] = min(best["bare"], _sdk_bare(tracer_provider))
        best["sdk"] = min(best["sdk"], _sdk_action(tracer_provider, meter_provider))
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7, help="rounds of off/on/plain (default 7)")
    args = parser.parse_args()
    best = asyncio.run(measure(args.repeats))
    added = best["on"] - best["off"]
    print(f"one stage of {ACTIONS:,} no-op actions, best of {args.repeats} alternating rounds")
    print(f"  plain await          {best['plain']:8.3f} µs per call")
    plain = best["off"] / best["plain"]
    print(f"  asyncflow, off       {best['off']:8.3f} µs per action  ({plain:.1f}x plain)")
    print(f"  asyncflow, on        {best['on']:8.3f} µs per action  ({best['on'] / best['off']:.2f}x off)")
    print(f"  instrumentation      {added:8.3f} µs per action (on - off; target <= 10)")
    print(f"  SDK, bare span       {best['bare']:8.3f} µs per span started and ended, no asyncflow")
    print(f"  SDK, one action's    {best['sdk']:8.3f} µs: the SDK calls instrumenting one action makes")
    print(f"  events alone         {best['events'] - best['off']:8.3f} µs per action (a do-nothing handler)")
    print(f"  asyncflow's part     {added - best['sdk']:8.3f} µs per action (instrumentation - SDK calls)")


if __name__ == "__main__":
    main()
