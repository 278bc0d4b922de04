"""The durable engine's contract, run against every backend: starting, waiting, managing runs."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import durable_flows as flows
import pytest
from faults.faulty import Faults, FaultyBackend

import asyncflow as af
from asyncflow.testing import FakeClock

START = 1_800_000_000.0


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    flows.reset()


@pytest.fixture(
    params=[
        pytest.param("memory://", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres"),
    ],
)
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An engine URL of each backend: in memory, an SQLite file in tmp_path, a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def make_engine(url: str | af.backends.Backend, clock: FakeClock, **options: Any) -> af.Engine:
    """An engine on ``url`` with a fake clock and short lease and poll interval."""
    options.setdefault("lease", 1.0)
    options.setdefault("poll_interval", 0.05)
    return af.Engine(url, clock=clock, **options)


async def wait_for_status(engine: af.Engine, run_id: str, status: af.RunStatus) -> af.RunInfo:
    """Poll the run until it has ``status`` (fails after a generous 5 s)."""
    with anyio.fail_after(5):
        while True:
            info = await engine.get_run(run_id)
            if info.status is status:
                return info
            await anyio.sleep(0.005)


# ---- starting and waiting ---------------------------------------------------------------


async def test_start_returns_while_the_run_is_still_running(engine_url: str, clock: FakeClock) -> None:
    """engine.start returns a handle at once, while the run's action is still running."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        assert isinstance(handle, af.RunHandle)
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.RUNNING
        flows.gate("block.release").set()
        await handle.result()


async def test_handle_result_waits_for_the_end(engine_url: str, clock: FakeClock) -> None:
    """handle.result() returns the completed RunResult with the final store."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.QUICK, store={"given": "yes"})
        result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert result.run_id == handle.run_id
    assert result.workflow_id == "quick"
    assert result.store == {"given": "yes", "one": 1}


async def test_engine_wait_gives_the_same_result_as_the_handle(engine_url: str, clock: FakeClock) -> None:
    """engine.wait(run_id) returns the same outcome as handle.result()."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.QUICK)
        by_handle = await handle.result()
        by_engine = await engine.wait(handle.run_id)
    assert (by_engine.run_id, by_engine.status, by_engine.store) == (
        by_handle.run_id,
        by_handle.status,
        by_handle.store,
    )


RESHAPE_THEN_FAIL = af.Workflow(
    "reshape-then-fail",
    stages=[
        af.Stage("a", actions=[flows.reshape, flows.Record("x")]),
        af.Stage("skipme", actions=[flows.Record("skipped")]),
        af.Stage("b", actions=[flows.boom]),
    ],
)


def _error_text(error: BaseException | None) -> str | None:
    if error is None or isinstance(error, af.RecordedError):
        return None if error is None else str(error)
    return f"{type(error).__name__}: {error}"


def _described(steps: list[af.StepRecord]) -> list[tuple[Any, ...]]:
    return [
        (
            s.kind,
            s.stage_id,
            s.action_name,
            s.status,
            s.dynamic,
            s.depth,
            s.inserted_by,
            s.inserted_by_stage,
            s.reason,
            s.attempts,
            _error_text(s.error),
        )
        for s in steps
    ]


async def test_recorded_steps_match_the_steps_of_the_result(tmp_path: Path, clock: FakeClock) -> None:
    """The steps another engine reads from the database are the steps the run's own result has."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with make_engine(url, clock) as engine:
        handle = await engine.start(RESHAPE_THEN_FAIL)
        here = await handle.result()
    async with make_engine(url, clock) as other:
        there = await other.wait(handle.run_id)
    assert here.status is af.RunStatus.FAILED
    assert any(s.dynamic for s in here.steps)
    assert any(s.status is af.StepStatus.SKIPPED for s in here.steps)
    assert _described(there.steps) == _described(here.steps)
    # Stored to the nanosecond.
    assert [s.duration for s in there.steps] == pytest.approx([s.duration for s in here.steps], abs=1e-9)
    assert [s.started_at for s in there.steps] == pytest.approx([s.started_at for s in here.steps], abs=1e-9)


async def test_a_result_read_from_the_database_lasts_from_the_runs_creation_to_its_end(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A run's result read back from the database lasts from its creation to its end, by the clock."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with make_engine(url, clock) as engine:
        handle = await engine.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        await clock.advance(0.25)
        flows.gate("block.release").set()
        with anyio.fail_after(5):
            await handle.result()
    async with make_engine(url, clock) as other:
        there = await other.wait(handle.run_id)
    assert there.duration == 0.25


async def test_an_error_read_from_the_database_keeps_its_type_and_whole_message(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A recorded error comes back as its type's name and its message, a colon in the message kept in it."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with make_engine(url, clock) as engine:
        handle = await engine.start(flows.FAILS_WITH_A_COLON)
        with anyio.fail_after(5):
            await handle.result()
    async with make_engine(url, clock) as other:
        there = await other.wait(handle.run_id)
    errors = [there.error, *(s.error for s in there.steps if s.status is af.StepStatus.FAILED)]
    assert len(errors) == 3  # the run's, its stage's and its action's
    for error in errors:
        assert isinstance(error, af.RecordedError)
        assert (error.type_name, error.message) == ("ValueError", "row 7: no id")


async def test_run_info_steps_are_plain_json_dicts(engine_url: str, clock: FakeClock) -> None:
    """get_run gives an ended run's steps as dicts of plain JSON values, times in seconds (both backends)."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(RESHAPE_THEN_FAIL)
        result = await handle.result()
        info = await engine.get_run(handle.run_id)
    assert info.steps is not None
    assert json.loads(json.dumps(info.steps)) == info.steps
    assert all(type(step["status"]) is str for step in info.steps)
    assert [step["status"] for step in info.steps] == [s.status.value for s in result.steps]
    assert [step["duration"] for step in info.steps] == pytest.approx(
        [s.duration for s in result.steps], abs=1e-9
    )


async def test_failed_run_is_returned_with_its_error(engine_url: str, clock: FakeClock) -> None:
    """A failed run comes back from wait with status FAILED and the error; get_run says where it failed."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.FAILING)
        result = await handle.result()
        info = await engine.get_run(handle.run_id)
    assert result.status is af.RunStatus.FAILED
    assert "boom" in str(result.error)
    assert info.status is af.RunStatus.FAILED
    assert info.error == "ValueError: boom"
    assert (info.failed_stage, info.failed_action) == ("s", "boom")


async def test_get_run_describes_a_finished_run(engine_url: str, clock: FakeClock) -> None:
    """get_run returns an af.RunInfo with ids, status, times from the engine's clock, and no owner."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.QUICK)
        await handle.result()
        info = await engine.get_run(handle.run_id)
    assert isinstance(info, af.RunInfo)
    assert (info.run_id, info.workflow_id, info.status) == (handle.run_id, "quick", af.RunStatus.COMPLETED)
    assert info.created_at == START
    assert info.updated_at >= info.created_at
    assert info.created == datetime.fromtimestamp(START, UTC)
    assert (info.owner, info.lease_until) == (None, None)
    assert info.error is None


async def test_handle_info_is_get_run(engine_url: str, clock: FakeClock) -> None:
    """handle.info() returns what engine.get_run returns for the run."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.QUICK)
        await handle.result()
        assert await handle.info() == await engine.get_run(handle.run_id)


async def test_get_run_of_an_unknown_id_raises_unknown_run(engine_url: str, clock: FakeClock) -> None:
    """get_run of an id the engine never saw raises af.UnknownRun naming it."""
    async with make_engine(engine_url, clock) as engine:
        with pytest.raises(af.UnknownRun, match="no-such-run"):
            await engine.get_run("no-such-run")


async def test_start_with_a_known_idempotency_key_returns_the_same_run(
    engine_url: str, clock: FakeClock
) -> None:
    """A second start with the same idempotency_key returns the first run's id and runs nothing."""
    async with make_engine(engine_url, clock) as engine:
        first = await engine.start(flows.QUICK, idempotency_key="order-42")
        await first.result()
        second = await engine.start(flows.QUICK, idempotency_key="order-42")
        await second.result()
        page = await engine.list_runs()
        info = await engine.get_run(first.run_id)
    assert second.run_id == first.run_id
    assert flows.runs_of("step-one") == 1
    assert [run.run_id for run in page.runs] == [first.run_id]
    assert info.idempotency_key == "order-42"


async def test_idempotency_key_of_a_running_run_returns_it(engine_url: str, clock: FakeClock) -> None:
    """A start with the key of a run still running returns that run, and its action runs once."""
    async with make_engine(engine_url, clock) as engine:
        first = await engine.start(flows.BLOCKING, idempotency_key="k")
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        second = await engine.start(flows.BLOCKING, idempotency_key="k")
        flows.gate("block.release").set()
        await second.result()
    assert second.run_id == first.run_id
    assert flows.runs_of("block") == 1


# ---- suspend and resume -------------------------------------------------------------------


async def test_suspended_run_reports_reason_and_data(engine_url: str, clock: FakeClock) -> None:
    """ctx.suspend parks the run: the result and RunInfo are SUSPENDED with the reason and data."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.APPROVAL)
        result = await handle.result()
        info = await engine.get_run(handle.run_id)
    assert result.status is af.RunStatus.SUSPENDED
    assert (result.suspend_reason, result.suspend_data) == ("needs approval", {"amount": 5})
    assert info.status is af.RunStatus.SUSPENDED
    assert (info.suspend_reason, info.suspend_data) == ("needs approval", {"amount": 5})


async def test_resume_continues_from_the_suspending_action(engine_url: str, clock: FakeClock) -> None:
    """engine.resume reruns the suspending action (is_resuming, resume_data), not the ones before it."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.APPROVAL)
        await handle.result()
        resumed = await engine.resume(handle.run_id, {"ok": True})
        result = await resumed.result()
    assert resumed.run_id == handle.run_id
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["approved"] == {"ok": True}
    assert [(resuming, data) for resuming, data, _ in flows.LEDGER["approve"]] == [
        (False, None),
        (True, {"ok": True}),
    ]
    assert flows.runs_of("step-one") == 1
    assert flows.runs_of("after") == 1


async def test_resume_keeps_the_idempotency_key(engine_url: str, clock: FakeClock) -> None:
    """The suspending action sees the same ctx.idempotency_key before and after resume."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.APPROVAL)
        await handle.result()
        await (await engine.resume(handle.run_id, "yes")).result()
    keys = [key for _, _, key in flows.LEDGER["approve"]]
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert keys[0].startswith(handle.run_id)


async def test_resuming_a_run_that_is_not_suspended_raises(engine_url: str, clock: FakeClock) -> None:
    """engine.resume of a completed run raises af.RunStateError."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.QUICK)
        await handle.result()
        with pytest.raises(af.RunStateError, match="not suspended"):
            await engine.resume(handle.run_id, {})


async def test_resuming_an_unknown_run_raises_unknown_run(engine_url: str, clock: FakeClock) -> None:
    """engine.resume of an unknown id raises af.UnknownRun."""
    async with make_engine(engine_url, clock) as engine:
        with pytest.raises(af.UnknownRun):
            await engine.resume("nope", {})


# ---- durable sleep --------------------------------------------------------------------------


async def test_sleeping_run_shows_status_sleeping(engine_url: str, clock: FakeClock) -> None:
    """While af.sleep waits on the engine's FakeClock the run's status is SLEEPING."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.SLEEPY)
        await wait_for_status(engine, handle.run_id, af.RunStatus.SLEEPING)
        assert flows.runs_of("before") == 1
        assert flows.runs_of("woke") == 0
        await clock.advance(100)
        await handle.result()


async def test_sleeping_run_records_when_it_wakes(engine_url: str, clock: FakeClock) -> None:
    """A sleeping run's RunInfo.wake_at is the time it wakes on the engine's clock."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.SLEEPY)
        info = await wait_for_status(engine, handle.run_id, af.RunStatus.SLEEPING)
        await clock.advance(100)
        await handle.result()
    assert info.wake_at == START + 100


async def test_sleep_wakes_when_the_clock_is_advanced(engine_url: str, clock: FakeClock) -> None:
    """The run stays asleep until the FakeClock passes the wake time, then completes."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.SLEEPY)
        await wait_for_status(engine, handle.run_id, af.RunStatus.SLEEPING)
        await clock.advance(99)
        await clock.wait_for_sleepers(1)  # the run's sleep still waits on the clock: not woken
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.SLEEPING
        await clock.advance(1)
        with anyio.fail_after(5):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("woke") == 1


@pytest.mark.parametrize(
    ("seconds", "message"), [(-1, "negative"), (math.nan, "finite"), (math.inf, "finite")]
)
def test_sleep_refuses_a_negative_or_endless_duration(seconds: float, message: str) -> None:
    """af.sleep of a negative, NaN or infinite number of seconds is a ValueError saying which."""
    with pytest.raises(ValueError, match=message):
        af.sleep(seconds)


def test_sleep_takes_zero_a_fraction_or_a_timedelta() -> None:
    """af.sleep takes zero seconds, a fraction of one, or a timedelta (as its seconds)."""
    assert [af.sleep(d).seconds for d in (0, 0.5, timedelta(minutes=2))] == [0.0, 0.5, 120.0]


@pytest.mark.parametrize("seconds", ["1", True, None])
def test_sleep_refuses_what_is_not_a_duration(seconds: object) -> None:
    """af.sleep of something that is neither seconds nor a timedelta is a TypeError showing it."""
    with pytest.raises(TypeError, match="seconds or a timedelta"):
        af.sleep(seconds)  # type: ignore[arg-type]


# ---- cancel -----------------------------------------------------------------------------------


async def test_cancel_of_a_running_run_cancels_its_action(engine_url: str, clock: FakeClock) -> None:
    """engine.cancel of a running run cancels the action in flight and records CANCELLED."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        await engine.cancel(handle.run_id)
        info = await engine.get_run(handle.run_id)
        result = await handle.result()
    assert flows.LEDGER["block.cancelled"] == [True]
    assert info.status is af.RunStatus.CANCELLED
    assert result.status is af.RunStatus.CANCELLED


async def test_handle_cancel_cancels_the_run(engine_url: str, clock: FakeClock) -> None:
    """handle.cancel() does what engine.cancel does."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        await handle.cancel()
        assert (await handle.info()).status is af.RunStatus.CANCELLED


async def test_cancel_of_a_suspended_run_marks_it_cancelled(engine_url: str, clock: FakeClock) -> None:
    """engine.cancel of a suspended run marks it CANCELLED; it can no longer be resumed."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.APPROVAL)
        await handle.result()
        await engine.cancel(handle.run_id)
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.CANCELLED
        with pytest.raises(af.RunStateError):
            await engine.resume(handle.run_id, {})


async def test_cancel_of_a_sleeping_run_marks_it_cancelled(engine_url: str, clock: FakeClock) -> None:
    """engine.cancel of a sleeping run ends it CANCELLED; advancing the clock does not wake it."""
    counted = Faults()  # (no write fails: it counts the engine's looks for runs to take)
    async with make_engine(FaultyBackend(af.backends.open_backend(engine_url), counted), clock) as engine:
        handle = await engine.start(flows.SLEEPY)
        await wait_for_status(engine, handle.run_id, af.RunStatus.SLEEPING)
        await engine.cancel(handle.run_id)
        await clock.advance(200)
        looks = counted.written["claim"]
        await flows.eventually(lambda: counted.written["claim"] >= looks + 2)  # (one would wake it)
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.CANCELLED
    assert flows.runs_of("woke") == 0


async def test_cancel_of_a_finished_run_raises(engine_url: str, clock: FakeClock) -> None:
    """engine.cancel of a completed run raises af.RunStateError and leaves it COMPLETED."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.QUICK)
        await handle.result()
        with pytest.raises(af.RunStateError, match="already ended"):
            await engine.cancel(handle.run_id)
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.COMPLETED


async def test_cancel_of_an_unknown_run_raises_unknown_run(engine_url: str, clock: FakeClock) -> None:
    """engine.cancel of an unknown id raises af.UnknownRun."""
    async with make_engine(engine_url, clock) as engine:
        with pytest.raises(af.UnknownRun):
            await engine.cancel("nope")


# ---- listing, deleting, purging ------------------------------------------------------------


async def start_quick_runs(engine: af.Engine, clock: FakeClock, count: int, wf: af.Workflow) -> list[str]:
    """Run ``wf`` ``count`` times to completion, one clock second apart; the run ids, oldest first."""
    ids = []
    for _ in range(count):
        handle = await engine.start(wf)
        await handle.result()
        ids.append(handle.run_id)
        await clock.advance(1)
    return ids


async def test_list_runs_pages_through_every_run_newest_first(engine_url: str, clock: FakeClock) -> None:
    """list_runs with limit=3 gives 7 runs in 3 pages, newest first, chained by next_cursor."""
    async with make_engine(engine_url, clock) as engine:
        ids = await start_quick_runs(engine, clock, 7, flows.QUICK)
        pages = []
        cursor = None
        while True:
            page = await engine.list_runs(limit=3, cursor=cursor)
            assert isinstance(page, af.RunPage)
            pages.append([run.run_id for run in page.runs])
            cursor = page.next_cursor
            if cursor is None:
                break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [run_id for p in pages for run_id in p] == list(reversed(ids))


async def test_list_runs_filters_by_status_and_workflow(engine_url: str, clock: FakeClock) -> None:
    """list_runs(status=..., workflow_id=...) returns only the matching runs."""
    async with make_engine(engine_url, clock) as engine:
        quick = await start_quick_runs(engine, clock, 2, flows.QUICK)
        failing = await start_quick_runs(engine, clock, 1, flows.FAILING)
        by_status = await engine.list_runs(status=af.RunStatus.FAILED)
        by_name = await engine.list_runs(status="completed")
        by_workflow = await engine.list_runs(workflow_id="quick")
        both = await engine.list_runs(workflow_id="quick", status=af.RunStatus.FAILED)
    assert [r.run_id for r in by_status.runs] == failing
    assert [r.run_id for r in by_name.runs] == list(reversed(quick))
    assert [r.run_id for r in by_workflow.runs] == list(reversed(quick))
    assert both.runs == []
    assert both.next_cursor is None


async def test_list_runs_rejects_a_bad_limit(engine_url: str, clock: FakeClock) -> None:
    """list_runs(limit=0) raises ValueError."""
    async with make_engine(engine_url, clock) as engine:
        with pytest.raises(ValueError, match="limit"):
            await engine.list_runs(limit=0)


async def test_delete_run_forgets_the_run(engine_url: str, clock: FakeClock) -> None:
    """delete_run of a finished run returns True; the run is then unknown; a second delete returns False."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.QUICK)
        await handle.result()
        assert await engine.delete_run(handle.run_id) is True
        with pytest.raises(af.UnknownRun):
            await engine.get_run(handle.run_id)
        assert await engine.delete_run(handle.run_id) is False
        assert (await engine.list_runs()).runs == []


async def test_delete_run_frees_its_idempotency_key(engine_url: str, clock: FakeClock) -> None:
    """After delete_run, a start with the deleted run's idempotency key starts a new run."""
    async with make_engine(engine_url, clock) as engine:
        first = await engine.start(flows.QUICK, idempotency_key="k")
        await first.result()
        await engine.delete_run(first.run_id)
        second = await engine.start(flows.QUICK, idempotency_key="k")
        await second.result()
    assert second.run_id != first.run_id
    assert flows.runs_of("step-one") == 2


async def test_delete_run_of_a_running_run_raises(engine_url: str, clock: FakeClock) -> None:
    """delete_run of a run executing in this engine raises af.RunStateError."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        with pytest.raises(af.RunStateError, match="cancel"):
            await engine.delete_run(handle.run_id)
        flows.gate("block.release").set()
        await handle.result()


async def test_purge_deletes_runs_that_ended_long_enough_ago(engine_url: str, clock: FakeClock) -> None:
    """purge(older_than=1 day) deletes the runs that ended 2 days ago and keeps the recent one."""
    async with make_engine(engine_url, clock) as engine:
        old = await start_quick_runs(engine, clock, 2, flows.QUICK)
        await clock.advance(timedelta(days=2).total_seconds())
        recent = await start_quick_runs(engine, clock, 1, flows.QUICK)
        purged = await engine.purge(older_than=timedelta(days=1))
        left = await engine.list_runs()
        for run_id in old:
            with pytest.raises(af.UnknownRun):
                await engine.get_run(run_id)
    assert purged == 2
    assert [r.run_id for r in left.runs] == recent


async def test_purge_keeps_unfinished_runs(engine_url: str, clock: FakeClock) -> None:
    """purge never deletes a suspended run, however old."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.APPROVAL)
        await handle.result()
        await clock.advance(timedelta(days=30).total_seconds())
        assert await engine.purge(older_than=timedelta(days=1)) == 0
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.SUSPENDED


async def test_purge_refuses_a_negative_age_and_deletes_nothing(engine_url: str, clock: FakeClock) -> None:
    """purge(older_than=-1 day), which would reach into the future, is a ValueError; no run is deleted."""
    async with make_engine(engine_url, clock) as engine:
        ended = await start_quick_runs(engine, clock, 2, flows.QUICK)
        with pytest.raises(ValueError, match="older_than must not be negative"):
            await engine.purge(older_than=timedelta(days=-1))
        assert sorted(r.run_id for r in (await engine.list_runs()).runs) == sorted(ended)


def test_negative_retention_is_refused() -> None:
    """Engine(retention=-1 h) is a ValueError naming the option."""
    with pytest.raises(ValueError, match="retention must not be negative"):
        af.Engine(retention=timedelta(hours=-1))


async def only_run_is(engine: af.Engine, run_id: str) -> bool:
    """Whether ``run_id`` is the only run the engine lists."""
    return [r.run_id for r in (await engine.list_runs()).runs] == [run_id]


async def test_retention_deletes_old_finished_runs_automatically(engine_url: str, clock: FakeClock) -> None:
    """An engine with retention=1 h deletes a run that ended 2 h ago, without a purge call."""
    async with make_engine(engine_url, clock) as first:
        handle = await first.start(flows.QUICK)
        await handle.result()
    await clock.advance(timedelta(hours=2).total_seconds())
    async with make_engine(first.backend, clock, retention=timedelta(hours=1)) as engine:
        fresh = await engine.start(flows.QUICK)
        await fresh.result()
        await flows.eventually(lambda: only_run_is(engine, fresh.run_id))
        with pytest.raises(af.UnknownRun):
            await engine.get_run(handle.run_id)


# ---- the runner's listeners and middleware ---------------------------------------------------


async def test_messages_reach_handlers_of_the_engines_runner(engine_url: str, clock: FakeClock) -> None:
    """ctx.send in an engine run reaches on_message handlers of Engine(runner=...), with its context."""
    runner = af.Runner()
    received: list[af.Message] = []
    runner.on_message("progress", received.append)
    async with make_engine(engine_url, clock, runner=runner) as engine:
        handle = await engine.start(flows.ANNOUNCING)
        await handle.result()
    assert [(m.kind, m.payload) for m in received] == [("progress", {"pct": 50})]
    assert (received[0].run_id, received[0].workflow_id) == (handle.run_id, "announcing")
    assert (received[0].stage_id, received[0].action_name) == ("s", "announce")


async def test_events_reach_handlers_of_the_engines_runner(engine_url: str, clock: FakeClock) -> None:
    """Lifecycle events of an engine run reach runner.on_event handlers, ending with RUN_FINISHED."""
    runner = af.Runner()
    events: list[af.Event] = []
    runner.on_event(events.append)
    async with make_engine(engine_url, clock, runner=runner) as engine:
        handle = await engine.start(flows.QUICK)
        await handle.result()
    kinds = [e.kind for e in events if e.run_id == handle.run_id]
    assert kinds[0] is af.EventKind.RUN_STARTED
    assert kinds[-1] is af.EventKind.RUN_FINISHED
    assert af.EventKind.ACTION_FINISHED in kinds
    assert events[-1].status == "completed"


async def test_subscribe_streams_events_of_an_engine_run(engine_url: str, clock: FakeClock) -> None:
    """runner.subscribe() yields the events of an engine run as an async iterator."""
    runner = af.Runner()
    seen: list[af.EventKind] = []
    async with make_engine(engine_url, clock, runner=runner) as engine, runner.subscribe() as stream:
        handle = await engine.start(flows.QUICK)
        with anyio.fail_after(5):
            async for event in stream:
                seen.append(event.kind)
                if event.kind is af.EventKind.RUN_FINISHED:
                    break
        await handle.result()
    assert seen[0] is af.EventKind.RUN_STARTED
    assert af.EventKind.STAGE_STARTED in seen


async def test_runner_middleware_wraps_engine_runs(engine_url: str, clock: FakeClock) -> None:
    """Run- and action-level middleware of the engine's runner wrap its runs and actions."""
    calls: list[str] = []

    async def around_run(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        calls.append("run:before")
        await call_next()
        calls.append("run:after")

    async def around_action(ctx: af.MiddlewareContext, call_next: af.CallNext) -> None:
        assert ctx.action is not None
        calls.append(f"action:{ctx.action.name}")
        await call_next()

    runner = af.Runner(middleware=[around_run], action_middleware=[around_action])
    async with make_engine(engine_url, clock, runner=runner) as engine:
        result = await (await engine.start(flows.BASIC_NO_HANG)).result()
    assert result.status is af.RunStatus.COMPLETED
    assert calls == ["run:before", "action:step-one", "action:record", "action:record", "run:after"]


async def test_runner_retry_default_applies_to_engine_runs(engine_url: str, clock: FakeClock) -> None:
    """A Runner(retry=...) default retries actions of engine runs too."""
    runner = af.Runner(retry=af.Retry(attempts=2, backoff=af.backoff.fixed(0)))
    async with make_engine(engine_url, clock, runner=runner) as engine:
        result = await (await engine.start(flows.FAILING)).result()
    assert result.status is af.RunStatus.FAILED
    assert [s.attempts for s in result.steps if s.action_name == "boom"] == [2]


# ---- engine set-up ----------------------------------------------------------------------------


async def test_engine_used_outside_async_with_raises(engine_url: str, clock: FakeClock) -> None:
    """engine.start before the engine is opened raises af.EngineNotOpen saying to use 'async with'."""
    engine = make_engine(engine_url, clock)
    with pytest.raises(af.EngineNotOpen, match="async with"):
        await engine.start(flows.QUICK)


async def test_entering_an_open_engine_again_raises_and_leaves_it_open(
    engine_url: str, clock: FakeClock
) -> None:
    """A second 'async with engine' inside the first raises af.RunStateError; the engine stays usable."""
    engine = make_engine(engine_url, clock)
    async with engine:
        with pytest.raises(af.RunStateError, match="open already"):
            async with engine:
                pass
        result = await (await engine.start(flows.QUICK)).result()
    assert result.status is af.RunStatus.COMPLETED


async def test_an_engine_opens_again_after_it_closed(engine_url: str, clock: FakeClock) -> None:
    """The same af.Engine object can be opened again once closed, and sees the runs of before."""
    engine = make_engine(engine_url, clock)
    async with engine:
        first = await (await engine.start(flows.QUICK)).result()
    async with engine:
        second = await (await engine.start(flows.QUICK)).result()
        listed = sorted(run.run_id for run in (await engine.list_runs()).runs)
    assert listed == sorted([first.run_id, second.run_id])


async def test_register_refuses_another_workflow_under_a_taken_id(engine_url: str, clock: FakeClock) -> None:
    """engine.register of a different workflow with a registered id raises af.InvalidDefinition."""
    engine = make_engine(engine_url, clock)
    engine.register(flows.QUICK)
    assert engine.register(flows.QUICK) is flows.QUICK
    other = af.Workflow("quick", stages=[af.Stage("other", actions=[flows.step_one, flows.step_one])])
    with pytest.raises(af.InvalidDefinition, match="quick"):
        engine.register(other)


async def test_register_accepts_a_rebuilt_workflow_with_the_same_definition(tmp_path: Path) -> None:
    """A persistent engine accepts a workflow rebuilt with an equal definition and keeps the first."""
    engine = af.Engine(f"sqlite:///{tmp_path / 'runs.db'}")

    def build() -> af.Workflow:
        return af.Workflow("rebuilt", stages=[af.Stage("s", actions=[flows.step_one])])

    first = engine.register(build())
    assert engine.register(build()) is first


@pytest.mark.parametrize("url", ["bogus://x", "nothing", "postgresql://host/db?colour=blue"])
def test_unsupported_urls_raise_backend_error(url: str) -> None:
    """af.Engine with a URL naming no available backend raises af.BackendError quoting it."""
    with pytest.raises(af.BackendError, match=url.split(":")[0]):
        af.Engine(url)


async def test_closing_an_engine_never_raises(engine_url: str, clock: FakeClock) -> None:
    """Leaving `async with engine` raises nothing, whenever its maintenance task happens to wake."""
    for _ in range(50):
        async with make_engine(engine_url, clock, poll_interval=0.002):
            await anyio.sleep(0.002)


def test_default_engine_is_in_memory() -> None:
    """af.Engine() uses the in-memory backend."""
    assert af.Engine().backend.url == "memory://"


@pytest.mark.parametrize(("lease", "poll"), [(0.0, 0.1), (1.0, 0.0), (1.0, 0.5)])
def test_lease_and_poll_interval_are_checked(lease: float, poll: float) -> None:
    """A non-positive lease or poll interval, or a poll interval of half the lease or more: ValueError."""
    with pytest.raises(ValueError):
        af.Engine(lease=lease, poll_interval=poll)


@pytest.mark.parametrize("field", ["run_id", "idempotency_key"])
async def test_start_refuses_a_run_id_or_key_that_is_not_unicode_text(
    engine_url: str, clock: FakeClock, field: str
) -> None:
    """A run id or idempotency key with a lone surrogate is a ValueError naming it; no run is written."""
    async with make_engine(engine_url, clock) as engine:
        with pytest.raises(ValueError, match=f"{field} 'run-\\\\udcff' is not valid Unicode text"):
            await engine.start(flows.QUICK, **{field: os.fsdecode(b"run-\xff")})
        assert (await engine.list_runs()).runs == []


async def test_start_with_the_id_of_an_ended_run_raises_duplicate_run_id(
    engine_url: str, clock: FakeClock
) -> None:
    """engine.start(run_id=...) of an existing run raises af.DuplicateRunId; the run is kept as it was."""
    async with make_engine(engine_url, clock) as engine:
        await (await engine.start(flows.QUICK, run_id="r1", store={"given": 1})).result()
        with pytest.raises(af.DuplicateRunId, match="'r1' exists already") as info:
            await engine.start(flows.APPROVAL, run_id="r1")
        assert isinstance(info.value, af.RunStateError)
        kept = await engine.get_run("r1")
        assert (kept.workflow_id, kept.status) == ("quick", af.RunStatus.COMPLETED)
        assert [run.run_id for run in (await engine.list_runs()).runs] == ["r1"]
        assert (await engine.wait("r1")).store == {"given": 1, "one": 1}


async def test_start_with_the_id_of_a_running_run_leaves_it_running(
    engine_url: str, clock: FakeClock
) -> None:
    """A second start with the id of a run still running raises; the first runs on and completes."""
    async with make_engine(engine_url, clock) as engine:
        first = await engine.start(flows.BLOCKING, run_id="r1")
        with anyio.fail_after(5):
            await flows.gate("block").wait()
            with pytest.raises(af.DuplicateRunId):
                await engine.start(flows.QUICK, run_id="r1")
            flows.gate("block.release").set()
            result = await first.result()
    assert (result.workflow_id, result.status) == ("blocking", af.RunStatus.COMPLETED)
    assert result.store == {"block": "released"}
    assert flows.runs_of("step-one") == 0


async def test_start_refuses_store_keys_that_are_not_strings(engine_url: str, clock: FakeClock) -> None:
    """engine.start(store={1: ...}) is the TypeError a run's store gives, on every backend; no run starts."""
    async with make_engine(engine_url, clock) as engine:
        with pytest.raises(TypeError, match=r"store keys must be str or af\.Key, got int 1"):
            await engine.start(flows.QUICK, store={1: "x"})
        assert (await engine.list_runs()).runs == []


@pytest.mark.parametrize(("run_id", "error"), [("  ", ValueError), (7, TypeError), (0, TypeError)])
async def test_start_refuses_a_blank_or_non_string_run_id(
    engine_url: str, clock: FakeClock, run_id: object, error: type[Exception]
) -> None:
    """engine.start(run_id=...) refuses a blank id or one that is not a string, and says so."""
    async with make_engine(engine_url, clock) as engine:
        with pytest.raises(error, match="run_id must"):
            await engine.start(flows.QUICK, run_id=run_id)  # type: ignore[arg-type]
        assert (await engine.list_runs()).runs == []


async def test_start_refuses_a_typed_key_with_a_value_of_another_type(
    engine_url: str, clock: FakeClock
) -> None:
    """engine.start(store={af.Key("n", int): "x"}) is af.TypeMismatch, as ctx.store[key] = "x" is; no run."""
    async with make_engine(engine_url, clock) as engine:
        with pytest.raises(af.TypeMismatch, match="'n'"):
            await engine.start(flows.QUICK, store={af.Key("n", int): "x"})
        assert (await engine.list_runs()).runs == []


@pytest.mark.parametrize("run_id", [os.fsdecode(b"run-\xff"), 123])
async def test_run_ids_that_cannot_name_a_run_are_unknown(
    engine_url: str, clock: FakeClock, run_id: object
) -> None:
    """get_run, wait, cancel and resume of an id no run can have raise af.UnknownRun; delete_run is False."""
    async with make_engine(engine_url, clock) as engine:
        for call in (engine.get_run, engine.wait, engine.cancel, lambda r: engine.resume(r, {})):
            with pytest.raises(af.UnknownRun, match="no run"):
                await call(run_id)  # type: ignore[operator]
        assert await engine.delete_run(run_id) is False  # type: ignore[arg-type]


async def test_start_with_an_empty_run_id_makes_a_fresh_one(engine_url: str, clock: FakeClock) -> None:
    """engine.start(run_id="") is as if no run_id were given (run_id=os.environ.get(..., "") works)."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.QUICK, run_id="")
        assert (await handle.result()).status is af.RunStatus.COMPLETED
    assert len(handle.run_id) == 32


def test_engine_owner_left_empty_is_made_up() -> None:
    """af.Engine(owner="") is as if no owner were given: a name of this process is made up."""
    assert af.Engine(owner="").owner != ""


def test_a_refused_start_registers_nothing(tmp_path: Path) -> None:
    """A start refused for its arguments leaves the engine's workflows as they were."""

    async def main() -> None:
        async with af.Engine(f"sqlite:///{tmp_path / 'runs.db'}") as engine:
            with pytest.raises(ValueError):
                await engine.start(flows.QUICK, run_id="  ")
            other = af.Workflow("quick", stages=[af.Stage("other", actions=[flows.step_one])])
            assert engine.register(other) is other

    anyio.run(main)


@pytest.mark.parametrize(
    ("owner", "error"), [("  ", ValueError), (7, TypeError), (os.fsdecode(b"host-\xff"), ValueError)]
)
def test_engine_owner_must_be_a_name_a_database_can_keep(owner: object, error: type[Exception]) -> None:
    """af.Engine(owner=...) refuses a blank, non-string or non-Unicode owner, naming the option."""
    with pytest.raises(error, match="owner"):
        af.Engine(owner=owner)  # type: ignore[arg-type]


# ---- text that is not Unicode ------------------------------------------------------------------


async def test_failure_quoting_a_name_that_is_not_utf8_is_recorded(engine_url: str, clock: FakeClock) -> None:
    """A run failing with a message that quotes a non-UTF-8 file name ends failed, the name escaped."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.FAILS_QUOTING_A_FILE)
        with anyio.fail_after(5):
            result = await handle.result()
        info = await engine.get_run(handle.run_id)
    assert result.status is af.RunStatus.FAILED
    assert info.status is af.RunStatus.FAILED
    assert info.error == "ValueError: cannot parse report-\\udcff.csv"


async def test_suspend_reason_quoting_a_name_that_is_not_utf8_is_recorded(
    engine_url: str, clock: FakeClock
) -> None:
    """A suspend reason quoting a non-UTF-8 file name is recorded escaped, and the run resumes."""
    async with make_engine(engine_url, clock) as engine:
        handle = await engine.start(flows.SUSPENDS_QUOTING_A_FILE)
        with anyio.fail_after(5):
            assert (await handle.result()).status is af.RunStatus.SUSPENDED
            info = await engine.get_run(handle.run_id)
            assert info.status is af.RunStatus.SUSPENDED
            assert info.suspend_reason == "check report-\\udcff.csv by hand"
            resumed = await (await engine.resume(handle.run_id, "done")).result()
    assert resumed.status is af.RunStatus.COMPLETED
    assert resumed.store["checked"] == "done"


async def test_dynamic_stage_named_after_an_undecodable_file_fails_only_its_own_run(
    engine_url: str, clock: FakeClock
) -> None:
    """A dynamic stage id that is not Unicode text fails the inserting action; runs beside it complete."""
    async with make_engine(engine_url, clock) as engine:
        handles = [
            await engine.start(workflow) for workflow in (flows.QUICK, flows.STAGE_PER_FILE, flows.QUICK)
        ]
        with anyio.fail_after(5):
            first, bad, last = [await handle.result() for handle in handles]
        info = await engine.get_run(handles[1].run_id)
    assert (first.status, last.status) == (af.RunStatus.COMPLETED, af.RunStatus.COMPLETED)
    assert bad.status is af.RunStatus.FAILED
    assert info.status is af.RunStatus.FAILED
    assert info.error is not None
    assert info.error.startswith("InvalidDefinition: stage id 'process-report-\\udcff.csv'")
    assert info.failed_action == "insert-stage-per-file"


# ---- the memory backend's freedoms ------------------------------------------------------------


async def test_memory_engine_accepts_values_that_are_not_json(clock: FakeClock) -> None:
    """With the memory backend, store values need not be JSON."""
    marker = object()

    @af.action
    async def keep(ctx: af.ActionContext) -> None:
        ctx.store["thing"] = marker

    wf = af.Workflow("mem-values", stages=[af.Stage("s", actions=[keep])])
    async with make_engine("memory://", clock) as engine:
        result = await (await engine.start(wf, store={"given": {1, 2}})).result()
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["thing"] is marker
    assert result.store["given"] == {1, 2}


async def test_memory_engine_keeps_suspend_and_resume_data_as_they_are(clock: FakeClock) -> None:
    """With the memory backend, suspend and resume data need not be JSON (a dict keyed by ints stays so)."""

    @af.action
    async def ask(ctx: af.ActionContext) -> None:
        if not ctx.is_resuming:
            ctx.suspend("check", {7: "seven"})
        ctx.store["answer"] = ctx.resume_data

    wf = af.Workflow("mem-suspend", stages=[af.Stage("s", actions=[ask])])
    async with make_engine("memory://", clock) as engine:
        handle = await engine.start(wf)
        assert (await handle.result()).suspend_data == {7: "seven"}
        resumed = await (await engine.resume(handle.run_id, {3: "three"})).result()
    assert resumed.store["answer"] == {3: "three"}


async def test_memory_engine_accepts_actions_that_are_not_referenceable(clock: FakeClock) -> None:
    """With the memory backend, closures may be run and inserted dynamically."""

    @af.action
    async def child(ctx: af.ActionContext) -> None:
        ctx.store["child"] = True

    @af.action
    async def parent(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(child)
        ctx.add_dynamic_stage(af.Stage("extra", actions=[flows.LAMBDA_MADE]))

    wf = af.Workflow("mem-closures", stages=[af.Stage("s", actions=[parent])])
    async with make_engine("memory://", clock) as engine:
        result = await (await engine.start(wf)).result()
    assert result.status is af.RunStatus.COMPLETED
    assert result.store == {"child": True}
    assert result.stage_order() == ["s", "extra"]


async def test_register_refuses_a_rebuilt_workflow_that_cannot_be_compared() -> None:
    """A rebuilt workflow of closures cannot be compared with the registered one: the error says why."""

    def build() -> af.Workflow:
        async def body(ctx: af.ActionContext) -> None:
            pass

        return af.Workflow("closures", stages=[af.Stage("s", actions=[af.action(name="inner")(body)])])

    engine = af.Engine()
    first = engine.register(build())
    assert engine.register(first) is first
    with pytest.raises(af.InvalidDefinition, match=r"cannot be compared .*register one workflow object"):
        engine.register(build())
