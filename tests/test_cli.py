"""The ``asyncflow`` command line and the run tree it draws (``asyncflow._render``)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import asyncflow as af
from asyncflow._render import format_run, format_runs
from asyncflow.cli import main, use_color

DEMO_STAGES = [
    "discover",
    "process-databases",
    "process-caches",
    "process-servers",
    "report",
    "approve",
    "publish",
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DEMO_APP = "asyncflow._demo:WORKFLOW"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m asyncflow ARGS`` in a fresh interpreter (in ``cwd``), output decoded as UTF-8."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("NO_COLOR", None)
    env.pop("ASYNCFLOW_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "asyncflow", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def started_run(output: str) -> str:
    """The short id of the run a demo started, from its output."""
    found = re.search(r"^run ([0-9a-f]{8}) started", output, re.MULTILINE)
    assert found, output
    return found.group(1)


def table_rows(output: str) -> list[list[str]]:
    """The rows (split on runs of spaces) of the runs table that ``output`` ends with."""
    lines = output.splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    return [re.split(r"\s{2,}", line.strip()) for line in lines[header + 1 :] if line.strip()]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory to run the demo in, so its database lands there."""
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def demo(demo_dir: Path) -> subprocess.CompletedProcess[str]:
    """One run of ``python -m asyncflow demo --no-color`` in ``demo_dir``, shared by tests that read it."""
    return run_cli("demo", "--no-color", cwd=demo_dir)


@pytest.fixture(scope="module")
def demo_twice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A database the demo ran on twice, and the second run's output."""
    where = tmp_path_factory.mktemp("twice")
    first = run_cli("demo", "--no-color", "--db", "runs.db", cwd=where)
    assert first.returncode == 0, first.stderr
    return where / "runs.db", run_cli("demo", "--no-color", "--db", "runs.db", cwd=where)


@pytest.fixture
def suspended(tmp_path: Path) -> tuple[str, str]:
    """(--db, short run id) of a demo run left suspended at its approval step."""
    db = str(tmp_path / "runs.db")
    done = run_cli("demo", "--no-color", "--stop-at-approval", "--db", db)
    assert done.returncode == 0, done.stderr
    return db, started_run(done.stdout)


def stage_line(output: str, stage_id: str) -> tuple[int, str]:
    """The index and text of the tree line that draws stage ``stage_id``."""
    for index, line in enumerate(output.splitlines()):
        if re.search(rf"[─-] \S {re.escape(stage_id)}(\s|$)", line):
            return index, line
    raise AssertionError(f"no line for stage {stage_id!r} in:\n{output}")


# ---- asyncflow demo --------------------------------------------------------------------


def test_demo_exits_zero(demo: subprocess.CompletedProcess[str]) -> None:
    """``python -m asyncflow demo --no-color`` succeeds and writes nothing to stderr."""
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr == ""


def test_demo_creates_its_database(demo: subprocess.CompletedProcess[str], demo_dir: Path) -> None:
    """The demo keeps its runs in ``./asyncflow-demo.db`` by default."""
    assert (demo_dir / "asyncflow-demo.db").is_file()


def test_demo_waits_for_approval(demo: subprocess.CompletedProcess[str]) -> None:
    """The demo says its run is suspended for approval, with the summary it is asked to approve."""
    short = started_run(demo.stdout)
    lines = demo.stdout.splitlines()
    waiting = lines.index(f"run {short} is suspended: needs approval")
    assert "resources inspected" in lines[waiting + 1]


def test_demo_completes_after_resuming(demo: subprocess.CompletedProcess[str]) -> None:
    """After the demo resumes the run, the tree's header says completed and the approver is recorded."""
    short = started_run(demo.stdout)
    header = next(line for line in demo.stdout.splitlines() if f"run {short} · " in line)
    assert header.endswith("completed")
    assert "approved by demo" in demo.stdout


def test_demo_marks_replayed_steps(demo: subprocess.CompletedProcess[str]) -> None:
    """Steps that ran before the approval are marked replayed (↺), without the raw replay reason."""
    line = next(line for line in demo.stdout.splitlines() if "find-resources" in line)
    assert "↺" in line
    assert "earlier execution" not in demo.stdout


def test_demo_ends_with_the_runs_table(demo: subprocess.CompletedProcess[str]) -> None:
    """The demo ends by listing the runs of its database: its run, completed."""
    rows = table_rows(demo.stdout)
    assert [row[:3] for row in rows] == [[started_run(demo.stdout), "resource-discovery", "completed"]]


def test_demo_twice_lists_both_runs(demo_twice: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """A second demo on the same database starts a new run, and the table shows both."""
    _, second = demo_twice
    assert second.returncode == 0, second.stderr
    rows = table_rows(second.stdout)
    assert len(rows) == 2
    assert rows[0][0] == started_run(second.stdout)
    assert rows[0][0] != rows[1][0]
    assert [row[2] for row in rows] == ["completed", "completed"]


def test_demo_lists_stages_in_execution_order(demo: subprocess.CompletedProcess[str]) -> None:
    """The demo tree shows discover, the three inserted stages, report, approve, publish, in that order."""
    positions = [stage_line(demo.stdout, stage_id)[0] for stage_id in DEMO_STAGES]
    assert positions == sorted(positions)


def test_demo_marks_inserted_stages_with_their_inserter(demo: subprocess.CompletedProcess[str]) -> None:
    """Exactly the stages inserted at run time say which action inserted them, at the top level."""
    marker = "+ inserted by discover/find-resources"
    lines = {stage_id: stage_line(demo.stdout, stage_id)[1] for stage_id in DEMO_STAGES}
    dynamic = {stage_id for stage_id, line in lines.items() if marker in line}
    assert dynamic == {"process-databases", "process-caches", "process-servers"}
    assert all(re.match(r"^[├└]─ ", line) for line in lines.values()), lines


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


def test_demo_prints_a_mermaid_block(tmp_path: Path) -> None:
    """``demo --no-color --mermaid`` exits 0 and ends with a fenced ```mermaid block of a flowchart."""
    done = run_cli("demo", "--no-color", "--mermaid", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    fence = lines.index("```mermaid")
    assert lines[fence + 1] == "flowchart TD"
    assert lines[-1] == "```"
    assert "```" not in lines[fence + 1 : -1]


def test_demo_can_stop_at_approval(suspended: tuple[str, str]) -> None:
    """``demo --stop-at-approval`` leaves its run suspended in the database."""
    db, short = suspended
    done = run_cli("runs", "list", "--db", db, "--status", "suspended")
    assert [row[0] for row in table_rows(done.stdout)] == [short]


# ---- asyncflow runs --------------------------------------------------------------------


def test_runs_list_shows_the_run(demo: subprocess.CompletedProcess[str], demo_dir: Path) -> None:
    """``runs list --db PATH`` draws the demo's run as a row: short id, workflow, status."""
    done = run_cli("runs", "list", "--db", str(demo_dir / "asyncflow-demo.db"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == ["RUN", "WORKFLOW", "STATUS", "CREATED", "UPDATED"]
    assert table_rows(done.stdout)[0][:3] == [started_run(demo.stdout), "resource-discovery", "completed"]


def test_runs_list_pages_with_a_cursor(demo_twice: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """``--limit 1`` prints the next cursor; passing it back lists the other run, and no further cursor."""
    db, _ = demo_twice
    url = f"sqlite:///{db}"
    first = run_cli("runs", "list", "--db", url, "--limit", "1")
    cursor = re.search(r"^next page: --cursor (\S+)$", first.stdout, re.MULTILINE)
    assert cursor, first.stdout
    second = run_cli("runs", "list", "--db", url, "--limit", "1", "--cursor", cursor.group(1))
    assert second.returncode == 0, second.stderr
    assert "next page" not in second.stdout
    assert table_rows(first.stdout)[0][0] != table_rows(second.stdout)[0][0]


def test_runs_show_draws_the_steps(demo: subprocess.CompletedProcess[str], demo_dir: Path) -> None:
    """``runs show SHORT_ID`` prints the run's fields, its resume data as JSON and its steps as a tree."""
    short = started_run(demo.stdout)
    done = run_cli("runs", "show", short, "--db", str(demo_dir / "asyncflow-demo.db"), "--no-color")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^resume data\s+\{\"approved_by\": \"demo\"\}$", done.stdout, re.MULTILINE)
    assert stage_line(done.stdout, "process-caches")[0] < stage_line(done.stdout, "approve")[0]
    assert "inspect-orders-db" in done.stdout


def test_runs_show_gives_the_suspend_data(suspended: tuple[str, str]) -> None:
    """A suspended run's page says why it waits, with the data it gave, and how to resume it."""
    db, short = suspended
    done = run_cli("runs", "show", short, "--db", db)
    assert re.search(r"^suspended\s+needs approval", done.stdout, re.MULTILINE)
    assert '"summary": "11 resources inspected' in done.stdout
    assert f"asyncflow runs resume {short}" in done.stdout


def test_runs_show_gives_the_workflow_version_the_run_started_on(suspended: tuple[str, str]) -> None:
    """A run's page names the version of its workflow it started on (two hashes)."""
    db, short = suspended
    done = run_cli("runs", "show", short, "--db", db, "--no-color")
    assert re.search(r"^version\s+[0-9a-f]{16}\.[0-9a-f]{16}$", done.stdout, re.MULTILINE)


def test_runs_cancel_cancels_a_suspended_run(suspended: tuple[str, str]) -> None:
    """``runs cancel`` ends a suspended run as cancelled, and ``runs list --status cancelled`` shows it."""
    db, short = suspended
    done = run_cli("runs", "cancel", short, "--db", db)
    assert done.returncode == 0, done.stderr
    listed = run_cli("runs", "list", "--db", db, "--status", "cancelled")
    assert [row[:3] for row in table_rows(listed.stdout)] == [[short, "resource-discovery", "cancelled"]]


def test_runs_cancel_an_ended_run_exits_1(suspended: tuple[str, str]) -> None:
    """Cancelling a run that has already ended is an error, in one line on stderr."""
    db, short = suspended
    assert run_cli("runs", "cancel", short, "--db", db).returncode == 0
    again = run_cli("runs", "cancel", short, "--db", db)
    assert again.returncode == 1
    assert again.stderr.startswith("asyncflow: ")
    assert "already ended" in again.stderr
    assert len(again.stderr.splitlines()) == 1


def test_runs_resume_completes_a_suspended_run(suspended: tuple[str, str]) -> None:
    """``runs resume --app ... --data ...`` runs the rest in this process and prints the completed tree."""
    db, short = suspended
    done = run_cli("runs", "resume", short, "--db", db, "--app", DEMO_APP, "--data", '{"approved_by": "x"}')
    assert done.returncode == 0, done.stderr
    assert f"run {short} · completed" in done.stdout
    listed = run_cli("runs", "list", "--db", db, "--status", "completed")
    assert [row[0] for row in table_rows(listed.stdout)] == [short]


def test_runs_resume_loads_an_app_from_the_current_directory(
    suspended: tuple[str, str], tmp_path: Path
) -> None:
    """``--app module:attr`` imports a module from the current directory, as ``python -m`` does."""
    db, short = suspended
    (tmp_path / "approvals.py").write_text("from asyncflow._demo import WORKFLOW as FLOW\n")
    done = run_cli(
        "runs",
        "resume",
        short,
        "--db",
        db,
        "--app",
        "approvals:FLOW",
        "--data",
        '{"approved_by": "x"}',
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr


def test_runs_resume_without_its_workflow_leaves_the_run_suspended(suspended: tuple[str, str]) -> None:
    """Without ``--app`` naming the run's workflow, resume refuses (exit 2) and the run stays suspended."""
    db, short = suspended
    done = run_cli("runs", "resume", short, "--db", db, "--data", "{}")
    assert done.returncode == 2
    assert "--app" in done.stderr
    listed = run_cli("runs", "list", "--db", db, "--status", "suspended")
    assert [row[0] for row in table_rows(listed.stdout)] == [short]


def test_runs_resume_with_bad_json_exits_2(suspended: tuple[str, str]) -> None:
    """``--data`` that is not JSON is a usage error."""
    db, short = suspended
    done = run_cli("runs", "resume", short, "--db", db, "--app", DEMO_APP, "--data", "{approved_by: x}")
    assert done.returncode == 2
    assert done.stderr.startswith("asyncflow: --data is not JSON")


CRASH = """
import os, anyio, asyncflow as af
from asyncflow._demo import START_STORE, WORKFLOW

async def main():
    async with af.Engine("sqlite:///runs.db", recover=False, lease=0.2, poll_interval=0.05) as engine:
        await engine.start(WORKFLOW, store=START_STORE)
        await anyio.sleep(0.02)
        os._exit(0)  # dies mid-run: the run stays 'running' and its lease soon expires

anyio.run(main)
"""


def test_runs_commands_never_take_over_an_interrupted_run(tmp_path: Path) -> None:
    """``runs list`` and ``runs show`` leave a run whose engine died alone (they open with recover=False)."""
    (tmp_path / "crash.py").write_text(CRASH)
    subprocess.run([sys.executable, "crash.py"], cwd=tmp_path, check=True, timeout=60)
    deadline = time.monotonic() + 30
    while True:  # until past the lease: an engine that recovers would take the run over then
        listed = run_cli("runs", "list", "--db", "runs.db", cwd=tmp_path)
        [row] = table_rows(listed.stdout)
        if row[-1] == "lease expired" or time.monotonic() > deadline:
            break
    assert row[2:] == ["running", *row[3:5], "lease expired"]
    shown = run_cli("runs", "show", row[0], "--db", "runs.db", cwd=tmp_path)
    assert re.search(r"^status\s+running$", shown.stdout, re.MULTILINE)
    again = run_cli("runs", "list", "--db", "runs.db", cwd=tmp_path)
    assert table_rows(again.stdout)[0][2] == "running"


def test_runs_show_an_unknown_run_exits_2(demo: subprocess.CompletedProcess[str], demo_dir: Path) -> None:
    """An unknown run id: exit 2 (a usage error), one line on stderr naming it, nothing on stdout."""
    done = run_cli("runs", "show", "nope", "--db", str(demo_dir / "asyncflow-demo.db"))
    assert done.returncode == 2
    assert done.stderr == f"asyncflow: no run 'nope' in sqlite:///{demo_dir / 'asyncflow-demo.db'}\n"
    assert done.stdout == ""


def test_runs_with_a_bad_url_exits_2() -> None:
    """A ``--db`` URL that names no backend: exit 2 and a one-line message, no traceback."""
    done = run_cli("runs", "list", "--db", "ftp://example.com/runs")
    assert done.returncode == 2
    assert done.stderr.startswith("asyncflow: unknown engine URL 'ftp://example.com/runs'")
    assert len(done.stderr.splitlines()) == 1


def test_runs_on_a_missing_file_exits_1_and_creates_nothing(tmp_path: Path) -> None:
    """``--db`` naming a file that does not exist is an error; the file is not created."""
    done = run_cli("runs", "list", "--db", str(tmp_path / "missing.db"))
    assert done.returncode == 1
    assert "no database at" in done.stderr
    assert not (tmp_path / "missing.db").exists()


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


async def test_format_run_marks_a_bailing_action_and_gives_its_reason_below() -> None:
    """A bailing action is drawn "bailed", with the reason it gave (and only that) on the line below."""

    @af.action
    async def check(ctx: af.ActionContext) -> None:
        ctx.bail("nothing to do")

    result = await af.run(af.Workflow("orders", stages=[af.Stage("s", actions=[check])]))
    lines = format_run(result, color=False).splitlines()
    bailed = next(i for i, line in enumerate(lines) if "✓ check" in line)
    assert lines[bailed].split()[2:4] == ["check", "bailed"]
    assert lines[bailed + 1].strip() == "nothing to do"


async def test_format_run_gives_the_reason_a_suspended_action_gave() -> None:
    """A suspended action is drawn "suspended: <reason>", with the reason it gave once."""

    @af.action
    async def approve(ctx: af.ActionContext) -> None:
        ctx.suspend("needs approval")

    result = await af.run(af.Workflow("orders", stages=[af.Stage("s", actions=[approve])]))
    text = format_run(result, color=False)
    assert re.search(r"approve  suspended: needs approval +\S+ ms$", text, re.MULTILINE), text


async def test_format_run_colors_only_when_asked() -> None:
    """ANSI codes appear with ``color=True`` (red for the failure) and never without."""
    result = await failed_result()
    assert not ANSI.search(format_run(result, color=False))
    assert "\x1b[31m" in format_run(result, color=True)


async def test_format_run_ascii_has_no_box_drawing() -> None:
    """``unicode=False`` draws the tree with ASCII characters only."""
    text = format_run(await failed_result(), color=False, unicode=False)
    assert text.isascii()


# ---- runs read back from a database --------------------------------------------------

REPLAYED = "completed in an earlier execution"  # the reason the engine gives a replayed action


def step(kind: str, stage_id: str, action: str | None = None, **fields: Any) -> af.StepRecord:
    """A step record as a durable run reads it back (completed, 1 ms, unless told otherwise)."""
    values: dict[str, Any] = {"status": af.StepStatus.COMPLETED, "dynamic": False, "duration": 0.001}
    values.update(fields)
    return af.StepRecord(kind=kind, stage_id=stage_id, action_name=action, started_at=0.0, **values)


def stored_result(*steps: af.StepRecord, status: af.RunStatus = af.RunStatus.COMPLETED) -> af.RunResult:
    """A run result built from step records, as ``engine.wait`` builds one from the database."""
    return af.RunResult(
        run_id="0123456789abcdef", workflow_id="etl", status=status, store={}, duration=0.5, steps=list(steps)
    )


def test_format_run_names_a_recorded_error_by_its_type() -> None:
    """An error read back from a database is drawn as ``Type: message``, once, at the failed action."""
    error = "ValueError", "disk quota exceeded"
    result = stored_result(
        step("stage", "load", status=af.StepStatus.FAILED, error=af.RecordedError(*error)),
        step("action", "load", "explode", status=af.StepStatus.FAILED, error=af.RecordedError(*error)),
        status=af.RunStatus.FAILED,
    )
    text = format_run(result, color=False)
    assert text.count("ValueError: disk quota exceeded") == 1
    assert "RecordedError" not in text


def test_format_run_marks_a_replayed_stage_once() -> None:
    """A stage whose actions were all replayed says ``↺ replayed`` once; its actions show no duration."""
    result = stored_result(
        step("stage", "extract"),
        step("action", "extract", "fetch", reason=REPLAYED),
        step("action", "extract", "parse", reason=REPLAYED),
        step("stage", "load"),
        step("action", "load", "write"),
    )
    lines = format_run(result, color=False).splitlines()
    assert [line.endswith("↺ replayed") for line in lines[1:4]] == [True, False, False]
    assert lines[2].rstrip().endswith("fetch")
    assert lines[5].endswith("1.0 ms")
    assert "earlier execution" not in "\n".join(lines)


def test_format_run_shows_earlier_durations_of_replayed_steps() -> None:
    """Given the execution before a resume, replayed steps show the durations they took then."""
    before = stored_result(
        step("stage", "extract", duration=0.05), step("action", "extract", "fetch", duration=0.04)
    )
    after = stored_result(step("stage", "extract"), step("action", "extract", "fetch", reason=REPLAYED))
    lines = format_run(after, color=False, earlier=before).splitlines()
    assert lines[1].endswith("↺   50.0 ms")
    assert lines[2].endswith("↺   40.0 ms")


NOW = 1_800_000_000.0


def run_info(status: af.RunStatus, **fields: Any) -> af.RunInfo:
    """A run as the database knows it, created a minute before ``NOW``."""
    return af.RunInfo(
        run_id="0123456789abcdef",
        workflow_id="etl",
        status=status,
        created_at=NOW - 60,
        updated_at=NOW - 5,
        **fields,
    )


def test_format_runs_cuts_a_long_note_to_the_width() -> None:
    """A failed run's long error is cut with an ellipsis so each line fits the width."""
    text = format_runs(
        [run_info(af.RunStatus.FAILED, error="ValueError: " + "x" * 200)], color=False, now=NOW
    )
    lines = text.splitlines()
    assert lines[0].split() == ["RUN", "WORKFLOW", "STATUS", "CREATED", "UPDATED", "NOTE"]
    assert lines[1].split()[:5] == ["89abcdef", "etl", "failed", "1m", "ago"]
    assert lines[1].endswith("…")
    assert max(len(line) for line in lines) == 80


def test_format_runs_colours_only_when_asked() -> None:
    """ANSI codes appear in the table with ``color=True`` (blue for suspended) and never without."""
    runs = [run_info(af.RunStatus.SUSPENDED, suspend_reason="needs approval")]
    assert not ANSI.search(format_runs(runs, color=False, now=NOW))
    assert "\x1b[34msuspended" in format_runs(runs, color=True, now=NOW)
