"""Isolated stages: actions run in real child processes; what they do reaches the run as in process."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import isolation_flows as flows
import pytest
from helpers import eventually, run_example
from loguru import logger

import asyncflow as af

TESTS = Path(__file__).parent


def isolated(*actions: af.Action, **options: Any) -> af.Workflow:
    """A workflow of one isolated stage ``s`` with ``actions``."""
    return af.Workflow("iso", stages=[af.Stage("s", actions=list(actions), isolation="process", **options)])


def children_of(pid: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of every process whose parent is ``pid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append((int(entry), fields[0]))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists (a zombie counts: it has not been reaped)."""
    return Path(f"/proc/{pid}").exists()


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """After the test, this process has no child process left, zombie or alive."""
    yield
    assert children_of(os.getpid()) == []


# ---- the in-memory runner ------------------------------------------------------------


async def test_messages_events_and_logs_arrive_in_order(records: list[dict[str, Any]]) -> None:
    """The child's messages and log lines reach the parent's handlers and sinks live, in order."""
    seen: list[str] = []
    messages: list[af.Message] = []
    runner = af.Runner()
    runner.on_event(lambda e: seen.append(e.kind.value) if e.action_name else None)

    def on_message(message: af.Message) -> None:
        messages.append(message)
        seen.append(f"msg {message.payload['n']}")

    runner.on_message("step", on_message)
    sink = logger.add(lambda m: seen.append(f"log {m.record['extra'].get('part')}"), level="INFO")
    try:
        await runner.run(isolated(flows.chatty))
    finally:
        logger.remove(sink)
    assert seen == ["action_started", "msg 1", "log middle", "msg 2", "action_finished"]
    assert all(m.from_child for m in messages)
    assert messages[0].pid == messages[0].payload["pid"] != os.getpid()
    assert [m.seq for m in messages] == [1, 2]
    line = next(r for r in records if r["message"].startswith("working in"))
    assert line["extra"]["run_id"] == messages[0].run_id
    assert line["extra"]["stage_id"] == "s"
    assert line["name"] == "isolation_flows"
    assert line["function"] == "chatty"


async def test_store_snapshot_goes_in_and_writes_come_back() -> None:
    """The child reads the run's store and its writes (with tags, and deletes) merge into the run."""
    runner = af.Runner()
    result = await runner.run(isolated(flows.count_up, flows.count_up), store={"n": 40, "scratch": 1})
    assert result.store["n"] == 42
    assert result.store["where"] != os.getpid()
    assert "scratch" not in result.store


async def test_a_failed_action_merges_nothing_as_in_process() -> None:
    """A failing action's writes are discarded, and the run's store is what it is in process."""
    stores = []
    for isolation in ("process", None):
        stage = af.Stage("s", actions=[flows.count_up, flows.write_then_fail], isolation=isolation)
        with pytest.raises(af.ActionFailed) as failed:
            await af.run(af.Workflow("iso", stages=[stage]), store={"n": 1})
        assert isinstance(failed.value.__cause__, ValueError)
        assert str(failed.value.__cause__) == "bad record 7"
        assert failed.value.result is not None
        stores.append({k: v for k, v in failed.value.result.store.items() if k != "where"})
    assert stores[0] == stores[1] == {"n": 2}


async def test_dynamic_actions_and_stages_join_the_plan_in_process_order() -> None:
    """What the child inserts runs in the same order as in process, and a plain inserted stage runs here."""
    orders = []
    for isolation in ("process", None):
        stage = af.Stage("s", actions=[flows.insert_children, flows.mark_pid], isolation=isolation)
        result = await af.run(af.Workflow("iso", stages=[stage, af.Stage("end", actions=[flows.mark_pid])]))
        orders.append([(s.kind, s.stage_id, s.action_name, s.dynamic, s.depth) for s in result.steps])
        if isolation:
            assert result.store["pid:later-1"] == os.getpid()
            assert result.store["pid:later-2"] != os.getpid()
            assert result.store["a1"] == result.store["pid:s"] != os.getpid()
    assert orders[0] == orders[1]
    assert [row[2] for row in orders[0] if row[0] == "action"] == [
        "insert-children",
        "child-a",
        "child-a1",
        "child-b",
        "mark-pid",
        "mark-pid",
        "mark-pid",
        "mark-pid",
    ]


async def test_a_bail_in_the_child_keeps_its_writes() -> None:
    """``ctx.bail`` in the child ends the run BAILED with the reason, and its writes kept."""
    result = await af.run(isolated(flows.bail_out, flows.mark_pid))
    assert result.status is af.RunStatus.BAILED
    assert result.bail_reason == "enough"
    assert result.store == {"before-bail": True}


async def test_an_error_keeps_its_class_and_the_childs_traceback() -> None:
    """An exception raised in the child is re-created here, with the child's traceback as a note."""
    with pytest.raises(af.ActionFailed) as failed:
        await af.run(isolated(flows.write_then_fail))
    cause = failed.value.__cause__
    assert type(cause) is ValueError
    assert "in write_then_fail" in "".join(cause.__notes__)


async def test_a_concurrent_isolated_stage_runs_its_actions_at_once_in_one_child() -> None:
    """``concurrency=3``: the three actions run at the same time, in the same child."""
    actions = [flows.Meet(f"m{n}", others=2) for n in range(3)]
    result = await af.run(isolated(*actions, concurrency=3))
    pids = {result.store[f"pid:m{n}"] for n in range(3)}
    assert len(pids) == 1
    assert os.getpid() not in pids


async def test_a_log_line_keeps_its_own_context(records: list[dict[str, Any]]) -> None:
    """A child's line already bound with ``child_pid`` is relayed with the child's real pid."""
    await af.run(isolated(flows.binds_child_pid))
    (line,) = [r for r in records if r["message"] == "bound by the action"]
    assert isinstance(line["extra"]["child_pid"], int)


# ---- bad input -------------------------------------------------------------------------


def test_an_unknown_isolation_is_refused() -> None:
    """``isolation=`` takes ``"process"`` or None; anything else names the stage."""
    with pytest.raises(af.InvalidDefinition, match=r"isolation of stage 's'.*'thread'"):
        af.Stage("s", isolation="thread")  # type: ignore[arg-type]


def test_a_closure_action_is_refused_when_added() -> None:
    """A child cannot re-create a closure: refused at once, in the constructor and in add_action."""

    @af.action
    async def local(ctx: af.ActionContext) -> None: ...

    with pytest.raises(af.NotReferenceable, match="local"):
        af.Stage("s", actions=[local], isolation="process")
    stage = af.Stage("s", isolation="process")
    with pytest.raises(af.NotReferenceable, match="child process"):
        stage.add_action(local)
    assert stage.actions == ()


def test_a_pool_of_size_zero_is_refused() -> None:
    """A pool needs at least one child."""
    with pytest.raises(ValueError, match=r"size of af\.ProcessPool must be at least 1, got 0"):
        af.ProcessPool(size=0)
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        af.ProcessPool(size=1, max_tasks_per_child=0)


async def test_a_payload_that_is_not_json_is_refused_with_the_usual_error() -> None:
    """A message payload that cannot cross the boundary fails the action with NotSerializable."""
    with pytest.raises(af.ActionFailed) as failed:
        await af.run(isolated(flows.not_json))
    assert isinstance(failed.value.__cause__, af.NotSerializable)
    assert "child processes can only carry JSON values" in str(failed.value.__cause__)


async def test_a_store_value_that_is_not_json_cannot_go_to_the_child() -> None:
    """The store snapshot must be JSON: a set in the store fails the stage's first action clearly."""
    with pytest.raises(af.ActionFailed) as failed:
        await af.run(isolated(flows.mark_pid), store={"tags": {1, 2}})
    assert isinstance(failed.value.__cause__, af.NotSerializable)
    assert "'tags'" in str(failed.value.__cause__)


def test_an_isolated_stage_round_trips_through_its_definition() -> None:
    """``isolation`` is part of a stage's definition."""
    workflow = af.Workflow("iso", stages=[af.Stage("s", actions=[flows.mark_pid], isolation="process")])
    again = af.Workflow.from_definition(workflow.to_definition())
    assert again.stages[0].isolation == "process"


# ---- failures and cancellation -----------------------------------------------------------


async def _failure_of(workflow: af.Workflow, pids: list[int]) -> af.ChildProcessFailed:
    runner = af.Runner()
    runner.on_message("pid", lambda m: pids.append(m.payload))
    with pytest.raises(af.ChildProcessFailed) as failed:
        await runner.run(workflow)
    return failed.value


async def test_a_segfault_fails_the_stage_with_the_signal_and_stderr(no_leftovers: None) -> None:
    """A child killed by SIGSEGV: ChildProcessFailed names run, stage, signal and its last stderr."""
    pids: list[int] = []
    error = await _failure_of(isolated(flows.segfault), pids)
    assert isinstance(error, af.ActionFailed)
    assert error.exit_code == -signal.SIGSEGV
    assert error.signal_name == "SIGSEGV"
    assert error.stage_id == "s"
    assert error.action_name == "segfault"
    assert error.pid == pids[0]
    assert any("Segmentation fault" in line for line in error.stderr_tail)
    assert len(error.stderr_tail) <= 20
    assert f"run {error.run_id!r}" in str(error)
    assert "SIGSEGV" in str(error)
    assert error.result is not None
    assert error.result.status is af.RunStatus.FAILED
    assert not alive(pids[0])


async def test_os_exit_fails_the_stage_with_the_exit_code(no_leftovers: None) -> None:
    """A child that calls ``os._exit(3)`` fails the stage with exit code 3 and what it printed."""
    pids: list[int] = []
    error = await _failure_of(isolated(flows.exit_three), pids)
    assert error.exit_code == 3
    assert error.signal_name is None
    assert "leaving with 3" in error.stderr_tail
    assert "exited with code 3" in str(error)
    assert not alive(pids[0])


async def test_a_crash_takes_what_the_child_started_along(no_leftovers: None) -> None:
    """A process the child started does not outlive the child's crash as an orphan."""
    pids: list[int] = []
    error = await _failure_of(isolated(flows.orphan_maker), pids)
    assert error.exit_code == 1
    await eventually(lambda: not alive(pids[0]) or _state(pids[0]) == "Z", within=10)


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


async def test_a_hang_past_the_timeout_kills_the_child(no_leftovers: None) -> None:
    """A child blocked past its action's time limit is killed; the action times out."""
    pids: list[int] = []
    async with af.ProcessPool(size=1) as pool:
        runner = af.Runner(process_pool=pool)
        await runner.run(isolated(flows.mark_pid))  # warm: the limit is the action's alone
        runner.on_message("pid", lambda m: pids.append(m.payload))
        with anyio.fail_after(30), pytest.raises(af.ActionFailed) as failed:
            await runner.run(isolated(flows.hang, timeout=1.0))
    assert isinstance(failed.value.__cause__, af.ActionTimeout)
    assert not alive(pids[0])


async def test_cancelling_the_run_kills_the_child_and_waits_for_it(no_leftovers: None) -> None:
    """Cancellation mid-child kills it and reaps it before the cancellation goes on."""
    pids: list[int] = []
    got_pid = anyio.Event()

    def on_pid(message: af.Message) -> None:
        pids.append(message.payload)
        got_pid.set()

    runner = af.Runner()
    runner.on_message("pid", on_pid)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(runner.run, isolated(flows.hang))
            await got_pid.wait()
            assert alive(pids[0])
            group.cancel_scope.cancel()
    assert not alive(pids[0])


async def test_a_retry_after_a_crash_gets_a_new_child(no_leftovers: None) -> None:
    """A retried isolated action runs again in a fresh child after its child died."""
    workflow = isolated(flows.crash_on_first_attempt, retry=af.Retry(attempts=2, backoff=af.backoff.fixed(0)))
    result = await af.run(workflow)
    assert result.store == {"survived": 2}


# ---- the pool --------------------------------------------------------------------------


async def test_a_pool_child_is_reused_across_stages_and_runs(no_leftovers: None) -> None:
    """With a pool of one, every isolated stage of two runs runs in the same warm child."""
    workflow = af.Workflow(
        "iso",
        stages=[
            af.Stage("a", actions=[flows.whoami], isolation="process"),
            af.Stage("b", actions=[flows.whoami], isolation="process"),
        ],
    )
    async with af.ProcessPool(size=1) as pool:
        (warm,) = pool.pids
        runner = af.Runner(process_pool=pool)
        first = await runner.run(workflow)
        second = await runner.run(workflow)
    assert first.store["pids"] == second.store["pids"] == [warm, warm]
    assert not alive(warm)


async def test_a_child_is_retired_after_max_tasks(no_leftovers: None) -> None:
    """``max_tasks_per_child=1``: each isolated stage gets a child of its own."""
    workflow = af.Workflow(
        "iso",
        stages=[
            af.Stage("a", actions=[flows.whoami], isolation="process"),
            af.Stage("b", actions=[flows.whoami], isolation="process"),
        ],
    )
    async with af.ProcessPool(size=1, max_tasks_per_child=1) as pool:
        result = await af.Runner(process_pool=pool).run(workflow)
        (replacement,) = pool.pids  # the started pool replaced the retired child at once
    first, second = result.store["pids"]
    assert replacement not in (first, second)
    assert first != second
    assert not alive(first)


async def test_a_pool_child_that_dies_between_tasks_is_replaced(no_leftovers: None) -> None:
    """An idle child killed from outside is noticed and replaced; the next stage runs as usual."""
    async with af.ProcessPool(size=1) as pool:
        runner = af.Runner(process_pool=pool)
        first = await runner.run(isolated(flows.whoami))
        (dead,) = first.store["pids"]
        os.kill(dead, signal.SIGKILL)
        second = await runner.run(isolated(flows.whoami))
        (replacement,) = second.store["pids"]
        assert replacement != dead
        assert pool.pids == [replacement]
    assert not alive(dead)
    assert not alive(replacement)


@pytest.mark.once
@pytest.mark.timeout(600)  # 200 child processes started: about 45 s, longer on a busy machine
async def test_200_crashes_and_retries_leave_no_zombie_and_no_fd(no_leftovers: None) -> None:
    """Crash-and-retry 200 times through a pool: no process and no file descriptor is left behind."""
    workflow = isolated(flows.crash_on_first_attempt, retry=af.Retry(attempts=2, backoff=af.backoff.fixed(0)))
    async with af.ProcessPool(size=1) as pool:
        runner = af.Runner(process_pool=pool)
        await runner.run(workflow)  # the pool's own pipes are open from here on
        before = open_fds()
        for _ in range(200):
            result = await runner.run(workflow)
            assert result.store == {"survived": 2}
            assert len(children_of(os.getpid())) <= 1  # the warm child, never a zombie
        assert open_fds() == before
    assert [state for _, state in children_of(os.getpid())] == []


# ---- durable runs ------------------------------------------------------------------------


async def test_a_durable_run_checkpoints_each_action_of_its_isolated_stage(url: str) -> None:
    """On SQLite, an isolated stage's actions and insertions complete and are checkpointed by the parent."""
    workflow = af.Workflow(
        "iso-durable",
        stages=[af.Stage("s", actions=[flows.insert_children, flows.count_up], isolation="process")],
    )
    async with af.ProcessPool(size=1) as pool:
        engine = af.Engine(url, process_pool=pool)
        engine.register(workflow)
        async with engine:
            handle = await engine.start(workflow, store={"n": 1})
            result = await handle.result()
            info = await engine.get_run(handle.run_id)
        assert pool.pids == []  # the engine ended the pool's children when it closed
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["n"] == 2
    assert result.store["pid:later-2"] != os.getpid()
    done = [step for step in info.steps if step["kind"] == "action" and step["status"] == "completed"]
    assert len(done) == 7


@pytest.mark.once
async def test_a_killed_parent_takes_its_child_along_and_recovery_reruns_only_the_action_in_flight(
    tmp_path: Path,
) -> None:
    """``kill -9`` of the parent kills the child; a new engine re-runs only the action that was in flight."""
    db = tmp_path / "runs.db"
    ledger = tmp_path / "ledger"
    hold = tmp_path / "hold"
    hold.touch()
    parent = await anyio.open_process(
        [sys.executable, str(TESTS / "isolation_parent.py"), str(db), str(ledger)],
        stdout=None,
        stderr=None,
    )
    try:
        await eventually(lambda: ledger.exists() and "second" in ledger.read_text(), within=60)
        child = int(ledger.read_text().split("second ")[1].split()[0])
        assert alive(child)
        parent.kill()
        await parent.wait()
    finally:
        if parent.returncode is None:
            parent.kill()
        await parent.aclose()
    await eventually(lambda: not alive(child), within=10)
    hold.unlink()
    sys.path.insert(0, str(TESTS))
    try:
        import isolation_parent
    finally:
        sys.path.remove(str(TESTS))
    engine = af.Engine(f"sqlite:///{db}", lease=1.0, poll_interval=0.2)
    engine.register(isolation_parent.WORKFLOW)
    async with engine:
        page = await engine.list_runs()
        (info,) = page.runs
        with anyio.fail_after(60):
            result = await engine.wait(info.run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["first"] is True
    assert result.store["second"] is True
    lines = [line.split()[0] for line in ledger.read_text().splitlines()]
    assert lines == ["first", "second", "second"]


# ---- elsewhere -------------------------------------------------------------------------------


def test_an_isolated_stage_runs_on_trio_too(no_leftovers: None) -> None:
    """On trio, an isolated stage runs, its child's crash fails the run, and a cancel kills the child."""

    async def main() -> tuple[af.RunResult, int | None]:
        result = await af.run(isolated(flows.count_up, flows.insert_children), store={"n": 1})
        try:
            await af.run(isolated(flows.exit_three))
        except af.ChildProcessFailed as failed:
            return result, failed.exit_code
        return result, None

    result, exit_code = anyio.run(main, backend="trio")
    assert result.store["n"] == 2
    assert result.store["pid:later-2"] not in (os.getpid(), result.store["where"])
    assert exit_code == 3


def test_the_example_retries_the_crashed_parser_with_live_progress() -> None:
    """examples/isolation.py: progress from the child, a crash, a retry that completes, then a failure."""
    out = run_example("isolation.py")
    assert "progress 1/3 from child pid" in out
    assert "the child died (SIGSEGV); attempt 2 in another child" in out
    assert "log from" in out
    assert "completed: 9 words" in out
    assert "failed: exit -11 (SIGSEGV) in stage 'parse'" in out
    assert "its stderr began: 'Fatal Python error: Segmentation fault'" in out
