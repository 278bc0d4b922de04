"""Runtime control of a run through ``ctx.plan``: order, enable/disable, remove, find, status."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import anyio
import pytest

import asyncflow as af


def probe(
    name: str, fn: Callable[[af.ActionContext], Any] | None = None, *, tags: Iterable[str] | None = None
) -> af.Action:
    """An action called ``name`` that calls ``fn(ctx)`` (if given) and returns."""

    async def body(ctx: af.ActionContext) -> None:
        if fn is not None:
            fn(ctx)

    return af.action(name=name, tags=tags)(body)


def ran(result: af.RunResult) -> list[str]:
    """Names of the actions that completed, in execution order."""
    return [
        s.action_name
        for s in result.steps
        if s.kind == "action" and s.status is af.StepStatus.COMPLETED and s.action_name is not None
    ]


def stage_record(result: af.RunResult, stage_id: str) -> af.StepRecord:
    [record] = [s for s in result.steps if s.kind == "stage" and s.stage_id == stage_id]
    return record


def action_record(result: af.RunResult, name: str) -> af.StepRecord:
    [record] = [s for s in result.steps if s.kind == "action" and s.action_name == name]
    return record


# ---- stage_ids ------------------------------------------------------------------


async def test_stage_ids_lists_static_stages_in_order() -> None:
    """stage_ids() returns the workflow's stage ids in execution order."""
    seen: list[list[str]] = []
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("pa")]),
            af.Stage("b", actions=[probe("pb", lambda ctx: seen.append(ctx.plan.stage_ids()))]),
            af.Stage("c", actions=[probe("pc")]),
        ],
    )
    await af.run(wf)
    assert seen == [["a", "b", "c"]]


async def test_stage_ids_include_stages_inserted_so_far() -> None:
    """stage_ids() shows inserted stages where they will run, as soon as they are inserted."""
    seen: list[list[str]] = []

    def insert(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.stage_ids())
        ctx.add_dynamic_stage(af.Stage("d1", actions=[probe("in-d1", nested)]))
        ctx.add_dynamic_stage(af.Stage("d2", actions=[probe("in-d2")]))
        seen.append(ctx.plan.stage_ids())

    def nested(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("e1", actions=[probe("in-e1")]))
        seen.append(ctx.plan.stage_ids())

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("insert", insert)]),
            af.Stage("b", actions=[probe("pb")]),
        ],
    )
    await af.run(wf)
    assert seen == [
        ["a", "b"],
        ["a", "d1", "d2", "b"],
        ["a", "d1", "e1", "d2", "b"],
    ]


# ---- stages: disable / enable ------------------------------------------------


async def test_disable_stage_skips_the_stage() -> None:
    """A stage disabled before its turn does not run and is recorded as skipped."""
    returned: list[bool] = []
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("off", lambda ctx: returned.append(ctx.plan.disable_stage("b")))]),
            af.Stage("b", actions=[probe("pb")]),
            af.Stage("c", actions=[probe("pc")]),
        ],
    )
    result = await af.run(wf)
    assert returned == [True]
    assert ran(result) == ["off", "pc"]
    assert stage_record(result, "b").status is af.StepStatus.SKIPPED


async def test_disable_stage_twice_reports_no_change() -> None:
    """Disabling an already disabled stage returns False."""
    returned: list[bool] = []

    def off_twice(ctx: af.ActionContext) -> None:
        returned.append(ctx.plan.disable_stage("b"))
        returned.append(ctx.plan.disable_stage("b"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("off", off_twice)]),
            af.Stage("b", actions=[probe("pb")]),
        ],
    )
    await af.run(wf)
    assert returned == [True, False]


async def test_enable_stage_turns_a_disabled_stage_back_on() -> None:
    """A stage disabled then enabled again runs; is_stage_enabled follows each change."""
    seen: list[Any] = []

    def toggle(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.is_stage_enabled("b"))
        seen.append(ctx.plan.disable_stage("b"))
        seen.append(ctx.plan.is_stage_enabled("b"))
        seen.append(ctx.plan.enable_stage("b"))
        seen.append(ctx.plan.is_stage_enabled("b"))
        seen.append(ctx.plan.enable_stage("b"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("toggle", toggle)]),
            af.Stage("b", actions=[probe("pb")]),
        ],
    )
    result = await af.run(wf)
    assert seen == [True, True, False, True, True, False]
    assert ran(result) == ["toggle", "pb"]


async def test_disable_stage_from_an_earlier_stage_action_persists_across_actions() -> None:
    """A stage disabled by one action and enabled by a later action of another stage runs."""
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("off", lambda ctx: ctx.plan.disable_stage("c"))]),
            af.Stage("b", actions=[probe("on", lambda ctx: ctx.plan.enable_stage("c"))]),
            af.Stage("c", actions=[probe("pc")]),
        ],
    )
    result = await af.run(wf)
    assert ran(result) == ["off", "on", "pc"]


async def test_disabling_the_running_stage_is_a_no_op() -> None:
    """Disabling the stage that is running returns False and the stage still runs all its actions."""
    seen: list[Any] = []

    def off_self(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.disable_stage("b"))
        seen.append(ctx.plan.is_stage_enabled("b"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("b", actions=[probe("first", off_self), probe("second")]),
        ],
    )
    result = await af.run(wf)
    assert seen == [False, True]
    assert ran(result) == ["first", "second"]
    assert stage_record(result, "b").status is af.StepStatus.COMPLETED


async def test_disabling_the_running_action_is_a_no_op() -> None:
    """Disabling the action that is running changes nothing (count 0) and it completes."""
    seen: list[int] = []
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("s", actions=[probe("me", lambda ctx: seen.append(ctx.plan.disable_action("me")))]),
        ],
    )
    result = await af.run(wf)
    assert seen == [0]
    assert action_record(result, "me").status is af.StepStatus.COMPLETED


async def test_disable_stage_after_it_ran_reports_no_change() -> None:
    """Disabling a stage that already completed returns False."""
    seen: list[bool] = []
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("pa")]),
            af.Stage("b", actions=[probe("pb", lambda ctx: seen.append(ctx.plan.disable_stage("a")))]),
        ],
    )
    await af.run(wf)
    assert seen == [False]


# ---- actions: disable / enable ------------------------------------------------


async def test_disable_action_without_stage_id_disables_every_match() -> None:
    """disable_action(name) disables that action in every stage and returns how many."""
    shared = probe("x")
    seen: list[Any] = []

    def off(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.disable_action("x"))
        seen.append(ctx.plan.is_action_enabled("x"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("off", off)]),
            af.Stage("b", actions=[shared, probe("pb")]),
            af.Stage("c", actions=[shared]),
        ],
    )
    result = await af.run(wf)
    assert seen == [2, False]
    assert ran(result) == ["off", "pb"]
    skipped = [s for s in result.steps if s.action_name == "x"]
    assert [(s.stage_id, s.status) for s in skipped] == [
        ("b", af.StepStatus.SKIPPED),
        ("c", af.StepStatus.SKIPPED),
    ]


async def test_disable_action_with_stage_id_disables_only_that_stage() -> None:
    """disable_action(name, stage_id=...) touches only that stage and returns 1."""
    shared = probe("x")
    seen: list[Any] = []

    def off(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.disable_action("x", stage_id="b"))
        seen.append(ctx.plan.is_action_enabled("x", stage_id="b"))
        seen.append(ctx.plan.is_action_enabled("x", stage_id="c"))
        seen.append(ctx.plan.is_action_enabled("x"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("off", off)]),
            af.Stage("b", actions=[shared]),
            af.Stage("c", actions=[shared]),
        ],
    )
    result = await af.run(wf)
    assert seen == [1, False, True, False]
    assert [(s.stage_id, s.status) for s in result.steps if s.action_name == "x"] == [
        ("b", af.StepStatus.SKIPPED),
        ("c", af.StepStatus.COMPLETED),
    ]


async def test_disable_action_skips_a_later_action_of_the_same_stage() -> None:
    """An action can disable a later action of its own stage, which is then skipped."""
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage(
                "s",
                actions=[
                    probe("off", lambda ctx: ctx.plan.disable_action("victim")),
                    probe("victim"),
                    probe("after"),
                ],
            ),
        ],
    )
    result = await af.run(wf)
    assert ran(result) == ["off", "after"]
    assert action_record(result, "victim").status is af.StepStatus.SKIPPED


async def test_enable_action_returns_how_many_changed() -> None:
    """enable_action turns disabled actions back on and returns the count of changed ones."""
    shared = probe("x")
    seen: list[int] = []

    def toggle(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.disable_action("x", stage_id="c"))
        seen.append(ctx.plan.enable_action("x"))
        seen.append(ctx.plan.enable_action("x"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("toggle", toggle)]),
            af.Stage("b", actions=[shared]),
            af.Stage("c", actions=[shared]),
        ],
    )
    result = await af.run(wf)
    assert seen == [1, 1, 0]
    assert ran(result) == ["toggle", "x", "x"]


async def test_enable_action_with_stage_id_enables_only_that_stage() -> None:
    """enable_action(name, stage_id=...) turns the action back on in that stage only."""
    shared = probe("x")
    seen: list[int] = []

    def toggle(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.disable_action("x"))
        seen.append(ctx.plan.enable_action("x", stage_id="c"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("toggle", toggle)]),
            af.Stage("b", actions=[shared]),
            af.Stage("c", actions=[shared]),
        ],
    )
    result = await af.run(wf)
    assert seen == [2, 1]
    skipped_or_ran = [(s.stage_id, s.status) for s in result.steps if s.action_name == "x"]
    assert skipped_or_ran == [("b", af.StepStatus.SKIPPED), ("c", af.StepStatus.COMPLETED)]


# ---- tags ------------------------------------------------------------------------


async def test_disable_by_tag_covers_stages_and_actions() -> None:
    """disable_by_tag disables every pending stage and action with the tag and returns how many."""
    seen: list[int] = []
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("off", lambda ctx: seen.append(ctx.plan.disable_by_tag("opt")))]),
            af.Stage("b", tags={"opt"}, actions=[probe("in-b")]),
            af.Stage("c", actions=[probe("tagged", tags={"opt"}), probe("plain")]),
        ],
    )
    result = await af.run(wf)
    assert seen == [2]
    assert ran(result) == ["off", "plain"]
    assert stage_record(result, "b").status is af.StepStatus.SKIPPED
    assert action_record(result, "tagged").status is af.StepStatus.SKIPPED


async def test_enable_by_tag_turns_tagged_steps_back_on() -> None:
    """enable_by_tag re-enables the tagged stages and actions and returns how many changed."""
    seen: list[int] = []

    def toggle(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.disable_by_tag("opt"))
        seen.append(ctx.plan.enable_by_tag("opt"))
        seen.append(ctx.plan.enable_by_tag("opt"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("toggle", toggle)]),
            af.Stage("b", tags={"opt"}, actions=[probe("in-b")]),
            af.Stage("c", actions=[probe("tagged", tags={"opt"})]),
        ],
    )
    result = await af.run(wf)
    assert seen == [2, 2, 0]
    assert ran(result) == ["toggle", "in-b", "tagged"]


async def test_by_tag_counts_every_tagged_stage() -> None:
    """disable_by_tag and enable_by_tag count each tagged stage they change, not only the last."""
    seen: list[int] = []

    def toggle(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.disable_by_tag("opt"))
        seen.append(ctx.plan.enable_by_tag("opt"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("toggle", toggle)]),
            af.Stage("b", tags={"opt"}, actions=[probe("in-b")]),
            af.Stage("c", tags={"opt"}, actions=[probe("in-c")]),
        ],
    )
    await af.run(wf)
    assert seen == [2, 2]


async def test_disable_by_tag_reaches_dynamic_steps() -> None:
    """disable_by_tag also disables stages inserted at run time."""
    seen: list[int] = []

    def insert_then_off(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("dyn", tags={"opt"}, actions=[probe("in-dyn")]))
        seen.append(ctx.plan.disable_by_tag("opt"))

    wf = af.Workflow("wf", stages=[af.Stage("a", actions=[probe("ins", insert_then_off)])])
    result = await af.run(wf)
    assert seen == [1]
    assert ran(result) == ["ins"]
    assert stage_record(result, "dyn").status is af.StepStatus.SKIPPED


async def test_disable_by_tag_with_no_match_returns_zero() -> None:
    """disable_by_tag with a tag nobody carries changes nothing and returns 0."""
    seen: list[int] = []
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("off", lambda ctx: seen.append(ctx.plan.disable_by_tag("none")))]),
            af.Stage("b", actions=[probe("pb")]),
        ],
    )
    result = await af.run(wf)
    assert seen == [0]
    assert ran(result) == ["off", "pb"]


# ---- removal -------------------------------------------------------------------


async def test_remove_stage_takes_a_pending_stage_out_of_the_run() -> None:
    """remove_stage on a stage not started returns True; it never runs and leaves no record."""
    seen: list[Any] = []

    def remove(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.remove_stage("b"))
        seen.append(ctx.plan.stage_ids())

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("rm", remove)]),
            af.Stage("b", actions=[probe("pb")]),
            af.Stage("c", actions=[probe("pc")]),
        ],
    )
    result = await af.run(wf)
    assert seen == [True, ["a", "c"]]
    assert ran(result) == ["rm", "pc"]
    assert all(s.stage_id != "b" for s in result.steps)


async def test_remove_stage_refuses_a_stage_that_already_ran() -> None:
    """remove_stage returns False for a completed stage and for the running one."""
    seen: list[bool] = []

    def remove(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.remove_stage("a"))
        seen.append(ctx.plan.remove_stage("b"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("pa")]),
            af.Stage("b", actions=[probe("rm", remove), probe("pb")]),
        ],
    )
    result = await af.run(wf)
    assert seen == [False, False]
    assert ran(result) == ["pa", "rm", "pb"]


async def test_remove_stage_works_on_an_inserted_stage() -> None:
    """An inserted stage can be removed before it starts."""
    seen: list[bool] = []

    def insert_remove(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(af.Stage("dyn", actions=[probe("in-dyn")]))
        seen.append(ctx.plan.remove_stage("dyn"))

    wf = af.Workflow("wf", stages=[af.Stage("a", actions=[probe("ins", insert_remove)])])
    result = await af.run(wf)
    assert seen == [True]
    assert [s.stage_id for s in result.steps if s.kind == "stage"] == ["a"]


async def test_remove_action_takes_pending_actions_out_of_the_run() -> None:
    """remove_action returns how many actions it removed; they neither run nor appear in steps."""
    shared = probe("x")
    seen: list[int] = []
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("rm", lambda ctx: seen.append(ctx.plan.remove_action("x")))]),
            af.Stage("b", actions=[shared, probe("pb")]),
            af.Stage("c", actions=[shared]),
        ],
    )
    result = await af.run(wf)
    assert seen == [2]
    assert ran(result) == ["rm", "pb"]
    assert all(s.action_name != "x" for s in result.steps)


async def test_remove_action_with_stage_id_removes_only_there() -> None:
    """remove_action(name, stage_id=...) removes the action from that stage only."""
    shared = probe("x")
    seen: list[int] = []
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage(
                "a",
                actions=[
                    probe("rm", lambda ctx: seen.append(ctx.plan.remove_action("x", stage_id="c"))),
                ],
            ),
            af.Stage("b", actions=[shared]),
            af.Stage("c", actions=[shared]),
        ],
    )
    result = await af.run(wf)
    assert seen == [1]
    assert [(s.stage_id, s.action_name) for s in result.steps if s.kind == "action"] == [
        ("a", "rm"),
        ("b", "x"),
    ]


# ---- finding -------------------------------------------------------------------


async def test_find_stages_by_tag_and_name_includes_dynamic_stages() -> None:
    """find_stages filters by tag and by name, over static and inserted stages."""
    found: dict[str, list[str]] = {}
    dyn = af.Stage("dyn", name="Extra", tags={"t"}, actions=[probe("in-dyn")])

    def find(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_stage(dyn)
        found["tag"] = [s.id for s in ctx.plan.find_stages(tag="t")]
        found["name"] = [s.id for s in ctx.plan.find_stages(name="Extra")]
        found["both"] = [s.id for s in ctx.plan.find_stages(tag="t", name="Later")]
        found["all"] = [s.id for s in ctx.plan.find_stages()]
        found["none"] = [s.id for s in ctx.plan.find_stages(tag="missing")]

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", tags={"t"}, actions=[probe("find", find)]),
            af.Stage("b", name="Later", tags={"t"}, actions=[probe("pb")]),
            af.Stage("c", actions=[probe("pc")]),
        ],
    )
    await af.run(wf)
    assert found == {
        "tag": ["a", "dyn", "b"],
        "name": ["dyn"],
        "both": ["b"],
        "all": ["a", "dyn", "b", "c"],
        "none": [],
    }


async def test_find_stages_returns_stage_objects() -> None:
    """find_stages returns the af.Stage definitions themselves."""
    found: list[af.Stage] = []
    later = af.Stage("b", tags={"t"}, actions=[probe("pb")])
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("find", lambda ctx: found.extend(ctx.plan.find_stages(tag="t")))]),
            later,
        ],
    )
    await af.run(wf)
    assert found == [later]
    assert found[0] is later


class Special(af.Action):
    """A subclass used to find actions by type."""

    tags = frozenset({"t"})

    async def execute(self, ctx: af.ActionContext) -> None:
        pass


async def test_find_actions_by_tag_name_and_type_includes_dynamic_actions() -> None:
    """find_actions filters by tag, name and type, over static and inserted actions."""
    found: dict[str, list[str]] = {}
    dynamic_special = Special()

    def find(ctx: af.ActionContext) -> None:
        ctx.add_dynamic_action(dynamic_special)
        ctx.add_dynamic_stage(af.Stage("dyn", actions=[probe("in-dyn", tags={"t"})]))
        found["tag"] = [a.name for a in ctx.plan.find_actions(tag="t")]
        found["name"] = [a.name for a in ctx.plan.find_actions(name="in-dyn")]
        found["type"] = [a.name for a in ctx.plan.find_actions(type=Special)]
        found["type+tag"] = [a.name for a in ctx.plan.find_actions(type=af.FunctionAction, tag="t")]
        found["none"] = [a.name for a in ctx.plan.find_actions(name="missing")]

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("find", find), probe("plain")]),
            af.Stage("b", actions=[probe("tagged", tags={"t"})]),
        ],
    )
    await af.run(wf)
    assert found == {
        "tag": ["special", "in-dyn", "tagged"],
        "name": ["in-dyn"],
        "type": ["special"],
        "type+tag": ["in-dyn", "tagged"],
        "none": [],
    }


async def test_find_actions_returns_action_objects() -> None:
    """find_actions returns the af.Action instances themselves."""
    found: list[af.Action] = []
    target = probe("target", tags={"t"})
    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("find", lambda ctx: found.extend(ctx.plan.find_actions(tag="t")))]),
            af.Stage("b", actions=[target]),
        ],
    )
    await af.run(wf)
    assert len(found) == 1
    assert found[0] is target


async def test_find_stages_where_is_given_each_stage() -> None:
    """find_stages(where=...) calls the predicate with each af.Stage and keeps those it accepts."""
    found: list[str] = []

    def find(ctx: af.ActionContext) -> None:
        found.extend(s.id for s in ctx.plan.find_stages(where=lambda stage: len(stage.actions) == 2))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("find", find)]),
            af.Stage("b", actions=[probe("b1"), probe("b2")]),
            af.Stage("c", actions=[probe("c1")]),
        ],
    )
    await af.run(wf)
    assert found == ["b"]


async def test_find_actions_where_is_given_each_action() -> None:
    """find_actions(where=...) calls the predicate with each af.Action and keeps those it accepts."""
    found: list[str] = []

    def find(ctx: af.ActionContext) -> None:
        found.extend(a.name for a in ctx.plan.find_actions(where=lambda action: action.name.endswith("2")))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("find", find)]),
            af.Stage("b", actions=[probe("b1"), probe("b2")]),
        ],
    )
    await af.run(wf)
    assert found == ["b2"]


# ---- status ----------------------------------------------------------------------


async def test_stage_status_shows_pending_running_completed_and_skipped() -> None:
    """stage_status reports completed, running, skipped and pending stages as they stand."""
    seen: dict[str, af.StepStatus] = {}

    def look(ctx: af.ActionContext) -> None:
        for stage_id in ("a", "off", "b", "c"):
            seen[stage_id] = ctx.plan.stage_status(stage_id)

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("disable", lambda ctx: ctx.plan.disable_stage("off"))]),
            af.Stage("off", actions=[probe("never")]),
            af.Stage("b", actions=[probe("look", look)]),
            af.Stage("c", actions=[probe("pc")]),
        ],
    )
    await af.run(wf)
    assert seen == {
        "a": af.StepStatus.COMPLETED,
        "off": af.StepStatus.SKIPPED,
        "b": af.StepStatus.RUNNING,
        "c": af.StepStatus.PENDING,
    }


async def test_action_status_shows_pending_running_completed_and_skipped() -> None:
    """action_status reports completed, running, skipped and pending actions as they stand."""
    seen: dict[str, af.StepStatus] = {}

    def look(ctx: af.ActionContext) -> None:
        for name in ("first", "off", "look", "last"):
            seen[name] = ctx.plan.action_status(name)
        seen["last@s"] = ctx.plan.action_status("last", stage_id="s")

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage(
                "s",
                actions=[
                    probe("first", lambda ctx: ctx.plan.disable_action("off")),
                    probe("off"),
                    probe("look", look),
                    probe("last"),
                ],
            ),
        ],
    )
    await af.run(wf)
    assert seen == {
        "first": af.StepStatus.COMPLETED,
        "off": af.StepStatus.SKIPPED,
        "look": af.StepStatus.RUNNING,
        "last": af.StepStatus.PENDING,
        "last@s": af.StepStatus.PENDING,
    }


async def test_action_status_with_stage_id_looks_only_there() -> None:
    """action_status(name, stage_id=...) reports that stage's action, not the first of the name."""
    seen: list[af.StepStatus] = []
    shared = probe("x")

    def look(ctx: af.ActionContext) -> None:
        seen.append(ctx.plan.action_status("x"))
        seen.append(ctx.plan.action_status("x", stage_id="c"))

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[shared]),
            af.Stage("b", actions=[probe("look", look)]),
            af.Stage("c", actions=[shared]),
        ],
    )
    await af.run(wf)
    assert seen == [af.StepStatus.COMPLETED, af.StepStatus.PENDING]


# ---- unknown ids -----------------------------------------------------------------


UNKNOWN_OPERATIONS: list[tuple[str, Callable[[af.Plan], object]]] = [
    ("disable_stage", lambda plan: plan.disable_stage("ghost")),
    ("enable_stage", lambda plan: plan.enable_stage("ghost")),
    ("is_stage_enabled", lambda plan: plan.is_stage_enabled("ghost")),
    ("stage_status", lambda plan: plan.stage_status("ghost")),
    ("disable_action", lambda plan: plan.disable_action("ghost")),
    ("enable_action", lambda plan: plan.enable_action("ghost")),
    ("is_action_enabled", lambda plan: plan.is_action_enabled("ghost")),
    ("action_status", lambda plan: plan.action_status("ghost")),
    ("remove_action", lambda plan: plan.remove_action("ghost")),
    ("disable_action-in-unknown-stage", lambda plan: plan.disable_action("here", stage_id="ghost")),
    ("is_action_enabled-in-unknown-stage", lambda plan: plan.is_action_enabled("here", stage_id="ghost")),
    ("remove_action-in-unknown-stage", lambda plan: plan.remove_action("here", stage_id="ghost")),
]


@pytest.mark.parametrize(
    "operation", [op for _, op in UNKNOWN_OPERATIONS], ids=[name for name, _ in UNKNOWN_OPERATIONS]
)
async def test_unknown_id_raises_unknown_step_naming_it(operation: Callable[[af.Plan], object]) -> None:
    """A plan operation on an id or name not in the plan raises af.UnknownStep naming it."""
    caught: list[BaseException] = []

    def call(ctx: af.ActionContext) -> None:
        try:
            operation(ctx.plan)
        except Exception as exc:
            caught.append(exc)

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[probe("here", call)])])
    await af.run(wf)
    assert len(caught) == 1
    error = caught[0]
    assert isinstance(error, af.UnknownStep)
    assert isinstance(error, LookupError)
    assert isinstance(error, af.WorkflowError)
    assert "ghost" in str(error)


async def test_remove_stage_with_unknown_id_raises_unknown_step() -> None:
    """remove_stage on an id that was never in the plan raises af.UnknownStep naming it."""
    caught: list[BaseException] = []
    outcome: list[object] = []

    def call(ctx: af.ActionContext) -> None:
        try:
            outcome.append(ctx.plan.remove_stage("ghost"))
        except Exception as exc:
            caught.append(exc)

    wf = af.Workflow("wf", stages=[af.Stage("s", actions=[probe("here", call)])])
    await af.run(wf)
    assert outcome == []
    assert len(caught) == 1
    assert isinstance(caught[0], af.UnknownStep)
    assert "ghost" in str(caught[0])


async def test_removed_stage_is_unknown_afterwards() -> None:
    """Once removed, a stage is no longer in the plan: operations on it raise af.UnknownStep."""
    caught: list[BaseException] = []

    def call(ctx: af.ActionContext) -> None:
        ctx.plan.remove_stage("b")
        try:
            ctx.plan.disable_stage("b")
        except Exception as exc:
            caught.append(exc)

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("a", actions=[probe("rm", call)]),
            af.Stage("b", actions=[probe("pb")]),
        ],
    )
    await af.run(wf)
    assert len(caught) == 1
    assert isinstance(caught[0], af.UnknownStep)
    assert "'b'" in str(caught[0])


@pytest.mark.parametrize(
    ("stage_id", "where"), [(None, "in any stage"), ("s", "in stage 's'")], ids=["any-stage", "one-stage"]
)
async def test_unknown_action_error_says_where_it_looked(stage_id: str | None, where: str) -> None:
    """af.UnknownStep for an action name names the run and says whether it looked in one stage or in all."""
    caught: list[BaseException] = []

    def call(ctx: af.ActionContext) -> None:
        try:
            ctx.plan.disable_action("ghost", stage_id=stage_id)
        except af.UnknownStep as exc:
            caught.append(exc)

    result = await af.run(af.Workflow("wf", stages=[af.Stage("s", actions=[probe("here", call)])]))
    [error] = caught
    assert str(error) == f"run {result.run_id!r} has no action 'ghost' {where}"


# ---- undo on failure ---------------------------------------------------------------


async def test_plan_changes_of_a_failed_action_are_undone() -> None:
    """A failed action's plan changes are undone: a sibling cancelled by the failure sees them gone."""
    changed = anyio.Event()
    observed = anyio.Event()
    seen: dict[str, Any] = {}

    @af.action(name="breaker")
    async def breaker(ctx: af.ActionContext) -> None:
        ctx.plan.disable_stage("later")
        ctx.plan.disable_action("tail")
        ctx.add_dynamic_stage(af.Stage("inserted", actions=[probe("in-inserted")]))
        changed.set()
        await observed.wait()
        raise RuntimeError("boom")

    @af.action(name="watcher")
    async def watcher(ctx: af.ActionContext) -> None:
        await changed.wait()
        seen["during"] = (
            ctx.plan.is_stage_enabled("later"),
            ctx.plan.is_action_enabled("tail"),
            ctx.plan.stage_ids(),
        )
        observed.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            seen["after"] = (
                ctx.plan.is_stage_enabled("later"),
                ctx.plan.is_action_enabled("tail"),
                ctx.plan.stage_ids(),
            )
            raise

    wf = af.Workflow(
        "wf",
        stages=[
            af.Stage("both", concurrency=2, actions=[watcher, breaker]),
            af.Stage("later", actions=[probe("tail")]),
        ],
    )
    with pytest.raises(af.ActionFailed) as info:
        await af.run(wf)
    assert info.value.action_name == "breaker"
    assert seen["during"] == (False, False, ["both", "inserted", "later"])
    assert seen["after"] == (True, True, ["both", "later"])


async def test_remove_stage_of_a_failed_attempt_is_undone() -> None:
    """A failed attempt's remove_stage is undone like its other plan changes: the stage runs after all."""
    seen: list[list[str]] = []

    @af.action(name="remover", retry=af.Retry(attempts=2, backoff=lambda attempt: 0.0))
    async def remover(ctx: af.ActionContext) -> None:
        if ctx.attempt == 1:
            ctx.plan.remove_stage("later")
            raise ConnectionError("first attempt")
        seen.append(ctx.plan.stage_ids())

    wf = af.Workflow(
        "wf",
        stages=[af.Stage("first", actions=[remover]), af.Stage("later", actions=[probe("tail")])],
    )
    result = await af.run(wf)
    assert result.status is af.RunStatus.COMPLETED
    assert seen == [["first", "later"]]
    assert ran(result) == ["remover", "tail"]


async def test_remove_action_of_a_failed_attempt_is_undone() -> None:
    """A failed attempt's remove_action is undone like its other plan changes: the action runs after all."""

    @af.action(name="remover", retry=af.Retry(attempts=2, backoff=lambda attempt: 0.0))
    async def remover(ctx: af.ActionContext) -> None:
        if ctx.attempt == 1:
            assert ctx.plan.remove_action("tail") == 1
            raise ConnectionError("first attempt")

    wf = af.Workflow(
        "wf",
        stages=[af.Stage("first", actions=[remover]), af.Stage("later", actions=[probe("tail")])],
    )
    result = await af.run(wf)
    assert result.status is af.RunStatus.COMPLETED
    assert ran(result) == ["remover", "tail"]
