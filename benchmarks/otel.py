"""What OpenTelemetry instrumentation costs per action, against the same runs without it, in one process.

Run with ``python benchmarks/otel.py`` (needs ``asyncflow[otel]``). One stage
of 2,000 no-op actions, best of 7, on three runners measured in turns:

- off: a runner that is not instrumented (what every user pays: nothing more);
- on: ``instrument(runner)`` with the SDK's tracer provider (always-on
  sampler), a simple span processor and an exporter that drops the spans,
  and the SDK's meter provider (an in-memory reader, never collected);
- the plain ``await`` of the same no-op coroutine, as the floor.

The figure is the difference on - off in µs per action (target: at most 10).
For scale, the same run also times what the SDK itself takes for one span
(started with a parent and four attributes, ended, handed to the processor)
and for one histogram record: the floor under any per-action span.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Sequence

from opentelemetry import trace
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


def _sdk_floor(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> float:
    """µs for one bare SDK span and one histogram record, as instrumenting one action makes them."""
    tracer = tracer_provider.get_tracer("floor")
    histogram = meter_provider.get_meter("floor").create_histogram("floor")
    parent = trace.set_span_in_context(tracer.start_span("parent"))
    attributes = {"a.run_id": "r", "a.workflow_id": "w", "a.stage_id": "s", "a.action": "noop"}
    measured = {"a.workflow_id": "w", "a.action": "noop"}
    gc.collect()
    started = time.perf_counter()
    for _ in range(ACTIONS):
        span = tracer.start_span("action noop", context=parent, attributes=attributes, start_time=1)
        span.end(end_time=2)
        histogram.record(0.1, measured)
    return (time.perf_counter() - started) / ACTIONS * 1e6


async def measure(repeats: int) -> dict[str, float]:
    """Best µs/action of ``repeats`` alternating rounds: off, on, plain."""
    workflow = af.Workflow("otel-bench", stages=[af.Stage("only", actions=[noop] * ACTIONS)])
    off = af.Runner()
    on = af.Runner()
    tracer_provider = TracerProvider(sampler=ALWAYS_ON)
    tracer_provider.add_span_processor(SimpleSpanProcessor(DropSpans()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrument(on, tracer_provider=tracer_provider, meter_provider=meter_provider)
    best = {"off": float("inf"), "on": float("inf"), "plain": float("inf"), "sdk": float("inf")}
    await _time_run(on, workflow)  # warm both up once
    await _time_run(off, workflow)
    for _ in range(repeats):
        best["off"] = min(best["off"], await _time_run(off, workflow))
        best["on"] = min(best["on"], await _time_run(on, workflow))
        best["plain"] = min(best["plain"], await _time_plain())
        best["sdk"] = min(best["sdk"], _sdk_floor(tracer_provider, meter_provider))
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
    print(f"  plain await        {best['plain']:8.3f} µs per call")
    plain = best["off"] / best["plain"]
    print(f"  asyncflow, off     {best['off']:8.3f} µs per action  ({plain:.1f}x plain)")
    print(f"  asyncflow, on      {best['on']:8.3f} µs per action  ({best['on'] / best['off']:.2f}x off)")
    print(f"  instrumentation    {added:8.3f} µs per action (target <= 10)")
    print(f"  SDK floor          {best['sdk']:8.3f} µs per span + histogram record, no asyncflow")
    print(f"  asyncflow's part   {added - best['sdk']:8.3f} µs per action (events and bookkeeping)")


if __name__ == "__main__":
    main()
