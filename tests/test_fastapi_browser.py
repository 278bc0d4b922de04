"""The runs page in a real browser: Debian's Chromium, driven by Playwright, against uvicorn on 127.0.0.1.

A run inserts stages one at a time (each waits for the test); the open page
shows each new stage without a reload (from the run's server-sent events),
then resume is clicked on the suspended run and the page sees it complete.
Screenshots (light and dark) are saved in ``ASYNCFLOW_ARTIFACTS`` (default
``.artifacts/`` at the top of the repository).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from helpers import GATES, gate

import asyncflow as af
from asyncflow.integrations.fastapi import lifespan, runs_router

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ASYNCFLOW_ARTIFACTS", Path(__file__).resolve().parent.parent / ".artifacts"))
#: The flags Chromium needs on this machine: as root, and no network but loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.once


class Step(af.Action):
    """Wait for the test's go, then insert the next stage (up to three)."""

    def __init__(self, number: int) -> None:
        self.number = number

    async def execute(self, ctx: af.ActionContext) -> None:
        await gate(f"step-{self.number}").wait()
        if self.number < 3:
            ctx.add_dynamic_stage(af.Stage(f"step-{self.number + 1}", actions=[Step(self.number + 1)]))


@af.action
async def begin(ctx: af.ActionContext) -> None:
    """Insert the first stage."""
    ctx.add_dynamic_stage(af.Stage("step-1", actions=[Step(1)]))


@af.action
async def sign_off(ctx: af.ActionContext) -> None:
    """Suspend until someone resumes the run from the page."""
    if not ctx.is_resuming:
        ctx.suspend("needs sign-off", {"steps": 3})
    ctx.store["signed"] = ctx.resume_data


GROWING = af.Workflow(
    "growing-live",
    stages=[af.Stage("begin", actions=[begin]), af.Stage("sign-off", actions=[sign_off])],
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_runs_page_grows_live_and_resumes_a_run(tmp_path: Path) -> None:
    """New stages appear on the open page without a reload; resume on the suspended run completes it."""
    if not await anyio.Path(CHROMIUM).exists():
        if os.environ.get("ASYNCFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail("/usr/bin/chromium is missing: apt-get install chromium (.ci/run does)")
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    from playwright.async_api import async_playwright, expect

    GATES.clear()
    engine = af.Engine(f"sqlite:///{tmp_path / 'runs.db'}")
    engine.register(GROWING)
    app = FastAPI(lifespan=lifespan(engine))
    app.include_router(runs_router(engine, prefix="/runs"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    base = f"http://127.0.0.1:{port}"
    await anyio.Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)

    with anyio.fail_after(90):
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve)
            while not server.started:  # noqa: ASYNC110 (uvicorn's own flag; it has no event to wait on)
                await anyio.sleep(0.02)
            async with httpx.AsyncClient(base_url=base) as client:
                run_id = (await client.post("/runs", json={"workflow_id": "growing-live"})).json()["run_id"]

            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = await browser.new_page(viewport={"width": 1100, "height": 900})
                    await page.goto(f"{base}/runs/ui#/run/{run_id}")
                    plan = page.locator("#plan")
                    await expect(plan.locator('[data-step^="stage:step-1:"]')).to_be_visible(timeout=15_000)
                    for number in (1, 2):
                        nxt = plan.locator(f'[data-step^="stage:step-{number + 1}:"]')
                        await expect(nxt).to_have_count(0)
                        gate(f"step-{number}").set()
                        # No reload: the page hears the insertion on its event stream.
                        await expect(nxt).to_be_visible(timeout=15_000)
                        await expect(nxt.locator(".badge.dynamic")).to_be_visible()
                    gate("step-3").set()

                    resume_form = page.locator("#resume-form")
                    await expect(resume_form).to_be_visible(timeout=15_000)
                    await page.screenshot(path=str(ARTIFACTS / "runs-page-suspended.png"), full_page=True)
                    await page.fill("#resume-data", '{"by": "ann"}')
                    await page.focus("#resume")
                    await page.keyboard.press("Enter")  # by keyboard
                    await expect(page.locator("#run-facts .badge.st-completed")).to_be_visible(timeout=15_000)
                    await expect(
                        plan.locator('[data-step^="stage:sign-off:"] .badge.st-completed')
                    ).to_be_visible()
                    await expect(
                        plan.locator('[data-step^="action:step-1:"] .badge.replayed')
                    ).to_be_visible()
                    # The stream went on after the suspension: the end is in the events, once.
                    await expect(page.locator("#events li", has_text="run_finished")).to_have_count(
                        1, timeout=15_000
                    )
                    await expect(page.locator("#events li", has_text="run_created")).to_have_count(1)
                    await page.screenshot(path=str(ARTIFACTS / "runs-page-light.png"), full_page=True)
                    await page.emulate_media(color_scheme="dark")
                    await page.screenshot(path=str(ARTIFACTS / "runs-page-dark.png"), full_page=True)

                    # The table of runs lists it, completed, and its link opens it again.
                    await page.goto(f"{base}/runs/ui")
                    row = page.locator(f'#runs tr[data-run="{run_id}"]')
                    await expect(row.locator(".badge.st-completed")).to_be_visible(timeout=15_000)
                    await page.select_option("#status-filter", "failed")
                    await expect(row).to_have_count(0, timeout=15_000)
                finally:
                    await browser.close()
            server.should_exit = True

    info = await _final(engine, run_id, tmp_path)
    assert info == ("completed", {"by": "ann"})
    assert (await anyio.Path(ARTIFACTS / "runs-page-light.png").stat()).st_size > 10_000


async def _final(engine: af.Engine, run_id: str, tmp_path: Path) -> tuple[str, object]:
    """The run's status and what the page resumed it with, read again from the file."""
    again = af.Engine(f"sqlite:///{tmp_path / 'runs.db'}", recover=False)
    async with again:
        info = await again.get_run(run_id)
        store = await again.get_store(run_id)
    return info.status.value, store.get("signed")
