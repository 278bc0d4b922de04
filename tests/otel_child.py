"""A process that resumes a suspended durable run with OpenTelemetry on, and prints the spans it made.

Run as ``python tests/otel_child.py DB_URL RUN_ID``: it opens an engine on
``DB_URL`` with :func:`asyncflow.integrations.opentelemetry.instrument`
(in-memory exporter), resumes ``RUN_ID`` (approved), waits for it and prints
one JSON list of the finished spans: name, trace and span ids (hex), the
parent's span id and the links as ``[trace_id, span_id]``.

``test_otel.py`` imports :data:`WORKFLOW` from here, so both processes
register the same workflow with the same action references; and runs
:func:`traced_in_child` in an isolated stage's child process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from loguru import logger
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import asyncflow as af
from asyncflow.integrations.opentelemetry import instrument


@af.action(name="prepare")
async def prepare(ctx: af.ActionContext) -> None:
    ctx.store["prepared"] = True


@af.action(name="approve")
async def approve(ctx: af.ActionContext) -> None:
    if not ctx.is_resuming:
        ctx.suspend("needs approval")
    ctx.store["approved"] = ctx.resume_data


WORKFLOW = af.Workflow(
    "approval",
    stages=[af.Stage("prepare", actions=[prepare]), af.Stage("gate", actions=[approve])],
)


@af.action(name="traced-in-child")
async def traced_in_child(ctx: af.ActionContext) -> None:
    """(In an isolated stage's child process) make a span, and put where it sits in the store."""
    tracer = TracerProvider().get_tracer("user code")  # the child's own provider, as users set one up
    logger.info("working in the child")  # relayed to the parent, in the action's trace context
    with tracer.start_as_current_span("work in the child") as span:
        made = span.get_span_context()
        parent = span.parent  # type: ignore[attr-defined]
        ctx.store["child_span"] = {
            "trace_id": f"{made.trace_id:032x}",
            "parent": None if parent is None else f"{parent.span_id:016x}",
            "pid": os.getpid(),
        }


@af.action(name="logs-in-child")
async def logs_in_child(ctx: af.ActionContext) -> None:
    """(In an isolated stage's child process) write a log line."""
    logger.info("working in the child")


def span_json(span: ReadableSpan) -> dict[str, Any]:
    """What the tests compare of a span, as JSON."""
    assert span.context is not None
    return {
        "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent": None if span.parent is None else f"{span.parent.span_id:016x}",
        "links": [[f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}"] for link in span.links],
    }


async def main(url: str, run_id: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    engine = af.Engine(url)
    engine.register(WORKFLOW)
    instrument(engine, tracer_provider=provider)
    async with engine:
        handle = await engine.resume(run_id, "yes")
        result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED, result
    print(json.dumps([span_json(span) for span in exporter.get_finished_spans()]))


if __name__ == "__main__":
    # Through the module's own name: the workflow's actions are then referenced as in the tests.
    import otel_child

    asyncio.run(otel_child.main(sys.argv[1], sys.argv[2]))
