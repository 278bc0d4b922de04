"""Progress messages from actions, and the run's lifecycle events as a stream.

Two ways to watch a run from outside:

- **Messages**, sent by actions: each ``Resize`` action of a fan-out stage
  (one inserted per image, three at a time) calls
  ``await ctx.send("progress", {...})`` as it works. A handler registered
  with ``runner.on_message("progress", ...)`` receives each one as an
  ``af.Message`` and draws an overall progress bar.
- **Lifecycle events**, sent by the runner: ``async with runner.subscribe()
  as events`` gives an async iterator of ``af.Event`` (run and stage
  started/finished, actions inserted, started and finished...). Here a task
  consumes it alongside the run, in one task group, printing each event
  compactly, and stops at ``RUN_FINISHED``. The stream has a bounded buffer:
  a slow subscriber never slows the run down.

Run it with ``python examples/progress_events.py``.
"""

from __future__ import annotations

from typing import TypedDict

import anyio

import asyncflow as af

IMAGES = ["cat.jpg", "dog.png", "owl.gif", "fox.jpg", "elk.png"]
STEPS = 2  # progress messages per image


class Progress(TypedDict):
    """The payload of a ``progress`` message."""

    image: str
    step: int
    steps: int


class Resize(af.Action):
    """Resize one image in a few steps, reporting progress after each."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.name = f"resize-{image}"

    async def execute(self, ctx: af.ActionContext) -> None:
        """Pretend to work, sending a ``progress`` message per step."""
        for step in range(1, STEPS + 1):
            await anyio.sleep(0.01)
            progress: Progress = {"image": self.image, "step": step, "steps": STEPS}
            await ctx.send("progress", progress)
        ctx.store.put(f"thumb.{self.image}", f"thumbs/{self.image}", tags=("thumb",))


@af.action(name="list-images")
async def list_images(ctx: af.ActionContext) -> None:
    """Fan out: one ``Resize`` action per image, run by this concurrent stage."""
    for image in IMAGES:
        ctx.add_dynamic_action(Resize(image))


@af.action
async def publish(ctx: af.ActionContext) -> None:
    """Count the thumbnails the fan-out stored."""
    ctx.store["published"] = len(ctx.store.find(tag="thumb"))


class ProgressBar:
    """A message handler: keeps each image's progress and prints the overall bar."""

    def __init__(self, total: int, width: int = 20) -> None:
        self.total = total
        self.width = width
        self.done: dict[str, float] = {}

    def __call__(self, msg: af.Message) -> None:
        """Handle one ``progress`` message."""
        payload: Progress = msg.payload
        step, steps = payload["step"], payload["steps"]
        self.done[payload["image"]] = step / steps
        overall = sum(self.done.values()) / self.total
        filled = round(overall * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        print(f"  [{bar}] {overall:4.0%}  #{msg.seq:<2} {msg.action_name} {step}/{steps}")


def describe(event: af.Event) -> str:
    """One compact line for ``event``: kind, stage, action, status, duration in ms."""
    duration = f"{event.duration * 1000:.1f} ms" if event.duration is not None else ""
    return (
        f"{event.kind.value:<16} {event.stage_id or '-':<7} {event.action_name or '-':<16} "
        f"{event.status or '':<10} {duration}"
    ).rstrip()


workflow = af.Workflow(
    "thumbnails",
    stages=[
        af.Stage("resize", actions=[list_images], concurrency=3),
        af.Stage("publish", actions=[publish]),
    ],
)


async def main() -> None:
    """Run the workflow while a task prints its events and a handler draws progress."""
    runner = af.Runner()
    runner.on_message("progress", ProgressBar(total=len(IMAGES)))
    outcome: list[af.RunResult] = []

    async def print_events(events: af.EventStream) -> None:
        async for event in events:
            print(f"event {describe(event)}")
            if event.kind is af.EventKind.RUN_FINISHED:
                return

    async def run_it() -> None:
        outcome.append(await runner.run(workflow))

    async with runner.subscribe() as events, anyio.create_task_group() as group:
        group.start_soon(print_events, events)
        group.start_soon(run_it)
    result = outcome[0]
    print(f"{result.status.value}: {result.store['published']} thumbnails published")


if __name__ == "__main__":
    anyio.run(main)
