"""Random programs of dynamic insertions, disabled and failing steps, checked against a reference model.

A *program* is a tree: static stages of actions; each action, when it runs,
inserts dynamic actions and dynamic stages (which carry their own actions and
insertions, to a bounded depth), may disable what it just inserted, and may
raise at the end. Static steps marked disabled carry the tag ``off``, which
the first action of the run (stage ``boot``) disables by tag; dynamic steps
marked disabled (and the marked actions of an inserted stage) are disabled
through ``ctx.plan`` by the action that inserts them, right after inserting.

The reference model below is a plain recursive interpreter of SPEC §1,
independent of the library's plan and runner.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import given, settings

import asyncflow as af

MAX_DEPTH = 3
OFF = "off"

Record = tuple[str, str, str | None, af.StepStatus, bool]


# ---- programs -------------------------------------------------------------------------------


@dataclass
class ActionSpec:
    """An action: the steps it inserts (in call order), whether it is disabled and whether it raises."""

    name: str
    disabled: bool
    fails: bool
    inserts: list[ActionSpec | StageSpec] = field(default_factory=list)


@dataclass
class StageSpec:
    """A stage: its actions in order and whether it is disabled."""

    id: str
    disabled: bool
    actions: list[ActionSpec] = field(default_factory=list)


class Boom(Exception):
    """What a failing action of a program raises."""


@st.composite
def programs(draw: st.DrawFn) -> list[StageSpec]:
    """Static stages of a random program; every stage id and action name is unique."""
    ids = itertools.count()

    def rare(odds: int = 8) -> bool:
        return draw(st.integers(0, odds - 1)) == odds - 1

    def action(depth: int) -> ActionSpec:
        spec = ActionSpec(f"a{next(ids)}", disabled=rare(), fails=rare(16))
        if depth < MAX_DEPTH:
            for _ in range(draw(st.integers(0, 2))):
                if draw(st.booleans()):
                    spec.inserts.append(action(depth + 1))
                else:
                    spec.inserts.append(stage(depth + 1))
        return spec

    def stage(depth: int) -> StageSpec:
        spec = StageSpec(f"s{next(ids)}", disabled=rare())
        spec.actions = [action(depth) for _ in range(draw(st.integers(1, 3)))]
        return spec

    return [stage(0) for _ in range(draw(st.integers(1, 4)))]


# ---- the reference model --------------------------------------------------------------------


class _Stop(Exception):
    """The model's run stopped at a failed action."""


def model(program: list[StageSpec]) -> tuple[list[Record], tuple[str, str] | None]:
    """Expected records and the (stage id, action name) that failed, per SPEC §1."""
    records: list[Record] = []

    def record(kind: str, stage_id: str, name: str | None, status: af.StepStatus, dyn: bool) -> int:
        records.append((kind, stage_id, name, status, dyn))
        return len(records) - 1

    def set_status(index: int, status: af.StepStatus) -> None:
        kind, stage_id, name, _, dyn = records[index]
        records[index] = (kind, stage_id, name, status, dyn)

    def run_action(stage_id: str, spec: ActionSpec, dynamic: bool, stages_out: list[StageSpec]) -> None:
        if spec.disabled:
            record("action", stage_id, spec.name, af.StepStatus.SKIPPED, dynamic)
            return
        index = record("action", stage_id, spec.name, af.StepStatus.COMPLETED, dynamic)
        if spec.fails:
            # A failed action's insertions are discarded: they never existed.
            set_status(index, af.StepStatus.FAILED)
            raise _Stop(stage_id, spec.name)
        children = []
        for inserted in spec.inserts:
            if isinstance(inserted, ActionSpec):
                children.append(inserted)
            else:
                stages_out.append(inserted)
        for child in children:
            run_action(stage_id, child, True, stages_out)

    def run_stage(spec: StageSpec, dynamic: bool) -> None:
        if spec.disabled:
            record("stage", spec.id, None, af.StepStatus.SKIPPED, dynamic)
            return
        index = record("stage", spec.id, None, af.StepStatus.COMPLETED, dynamic)
        inserted: list[StageSpec] = []
        try:
            for action in spec.actions:
                run_action(spec.id, action, dynamic, inserted)  # an inserted stage's actions are dynamic
        except _Stop:
            set_status(index, af.StepStatus.FAILED)
            for skipped in inserted:
                record("stage", skipped.id, None, af.StepStatus.SKIPPED, True)
            raise
        for child in inserted:
            run_stage(child, True)

    run_stage(StageSpec("boot", False, [ActionSpec("boot", False, False)]), False)
    failed: tuple[str, str] | None = None
    try:
        for spec in program:
            run_stage(spec, False)
    except _Stop as stop:
        failed = (stop.args[0], stop.args[1])
    return records, failed


# ---- building the program for the library ---------------------------------------------------------


def build_action(spec: ActionSpec, *, static: bool) -> af.Action:
    """The af.Action that performs ``spec``'s insertions (and disables), then raises if it fails."""

    async def body(ctx: af.ActionContext) -> None:
        for inserted in spec.inserts:
            if isinstance(inserted, ActionSpec):
                ctx.add_dynamic_action(build_action(inserted, static=False))
                if inserted.disabled:
                    assert ctx.plan.disable_action(inserted.name, stage_id=ctx.stage_id) == 1
            else:
                ctx.add_dynamic_stage(build_stage(inserted, static=False))
                if inserted.disabled:
                    assert ctx.plan.disable_stage(inserted.id)
                for action in inserted.actions:
                    if action.disabled:
                        assert ctx.plan.disable_action(action.name, stage_id=inserted.id) == 1
            await asyncio.sleep(0)
        if spec.fails:
            raise Boom(spec.name)

    tags = {OFF} if static and spec.disabled else None
    return af.action(name=spec.name, tags=tags)(body)


def build_stage(spec: StageSpec, *, static: bool) -> af.Stage:
    """The af.Stage of ``spec``; static disabled stages carry the ``off`` tag."""
    return af.Stage(
        spec.id,
        tags={OFF} if static and spec.disabled else None,
        actions=[build_action(a, static=static) for a in spec.actions],
    )


@af.action(name="boot")
async def boot(ctx: af.ActionContext) -> None:
    """Disable every static step tagged ``off``."""
    ctx.plan.disable_by_tag(OFF)


def build_workflow(program: list[StageSpec]) -> af.Workflow:
    stages = [af.Stage("boot", actions=[boot])]
    stages += [build_stage(spec, static=True) for spec in program]
    return af.Workflow("program", stages=stages)


async def execute(wf: af.Workflow) -> tuple[af.RunResult, af.ActionFailed | None]:
    try:
        return await af.run(wf), None
    except af.ActionFailed as exc:
        failure = exc
    assert failure.result is not None
    return failure.result, failure


# ---- the property -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(programs())
def test_random_programs_run_as_the_reference_model_says(program: list[StageSpec]) -> None:
    """For any program, records (kind, stage, action, status, dynamic) and run status match the model."""
    expected, failed = model(program)
    result, error = asyncio.run(execute(build_workflow(program)))
    actual = [(s.kind, s.stage_id, s.action_name, s.status, s.dynamic) for s in result.steps]
    assert actual == expected
    if failed is None:
        assert error is None
        assert result.status is af.RunStatus.COMPLETED
    else:
        assert error is not None
        assert result.status is af.RunStatus.FAILED
        assert (error.stage_id, error.action_name) == failed
        assert isinstance(error.__cause__, Boom)


@settings(max_examples=200, deadline=None)
@given(programs())
def test_random_programs_leave_the_workflow_unchanged(program: list[StageSpec]) -> None:
    """Running any program leaves its workflow's stages and actions as they were defined."""
    wf = build_workflow(program)
    before = [(s, s.actions) for s in wf.stages]
    asyncio.run(execute(wf))
    assert [(s, s.actions) for s in wf.stages] == before
