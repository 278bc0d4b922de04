"""``asyncflow run``, ``draw``, ``runs show --mermaid`` and ``--json`` everywhere, in real child processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "golden"

FLOWS = """
import os
import anyio
import asyncflow as af

async def _wait_for(name: str) -> None:
    with anyio.fail_after(30):
        while not os.path.exists(name):
            await anyio.sleep(0.02)


@af.action(name="step")
async def step(ctx: af.ActionContext) -> None:
    ctx.store["steps"] = ctx.store.get_or("steps", 0) + 1


@af.action(name="grow")
async def grow(ctx: af.ActionContext) -> None:
    n = ctx.store.get_or("n", 0)
    if n < 3:
        ctx.store["n"] = n + 1
        ctx.add_dynamic_stage(af.Stage(f"grown-{n + 1}", actions=[step, grow]))
    if os.environ.get("FLOWS_GATED"):
        await _wait_for(f"go-{n}")


@af.action(name="boom")
async def boom(ctx: af.ActionContext) -> None:
    raise ValueError("no stock")


@af.action(name="gate")
async def gate(ctx: af.ActionContext) -> None:
    if ctx.resume_data is None:
        ctx.suspend("needs approval", {"amount": 3})
    ctx.store["approved_by"] = ctx.resume_data["by"]


@af.action(name="hang")
async def hang(ctx: af.ActionContext) -> None:
    ctx.store["started"] = True
    await anyio.sleep_forever()


GROW = af.Workflow("grow", stages=[af.Stage("seed", actions=[grow]), af.Stage("end", actions=[step])])
FAIL = af.Workflow("fail", stages=[af.Stage("one", actions=[step, boom]), af.Stage("two", actions=[step])])
GATE = af.Workflow("gate", stages=[af.Stage("ask", actions=[gate]), af.Stage("after", actions=[step])])
HANG = af.Workflow("hang", stages=[af.Stage("one", actions=[hang])])
BOTH = [GROW, FAIL]
NOT_A_WORKFLOW = 3
"""


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    """A directory holding ``flows.py``, the workflows these tests run by ``flows:NAME``."""
    (tmp_path / "flows.py").write_text(FLOWS, encoding="utf-8")
    return tmp_path


def cli(where: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m asyncflow ARGS`` in ``where`` (not a terminal), output decoded as UTF-8."""
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8", **env}
    environment.pop("NO_COLOR", None)
    environment.pop("ASYNCFLOW_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "asyncflow", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=environment,
        cwd=where,
        timeout=60,
        check=False,
    )


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a command wrote (and nothing else)."""
    assert done.stderr == "", done.stderr
    return json.loads(done.stdout)


def normalized(text: str) -> str:
    """``text`` with run ids and durations (which change from run to run) replaced."""
    text = re.sub(r"\b[0-9a-f]{8}\b", "RUNID", text)
    lines = [re.sub(r"\s+(<0\.1|[\d,]+\.\d) ms$", "  <ms>", line) for line in text.splitlines()]
    return "\n".join(lines) + "\n"


def check_golden(name: str, text: str) -> None:
    """``text`` equals tests/golden/NAME (written when UPDATE_GOLDEN=1)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


# ---- asyncflow run --------------------------------------------------------------------


def test_run_completed_exits_0_with_the_tree(flows: Path) -> None:
    """A completed run exits 0 and prints its tree, inserted stages at one level with their inserter."""
    done = cli(flows, "run", "flows:GROW")
    assert done.returncode == 0, done.stderr
    check_golden("cli_run_grow.txt", normalized(done.stdout))


def test_run_failed_exits_1_naming_the_step(flows: Path) -> None:
    """A failed run exits 1, with the error under the failed step and a line naming where it failed."""
    done = cli(flows, "run", "flows:FAIL")
    assert done.returncode == 1, done.stderr
    check_golden("cli_run_fail.txt", normalized(done.stdout))


def test_run_suspended_exits_3_with_the_resume_command(flows: Path) -> None:
    """A suspended durable run exits 3 and prints the command that resumes it, which works."""
    done = cli(flows, "run", "flows:GATE", "--db", "runs.db")
    assert done.returncode == 3, done.stderr
    found = re.search(
        r"asyncflow runs resume ([0-9a-f]{8}) --db runs.db \\\n\s+--app flows:GATE", done.stdout
    )
    assert found, done.stdout
    resumed = cli(
        flows,
        "runs",
        "resume",
        found.group(1),
        "--db",
        "runs.db",
        "--app",
        "flows:GATE",
        "--data",
        '{"by": "ann"}',
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "gate · run" in resumed.stdout
    assert "completed" in resumed.stdout


def test_run_in_memory_suspended_says_it_cannot_be_resumed(flows: Path) -> None:
    """A suspended run in memory exits 3 and says to use --db to resume it later."""
    done = cli(flows, "run", "flows:GATE")
    assert done.returncode == 3
    assert "run it with --db to resume it later" in done.stdout


def test_run_takes_the_store(flows: Path) -> None:
    """--store gives the run its first store values."""
    data = as_json(cli(flows, "run", "flows:GROW", "--store", '{"n": 2, "label": "x"}', "--json"))
    assert data["store"] == {"n": 3, "label": "x", "steps": 2}


def test_run_json_fields(flows: Path) -> None:
    """run --json is one document with the run's fields and one entry per step, field by field."""
    done = cli(flows, "run", "flows:FAIL", "--json")
    assert done.returncode == 1
    data = as_json(done)
    assert set(data) == {
        "run_id",
        "workflow_id",
        "status",
        "duration",
        "error",
        "bail_reason",
        "suspend_reason",
        "suspend_data",
        "store",
        "steps",
    }
    assert re.fullmatch(r"[0-9a-f]{32}", data["run_id"])
    assert data["workflow_id"] == "fail"
    assert data["status"] == "failed"
    assert data["duration"] >= 0
    assert data["error"] == {"type": "ValueError", "message": "no stock"}
    assert data["bail_reason"] is None
    assert data["suspend_reason"] is None
    assert data["suspend_data"] is None
    assert data["store"] == {"steps": 1}
    assert [(s["kind"], s["stage_id"], s["action"], s["status"]) for s in data["steps"]] == [
        ("stage", "one", None, "failed"),
        ("action", "one", "step", "completed"),
        ("action", "one", "boom", "failed"),
    ]
    boom = data["steps"][2]
    assert boom == {
        "kind": "action",
        "stage_id": "one",
        "action": "boom",
        "status": "failed",
        "dynamic": False,
        "replayed": False,
        "duration": boom["duration"],
        "started_at": boom["started_at"],
        "depth": 0,
        "inserted_by": None,
        "inserted_by_stage": None,
        "reason": None,
        "attempts": 1,
        "error": {"type": "ValueError", "message": "no stock"},
        "recovered_error": None,
    }


def test_run_json_marks_inserted_steps(flows: Path) -> None:
    """In run --json, an inserted stage is dynamic and names the action that inserted it."""
    data = as_json(cli(flows, "run", "flows:GROW", "--json"))
    stages = [s for s in data["steps"] if s["kind"] == "stage"]
    assert [(s["stage_id"], s["dynamic"], s["inserted_by"]) for s in stages] == [
        ("seed", False, None),
        ("grown-1", True, "seed/grow"),
        ("grown-2", True, "grown-1/grow"),
        ("grown-3", True, "grown-2/grow"),
        ("end", False, None),
    ]


# ---- asyncflow draw -------------------------------------------------------------------


def test_draw_tree_golden(flows: Path) -> None:
    """draw prints a definition's stages and their actions as a tree."""
    done = cli(flows, "draw", "flows:FAIL")
    assert done.returncode == 0, done.stderr
    check_golden("cli_draw_fail.txt", done.stdout)


def test_draw_mermaid_is_the_workflow_s(flows: Path) -> None:
    """draw --format mermaid prints what Workflow.to_mermaid() gives."""
    done = cli(flows, "draw", "flows:FAIL", "--format", "mermaid")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowchart")
    assert '["boom"]' in done.stdout


def test_draw_json_fields(flows: Path) -> None:
    """draw --json gives the workflow's id, name, description and stages with their actions."""
    assert as_json(cli(flows, "draw", "flows:FAIL", "--json")) == {
        "workflow_id": "fail",
        "name": "fail",
        "description": "",
        "stages": [
            {"id": "one", "name": "one", "concurrency": 1, "actions": ["step", "boom"]},
            {"id": "two", "name": "two", "concurrency": 1, "actions": ["step"]},
        ],
    }


def test_draw_mermaid_json(flows: Path) -> None:
    """draw --format mermaid --json wraps the drawing in a JSON document."""
    data = as_json(cli(flows, "draw", "flows:FAIL", "--format", "mermaid", "--json"))
    assert data["workflow_id"] == "fail"
    assert data["mermaid"].startswith("flowchart")


# ---- asyncflow runs ... --json, --mermaid ------------------------------------------------


@pytest.fixture
def gated_db(flows: Path) -> tuple[Path, str]:
    """A database with one suspended run of flows:GATE, and that run's full id."""
    done = cli(flows, "run", "flows:GATE", "--db", "runs.db", "--json")
    assert done.returncode == 3
    return flows, json.loads(done.stdout)["run_id"]


def test_runs_list_json_fields(gated_db: tuple[Path, str]) -> None:
    """runs list --json gives every run's fields and the next cursor."""
    where, run_id = gated_db
    data = as_json(cli(where, "runs", "list", "--db", "runs.db", "--json"))
    assert data["next_cursor"] is None
    [run] = data["runs"]
    assert run["run_id"] == run_id
    assert run["workflow_id"] == "gate"
    assert run["status"] == "suspended"
    assert run["suspend_reason"] == "needs approval"
    assert run["suspend_data"] == {"amount": 3}
    assert run["suspended_step"] is not None
    assert run["resume_data"] is None
    assert run["error"] is None
    assert run["created_at"] <= run["updated_at"]
    assert run["resume_key"] is None
    assert set(run) >= {"owner", "lease_until", "wake_at", "idempotency_key", "workflow_version"}


def test_runs_show_json_has_the_steps(gated_db: tuple[Path, str]) -> None:
    """runs show --json gives the run's fields and its steps so far."""
    where, run_id = gated_db
    data = as_json(cli(where, "runs", "show", run_id[:8], "--db", "runs.db", "--json"))
    assert data["run_id"] == run_id
    assert data["status"] == "suspended"
    assert [(s["stage_id"], s["action"], s["status"]) for s in data["steps"]] == [
        ("ask", None, "suspended"),
        ("ask", "gate", "suspended"),
    ]


def test_runs_show_mermaid(gated_db: tuple[Path, str]) -> None:
    """runs show --mermaid prints the run as a Mermaid flowchart."""
    where, run_id = gated_db
    done = cli(where, "runs", "show", run_id[:8], "--db", "runs.db", "--mermaid")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowchart")
    assert "gate" in done.stdout


def test_runs_show_of_a_completed_run_has_no_suspended_line(gated_db: tuple[Path, str]) -> None:
    """After the run is resumed and completes, runs show no longer says why it was once suspended."""
    where, run_id = gated_db
    resumed = cli(
        where,
        "runs",
        "resume",
        run_id[:8],
        "--db",
        "runs.db",
        "--app",
        "flows:GATE",
        "--data",
        '{"by": "ann"}',
    )
    assert resumed.returncode == 0, resumed.stderr
    shown = cli(where, "runs", "show", run_id[:8], "--db", "runs.db")
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout
    assert "suspended" not in shown.stdout
    assert "needs approval" not in shown.stdout
    data = as_json(cli(where, "runs", "show", run_id[:8], "--db", "runs.db", "--json"))
    assert (data["status"], data["suspend_reason"], data["resume_data"]) == ("completed", None, {"by": "ann"})


def test_runs_resume_json(gated_db: tuple[Path, str]) -> None:
    """runs resume --json is the resumed run's result."""
    where, run_id = gated_db
    data = as_json(
        cli(
            where,
            "runs",
            "resume",
            run_id,
            "--db",
            "runs.db",
            "--app",
            "flows:GATE",
            "--data",
            '{"by": "bo"}',
            "--json",
        )
    )
    assert (data["run_id"], data["status"], data["store"]["approved_by"]) == (run_id, "completed", "bo")


def test_runs_cancel_json(gated_db: tuple[Path, str]) -> None:
    """runs cancel --json names the run and what it was; the run is then cancelled."""
    where, run_id = gated_db
    data = as_json(cli(where, "runs", "cancel", run_id, "--db", "runs.db", "--json"))
    assert (data["run_id"], data["workflow_id"], data["was"]) == (run_id, "gate", "suspended")
    listed = as_json(cli(where, "runs", "list", "--db", "runs.db", "--json"))
    assert listed["runs"][0]["status"] == "cancelled"


# ---- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nowhere:FLOW"], "asyncflow: 'nowhere:FLOW': cannot import 'nowhere'"),
        (["run", "flows:MISSING"], "asyncflow: 'flows:MISSING': 'flows' has no attribute 'MISSING'"),
        (["run", "flows:NOT_A_WORKFLOW"], "asyncflow: 'flows:NOT_A_WORKFLOW' is 3, not an af.Workflow"),
        (["run", "flows:BOTH"], "asyncflow: 'flows:BOTH' names 2 workflows ('grow', 'fail'); name one"),
        (["draw", "flows"], "asyncflow: 'flows' must be 'module:attr'"),
        (["run", "flows:GROW", "--store", "[1, 2]"], "asyncflow: --store must be a JSON object"),
        (["run", "flows:GROW", "--store", "{nope"], "asyncflow: --store is not JSON"),
        (["run", "flows:GROW", "--db", "mysql://x/y"], "asyncflow: unknown engine URL 'mysql://x/y'"),
        (["runs", "list", "--db", "redis://x"], "asyncflow: unknown engine URL 'redis://x'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(flows: Path, args: list[str], message: str) -> None:
    """Each bad input gets one line starting 'asyncflow:' on stderr, exit code 2 and no traceback."""
    done = cli(flows, *args)
    assert done.returncode == 2, done
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert done.stdout == ""


def test_unknown_run_exits_2(gated_db: tuple[Path, str]) -> None:
    """An unknown run id is one 'asyncflow:' line and exit code 2."""
    where, _ = gated_db
    done = cli(where, "runs", "show", "0000ffff", "--db", "runs.db")
    assert (done.returncode, done.stderr) == (2, "asyncflow: no run '0000ffff' in sqlite:///runs.db\n")


def test_without_rich_one_line_names_the_extra(flows: Path) -> None:
    """Without rich installed, asyncflow says in one line which extra to install, and exits 1."""
    blocked = (
        "import sys; sys.modules['rich'] = None; from asyncflow.cli import main; "
        "sys.exit(main(['draw', 'flows:GROW']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, cwd=flows, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "asyncflow: the command line needs rich: pip install 'asyncflow[cli]'\n"


def test_no_color_and_pipes_are_plain(flows: Path) -> None:
    """Output to a pipe has no escape codes (a terminal with NO_COLOR: in the pty test)."""
    done = cli(flows, "run", "flows:FAIL")
    assert "\x1b[" not in done.stdout


# ---- the live view in a real pseudo-terminal ----------------------------------------------


def styled(*words: str) -> str:
    """A pattern for ``words`` on the screen, one after another, with styles or spaces between them."""
    return r"(?:\x1b\[[0-9;]*m|\s)*".join(re.escape(word) for word in words)


def _spawn(flows: Path, *args: str, **env: str) -> Any:
    pexpect = pytest.importorskip("pexpect")
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8", "TERM": "xterm-256color"}
    environment.pop("NO_COLOR", None)
    environment.update(env)
    return pexpect.spawn(
        sys.executable,
        ["-m", "asyncflow", *args],
        cwd=str(flows),
        env=environment,
        dimensions=(40, 100),
        encoding="utf-8",
        timeout=30,
    )


@pytest.mark.once
def test_live_view_grows_as_stages_are_inserted(flows: Path) -> None:
    """In a terminal, the tree is drawn live: each inserted stage appears while the run waits on it."""
    child = _spawn(flows, "run", "flows:GROW", FLOWS_GATED="1")
    try:
        child.expect(styled("▶", "seed"))
        child.expect("steps done, 1 running")  # the progress line
        for n in range(1, 4):
            # The run cannot go on until this test has seen the stage on the screen.
            (flows / f"go-{n - 1}").touch()
            inserter = "seed" if n == 1 else f"grown-{n - 1}"
            child.expect(styled("▶", f"grown-{n}", f"+ inserted by {inserter}/grow"))
        (flows / "go-3").touch()
        child.expect(styled("completed", ": 5 stages, 8 actions", "(3 dynamic)"))
        child.expect(pexpect_eof())
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def pexpect_eof() -> Any:
    import pexpect

    return pexpect.EOF


@pytest.mark.once
def test_ctrl_c_cancels_the_run_and_exits_130(flows: Path) -> None:
    """Ctrl-C to a running 'asyncflow run --db' cancels the run, which the database records, and exits 130."""
    child = _spawn(flows, "run", "flows:HANG", "--db", "runs.db", NO_COLOR="1")
    try:
        child.expect(styled("▶", "hang"))
        child.sendintr()
        child.expect("cancelled")
        child.expect(pexpect_eof())
    finally:
        child.close(force=True)
    assert child.exitstatus == 130
    assert "\x1b[3" not in (child.before or "")  # NO_COLOR: no colours
    listed = as_json(cli(flows, "runs", "list", "--db", "runs.db", "--json"))
    assert [(run["workflow_id"], run["status"]) for run in listed["runs"]] == [("hang", "cancelled")]


@pytest.mark.once
def test_ctrl_c_cancels_a_run_in_memory(flows: Path) -> None:
    """Ctrl-C to a running 'asyncflow run' in memory cancels it and exits 130."""
    child = _spawn(flows, "run", "flows:HANG")
    started = time.monotonic()
    try:
        child.expect(styled("▶", "hang"))
        child.sendintr()
        child.expect("cancelled")
        child.expect(pexpect_eof())
    finally:
        child.close(force=True)
    assert child.exitstatus == 130
    assert time.monotonic() - started < 30


# ---- asyncflow runs watch -------------------------------------------------------------------


def test_runs_watch_follows_a_run_of_another_process(flows: Path) -> None:
    """runs watch --json prints one JSON line per event, live, of a run another process executes."""
    runner = subprocess.Popen(
        [sys.executable, "-m", "asyncflow", "run", "flows:GROW", "--db", "runs.db", "--json"],
        cwd=flows,
        env={**os.environ, "FLOWS_GATED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        listed: list[Any] = []
        while not listed:
            assert time.monotonic() < deadline, "the run never appeared in the database"
            if (flows / "runs.db").exists():
                done = cli(flows, "runs", "list", "--db", "runs.db", "--json")
                listed = json.loads(done.stdout)["runs"] if done.returncode == 0 else []
        run_id = listed[0]["run_id"]
        watcher = subprocess.Popen(
            [sys.executable, "-m", "asyncflow", "runs", "watch", run_id[:8], "--db", "runs.db", "--json"],
            cwd=flows,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watcher.stdout is not None
        seen: list[dict[str, Any]] = []
        for n in range(4):
            # The run waits for go-N: each inserted stage is seen by the watcher while the run is held.
            while not any(
                e["kind"] == "action_started" and e["key"] == f"{_stage(n)}/{_grow(n)}" for e in seen
            ):
                seen.append(json.loads(watcher.stdout.readline()))
            (flows / f"go-{n}").touch()
        rest, errors = watcher.communicate(timeout=30)
        assert watcher.returncode == 0, errors
        seen.extend(json.loads(line) for line in rest.splitlines())
    finally:
        for n in range(4):
            (flows / f"go-{n}").touch()
        runner.communicate(timeout=30)
    assert runner.returncode == 0
    assert [e["cursor"] for e in seen] == [str(n) for n in range(1, len(seen) + 1)]
    assert all(e["run_id"] == run_id and e["workflow_id"] == "grow" for e in seen)
    inserted = [(e["stage_id"], e["parent_key"]) for e in seen if e["kind"] == "stage_inserted"]
    assert inserted == [("grown-1", "seed/0"), ("grown-2", "grown-1/1"), ("grown-3", "grown-2/1")]
    assert seen[-1]["kind"] == "run_finished"
    assert seen[-1]["status"] == "completed"


def _stage(n: int) -> str:
    return "seed" if n == 0 else f"grown-{n}"


def _grow(n: int) -> int:
    return 0 if n == 0 else 1


def test_runs_watch_of_an_ended_run_draws_it(flows: Path) -> None:
    """runs watch of a run that has ended draws its tree and exits with the run's code."""
    done = cli(flows, "run", "flows:FAIL", "--db", "runs.db", "--json")
    run_id = json.loads(done.stdout)["run_id"]
    watched = cli(flows, "runs", "watch", run_id, "--db", "runs.db")
    assert watched.returncode == 1, watched.stderr
    assert normalized(watched.stdout).splitlines()[0] == "fail · run RUNID · failed"
    assert "ValueError: no stock" in watched.stdout


# ---- asyncflow runs vacuum ------------------------------------------------------------------

DELETED_RUNS = """
import anyio, asyncflow as af, flows

async def main():
    async with af.Engine("sqlite:///runs.db") as engine:
        handles = [await engine.start(flows.GROW, store={"pad": "x" * 20_000}) for _ in range(100)]
        for handle in handles:
            await handle.result()
        for handle in handles:  # (one by one: a delete gives no space back, a purge would)
            await engine.delete_run(handle.run_id)

anyio.run(main)
"""


def test_runs_vacuum_gives_back_the_space_of_deleted_runs(flows: Path) -> None:
    """After runs are deleted one by one, runs vacuum gives their pages back and the file shrinks."""
    subprocess.run([sys.executable, "-c", DELETED_RUNS], cwd=flows, check=True, timeout=120)
    before = (flows / "runs.db").stat().st_size
    data = as_json(cli(flows, "runs", "vacuum", "--db", "runs.db", "--json"))
    assert data["pages_freed"] > 400  # (100 runs of 20 kB: about 500 pages of 4 KiB)
    assert data["bytes_before"] == before
    assert data["bytes_after"] < before / 2
    assert (flows / "runs.db").stat().st_size == data["bytes_after"]
    again = cli(flows, "runs", "vacuum", "--db", "runs.db")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("no free pages in ")


def test_runs_vacuum_says_what_it_gave_back(flows: Path) -> None:
    """The plain output names the pages given back and the file's size before and after."""
    subprocess.run([sys.executable, "-c", DELETED_RUNS], cwd=flows, check=True, timeout=120)
    done = cli(flows, "runs", "vacuum", "--db", "runs.db")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"gave back [\d,]+ free pages of \S*runs\.db; the file went from [\d.]+ MiB to [\d.]+ MiB\n",
        done.stdout,
    ), done.stdout


def test_runs_vacuum_of_a_missing_file_exits_1(flows: Path) -> None:
    """A --db file that does not exist: exit 1, one line naming it, no file created."""
    done = cli(flows, "runs", "vacuum", "--db", "nope.db")
    assert done.returncode == 1
    assert done.stderr.startswith("asyncflow: no database at ")
    assert "nope.db" in done.stderr
    assert not (flows / "nope.db").exists()


def test_runs_vacuum_of_a_postgresql_database_exits_2(flows: Path) -> None:
    """A PostgreSQL URL: exit 2, one line saying the command is for SQLite files (nothing is reached)."""
    done = cli(flows, "runs", "vacuum", "--db", "postgresql://127.0.0.1:1/nowhere")
    assert done.returncode == 2
    assert done.stderr.startswith("asyncflow: 'runs vacuum' gives space back to an SQLite file; ")
    assert done.stdout == ""


# ---- asyncflow worker --json -----------------------------------------------------------------

PENDING_RUN = """
import anyio, asyncflow as af, flows

async def main():
    async with af.Engine("sqlite:///runs.db", concurrency=0) as engine:  # (written down, for workers)
        print((await engine.start(flows.GROW)).run_id)

anyio.run(main)
"""


class _Lines:
    """The lines a child process writes to a pipe, read by a thread, each awaited with a deadline."""

    def __init__(self, stream: Any) -> None:
        import queue
        import threading

        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put("")

    def next(self, within: float = 30.0) -> str:
        line = self.queue.get(timeout=within)
        assert line, "the stream ended"
        return line


def test_worker_json_writes_a_line_per_worker_and_run_event(flows: Path) -> None:
    """worker --json: JSON lines for ready, each run started and finished, draining and stopped."""
    import signal

    environment = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    environment.pop("ASYNCFLOW_DB", None)
    command = ["worker", "flows:BOTH", "--db", "runs.db", "--json", "--poll", "0.05", "--lease", "2"]
    with subprocess.Popen(
        [sys.executable, "-m", "asyncflow", *command],
        cwd=flows,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as worker:
        try:
            lines = _Lines(worker.stdout)
            ready = json.loads(lines.next())
            assert ready["event"] == "worker_ready"
            assert ready["workflows"] == ["fail", "grow"]
            assert ready["database"].endswith("runs.db")
            started = subprocess.run(
                [sys.executable, "-c", PENDING_RUN],
                cwd=flows,
                check=True,
                timeout=60,
                capture_output=True,
                text=True,
            )
            run_id = started.stdout.strip()
            events = [json.loads(lines.next()) for _ in range(2)]
            assert [(e["event"], e["run_id"], e["workflow_id"]) for e in events] == [
                ("run_started", run_id, "grow"),
                ("run_finished", run_id, "grow"),
            ]
            assert events[1]["status"] == "completed"
            assert {e["worker"] for e in [ready, *events]} == {ready["worker"]}
            worker.send_signal(signal.SIGTERM)
            draining, stopped = json.loads(lines.next()), json.loads(lines.next())
            assert (draining["event"], draining["signal"]) == ("worker_draining", "SIGTERM")
            assert stopped["event"] == "worker_stopped"
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
