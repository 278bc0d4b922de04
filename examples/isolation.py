"""Process isolation: a parser that crashes the interpreter runs in a child process, and is retried.

``parse`` stands for a C-backed parser with a bug: on a malformed document it
dereferences a null pointer (here ``ctypes.string_at(0)``), which kills the
whole Python process it runs in. Its stage is isolated
(``Stage(isolation="process")``), so only a child process dies:

1. The stage parses three documents. Each one's progress reaches this
   process while the child works (``ctx.send``, handled by ``on_message``),
   and the child's log lines arrive here as if logged here.
2. The malformed document crashes the child on the first attempt. The stage's
   retry policy runs the action again in a fresh child from the warm pool,
   which gets it right, and the run completes with what the child wrote.
3. A document that crashes the parser every time fails the run with
   ``af.ChildProcessFailed``: the signal, and the last lines of the child's
   stderr (Python's own report of the segfault).

Run it with ``python examples/isolation.py``.
"""

from __future__ import annotations

import ctypes
import os
import sys

import anyio
from loguru import logger

import asyncflow as af


@af.action
async def parse(ctx: af.ActionContext) -> None:
    """Parse each document of the store, reporting progress; the buggy parser may crash the process."""
    documents = ctx.store.get("documents", list)
    words = 0
    for number, text in enumerate(documents, 1):
        if text == "<always crashes>" or (text.startswith("<") and ctx.attempt == 1):
            ctypes.string_at(0)  # the parser's bug: a segfault, fatal to the process
        words += len(text.split())
        await ctx.send("progress", {"done": number, "of": len(documents), "pid": os.getpid()})
    ctx.logger.info("parsed {} documents, {} words", len(documents), words)
    ctx.store["words"] = words


WORKFLOW = af.Workflow(
    "ingest",
    stages=[
        af.Stage(
            "parse",
            actions=[parse],
            isolation="process",
            retry=af.Retry(attempts=2, backoff=af.backoff.fixed(0.0)),
            timeout=30.0,
        )
    ],
)


def on_progress(message: af.Message) -> None:
    """Print each progress message as it arrives from the child."""
    p = message.payload
    print(f"  progress {p['done']}/{p['of']} from child pid {message.pid} (from_child={message.from_child})")


def on_event(event: af.Event) -> None:
    """Print the retry that follows a crash."""
    if event.kind is af.EventKind.ACTION_RETRY and isinstance(event.error, af.ChildProcessFailed):
        print(f"  the child died ({event.error.signal_name}); attempt {event.attempt} in another child")


async def main() -> None:
    """Run the two ingests with a warm pool of two children."""
    logger.remove()
    logger.add(
        sys.stdout,
        format="  log from {extra[child_pid]}: {message}",
        filter=lambda r: "child_pid" in r["extra"],
    )
    async with af.ProcessPool(size=2) as pool:
        runner = af.Runner(process_pool=pool)
        runner.on_message("progress", on_progress)
        runner.on_event(on_event)

        print("1. three documents, one malformed (this process is", os.getpid(), ")")
        result = await runner.run(WORKFLOW, store={"documents": ["a b c", "<d e>", "f g h i"]})
        print(f"   {result.status.value}: {result.store['words']} words")

        print("2. a document that crashes the parser every time")
        try:
            await runner.run(WORKFLOW, store={"documents": ["a b", "<always crashes>"]})
        except af.ChildProcessFailed as failed:
            print(f"   failed: exit {failed.exit_code} ({failed.signal_name}) in stage {failed.stage_id!r}")
            print(f"   its stderr began: {failed.stderr_tail[0]!r}")


if __name__ == "__main__":
    anyio.run(main)
