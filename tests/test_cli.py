"""The ``asyncflow`` command line and the run tree it draws (``asyncflow._render``)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

import asyncflow as af
from asyncflow._render import format_run
from asyncflow.cli import main, use_color

DEMO_STAGES = ["discover", "process-databases", "process-caches", "process-servers", "report"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m asyncflow ARGS`` in a fresh interpreter, output decoded as UTF-8."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [sys.executable, "-m", "asyncflow", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    """One run of ``python -m asyncflow demo --no-color``, shared by the tests that read it."""
    return run_cli("demo", "--no-color")


def stage_line(output: str, stage_id: str) -> tuple[int, str]:
    """The index and text of the tree line that draws stage ``stage_id``."""
    for index, line in enumerate(output.splitlines()):
        if re.search(rf"[─-] \S {re.escape(stage_id)}(\s|$)", line):
            return index, line
    raise AssertionError(f"no line for stage {stage_id!r} in:\n{output}")


def test_demo_exits_zero(demo: subprocess.CompletedProcess[str]) -> None:
    """``python -m asyncflow demo --no-color`` succeeds and writes nothing to stderr."""
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr == ""


def test_demo_lists_stages_in_execution_order(demo: subprocess.CompletedProcess[str]) -> None:
    """The demo tree shows discover, the three inserted stages, then report, in that order."""
    positions = [stage_line(demo.stdout, stage_id)[0] for stage_id in DEMO_STAGES]
    assert positions == sorted(positions)


def test_demo_marks_dynamic_stages(demo: subprocess.CompletedProcess[str]) -> None:
    """Exactly the stages inserted at run time carry the dynamic marker."""
    dynamic = {stage_id for stage_id in DEMO_STAGES if "+ dynamic" in stage_line(demo.stdout, stage_id)[1]}
    assert dynamic == {"process-databases", "process-caches", "process-servers"}


def test_demo_marks_the_skipped_step(demo: subprocess.CompletedProcess[str]) -> None:
    """The step disabled at run time is drawn as skipped, with its reason."""
    skipped = [line for line in demo.stdout.splitlines() if "skipped: disabled" in line]
    assert len(skipped) == 1
    assert "publish" in skipped[0]


def test_demo_without_color_has_no_escape_codes(demo: subprocess.CompletedProcess[str]) -> None:
    """``--no-color`` output holds no ANSI escape sequences."""
    assert not ANSI.search(demo.stdout)


def test_demo_fits_80_columns(demo: subprocess.CompletedProcess[str]) -> None:
    """Every line the demo prints to a pipe fits an 80-column terminal."""
    assert max(len(line) for line in demo.stdout.splitlines()) <= 80


def test_demo_prints_a_mermaid_block() -> None:
    """``demo --no-color --mermaid`` exits 0 and ends with a fenced ```mermaid block of a flowchart."""
    done = run_cli("demo", "--no-color", "--mermaid")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    fence = lines.index("```mermaid")
    assert lines[fence + 1] == "flowchart TD"
    assert lines[-1] == "```"
    assert "```" not in lines[fence + 1 : -1]


class FakeTerminal(io.StringIO):
    """A text stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def test_color_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Colour is on for a terminal when NO_COLOR is unset."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(FakeTerminal())


def test_no_color_variable_turns_color_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-empty NO_COLOR turns colour off even on a terminal."""
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(FakeTerminal())


def test_no_color_flag_turns_color_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--no-color`` turns colour off even on a terminal."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert not use_color(FakeTerminal(), no_color_flag=True)


def test_no_color_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output to a pipe or file is never coloured."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert not use_color(io.StringIO())


def test_main_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``asyncflow`` with no subcommand returns exit code 2 and prints usage."""
    assert main([]) == 2
    assert "usage: asyncflow" in capsys.readouterr().err


# ---- format_run -----------------------------------------------------------------------


@af.action
async def fine(ctx: af.ActionContext) -> None:
    """Does nothing, successfully."""


@af.action
async def explode(ctx: af.ActionContext) -> None:
    """Fails the way real code does."""
    raise ValueError("disk quota exceeded")


@af.action
async def plan_more(ctx: af.ActionContext) -> None:
    """Inserts a stage that will never run, because a later action of its stage fails."""
    ctx.add_dynamic_stage(af.Stage("cleanup", actions=[fine]))


async def failed_result() -> af.RunResult:
    """The result of a run whose ``load/explode`` action raised."""
    wf = af.Workflow(
        "etl",
        stages=[
            af.Stage("extract", actions=[fine]),
            af.Stage("load", actions=[plan_more, explode]),
            af.Stage("publish", actions=[fine]),
        ],
    )
    with pytest.raises(af.ActionFailed) as caught:
        await af.run(wf)
    assert caught.value.result is not None
    return caught.value.result


async def test_format_run_shows_the_failure() -> None:
    """A failed run's tree names the failed action and its error, and the header says failed."""
    text = format_run(await failed_result(), color=False)
    lines = text.splitlines()
    assert lines[0].endswith("failed")
    assert lines[0].startswith("etl")
    failed = next(i for i, line in enumerate(lines) if "✗ explode" in line)
    assert "ValueError: disk quota exceeded" in lines[failed + 1]
    assert "cleanup" in text
    assert "skipped: stage 'load' failed" in text
    assert "publish" not in text


async def test_format_run_colors_only_when_asked() -> None:
    """ANSI codes appear with ``color=True`` (red for the failure) and never without."""
    result = await failed_result()
    assert not ANSI.search(format_run(result, color=False))
    assert "\x1b[31m" in format_run(result, color=True)


async def test_format_run_ascii_has_no_box_drawing() -> None:
    """``unicode=False`` draws the tree with ASCII characters only."""
    text = format_run(await failed_result(), color=False, unicode=False)
    assert text.isascii()
