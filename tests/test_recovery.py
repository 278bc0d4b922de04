"""Durable runs on SQLite across engines: recovery, replay, leases, suspend, sleep, retries, bad files.

An interruption is simulated in-process: an action opens a gate and hangs,
and the test leaves the ``async with engine`` block, which stops the run and
releases its lease (the run stays RUNNING in the database). A new engine
opened on the same file then takes the run over.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import durable_flows as flows
import pytest
from durable_flows import finish, info_of, interrupt, make_engine, query, run_here

import asyncflow as af
from asyncflow.backends import SQLiteBackend
from asyncflow.backends.base import SCHEMA_VERSION
from asyncflow.testing import FakeClock

#: the schema_version row of a file at this asyncflow's schema
CURRENT_SCHEMA = [(str(SCHEMA_VERSION),)]
START = 1_800_000_000.0


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    flows.reset()


def same_json(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (so 1, 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# The tables of schema 2 (and 1): runs keyed by run id, and checkpoints by run id and number.
SCHEMA_2_TABLES = """
CREATE TABLE runs_v2 (
    run_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, idempotency_key TEXT UNIQUE,
    owner TEXT, lease_until REAL, wake_at REAL, suspend_reason TEXT, suspend_data TEXT,
    suspended_step TEXT, resume_data TEXT, error TEXT, failed_stage TEXT, failed_action TEXT,
    bail_reason TEXT, steps TEXT
);
CREATE TABLE checkpoints_v2 (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, step_key TEXT NOT NULL, kind TEXT NOT NULL,
    changes TEXT, ops TEXT, attempts INTEGER NOT NULL, at REAL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"""


SCHEMA_2_RUN_COLUMNS = (
    "run_id, workflow_id, status, created_at, updated_at, idempotency_key, owner, lease_until, wake_at, "
    "suspend_reason, suspend_data, suspended_step, resume_data, error, failed_stage, failed_action, "
    "bail_reason, steps"
)


def as_schema_2(db_path: Path, *, version: int = 2) -> None:
    """Rewrite the file's tables as schema 2 (or 1) had them, its runs and checkpoints kept."""
    columns = SCHEMA_2_RUN_COLUMNS
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.executescript(
            f"""
            BEGIN;
            {SCHEMA_2_TABLES}
            INSERT INTO runs_v2 ({columns}) SELECT {columns} FROM runs;
            INSERT INTO checkpoints_v2
                SELECT r.run_id, c.seq, c.step_key, c.kind, c.changes, c.ops, c.attempts, c.at
                FROM checkpoints AS c JOIN runs AS r USING (run_no);
            DROP TABLE checkpoints;
            DROP TABLE runs;
            DROP TABLE workflow_versions;
            ALTER TABLE runs_v2 RENAME TO runs;
            ALTER TABLE checkpoints_v2 RENAME TO checkpoints;
            CREATE INDEX runs_by_created ON runs (created_at DESC, run_id DESC);
            CREATE INDEX runs_by_status ON runs (status, lease_until);
            UPDATE asyncflow_meta SET value = '{version}' WHERE key = 'schema_version';
            COMMIT;
            """
        )
    finally:
        conn.close()


# ---- recovery of an interrupted run ----------------------------------------------------------


async def test_interrupted_run_stays_running_with_no_owner(url: str) -> None:
    """Leaving the engine's block while a run is in flight leaves it RUNNING with its lease released."""
    run_id = await interrupt(url, flows.BASIC)
    info = await info_of(url, run_id)
    assert info.status is af.RunStatus.RUNNING
    assert (info.owner, info.lease_until) == (None, None)


async def test_new_engine_completes_an_interrupted_run(url: str) -> None:
    """A new engine on the same file resumes the interrupted run and completes it."""
    run_id = await interrupt(url, flows.BASIC)
    result = await finish(url, run_id, flows.BASIC)
    assert result.status is af.RunStatus.COMPLETED
    assert result.store == {"one": 1, "hang": "done", "after": True, "s2": True}
    assert (await info_of(url, run_id)).status is af.RunStatus.COMPLETED


async def test_recovery_runs_completed_actions_once_and_the_one_in_flight_twice(url: str) -> None:
    """After recovery, actions completed before the interruption ran once, the one in flight twice."""
    run_id = await interrupt(url, flows.BASIC)
    await finish(url, run_id, flows.BASIC)
    assert {label: len(runs) for label, runs in flows.LEDGER.items()} == {
        "step-one": 1,
        "hang": 2,
        "after": 1,
        "s2": 1,
    }


async def test_action_in_flight_gets_the_same_idempotency_key_again(url: str) -> None:
    """The re-executed action sees the same ctx.idempotency_key as on its first execution."""
    run_id = await interrupt(url, flows.BASIC)
    await finish(url, run_id, flows.BASIC)
    first, second = flows.LEDGER["hang"]
    assert first == second
    assert first.startswith(run_id)


async def test_idempotency_keys_differ_between_steps(url: str) -> None:
    """Different steps of a run get different idempotency keys."""
    run_id = await interrupt(url, flows.BASIC)
    await finish(url, run_id, flows.BASIC)
    keys = [flows.LEDGER[label][0] for label in ("step-one", "hang", "after", "s2")]
    assert len(set(keys)) == 4


async def test_writes_of_the_interrupted_action_are_not_kept(url: str) -> None:
    """What the action in flight wrote before the interruption is not in the recovered store."""
    run_id = await interrupt(url, flows.BASIC)
    result = await finish(url, run_id, flows.BASIC)
    assert "hang.partial" not in result.store


async def test_each_completed_action_is_committed_before_the_next_runs(db_path: Path, url: str) -> None:
    """While an action runs, the file already holds the earlier action's checkpoint and store change."""
    async with make_engine(url, flows.BASIC) as engine:
        handle = await engine.start(flows.BASIC)
        with anyio.fail_after(5):
            await flows.gate("hang").wait()
        async with af.backends.SQLiteBackend(db_path) as reader:
            saved = await reader.load(handle.run_id)
    assert saved is not None
    assert [(c.kind, c.step_key) for c in saved.checkpoints if c.kind == "action"] == [("action", "s1/0")]
    assert {entry.key: json.loads(entry.value) for entry in saved.store} == {"one": 1}


async def test_plan_changes_are_committed_with_the_action_that_made_them(db_path: Path, url: str) -> None:
    """While a later action runs, the checkpoint of the reshaping action already holds its plan changes."""
    async with make_engine(url, flows.RESHAPE) as engine:
        handle = await engine.start(flows.RESHAPE)
        with anyio.fail_after(5):
            await flows.gate("hang").wait()
        async with af.backends.SQLiteBackend(db_path) as reader:
            saved = await reader.load(handle.run_id)
    assert saved is not None
    ops = {c.step_key: c.ops for c in saved.checkpoints if c.kind == "action"}
    assert set(ops) == {"a/0", "a/0.0"}
    assert [op["op"] for op in json.loads(ops["a/0"])] == ["disable_stage", "action", "stage"]


async def test_recovery_replays_plan_changes_so_the_plan_is_the_same(url: str) -> None:
    """disable_stage, add_dynamic_action and add_dynamic_stage of a completed action are replayed."""
    run_id = await interrupt(url, flows.RESHAPE)
    result = await finish(url, run_id, flows.RESHAPE)
    assert result.status is af.RunStatus.COMPLETED
    assert result.stage_order() == ["a", "extra", "b"]
    skipped = [s for s in result.steps if s.stage_id == "skipme"]
    assert [(s.kind, s.status) for s in skipped] == [("stage", af.StepStatus.SKIPPED)]
    assert result.store == {"dyn-child": True, "hang": "done", "extra-action": "x", "b": True}


async def test_recovery_replays_enables_and_removals(url: str) -> None:
    """Enables, removals and a disable_action in one stage made before a restart are replayed as made."""
    run_id = await interrupt(url, flows.REPLAN)
    result = await finish(url, run_id, flows.REPLAN)
    assert result.status is af.RunStatus.COMPLETED
    assert result.stage_order() == ["a", "later-on", "b", "opt", "c"]
    assert set(flows.LEDGER) == {
        "switch-off",
        "switch-on",
        "hang",
        "later-on",
        "late-on@b",
        "opt-stage",
        "dropped@c",
        "skip-me@c",
        "optional@c",
    }
    assert {label: len(runs) for label, runs in flows.LEDGER.items() if label != "hang"} == dict.fromkeys(
        set(flows.LEDGER) - {"hang"}, 1
    )


async def test_replayed_insertions_are_not_run_again(url: str) -> None:
    """An action inserted and completed before the interruption is not run again after it."""
    run_id = await interrupt(url, flows.RESHAPE)
    await finish(url, run_id, flows.RESHAPE)
    assert {label: len(runs) for label, runs in flows.LEDGER.items()} == {
        "reshape": 1,
        "dyn-child": 1,
        "hang": 2,
        "extra-action": 1,
        "b": 1,
    }


async def test_replayed_steps_keep_one_attempt(url: str) -> None:
    """A step replayed after a restart is recorded with the one attempt it took before it."""
    run_id = await interrupt(url, flows.RESHAPE)
    result = await finish(url, run_id, flows.RESHAPE)
    replayed = [
        (s.action_name, s.attempts) for s in result.steps if s.reason == "completed in an earlier execution"
    ]
    assert replayed == [("reshape", 1), ("record", 1)]


async def test_replayed_steps_are_recorded_as_completed_earlier(url: str) -> None:
    """The recovered run's records mark the replayed steps completed in an earlier execution, dynamic kept."""
    run_id = await interrupt(url, flows.RESHAPE)
    result = await finish(url, run_id, flows.RESHAPE)
    replayed = [
        (s.action_name, s.dynamic) for s in result.steps if s.reason == "completed in an earlier execution"
    ]
    assert replayed == [("reshape", False), ("record", True)]


async def test_recovered_actions_of_an_inserted_stage_keep_its_depth_and_are_dynamic(url: str) -> None:
    """After a restart, the replayed and the re-run actions of an inserted stage are dynamic at its depth."""
    run_id = await interrupt(url, flows.INSERTED_STAGE)
    result = await finish(url, run_id, flows.INSERTED_STAGE)
    expected = [
        ("stage", "a", None, False, 0),
        ("action", "a", "insert-hanging-stage", False, 0),
        ("stage", "extra", None, True, 1),
        ("action", "extra", "record", True, 1),
        ("action", "extra", "hang-once", True, 1),
    ]
    assert [(s.kind, s.stage_id, s.action_name, s.dynamic, s.depth) for s in result.steps] == expected
    stored = (await info_of(url, run_id)).steps
    assert stored is not None
    stored_fields = [(s["kind"], s["stage_id"], s["action_name"], s["dynamic"], s["depth"]) for s in stored]
    assert stored_fields == expected


async def test_recover_false_leaves_interrupted_runs_alone(db_path: Path, url: str) -> None:
    """An engine opened with recover=False neither resumes an interrupted run nor claims it."""
    run_id = await interrupt(url, flows.BASIC)
    counted = flows.CountingSQLite(db_path)
    async with make_engine(counted, flows.BASIC, recover=False) as engine:
        heartbeats = counted.heartbeats
        await flows.eventually(lambda: counted.heartbeats >= heartbeats + 6)  # several poll intervals
        info = await engine.get_run(run_id)
    assert info.status is af.RunStatus.RUNNING
    assert info.owner is None
    assert flows.runs_of("hang") == 1
    result = await finish(url, run_id, flows.BASIC)
    assert result.status is af.RunStatus.COMPLETED


async def test_a_draining_engine_takes_no_more_runs(db_path: Path, url: str) -> None:
    """After engine.drain, the engine's passes claim nothing: a run given back meanwhile waits for another."""
    counted = flows.CountingSQLite(db_path)
    async with make_engine(counted, flows.BASIC) as draining:
        await draining.drain(0)
        claims = counted.claims
        run_id = await interrupt(url, flows.BASIC)
        heartbeats = counted.heartbeats
        await flows.eventually(lambda: counted.heartbeats >= heartbeats + 6)  # several poll intervals
        info = await draining.get_run(run_id)
    assert counted.claims == claims
    assert (info.status, info.owner, flows.runs_of("hang")) == (af.RunStatus.RUNNING, None, 1)


async def test_unknown_workflow_on_recovery_is_left_for_an_engine_that_has_it(url: str) -> None:
    """A recovered run of an unregistered workflow waits, held by nobody; an engine with it finishes it."""
    async with make_engine(url, flows.BASIC, flows.OTHER) as engine:
        lost = await engine.start(flows.BASIC)
        kept = await engine.start(flows.OTHER)
        with anyio.fail_after(5):
            await flows.gate("hang").wait()
            await flows.gate("other").wait()
    async with make_engine(url, flows.OTHER) as engine:
        with anyio.fail_after(5):
            kept_result = await engine.wait(kept.run_id)
            while True:
                if (await engine.get_run(lost.run_id)).status is af.RunStatus.PENDING:
                    break
                await anyio.sleep(0.01)
        lost_info = await engine.get_run(lost.run_id)
    assert kept_result.status is af.RunStatus.COMPLETED
    assert lost_info.owner is None
    assert lost_info.error is None
    assert flows.runs_of("hang") == 1
    result = await finish(url, lost.run_id, flows.BASIC)
    assert result.status is af.RunStatus.COMPLETED


async def test_runs_of_a_workflow_not_registered_are_left_with_one_warning_per_workflow(
    url: str, asyncflow_log: list[dict[str, Any]]
) -> None:
    """Runs of a workflow an engine has not registered: one warning naming a run and the workflow, and why."""
    async with make_engine(url, flows.BLOCKING) as engine:
        handles = [await engine.start(flows.BLOCKING) for _ in range(2)]
        await flows.eventually(lambda: flows.runs_of("block") == 2)
    async with make_engine(url, flows.QUICK) as engine:

        async def both_left() -> bool:
            infos = [await engine.get_run(h.run_id) for h in handles]
            return all(i.status is af.RunStatus.PENDING and i.owner is None for i in infos)

        await flows.eventually(both_left)
    warnings = [r for r in asyncflow_log if "not registered with this engine" in r["message"]]
    assert [r["level"].name for r in warnings] == ["WARNING"]
    assert warnings[0]["message"] in {
        f"run {h.run_id} is of workflow 'blocking', which is not registered with this engine; it is left "
        f"for an engine that has it (engine.register(workflow) to run it here)"
        for h in handles
    }
    left = [r["message"] for r in asyncflow_log if "This engine leaves the run as it is" in r["message"]]
    assert left
    assert all(", and workflow 'blocking' is not registered here. " in message for message in left)


async def test_unknown_action_reference_on_recovery_fails_the_run(url: str) -> None:
    """A replayed insertion of an action the new registry lacks fails the run (UnknownReference, where)."""
    first_registry = af.Registry()
    first_registry.register(flows.ONLY_IN_FIRST_REGISTRY)
    run_id = await interrupt(url, flows.INSERTS_REGISTERED, "only-in-first", registry=first_registry)
    result = await finish(url, run_id, flows.INSERTS_REGISTERED, registry=af.Registry())
    info = await info_of(url, run_id)
    assert result.status is af.RunStatus.FAILED
    assert info.status is af.RunStatus.FAILED
    assert info.error is not None
    assert info.error.startswith("UnknownReference: ")
    assert "only-in-first-registry" in info.error
    assert "replaying action 'insert-registered' of stage" in info.error
    assert flows.runs_of("insert-registered") == 1
    assert flows.runs_of("after") == 0


async def test_unknown_reference_in_a_replayed_stage_insertion_names_where(url: str) -> None:
    """A replayed stage insertion with an action the new registry lacks fails the run, naming the inserter."""
    first_registry = af.Registry()
    first_registry.register(flows.ONLY_IN_FIRST_REGISTRY)
    run_id = await interrupt(url, flows.INSERTS_REGISTERED_STAGE, "only-in-first", registry=first_registry)
    result = await finish(url, run_id, flows.INSERTS_REGISTERED_STAGE, registry=af.Registry())
    info = await info_of(url, run_id)
    assert result.status is af.RunStatus.FAILED
    assert info.error is not None
    assert info.error.startswith("UnknownReference: ")
    assert "'only-in-first-registry'" in info.error
    assert "replaying action 'insert-registered-stage' of stage 's'" in info.error


async def test_unknown_action_reference_is_reported_as_the_replaying_actions_failure(url: str) -> None:
    """A run failed by an unknown reference names the replayed action as failed (an ActionFailed)."""
    first_registry = af.Registry()
    first_registry.register(flows.ONLY_IN_FIRST_REGISTRY)
    run_id = await interrupt(url, flows.INSERTS_REGISTERED, "only-in-first", registry=first_registry)
    await finish(url, run_id, flows.INSERTS_REGISTERED, registry=af.Registry())
    info = await info_of(url, run_id)
    assert (info.failed_stage, info.failed_action) == ("s", "insert-registered")


async def test_same_registry_in_the_new_engine_recovers_the_insertion(url: str) -> None:
    """With the registered action in the new engine's registry too, the replayed insertion resolves."""
    registry = af.Registry()
    registry.register(flows.ONLY_IN_FIRST_REGISTRY)
    run_id = await interrupt(url, flows.INSERTS_REGISTERED, "only-in-first", registry=registry)
    async with make_engine(url, flows.INSERTS_REGISTERED, registry=registry) as engine:
        await flows.eventually(lambda: flows.runs_of("only-in-first") == 2)
        await engine.cancel(run_id)
    assert flows.runs_of("insert-registered") == 1
    first, second = flows.LEDGER["only-in-first"]
    assert first == second


# ---- leases ----------------------------------------------------------------------------------


async def test_run_with_a_fresh_lease_is_not_claimed_by_a_second_engine(db_path: Path, url: str) -> None:
    """Engine B opened on the file while engine A holds a run never runs it, even past A's first lease."""
    options: dict[str, Any] = {"lease": 2.0, "poll_interval": 0.2}
    async with make_engine(url, flows.BLOCKING, owner="engine-a", **options) as a:
        handle = await a.start(flows.BLOCKING)
        with anyio.fail_after(5):
            await flows.gate("block").wait()
        first_lease = (await a.get_run(handle.run_id)).lease_until
        assert first_lease is not None
        counted = flows.CountingSQLite(db_path)
        async with make_engine(counted, flows.BLOCKING, owner="engine-b", **options) as b:
            # Past the lease A took at start (only A's heartbeats keep it), and B has looked since.
            await flows.eventually(lambda: time.time() > first_lease, within=30)
            await counted.passes(2)
            info = await b.get_run(handle.run_id)
            assert flows.runs_of("block") == 1
            flows.gate("block.release").set()
            result = await a.wait(handle.run_id)
    assert info.owner == "engine-a"
    assert info.status is af.RunStatus.RUNNING
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("block") == 1


async def test_run_released_by_one_engine_is_taken_over_by_another_open_engine(url: str) -> None:
    """When engine A closes mid-run, engine B, already open on the file, takes the run over and ends it."""
    async with make_engine(url, flows.BASIC, owner="engine-b") as b:
        async with make_engine(url, flows.BASIC, owner="engine-a") as a:
            handle = await a.start(flows.BASIC)
            with anyio.fail_after(5):
                await flows.gate("hang").wait()
        with anyio.fail_after(5):
            result = await b.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("hang") == 2
    assert flows.runs_of("step-one") == 1


# ---- suspend and resume across engines ------------------------------------------------------


async def test_closing_engine_reports_its_runs_interrupted_not_cancelled(url: str) -> None:
    """An engine closing mid-run tells listeners RUN_INTERRUPTED; the run stays RUNNING for a take-over."""
    runner = af.Runner()
    seen: list[af.Event] = []
    runner.on_event(seen.append)
    async with make_engine(url, flows.BASIC, runner=runner) as engine:
        handle = await engine.start(flows.BASIC)
        with anyio.fail_after(5):
            await flows.gate("hang").wait()
    kinds = [event.kind for event in seen if event.run_id == handle.run_id]
    assert kinds[-1] is af.EventKind.RUN_INTERRUPTED
    assert af.EventKind.RUN_FINISHED not in kinds
    assert (await info_of(url, handle.run_id)).status is af.RunStatus.RUNNING


async def test_suspended_run_resumes_in_another_engine(url: str) -> None:
    """A run suspended in engine 1 is resumed in engine 2 on the same file, with the resume data."""
    async with make_engine(url, flows.APPROVAL) as first:
        handle = await first.start(flows.APPROVAL)
        assert (await handle.result()).status is af.RunStatus.SUSPENDED
    async with make_engine(url, flows.APPROVAL) as second:
        info = await second.get_run(handle.run_id)
        resumed = await second.resume(handle.run_id, {"approved_by": "ann"})
        with anyio.fail_after(5):
            result = await resumed.result()
    assert (info.status, info.suspend_data) == (af.RunStatus.SUSPENDED, {"amount": 5})
    assert result.status is af.RunStatus.COMPLETED
    assert result.store == {"one": 1, "approved": {"approved_by": "ann"}, "after": True}
    assert [(resuming, data) for resuming, data, _ in flows.LEDGER["approve"]] == [
        (False, None),
        (True, {"approved_by": "ann"}),
    ]
    assert flows.runs_of("step-one") == 1


async def test_opening_an_engine_does_not_resume_a_suspended_run(db_path: Path, url: str) -> None:
    """Recovery leaves a suspended run suspended until engine.resume is called."""
    async with make_engine(url, flows.APPROVAL) as first:
        handle = await first.start(flows.APPROVAL)
        await handle.result()
    counted = flows.CountingSQLite(db_path)
    async with make_engine(counted, flows.APPROVAL) as second:
        await counted.passes(3)  # it looked for runs three times
        info = await second.get_run(handle.run_id)
    assert info.status is af.RunStatus.SUSPENDED
    assert flows.runs_of("approve") == 1


async def test_resumed_run_keeps_the_timings_of_steps_it_replayed(url: str) -> None:
    """After a resume, replayed steps keep the durations recorded by the execution that ran them."""
    async with make_engine(url, flows.APPROVAL) as engine:
        handle = await engine.start(flows.APPROVAL)
        await handle.result()
        before = {s["action_name"]: s["duration"] for s in (await engine.get_run(handle.run_id)).steps or []}
        resumed = await engine.resume(handle.run_id, {"approved_by": "ann"})
        with anyio.fail_after(5):
            await resumed.result()
        after = {s["action_name"]: s for s in (await engine.get_run(handle.run_id)).steps or []}
    assert after["step-one"]["reason"] == "completed in an earlier execution"
    assert after["step-one"]["duration"] == before["step-one"] > 0


async def test_resume_without_the_workflow_registered_leaves_the_run_suspended(url: str) -> None:
    """Resuming in an engine that lacks the run's workflow raises af.UnknownWorkflow, changing nothing."""
    async with make_engine(url, flows.APPROVAL) as first:
        handle = await first.start(flows.APPROVAL)
        await handle.result()
    async with make_engine(url, flows.BASIC) as other:
        with pytest.raises(af.UnknownWorkflow, match=r"engine\.register"):
            await other.resume(handle.run_id, {"approved_by": "ann"})
        info = await other.get_run(handle.run_id)
    assert info.status is af.RunStatus.SUSPENDED
    assert info.resume_data is None


async def test_resume_data_must_be_json(url: str) -> None:
    """engine.resume with data that is not JSON raises af.NotSerializable and leaves the run suspended."""
    async with make_engine(url, flows.APPROVAL) as engine:
        handle = await engine.start(flows.APPROVAL)
        await handle.result()
        with pytest.raises(af.NotSerializable, match=f"resume data for run '{handle.run_id}'"):
            await engine.resume(handle.run_id, {"when": object()})
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.SUSPENDED


# ---- durable sleep across a restart ---------------------------------------------------------


async def is_sleeping(engine: af.Engine, run_id: str) -> bool:
    """Whether the run's status is SLEEPING."""
    return (await engine.get_run(run_id)).status is af.RunStatus.SLEEPING


async def start_sleeping(url: str) -> str:
    """Start SLEEPY on a FakeClock, wait until it sleeps, close the engine; the run id."""
    clock = FakeClock(START)
    async with make_engine(url, flows.SLEEPY, clock=clock) as engine:
        handle = await engine.start(flows.SLEEPY)
        await flows.eventually(lambda: is_sleeping(engine, handle.run_id))
    return handle.run_id


async def test_sleeping_run_survives_the_engine_closing(url: str) -> None:
    """A run closed while sleeping stays SLEEPING in the database, with its wake time."""
    run_id = await start_sleeping(url)
    info = await info_of(url, run_id)
    assert info.status is af.RunStatus.SLEEPING
    assert info.wake_at == START + 100


async def test_sleep_past_its_wake_time_completes_without_sleeping_again(url: str) -> None:
    """A new engine whose clock is past the wake time completes the run at once, without a new sleep."""
    run_id = await start_sleeping(url)
    clock = FakeClock(START + 500)
    async with make_engine(url, flows.SLEEPY, clock=clock) as engine:
        with anyio.fail_after(5):
            result = await engine.wait(run_id)
        assert clock.sleepers == 0
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("before") == 1
    assert flows.runs_of("woke") == 1


async def test_sleep_not_yet_due_waits_only_what_is_left(url: str) -> None:
    """A new engine 90 s into a 100 s sleep wakes the run once its clock passes the original wake time."""
    run_id = await start_sleeping(url)
    clock = FakeClock(START + 90)
    async with make_engine(url, flows.SLEEPY, clock=clock) as engine:
        await flows.eventually(lambda: clock.sleepers == 1)
        assert (await engine.get_run(run_id)).status is af.RunStatus.SLEEPING
        await clock.advance(10)
        with anyio.fail_after(5):
            result = await engine.wait(run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("woke") == 1


async def test_a_run_that_woke_is_running_again_in_the_database(url: str) -> None:
    """Once its sleep is over and the next action runs, the run's status reads RUNNING again."""
    clock = FakeClock(START)
    async with make_engine(url, flows.SLEEPY_THEN_HANG, clock=clock) as engine:
        handle = await engine.start(flows.SLEEPY_THEN_HANG)
        await flows.eventually(lambda: is_sleeping(engine, handle.run_id))
        await clock.advance(100)
        with anyio.fail_after(5):
            await flows.gate("hang").wait()
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.RUNNING


async def test_a_run_that_sleeps_twice_wakes_at_each_sleep_s_own_time(url: str) -> None:
    """A second durable sleep in one run is kept with its own wake time, and the run completes."""
    clock = FakeClock(START)
    async with make_engine(url, flows.SLEEPS_TWICE, clock=clock) as engine:
        handle = await engine.start(flows.SLEEPS_TWICE)
        await flows.eventually(lambda: is_sleeping(engine, handle.run_id))
        await clock.advance(100)
        await flows.eventually(lambda: flows.runs_of("between") == 1)
        await flows.eventually(lambda: is_sleeping(engine, handle.run_id))
        assert (await engine.get_run(handle.run_id)).wake_at == START + 150
        await clock.advance(50)
        with anyio.fail_after(5):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("woke") == 1


async def test_a_retried_sleep_wakes_at_its_first_attempt_s_wake_time(url: str) -> None:
    """A sleep timed out and retried in the same execution waits for the wake time first stored, not anew."""
    async with make_engine(url, flows.SLEEP_OUTLASTS_ITS_LIMIT) as engine:
        handle = await engine.start(flows.SLEEP_OUTLASTS_ITS_LIMIT)
        with anyio.fail_after(10):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("woke") == 1


# ---- persisted retries ---------------------------------------------------------------------


async def fail_twice_then_close(url: str, workflow: af.Workflow, label: str) -> str:
    """Run ``workflow`` until its action failed twice and waits out its 100 s back-off; close; the run id."""
    clock = FakeClock(START)
    async with make_engine(url, workflow, clock=clock) as engine:
        handle = await engine.start(workflow)
        await flows.eventually(lambda: flows.runs_of(label) == 1 and clock.sleepers == 1)
        await clock.advance(100)
        await flows.eventually(lambda: flows.runs_of(label) == 2 and clock.sleepers == 1)
    return handle.run_id


async def test_attempt_count_survives_a_restart(url: str) -> None:
    """After two failed attempts and a restart during the back-off, the next attempt is number 3."""
    run_id = await fail_twice_then_close(url, flows.FLAKY, "flaky")
    async with make_engine(url, flows.FLAKY, clock=FakeClock(START + 1000)) as engine:
        with anyio.fail_after(5):
            result = await engine.wait(run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert result.store == {"flaky": 3}
    assert [attempt for attempt, _ in flows.LEDGER["flaky"]] == [1, 2, 3]


async def test_no_attempt_beyond_the_limit_after_a_restart(url: str) -> None:
    """An action with Retry(attempts=3) that failed twice before a restart gets one more attempt, not two."""
    run_id = await fail_twice_then_close(url, flows.ALWAYS_FAILS, "always-fails")
    async with make_engine(url, flows.ALWAYS_FAILS, clock=FakeClock(START + 1000)) as engine:
        with anyio.fail_after(5):
            result = await engine.wait(run_id)
    assert result.status is af.RunStatus.FAILED
    assert flows.LEDGER["always-fails"] == [1, 2, 3]


async def test_retries_keep_the_idempotency_key_across_a_restart(url: str) -> None:
    """Every attempt of a retried action, before and after a restart, sees the same idempotency key."""
    run_id = await fail_twice_then_close(url, flows.FLAKY, "flaky")
    await finish(url, run_id, flows.FLAKY, clock=FakeClock(START + 1000))
    assert len({key for _, key in flows.LEDGER["flaky"]}) == 1


async def test_back_off_not_yet_over_is_waited_out_after_a_restart(url: str) -> None:
    """A new engine whose clock is before the next attempt's due time waits for it before attempt 3."""
    run_id = await fail_twice_then_close(url, flows.FLAKY, "flaky")
    clock = FakeClock(START + 150)  # attempt 2 failed at START + 100; attempt 3 is due at START + 200
    async with make_engine(url, flows.FLAKY, clock=clock) as engine:
        await flows.eventually(lambda: clock.sleepers == 1)
        assert flows.runs_of("flaky") == 2
        await clock.advance(50)
        with anyio.fail_after(5):
            result = await engine.wait(run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert [attempt for attempt, _ in flows.LEDGER["flaky"]] == [1, 2, 3]


# ---- store values must be JSON -----------------------------------------------------------------


async def test_json_values_round_trip_exactly_through_a_restart(url: str) -> None:
    """Ints, floats, strings, bools, None, lists and dicts written before a restart read back identical."""
    run_id = await interrupt(url, flows.JSON_ROUND_TRIP)
    result = await finish(url, run_id, flows.JSON_ROUND_TRIP)
    assert result.status is af.RunStatus.COMPLETED
    [read] = flows.LEDGER["read-json"]
    for key, value in flows.JSON_VALUES.items():
        assert same_json(read[key], value), (key, read[key], value)
        assert same_json(result.store[key], value), (key, result.store[key], value)


async def test_tuple_in_the_store_reads_back_as_a_list_after_a_restart(url: str) -> None:
    """A tuple is stored as a JSON array: after a restart it reads back as a list (documented conversion)."""
    run_id = await interrupt(url, flows.JSON_ROUND_TRIP)
    result = await finish(url, run_id, flows.JSON_ROUND_TRIP)
    assert flows.LEDGER["read-tuple"] == [[1, "a"]]
    assert type(result.store["pair"]) is list


async def test_a_stage_s_initial_values_are_in_a_durable_run_s_store_and_database(url: str) -> None:
    """A stage's ``initial`` values are merged into a durable run's store; a new engine reads them back."""
    run_id, result = await run_here(url, flows.STAGE_WITH_INITIAL)
    stored = await finish(url, run_id, flows.STAGE_WITH_INITIAL)
    assert result.store == stored.store == {"region": "eu", "a": True}


async def test_repr_of_a_result_read_from_the_database_counts_its_steps(url: str) -> None:
    """repr of a RunResult a new engine reads from the database shows the steps recorded there."""
    run_id, _ = await run_here(url, flows.QUICK)
    async with make_engine(url, flows.QUICK) as engine:
        with anyio.fail_after(5):
            result = await engine.wait(run_id)
    assert repr(result) == f"<RunResult {run_id} workflow='quick' status=completed steps=2>"


async def test_json_values_round_trip_through_the_database_result(url: str) -> None:
    """A run's final store read back by another engine (from the database) keeps every JSON type."""
    wf = af.Workflow("json-only", stages=[af.Stage("s", actions=[flows.write_json_values])])
    async with make_engine(url, wf) as engine:
        handle = await engine.start(wf)
        await handle.result()
    async with make_engine(url, wf) as engine:
        result = await engine.wait(handle.run_id)
    assert same_json(result.store, flows.JSON_VALUES)


async def refused_write(url: str, workflow: af.Workflow) -> str:
    """Run ``workflow``, whose action writes what the store refuses: the message raised at the write.

    The line after the write did not run, and the run failed.
    """
    _, result = await run_here(url, workflow)
    [message] = flows.LEDGER["not-serializable"]
    assert flows.runs_of("after-write") == 0
    assert result.status is af.RunStatus.FAILED
    return str(message)


async def test_non_json_store_write_fails_at_the_write_naming_the_key(url: str) -> None:
    """ctx.store["bad.key"] = object() raises af.NotSerializable naming the key at that line."""
    message = await refused_write(url, flows.NOT_JSON)
    assert "'bad.key'" in message
    assert "JSON" in message


async def test_non_json_store_write_is_recorded_as_the_actions_failure(url: str) -> None:
    """The run failed by a non-JSON write records NotSerializable and the action that wrote it."""
    async with make_engine(url, flows.NOT_JSON) as engine:
        handle = await engine.start(flows.NOT_JSON)
        await handle.result()
        info = await engine.get_run(handle.run_id)
    assert info.error is not None
    assert info.error.startswith("NotSerializable: ")
    assert "bad.key" in info.error
    assert (info.failed_stage, info.failed_action) == ("s", "write-object")


async def test_dict_with_non_string_keys_is_refused_at_the_write(url: str) -> None:
    """A store value holding a dict keyed by ints (JSON would give back "1") fails at the write, saying so."""
    message = await refused_write(url, flows.INT_KEYS)
    assert "'counts'" in message
    assert "dict key 1 is not a string (int): JSON would give it back as the string '1'" in message


@pytest.mark.parametrize("key", [1, 1.5, True, None])
async def test_initial_store_with_non_string_dict_keys_is_refused_by_start(url: str, key: object) -> None:
    """engine.start(store=...) refuses a dict keyed by a number, a bool or None, naming the key; no run."""
    async with make_engine(url, flows.QUICK) as engine:
        with pytest.raises(af.NotSerializable, match=f"dict key {key!r} is not a string"):
            await engine.start(flows.QUICK, store={"given": [{key: "x"}]})
        assert (await engine.list_runs()).runs == []


async def test_suspend_data_with_non_string_dict_keys_fails_the_action(url: str) -> None:
    """ctx.suspend with data keyed by ints fails the action with af.NotSerializable; nothing is suspended."""
    run_id, result = await run_here(url, flows.SUSPENDS_WITH_INT_KEYS)
    info = await info_of(url, run_id)
    assert result.status is af.RunStatus.FAILED
    assert info.error is not None
    assert info.error.startswith("NotSerializable: suspend data of action 'suspend-with-int-keys'")
    assert "dict key 7 is not a string" in info.error


@pytest.mark.parametrize(
    ("workflow", "why"),
    [
        pytest.param(flows.RAISES_SUSPEND_WITH_INT_KEYS, "dict key 7 is not a string", id="int-keys"),
        pytest.param(flows.RAISES_SUSPEND_WITH_AN_OBJECT, "not JSON serializable", id="object"),
        pytest.param(
            flows.RAISES_SUSPEND_WITH_INT_KEYS_TIMED, "dict key 7 is not a string", id="with-timeout"
        ),
    ],
)
async def test_suspend_raised_directly_with_data_the_run_cannot_keep_fails_the_action(
    url: str, workflow: af.Workflow, why: str
) -> None:
    """raise af.Suspend(reason, data), not through ctx.suspend, is held to the same rule: the action fails."""
    run_id, result = await run_here(url, workflow)
    info = await info_of(url, run_id)
    assert result.status is info.status is af.RunStatus.FAILED
    assert info.error is not None
    assert info.error.startswith("NotSerializable: suspend data of action")
    assert why in info.error


async def test_resume_data_with_non_string_dict_keys_is_refused(url: str) -> None:
    """engine.resume with data keyed by ints raises af.NotSerializable; the run stays suspended."""
    async with make_engine(url, flows.APPROVAL) as engine:
        handle = await engine.start(flows.APPROVAL)
        await handle.result()
        with pytest.raises(af.NotSerializable, match="dict key 3 is not a string"):
            await engine.resume(handle.run_id, {"items": {3: "c"}})
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.SUSPENDED


async def test_message_payload_with_non_string_dict_keys_fails_the_send(url: str) -> None:
    """In a durable run, ctx.send of a payload keyed by ints raises af.NotSerializable naming the kind."""
    run_id, _ = await run_here(url, flows.SENDS_INT_KEYS)
    info = await info_of(url, run_id)
    assert info.error is not None
    assert info.error.startswith("NotSerializable: payload of message 'progress'")
    assert "dict key 1 is not a string" in info.error


async def test_non_json_initial_store_is_refused_by_start(url: str) -> None:
    """engine.start(store={...}) with a value that is not JSON raises af.NotSerializable naming the key."""
    async with make_engine(url, flows.QUICK) as engine:
        with pytest.raises(af.NotSerializable, match="'when'"):
            await engine.start(flows.QUICK, store={"when": {1, 2}})
        assert (await engine.list_runs()).runs == []


def nested(depth: int) -> list[Any]:
    """A list nested ``depth`` deep: ``[[[...]]]``."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


BEYOND_JSON = [
    pytest.param(10**5000, "digits", id="huge-int"),
    pytest.param([1, -(10**5000)], "digits", id="huge-int-inside"),
    pytest.param(nested(5000), "nested", id="nested-5000-deep"),
    pytest.param(float("nan"), "NaN", id="nan"),
    pytest.param(float("inf"), "infinity", id="inf"),
    pytest.param({"x": [float("-inf")]}, "infinity", id="minus-inf-inside"),
]


@pytest.mark.parametrize(("value", "why"), BEYOND_JSON)
async def test_start_refuses_a_value_beyond_json_naming_its_key(url: str, value: Any, why: str) -> None:
    """Huge ints, 5,000-deep nesting, NaN and infinity raise af.NotSerializable naming the key."""
    async with make_engine(url, flows.QUICK) as engine:
        with pytest.raises(af.NotSerializable, match=f"'odd'.*{why}"):
            await engine.start(flows.QUICK, store={"odd": value})
        assert (await engine.list_runs()).runs == []


async def test_tags_and_properties_of_an_entry_survive_a_restart(url: str) -> None:
    """An entry's tags and properties written before a restart are there after it."""
    run_id = await interrupt(url, flows.METADATA_ACROSS_A_RESTART)
    result = await finish(url, run_id, flows.METADATA_ACROSS_A_RESTART)
    assert result.status is af.RunStatus.COMPLETED
    assert flows.LEDGER["read-tagged"] == [(["tagged"], {"p": "v"})]


async def test_merge_in_a_durable_run_refuses_a_value_that_is_not_json(url: str) -> None:
    """ctx.store.merge in a durable run raises af.NotSerializable naming the key, as a write does."""
    _, result = await run_here(url, flows.MERGES_NOT_JSON)
    assert result.status is af.RunStatus.COMPLETED
    [message] = flows.LEDGER["merge-refused"]
    assert "'when'" in message


async def test_a_wide_shallow_value_of_many_containers_is_kept(url: str) -> None:
    """A value of more than 1,000 containers nested two deep is no deep nesting: a durable run keeps it."""
    wide = {"rows": [[i] for i in range(1500)], "maps": [{"k": [i]} for i in range(10)]}
    async with make_engine(url, flows.QUICK) as engine:
        handle = await engine.start(flows.QUICK, store={"wide": wide})
        result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["wide"] == wide


@pytest.mark.skipif(
    sys.version_info < (3, 13), reason="the JSON encoder of Python 3.11 and 3.12 stops short of 1,000 levels"
)
async def test_the_nesting_bound_keeps_1000_levels_and_refuses_1001(url: str) -> None:
    """A value nested 1,000 deep, the bound, is kept; one nested 1,001 deep is af.NotSerializable.

    (Each with more than 1,000 brackets, so that the depth is walked, not told by the count.)
    """
    async with make_engine(url, flows.QUICK) as engine:
        handle = await engine.start(flows.QUICK, store={"deep": [nested(999), []]})
        assert (await handle.result()).status is af.RunStatus.COMPLETED
        with pytest.raises(af.NotSerializable, match=r"'deeper'.*nested too deep"):
            await engine.start(flows.QUICK, store={"deeper": {"in": [nested(999), []]}})


@pytest.mark.parametrize(("value", "why"), BEYOND_JSON)
async def test_resume_refuses_data_beyond_json(url: str, value: Any, why: str) -> None:
    """engine.resume with a huge int, deep nesting, NaN or infinity raises af.NotSerializable."""
    async with make_engine(url, flows.APPROVAL) as engine:
        handle = await engine.start(flows.APPROVAL)
        await handle.result()
        with pytest.raises(af.NotSerializable, match=why):
            await engine.resume(handle.run_id, {"items": value})
        assert (await engine.get_run(handle.run_id)).status is af.RunStatus.SUSPENDED


async def test_in_memory_runs_keep_nan_and_infinity() -> None:
    """A run without a database keeps NaN and infinity in its store (only durable runs need JSON)."""
    result = await af.run(flows.QUICK, store={"nan": float("nan"), "inf": float("inf")})
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["inf"] == float("inf")
    assert result.store["nan"] != result.store["nan"]


async def test_initial_store_keyed_by_typed_keys_is_accepted(url: str) -> None:
    """engine.start(store=...) takes af.Key keys as a run's store does, stored under their names."""
    async with make_engine(url, flows.QUICK) as engine:
        handle = await engine.start(flows.QUICK, store={af.Key("count", int): 3, "plain": "x"})
        result = await handle.result()
    assert result.store == {"count": 3, "plain": "x", "one": 1}


# ---- actions that cannot be re-created ------------------------------------------------------


async def test_register_refuses_a_workflow_with_a_closure_action(url: str) -> None:
    """engine.register on SQLite raises af.NotReferenceable naming a closure action and how to fix it."""

    @af.action
    async def local_step(ctx: af.ActionContext) -> None:
        pass

    wf = af.Workflow("closure", stages=[af.Stage("s", actions=[local_step])])
    with pytest.raises(af.NotReferenceable, match="'local-step'") as info:
        make_engine(url).register(wf)
    assert "module level" in str(info.value)
    assert "register" in str(info.value)


async def test_start_refuses_a_workflow_with_a_lambda_made_action(url: str) -> None:
    """engine.start on SQLite raises af.NotReferenceable for a lambda-made action, and records no run."""
    wf = af.Workflow("lambda", stages=[af.Stage("s", actions=[flows.LAMBDA_MADE])])
    async with make_engine(url) as engine:
        with pytest.raises(af.NotReferenceable, match="'lambda-made'"):
            await engine.start(wf)
        assert (await engine.list_runs()).runs == []


async def test_dynamic_closure_action_fails_the_run_naming_it(url: str) -> None:
    """ctx.add_dynamic_action of a closure in a SQLite run fails the action, naming it, where and the fix."""
    async with make_engine(url, flows.INSERTS_CLOSURE) as engine:
        handle = await engine.start(flows.INSERTS_CLOSURE)
        result = await handle.result()
        info = await engine.get_run(handle.run_id)
    assert result.status is af.RunStatus.FAILED
    assert info.error is not None
    assert info.error.startswith("NotReferenceable: ")
    assert "'inner-closure'" in info.error
    assert "inserted by action 'insert-closure' of stage" in info.error
    assert "module level" in info.error
    assert info.failed_action == "insert-closure"
    assert flows.runs_of("after-insert") == 0
    assert flows.runs_of("inner-closure") == 0


async def test_dynamic_stage_with_a_lambda_made_action_fails_the_run_naming_it(url: str) -> None:
    """Inserting a stage holding a lambda-made action fails the SQLite run, naming it and where."""
    async with make_engine(url, flows.INSERTS_LAMBDA_STAGE) as engine:
        handle = await engine.start(flows.INSERTS_LAMBDA_STAGE)
        result = await handle.result()
        info = await engine.get_run(handle.run_id)
    assert result.status is af.RunStatus.FAILED
    assert info.error is not None
    assert info.error.startswith("NotReferenceable: ")
    assert "'lambda-made'" in info.error
    assert "inserted by action 'insert-stage-with-lambda-made' of stage 's'" in info.error
    assert "register" in info.error
    assert flows.runs_of("after-insert") == 0


async def test_per_engine_registry_falls_back_to_the_global_registry(url: str) -> None:
    """An engine with its own empty registry still references actions registered in af.registry."""
    async with make_engine(url, flows.INSERTS_GLOBAL, registry=af.Registry()) as engine:
        result = await (await engine.start(flows.INSERTS_GLOBAL)).result()
    assert result.status is af.RunStatus.COMPLETED
    assert flows.runs_of("global-only") == 1


# ---- the database file ---------------------------------------------------------------------


async def test_first_open_creates_a_wal_database_with_a_schema_version(db_path: Path, url: str) -> None:
    """Opening an engine on a missing file creates it in WAL mode, at the current schema version."""
    assert not await anyio.Path(db_path).exists()
    async with make_engine(url):
        pass
    assert await anyio.Path(db_path).exists()
    assert query(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'") == CURRENT_SCHEMA
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_schema_1_database_is_migrated_and_its_runs_read(db_path: Path, url: str) -> None:
    """A schema-1 file (a dict per recorded step) opens as schema 3, its ended runs read as before."""
    async with make_engine(url, flows.QUICK) as engine:
        handle = await engine.start(flows.QUICK)
        ended = await handle.result()
    # Write the run's steps back as schema 1 did: a JSON list of dicts, times in seconds.
    old_steps = [
        {
            "kind": s.kind,
            "stage_id": s.stage_id,
            "action_name": s.action_name,
            "status": s.status.value,
            "dynamic": s.dynamic,
            "duration": s.duration,
            "started_at": s.started_at,
            "depth": s.depth,
            "inserted_by": s.inserted_by,
            "inserted_by_stage": s.inserted_by_stage,
            "reason": s.reason,
            "error": None,
            "attempts": s.attempts,
            "recovered_error": None,
        }
        for s in ended.steps
    ]
    as_schema_2(db_path, version=1)
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("UPDATE runs SET steps = ?", (json.dumps(old_steps),))
    conn.close()
    async with make_engine(url, flows.QUICK) as engine:
        again = await engine.wait(handle.run_id)
    assert query(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'") == CURRENT_SCHEMA
    assert [(s.kind, s.stage_id, s.action_name, s.status) for s in again.steps] == [
        (s.kind, s.stage_id, s.action_name, s.status) for s in ended.steps
    ]
    assert [s.duration for s in again.steps] == [s.duration for s in ended.steps]


async def test_schema_2_database_is_migrated_and_its_interrupted_run_recovers(
    db_path: Path, url: str
) -> None:
    """A schema-2 file (checkpoints keyed by run id) opens as schema 3; its interrupted run goes on."""
    run_id = await interrupt(url, flows.BASIC)
    as_schema_2(db_path)
    assert query(db_path, "SELECT count(*) FROM checkpoints WHERE run_id = ?", run_id) != [(0,)]
    result = await finish(url, run_id, flows.BASIC)
    assert query(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'") == CURRENT_SCHEMA
    assert result.status is af.RunStatus.COMPLETED
    assert result.store == {"one": 1, "hang": "done", "after": True, "s2": True}
    assert {label: len(runs) for label, runs in flows.LEDGER.items()} == {
        "step-one": 1,
        "hang": 2,
        "after": 1,
        "s2": 1,
    }


async def test_migrated_runs_are_numbered_in_the_order_they_were_created(db_path: Path, url: str) -> None:
    """Migrating a schema-2 file numbers its runs by creation, and new runs come after them."""
    first, _ = await run_here(url, flows.QUICK)
    second, _ = await run_here(url, flows.QUICK)
    as_schema_2(db_path)
    conn = sqlite3.connect(db_path)
    with conn:  # the second run made first: its id no longer says which came first
        conn.execute("UPDATE runs SET created_at = created_at - 60 WHERE run_id = ?", (second,))
    conn.close()
    third, _ = await run_here(url, flows.QUICK)
    assert query(db_path, "SELECT run_id FROM runs ORDER BY run_no") == [(second,), (first,), (third,)]
    async with make_engine(url) as engine:
        listed = [info.run_id for info in (await engine.list_runs()).runs]
    assert listed == [third, first, second]


async def test_reopening_keeps_runs(url: str) -> None:
    """Runs written by one engine are listed by the next engine opened on the file."""
    async with make_engine(url, flows.QUICK) as engine:
        handle = await engine.start(flows.QUICK)
        await handle.result()
    async with make_engine(url) as engine:
        page = await engine.list_runs()
    assert [r.run_id for r in page.runs] == [handle.run_id]
    assert page.runs[0].status is af.RunStatus.COMPLETED


async def test_corrupted_file_raises_backend_error_and_is_left_unchanged(db_path: Path, url: str) -> None:
    """Opening an engine on a file of garbage raises af.BackendError saying so; the bytes are unchanged."""
    garbage = bytes(range(256)) * 64
    await anyio.Path(db_path).write_bytes(garbage)
    with pytest.raises(af.BackendError, match="not a usable SQLite database") as info:
        async with make_engine(url):
            pass
    assert str(db_path) in str(info.value)
    assert await anyio.Path(db_path).read_bytes() == garbage


async def test_newer_schema_raises_backend_error_naming_the_version(db_path: Path, url: str) -> None:
    """A database with schema version 99 is refused with af.BackendError naming 99; nothing changes."""
    async with make_engine(url, flows.QUICK) as engine:
        await (await engine.start(flows.QUICK)).result()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("UPDATE asyncflow_meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    before = await anyio.Path(db_path).read_bytes()
    with pytest.raises(af.BackendError, match="99") as info:
        async with make_engine(url):
            pass
    assert "newer" in str(info.value)
    assert await anyio.Path(db_path).read_bytes() == before
    assert query(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'") == [("99",)]


async def test_sqlite_database_of_another_application_is_refused(db_path: Path, url: str) -> None:
    """An SQLite file without asyncflow's tables is refused with af.BackendError and left unchanged."""
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.close()
    before = await anyio.Path(db_path).read_bytes()
    with pytest.raises(af.BackendError, match="not an asyncflow one"):
        async with make_engine(url):
            pass
    assert await anyio.Path(db_path).read_bytes() == before


async def test_damaged_asyncflow_database_raises_backend_error(db_path: Path, url: str) -> None:
    """An asyncflow file missing a table makes engine.start raise af.BackendError, not a raw sqlite3 error."""
    async with make_engine(url):
        pass
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("DROP TABLE checkpoints")
    conn.close()
    async with make_engine(url, flows.QUICK) as engine:
        with pytest.raises(af.BackendError, match="checkpoints"):
            await engine.start(flows.QUICK, store={"given": 1})


async def test_plain_path_ending_in_db_opens_sqlite(db_path: Path) -> None:
    """af.Engine("path/runs.db") (no scheme) uses SQLite at that path."""
    async with af.Engine(str(db_path), lease=1.0, poll_interval=0.05) as engine:
        assert engine.backend.persistent
    assert await anyio.Path(db_path).exists()


def test_sqlite_url_without_a_path_raises_backend_error() -> None:
    """af.Engine("sqlite:///") raises af.BackendError saying no file is named."""
    with pytest.raises(af.BackendError, match="names no file"):
        af.Engine("sqlite:///")


async def test_stored_run_info_is_json_in_the_file(db_path: Path, url: str) -> None:
    """A suspended run's suspend data sits in the file as JSON text."""
    async with make_engine(url, flows.APPROVAL) as engine:
        handle = await engine.start(flows.APPROVAL)
        await handle.result()
    [(text,)] = query(db_path, "SELECT suspend_data FROM runs WHERE run_id = ?", handle.run_id)
    assert json.loads(text) == {"amount": 5}


class _LoopWithoutReaders(asyncio.SelectorEventLoop):
    """An event loop that cannot watch file descriptors, as Windows' proactor loop cannot."""

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
        raise NotImplementedError


def test_runs_commit_on_a_loop_that_cannot_watch_file_descriptors(db_path: Path, url: str) -> None:
    """On a loop without add_reader, the SQLite writer wakes the loop another way; runs commit as usual."""

    async def main() -> af.RunResult:
        async with make_engine(url, flows.QUICK) as engine:
            with anyio.fail_after(5):
                return await (await engine.start(flows.QUICK)).result()

    with asyncio.Runner(loop_factory=_LoopWithoutReaders) as runner:
        result = runner.run(main())
    assert result.status is af.RunStatus.COMPLETED
    assert query(db_path, "SELECT count(*) FROM checkpoints") != [(0,)]


async def test_upgrade_waits_for_other_connections_and_refuses_when_they_stay(
    db_path: Path, url: str
) -> None:
    """A schema-2 file that another process keeps open is not upgraded: af.BackendError says why."""
    first, _ = await run_here(url, flows.QUICK)
    as_schema_2(db_path)
    other = sqlite3.connect(db_path)  # an older asyncflow, say, with the file open
    try:
        other.execute("PRAGMA journal_mode = WAL")
        other.execute("SELECT count(*) FROM runs").fetchall()
        engine = af.Engine(SQLiteBackend(db_path, busy_timeout=0.2))
        with pytest.raises(af.BackendError, match="another process kept it open") as info:
            async with engine:
                pass
        assert str(db_path) in str(info.value)
        assert "stop every process" in str(info.value)
        assert other.execute("SELECT value FROM asyncflow_meta WHERE key = 'schema_version'").fetchall() == [
            ("2",)
        ]
        assert other.execute("SELECT run_id FROM runs").fetchall() == [(first,)]
    finally:
        other.close()
    assert (await info_of(url, first)).status is af.RunStatus.COMPLETED
    assert query(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'") == CURRENT_SCHEMA


async def test_run_numbers_are_not_reused_after_the_newest_run_is_deleted(db_path: Path, url: str) -> None:
    """Deleting the newest run does not hand its number to the next run."""
    await run_here(url, flows.QUICK)
    second, _ = await run_here(url, flows.QUICK)
    [(number,)] = query(db_path, "SELECT run_no FROM runs WHERE run_id = ?", second)
    async with make_engine(url) as engine:
        assert await engine.delete_run(second)
    third, _ = await run_here(url, flows.QUICK)
    [(after,)] = query(db_path, "SELECT run_no FROM runs WHERE run_id = ?", third)
    assert after > number


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def open_and_cancel_the_close(backend: SQLiteBackend) -> None:
    """Open ``backend``, start closing it, and cancel the close before the writer has stopped."""
    await backend.open()
    closing = asyncio.ensure_future(backend.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
async def test_a_cancelled_close_still_releases_the_backends_descriptors(db_path: Path) -> None:
    """A cancelled backend.aclose() still closes the file and its wake-up pipe once the writer stops."""
    before = _open_descriptors()
    await open_and_cancel_the_close(SQLiteBackend(db_path))
    for _ in range(500):  # the writer finishes in its own time
        if _open_descriptors() <= before:
            break
        await anyio.sleep(0.01)
    assert _open_descriptors() == before


async def test_two_backends_opening_a_schema_2_file_at_once_both_open_it(db_path: Path, url: str) -> None:
    """Two backends that open an old file together do not wait for each other: one upgrades it."""
    first, _ = await run_here(url, flows.QUICK)
    as_schema_2(db_path)
    for _ in range(3):
        backends = [SQLiteBackend(db_path, busy_timeout=5) for _ in range(2)]
        with anyio.fail_after(10):
            await asyncio.gather(*(backend.open() for backend in backends))
        try:
            infos = [await backend.get_run(first) for backend in backends]
        finally:
            for backend in backends:
                await backend.aclose()
        assert [info.status if info else None for info in infos] == [af.RunStatus.COMPLETED] * 2
        version = query(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'")
        assert version == CURRENT_SCHEMA
        assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
        as_schema_2(db_path)  # and again, as a race may go either way


async def test_a_backend_reopened_after_a_cancelled_close_serves_calls(db_path: Path, url: str) -> None:
    """Opening the backend again right after a cancelled close gives a writer that answers, then closes."""
    first, _ = await run_here(url, flows.QUICK)
    backend = SQLiteBackend(db_path)
    for _ in range(5):
        await open_and_cancel_the_close(backend)
    await backend.open()
    try:
        with anyio.fail_after(5):
            info = await backend.get_run(first)
    finally:
        with anyio.fail_after(5):
            await backend.aclose()
    assert info is not None
    assert info.status is af.RunStatus.COMPLETED


async def test_a_take_over_of_a_run_executing_here_does_not_run_it_a_second_time(db_path: Path) -> None:
    """The engine claims its own run back (its lease ran out) while it ends here: no second execution."""
    clock = FakeClock(START)
    backend = flows.StallingSQLite(db_path, clock, stall=31.0)
    engine = af.Engine(backend, clock=clock, lease=30.0, poll_interval=0.05)
    engine.register(flows.SUSPENDS_WHEN_RELEASED)
    async with engine:
        handle = await engine.start(flows.SUSPENDS_WHEN_RELEASED)
        with anyio.fail_after(5):
            await flows.gate("suspender").wait()
        # Starved past its lease: its next look for runs claims this run back (and may load it).
        backend.hold_load = True
        backend.stall_after_heartbeat = True
        await backend.looked_after_stall()
        # The execution here suspends the run (what a load made meanwhile read is out of date now).
        flows.gate("suspender.release").set()
        with anyio.fail_after(5):
            suspended = await engine.wait(handle.run_id)
        backend.let_load_go.set()
        await backend.passes(3)
        info = await engine.get_run(handle.run_id)
    assert suspended.status is af.RunStatus.SUSPENDED
    assert info.status is af.RunStatus.SUSPENDED
    assert flows.runs_of("suspender") == 1
