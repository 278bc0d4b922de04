"""A workflow changed while runs of it are unfinished: each run goes on on the version it started on.

A deploy that adds, removes or moves steps must not make a recovered,
resumed or woken run re-run a step that completed or skip one that never
ran. The engine records the version each run started on (a hash of which
action, by name and constructor arguments, is in each place, and one of its
definition), keeps each version's definition, and re-creates it for a run
whose actions were added, removed or moved; a version it cannot re-create,
it leaves to an engine that can, unless its actions were only replaced in
their places by actions of new names.
"""

from __future__ import annotations

import asyncio
import importlib
import sqlite3
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import anyio
import durable_flows as flows
import pytest
from durable_flows import finish, interrupt, make_engine, query

import asyncflow as af
from asyncflow.backends import MemoryBackend, SQLiteBackend, WorkflowVersion
from asyncflow.backends.base import SCHEMA_VERSION
from asyncflow.testing import FakeClock

#: the schema_version row of a file at this asyncflow's schema
CURRENT_SCHEMA = [(str(SCHEMA_VERSION),)]
START = 1_800_000_000.0


@pytest.fixture(autouse=True)
def _fresh_ledger() -> None:
    flows.reset()


async def after_a_while(url: Any, *workflows: af.Workflow, run_id: str, **options: Any) -> af.RunInfo:
    """What an engine with ``workflows`` registered made of ``run_id``, once it took it and let it go."""
    async with make_engine(url, recover=False) as reader:
        before = await reader.get_run(run_id)
    async with make_engine(url, *workflows, **options) as engine:

        async def let_go() -> bool:  # (claimed, then given back or ended: it has decided)
            info = await engine.get_run(run_id)
            return info.updated_at > before.updated_at and info.owner is None

        await flows.eventually(let_go)
        return await engine.get_run(run_id)


async def info_now(url: Any, run_id: str) -> af.RunInfo:
    """What the database says of ``run_id`` now, read by an engine that recovers nothing."""
    async with make_engine(url, recover=False) as reader:
        return await reader.get_run(run_id)


async def let_go(engine: af.Engine, run_id: str, before: af.RunInfo) -> None:
    """Wait until ``engine`` has claimed ``run_id`` (as ``before`` was) and let it go again."""

    async def decided() -> bool:
        info = await engine.get_run(run_id)
        return info.updated_at > before.updated_at and info.owner is None

    await flows.eventually(decided)


class CountsClaims(SQLiteBackend):
    """An SQLite backend that counts its engine's looks for runs (its claims)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.claims = 0

    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_until: float,
        limit: int,
        run_id: str | None = None,
        skip_versions: Collection[str] = (),
    ) -> list[af.RunInfo]:
        self.claims += 1
        return await super().claim(
            owner, now=now, lease_until=lease_until, limit=limit, run_id=run_id, skip_versions=skip_versions
        )


class SlowToLoadVersions(SQLiteBackend):
    """An SQLite backend that takes a second to load versions (``loading`` is set as it begins)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.loading = anyio.Event()

    async def load_versions(self, version: str) -> list[WorkflowVersion]:
        self.loading.set()
        await anyio.sleep(1)
        return await super().load_versions(version)


async def owner_is_none(engine: af.Engine, run_id: str) -> bool:
    return (await engine.get_run(run_id)).owner is None


async def is_sleeping(engine: af.Engine, run_id: str) -> bool:
    return (await engine.get_run(run_id)).status is af.RunStatus.SLEEPING


def executions() -> dict[str, int]:
    """How many times each label of the ledger ran."""
    return {label: len(runs) for label, runs in flows.LEDGER.items()}


def warnings_about(run_id: str, log: list[dict[str, Any]]) -> list[str]:
    """The messages of the WARNING records of ``log`` that name ``run_id``."""
    return [r["message"] for r in log if r["level"].name == "WARNING" and run_id in r["message"]]


def registry_with(action: af.Action, name: str | None = None) -> af.Registry:
    registry = af.Registry()
    if name is None:
        registry.register(action)
    else:
        registry.register(name, action)
    return registry


# ---- a run goes on on its own version ---------------------------------------------------


CHANGES = [
    pytest.param(
        flows.DEPLOY_V1, flows.DEPLOY_V2, {"first": 1, "hang": 2, "last": 1}, id="a-step-added-in-front"
    ),
    pytest.param(
        flows.DEPLOY_FUNCTIONS_V1,
        flows.DEPLOY_FUNCTIONS_SWAPPED,
        {"alpha": 1, "hang": 2, "beta": 1},
        id="two-actions-swapped",
    ),
    pytest.param(
        flows.DEPLOY_V1,
        flows.DEPLOY_SWAPPED,
        {"first": 1, "hang": 2, "last": 1},
        id="two-of-one-class-swapped",
    ),
    pytest.param(
        flows.DEPLOY_TWO_STAGES_V1,
        flows.DEPLOY_TWO_STAGES_MOVED,
        {"a": 1, "hang": 2, "b": 1},
        id="actions-moved-between-stages",
    ),
]


@pytest.mark.parametrize(("started_on", "registered", "ran"), CHANGES)
async def test_run_whose_actions_were_added_or_moved_since_goes_on_on_its_version(
    url: str, started_on: af.Workflow, registered: af.Workflow, ran: dict[str, int]
) -> None:
    """Recovered by an engine whose workflow changed so, a run skips no step and re-runs no completed one."""
    run_id = await interrupt(url, started_on)
    result = await finish(url, run_id, registered)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == ran


async def test_new_constructor_arguments_alone_take_effect_in_recovered_runs(url: str) -> None:
    """Actions made with other arguments (new configuration) in the same places: the run uses the new ones."""
    run_id = await interrupt(url, flows.DEPLOY_V1)
    result = await finish(url, run_id, flows.DEPLOY_NEW_ARGUMENTS)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"first": 1, "hang": 2, "last": 1}
    assert result.store["first"] is True  # committed before the deploy
    assert result.store["last"] == "new"


async def test_version_saved_by_an_engine_with_other_names_is_recreated_from_another(url: str) -> None:
    """A run started by an engine whose registry names an action otherwise is re-created from another save."""
    alias = registry_with(flows.GLOBAL_ONLY, "an-alias")
    run_id = await interrupt(url, flows.RENAMED_REFERENCE, registry=alias)
    async with make_engine(url, flows.RENAMED_REFERENCE, recover=False):
        pass  # an engine naming it by the global registry saves its own definition when it opens
    result = await finish(url, run_id, flows.RENAMED_REFERENCE_V2)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"global-only": 1, "hang": 2, "last": 1}


async def test_new_runs_of_the_changed_workflow_run_the_new_version(url: str) -> None:
    """Once an old run goes on on its version, a new run of the same engine runs the registered one."""
    run_id = await interrupt(url, flows.DEPLOY_V1)
    async with make_engine(url, flows.DEPLOY_V2) as engine:
        with anyio.fail_after(5):
            await engine.wait(run_id)
            fresh = await (await engine.start(flows.DEPLOY_V2)).result()
    assert fresh.status is af.RunStatus.COMPLETED
    assert [step.action_name for step in fresh.steps if step.kind == "action"] == ["record"] * 2 + [
        "hang-once",
        "record",
    ]
    assert flows.runs_of("new") == 1


async def test_suspended_run_resumed_after_a_change_goes_on_on_its_version(url: str) -> None:
    """engine.resume on an engine with a changed workflow runs the rest of the version the run began on."""
    async with make_engine(url, flows.DEPLOY_APPROVAL_V1) as engine:
        suspended = await (await engine.start(flows.DEPLOY_APPROVAL_V1)).result()
    assert suspended.status is af.RunStatus.SUSPENDED
    async with make_engine(url, flows.DEPLOY_APPROVAL_V2) as engine:
        handle = await engine.resume(suspended.run_id, {"by": "me"})
        with anyio.fail_after(5):
            result = await handle.result()
    assert result.status is af.RunStatus.COMPLETED
    assert result.store["approved"] == {"by": "me"}
    assert executions() == {"step-one": 1, "approve": 2, "after": 1}


async def test_sleeping_run_woken_after_a_change_goes_on_on_its_version(url: str) -> None:
    """A run that slept through a deploy wakes on the version it started on."""
    clock = FakeClock(START)
    async with make_engine(url, flows.DEPLOY_SLEEPY_V1, clock=clock) as engine:
        handle = await engine.start(flows.DEPLOY_SLEEPY_V1)
        await flows.eventually(lambda: is_sleeping(engine, handle.run_id))
    async with make_engine(url, flows.DEPLOY_SLEEPY_V2, clock=FakeClock(START + 500)) as engine:
        with anyio.fail_after(5):
            result = await engine.wait(handle.run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"before": 1, "woke": 1}


async def test_registered_workflows_middleware_wraps_the_recreated_version(url: str) -> None:
    """The re-created version runs inside the middleware of the workflow registered now."""
    run_id = await interrupt(url, flows.DEPLOY_V1)
    seen: list[str] = []

    async def note(ctx: Any, call_next: Any) -> Any:
        seen.append(ctx.action.name)
        return await call_next()

    changed = flows.deploy(*flows.DEPLOY_V2.stages[0].actions).use_action(note)
    result = await finish(url, run_id, changed)
    assert result.status is af.RunStatus.COMPLETED
    assert seen == ["hang-once", "record"]


async def test_unchanged_workflow_under_other_registry_names_goes_on_as_registered(url: str) -> None:
    """An engine whose registry names the same actions otherwise finds no change: the run goes on."""
    alias = registry_with(flows.GLOBAL_ONLY, "an-alias")
    run_id = await interrupt(url, flows.RENAMED_REFERENCE, registry=alias)
    result = await finish(url, run_id, flows.RENAMED_REFERENCE)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"global-only": 1, "hang": 2, "last": 1}


# ---- a version this engine cannot re-create -----------------------------------------------


async def interrupt_registered_v1(url: str) -> str:
    """A run of DEPLOY_REGISTERED_V1, whose first action only the first engine's registry names."""
    return await interrupt(url, flows.DEPLOY_REGISTERED_V1, registry=registry_with(flows.FIRST_ENGINES_STEP))


async def test_actions_replaced_in_place_go_on_with_the_registered_version_when_the_old_is_gone(
    url: str, asyncflow_log: list[dict[str, Any]]
) -> None:
    """An old version that cannot be re-created, as many actions in the same places: the registered one."""
    run_id = await interrupt_registered_v1(url)
    result = await finish(url, run_id, flows.DEPLOY_REGISTERED_REPLACED)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"first-engines-step": 1, "hang": 2, "last": 1}
    [warning] = warnings_about(run_id, asyncflow_log)
    assert "renamed or replaced" in warning


async def test_actions_that_moved_are_not_taken_for_renamed_ones(url: str) -> None:
    """An old version that cannot be re-created, with as many actions but one moved: the run is left."""
    first = registry_with(flows.FIRST_ENGINES_STEP)
    run_id = await interrupt(url, flows.DEPLOY_REGISTERED_SHIFTED_V1, registry=first)
    info = await after_a_while(url, flows.DEPLOY_REGISTERED_SHIFTED, run_id=run_id)
    assert info.status is af.RunStatus.RUNNING
    assert executions() == {"first-engines-step": 1, "alpha": 1, "hang": 1}


async def test_a_replaced_action_named_by_recorded_plan_changes_leaves_the_run(url: str) -> None:
    """A replaced action that a recorded plan change names (disable_action): the run is left, not failed."""
    first = registry_with(flows.FIRST_ENGINES_STEP)
    run_id = await interrupt(url, flows.DEPLOY_DISABLES_V1, registry=first)
    info = await after_a_while(url, flows.DEPLOY_DISABLES_REPLACED, run_id=run_id)
    assert info.status is af.RunStatus.RUNNING
    assert executions() == {"hang": 1}


async def test_actions_of_one_name_that_moved_are_not_taken_for_replaced_ones(url: str) -> None:
    """An old version that cannot be re-created, whose same-named actions traded places: the run is left."""
    factory = af.Registry()
    factory.register("record-factory", flows.Record)
    run_id = await interrupt(url, flows.DEPLOY_V1, registry=factory)
    info = await after_a_while(url, flows.DEPLOY_SWAPPED, run_id=run_id)
    assert info.status is af.RunStatus.RUNNING
    assert executions() == {"first": 1, "hang": 1}


async def test_a_replaced_action_under_a_recorded_change_by_tag_leaves_the_run(url: str) -> None:
    """Actions replaced in place while the run recorded a plan change by tag: the run is left."""
    run_id = await interrupt(url, flows.DEPLOY_BY_TAG_V1, registry=registry_with(flows.OPTIONAL_STEP))
    info = await after_a_while(url, flows.DEPLOY_BY_TAG_REPLACED, run_id=run_id)
    assert info.status is af.RunStatus.RUNNING
    assert executions() == {"hang": 1}


async def test_closing_the_engine_while_it_looks_at_a_runs_version_gives_the_run_back(
    db_path: Path, url: str
) -> None:
    """An engine closed while it decides what a changed run goes on with leaves the run free, not held."""
    run_id = await interrupt(url, flows.DEPLOY_V1)
    slow = SlowToLoadVersions(db_path)
    async with make_engine(slow, flows.DEPLOY_V2, lease=30.0):
        with anyio.fail_after(5):
            await slow.loading.wait()
    async with make_engine(url, recover=False) as engine:
        info = await engine.get_run(run_id)
    assert (info.status, info.owner) == (af.RunStatus.RUNNING, None)


class ClaimsWithoutSkipping(SQLiteBackend):
    """An SQLite backend whose claim has no skip_versions, as a backend written before it."""

    async def claim(  # type: ignore[override]
        self, owner: str, *, now: float, lease_until: float, limit: int, run_id: str | None = None
    ) -> list[af.RunInfo]:
        return await super().claim(owner, now=now, lease_until=lease_until, limit=limit, run_id=run_id)


async def test_without_skipping_claims_a_left_version_is_looked_at_again_after_ten_leases(
    db_path: Path, url: str
) -> None:
    """On a backend whose claim cannot skip, a held run is looked at again ten leases later, and goes on."""
    alias = registry_with(flows.GLOBAL_ONLY, "an-alias")
    run_id = await interrupt(url, flows.RENAMED_REFERENCE, registry=alias)
    clock = FakeClock(START)
    before = await info_now(url, run_id)
    async with make_engine(ClaimsWithoutSkipping(db_path), flows.RENAMED_REFERENCE_V2, clock=clock) as engine:
        await let_go(engine, run_id, before)  # left, and held
        assert (await engine.get_run(run_id)).status is af.RunStatus.RUNNING
        async with make_engine(url, flows.RENAMED_REFERENCE, recover=False):
            pass  # saves a definition that names the action by the global registry
        await clock.advance(11)
        with anyio.fail_after(5):
            result = await engine.wait(run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"global-only": 1, "hang": 2, "last": 1}


async def test_a_new_name_that_was_elsewhere_in_the_old_version_is_not_taken_for_a_rename(url: str) -> None:
    """An action of the old version in a place where another one was (it may have moved): the run is left."""
    run_id = await interrupt(url, flows.DEPLOY_DOUBLED_V1, registry=registry_with(flows.FIRST_ENGINES_STEP))
    info = await after_a_while(url, flows.DEPLOY_DOUBLED, run_id=run_id)
    assert info.status is af.RunStatus.RUNNING
    assert executions() == {"first-engines-step": 1, "hang": 1}


async def test_a_definition_that_re_creates_other_actions_is_not_used(url: str) -> None:
    """A saved definition that re-creates actions of other names here: the version is not re-created."""
    first = af.Registry()
    first.register("step-x", flows.Record)
    run_id = await interrupt(url, flows.DEPLOY_GUARD_V1, registry=first)
    here = af.Registry()
    here.register("step-x", flows.Relabelled)
    info = await after_a_while(url, flows.DEPLOY_GUARD_V2, run_id=run_id, registry=here)
    assert info.status is af.RunStatus.RUNNING
    assert executions() == {"x": 1, "hang": 1}


async def test_a_run_held_for_what_it_recorded_reaches_an_engine_that_can_re_create_it(url: str) -> None:
    """A run left for its recorded plan changes is given back, and another engine beside takes it at once."""
    first = registry_with(flows.FIRST_ENGINES_STEP)
    run_id = await interrupt(url, flows.DEPLOY_DISABLES_V1, registry=first)
    async with make_engine(url, flows.DEPLOY_DISABLES_REPLACED, lease=10.0) as leaving:
        await flows.eventually(lambda: owner_is_none(leaving, run_id))
        with anyio.fail_after(5):  # (half its lease: a run held until its lease ran out would not do)
            result = await finish(url, run_id, flows.DEPLOY_DISABLES_REPLACED, registry=first, lease=10.0)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"hang": 2}


async def test_cancel_while_the_engine_looks_at_a_runs_version_cancels_it(db_path: Path, url: str) -> None:
    """engine.cancel of a run whose version the engine is still deciding on ends it cancelled."""
    run_id = await interrupt(
        url, flows.DEPLOY_REGISTERED_V1, registry=registry_with(flows.FIRST_ENGINES_STEP)
    )
    slow = SlowToLoadVersions(db_path)
    async with make_engine(slow, flows.DEPLOY_REGISTERED_V2) as engine:
        with anyio.fail_after(5):
            await slow.loading.wait()
        await engine.cancel(run_id)
        info = await engine.get_run(run_id)
    assert (info.status, info.owner) == (af.RunStatus.CANCELLED, None)


async def test_leaving_a_run_again_logs_at_debug_level(url: str, asyncflow_log: list[dict[str, Any]]) -> None:
    """Looked at again ten leases later and left again, the run gets no second warning, a debug line."""
    run_id = await interrupt_registered_v1(url)
    clock = FakeClock(START)

    def leavings() -> list[str]:
        return [r["level"].name for r in asyncflow_log if run_id in r["message"] and "leaves" in r["message"]]

    async with make_engine(url, flows.DEPLOY_REGISTERED_V2, clock=clock):
        await flows.eventually(lambda: len(leavings()) == 1)
        await clock.advance(11)  # ten leases of 1 s
        await flows.eventually(lambda: len(leavings()) == 2)
    assert leavings() == ["WARNING", "DEBUG"]


class KeepsNoVersions(SQLiteBackend):
    """An SQLite backend that keeps no versions, as a Backend that does not override the methods."""

    async def save_version(self, version: WorkflowVersion) -> None:
        return None

    async def load_versions(self, version: str) -> list[WorkflowVersion]:
        return []


async def test_backend_that_keeps_no_versions_leaves_a_run_whose_actions_moved(db_path: Path) -> None:
    """Without kept versions, a run whose actions moved is left, not matched to the new places."""
    run_id = await interrupt(KeepsNoVersions(db_path), flows.DEPLOY_FUNCTIONS_V1)
    info = await after_a_while(KeepsNoVersions(db_path), flows.DEPLOY_FUNCTIONS_SWAPPED, run_id=run_id)
    assert info.status is af.RunStatus.RUNNING
    assert executions() == {"alpha": 1, "hang": 1}


async def test_version_that_cannot_be_recreated_is_left_as_it_is(url: str) -> None:
    """An engine that cannot re-create a run's version runs nothing of it and leaves it RUNNING."""
    run_id = await interrupt_registered_v1(url)
    info = await after_a_while(url, flows.DEPLOY_REGISTERED_V2, run_id=run_id)
    assert info.status is af.RunStatus.RUNNING
    assert info.error is None
    assert executions() == {"first-engines-step": 1, "hang": 1}


async def test_leaving_a_run_logs_a_warning_naming_the_run_and_why(
    db_path: Path, url: str, asyncflow_log: list[dict[str, Any]]
) -> None:
    """The engine that leaves a run says which run, and what it could not re-create, once."""
    run_id = await interrupt_registered_v1(url)
    counted = CountsClaims(db_path)
    async with make_engine(counted, flows.DEPLOY_REGISTERED_V2, lease=0.2, poll_interval=0.05):
        await flows.eventually(lambda: len(warnings_about(run_id, asyncflow_log)) == 1)
        looks = counted.claims
        await flows.eventually(lambda: counted.claims >= looks + 10)  # room to take it and leave it again
    [warning] = warnings_about(run_id, asyncflow_log)
    assert "another version" in warning
    assert "first-engines-step" in warning


async def test_a_left_run_is_given_back_and_not_claimed_again_by_the_same_engine(
    db_path: Path, url: str, asyncflow_log: list[dict[str, Any]]
) -> None:
    """A run the engine left is free at once, and the engine's later looks for runs pass it by."""
    run_id = await interrupt_registered_v1(url)
    before = await info_now(url, run_id)
    counted = CountsClaims(db_path)
    async with make_engine(counted, flows.DEPLOY_REGISTERED_V2, lease=0.2, poll_interval=0.05) as engine:
        await let_go(engine, run_id, before)
        looks = counted.claims
        await flows.eventually(lambda: counted.claims >= looks + 12)  # a dozen more looks for runs
        assert (await engine.get_run(run_id)).owner is None
    taking_over = [r for r in asyncflow_log if r["message"].startswith(f"taking over run {run_id}")]
    assert len(taking_over) == 1


async def test_an_engine_that_can_recreate_a_left_run_takes_it_at_once(url: str) -> None:
    """With an engine that left the run still open, one that can re-create it need not wait out a lease."""
    run_id = await interrupt_registered_v1(url)
    registry = registry_with(flows.FIRST_ENGINES_STEP)
    before = await info_now(url, run_id)
    async with make_engine(url, flows.DEPLOY_REGISTERED_V2, lease=10.0) as leaving:
        await let_go(leaving, run_id, before)
        with anyio.fail_after(5):  # (half the lease: a run held until its lease ran out would not do)
            result = await finish(url, run_id, flows.DEPLOY_REGISTERED_V2, registry=registry, lease=10.0)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"first-engines-step": 1, "hang": 2, "last": 1}


async def test_a_left_version_is_looked_at_again_after_ten_leases(url: str) -> None:
    """Once another engine has saved a definition that works here, the engine that left a run takes it."""
    alias = registry_with(flows.GLOBAL_ONLY, "an-alias")
    run_id = await interrupt(url, flows.RENAMED_REFERENCE, registry=alias)
    clock = FakeClock(START)
    async with make_engine(url, flows.RENAMED_REFERENCE_V2, clock=clock) as engine:
        await flows.eventually(lambda: owner_is_none(engine, run_id))  # left: only "an-alias" is kept
        async with make_engine(url, flows.RENAMED_REFERENCE, recover=False):
            pass  # saves a definition that names the action by the global registry
        await clock.advance(11)  # ten leases of 1 s
        with anyio.fail_after(5):
            result = await engine.wait(run_id)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"global-only": 1, "hang": 2, "last": 1}


async def test_run_left_by_one_engine_is_finished_by_one_that_can_recreate_its_version(url: str) -> None:
    """After an engine left it, one that names the missing action runs the rest of the old version."""
    run_id = await interrupt_registered_v1(url)
    before = await info_now(url, run_id)
    async with make_engine(url, flows.DEPLOY_REGISTERED_V2) as leaving:
        await let_go(leaving, run_id, before)
    assert executions() == {"first-engines-step": 1, "hang": 1}
    registry = registry_with(flows.FIRST_ENGINES_STEP)
    result = await finish(url, run_id, flows.DEPLOY_REGISTERED_V2, registry=registry)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"first-engines-step": 1, "hang": 2, "last": 1}


async def test_left_run_can_be_cancelled(url: str) -> None:
    """A run no engine here can go on with is given up with engine.cancel."""
    run_id = await interrupt_registered_v1(url)
    before = await info_now(url, run_id)
    async with make_engine(url, flows.DEPLOY_REGISTERED_V2) as engine:
        await let_go(engine, run_id, before)
        await engine.cancel(run_id)
        assert (await engine.get_run(run_id)).status is af.RunStatus.CANCELLED


async def test_resume_of_a_version_that_cannot_be_recreated_raises_and_keeps_the_run(url: str) -> None:
    """Resuming a run whose version the engine cannot re-create raises UnknownWorkflow; it stays suspended."""
    first = af.Registry()
    first.register(flows.FIRST_ENGINES_STEP)
    waits = flows.deploy(flows.FIRST_ENGINES_STEP, flows.approve, workflow_id="deploy-approval-registered")
    changed = flows.deploy(flows.approve, workflow_id="deploy-approval-registered")
    async with make_engine(url, waits, registry=first) as engine:
        suspended = await (await engine.start(waits)).result()
    async with make_engine(url, changed) as engine:
        with pytest.raises(af.UnknownWorkflow, match="another version") as raised:
            await engine.resume(suspended.run_id, {"by": "me"})
        info = await engine.get_run(suspended.run_id)
    assert "first-engines-step" in str(raised.value)
    assert "the run is unchanged" in str(raised.value)
    assert info.status is af.RunStatus.SUSPENDED
    assert info.resume_data is None


# ---- what is recorded ---------------------------------------------------------------------


async def test_durable_run_records_its_workflow_version(url: str) -> None:
    """A run on SQLite names a version; runs of one workflow share it, and another shape has another."""
    async with make_engine(url, flows.QUICK, flows.BASIC_NO_HANG) as engine:
        one = await (await engine.start(flows.QUICK)).info()
        two = await (await engine.start(flows.QUICK)).info()
        other = await (await engine.start(flows.BASIC_NO_HANG)).info()
    assert one.workflow_version is not None
    assert one.workflow_version == two.workflow_version
    assert other.workflow_version not in (None, one.workflow_version)


async def test_runs_in_memory_record_no_version() -> None:
    """The in-memory engine keeps no versions: its runs end with the process."""
    async with af.Engine() as engine:
        info = await (await engine.start(flows.QUICK)).info()
    assert info.workflow_version is None


class CountingBackend(SQLiteBackend):
    """The SQLite backend, counting the versions it is asked to save."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.saves = 0

    async def save_version(self, version: WorkflowVersion) -> None:
        self.saves += 1
        await super().save_version(version)


async def test_concurrent_first_starts_save_the_version_once(db_path: Path) -> None:
    """Fifty first runs of a workflow registered after the engine opened, started at once: one save."""
    backend = CountingBackend(db_path)
    async with af.Engine(backend) as engine:
        handles = await asyncio.gather(*(engine.start(flows.QUICK) for _ in range(50)))
        for handle in handles:
            await handle.result()
    assert backend.saves == 1


async def test_opening_an_engine_saves_the_versions_registered_before(db_path: Path) -> None:
    """An engine keeps the versions of the workflows registered before it opened, runs or no runs."""
    async with make_engine(f"sqlite:///{db_path}", flows.QUICK, flows.BASIC, recover=False):
        pass
    assert sorted(query(db_path, "SELECT workflow_id FROM workflow_versions")) == [
        ("quick",),
        ("recover-basic",),
    ]


async def test_a_version_is_kept_once_however_many_runs_name_it(db_path: Path, url: str) -> None:
    """Many runs of a workflow, across two engine sessions, keep one row of its version."""
    for _ in range(2):
        async with make_engine(url, flows.QUICK) as engine:
            for _ in range(3):
                await (await engine.start(flows.QUICK)).result()
    assert query(db_path, "SELECT workflow_id FROM workflow_versions") == [("quick",)]


async def test_same_stages_under_another_workflow_id_is_another_version(url: str) -> None:
    """Two workflows with the same stages and actions but other ids do not share a version."""
    twin = flows.deploy(*flows.QUICK.stages[0].actions, workflow_id="quick-twin")
    async with make_engine(url, flows.QUICK, twin) as engine:
        one = await (await engine.start(flows.QUICK)).info()
        two = await (await engine.start(twin)).info()
    assert one.workflow_version != two.workflow_version


def kept(version: str, shape: list[Any], definition_id: str = "wf") -> WorkflowVersion:
    return WorkflowVersion(version, "wf", shape, {"id": definition_id, "stages": []})


@pytest.mark.parametrize("backend", [MemoryBackend, SQLiteBackend], ids=["memory", "sqlite"])
async def test_backend_gives_the_versions_of_a_shape_its_own_first(backend: Any, db_path: Path) -> None:
    """load_versions gives every version kept with the same shape key, the one asked for first."""
    made = backend() if backend is MemoryBackend else backend(db_path)
    shape = [["s", ["a"]]]
    first, second = kept("p.d1", shape), kept("p.d2", shape)
    other_shape = kept("q.d1", [["s", ["b"]]])
    async with made:
        for version in (first, second, other_shape):
            await made.save_version(version)
        assert await made.load_versions("p.d2") == [second, first]
        assert await made.load_versions("p.d1") == [first, second]
        assert await made.load_versions("p.d3") == [first, second]
        assert await made.load_versions("r.d1") == []


@pytest.mark.parametrize("backend", [MemoryBackend, SQLiteBackend], ids=["memory", "sqlite"])
async def test_backend_keeps_the_first_version_saved_under_a_key(backend: Any, db_path: Path) -> None:
    """A second save_version under the same key changes nothing."""
    made = backend() if backend is MemoryBackend else backend(db_path)
    first = kept("p.d", [["s", ["a", "b"]]])
    async with made:
        await made.save_version(first)
        await made.save_version(kept("p.d", [["s", []]], definition_id="other"))
        assert await made.load_versions("p.d") == [first]


# ---- runs from before versions were recorded ------------------------------------------------


def as_schema_3(db_path: Path) -> None:
    """Rewrite the file as schema 3 had it: no version nor resume key on runs, no table of versions."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.executescript(
            """
            BEGIN;
            ALTER TABLE runs DROP COLUMN workflow_version;
            ALTER TABLE runs DROP COLUMN resume_key;
            DROP TABLE workflow_versions;
            UPDATE asyncflow_meta SET value = '3' WHERE key = 'schema_version';
            COMMIT;
            """
        )
    finally:
        conn.close()


async def test_schema_3_file_is_upgraded_and_its_interrupted_run_recovers(db_path: Path, url: str) -> None:
    """A schema-3 file opens as schema 5, and its interrupted run goes on with the registered workflow."""
    run_id = await interrupt(url, flows.DEPLOY_V1)
    as_schema_3(db_path)
    result = await finish(url, run_id, flows.DEPLOY_V1)
    assert result.status is af.RunStatus.COMPLETED
    assert executions() == {"first": 1, "hang": 2, "last": 1}
    assert query(db_path, "SELECT value FROM asyncflow_meta WHERE key = 'schema_version'") == CURRENT_SCHEMA
    assert query(db_path, "SELECT workflow_version FROM runs") == [(None,)]


async def test_run_without_a_version_goes_on_as_registered_with_a_warning(
    db_path: Path, url: str, asyncflow_log: list[dict[str, Any]]
) -> None:
    """A run from before versions were recorded goes on with the registered workflow, and the log says so."""
    run_id = await interrupt(url, flows.DEPLOY_V1)
    as_schema_3(db_path)
    result = await finish(url, run_id, flows.DEPLOY_V1)
    assert result.status is af.RunStatus.COMPLETED
    warnings = warnings_about(run_id, asyncflow_log)
    assert len(warnings) == 1
    assert "before asyncflow recorded" in warnings[0]


# ---- a workflow defined in a script ---------------------------------------------------------

SCRIPT = '''
"""A workflow in a script: run as `python deploy_app.py DB LEDGER`, its actions are __main__'s."""

import sys

import anyio

import asyncflow as af

LEDGER = sys.argv[2] if __name__ == "__main__" else ""


class Step(af.Action):
    def __init__(self, label: str) -> None:
        self.label = label

    async def execute(self, ctx: af.ActionContext) -> None:
        with open(ctx.store.get_or("ledger", LEDGER), "a") as ledger:
            ledger.write(self.label + "\\n")
        if self.label == "approve" and not ctx.is_resuming:
            ctx.suspend("needs approval")


def workflow(*labels: str) -> af.Workflow:
    return af.Workflow("script-flow", stages=[af.Stage("s", actions=[Step(label) for label in labels])])


async def main() -> None:
    engine = af.Engine(f"sqlite:///{sys.argv[1]}")
    flow = engine.register(workflow("charge", "approve", "ship"))
    async with engine:
        result = await (await engine.start(flow, store={"ledger": LEDGER})).result()
    print(result.run_id, result.status.value)


if __name__ == "__main__":
    anyio.run(main)
'''


async def test_run_of_a_script_is_recreated_by_a_process_that_imports_the_script(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started by `python app.py` goes on, after a change, in a process that imports `app`."""
    (tmp_path / "deploy_app.py").write_text(SCRIPT)
    ledger = tmp_path / "ledger.txt"
    started = await anyio.run_process(
        [sys.executable, str(tmp_path / "deploy_app.py"), str(db_path), str(ledger)], check=True
    )
    run_id, status = started.stdout.decode().split()
    assert status == "suspended"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "deploy_app", raising=False)
    app = importlib.import_module("deploy_app")
    changed = app.workflow("validate", "charge", "approve", "ship")
    async with make_engine(f"sqlite:///{db_path}", changed) as engine:
        with anyio.fail_after(5):
            result = await (await engine.resume(run_id)).result()
    assert result.status is af.RunStatus.COMPLETED
    assert ledger.read_text().split() == ["charge", "approve", "approve", "ship"]
