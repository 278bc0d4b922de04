"""Execution order of stages and actions, static and dynamic, and what a run records of it (SPEC §1)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import asyncflow as af
from asyncflow import backoff

Hook = Callable[[af.ActionContext], None]


# ---- helpers -------------------------------------------------------------------------


def step(name: str, trace: list[str], hook: Hook | None = None) -> af.Action:
    """An action named ``name`` that appends its name to ``trace``, then calls ``hook(ctx)``."""

    async def body(ctx: af.ActionContext) -> None:
        trace.append(name)
        if hook is not None:
            hook(ctx)

    return af.action(name=name)(body)


def stage(stage_id: str, trace: list[str], hook: Hook | None = None) -> af.Stage:
    """A one-action stage whose action (named like the stage) appends the stage id to ``trace``."""
    return af.Stage(stage_id, actions=[step(stage_id, trace, hook)])


def boom(name: str = "boom") -> af.Action:
    """An action that raises RuntimeError."""

    async def body(ctx: af.ActionContext) -> None:
        raise RuntimeError(f"{name} broke")

    return af.action(name=name)(body)


@af.action
async def noop(ctx: af.ActionContext) -> None:
    """Do nothing."""


def stages_ran(result: af.RunResult) -> list[str]:
    """Ids of the stage records that completed, in record order."""
    return [s.stage_id for s in result.steps if s.kind == "stage" and s.status is af.StepStatus.COMPLETED]


def actions_ran(result: af.RunResult) -> list[str | None]:
    """Names of the action records that completed, in record order."""
    return [s.action_name for s in result.steps if s.kind == "action" and s.status is af.StepStatus.COMPLETED]


def shape(result: af.RunResult) -> list[tuple[str, str, str | None, af.StepStatus, bool]]:
    """Every record as (kind, stage_id, action_name, status, dynamic)."""
    return [(s.kind, s.stage_id, s.action_name, s.status, s.dynamic) for s in result.steps]


async def run_failing(wf: af.Workflow, **kwargs: int) -> af.ActionFailed:
    """Run ``wf``, expecting it to fail, and return the ActionFailed."""
    with pytest.raises(af.ActionFailed) as info:
        await af.run(wf, **kwargs)
    return info.value


C = af.StepStatus.COMPLETED
F = af.StepStatus.FAILED
S = af.StepStatus.SKIPPED


# ---- static order ------------------------------------------------------------------------


async def test_stages_run_in_the_order_they_were_added() -> None:
    """Stages run in the order they were added to the workflow."""
    trace: list[str] = []
    wf = af.Workflow("w", stages=[stage("a", trace), stage("b", trace)])
    wf.add_stage(stage("c", trace)).add_stage(stage("d", trace))
    result = await af.run(wf)
    assert trace == ["a", "b", "c", "d"]
    assert stages_ran(result) == ["a", "b", "c", "d"]


async def test_actions_run_in_the_order_they_were_added_within_a_stage() -> None:
    """Inside a stage, actions run in the order they were added."""
    trace: list[str] = []
    only = af.Stage("s", actions=[step("x", trace), step("y", trace)])
    only.add_action(step("z", trace)).add_action(step("w", trace))
    result = await af.run(af.Workflow("w", stages=[only]))
    assert trace == ["x", "y", "z", "w"]
    assert actions_ran(result) == ["x", "y", "z", "w"]


async def test_all_actions_of_a_stage_run_before_the_next_stage() -> None:
    """Every action of a stage runs before any action of the next stage."""
    trace: list[str] = []
    wf = af.Workflow(
        "w",
        stages=[
            af.Stage("one", actions=[step("a1", trace), step("a2", trace)]),
            af.Stage("two", actions=[step("b1", trace), step("b2", trace)]),
        ],
    )
    await af.run(wf)
    assert trace == ["a1", "a2", "b1", "b2"]


# ---- dynamic actions -----------------------------------------------------------------------


async def test_dynamic_actions_run_right_after_the_inserting_action() -> None:
    """Stage [A, B, C] where A adds D1 then D2 runs A, D1, D2, B, C."""
    trace: list[str] = []

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(step("D1", trace))
        ctx.add_dynamic_action(step("D2", trace))

    s = af.Stage("s", actions=[step("A", trace, add), step("B", trace), step("C", trace)])
    result = await af.run(af.Workflow("w", stages=[s]))
    assert trace == ["A", "D1", "D2", "B", "C"]
    assert actions_ran(result) == ["A", "D1", "D2", "B", "C"]


async def test_nested_dynamic_actions_run_depth_first() -> None:
    """D1 (dynamic) adding E1 gives A, D1, E1, D2, B, C."""
    trace: list[str] = []

    def add_e(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(step("E1", trace))

    def add_d(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(step("D1", trace, add_e))
        ctx.add_dynamic_action(step("D2", trace))

    s = af.Stage("s", actions=[step("A", trace, add_d), step("B", trace), step("C", trace)])
    result = await af.run(af.Workflow("w", stages=[s]))
    assert trace == ["A", "D1", "E1", "D2", "B", "C"]
    assert actions_ran(result) == ["A", "D1", "E1", "D2", "B", "C"]


async def test_dynamic_actions_added_by_the_last_action_run_before_the_next_stage() -> None:
    """Actions inserted by a stage's last action run in that stage, before the next stage."""
    trace: list[str] = []

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(step("D1", trace))

    wf = af.Workflow("w", stages=[af.Stage("one", actions=[step("A", trace, add)]), stage("two", trace)])
    result = await af.run(wf)
    assert trace == ["A", "D1", "two"]
    assert [(s.kind, s.stage_id, s.action_name) for s in result.steps] == [
        ("stage", "one", None),
        ("action", "one", "A"),
        ("action", "one", "D1"),
        ("stage", "two", None),
        ("action", "two", "two"),
    ]


# ---- dynamic stages -------------------------------------------------------------------------


async def test_dynamic_stages_run_right_after_the_current_stage() -> None:
    """Workflow [A, B, C] where an action of A adds D1 then D2 runs A, D1, D2, B, C."""
    trace: list[str] = []

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D1", trace))
        ctx.add_dynamic_stage(stage("D2", trace))

    wf = af.Workflow("w", stages=[stage("A", trace, add), stage("B", trace), stage("C", trace)])
    result = await af.run(wf)
    assert trace == ["A", "D1", "D2", "B", "C"]
    assert stages_ran(result) == ["A", "D1", "D2", "B", "C"]


async def test_dynamic_stages_wait_for_the_rest_of_the_current_stage() -> None:
    """A stage inserted by the first action runs only after the stage's remaining actions."""
    trace: list[str] = []

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D1", trace))

    first = af.Stage("A", actions=[step("a1", trace, add), step("a2", trace), step("a3", trace)])
    result = await af.run(af.Workflow("w", stages=[first, stage("B", trace)]))
    assert trace == ["a1", "a2", "a3", "D1", "B"]
    assert stages_ran(result) == ["A", "D1", "B"]


async def test_dynamic_stages_from_several_actions_run_in_insertion_order() -> None:
    """Stages inserted by several actions of one stage run in insertion order across those actions."""
    trace: list[str] = []

    def add_first(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D1", trace))

    def add_second(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D2", trace))
        ctx.add_dynamic_stage(stage("D3", trace))

    def add_third(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D4", trace))

    first = af.Stage(
        "A",
        actions=[step("a1", trace, add_first), step("a2", trace, add_second), step("a3", trace, add_third)],
    )
    result = await af.run(af.Workflow("w", stages=[first, stage("B", trace), stage("C", trace)]))
    assert stages_ran(result) == ["A", "D1", "D2", "D3", "D4", "B", "C"]
    assert trace == ["a1", "a2", "a3", "D1", "D2", "D3", "D4", "B", "C"]


async def test_nested_dynamic_stages_run_depth_first() -> None:
    """D1 (dynamic) inserting E1 gives A, D1, E1, D2, B, C."""
    trace: list[str] = []

    def add_e(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("E1", trace))

    def add_d(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D1", trace, add_e))
        ctx.add_dynamic_stage(stage("D2", trace))

    wf = af.Workflow("w", stages=[stage("A", trace, add_d), stage("B", trace), stage("C", trace)])
    result = await af.run(wf)
    assert trace == ["A", "D1", "E1", "D2", "B", "C"]
    assert stages_ran(result) == ["A", "D1", "E1", "D2", "B", "C"]


async def test_a_dynamic_action_may_insert_stages() -> None:
    """A stage inserted by a dynamic action runs after the current stage, before the next static one."""
    trace: list[str] = []

    def add_stage(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D", trace))

    def add_action(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(step("x", trace, add_stage))

    first = af.Stage("A", actions=[step("a1", trace, add_action), step("a2", trace)])
    result = await af.run(af.Workflow("w", stages=[first, stage("B", trace)]))
    assert trace == ["a1", "x", "a2", "D", "B"]
    assert stages_ran(result) == ["A", "D", "B"]


async def test_stages_inserted_by_static_and_dynamic_actions_keep_insertion_order() -> None:
    """Stages inserted by a static action and by its dynamic child run in the order of the calls."""
    trace: list[str] = []

    def child(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("from-child", trace))

    def parent(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("from-parent-1", trace))
        ctx.add_dynamic_action(step("child", trace, child))
        ctx.add_dynamic_stage(stage("from-parent-2", trace))

    wf = af.Workflow("w", stages=[stage("A", trace, parent), stage("B", trace)])
    result = await af.run(wf)
    assert stages_ran(result) == ["A", "from-parent-1", "from-parent-2", "from-child", "B"]


async def test_three_levels_of_dynamic_stages_run_depth_first() -> None:
    """A dynamic stage of a dynamic stage of a dynamic stage runs before its ancestors' later siblings."""
    trace: list[str] = []

    def add_f(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("F1", trace))
        ctx.add_dynamic_stage(stage("F2", trace))

    def add_e(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("E1", trace, add_f))
        ctx.add_dynamic_stage(stage("E2", trace))

    def add_d(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D1", trace, add_e))
        ctx.add_dynamic_stage(stage("D2", trace))

    wf = af.Workflow("w", stages=[stage("A", trace, add_d), stage("B", trace)])
    result = await af.run(wf)
    expected = ["A", "D1", "E1", "F1", "F2", "E2", "D2", "B"]
    assert trace == expected
    assert stages_ran(result) == expected


async def test_dynamic_stages_inserted_by_the_last_stage_run() -> None:
    """Stages inserted by the workflow's last stage still run, at the end."""
    trace: list[str] = []

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("tail", trace))

    result = await af.run(af.Workflow("w", stages=[stage("A", trace), stage("Z", trace, add)]))
    assert trace == ["A", "Z", "tail"]
    assert result.status is af.RunStatus.COMPLETED


async def test_plan_stage_ids_show_inserted_stages_in_execution_order() -> None:
    """ctx.plan.stage_ids() lists static and inserted stages in the order they will run."""
    trace: list[str] = []
    seen: list[list[str]] = []

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D1", trace))
        ctx.add_dynamic_stage(stage("D2", trace))
        seen.append(ctx.plan.stage_ids())

    await af.run(af.Workflow("w", stages=[stage("A", trace, add), stage("B", trace)]))
    assert seen == [["A", "D1", "D2", "B"]]


# ---- the seed's discovery pattern ---------------------------------------------------------------


class ProcessResource(af.Action):
    """Process one discovered resource type (the seed's ProcessResourceAction)."""

    def __init__(self, type: str) -> None:
        self.type = type

    async def execute(self, ctx: af.ActionContext) -> None:
        ctx.store["processed"] = [*ctx.store.get_or("processed", []), self.type]


class DiscoverResources(af.Action):
    """Discover resource types and insert one processing stage per type."""

    async def execute(self, ctx: af.ActionContext) -> None:
        for resource_type in ["databases", "caches", "servers"]:
            new_stage = af.Stage(
                f"process-{resource_type}",
                name=f"Process {resource_type}",
                description="A dynamically generated stage.",
            )
            new_stage.add_action(ProcessResource(resource_type))
            ctx.add_dynamic_stage(new_stage)


@af.action
async def report(ctx: af.ActionContext) -> None:
    """Summarise what was processed."""
    ctx.store["report"] = ", ".join(ctx.store.get("processed", list))


async def test_discovery_stage_inserts_processing_stages_before_report() -> None:
    """The seed's pattern: discover inserts process-databases, -caches, -servers, which run before report."""
    wf = af.Workflow(
        "discovery",
        stages=[
            af.Stage("discover", actions=[DiscoverResources()]),
            af.Stage("report", actions=[report]),
        ],
    )
    result = await af.run(wf)
    assert stages_ran(result) == [
        "discover",
        "process-databases",
        "process-caches",
        "process-servers",
        "report",
    ]
    assert result.store["report"] == "databases, caches, servers"
    assert [s.dynamic for s in result.steps if s.kind == "stage"] == [False, True, True, True, False]


# ---- records ------------------------------------------------------------------------------


def _mixed_workflow(trace: list[str]) -> af.Workflow:
    """Workflow [A(a1, a2), B(b1)]: a1 inserts action x and stage D(d1)."""

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(step("x", trace))
        ctx.add_dynamic_stage(af.Stage("D", actions=[step("d1", trace)]))

    return af.Workflow(
        "w",
        stages=[
            af.Stage("A", actions=[step("a1", trace, add), step("a2", trace)]),
            af.Stage("B", actions=[step("b1", trace)]),
        ],
    )


async def test_steps_hold_one_record_per_stage_and_action_in_execution_order() -> None:
    """result.steps has one record per stage and per action, in execution order."""
    result = await af.run(_mixed_workflow([]))
    assert [(s.kind, s.stage_id, s.action_name) for s in result.steps] == [
        ("stage", "A", None),
        ("action", "A", "a1"),
        ("action", "A", "x"),
        ("action", "A", "a2"),
        ("stage", "D", None),
        ("action", "D", "d1"),
        ("stage", "B", None),
        ("action", "B", "b1"),
    ]


async def test_records_of_inserted_steps_are_marked_dynamic() -> None:
    """Inserted stages and actions (and the actions of inserted stages) are marked dynamic."""
    result = await af.run(_mixed_workflow([]))
    dynamic = {(s.stage_id, s.action_name): s.dynamic for s in result.steps}
    assert dynamic == {
        ("A", None): False,
        ("A", "a1"): False,
        ("A", "x"): True,
        ("A", "a2"): False,
        ("D", None): True,
        ("D", "d1"): True,
        ("B", None): False,
        ("B", "b1"): False,
    }


async def test_record_kinds_are_stage_or_action() -> None:
    """Every record's kind is "stage" or "action", and stage records have no action name."""
    result = await af.run(_mixed_workflow([]))
    assert {s.kind for s in result.steps} == {"stage", "action"}
    assert all(s.action_name is None for s in result.steps if s.kind == "stage")
    assert all(isinstance(s.action_name, str) for s in result.steps if s.kind == "action")


async def test_record_statuses_are_completed_for_a_completed_run() -> None:
    """In a completed run every record is completed."""
    result = await af.run(_mixed_workflow([]))
    assert result.status is af.RunStatus.COMPLETED
    assert {s.status for s in result.steps} == {af.StepStatus.COMPLETED}


async def test_record_durations_are_not_negative() -> None:
    """Every record's duration is a float >= 0, skipped ones included."""
    trace: list[str] = []

    def disable(ctx: af.ActionContext) -> None:
        ctx.plan.disable_stage("B")

    wf = _mixed_workflow(trace)
    wf.stages[0].add_action(step("off", trace, disable))
    result = await af.run(wf)
    assert any(s.status is S for s in result.steps)
    assert all(isinstance(s.duration, float) and s.duration >= 0 for s in result.steps)


# ---- isolation ------------------------------------------------------------------------------


async def test_running_a_workflow_never_changes_it() -> None:
    """After runs that insert stages and actions, the workflow's stages and actions are unchanged."""
    trace: list[str] = []
    wf = _mixed_workflow(trace)
    stages_before = wf.stages
    actions_before = [s.actions for s in wf.stages]
    await af.run(wf)
    await af.run(wf)
    assert wf.stages == stages_before
    assert all(a is b for a, b in zip(wf.stages, stages_before, strict=True))
    assert [s.actions for s in wf.stages] == actions_before
    assert [s.id for s in wf.stages] == ["A", "B"]
    assert [a.name for a in wf.stages[0].actions] == ["a1", "a2"]
    assert trace == ["a1", "x", "a2", "d1", "b1"] * 2


def _counting_workflow() -> af.Workflow:
    """A workflow whose runs insert a per-run stage and a shared-id stage and count in their store."""

    @af.action
    async def bump(ctx: af.ActionContext) -> None:
        await anyio.lowlevel.checkpoint()
        ctx.store["counter"] = ctx.store.get("counter", int) + 1
        await anyio.lowlevel.checkpoint()
        ctx.store["trail"] = [*ctx.store.get("trail", list), ctx.stage_id]

    @af.action
    async def start(ctx: af.ActionContext) -> None:
        request = ctx.store.get("request", int)
        ctx.store["counter"] = 1
        ctx.store["trail"] = [ctx.stage_id]
        ctx.store["run"] = ctx.run_id
        await anyio.lowlevel.checkpoint()
        ctx.add_dynamic_stage(af.Stage(f"dyn-{request}", actions=[bump]))
        await anyio.lowlevel.checkpoint()
        ctx.add_dynamic_stage(af.Stage("shared", actions=[bump]))

    return af.Workflow(
        "counting",
        stages=[af.Stage("start", actions=[start]), af.Stage("end", actions=[bump])],
    )


def _check_counting_results(results: dict[int, af.RunResult]) -> None:
    assert sorted(results) == list(range(1_000))
    for request, result in results.items():
        order = ["start", f"dyn-{request}", "shared", "end"]
        assert result.status is af.RunStatus.COMPLETED
        assert stages_ran(result) == order
        assert result.store == {
            "request": request,
            "counter": 4,
            "trail": order,
            "run": result.run_id,
        }
    assert len({r.run_id for r in results.values()}) == 1_000


@pytest.mark.asyncio_only
async def test_one_workflow_run_by_1000_gathered_tasks_gives_isolated_results() -> None:
    """1,000 concurrent runs (asyncio.gather) of one workflow each get their own order and store."""
    wf = _counting_workflow()
    stages_before = wf.stages
    runs = await asyncio.gather(*(af.run(wf, store={"request": i}) for i in range(1_000)))
    _check_counting_results({r.store["request"]: r for r in runs})
    assert wf.stages == stages_before
    assert [s.actions for s in wf.stages] == [s.actions for s in stages_before]


async def test_one_workflow_run_by_1000_tasks_in_a_task_group_gives_isolated_results() -> None:
    """1,000 concurrent runs in an anyio task group of one workflow each get their own order and store."""
    wf = _counting_workflow()
    results: dict[int, af.RunResult] = {}

    async def one(request: int) -> None:
        results[request] = await af.run(wf, store={"request": request})

    async with anyio.create_task_group() as group:
        for i in range(1_000):
            group.start_soon(one, i)
    _check_counting_results(results)


async def test_run_ids_are_unique_per_run() -> None:
    """Each run gets a fresh run_id, the same one its actions see as ctx.run_id."""
    seen: list[str] = []

    @af.action
    async def remember(ctx: af.ActionContext) -> None:
        seen.append(ctx.run_id)

    wf = af.Workflow("w", stages=[af.Stage("s", actions=[remember])])
    results = [await af.run(wf) for _ in range(200)]
    ids = [r.run_id for r in results]
    assert len(set(ids)) == 200
    assert seen == ids
    assert all(isinstance(i, str) and i for i in ids)


# ---- the insertion bound -------------------------------------------------------------------------


def _inserting(count: int, *, stages: bool = False) -> af.Action:
    """An action that inserts ``count`` no-op actions (or stages)."""

    async def body(ctx: af.ActionContext) -> None:
        for i in range(count):
            if stages:
                ctx.add_dynamic_stage(af.Stage(f"{ctx.stage_id}-ins-{i}", actions=[noop]))
            else:
                ctx.add_dynamic_action(noop)

    return af.action(name="inserting")(body)


def _wf(*actions: af.Action) -> af.Workflow:
    return af.Workflow("w", stages=[af.Stage("s", actions=list(actions))])


async def test_default_insertion_bound_allows_10000_insertions() -> None:
    """By default a run may insert exactly 10,000 steps."""
    result = await af.run(_wf(_inserting(10_000)))
    assert result.status is af.RunStatus.COMPLETED
    assert actions_ran(result).count("noop") == 10_000


async def test_default_insertion_bound_rejects_the_10001st_insertion() -> None:
    """By default the 10,001st insertion fails the run with InsertionLimitExceeded naming 10000."""
    exc = await run_failing(_wf(_inserting(10_001)))
    assert isinstance(exc.__cause__, af.InsertionLimitExceeded)
    assert "10000" in str(exc.__cause__)
    assert exc.result is not None
    assert exc.result.status is af.RunStatus.FAILED


async def test_run_max_insertions_bounds_the_run() -> None:
    """af.run(wf, max_insertions=5) fails a run inserting 6 steps with a clear error naming the bound."""
    exc = await run_failing(_wf(_inserting(6)), max_insertions=5)
    assert isinstance(exc.__cause__, af.InsertionLimitExceeded)
    assert isinstance(exc.__cause__, af.WorkflowError)
    assert "bound of 5" in str(exc.__cause__)
    assert "bound of 5" in str(exc)
    assert (exc.stage_id, exc.action_name) == ("s", "inserting")
    assert exc.result is not None
    assert exc.result.status is af.RunStatus.FAILED


async def test_runner_max_insertions_bounds_its_runs() -> None:
    """af.Runner(max_insertions=5) fails a run inserting 6 steps with InsertionLimitExceeded as cause."""
    runner = af.Runner(max_insertions=5)
    with pytest.raises(af.ActionFailed) as info:
        await runner.run(_wf(_inserting(6)))
    assert isinstance(info.value.__cause__, af.InsertionLimitExceeded)
    assert "bound of 5" in str(info.value)


async def test_runner_max_insertions_can_be_overridden_per_run() -> None:
    """Runner.run(..., max_insertions=N) overrides the runner's bound for that run."""
    runner = af.Runner(max_insertions=5)
    result = await runner.run(_wf(_inserting(8)), max_insertions=8)
    assert result.status is af.RunStatus.COMPLETED


async def test_run_max_insertions_overrides_the_bound_of_the_runner_it_is_given() -> None:
    """af.run(wf, runner=..., max_insertions=N) bounds that run by N, not by the runner's own bound."""
    runner = af.Runner(max_insertions=5)
    result = await af.run(_wf(_inserting(8)), runner=runner, max_insertions=8)
    assert result.status is af.RunStatus.COMPLETED


@pytest.mark.parametrize(
    ("bound", "error", "message"),
    [
        (True, TypeError, "must be an int, got True"),
        ("5", TypeError, "must be an int, got '5'"),
        (-1, ValueError, "must be zero or more, got -1"),
    ],
    ids=["bool", "text", "negative"],
)
def test_max_insertions_refuses_what_is_not_a_count(
    bound: object, error: type[Exception], message: str
) -> None:
    """af.Runner(max_insertions=...) of a bool, a string or a negative number is refused, showing it."""
    with pytest.raises(error, match=f"max_insertions {message}"):
        af.Runner(max_insertions=bound)  # type: ignore[arg-type]


async def test_a_bound_of_zero_insertions_lets_a_run_that_inserts_nothing_complete() -> None:
    """max_insertions=0 is a valid bound: a run inserting nothing completes, one insertion fails it."""
    assert (await af.run(_wf(_inserting(0)), max_insertions=0)).status is af.RunStatus.COMPLETED
    exc = await run_failing(_wf(_inserting(1)), max_insertions=0)
    assert isinstance(exc.__cause__, af.InsertionLimitExceeded)


async def test_insertion_bound_is_exact() -> None:
    """Exactly max_insertions insertions is fine."""
    result = await af.run(_wf(_inserting(5)), max_insertions=5)
    assert result.status is af.RunStatus.COMPLETED
    assert actions_ran(result) == ["inserting", *["noop"] * 5]


async def test_insertion_bound_counts_stage_insertions_too() -> None:
    """Inserted stages count toward the bound like inserted actions."""
    exc = await run_failing(_wf(_inserting(6, stages=True)), max_insertions=5)
    assert isinstance(exc.__cause__, af.InsertionLimitExceeded)


async def test_insertion_bound_counts_across_the_whole_run() -> None:
    """The bound is per run: insertions by different actions and stages add up."""
    wf = af.Workflow(
        "w",
        stages=[
            af.Stage("one", actions=[_inserting(2, stages=True)]),
            af.Stage("two", actions=[_inserting(2)]),
            af.Stage("three", actions=[_inserting(2)]),
        ],
    )
    exc = await run_failing(wf, max_insertions=5)
    assert isinstance(exc.__cause__, af.InsertionLimitExceeded)
    assert exc.stage_id == "three"


async def test_insertion_bound_is_not_shared_between_runs() -> None:
    """Each run has its own insertion budget."""
    runner = af.Runner(max_insertions=5)
    wf = _wf(_inserting(5))
    for _ in range(3):
        result = await runner.run(wf)
        assert result.status is af.RunStatus.COMPLETED


async def test_swallowing_insertion_limit_exceeded_still_fails_the_run() -> None:
    """An action that catches InsertionLimitExceeded and carries on still fails the run."""
    trace: list[str] = []

    @af.action
    async def greedy(ctx: af.ActionContext) -> None:
        for _ in range(10):
            with contextlib.suppress(af.InsertionLimitExceeded):
                ctx.add_dynamic_action(step("child", trace))

    wf = af.Workflow("w", stages=[af.Stage("s", actions=[greedy]), stage("after", trace)])
    exc = await run_failing(wf, max_insertions=5)
    assert isinstance(exc.__cause__, af.InsertionLimitExceeded)
    assert (exc.stage_id, exc.action_name) == ("s", "greedy")
    assert trace == []
    assert exc.result is not None
    assert exc.result.status is af.RunStatus.FAILED


async def test_swallowed_insertion_limit_error_names_the_run_and_its_bound() -> None:
    """The InsertionLimitExceeded that fails a run whose action swallowed one names the run and the bound."""

    @af.action
    async def greedy(ctx: af.ActionContext) -> None:
        for _ in range(4):
            with contextlib.suppress(af.InsertionLimitExceeded):
                ctx.add_dynamic_action(noop)

    exc = await run_failing(_wf(greedy), max_insertions=2)
    assert isinstance(exc.__cause__, af.InsertionLimitExceeded)
    assert exc.result is not None
    assert f"run {exc.result.run_id!r} exceeded its bound of 2 dynamic insertions" in str(exc.__cause__)


@pytest.mark.parametrize(
    "options",
    [{"retry": af.Retry(attempts=2, backoff=backoff.fixed(0))}, {"timeout": 30.0}],
    ids=["with-retry", "with-timeout"],
)
async def test_swallowing_insertion_limit_exceeded_fails_an_action_with_a_policy_too(
    options: dict[str, Any],
) -> None:
    """An action with a retry policy or a time limit that swallows InsertionLimitExceeded fails with it."""

    @af.action(name="greedy", **options)
    async def greedy(ctx: af.ActionContext) -> None:
        for _ in range(4):
            with contextlib.suppress(af.InsertionLimitExceeded):
                ctx.add_dynamic_action(noop)

    exc = await run_failing(_wf(greedy), max_insertions=2)
    assert isinstance(exc.__cause__, af.InsertionLimitExceeded)
    assert exc.action_name == "greedy"


async def test_swallowing_insertion_limit_exceeded_discards_the_action_store_writes() -> None:
    """An action failed for swallowing InsertionLimitExceeded leaves no store writes (as any failure)."""

    @af.action
    async def greedy(ctx: af.ActionContext) -> None:
        ctx.store["written"] = True
        for _ in range(3):
            with contextlib.suppress(af.InsertionLimitExceeded):
                ctx.add_dynamic_action(noop)

    exc = await run_failing(_wf(greedy), max_insertions=2)
    assert exc.result is not None
    assert "written" not in exc.result.store


async def test_swallowing_insertion_limit_exceeded_discards_the_action_insertions() -> None:
    """An action failed for swallowing InsertionLimitExceeded leaves no insertions behind (as any failure)."""

    @af.action
    async def greedy(ctx: af.ActionContext) -> None:
        for i in range(3):
            with contextlib.suppress(af.InsertionLimitExceeded):
                ctx.add_dynamic_stage(af.Stage(f"d{i}", actions=[noop]))

    exc = await run_failing(_wf(greedy), max_insertions=2)
    assert exc.result is not None
    assert shape(exc.result) == [
        ("stage", "s", None, F, False),
        ("action", "s", "greedy", F, False),
    ]


# ---- the drain is iterative ---------------------------------------------------------------------


async def test_10000_nested_dynamic_actions_run_without_recursion_error() -> None:
    """A chain of 10,000 dynamic actions, each inserting the next, completes in order."""
    limit_before = sys.getrecursionlimit()
    depth = 10_000
    trace: list[int] = []

    class Link(af.Action):
        def __init__(self, n: int) -> None:
            self.n = n

        async def execute(self, ctx: af.ActionContext) -> None:
            trace.append(self.n)
            if self.n < depth:
                ctx.add_dynamic_action(Link(self.n + 1))

    result = await af.run(_wf(Link(0), step("last", [])), max_insertions=depth)
    assert result.status is af.RunStatus.COMPLETED
    assert trace == list(range(depth + 1))
    assert actions_ran(result)[-1] == "last"
    assert len(result.steps) == depth + 3
    assert sys.getrecursionlimit() == limit_before


async def test_2000_nested_dynamic_stages_run_without_recursion_error() -> None:
    """A chain of 2,000 dynamic stages, each inserting the next, completes in order."""
    limit_before = sys.getrecursionlimit()
    depth = 2_000

    class Grow(af.Action):
        async def execute(self, ctx: af.ActionContext) -> None:
            n = int(ctx.stage_id.removeprefix("n"))
            if n < depth:
                ctx.add_dynamic_stage(af.Stage(f"n{n + 1}", actions=[self]))

    wf = af.Workflow("w", stages=[af.Stage("n0", actions=[Grow()]), af.Stage("end", actions=[noop])])
    result = await af.run(wf, max_insertions=depth)
    assert result.status is af.RunStatus.COMPLETED
    assert stages_ran(result) == [f"n{i}" for i in range(depth + 1)] + ["end"]
    assert sys.getrecursionlimit() == limit_before


# ---- duplicate stage ids ----------------------------------------------------------------------------


async def test_inserting_a_stage_id_already_in_the_plan_fails_the_run() -> None:
    """Inserting a stage whose id is a static stage's raises DuplicateStageId naming the id."""
    trace: list[str] = []

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("B", trace))

    wf = af.Workflow("w", stages=[stage("A", trace, add), stage("B", trace)])
    exc = await run_failing(wf)
    cause = exc.__cause__
    assert isinstance(cause, af.DuplicateStageId)
    assert isinstance(cause, ValueError)
    assert "'B'" in str(cause)
    assert exc.stage_id == "A"
    assert trace == ["A"]
    assert exc.result is not None
    assert exc.result.status is af.RunStatus.FAILED


async def test_inserting_an_id_inserted_earlier_in_the_run_is_a_duplicate() -> None:
    """An id inserted earlier in the run counts as in the plan: inserting it again is DuplicateStageId."""
    trace: list[str] = []

    def add_again(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D", trace))

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D", trace, add_again))

    exc = await run_failing(af.Workflow("w", stages=[stage("A", trace, add)]))
    assert isinstance(exc.__cause__, af.DuplicateStageId)
    assert "'D'" in str(exc.__cause__)
    assert exc.stage_id == "D"


async def test_allow_duplicate_runs_copies_under_distinct_ids() -> None:
    """With allow_duplicate=True inserted copies of an id run as "id#2", then "id#3"."""
    seen: list[str] = []

    @af.action
    async def where(ctx: af.ActionContext) -> None:
        seen.append(ctx.stage_id)

    @af.action
    async def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("B", actions=[where]), allow_duplicate=True)
        ctx.add_dynamic_stage(af.Stage("B", actions=[where]), allow_duplicate=True)

    wf = af.Workflow("w", stages=[af.Stage("A", actions=[add]), af.Stage("B", actions=[where])])
    result = await af.run(wf)
    assert stages_ran(result) == ["A", "B#2", "B#3", "B"]
    assert seen == ["B#2", "B#3", "B"]


async def test_allow_duplicate_keeps_the_id_when_it_is_free() -> None:
    """allow_duplicate=True with an id not yet in the plan keeps the id as it is."""

    @af.action
    async def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("fresh", actions=[noop]), allow_duplicate=True)

    result = await af.run(_wf(add))
    assert stages_ran(result) == ["s", "fresh"]


# ---- skipped steps --------------------------------------------------------------------------------


async def test_disabled_stage_is_recorded_skipped_and_not_run() -> None:
    """A stage disabled before its turn is recorded skipped; its actions neither run nor get records."""
    trace: list[str] = []

    def disable(ctx: af.ActionContext) -> None:
        ctx.plan.disable_stage("B")

    wf = af.Workflow("w", stages=[stage("A", trace, disable), stage("B", trace), stage("C", trace)])
    result = await af.run(wf)
    assert trace == ["A", "C"]
    assert result.status is af.RunStatus.COMPLETED
    assert shape(result) == [
        ("stage", "A", None, C, False),
        ("action", "A", "A", C, False),
        ("stage", "B", None, S, False),
        ("stage", "C", None, C, False),
        ("action", "C", "C", C, False),
    ]


async def test_disabled_action_is_recorded_skipped_and_not_run() -> None:
    """An action disabled before its turn is recorded skipped and does not run."""
    trace: list[str] = []

    def disable(ctx: af.ActionContext) -> None:
        ctx.plan.disable_action("y", stage_id="s")

    wf = _wf(step("x", trace, disable), step("y", trace), step("z", trace))
    result = await af.run(wf)
    assert trace == ["x", "z"]
    assert shape(result) == [
        ("stage", "s", None, C, False),
        ("action", "s", "x", C, False),
        ("action", "s", "y", S, False),
        ("action", "s", "z", C, False),
    ]


async def test_disabled_dynamic_stage_and_action_are_recorded_skipped() -> None:
    """A step inserted then disabled is recorded skipped (and dynamic), and does not run."""
    trace: list[str] = []

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(step("x", trace))
        ctx.plan.disable_action("x", stage_id="A")
        ctx.add_dynamic_stage(stage("D", trace))
        ctx.plan.disable_stage("D")

    wf = af.Workflow("w", stages=[stage("A", trace, add), stage("B", trace)])
    result = await af.run(wf)
    assert trace == ["A", "B"]
    assert shape(result) == [
        ("stage", "A", None, C, False),
        ("action", "A", "A", C, False),
        ("action", "A", "x", S, True),
        ("stage", "D", None, S, True),
        ("stage", "B", None, C, False),
        ("action", "B", "B", C, False),
    ]


async def test_stages_inserted_by_a_failed_stage_are_recorded_skipped_and_not_run() -> None:
    """When a stage fails, the stages it inserted are recorded skipped, do not run, and the run fails."""
    trace: list[str] = []

    def add(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(stage("D1", trace))
        ctx.add_dynamic_stage(stage("D2", trace))

    wf = af.Workflow(
        "w",
        stages=[af.Stage("A", actions=[step("a1", trace, add), boom("a2")]), stage("B", trace)],
    )
    exc = await run_failing(wf)
    assert trace == ["a1"]
    assert isinstance(exc.__cause__, RuntimeError)
    assert (exc.stage_id, exc.action_name) == ("A", "a2")
    assert exc.result is not None
    assert exc.result.status is af.RunStatus.FAILED
    assert shape(exc.result) == [
        ("stage", "A", None, F, False),
        ("action", "A", "a1", C, False),
        ("action", "A", "a2", F, False),
        ("stage", "D1", None, S, True),
        ("stage", "D2", None, S, True),
    ]


def add_d(ctx: af.ActionContext) -> None:
    """Insert a stage "D" after the current one."""
    ctx.add_dynamic_stage(stage("D", []))


async def test_stages_inserted_by_a_bailing_stage_are_skipped_because_the_run_bailed() -> None:
    """A stage inserted by a stage whose action then bails is recorded skipped: "the run bailed"."""

    async def stop(ctx: af.ActionContext) -> None:
        ctx.bail("enough")

    wf = af.Workflow(
        "w", stages=[af.Stage("A", actions=[step("a1", [], add_d), af.action(name="stop")(stop)])]
    )
    result = await af.run(wf)
    [inserted] = [s for s in result.steps if s.stage_id == "D"]
    assert (inserted.status, inserted.reason) == (S, "the run bailed")


async def test_insertions_of_a_failed_action_are_discarded() -> None:
    """Stages and actions inserted by an action that then fails are neither run nor recorded."""
    trace: list[str] = []

    @af.action
    async def insert_then_fail(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(step("x", trace))
        ctx.add_dynamic_stage(stage("D", trace))
        raise RuntimeError("late failure")

    exc = await run_failing(_wf(insert_then_fail))
    assert trace == []
    assert exc.result is not None
    assert shape(exc.result) == [
        ("stage", "s", None, F, False),
        ("action", "s", "insert-then-fail", F, False),
    ]


@pytest.mark.parametrize("stages", [False, True], ids=["actions", "stages"])
async def test_discarded_insertions_of_failed_attempts_do_not_count_toward_the_bound(stages: bool) -> None:
    """Insertions of attempts that failed and were retried are given back: only the kept ones count."""

    @af.action(retry=af.Retry(attempts=3, backoff=backoff.fixed(0)))
    async def inserting_then_flaky(ctx: af.ActionContext) -> None:
        for i in range(4):
            if stages:
                ctx.add_dynamic_stage(af.Stage(f"ins-{i}", actions=[noop]))
            else:
                ctx.add_dynamic_action(noop)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")

    result = await af.run(_wf(inserting_then_flaky), max_insertions=4)
    assert result.status is af.RunStatus.COMPLETED
    assert actions_ran(result).count("noop") == 4


async def test_step_depth_is_zero_for_static_steps_and_grows_per_insertion_level() -> None:
    """StepRecord.depth: 0 for a static stage and action, +1 for each level of dynamic insertion."""

    @af.action(name="inner")
    async def inner(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(noop)

    @af.action(name="grow")
    async def grow(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(inner)
        ctx.add_dynamic_stage(af.Stage("dyn", actions=[noop]))

    result = await af.run(af.Workflow("w", stages=[af.Stage("s", actions=[grow])]))
    depths = [(s.kind, s.stage_id, s.action_name, s.depth) for s in result.steps if s.stage_id == "s"]
    assert depths == [
        ("stage", "s", None, 0),
        ("action", "s", "grow", 0),
        ("action", "s", "inner", 1),
        ("action", "s", "noop", 2),
    ]
    assert [s.depth for s in result.steps if s.kind == "stage" and s.stage_id == "dyn"] == [1]


async def test_actions_of_an_inserted_stage_have_its_depth_and_are_dynamic() -> None:
    """An inserted stage's actions are dynamic at its depth; what they insert is one level deeper."""

    @af.action(name="deeper")
    async def deeper(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(noop)
        ctx.add_dynamic_stage(af.Stage("dyn2", actions=[noop]))

    @af.action(name="grow")
    async def grow(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("dyn", actions=[deeper]))

    result = await af.run(af.Workflow("w", stages=[af.Stage("s", actions=[grow])]))
    records = [(s.kind, s.stage_id, s.action_name, s.dynamic, s.depth) for s in result.steps]
    assert records == [
        ("stage", "s", None, False, 0),
        ("action", "s", "grow", False, 0),
        ("stage", "dyn", None, True, 1),
        ("action", "dyn", "deeper", True, 1),
        ("action", "dyn", "noop", True, 2),
        ("stage", "dyn2", None, True, 2),
        ("action", "dyn2", "noop", True, 2),
    ]


@pytest.mark.parametrize("stages", [False, True], ids=["actions", "stages"])
async def test_a_discarded_insertion_gives_back_exactly_one_place(stages: bool) -> None:
    """A failed attempt's insertion gives back one place under the bound, no more than one."""

    @af.action(retry=af.Retry(attempts=2, backoff=backoff.fixed(0)))
    async def greedy_after_a_failure(ctx: af.ActionContext) -> None:
        for i in range(1 if ctx.attempt == 1 else 3):
            if stages:
                ctx.add_dynamic_stage(af.Stage(f"ins-{i}", actions=[noop]))
            else:
                ctx.add_dynamic_action(noop)
        if ctx.attempt == 1:
            raise ConnectionError("first attempt")

    exc = await run_failing(_wf(greedy_after_a_failure), max_insertions=2)
    assert isinstance(exc.__cause__, af.InsertionLimitExceeded)


async def test_undoing_a_stage_insertion_leaves_a_siblings_later_one() -> None:
    """Concurrent siblings: undoing a failed attempt's inserted stage keeps one a sibling inserted later."""
    inserted = anyio.Event()

    @af.action(name="flaky", retry=af.Retry(attempts=2, backoff=backoff.fixed(0)))
    async def flaky(ctx: af.ActionContext) -> None:
        if ctx.attempt == 1:
            ctx.add_dynamic_stage(af.Stage("from-flaky", actions=[noop]))
            await inserted.wait()
            raise ConnectionError("first attempt")

    @af.action(name="steady")
    async def steady(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("from-steady", actions=[noop]))
        inserted.set()

    wf = af.Workflow(
        "wf", stages=[af.Stage("s", concurrency=2, actions=[flaky, steady]), af.Stage("end", actions=[noop])]
    )
    with anyio.fail_after(5):
        result = await af.run(wf)
    assert result.status is af.RunStatus.COMPLETED
    assert stages_ran(result) == ["s", "from-steady", "end"]
