"""Render the span tree of a traced run (dynamic stages, a retry, a skip) to PNG: docs/trace.png.

    pip install matplotlib 'asyncflow[otel]'
    python docs/trace_picture.py docs/trace.png

The spans are the ones the OpenTelemetry SDK recorded (an in-memory exporter),
drawn one row each, in tree order, with their start and end times.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import anyio
import matplotlib as mpl

mpl.use("Agg")  # before pyplot is imported: no display needed

import matplotlib.pyplot as plt
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import asyncflow as af
from asyncflow.integrations.opentelemetry import instrument

tries = {"n": 0}


@af.action(name="inspect", retry=af.Retry(attempts=3, backoff=af.backoff.fixed(0.02)))
async def inspect(ctx: af.ActionContext) -> None:
    """Take a moment; the first look at the caches fails once (a retry to draw)."""
    await anyio.sleep(0.03)
    if ctx.stage.id == "process-caches":
        tries["n"] += 1
        if tries["n"] == 1:
            raise ConnectionError("cache busy")


@af.action(name="find-resources")
async def find(ctx: af.ActionContext) -> None:
    """Insert a stage per kind of resource."""
    await anyio.sleep(0.04)
    for kind in ("databases", "caches", "servers"):
        ctx.add_dynamic_stage(af.Stage(f"process-{kind}", actions=[inspect, inspect], concurrency=2))


@af.action(name="summarize")
async def summarize(ctx: af.ActionContext) -> None:
    """Take a moment, then skip publishing (a skip to draw)."""
    await anyio.sleep(0.02)
    ctx.plan.disable_stage("publish")


@af.action(name="publish")
async def publish(ctx: af.ActionContext) -> None:
    """Never runs: summarize disables its stage."""


WORKFLOW = af.Workflow(
    "resource-discovery",
    stages=[
        af.Stage("discover", actions=[find]),
        af.Stage("report", actions=[summarize]),
        af.Stage("publish", actions=[publish]),
    ],
)


async def traced_run() -> list[ReadableSpan]:
    """Run the workflow inside a request's span; every span the SDK finished."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runner = af.Runner()
    instrument(runner, tracer_provider=provider)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("POST /discover"):
        await runner.run(WORKFLOW)
    return list(exporter.get_finished_spans())


def tree_order(spans: Sequence[ReadableSpan]) -> list[tuple[ReadableSpan, int, ReadableSpan | None]]:
    """(span, depth, parent span) for each span, parents before children, siblings by start time."""
    by_id = {span.context.span_id: span for span in spans if span.context is not None}
    children: dict[int, list[ReadableSpan]] = {}
    roots: list[ReadableSpan] = []
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        if span.parent is None or span.parent.span_id not in by_id:
            roots.append(span)
        else:
            children.setdefault(span.parent.span_id, []).append(span)
    order: list[tuple[ReadableSpan, int, ReadableSpan | None]] = []
    stack: list[tuple[ReadableSpan, int, ReadableSpan | None]] = [(root, 0, None) for root in reversed(roots)]
    while stack:
        span, depth, parent = stack.pop()
        order.append((span, depth, parent))
        if span.context is not None:
            stack.extend(
                (child, depth + 1, span) for child in reversed(children.get(span.context.span_id, []))
            )
    return order


def inserted(span: ReadableSpan, parent: ReadableSpan | None) -> bool:
    """Whether an action inserted this span's step (an inserted stage's own actions are drawn inside it)."""
    if not (span.attributes or {}).get("asyncflow.dynamic"):
        return False
    return span.name.startswith("stage ") or (parent is not None and parent.name.startswith("action "))


def draw(spans: Sequence[ReadableSpan], path: str) -> None:
    """One bar per span, in tree order, labelled and coloured by what it was; saved to ``path``."""
    order = tree_order(spans)
    t0 = min(span.start_time or 0 for span in spans)
    _, ax = plt.subplots(figsize=(11, 0.36 * len(order) + 1.1), dpi=110)
    for row, (span, depth, parent) in enumerate(order):
        start_ns, end_ns = span.start_time or t0, span.end_time or t0
        attributes = span.attributes or {}
        skipped = attributes.get("asyncflow.status") == "skipped"
        dynamic = inserted(span, parent)
        if span.status.status_code is StatusCode.ERROR:
            color = "#d9534f"
        elif skipped:
            color = "#c8c8c8"
        elif dynamic:
            color = "#17a2b8"
        elif span.name.startswith(("run", "POST")):
            color = "#34495e"
        else:
            color = "#5cb85c"
        ax.barh(row, max((end_ns - start_ns) / 1e6, 0.6), left=(start_ns - t0) / 1e6, height=0.6, color=color)
        label = "  " * depth + ("└ " if depth else "") + span.name
        extra = []
        if dynamic:
            extra.append("dynamic")
        if skipped:
            extra.append(f"skipped: {attributes.get('asyncflow.skip_reason')}")
        for event in span.events:
            if event.name == "asyncflow.retry":
                event_attributes = event.attributes or {}
                attempt, error = (
                    event_attributes.get("asyncflow.attempt"),
                    event_attributes.get("exception.type"),
                )
                extra.append(f"retry (attempt {attempt}: {error})")
                ax.plot([(event.timestamp - t0) / 1e6], [row], marker="v", color="#f0ad4e", markersize=9)
        if extra:
            label += "  [" + ", ".join(extra) + "]"
        ax.text(
            -0.72,
            row,
            label,
            ha="left",
            va="center",
            fontsize=8.5,
            family="monospace",
            transform=ax.get_yaxis_transform(),
        )
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the request's span started")
    end = max(((span.end_time or t0) - t0) / 1e6 for span in spans)
    ax.set_xlim(0, end * 1.02)
    ax.set_title("asyncflow run traced with OpenTelemetry: spans as the SDK recorded them", fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    plt.subplots_adjust(left=0.42, right=0.98, top=0.93, bottom=0.08)
    plt.savefig(path)


def main() -> None:
    """Trace one run and draw it to the path given on the command line."""
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/trace_picture.py OUT.png")
    spans = asyncio.run(traced_run())
    draw(spans, sys.argv[1])
    print(len(spans), "spans")


if __name__ == "__main__":
    main()
