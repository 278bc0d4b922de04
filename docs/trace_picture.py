"""Render the span tree of a traced run (dynamic stages, a retry, a skip) to PNG: docs/trace.png.

    pip install matplotlib 'asyncflow[otel]'
    python docs/trace_picture.py docs/trace.png

The spans are the ones the OpenTelemetry SDK recorded (an in-memory exporter),
drawn one row each, in tree order, with their start and end times.
"""
import asyncio, sys
import anyio
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
import asyncflow as af
from asyncflow.integrations.opentelemetry import instrument

tries = {"n": 0}

@af.action(name="inspect", retry=af.Retry(attempts=3, backoff=af.backoff.fixed(0.02)))
async def inspect(ctx):
    await anyio.sleep(0.03)
    if ctx.stage.id == "process-caches":
        tries["n"] += 1
        if tries["n"] == 1:
            raise ConnectionError("cache busy")

@af.action(name="find-resources")
async def find(ctx):
    await anyio.sleep(0.04)
    for kind in ("databases", "caches", "servers"):
        ctx.add_dynamic_stage(af.Stage(f"process-{kind}", actions=[inspect, inspect], concurrency=2))

@af.action(name="summarize")
async def summarize(ctx):
    await anyio.sleep(0.02)
    ctx.plan.disable_stage("publish")

@af.action(name="publish")
async def publish(ctx):
    pass

wf = af.Workflow("resource-discovery", stages=[
    af.Stage("discover", actions=[find]),
    af.Stage("report", actions=[summarize]),
    af.Stage("publish", actions=[publish]),
])

async def main():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runner = af.Runner()
    instrument(runner, tracer_provider=provider)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("POST /discover"):
        await runner.run(wf)
    return list(exporter.get_finished_spans())

spans = asyncio.run(main())
by_id = {s.context.span_id: s for s in spans}
children = {}
roots = []
for s in sorted(spans, key=lambda s: s.start_time):
    if s.parent is None or s.parent.span_id not in by_id:
        roots.append(s)
    else:
        children.setdefault(s.parent.span_id, []).append(s)
order = []
def walk(s, depth):
    order.append((s, depth))
    for c in children.get(s.context.span_id, []):
        walk(c, depth + 1)
for r in roots:
    walk(r, 0)
t0 = min(s.start_time for s in spans)
fig, ax = plt.subplots(figsize=(11, 0.36 * len(order) + 1.1), dpi=110)
for row, (s, depth) in enumerate(order):
    start = (s.start_time - t0) / 1e6
    length = max((s.end_time - s.start_time) / 1e6, 0.6)
    attrs = s.attributes or {}
    if s.status.status_code is StatusCode.ERROR:
        color = "#d9534f"
    elif attrs.get("asyncflow.status") == "skipped":
        color = "#c8c8c8"
    elif attrs.get("asyncflow.dynamic"):
        color = "#17a2b8"
    elif s.name.startswith("run") or s.name.startswith("POST"):
        color = "#34495e"
    else:
        color = "#5cb85c"
    ax.barh(row, length, left=start, height=0.6, color=color)
    label = "  " * depth + ("└ " if depth else "") + s.name
    extra = []
    if attrs.get("asyncflow.dynamic"):
        extra.append("dynamic")
    if attrs.get("asyncflow.status") == "skipped":
        extra.append("skipped: " + str(attrs.get("asyncflow.skip_reason")))
    for e in s.events:
        if e.name == "asyncflow.retry":
            extra.append(f"retry (attempt {e.attributes['asyncflow.attempt']}: {e.attributes['exception.type']})")
            ax.plot([(e.timestamp - t0) / 1e6], [row], marker="v", color="#f0ad4e", markersize=9)
    if extra:
        label += "  [" + ", ".join(extra) + "]"
    ax.text(-0.72, row, label, ha="left", va="center", fontsize=8.5, family="monospace",
            transform=ax.get_yaxis_transform())
ax.set_yticks([])
ax.invert_yaxis()
ax.set_xlabel("ms since the request's span started")
end = max((s.end_time - t0) / 1e6 for s in spans)
ax.set_xlim(0, end * 1.02)
ax.set_title("asyncflow run traced with OpenTelemetry: spans as the SDK recorded them", fontsize=10)
for side in ("top", "right", "left"):
    ax.spines[side].set_visible(False)
plt.subplots_adjust(left=0.42, right=0.98, top=0.93, bottom=0.08)
plt.savefig(sys.argv[1])
print(len(spans), "spans")
