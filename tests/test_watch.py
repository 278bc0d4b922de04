"""engine.watch (a run's events from any process, resumable by cursor) and the engine's round-2 additions:
handle.created, IdempotencyConflict, idempotent resume, EngineNotOpen, the plan so far, RUN_SUSPENDED."""

from __future__ import annotations

import decimal
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import GATES, approval, gate

import asyncflow as af
from asyncflow.backends.base import SCHEMA_VERSION

K = af.EventKind


@pytest.fixture(autouse=True)
def _fresh_gates() -> None:
    GATES.clear()


@pytest.fixture(params=[pytest.param("memory", id="memory"), pytest.param("sqlite", id="sqlite")])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An engine URL of each backend that keeps events."""
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'runs.db'}"


@af.action
async def hold(ctx: af.ActionContext) -> None:
    """Signal that it runs, then wait until the test lets it go."""
    gate("hold").set()
    await gate("hold.go").wait()


@af.action
async def tell(ctx: af.ActionContext) -> None:
    """Send two progress messages."""
    await ctx.send("progress", {"pct": 50})
    await ctx.send("progress", {"pct": 100})


@af.action
async def grow(ctx: af.ActionContext) -> None:
    """Insert a stage with one action."""
    ctx.add_dynamic_stage(af.Stage("grown", actions=[tell]))


QUICK = af.Workflow("w-quick", stages=[af.Stage("s", actions=[tell])])
OTHER = af.Workflow("w-other", stages=[af.Stage("s", actions=[tell])])
HOLDING = af.Workflow(
    "w-holding", stages=[af.Stage("a", actions=[grow, hold]), af.Stage("b", actions=[tell])]
)
APPROVAL = af.Workflow("w-approval", stages=[af.Stage("s", actions=[tell, approval])])


@af.action
async def remove_gone(ctx: af.ActionContext) -> None:
    """Take the stage "gone" out of the plan."""
    ctx.plan.remove_stage("gone")


HOLDING_AFTER_A_REMOVAL = af.Workflow(
    "w-holding-after-a-removal",
    stages=[
        af.Stage("a", actions=[remove_gone, hold]),
        af.Stage("gone", actions=[tell]),
        af.Stage("b", actions=[tell]),
    ],
)


def make_engine(url: str, **options: Any) -> af.Engine:
    engine = af.Engine(url, lease=1.0, **options)
    for workflow in (QUICK, OTHER, HOLDING, APPROVAL, HOLDING_AFTER_A_REMOVAL):
        engine.register(workflow)
    return engine


async def collect(events: Any, limit: float = 10) -> list[af.RunEvent]:
    seen: list[af.RunEvent] = []
    with anyio.fail_after(limit):
        async for event in events:
            seen.append(event)
    return seen


# ---- handle.created and IdempotencyConflict ---------------------------------------------------


async def test_handle_created_is_true_for_a_new_run_and_false_for_a_key_found(url: str) -> None:
    """engine.start says with handle.created whether it started the run or its key found an earlier one."""
    async with make_engine(url) as engine:
        first = await engine.start(QUICK, store={"n": 1}, idempotency_key="order-1")
        again = await engine.start(QUICK, store={"n": 1}, idempotency_key="order-1")
        await first.result()
    assert (first.created, again.created) == (True, False)
    assert again.run_id == first.run_id


async def test_same_key_with_another_store_raises_idempotency_conflict(url: str) -> None:
    """A key reused with a different initial store raises af.IdempotencyConflict naming the run."""
    async with make_engine(url) as engine:
        first = await engine.start(QUICK, store={"n": 1}, idempotency_key="order-2")
        with pytest.raises(af.IdempotencyConflict, match="another initial store") as info:
            await engine.start(QUICK, store={"n": 2}, idempotency_key="order-2")
        await first.result()
    assert info.value.run_id == first.run_id


async def test_same_key_with_another_workflow_raises_idempotency_conflict(url: str) -> None:
    """A key reused for another workflow raises af.IdempotencyConflict naming both workflows."""
    async with make_engine(url) as engine:
        first = await engine.start(QUICK, idempotency_key="order-3")
        with pytest.raises(af.IdempotencyConflict, match="'w-quick', not 'w-other'"):
            await engine.start(OTHER, idempotency_key="order-3")
        await first.result()


async def test_same_key_with_the_store_in_another_order_is_the_same_request(url: str) -> None:
    """The order of the store's keys does not make a retry another request."""
    async with make_engine(url) as engine:
        first = await engine.start(QUICK, store={"a": 1, "b": 2}, idempotency_key="order-4")
        again = await engine.start(QUICK, store={"b": 2, "a": 1}, idempotency_key="order-4")
        await first.result()
    assert again.created is False


# ---- resume with a key --------------------------------------------------------------------------


async def test_resume_with_a_key_seen_before_returns_the_same_run_without_error(url: str) -> None:
    """A retried resume with the same key returns the run's handle (created false) and resumes nothing."""
    async with make_engine(url) as engine:
        handle = await engine.start(APPROVAL)
        assert (await handle.result()).status is af.RunStatus.SUSPENDED
        resumed = await engine.resume(handle.run_id, {"ok": 1}, key="approval-1")
        result = await resumed.result()
        again = await engine.resume(handle.run_id, {"ok": 2}, key="approval-1")
    assert (resumed.created, again.created) == (True, False)
    assert again.run_id == handle.run_id
    assert result.store["approved"] == {"ok": 1}


async def test_resume_with_a_new_key_of_a_run_not_suspended_raises_run_state_error(url: str) -> None:
    """Another key on a run that is no longer suspended is still a RunStateError."""
    async with make_engine(url) as engine:
        handle = await engine.start(APPROVAL)
        await handle.result()
        await (await engine.resume(handle.run_id, None, key="k1")).result()
        with pytest.raises(af.RunStateError, match="not suspended"):
            await engine.resume(handle.run_id, None, key="k2")


# ---- EngineNotOpen ------------------------------------------------------------------------------


async def test_start_after_the_engine_closed_raises_engine_not_open(url: str) -> None:
    """engine.start after the engine closed raises af.EngineNotOpen, not RunStateError."""
    engine = make_engine(url)
    async with engine:
        pass
    with pytest.raises(af.EngineNotOpen, match="not open"):
        await engine.start(QUICK)
    assert not issubclass(af.EngineNotOpen, af.RunStateError)


async def test_get_run_before_the_engine_opened_raises_engine_not_open(url: str) -> None:
    """engine.get_run on an engine that is not open raises af.EngineNotOpen."""
    with pytest.raises(af.EngineNotOpen):
        await make_engine(url).get_run("nope")


# ---- the plan so far ------------------------------------------------------------------------------


async def test_get_run_gives_the_plan_so_far_while_the_run_is_running(url: str) -> None:
    """While a run runs, RunInfo.steps lists its plan: done, running, inserted and pending steps."""
    async with make_engine(url) as engine:
        handle = await engine.start(HOLDING)
        with anyio.fail_after(5):
            await gate("hold").wait()
        info = await engine.get_run(handle.run_id)
        gate("hold.go").set()
        await handle.result()
    steps = [
        (s["kind"], s["stage_id"], s["action_name"], s["status"], s["dynamic"]) for s in info.steps or []
    ]
    assert steps == [
        ("stage", "a", None, "running", False),
        ("action", "a", "grow", "completed", False),
        ("action", "a", "hold", "running", False),
        ("stage", "grown", None, "pending", True),
        ("action", "grown", "tell", "pending", True),
        ("stage", "b", None, "pending", False),
        ("action", "b", "tell", "pending", False),
    ]


async def test_the_plan_so_far_leaves_out_a_removed_stage_and_goes_on_after_it(url: str) -> None:
    """While a run runs, RunInfo.steps leaves out a removed stage and still lists the stages after it."""
    async with make_engine(url) as engine:
        handle = await engine.start(HOLDING_AFTER_A_REMOVAL)
        with anyio.fail_after(5):
            await gate("hold").wait()
        info = await engine.get_run(handle.run_id)
        gate("hold.go").set()
        await handle.result()
    stages = [(s["stage_id"], s["status"]) for s in info.steps or [] if s["kind"] == "stage"]
    assert stages == [("a", "running"), ("b", "pending")]


async def hold_before_the_first_step(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
    """A run-level middleware: signal, and wait until the test lets the run's stages begin."""
    gate("before").set()
    await gate("before.go").wait()
    await call_next()


async def test_the_plan_so_far_before_any_step_started_lists_every_step_pending(url: str) -> None:
    """get_run of a running run none of whose steps has started yet lists them all as pending."""
    async with make_engine(url, runner=af.Runner(middleware=[hold_before_the_first_step])) as engine:
        handle = await engine.start(QUICK)
        with anyio.fail_after(5):
            await gate("before").wait()
        info = await engine.get_run(handle.run_id)
        gate("before.go").set()
        await handle.result()
    assert [(s["kind"], s["status"]) for s in info.steps or []] == [
        ("stage", "pending"),
        ("action", "pending"),
    ]


# ---- RUN_SUSPENDED ------------------------------------------------------------------------------


async def test_a_suspending_run_emits_run_suspended_not_run_finished() -> None:
    """Listeners hear RUN_SUSPENDED (status suspended) when a run suspends, and no RUN_FINISHED."""
    runner = af.Runner()
    kinds: list[tuple[af.EventKind, str | None]] = []
    runner.on_event(lambda ev: kinds.append((ev.kind, ev.status)))
    async with af.Engine(runner=runner) as engine:
        await (await engine.start(APPROVAL)).result()
    assert kinds[-1] == (K.RUN_SUSPENDED, "suspended")
    assert K.RUN_FINISHED not in [kind for kind, _ in kinds]


# ---- leases and arguments -----------------------------------------------------------------------


def test_a_short_lease_needs_no_poll_interval() -> None:
    """Engine(lease=2) works: the poll interval follows the lease unless it is given."""
    engine = af.Engine(lease=2)
    assert engine.poll_interval * 2 < engine.lease
    assert af.Engine().poll_interval == 1.0


class Charge(af.Action):
    """An action made with an amount (for the message about arguments that are not JSON)."""

    def __init__(self, amount: Any) -> None:
        self.amount = amount

    async def execute(self, ctx: af.ActionContext) -> None:
        ctx.store["charged"] = str(self.amount)


async def test_a_decimal_constructor_argument_is_named_in_the_error(tmp_path: Path) -> None:
    """A durable run refuses Charge(Decimal) naming the argument, not saying 'define it at module level'."""
    workflow = af.Workflow("w-charge", stages=[af.Stage("s", actions=[Charge(decimal.Decimal("9.99"))])])
    engine = af.Engine(f"sqlite:///{tmp_path / 'runs.db'}")
    with pytest.raises(af.NotReferenceable, match=r"argument #1 \(Decimal\('9.99'\)\)") as info:
        engine.register(workflow)
    assert "module level" not in str(info.value)


# ---- engine.watch -------------------------------------------------------------------------------


async def test_watch_gives_a_runs_events_and_messages_then_ends_with_the_run(url: str) -> None:
    """engine.watch yields steps started/finished/inserted and ctx.send messages, ending at RUN_FINISHED."""
    async with make_engine(url) as engine:
        handle = await engine.start(HOLDING)
        with anyio.fail_after(5):
            await gate("hold").wait()
        gate("hold.go").set()
        events = await collect(engine.watch(handle.run_id))
    kinds = [e.kind for e in events]
    assert kinds[0] is K.RUN_CREATED
    assert kinds[1] is K.RUN_STARTED
    assert kinds[-1] is K.RUN_FINISHED
    assert events[-1].status == "completed"
    assert (K.STAGE_INSERTED, "grown") in [(e.kind, e.stage_id) for e in events]
    messages = [e.payload for e in events if e.kind is K.MESSAGE]
    assert messages == [{"pct": 50}, {"pct": 100}, {"pct": 50}, {"pct": 100}]
    assert [e.cursor for e in events] == [str(n) for n in range(1, len(events) + 1)]
    assert {e.run_id for e in events} == {handle.run_id}
    assert {e.workflow_id for e in events} == {"w-holding"}


async def test_watch_after_a_cursor_goes_on_without_losing_or_repeating(url: str) -> None:
    """A watch started after an event's cursor yields exactly the events after it."""
    async with make_engine(url) as engine:
        handle = await engine.start(QUICK)
        await handle.result()
        everything = await collect(engine.watch(handle.run_id))
        rest = await collect(engine.watch(handle.run_id, after=everything[2].cursor))
    assert rest == everything[3:]


async def test_watch_with_a_cursor_never_issued_raises_unknown_cursor(url: str) -> None:
    """A cursor beyond the run's log, or not a cursor at all, raises af.UnknownCursor (a ValueError)."""
    async with make_engine(url) as engine:
        handle = await engine.start(QUICK)
        await handle.result()
        for cursor in ("999", "abc", "0", "-1"):
            with pytest.raises(af.UnknownCursor, match="never issued"):
                await collect(engine.watch(handle.run_id, after=cursor))
    assert issubclass(af.UnknownCursor, ValueError)


async def test_watch_of_an_unknown_run_raises_unknown_run(url: str) -> None:
    """Watching a run that does not exist raises af.UnknownRun."""
    async with make_engine(url) as engine:
        with pytest.raises(af.UnknownRun):
            await collect(engine.watch("no-such-run"))


async def test_watch_ends_at_a_suspension_and_goes_on_after_resume(url: str) -> None:
    """A watch ends at RUN_SUSPENDED; after resume, watching from its cursor gives RUN_RESUMED onwards."""
    async with make_engine(url) as engine:
        handle = await engine.start(APPROVAL)
        first = await collect(engine.watch(handle.run_id))
        resumed = await engine.resume(handle.run_id, {"ok": True}, key="a-1")
        await resumed.result()
        rest = await collect(engine.watch(handle.run_id, after=first[-1].cursor))
    assert first[-1].kind is K.RUN_SUSPENDED
    assert rest[0].kind is K.RUN_RESUMED
    assert rest[-1].kind is K.RUN_FINISHED


async def test_watch_sees_events_as_they_happen(url: str) -> None:
    """A watcher receives a running run's events before the run ends."""
    async with make_engine(url) as engine:
        handle = await engine.start(HOLDING)
        seen: list[af.RunEvent] = []
        with anyio.fail_after(5):
            async for event in engine.watch(handle.run_id):
                seen.append(event)
                if event.kind is K.ACTION_STARTED and event.action_name == "hold":
                    break
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.RUNNING
        gate("hold.go").set()
        await handle.result()
    assert seen[-1].stage_id == "a"


async def test_watch_ends_when_the_engine_closes(url: str) -> None:
    """A watch of a run still running ends when its engine closes, so shutdown never waits on it."""
    seen: list[af.RunEvent] = []
    first, ended = anyio.Event(), anyio.Event()

    async def watch(engine: af.Engine, run_id: str) -> None:
        async for event in engine.watch(run_id):
            seen.append(event)
            first.set()
        ended.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            async with make_engine(url) as engine:
                handle = await engine.start(HOLDING)
                await gate("hold").wait()
                group.start_soon(watch, engine, handle.run_id)
                await first.wait()
            await ended.wait()
    assert K.RUN_FINISHED not in [e.kind for e in seen]


async def test_handle_watch_is_engine_watch(url: str) -> None:
    """handle.watch() yields the same events as engine.watch(handle.run_id)."""
    async with make_engine(url) as engine:
        handle = await engine.start(QUICK)
        await handle.result()
        assert await collect(handle.watch()) == await collect(engine.watch(handle.run_id))


async def test_watch_of_a_run_cancelled_while_suspended_ends_cancelled(url: str) -> None:
    """Cancelling a suspended run adds RUN_FINISHED (cancelled) to its log."""
    async with make_engine(url) as engine:
        handle = await engine.start(APPROVAL)
        await handle.result()
        await engine.cancel(handle.run_id)
        events = await collect(engine.watch(handle.run_id))
    assert (events[-1].kind, events[-1].status) == (K.RUN_FINISHED, "cancelled")


async def test_watch_from_another_engine_on_the_same_file(tmp_path: Path) -> None:
    """An engine that does not run the run (another process, say) watches it live through the file."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with make_engine(url) as worker, make_engine(url, recover=False, watch_interval=0.02) as web:
        handle = await worker.start(HOLDING)
        seen: list[af.RunEvent] = []
        with anyio.fail_after(5):
            async for event in web.watch(handle.run_id):
                seen.append(event)
                if event.kind is K.ACTION_STARTED and event.action_name == "hold":
                    gate("hold.go").set()
        await handle.result()
    assert seen[-1].kind is K.RUN_FINISHED
    assert [e.cursor for e in seen] == [str(n) for n in range(1, len(seen) + 1)]


async def test_deleting_a_run_deletes_its_events(tmp_path: Path) -> None:
    """engine.delete_run leaves no events of the run in the file."""
    path = tmp_path / "runs.db"
    async with make_engine(f"sqlite:///{path}") as engine:
        handle = await engine.start(QUICK)
        await handle.result()
        await collect(engine.watch(handle.run_id))
        assert await engine.delete_run(handle.run_id)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM run_events").fetchone() == (0,)
    finally:
        conn.close()


async def test_schema_4_file_is_upgraded_and_its_old_runs_watched(tmp_path: Path) -> None:
    """A schema-4 file (no event log) opens at the current schema; a run from before watches to its end."""
    path = tmp_path / "runs.db"
    async with make_engine(f"sqlite:///{path}") as engine:
        handle = await engine.start(QUICK)
        await handle.result()
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            BEGIN;
            DROP TRIGGER run_events_go_with_their_run;
            DROP TABLE run_events;
            ALTER TABLE runs DROP COLUMN resume_key;
            UPDATE asyncflow_meta SET value = '4' WHERE key = 'schema_version';
            COMMIT;
            """
        )
    finally:
        conn.close()
    async with make_engine(f"sqlite:///{path}") as engine:
        assert await collect(engine.watch(handle.run_id)) == []
        again = await engine.start(QUICK)
        await again.result()
        assert (await collect(engine.watch(again.run_id)))[-1].kind is K.RUN_FINISHED
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT value FROM asyncflow_meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
    finally:
        conn.close()


async def test_an_engine_with_events_off_keeps_no_log_but_watch_still_ends(url: str) -> None:
    """Engine(events=False) writes no events; watching its run yields none and ends with the run."""
    async with make_engine(url, events=False) as engine:
        handle = await engine.start(QUICK, idempotency_key="k")
        await handle.result()
        assert await collect(engine.watch(handle.run_id)) == []
        assert (await engine.start(QUICK, idempotency_key="k")).created is False


async def test_get_run_from_another_engine_gives_the_plan_so_far_from_the_event_log(tmp_path: Path) -> None:
    """An engine that does not run the run reads its plan so far from the log (done, running, pending)."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with make_engine(url) as worker, make_engine(url, recover=False) as web:
        handle = await worker.start(HOLDING)
        with anyio.fail_after(5):
            await gate("hold").wait()
            async for event in web.watch(handle.run_id):
                if event.kind is K.ACTION_STARTED and event.action_name == "hold":
                    break
        info = await web.get_run(handle.run_id)
        gate("hold.go").set()
        await handle.result()
    steps = [
        (s["kind"], s["stage_id"], s["action_name"], s["status"], s["dynamic"]) for s in info.steps or []
    ]
    assert steps == [
        ("stage", "a", None, "running", False),
        ("action", "a", "grow", "completed", False),
        ("action", "a", "hold", "running", False),
        ("stage", "grown", None, "pending", True),
        ("stage", "b", None, "pending", False),
        ("action", "b", "tell", "pending", False),
    ]
