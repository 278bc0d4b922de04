"""Fan-out: one action inserts an action per item, and a concurrent stage runs them.

``list-pages`` inserts one ``Fetch`` action per URL with
``ctx.add_dynamic_action``. The stage has ``concurrency=4``, so the fetches
run four at a time in an anyio task group: the stage takes about as long as
the slowest batches, not the sum of every fetch. Each fetch writes its own
store key; concurrent writes are safe, and ``collect`` (the next stage) reads
them all back.

Run it with ``python examples/fanout.py``.
"""

from __future__ import annotations

import anyio

import asyncflow as af

URLS = [f"https://example.com/page/{n}" for n in range(1, 11)]
FETCH_SECONDS = 0.05


class InFlight:
    """Counts fetches running at once, to show the concurrency limit holds.

    Shared by the actions of this example only; real per-run state belongs in
    ``ctx.store``, since one action object may serve many runs at once.
    """

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0


class Fetch(af.Action):
    """Fetch one page (simulated with a sleep) and store its size."""

    def __init__(self, url: str, in_flight: InFlight) -> None:
        self.url = url
        self.name = f"fetch-{url.rsplit('/', 1)[-1]}"
        self.in_flight = in_flight

    async def execute(self, ctx: af.ActionContext) -> None:
        """Pretend to download ``self.url``."""
        self.in_flight.now += 1
        self.in_flight.peak = max(self.in_flight.peak, self.in_flight.now)
        try:
            await anyio.sleep(FETCH_SECONDS)
        finally:
            self.in_flight.now -= 1
        ctx.store.put(f"page.{self.url}", len(self.url) * 100, tags=("page",))


def build(in_flight: InFlight) -> af.Workflow:
    """The workflow: a concurrent ``fetch`` stage whose first action fans out."""

    @af.action(name="list-pages")
    async def list_pages(ctx: af.ActionContext) -> None:
        for url in URLS:
            ctx.add_dynamic_action(Fetch(url, in_flight))

    @af.action
    async def collect(ctx: af.ActionContext) -> None:
        sizes: list[int] = [ctx.store.get(key, int) for key in ctx.store.find(tag="page")]
        ctx.store["total_bytes"] = sum(sizes)
        ctx.store["pages"] = len(sizes)

    return af.Workflow(
        "crawl",
        stages=[
            af.Stage("fetch", actions=[list_pages], concurrency=4),
            af.Stage("collect", actions=[collect]),
        ],
    )


async def main() -> None:
    """Run the crawl and compare its time with fetching one page after another."""
    in_flight = InFlight()
    result = await af.run(build(in_flight))
    fetches = [s for s in result.steps if s.action_name and s.action_name.startswith("fetch-")]
    fetch_stage = next(s for s in result.steps if s.kind == "stage" and s.stage_id == "fetch")
    print(f"{len(fetches)} dynamic fetch actions, at most {in_flight.peak} at once")
    print(
        f"fetch stage took {fetch_stage.duration:.2f}s; one after another would take "
        f"{len(URLS) * FETCH_SECONDS:.2f}s"
    )
    print(f"collected {result.store['pages']} pages, {result.store['total_bytes']:,} bytes")


if __name__ == "__main__":
    anyio.run(main)
