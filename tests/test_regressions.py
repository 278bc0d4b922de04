"""Regression tests for bugs found in review, one behaviour per test, through the public API.

Durable runs re-create actions by import path, so the actions and workflows
these tests need live at module level here (``test_regressions:attr``), next
to the ones of :mod:`durable_flows`.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import durable_flows as flows
import pytest
from durable_flows import finish, info_of, interrupt, make_engine, run_here

import asyncflow as af
from asyncflow import backoff
from asyncflow import middleware as mw
from asyncflow.backends import MemoryBackend, SQLiteBackend
from asyncflow.testing import FakeClock

START = 1_800_000_000.0


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    flows.reset()


# ---- module-level actions and workflows -------------------------------------------


@af.action(retry=af.Retry(attempts=2, backoff=backoff.fixed(0.0)))
async def insert_duplicate_then_fail_once(ctx: af.ActionContext) -> None:
    """Insert a duplicate of stage "work"; fail the first attempt (its insertion is discarded)."""
    ctx.add_dynamic_stage(
        af.Stage("work", actions=[flows.Record("mark"), flows.HangOnce("block")]), allow_duplicate=True
    )
    if ctx.attempt == 1:
        raise ConnectionError("flaky")


RETRIED_INSERTION = af.Workflow(
    "regress-retried-insertion", stages=[af.Stage("work", actions=[insert_duplicate_then_fail_once])]
)


@af.action
async def insert_x_second(ctx: af.ActionContext) -> None:
    """Wait until the other action inserted its stage "x" and completed, then insert one (the second)."""
    with anyio.fail_after(5):
        await flows.gate("first-inserted").wait()
    # It is completed once its checkpoint is committed: its "x" is the first in the database.
    await flows.eventually(lambda: ctx.plan.action_status("insert-x-first") is af.StepStatus.COMPLETED)
    ctx.add_dynamic_stage(af.Stage("x", actions=[flows.HangOnce("mark-a")]), allow_duplicate=True)


@af.action
async def insert_x_first(ctx: af.ActionContext) -> None:
    """Insert a stage "x" at once (the first insertion, though this action is second in the plan)."""
    ctx.add_dynamic_stage(af.Stage("x", actions=[flows.Record("mark-b")]), allow_duplicate=True)
    flows.gate("first-inserted").set()


CONCURRENT_INSERTIONS = af.Workflow(
    "regress-concurrent-insertions",
    stages=[af.Stage("s1", actions=[insert_x_second, insert_x_first], concurrency=2)],
)


@af.action
async def fill_after_put(ctx: af.ActionContext) -> None:
    """Put a list in the store, then append to it in the same action."""
    items: list[int] = []
    ctx.store["items"] = items
    items.append(1)


FILL_AFTER_PUT = af.Workflow("regress-fill-after-put", stages=[af.Stage("s", actions=[fill_after_put])])


@af.action
async def write_then_bail(ctx: af.ActionContext) -> None:
    """Write the store, then bail."""
    ctx.store["reason.detail"] = "out of stock"
    ctx.bail("nothing to do")


WRITE_THEN_BAIL = af.Workflow("regress-write-then-bail", stages=[af.Stage("s", actions=[write_then_bail])])


@af.action(timeout=30)
async def write_then_bail_timed(ctx: af.ActionContext) -> None:
    """Write the store, then bail: an action with a time limit (its attempts take the slower path)."""
    ctx.store["reason.detail"] = "out of stock"
    ctx.bail("nothing to do")


WRITE_THEN_BAIL_TIMED = af.Workflow(
    "regress-write-then-bail-timed", stages=[af.Stage("s", actions=[write_then_bail_timed])]
)


@af.action
async def put_date_property(ctx: af.ActionContext) -> None:
    """Put an entry whose properties hold a date; record the NotSerializable raised at the put."""
    try:
        ctx.store.put("when", 1, properties={"at": datetime.date.today()})
    except af.NotSerializable as exc:
        flows.record("not-serializable", str(exc))
        raise
    flows.record("after-put", True)


DATE_PROPERTY = af.Workflow("regress-date-property", stages=[af.Stage("s", actions=[put_date_property])])


class RecordAttempt(af.Action):
    """Record ``ctx.attempt`` under ``label``, then wait for the gate ``f"{label}.release"``."""

    def __init__(self, label: str) -> None:
        self.label = label

    async def execute(self, ctx: af.ActionContext) -> None:
        """Record the attempt, open the gate ``label``, wait to be released."""
        flows.record(self.label, ctx.attempt)
        flows.gate(self.label).set()
        await flows.gate(f"{self.label}.release").wait()


RETRIED_BY_MIDDLEWARE = af.Workflow(
    "regress-retried-by-middleware", stages=[af.Stage("s", actions=[RecordAttempt("charge")])]
)
RETRIED_BY_MIDDLEWARE.use_action(mw.retry(3, backoff=backoff.fixed(0.01)))

GATED_THEN_AFTER = af.Workflow(
    "regress-gated-then-after",
    stages=[af.Stage("s", actions=[flows.Blocker("block"), flows.Record("after")])],
)


@af.action(retry=af.Retry(attempts=5, backoff=backoff.fixed(10)))
async def always_down(ctx: af.ActionContext) -> None:
    """Fail every attempt with a ConnectionError."""
    flows.record("always-down", ctx.attempt)
    raise ConnectionError("down")


ALWAYS_DOWN = af.Workflow("regress-always-down", stages=[af.Stage("s", actions=[always_down])])


@af.action
async def boom(ctx: af.ActionContext) -> None:
    """Raise ValueError."""
    raise ValueError("x")


@af.action
async def after_boom(ctx: af.ActionContext) -> None:
    """Write "after"."""
    ctx.store["after"] = True


@af.action
async def later(ctx: af.ActionContext) -> None:
    """Write "later"."""
    ctx.store["later"] = True


@af.action
async def suspend_for_approval(ctx: af.ActionContext) -> None:
    """Suspend unless resuming."""
    if not ctx.is_resuming:
        ctx.suspend("needs approval", data={"x": 1})


@af.action
async def ship(ctx: af.ActionContext) -> None:
    """Write "shipped"."""
    ctx.store["shipped"] = True


@af.action
async def spawn(ctx: af.ActionContext) -> None:
    """Insert itself again, forever."""
    ctx.add_dynamic_action(spawn)


@af.action
async def hang(ctx: af.ActionContext) -> None:
    """Wait forever."""
    await anyio.sleep_forever()


def step(result: af.RunResult, kind: str, stage_id: str, action_name: str | None = None) -> af.StepRecord:
    """The one step record of ``kind`` for ``stage_id`` (and ``action_name``); fails if missing."""
    found = [
        s
        for s in result.steps
        if s.kind == kind and s.stage_id == stage_id and (action_name is None or s.action_name == action_name)
    ]
    assert len(found) == 1, f"{kind} {stage_id}/{action_name}: {found} in {result.steps}"
    return found[0]


# ---- 1. a run cancelled from another engine ------------------------------------------


@pytest.mark.parametrize(
    "notice",
    [
        # A's wake checkpoint is the first to learn of the cancellation (no heartbeat meanwhile).
        pytest.param({"lease": 200.0, "poll_interval": 5.0}, id="by-checkpoint"),
        # A's heartbeat learns of it while the run still sleeps.
        pytest.param({"lease": 200.0, "poll_interval": 0.05}, id="by-heartbeat"),
    ],
)
async def test_run_cancelled_by_another_engine_during_a_sleep_stays_cancelled(
    db_path: Path, url: str, notice: dict[str, float]
) -> None:
    """Engine B cancels a run sleeping in engine A: once the sleep is due it stays CANCELLED, nothing runs."""
    clock = FakeClock(START)
    in_a, in_b = flows.CountingSQLite(db_path), flows.CountingSQLite(db_path)
    async with (
        make_engine(in_a, flows.SLEEPY, clock=clock, owner="A", **notice) as a,
        make_engine(in_b, flows.SLEEPY, clock=clock, owner="B") as b,
    ):
        handle = await a.start(flows.SLEEPY)
        await flows.eventually(lambda: clock.sleepers == 1)
        await b.cancel(handle.run_id)
        if notice["poll_interval"] < 1:
            await in_a.passes(3)  # a few heartbeats of A
        await clock.advance(100)  # the sleep is due (A's lease still holds)
        with anyio.fail_after(5):
            result = await handle.result()
        assert result.status is af.RunStatus.CANCELLED
        await in_b.passes(5)  # room for a (wrong) take-over by B (A looks only every 5 s, if so)
        if notice["poll_interval"] < 1:
            await in_a.passes(5)  # and by A
        assert (await b.get_run(handle.run_id)).status is af.RunStatus.CANCELLED
    assert (await info_of(url, handle.run_id)).status is af.RunStatus.CANCELLED
    assert flows.runs_of("woke") == 0


async def test_run_cancelled_by_another_engine_during_an_action_runs_nothing_after(
    db_path: Path, url: str
) -> None:
    """Engine B cancels a run whose action runs in engine A: it stays CANCELLED, the next one never runs."""
    in_a, in_b = flows.CountingSQLite(db_path), flows.CountingSQLite(db_path)
    async with (
        make_engine(in_a, GATED_THEN_AFTER, owner="A") as a,
        make_engine(in_b, GATED_THEN_AFTER, owner="B") as b,
    ):
        handle = await a.start(GATED_THEN_AFTER)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        await b.cancel(handle.run_id)
        flows.gate("block.release").set()  # the action completes: its checkpoint must be refused
        with anyio.fail_after(5):
            result = await handle.result()
        assert result.status is af.RunStatus.CANCELLED
        await in_a.passes(5)  # room for a (wrong) take-over by either engine
        await in_b.passes(5)
    assert (await info_of(url, handle.run_id)).status is af.RunStatus.CANCELLED
    assert flows.runs_of("after") == 0


async def cancel_from_another_process(url: str, run_id: str) -> None:
    """``asyncflow runs cancel RUN_ID --db URL`` in a child process; it must succeed."""
    env = {**os.environ}
    env.pop("ASYNCFLOW_DB", None)
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "asyncflow", "runs", "cancel", run_id, "--db", url], env=env, check=False
        )
    assert done.returncode == 0, done.stderr.decode()


def lease_messages(log: list[dict[str, Any]], run_id: str) -> list[str]:
    """The warnings and infos of ``log`` about ``run_id``."""
    return [r["message"] for r in log if run_id in r["message"] and r["level"].name in ("INFO", "WARNING")]


@pytest.mark.parametrize(
    "notice",
    [
        # The action's checkpoint is the first to learn of the cancellation (no heartbeat meanwhile).
        pytest.param({"lease": 300.0, "poll_interval": 100.0}, id="by-checkpoint"),
        # The heartbeat learns of it while the action still runs.
        pytest.param({"lease": 200.0, "poll_interval": 0.05}, id="by-heartbeat"),
    ],
)
async def test_cancel_from_another_process_is_logged_as_a_cancel(
    url: str, notice: dict[str, float], asyncflow_log: list[dict[str, Any]]
) -> None:
    """A run cancelled by `asyncflow runs cancel` in another process is logged as a cancel."""
    async with make_engine(url, GATED_THEN_AFTER, owner="A", **notice) as a:
        handle = await a.start(GATED_THEN_AFTER)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        await cancel_from_another_process(url, handle.run_id)
        if notice["poll_interval"] < 1:
            await flows.eventually(lambda: flows.runs_of("block.cancelled") == 1)
        else:
            flows.gate("block.release").set()  # the action completes: its checkpoint is refused
        with anyio.fail_after(5):
            result = await handle.result()
        assert result.status is af.RunStatus.CANCELLED
    messages = lease_messages(asyncflow_log, handle.run_id)
    assert any("was cancelled elsewhere" in m for m in messages), messages
    assert not any("taken over" in m or "lost the lease" in m for m in messages), messages


RECOVERS_EVERY_ACTION = af.Workflow(
    "regress-recovers-every-action",
    stages=[af.Stage("s", actions=[flows.Blocker("block"), flows.Record("after")])],
).use_action(mw.recover())


async def test_recover_never_swallows_a_lost_lease(url: str) -> None:
    """Under mw.recover(), a checkpoint refused for a lost lease stops the run: the next action never runs."""
    async with (
        make_engine(url, RECOVERS_EVERY_ACTION, owner="A", lease=300.0, poll_interval=100.0) as a,
        make_engine(url, RECOVERS_EVERY_ACTION, owner="B") as b,
    ):
        handle = await a.start(RECOVERS_EVERY_ACTION)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        await b.cancel(handle.run_id)
        flows.gate("block.release").set()  # the action completes: its checkpoint is refused
        with anyio.fail_after(5):
            result = await handle.result()
        assert result.status is af.RunStatus.CANCELLED
    assert flows.runs_of("after") == 0


async def test_heartbeat_that_finds_its_lease_taken_stops_a_hanging_action(
    url: str, db_path: Path, asyncflow_log: list[dict[str, Any]]
) -> None:
    """A heartbeat that finds the run owned by another engine cancels the action in flight (no checkpoint)."""
    async with make_engine(url, flows.BLOCKING, owner="A", lease=1.0, poll_interval=0.05) as a:
        handle = await a.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        # Another engine takes the run (as after an expiry it did not see): only the database knows.
        with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute("UPDATE runs SET owner = 'B' WHERE run_id = ?", (handle.run_id,))
        await flows.eventually(lambda: flows.runs_of("block.cancelled") == 1)
    messages = lease_messages(asyncflow_log, handle.run_id)
    assert any("taken over by another engine" in m for m in messages), messages


class RunsUnreadable(SQLiteBackend):
    """An SQLite backend whose get_run fails while ``failing`` is set (its other calls go through)."""

    failing = False

    async def get_run(self, run_id: str) -> af.RunInfo | None:
        if self.failing:
            raise af.BackendError("the runs cannot be read for a moment")
        return await super().get_run(run_id)


async def test_a_lost_lease_whose_run_cannot_be_read_is_logged_as_taken_over(
    db_path: Path, asyncflow_log: list[dict[str, Any]]
) -> None:
    """A heartbeat finds its lease taken and the run's record cannot be read: logged as a take-over."""
    backend = RunsUnreadable(db_path)
    async with make_engine(backend, flows.BLOCKING, owner="A", lease=1.0, poll_interval=0.05) as a:  # type: ignore[arg-type]
        handle = await a.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        backend.failing = True
        with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute("UPDATE runs SET owner = 'B' WHERE run_id = ?", (handle.run_id,))
        await flows.eventually(lambda: flows.runs_of("block.cancelled") == 1)
        backend.failing = False
    messages = lease_messages(asyncflow_log, handle.run_id)
    assert any("lost the lease" in m for m in messages), messages
    assert any("taken over by another engine" in m for m in messages), messages
    assert not any("cancelled elsewhere" in m for m in messages), messages


async def test_checkpoints_sharing_a_commit_with_one_of_a_cancelled_run_are_kept(url: str) -> None:
    """Two runs finish an action in the same pass; one was cancelled elsewhere: only the other moves on."""
    async with (
        make_engine(url, GATED_THEN_AFTER, owner="A") as a,
        make_engine(url, GATED_THEN_AFTER, owner="B") as b,
    ):
        kept = await a.start(GATED_THEN_AFTER)
        cancelled = await a.start(GATED_THEN_AFTER)
        await flows.eventually(lambda: flows.runs_of("block") == 2)
        await b.cancel(cancelled.run_id)
        flows.gate("block.release").set()  # both actions complete together: one commit for both
        with anyio.fail_after(5):
            kept_result = await kept.result()
            cancelled_result = await cancelled.result()
        assert kept_result.status is af.RunStatus.COMPLETED
        assert kept_result.store["block"] == "released"
        assert cancelled_result.status is af.RunStatus.CANCELLED
    assert (await info_of(url, kept.run_id)).status is af.RunStatus.COMPLETED
    assert (await info_of(url, cancelled.run_id)).status is af.RunStatus.CANCELLED
    assert flows.runs_of("after") == 1


WIDE = af.Workflow(
    "regress-wide",
    # More actions at once than one multi-row statement takes (2,048 rows).
    stages=[af.Stage("wide", actions=[flows.step_one] * 2_100, concurrency=2_100)],
)


async def test_more_checkpoints_at_once_than_one_statement_binds_are_all_committed(url: str) -> None:
    """2,100 actions that complete in one pass of the loop: their checkpoints take several statements."""
    run_id, result = await run_here(url, WIDE, within=60)
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("step-one") == 2_100
    recorded = await finish(url, run_id, WIDE)  # what is on file says so too
    assert recorded.status is af.RunStatus.COMPLETED
    assert sum(1 for s in recorded.steps if s.action_name == "step-one") == 2_100


# ---- 2. cancel right after start ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_cancel_right_after_start_stops_the_run(backend: str, url: str) -> None:
    """engine.cancel right after engine.start: no action runs and the result is CANCELLED."""
    engine_url = "memory://" if backend == "memory" else url
    async with make_engine(engine_url, flows.QUICK) as engine:
        handle = await engine.start(flows.QUICK)
        await engine.cancel(handle.run_id)
        with anyio.fail_after(5):
            result = await handle.result()
        assert result.status is af.RunStatus.CANCELLED
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.CANCELLED
    assert flows.runs_of("step-one") == 0


# ---- 3. replayed insertions get the same stage ids ------------------------------------


async def test_duplicate_stage_inserted_by_a_retried_action_is_not_run_again(url: str) -> None:
    """A duplicate stage inserted on a retry replays under its original id: its completed action runs once."""
    run_id = await interrupt(url, RETRIED_INSERTION, label="block")
    result = await finish(url, run_id, RETRIED_INSERTION)
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("mark") == 1
    first, second = flows.LEDGER["block"]
    assert first == second  # the action in flight runs again under the same stage id


async def test_concurrent_duplicate_insertions_replay_under_the_same_ids(url: str) -> None:
    """Concurrent actions inserting stage "x" out of plan order: after recovery none runs twice or is lost."""
    run_id = await interrupt(url, CONCURRENT_INSERTIONS, label="mark-a")
    result = await finish(url, run_id, CONCURRENT_INSERTIONS)
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("mark-b") == 1
    assert flows.runs_of("mark-a") == 2  # it hung the first time, so it runs again
    assert result.store == {"mark-b": True, "mark-a": "done"}


# ---- 4. and 5. what is in the database --------------------------------------------------


async def test_checkpoint_saves_the_value_as_it_is_when_the_action_completes(url: str) -> None:
    """A list appended to after the put is saved with the append: a fresh engine reads [1]."""
    run_id, _ = await run_here(url, FILL_AFTER_PUT)
    result = await finish(url, run_id, FILL_AFTER_PUT)
    assert result.store == {"items": [1]}


@pytest.mark.parametrize("workflow", [WRITE_THEN_BAIL, WRITE_THEN_BAIL_TIMED], ids=["plain", "with-timeout"])
async def test_store_writes_of_a_bailing_action_are_in_the_database(url: str, workflow: af.Workflow) -> None:
    """A bailing action's store writes are returned by a fresh engine's wait (with a time limit too)."""
    run_id, _ = await run_here(url, workflow)
    result = await finish(url, run_id, workflow)
    assert result.status is af.RunStatus.BAILED
    assert result.store == {"reason.detail": "out of stock"}


# ---- 6. and 7. middleware and control flow ----------------------------------------------


async def test_recover_does_not_swallow_a_suspend() -> None:
    """With mw.recover() around actions, a suspending action leaves the run SUSPENDED."""
    workflow = af.Workflow(
        "regress-recover-suspend", stages=[af.Stage("s", actions=[suspend_for_approval, ship])]
    )
    workflow.use_action(mw.recover())
    result = await af.run(workflow)
    assert result.status is af.RunStatus.SUSPENDED
    assert "shipped" not in result.store


def test_lease_lost_is_non_retryable() -> None:
    """af.LeaseLost is an af.NonRetryable."""
    assert issubclass(af.LeaseLost, af.NonRetryable)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_mw_retry_does_not_retry_after_the_lease_is_lost(backend: str, url: str) -> None:
    """An action under mw.retry whose checkpoint is refused (run cancelled elsewhere) is not tried again."""
    shared: str | af.backends.Backend = MemoryBackend() if backend == "memory" else url
    # Heartbeats are far apart: A learns of the cancellation from its refused checkpoint.
    async with (
        make_engine(shared, RETRIED_BY_MIDDLEWARE, owner="A", lease=30, poll_interval=5) as a,
        make_engine(shared, RETRIED_BY_MIDDLEWARE, owner="B", recover=False) as b,
    ):
        handle = await a.start(RETRIED_BY_MIDDLEWARE)
        with anyio.fail_after(5):
            await flows.gate("charge").wait()
        await b.cancel(handle.run_id)
        flows.gate("charge.release").set()
        with anyio.fail_after(5):
            result = await handle.result()
        assert result.status is af.RunStatus.CANCELLED
    assert flows.LEDGER["charge"] == [1]


# ---- 8. a backend error while recording a run's end ------------------------------------


class FailsToRecordEnd(MemoryBackend):
    """A memory backend whose update_run raises BackendError when it records the end of run "bad"."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    async def update_run(self, run_id: str, **fields: Any) -> bool:
        status = fields.get("status")
        if run_id == "bad" and isinstance(status, af.RunStatus) and status.finished:
            self.refused.append(run_id)
            raise af.BackendError("disk I/O error")
        return await super().update_run(run_id, **fields)


async def test_backend_error_recording_one_runs_end_does_not_break_the_engine() -> None:
    """update_run failing for one run's end: other runs complete and the engine closes cleanly."""
    backend = FailsToRecordEnd()
    async with make_engine(backend, flows.BLOCKING, flows.QUICK) as engine:
        good = await engine.start(flows.BLOCKING, run_id="good")
        await engine.start(flows.QUICK, run_id="bad")
        # (refused again: the engine holds the end and writes it again, while the other run goes on)
        await flows.eventually(lambda: len(backend.refused) >= 2)
        flows.gate("block.release").set()
        with anyio.fail_after(5):
            result = await good.result()
        assert result.status is af.RunStatus.COMPLETED
        assert (await engine.get_run("good")).status is af.RunStatus.COMPLETED


# ---- 9. values that cannot be stored -----------------------------------------------------


@pytest.mark.parametrize("ttl", [math.inf, math.nan], ids=["inf", "nan"])
def test_store_put_refuses_a_ttl_that_is_not_finite(ttl: float) -> None:
    """store.put with ttl=inf or nan raises ValueError naming the key."""
    store = af.Store()
    with pytest.raises(ValueError, match="token"):
        store.put("token", "abc", ttl=ttl)
    assert "token" not in store


async def test_non_json_property_fails_at_the_put_naming_the_key(url: str) -> None:
    """In a durable run, a date in properties raises NotSerializable at the put, naming the key."""
    _, result = await run_here(url, DATE_PROPERTY)
    assert result.status is af.RunStatus.FAILED
    [message] = flows.LEDGER["not-serializable"]
    assert "when" in message
    assert flows.runs_of("after-put") == 0


# ---- 10. and 11. cancellation ------------------------------------------------------------


async def test_cancelling_a_run_with_a_slow_event_handler_returns_promptly() -> None:
    """A cancelled run.run returns in well under the 5 s an async event handler takes."""
    slow_kinds = {af.EventKind.ACTION_FINISHED, af.EventKind.STAGE_FINISHED, af.EventKind.RUN_FINISHED}

    async def slow_handler(event: af.Event) -> None:
        if event.kind in slow_kinds:
            await anyio.sleep(5)  # e.g. pushing the event to a remote service

    runner = af.Runner()
    runner.on_event(slow_handler)
    workflow = af.Workflow("regress-slow-handler", stages=[af.Stage("s", actions=[hang])])
    started = time.perf_counter()
    with anyio.move_on_after(0.1):
        await runner.run(workflow)
    assert time.perf_counter() - started < 2.5


async def _cancel_during_back_off() -> tuple[af.RunResult, list[af.Event]]:
    """Run ALWAYS_DOWN on a fake clock, cancel it while it waits to retry; its result and events."""
    clock = FakeClock(START)
    engine = af.Engine(clock=clock, lease=1.0, poll_interval=0.05)
    engine.register(ALWAYS_DOWN)
    events: list[af.Event] = []
    engine.runner.on_event(events.append)
    async with engine:
        handle = await engine.start(ALWAYS_DOWN)
        await flows.eventually(lambda: flows.runs_of("always-down") == 1 and clock.sleepers == 1)
        await engine.cancel(handle.run_id)
        with anyio.fail_after(5):
            result = await handle.result()
    assert result.status is af.RunStatus.CANCELLED
    return result, events


async def test_action_cancelled_during_its_back_off_is_recorded_cancelled() -> None:
    """An action cancelled while waiting to retry has a CANCELLED step record, not FAILED."""
    result, _ = await _cancel_during_back_off()
    assert step(result, "action", "s", always_down.name).status is af.StepStatus.CANCELLED


async def test_action_cancelled_during_its_back_off_finishes_cancelled() -> None:
    """An action cancelled while waiting to retry emits ACTION_FINISHED with status cancelled."""
    _, events = await _cancel_during_back_off()
    finished = [e for e in events if e.kind is af.EventKind.ACTION_FINISHED]
    assert finished
    assert finished[-1].status == af.StepStatus.CANCELLED


# ---- 12. what a recover leaves on record --------------------------------------------------


async def test_stage_recover_records_the_actions_that_never_ran_as_skipped() -> None:
    """A stage-level recover swallowing a failure: the stage's later actions are recorded SKIPPED."""
    workflow = af.Workflow(
        "regress-stage-recover",
        stages=[af.Stage("s", actions=[boom, after_boom]), af.Stage("t", actions=[later])],
    )
    workflow.use(mw.recover())
    result = await af.run(workflow)
    assert result.status is af.RunStatus.COMPLETED
    assert step(result, "action", "s", after_boom.name).status is af.StepStatus.SKIPPED
    assert step(result, "action", "t", later.name).status is af.StepStatus.COMPLETED


async def test_run_recover_records_the_stages_that_never_ran_as_skipped() -> None:
    """A run-level recover swallowing a failure: the stages that never ran are recorded SKIPPED."""
    workflow = af.Workflow(
        "regress-run-recover",
        stages=[af.Stage("s", actions=[boom, after_boom]), af.Stage("t", actions=[later])],
    )
    result = await af.Runner(middleware=[mw.recover()]).run(workflow)
    assert result.status is af.RunStatus.COMPLETED
    assert step(result, "stage", "t").status is af.StepStatus.SKIPPED


# ---- 13. and 14. bounds and definitions --------------------------------------------------


async def test_af_run_honours_the_runners_max_insertions() -> None:
    """af.run(wf, runner=af.Runner(max_insertions=5)) fails at 5 insertions, not the default bound."""
    workflow = af.Workflow("regress-max-insertions", stages=[af.Stage("s", actions=[spawn])])
    with pytest.raises(af.ActionFailed) as failure:
        await af.run(workflow, runner=af.Runner(max_insertions=5))
    assert isinstance(failure.value.error, af.InsertionLimitExceeded)
    assert failure.value.error.limit == 5


@pytest.mark.parametrize(
    "retry",
    [
        pytest.param({"backoff": {"fixd": 1}}, id="misspelt-backoff"),
        pytest.param({"retry_on": ["nope.mod:X"]}, id="unknown-retry-on"),
    ],
)
def test_malformed_retry_definition_raises_invalid_definition_naming_the_stage(retry: dict[str, Any]) -> None:
    """A malformed retry in a stage definition raises InvalidDefinition naming the stage."""
    definition = {"id": "w", "stages": [{"id": "charge-card", "retry": retry}]}
    with pytest.raises(af.InvalidDefinition, match="charge-card"):
        af.Workflow.from_definition(definition)


# ---- 10. a resume while the suspension's execution is in its last steps ---------------------


class SlowAfterSuspending(MemoryBackend):
    """A memory backend whose write of a suspension returns only once ``go`` is set (committed before)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = anyio.Event()

    async def update_run(self, run_id: str, **fields: Any) -> bool:
        updated = await super().update_run(run_id, **fields)
        if fields.get("status") is af.RunStatus.SUSPENDED:
            await self.go.wait()  # (the commit is done; the engine has not heard back yet)
        return updated


async def test_a_resume_as_the_suspension_is_still_being_recorded_runs_the_run_on() -> None:
    """Resumed once the database says suspended, before its execution here has ended: the run completes."""
    backend = SlowAfterSuspending()
    async with make_engine(backend, flows.APPROVAL) as engine:
        handle = await engine.start(flows.APPROVAL)

        async def suspended() -> bool:
            info = await backend.get_run(handle.run_id)
            return info is not None and info.status is af.RunStatus.SUSPENDED

        await flows.eventually(suspended)
        async with anyio.create_task_group() as group:
            resumed: list[af.RunHandle] = []

            async def resume() -> None:
                resumed.append(await engine.resume(handle.run_id, {"by": "me"}))

            group.start_soon(resume)
            await anyio.wait_all_tasks_blocked()
            backend.go.set()
        with anyio.fail_after(10):
            result = await resumed[0].result()
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("after") == 1
